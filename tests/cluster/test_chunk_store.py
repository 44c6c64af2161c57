"""ChunkStore on real files in tmp_path: round trips, corruption, versions, hostile ids and
symlinks, crash recovery and a full disk (RELIABILITY.md §4 items 1-4, F9, F11, F14, F18, F24).

Every corruption test ends by checking that no byte was returned and that the scrubber
names the same damage without any client read.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from xxhash import xxh3_64_intdigest

from vstore import errors
from vstore.chunkserver import store as store_mod
from vstore.chunkserver.chunkfile import (
    HEADER_BYTES,
    TABLE_OFFSET,
    BlockChecksumMismatch,
    ChunkFormatError,
    ChunkIdError,
    ChunkRangeError,
    HeaderChecksumMismatch,
    TruncatedHeader,
    WrongChunk,
    WrongVersion,
    chunk_file_name,
)
from vstore.chunkserver.store import ChunkStore, IncompleteReplica, ReplicaInfo, TruncatedTable

B = 4096
CHUNK = 16 * B             # 16 blocks: data_offset = 4096 (64 + 128 bytes of table, rounded up)
DATA_OFFSET = B


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChunkStore]:
    s = ChunkStore(tmp_path / "data", chunk_bytes=CHUNK, block_bytes=B)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[Path]:
    """A file outside the data dir that nothing may touch."""
    path = tmp_path / "sentinel"
    path.write_bytes(b"precious bytes\n")
    before = os.stat(path)
    yield path
    after = os.stat(path)
    assert path.read_bytes() == b"precious bytes\n"
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (before.st_mtime_ns, before.st_size, before.st_ino)


def path_of(store: ChunkStore, chunk_id: int) -> Path:
    return store.data_dir / "chunks" / chunk_file_name(chunk_id)


def flip_bit(path: Path, offset: int, bit: int = 3) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ (1 << bit)]))


def pattern(n: int, seed: int = 7) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


def new_chunk(store: ChunkStore, chunk_id: int = 1, version: int = 1) -> None:
    store.create(chunk_id, version, incomplete=False)


# ---- round trips -------------------------------------------------------------------------------


def test_an_aligned_write_reads_back_exactly_after_fsync(store: ChunkStore) -> None:
    new_chunk(store)
    data = pattern(3 * B)
    store.write(1, 1, B, data)
    store.fsync(1)
    assert store.read(1, 1, B, 3 * B) == data
    assert store.read(1, 1, 0, B) == bytes(B)  # the hole before the write
    assert store.list_chunks() == [ReplicaInfo(1, 1, 4 * B, False)]
    assert store.scrub_one(1) == []


def test_an_unaligned_write_keeps_the_old_bytes_around_it(store: ChunkStore) -> None:
    new_chunk(store)
    base = pattern(4 * B, seed=1)
    store.write(1, 1, 0, base)
    patch = pattern(B + 100, seed=9)
    store.write(1, 1, B - 50, patch)
    want = base[:B - 50] + patch + base[B - 50 + len(patch):]
    assert store.read(1, 1, 0, 4 * B) == want
    assert store.read(1, 1, 17, 5000) == want[17:5017]
    assert store.scrub_one(1) == []


def test_a_sparse_write_reads_zeros_in_the_gap_it_leaves(store: ChunkStore) -> None:
    new_chunk(store)
    store.write(1, 1, 0, b"head")
    store.write(1, 1, 10 * B + 7, b"tail")
    got = store.read(1, 1, 0, 10 * B + 11)
    assert got == b"head" + bytes(10 * B + 3) + b"tail"
    assert os.stat(path_of(store, 1)).st_blocks * 512 < DATA_OFFSET + 11 * B  # the gap stays unallocated


def test_a_read_is_cut_at_the_valid_length_and_regrown_bytes_read_as_zeros(store: ChunkStore) -> None:
    new_chunk(store)
    store.write(1, 1, 0, pattern(2 * B))
    assert store.read(1, 1, 2 * B - 10, 100) == pattern(2 * B)[-10:]  # cut at the length
    assert store.read(1, 1, 5 * B, 10) == b""
    store.truncate(1, 2, 100, at_most_version=1)
    store.truncate(1, 3, 3 * B, at_most_version=2)
    assert store.read(1, 3, 0, 3 * B) == pattern(2 * B)[:100] + bytes(3 * B - 100)
    assert store.scrub_one(1) == []


def test_a_range_past_the_chunk_capacity_is_a_range_error(store: ChunkStore) -> None:
    new_chunk(store)
    with pytest.raises(ChunkRangeError):
        store.read(1, 1, CHUNK - 1, 2)
    with pytest.raises(ChunkRangeError):
        store.write(1, 1, CHUNK, b"x")
    with pytest.raises(ChunkRangeError):
        store.read(1, 1, -1, 1)


def test_correct_client_checksums_split_at_block_boundaries_are_accepted(store: ChunkStore) -> None:
    new_chunk(store)
    data = pattern(2 * B + 300)
    offset = B - 100
    pieces = [data[:100], data[100:100 + B], data[100 + B:100 + 2 * B], data[100 + 2 * B:]]
    store.write(1, 1, offset, data, client_checksums=[xxh3_64_intdigest(p) for p in pieces])
    assert store.read(1, 1, offset, len(data)) == data


def test_a_client_checksum_mismatch_refuses_the_write_and_keeps_the_old_bytes(store: ChunkStore) -> None:
    new_chunk(store)
    old = pattern(2 * B, seed=3)
    store.write(1, 1, 0, old)
    store.fsync(1)
    new = pattern(2 * B, seed=4)
    sums = [xxh3_64_intdigest(new[:B]), xxh3_64_intdigest(new[B:]) ^ 1]
    with pytest.raises(errors.ChecksumMismatch) as info:
        store.write(1, 1, 0, new, client_checksums=sums)
    assert info.value.details["piece"] == 1
    assert store.read(1, 1, 0, 2 * B) == old
    with pytest.raises(errors.InvalidArgument):
        store.write(1, 1, 0, new, client_checksums=sums[:1])
    assert store.read(1, 1, 0, 2 * B) == old


# ---- corruption ---------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["data", "slot", "header"])
def test_a_bit_flip_is_detected_on_read_and_by_scrub_and_no_bytes_are_returned(
        store: ChunkStore, where: str, expect_log: Callable[..., None]) -> None:
    expect_log("cs.store.replica_damaged", 0)
    new_chunk(store)
    store.write(1, 1, 0, pattern(3 * B))
    store.fsync(1)
    offset = {"data": DATA_OFFSET + B + 123, "slot": TABLE_OFFSET + 8 + 5, "header": 30}[where]
    flip_bit(path_of(store, 1), offset)
    expected: type[Exception] = HeaderChecksumMismatch if where == "header" else BlockChecksumMismatch
    with pytest.raises(expected) as info:
        store.read(1, 1, 0, 3 * B)
    assert info.value.details["chunk"] == 1
    if where != "header":
        assert info.value.blocks == (1,)
        assert store.scrub_one(1) == [1]
    else:
        with pytest.raises(HeaderChecksumMismatch):
            store.scrub_one(1)
    # The replica stays refused even for blocks that pass, until it is deleted and rebuilt.
    with pytest.raises((errors.ChecksumMismatch, ChunkFormatError)):
        store.read(1, 1, 0, 10)
    assert store.list_chunks()[0].damaged


def test_verify_checks_every_block_below_the_valid_length_piece_by_piece(store: ChunkStore) -> None:
    new_chunk(store)
    store.write(1, 1, 2 * B, pattern(5 * B + 100))  # blocks 0-1 are holes, block 7 is partial
    length = 7 * B + 100
    assert store.verify(1, 1, 0, 3 * B) == store_mod.VerifiedRange(length_bytes=length, blocks=3, block_bytes=B)
    assert store.verify(1, 1, 3 * B, 3 * B).blocks == 3
    assert store.verify(1, 1, 6 * B, 3 * B).blocks == 2, "cut at the valid length (blocks 6 and 7)"
    assert store.verify(1, 1, 8 * B, 3 * B).blocks == 0
    assert store.verify(1, 1, 0, 10 * CHUNK).blocks == 8, "a range past the capacity is cut there, not refused"
    with pytest.raises(errors.InvalidArgument):
        store.verify(1, 1, 100, B)  # not block-aligned: the count would not be exact
    with pytest.raises(WrongVersion):
        store.verify(1, 2, 0, B)
    with pytest.raises(errors.NotFound):
        store.verify(2, 1, 0, B)
    store.create(3, 1)  # INCOMPLETE: not a good replica, as for reads
    with pytest.raises(IncompleteReplica):
        store.verify(3, 1, 0, B)


def test_verify_of_a_flipped_block_fails_like_a_read_and_marks_the_replica_bad(
        store: ChunkStore, expect_log: Callable[..., None]) -> None:
    expect_log("cs.store.replica_damaged")
    new_chunk(store)
    store.write(1, 1, 0, pattern(6 * B))
    store.fsync(1)
    flip_bit(path_of(store, 1), DATA_OFFSET + 4 * B + 7)
    assert store.verify(1, 1, 0, 4 * B).blocks == 4, "the blocks before the flip pass"
    with pytest.raises(BlockChecksumMismatch) as info:
        store.verify(1, 1, 4 * B, 4 * B)
    assert info.value.blocks == (4,) and info.value.details["block"] == 4
    assert store.list_chunks()[0].damaged
    with pytest.raises(errors.ChecksumMismatch):
        store.verify(1, 1, 0, B)  # refused from now on, even where the blocks pass


def test_a_file_cut_inside_its_header_or_table_is_a_typed_error(store: ChunkStore,
                                                                expect_log: Callable[..., None]) -> None:
    expect_log("cs.store.replica_damaged", 0)
    for cid, size, error in ((1, 32, TruncatedHeader), (2, HEADER_BYTES + 20, TruncatedTable)):
        new_chunk(store, cid)
        store.write(cid, 1, 0, pattern(B))
        os.truncate(path_of(store, cid), size)
        with pytest.raises(error):
            store.read(cid, 1, 0, B)
        with pytest.raises(error):
            store.scrub_one(cid)
        assert (cid, True) in [(i.chunk_id, i.damaged) for i in store.list_chunks()]


def test_a_file_missing_blocks_that_its_table_names_fails_their_checksum(store: ChunkStore,
                                                                         expect_log: Callable[..., None]) -> None:
    expect_log("cs.store.replica_damaged", 0)
    new_chunk(store)
    store.write(1, 1, 0, pattern(3 * B))
    os.truncate(path_of(store, 1), DATA_OFFSET + B + 10)
    with pytest.raises(BlockChecksumMismatch) as info:
        store.read(1, 1, 0, 3 * B)
    assert info.value.blocks == (1, 2)
    assert store.scrub_one(1) == [1, 2]
    with pytest.raises(errors.ChecksumMismatch):  # flagged: refused until rebuilt
        store.read(1, 1, 0, 10)


def test_a_missing_file_is_not_found(store: ChunkStore) -> None:
    with pytest.raises(errors.NotFound):
        store.read(5, 1, 0, 1)
    with pytest.raises(errors.NotFound):
        store.scrub_one(5)
    with pytest.raises(errors.NotFound):
        store.fsync(5)


def test_a_file_renamed_onto_another_chunks_name_is_wrong_chunk(store: ChunkStore,
                                                                expect_log: Callable[..., None]) -> None:
    expect_log("cs.store.replica_damaged")
    new_chunk(store, 1)
    new_chunk(store, 2)
    store.write(2, 1, 0, b"chunk two")
    os.replace(path_of(store, 2), path_of(store, 1))
    with pytest.raises(WrongChunk):
        store.read(1, 1, 0, 9)
    with pytest.raises(WrongChunk):
        store.scrub_one(1)


def test_a_request_at_another_version_is_wrong_version_and_not_damage(store: ChunkStore) -> None:
    new_chunk(store, 1, version=5)
    with pytest.raises(WrongVersion) as info:
        store.read(1, 4, 0, 1)
    assert info.value.code == errors.StaleVersion.default_code
    with pytest.raises(WrongVersion):
        store.write(1, 6, 0, b"x")
    assert store.list_chunks() == [ReplicaInfo(1, 5, 0, False)]


# ---- versions ---------------------------------------------------------------------------------


def test_set_version_goes_only_up_and_is_idempotent(store: ChunkStore) -> None:
    new_chunk(store)
    store.write(1, 1, 0, b"data")
    store.set_version(1, 1, 3)
    store.set_version(1, 1, 3)  # a retried request: already there
    assert store.read(1, 3, 0, 4) == b"data"
    with pytest.raises(errors.StaleVersion):
        store.set_version(1, 3, 2)
    with pytest.raises(WrongVersion):
        store.set_version(1, 2, 7)  # the compare of compare-and-set
    with pytest.raises(WrongVersion):
        store.read(1, 1, 0, 4)
    assert store.list_chunks() == [ReplicaInfo(1, 3, 4, False)]


def test_truncate_and_delete_refuse_a_replica_newer_than_they_allow(store: ChunkStore) -> None:
    new_chunk(store, 1, version=4)
    store.write(1, 4, 0, pattern(B))
    with pytest.raises(errors.StaleVersion):
        store.truncate(1, 5, 10, at_most_version=3)
    with pytest.raises(errors.StaleVersion):
        store.truncate(1, 3, 10, at_most_version=4)
    with pytest.raises(errors.StaleVersion):
        store.delete(1, at_most_version=3)
    store.truncate(1, 5, 10, at_most_version=4)
    store.truncate(1, 5, 10, at_most_version=4)  # retry: no-op
    assert store.read(1, 5, 0, B) == pattern(B)[:10]
    store.delete(1, at_most_version=5)
    store.delete(1, at_most_version=5)  # idempotent
    assert not path_of(store, 1).exists()
    assert store.list_chunks() == []


def test_create_refuses_an_existing_replica(store: ChunkStore) -> None:
    new_chunk(store)
    store.write(1, 1, 0, b"keep")
    with pytest.raises(errors.Exists):
        store.create(1, 2)
    assert store.read(1, 1, 0, 4) == b"keep"


def test_an_incomplete_replica_is_not_served_nor_reported_until_marked_complete(store: ChunkStore) -> None:
    store.create(1, 1)
    store.write(1, 1, 0, b"first")
    with pytest.raises(IncompleteReplica):
        store.read(1, 1, 0, 5)
    assert store.read(1, 1, 0, 5, allow_incomplete=True) == b"first"
    store.fsync(1)
    assert store.list_chunks() == []
    assert store.list_incomplete() == [ReplicaInfo(1, 1, 5, False)]
    store.mark_complete(1)
    assert store.read(1, 1, 0, 5) == b"first"
    assert store.list_chunks() == [ReplicaInfo(1, 1, 5, False)]


def test_an_fsync_error_marks_the_replica_bad_and_no_later_fsync_succeeds(
        store: ChunkStore, monkeypatch: pytest.MonkeyPatch, expect_log: Callable[..., None]) -> None:
    expect_log("cs.store.fsync_failed")
    expect_log("cs.store.replica_damaged")
    new_chunk(store)
    store.write(1, 1, 0, b"lost?")

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(store_mod.os, "fsync", eio)
    with pytest.raises(errors.DiskIOError):
        store.fsync(1)
    monkeypatch.undo()
    with pytest.raises(errors.DiskIOError):
        store.fsync(1)  # the kernel would now return 0: never claim success
    with pytest.raises(errors.DiskIOError):
        store.read(1, 1, 0, 5)
    assert store.list_chunks() == [ReplicaInfo(1, 1, 0, True)]
    store.delete(1, at_most_version=1)
    assert store.list_chunks() == []


# ---- hostile input ----------------------------------------------------------------------------

BAD_IDS = ["../x", "../../etc/passwd", "a\0b", b"1", -1, 0, 2**63, 2**64, 1.5, "1", None, [1], True]


@pytest.mark.parametrize("bad_id", BAD_IDS, ids=repr)
def test_a_bad_chunk_id_is_rejected_before_any_file_system_call(
        store: ChunkStore, bad_id: object, sentinel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ops: list[Callable[[object], object]] = [
        lambda x: store.create(x, 1), lambda x: store.write(x, 1, 0, b"a"), lambda x: store.read(x, 1, 0, 1),
        lambda x: store.fsync(x), lambda x: store.set_version(x, 1, 2),
        lambda x: store.truncate(x, 2, 0, at_most_version=1), lambda x: store.delete(x, at_most_version=1),
        lambda x: store.mark_complete(x), lambda x: store.scrub_one(x),
    ]
    touched: list[str] = []

    def spy(name: str) -> Callable[..., object]:
        def call(*args: object, **kwargs: object) -> object:
            touched.append(name)
            raise AssertionError(f"{name} called for a bad chunk id")
        return call

    for op in ops:
        for name in ("open", "mkdir", "pread", "pwrite", "unlink", "fsync", "statvfs", "stat", "lstat", "scandir"):
            monkeypatch.setattr(os, name, spy(name))
        monkeypatch.setattr(store, "_index_get", spy("index_get"))
        monkeypatch.setattr(store, "_index_put", spy("index_put"))
        try:
            with pytest.raises(ChunkIdError) as info:
                op(bad_id)
        finally:
            monkeypatch.undo()
        assert info.value.code == errors.InvalidArgument.default_code
    assert touched == []
    assert sorted(p.name for p in (store.data_dir / "chunks").iterdir()) == []


def test_a_symlink_planted_at_a_chunk_path_is_never_followed(store: ChunkStore, sentinel: Path,
                                                             tmp_path: Path) -> None:
    link = path_of(store, 1)
    link.parent.mkdir()
    link.symlink_to(sentinel)
    with pytest.raises(errors.Exists):
        store.create(1, 1)
    for op in (lambda: store.read(1, 1, 0, 4), lambda: store.write(1, 1, 0, b"evil"), lambda: store.fsync(1),
               lambda: store.set_version(1, 1, 2), lambda: store.truncate(1, 2, 0, at_most_version=1),
               lambda: store.mark_complete(1), lambda: store.scrub_one(1),
               lambda: store.delete(1, at_most_version=2**62)):
        with pytest.raises(errors.Loop):
            op()
    assert link.is_symlink()


def test_a_symlinked_shard_dir_is_never_followed(store: ChunkStore, sentinel: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.data_dir / "chunks" / "02").symlink_to(outside)
    for op in (lambda: store.create(2, 1), lambda: store.read(2, 1, 0, 1), lambda: store.delete(2, at_most_version=1)):
        with pytest.raises(errors.Loop):
            op()
    assert list(outside.iterdir()) == []


def test_a_symlinked_chunks_dir_refuses_to_open(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "chunks").symlink_to(outside)
    with pytest.raises(errors.Loop):
        ChunkStore(tmp_path / "data", chunk_bytes=CHUNK)
    assert list(outside.iterdir()) == []


# ---- recovery ---------------------------------------------------------------------------------


def test_scan_startup_reconciles_the_index_with_the_files_after_a_crash(
        tmp_path: Path, expect_log: Callable[..., None]) -> None:
    """Simulated crashes: an index entry whose file is gone, a file whose index entry was never
    committed, an INCOMPLETE file, a damaged header, and files that are not chunk files."""
    expect_log("cs.store.stray_file", 3)
    expect_log("cs.store.replica_missing")
    expect_log("cs.store.replica_damaged")
    data = tmp_path / "data"
    with ChunkStore(data, chunk_bytes=CHUNK) as a:
        for cid in (1, 2, 4):
            new_chunk(a, cid)
            a.write(cid, 1, 0, pattern(100, seed=cid))
            a.fsync(cid)
        a.create(3, 1)
    with ChunkStore(tmp_path / "other", chunk_bytes=CHUNK) as other:
        new_chunk(other, 5, version=2)
        other.write(5, 2, 0, b"five")
        other.fsync(5)
        (data / "chunks" / "05").mkdir()
        shutil.copy(path_of(other, 5), data / "chunks" / chunk_file_name(5))
    os.unlink(data / "chunks" / chunk_file_name(2))
    flip_bit(data / "chunks" / chunk_file_name(4), 20)
    strays = [data / "chunks" / "01" / "hello.txt", data / "chunks" / "junk",
              data / "chunks" / "ab" / "00000000000000AB.chunk"]
    for p in strays:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"not mine")

    with ChunkStore(data, chunk_bytes=CHUNK) as b:
        report = b.scan_startup()
        assert report.adopted == [5]
        assert report.missing == [2]
        assert report.incomplete == [3]
        assert report.damaged == [(4, "header_checksum")]
        assert sorted(report.strays) == ["01/hello.txt", "ab/00000000000000AB.chunk", "junk"]
        assert all(p.read_bytes() == b"not mine" for p in strays)
        assert b.list_chunks() == [ReplicaInfo(1, 1, 100, False), ReplicaInfo(4, 1, 100, True),
                                   ReplicaInfo(5, 2, 4, False)]
        assert b.list_incomplete() == [ReplicaInfo(3, 1, 0, False)]
        assert b.read(5, 2, 0, 4) == b"five"
        assert b.read(1, 1, 0, 100) == pattern(100, seed=1)
        again = b.scan_startup()
        assert (again.adopted, again.missing, again.updated) == ([], [], [])


def test_scan_startup_rebuilds_a_lost_index_from_the_headers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ChunkStore(data, chunk_bytes=CHUNK) as a:
        new_chunk(a, 1)
        a.write(1, 1, 0, b"one")
        a.set_version(1, 1, 9)  # header rewritten and fsynced
        new_chunk(a, 300)
        a.write(300, 1, 0, pattern(5000))  # written, never fsynced: the index still says length 0
    with ChunkStore(data, chunk_bytes=CHUNK) as b:
        report = b.scan_startup()
        assert report.updated == [300]
        assert b.list_chunks() == [ReplicaInfo(1, 9, 3, False), ReplicaInfo(300, 1, 5000, False)]
    shutil.rmtree(data / "index")
    with ChunkStore(data, chunk_bytes=CHUNK) as c:
        assert c.list_chunks() == []
        report = c.scan_startup()
        assert report.adopted == [1, 300]
        assert c.list_chunks() == [ReplicaInfo(1, 9, 3, False), ReplicaInfo(300, 1, 5000, False)]


# ---- disk full ----------------------------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a 4 MiB tmpfs for the disk-full test: {exc}")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a 4 MiB tmpfs for the disk-full test (needs root): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False, timeout=30)


def test_a_full_disk_refuses_new_replicas_and_never_lists_a_partial_one_as_good(
        tiny_tmpfs: Path, expect_log: Callable[..., None]) -> None:
    expect_log("cs.store.replica_damaged")
    expect_log("cs.store.damage_not_recorded", 0)  # the index shares the full disk (reserve_bytes=0 here)
    s = ChunkStore(tiny_tmpfs / "data", chunk_bytes=1 << 20, block_bytes=B)
    try:
        s.create(1, 1)
        s.write(1, 1, 0, pattern(2 * B))
        total, used, free = s.usage()
        assert total <= 4 << 20 and not s.nearfull
        with open(tiny_tmpfs / "filler", "wb") as f:
            f.write(bytes(free - int(total * 0.04)))
        assert s.nearfull and s.full
        with pytest.raises(errors.NoSpace):
            s.create(2, 1)
        assert not path_of(s, 2).exists()
        with pytest.raises(errors.NoSpace):
            s.write(1, 1, 0, pattern(1 << 20))  # more than the disk has left
        assert s.list_chunks() == []
        assert s.list_incomplete() == [ReplicaInfo(1, 1, 0, True)]  # flagged: the failed write left it torn
        os.unlink(tiny_tmpfs / "filler")
        assert not s.full
        new_chunk(s, 3)
        s.write(3, 1, 0, b"room again")
        s.fsync(3)
        assert s.read(3, 1, 0, 10) == b"room again"
    finally:
        s.close()
