"""The chunk layer of the metadata state machine (vstore/metadata/fsm/chunks.py), driven
through the same apply path Raft uses: every command's success and refusals, truncate and
deletion handing chunks to the deletion queue, the chunkserver registry, the expiry of a
session's request lanes, and equal state hashes on replicas. Every test ends with the full
consistency check of tests/harness/namespace.py (namespace and chunk invariants)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.namespace import NS, ROOT
from vstore.errors import (Exists, FileTooBig, InvalidArgument, IsDir, NotEmpty, NotFound, StaleHandle, StaleVersion,
                           VStoreError)
from vstore.metadata.fsm.namespace import (AddReplica, AllocChunk, ChunkDeleted, DropReplica, ExpireSession, Link,
                                           Mknod, Open, Release, Rename, RepairChain, SetAttr, SetCsState, Symlink,
                                           Unlink, UpdateCs, WriteDone)
from vstore.metadata.fsm.schema import (CHUNK_BYTES_DEFAULT, FILE_BYTES_MAX, U64, Chunk, CsAdminState, CsRecord,
                                        DoomedChunk, Kind, inode_decoder)
from vstore.wire.codes import ErrorCode

MIB = 1 << 20


@pytest.fixture
def ns(tmp_path: Path):
    """A file system with 1 MiB chunks (easy sums) and three chunkservers, cs 1, 2 and 3."""
    namespace = NS(tmp_path / "state", chunk_bytes=MIB)
    for node in ("cs-a", "cs-b", "cs-c"):
        namespace.register_cs(node)
    yield namespace
    namespace.check()
    namespace.sm.close()


def doomed(ns: NS) -> dict[int, DoomedChunk]:
    return dict(ns.sm.doomed(limit=10_000))


def filled(ns: NS, name: bytes, chunks: int, replicas: tuple[int, ...] = (1, 2, 3)) -> tuple[int, list[int]]:
    """A file of ``chunks`` full chunks, as a writer leaves it: allocated, written, reported."""
    inode = ns.create(ROOT, name)
    ids = [ns.alloc(inode, index, replicas)[0] for index in range(chunks)]
    ns.do(WriteDone, inode=inode, size=chunks * MIB, mtime_ns=5, chunks=tuple((i, MIB) for i in range(chunks)))
    return inode, ids


# ---- the chunk size -----------------------------------------------------------------------------------


def test_the_chunk_size_is_fixed_at_init_and_defaults_to_64_mib(tmp_path: Path, ns: NS) -> None:
    assert ns.sm.chunk_bytes() == MIB
    default = NS(tmp_path / "default")
    try:
        assert default.sm.chunk_bytes() == CHUNK_BYTES_DEFAULT == 64 * MIB
    finally:
        default.sm.close()


@pytest.mark.parametrize("chunk_bytes", [0, 4096, MIB // 2, 3 * MIB, MIB + 4096, 2 << 30, -MIB])
def test_init_refuses_a_chunk_size_that_is_not_a_power_of_two_from_1_mib_to_1_gib(tmp_path: Path,
                                                                                  chunk_bytes: int) -> None:
    with pytest.raises(InvalidArgument, match="power of two"):
        NS(tmp_path / "bad", chunk_bytes=chunk_bytes)


# ---- AllocChunk ---------------------------------------------------------------------------------------


def test_alloc_chunk_creates_version_1_on_the_leaders_chain(ns: NS) -> None:
    f = ns.create(ROOT, b"disk.img")
    chunk_id, chunk = ns.alloc(f, 3, (2, 1))
    assert chunk == Chunk(inode=f, index=3, version=1, length_bytes=0, replicas=(2, 1))
    assert ns.sm.chunk(chunk_id) == chunk
    assert ns.sm.chunk_map(f, 0, 10) == [(3, chunk_id, chunk)]
    assert ns.sm.getattr(f).size == 0, "allocating writes no data"


def test_alloc_chunk_at_an_occupied_index_is_eexist_naming_the_existing_chunk(ns: NS) -> None:
    f = ns.create(ROOT, b"f")
    first, _ = ns.alloc(f, 0, (1, 2))
    with pytest.raises(Exists, match=f"chunk {first} at index 0"):
        ns.alloc(f, 0, (3,))
    assert [c for _, c, _ in ns.sm.chunk_map(f, 0, 1)] == [first]


def test_alloc_chunk_needs_an_existing_regular_file(ns: NS) -> None:
    d = ns.mkdir(ROOT, b"d")
    link = ns.do(Symlink, parent=ROOT, name=b"l", target=b"d", inode=next(ns.ids))[0]
    fifo = ns.do(Mknod, parent=ROOT, name=b"p", kind=Kind.FIFO, mode=0o644, inode=next(ns.ids))[0]
    with pytest.raises(IsDir):
        ns.alloc(d, 0, (1,))
    for inode in (link, fifo):
        with pytest.raises(InvalidArgument, match="not a regular file"):
            ns.alloc(inode, 0, (1,))
    with pytest.raises(NotFound):
        ns.alloc(99_999, 0, (1,))


def test_alloc_chunk_past_the_largest_file_is_efbig(ns: NS) -> None:
    f = ns.create(ROOT, b"huge")
    last = FILE_BYTES_MAX // MIB - 1
    with pytest.raises(FileTooBig):
        ns.alloc(f, last + 1, (1,))
    with pytest.raises(InvalidArgument, match="negative"):
        ns.alloc(f, -1, (1,))
    ns.alloc(f, last, (1,))


def test_alloc_chunk_refuses_a_chunk_id_already_handed_out_or_out_of_range(ns: NS) -> None:
    f = ns.create(ROOT, b"f")
    used, _ = ns.alloc(f, 0, (1,))
    with pytest.raises(InvalidArgument, match="already handed out"):
        ns.do(AllocChunk, inode=f, index=1, chunk_id=used, replicas=(1,))
    for bad in (0, 2**63):
        with pytest.raises(InvalidArgument, match="out of range"):
            ns.do(AllocChunk, inode=f, index=1, chunk_id=bad, replicas=(1,))
    # a leader may skip ids (they were handed out to proposals that failed): the counter follows
    ns.do(AllocChunk, inode=f, index=1, chunk_id=used + 10, replicas=(1,))
    with pytest.raises(InvalidArgument, match="already handed out"):
        ns.do(AllocChunk, inode=f, index=2, chunk_id=used + 5, replicas=(1,))


@pytest.mark.parametrize("replicas,match", [((), "at least one replica"), ((1, 1), "twice"),
                                            ((1, 9), "not registered"), ((2, 4), "draining"),
                                            ((5,), "removed")])
def test_alloc_chunk_refuses_a_chain_of_unusable_or_duplicate_chunkservers(ns: NS, replicas: tuple[int, ...],
                                                                          match: str) -> None:
    ns.register_cs("cs-d")  # 4
    ns.register_cs("cs-e")  # 5
    ns.do(SetCsState, cs_id=4, state="draining")
    ns.do(SetCsState, cs_id=5, state="removed")
    f = ns.create(ROOT, b"f")
    with pytest.raises(InvalidArgument, match=match):
        ns.alloc(f, 0, replicas)
    assert ns.chunk_indexes(f) == []


def test_a_refused_alloc_chunk_consumes_no_chunk_id(ns: NS) -> None:
    f = ns.create(ROOT, b"f")
    with pytest.raises(InvalidArgument):
        ns.do(AllocChunk, inode=f, index=0, chunk_id=7, replicas=(42,))
    with ns.sm.env.begin() as txn:
        assert txn.get(b"next_chunk", db=ns.sm.tables[b"counters"]) is None
    ns.do(AllocChunk, inode=f, index=0, chunk_id=7, replicas=(1,))


# ---- WriteDone ------------------------------------------------------------------------------------------


def test_write_done_grows_the_size_sets_the_times_and_only_lengthens_chunks(ns: NS) -> None:
    f = ns.create(ROOT, b"f")
    a, _ = ns.alloc(f, 0, (1, 2))
    b, _ = ns.alloc(f, 1, (1, 2))
    inode, raw = ns.do(WriteDone, inode=f, size=MIB + 100, mtime_ns=42, chunks=((0, MIB), (1, 100)))
    node = inode_decoder.decode(raw)
    assert inode == f and node == ns.sm.getattr(f)
    assert node.size == MIB + 100 and node.mtime_ns == 42 and node.ctime_ns > 42
    # a slower writer reports an earlier, shorter write: nothing shrinks
    ns.do(WriteDone, inode=f, size=50, mtime_ns=43, chunks=((0, 50), (1, 10)))
    assert ns.sm.getattr(f).size == MIB + 100 and ns.sm.getattr(f).mtime_ns == 43
    assert ns.sm.chunk(a).length_bytes == MIB and ns.sm.chunk(b).length_bytes == 100
    assert ns.sm.chunk(b).version == 1, "a write report changes no version"


def test_write_done_does_not_bring_back_chunks_truncated_away(ns: NS) -> None:
    f, (first, second) = filled(ns, b"f", 2)
    ns.do(SetAttr, inode=f, size=0)  # a truncate overtakes a writer's report
    assert ns.chunk_indexes(f) == []
    ns.do(WriteDone, inode=f, size=2 * MIB, mtime_ns=9, chunks=((0, MIB), (1, MIB)))
    assert ns.chunk_indexes(f) == [], "no chunk is recreated; the range reads as a hole"
    assert set(doomed(ns)) == {first, second}


def test_write_done_refuses_a_length_past_the_chunk_size_a_size_past_the_largest_file_and_a_directory(
        ns: NS) -> None:
    f = ns.create(ROOT, b"f")
    ns.alloc(f, 0, (1,))
    with pytest.raises(InvalidArgument, match="within the chunk size"):
        ns.do(WriteDone, inode=f, size=10, mtime_ns=1, chunks=((0, MIB + 1),))
    with pytest.raises(FileTooBig):
        ns.do(WriteDone, inode=f, size=FILE_BYTES_MAX + 1, mtime_ns=1)
    with pytest.raises(IsDir):
        ns.do(WriteDone, inode=ROOT, size=10, mtime_ns=1)
    assert ns.sm.getattr(f).size == 0


# ---- RepairChain --------------------------------------------------------------------------------------


def test_repair_chain_drops_the_failed_replicas_appends_new_ones_and_changes_the_version(ns: NS) -> None:
    ns.register_cs("cs-d")  # 4
    f = ns.create(ROOT, b"f")
    chunk_id, _ = ns.alloc(f, 0, (1, 2, 3))
    got_id, raw = ns.do(RepairChain, chunk_id=chunk_id, version=1, drop=(2,), add=(4,), new_version=2)
    chunk = ns.sm.chunk(chunk_id)
    assert got_id == chunk_id and chunk.replicas == (1, 3, 4) and chunk.version == 2
    assert doomed(ns) == {}, "a failed replica is left to its chunk report (stale version), not queued"
    # no replacement available: the chain just gets shorter
    ns.do(RepairChain, chunk_id=chunk_id, version=2, drop=(1, 4), add=(), new_version=5)
    assert ns.sm.chunk(chunk_id).replicas == (3,) and ns.sm.chunk(chunk_id).version == 5


def test_repair_chain_at_a_version_the_chunk_has_left_is_stale_version(ns: NS) -> None:
    f = ns.create(ROOT, b"f")
    chunk_id, _ = ns.alloc(f, 0, (1, 2, 3))
    ns.do(RepairChain, chunk_id=chunk_id, version=1, drop=(3,), add=(), new_version=2)
    with pytest.raises(StaleVersion, match="at version 2, not 1") as caught:
        ns.do(RepairChain, chunk_id=chunk_id, version=1, drop=(2,), add=(), new_version=2)
    assert caught.value.code == ErrorCode.STALE_VERSION
    assert ns.sm.chunk(chunk_id).replicas == (1, 2)


@pytest.mark.parametrize("drop,add,new_version,match", [
    ((2,), (), 1, "must exceed"),
    ((3,), (), 2, "no replica on chunkserver 3"),
    ((2,), (2,), 2, "both dropped and added"),
    ((2,), (1,), 2, "already has a replica"),
    ((2,), (9,), 2, "not registered"),
    ((1, 2), (), 2, "leaves no replica"),
])
def test_repair_chain_refusals_change_nothing(ns: NS, drop: tuple[int, ...], add: tuple[int, ...], new_version: int,
                                              match: str) -> None:
    f = ns.create(ROOT, b"f")
    chunk_id, before = ns.alloc(f, 0, (1, 2))
    with pytest.raises(InvalidArgument, match=match):
        ns.do(RepairChain, chunk_id=chunk_id, version=1, drop=drop, add=add, new_version=new_version)
    assert ns.sm.chunk(chunk_id) == before
    with pytest.raises(NotFound):
        ns.do(RepairChain, chunk_id=chunk_id + 1, version=1, drop=(1,), add=(), new_version=2)


# ---- AddReplica, DropReplica, ChunkDeleted -----------------------------------------------------------------


def test_add_replica_appends_a_verified_copy_and_refuses_a_stale_or_duplicate_one(ns: NS) -> None:
    f = ns.create(ROOT, b"f")
    chunk_id, _ = ns.alloc(f, 0, (1,))
    got, raw = ns.do(AddReplica, chunk_id=chunk_id, version=1, cs_id=2)
    assert got == chunk_id and ns.sm.chunk(chunk_id).replicas == (1, 2)
    with pytest.raises(Exists):
        ns.do(AddReplica, chunk_id=chunk_id, version=1, cs_id=2)
    ns.do(RepairChain, chunk_id=chunk_id, version=1, drop=(2,), add=(), new_version=2)
    with pytest.raises(StaleVersion):  # the copy was made of version 1: useless now
        ns.do(AddReplica, chunk_id=chunk_id, version=1, cs_id=3)
    ns.do(SetCsState, cs_id=3, state="draining")
    with pytest.raises(InvalidArgument, match="draining"):
        ns.do(AddReplica, chunk_id=chunk_id, version=2, cs_id=3)
    with pytest.raises(NotFound):
        ns.do(AddReplica, chunk_id=chunk_id + 1, version=1, cs_id=3)
    assert ns.sm.chunk(chunk_id).replicas == (1,)


def test_drop_replica_queues_the_copy_for_deletion_and_dropping_the_last_leaves_the_chunk_lost(ns: NS) -> None:
    f = ns.create(ROOT, b"f")
    chunk_id, _ = ns.alloc(f, 0, (1, 2))
    ns.do(DropReplica, chunk_id=chunk_id, cs_id=1)
    assert ns.sm.chunk(chunk_id).replicas == (2,)
    assert doomed(ns) == {chunk_id: DoomedChunk(version=1, replicas=(1,))}
    with pytest.raises(NotFound):
        ns.do(DropReplica, chunk_id=chunk_id, cs_id=1)
    ns.do(DropReplica, chunk_id=chunk_id, cs_id=2)
    lost = ns.sm.chunk(chunk_id)
    assert lost.replicas == () and ns.chunk_indexes(f) == [0], "lost, not a hole"
    assert doomed(ns)[chunk_id].replicas == (1, 2)


def test_a_server_with_a_doomed_copy_pending_cannot_take_the_chunk_again_until_it_confirms(ns: NS) -> None:
    f = ns.create(ROOT, b"f")
    chunk_id, _ = ns.alloc(f, 0, (1, 2))
    ns.do(DropReplica, chunk_id=chunk_id, cs_id=2)
    with pytest.raises(InvalidArgument, match="not yet deleted its old copy"):
        ns.do(AddReplica, chunk_id=chunk_id, version=1, cs_id=2)
    with pytest.raises(InvalidArgument, match="not yet deleted its old copy"):
        ns.do(RepairChain, chunk_id=chunk_id, version=1, drop=(), add=(2,), new_version=2)
    assert ns.do(ChunkDeleted, chunk_id=chunk_id, cs_id=2) == 0
    ns.do(AddReplica, chunk_id=chunk_id, version=1, cs_id=2)
    assert ns.sm.chunk(chunk_id).replicas == (1, 2)


def test_chunk_deleted_shrinks_the_queue_entry_until_it_goes_and_is_idempotent(ns: NS) -> None:
    f, (chunk_id,) = filled(ns, b"f", 1)
    ns.do(Unlink, parent=ROOT, name=b"f")
    assert doomed(ns) == {chunk_id: DoomedChunk(version=1, replicas=(1, 2, 3))}
    assert ns.do(ChunkDeleted, chunk_id=chunk_id, cs_id=2) == 2
    assert ns.do(ChunkDeleted, chunk_id=chunk_id, cs_id=2) == 2, "a repeated confirmation changes nothing"
    assert ns.do(ChunkDeleted, chunk_id=chunk_id, cs_id=1) == 1
    assert ns.do(ChunkDeleted, chunk_id=chunk_id, cs_id=3) == 0
    assert doomed(ns) == {}
    assert ns.do(ChunkDeleted, chunk_id=chunk_id, cs_id=3) == 0
    assert ns.do(ChunkDeleted, chunk_id=123_456, cs_id=1) == 0, "unknown chunk: no-op success"
    assert ns.do(ChunkDeleted, chunk_id=-1, cs_id=1) == 0, "an impossible id is unknown too, never a crash"
    assert f


# ---- truncate --------------------------------------------------------------------------------------------


def test_truncate_deletes_chunks_past_the_end_and_cuts_and_reversions_the_last_one(ns: NS) -> None:
    f, ids = filled(ns, b"f", 4)
    ns.do(SetAttr, inode=f, size=MIB + MIB // 2)
    assert ns.sm.getattr(f).size == MIB + MIB // 2
    assert [(i, c) for i, c, _ in ns.sm.chunk_map(f, 0, 10)] == [(0, ids[0]), (1, ids[1])]
    assert ns.sm.chunk(ids[0]).version == 1 and ns.sm.chunk(ids[0]).length_bytes == MIB
    cut = ns.sm.chunk(ids[1])
    assert cut.version == 2 and cut.length_bytes == MIB // 2 and cut.replicas == (1, 2, 3)
    assert doomed(ns) == {ids[2]: DoomedChunk(1, (1, 2, 3)), ids[3]: DoomedChunk(1, (1, 2, 3))}
    for gone in ids[2:]:
        with pytest.raises(NotFound):
            ns.sm.chunk(gone)


def test_truncate_into_a_chunk_changes_its_version_even_when_its_length_already_fits(ns: NS) -> None:
    f = ns.create(ROOT, b"f")
    chunk_id, _ = ns.alloc(f, 0, (1,))
    ns.do(WriteDone, inode=f, size=MIB, mtime_ns=1, chunks=((0, 100),))
    ns.do(SetAttr, inode=f, size=200)
    chunk = ns.sm.chunk(chunk_id)
    assert chunk.length_bytes == 100 and chunk.version == 2, "unreported bytes past 200 must not be served"


def test_truncate_to_a_chunk_boundary_keeps_the_chunk_before_it_untouched(ns: NS) -> None:
    f, ids = filled(ns, b"f", 3)
    ns.do(SetAttr, inode=f, size=2 * MIB)
    assert ns.sm.chunk(ids[1]).version == 1 and ns.sm.chunk(ids[1]).length_bytes == MIB
    assert set(doomed(ns)) == {ids[2]}
    ns.do(SetAttr, inode=f, size=0)
    assert ns.chunk_indexes(f) == [] and set(doomed(ns)) == set(ids)


def test_growing_a_file_changes_no_chunk(ns: NS) -> None:
    f, ids = filled(ns, b"f", 2)
    before = [ns.sm.chunk(c) for c in ids]
    ns.do(SetAttr, inode=f, size=10 * MIB + 5)
    ns.do(SetAttr, inode=f, size=10 * MIB + 5)  # the same size again: no truncation either
    assert [ns.sm.chunk(c) for c in ids] == before and doomed(ns) == {}


def test_truncate_also_deletes_chunks_allocated_past_the_reported_size(ns: NS) -> None:
    f, ids = filled(ns, b"f", 2)
    in_flight, _ = ns.alloc(f, 7, (3,))  # a writer's chunk whose WriteDone has not arrived
    ns.do(SetAttr, inode=f, size=MIB)
    assert ns.chunk_indexes(f) == [0] and set(doomed(ns)) == {ids[1], in_flight}


def test_truncate_past_the_largest_file_is_efbig(ns: NS) -> None:
    f = ns.create(ROOT, b"f")
    with pytest.raises(FileTooBig):
        ns.do(SetAttr, inode=f, size=FILE_BYTES_MAX + 1)
    ns.do(SetAttr, inode=f, size=FILE_BYTES_MAX)


def test_a_lost_chunk_truncated_away_leaves_nothing_to_delete(ns: NS) -> None:
    f = ns.create(ROOT, b"f")
    chunk_id, _ = ns.alloc(f, 1, (1,))
    ns.do(DropReplica, chunk_id=chunk_id, cs_id=1)
    ns.do(ChunkDeleted, chunk_id=chunk_id, cs_id=1)
    ns.do(WriteDone, inode=f, size=2 * MIB, mtime_ns=1)
    ns.do(SetAttr, inode=f, size=0)
    assert ns.chunk_indexes(f) == [] and doomed(ns) == {}


# ---- files going away ---------------------------------------------------------------------------------


def test_unlinking_the_last_name_deletes_every_chunk_and_a_hard_link_keeps_them(ns: NS) -> None:
    f, ids = filled(ns, b"f", 3, replicas=(2, 3))
    ns.do(Link, inode=f, parent=ROOT, name=b"g")
    ns.do(Unlink, parent=ROOT, name=b"f")
    assert ns.chunk_indexes(f) == [0, 1, 2] and doomed(ns) == {}
    ns.do(Unlink, parent=ROOT, name=b"g")
    assert doomed(ns) == {c: DoomedChunk(1, (2, 3)) for c in ids}
    assert ns.sm.iter_chunks() == []


def test_renaming_over_a_file_deletes_the_replaced_files_chunks(ns: NS) -> None:
    src, src_ids = filled(ns, b"src", 1)
    dst, dst_ids = filled(ns, b"dst", 2)
    ns.do(Rename, parent=ROOT, name=b"src", new_parent=ROOT, new_name=b"dst")
    assert set(doomed(ns)) == set(dst_ids)
    assert ns.chunk_indexes(src) == [0] and ns.sm.chunk(src_ids[0]).inode == src
    assert dst


def test_an_open_unlinked_files_chunks_live_until_the_last_release_or_session_expiry(ns: NS) -> None:
    kept, kept_ids = filled(ns, b"kept", 2)
    dead, dead_ids = filled(ns, b"dead", 1)
    ns.do(Open, inode=kept, session=b"\x01" * 8)
    ns.do(Open, inode=dead, session=b"\x02" * 8)
    ns.do(Unlink, parent=ROOT, name=b"kept")
    ns.do(Unlink, parent=ROOT, name=b"dead")
    assert doomed(ns) == {} and ns.chunk_indexes(kept) == [0, 1], "still readable through the open handles"
    ns.do(Release, inode=kept, session=b"\x01" * 8)
    assert set(doomed(ns)) == set(kept_ids)
    ns.do(ExpireSession, session=b"\x02" * 8)
    assert set(doomed(ns)) == set(kept_ids + dead_ids) and ns.sm.iter_chunks() == []


# ---- the chunkserver registry ----------------------------------------------------------------------------


def test_register_cs_records_the_server_and_a_second_registration_of_its_node_is_eexist(ns: NS) -> None:
    cs_id = ns.register_cs("cs-d", host="node4", rack="r2", capacity_bytes=5 << 40)
    record = ns.sm.chunkservers()[cs_id]
    assert record.node_id == "cs-d" and (record.host, record.rack, record.address) == ("node4", "r2", "node4:9402")
    assert record.capacity_bytes == 5 << 40 and record.state == CsAdminState.ACTIVE and record.registered_ns > 0
    assert ns.sm.cs_by_node("cs-d") == cs_id and ns.sm.cs_by_node("cs-zz") is None
    with pytest.raises(Exists, match=f"already registered as cs {cs_id}"):
        ns.register_cs("cs-d", host="elsewhere")
    assert sorted(ns.sm.chunkservers()) == [1, 2, 3, cs_id]


def test_register_cs_refuses_a_reused_id_and_bad_labels(ns: NS) -> None:
    from vstore.metadata.fsm.namespace import RegisterCs

    def register(**kw):  # type: ignore[no-untyped-def]
        fields = dict(cs_id=10, node_id="cs-x", host="h", rack="", address="h:1", capacity_bytes=1) | kw
        return ns.do(RegisterCs, **fields)

    with pytest.raises(InvalidArgument, match="already handed out"):
        register(cs_id=3)
    for bad in ({"cs_id": 0}, {"cs_id": 2**32}):
        with pytest.raises(InvalidArgument, match="out of range"):
            register(**bad)
    for bad in ({"address": "nohost"}, {"address": "h:0"}, {"address": "h:99999"}, {"address": ":80"},
                {"address": "h:\u00b2"}, {"node_id": ""}, {"host": ""}, {"node_id": "n" * 65}, {"capacity_bytes": -1}):
        with pytest.raises(InvalidArgument):
            register(**bad)
    assert register() == 10


def test_removing_a_chunkserver_waits_until_no_chunk_lists_it_and_is_final(ns: NS) -> None:
    f = ns.create(ROOT, b"f")
    chunk_id, _ = ns.alloc(f, 0, (1, 2))
    ns.do(SetCsState, cs_id=2, state="draining")
    with pytest.raises(NotEmpty, match=f"replicas of 1 chunks \\(chunk {chunk_id} first\\)"):
        ns.do(SetCsState, cs_id=2, state="removed")
    ns.do(AddReplica, chunk_id=chunk_id, version=1, cs_id=3)  # the planner moves the replica away
    ns.do(DropReplica, chunk_id=chunk_id, cs_id=2)
    assert doomed(ns)[chunk_id].replicas == (2,)
    assert ns.do(SetCsState, cs_id=2, state="removed") == 2
    assert ns.sm.chunkservers()[2].state == CsAdminState.REMOVED
    assert doomed(ns) == {}, "a removed server's pending deletions go with its disk"
    for state in ("active", "draining"):
        with pytest.raises(InvalidArgument, match="removed for good"):
            ns.do(SetCsState, cs_id=2, state=state)
    with pytest.raises(Exists):
        ns.register_cs("cs-b")  # its node id stays taken
    with pytest.raises(InvalidArgument, match="expected one of"):
        ns.do(SetCsState, cs_id=1, state="offline")
    with pytest.raises(NotFound):
        ns.do(SetCsState, cs_id=77, state="draining")


def test_a_draining_server_can_be_made_active_again(ns: NS) -> None:
    ns.do(SetCsState, cs_id=1, state="draining")
    ns.do(SetCsState, cs_id=1, state="active")
    f = ns.create(ROOT, b"f")
    ns.alloc(f, 0, (1,))


def test_update_cs_changes_a_restarted_servers_address_and_capacity(ns: NS) -> None:
    assert ns.do(UpdateCs, cs_id=1, address="10.0.0.9:9500", capacity_bytes=123) == 1
    record = ns.sm.chunkservers()[1]
    assert record == CsRecord("cs-a", "cs-a", "", "10.0.0.9:9500", 123, "active", record.registered_ns)
    with pytest.raises(InvalidArgument):
        ns.do(UpdateCs, cs_id=1, address="no-port", capacity_bytes=1)
    with pytest.raises(NotFound):
        ns.do(UpdateCs, cs_id=99, address="h:1", capacity_bytes=1)
    ns.do(SetCsState, cs_id=3, state="removed")
    with pytest.raises(InvalidArgument, match="removed"):
        ns.do(UpdateCs, cs_id=3, address="h:1", capacity_bytes=1)


# ---- reads ---------------------------------------------------------------------------------------------------


def test_chunk_map_reads_one_range_of_indexes_and_leaves_out_holes(ns: NS) -> None:
    f = ns.create(ROOT, b"sparse")
    ids = {index: ns.alloc(f, index, (1,))[0] for index in (0, 2, 5, 9)}
    assert [(i, c) for i, c, _ in ns.sm.chunk_map(f, 2, 4)] == [(2, ids[2]), (5, ids[5])]
    assert ns.sm.chunk_map(f, 10, 100) == [] and ns.sm.chunk_map(f, 0, 0) == []
    other = ns.create(ROOT, b"other")
    ns.alloc(other, 0, (2,))
    assert [i for i, _, _ in ns.sm.chunk_map(f, 0, 2**32)] == [0, 2, 5, 9], "never another file's chunks"
    with pytest.raises(IsDir):
        ns.sm.chunk_map(ROOT)
    with pytest.raises(NotFound):
        ns.sm.chunk(10_000)


def test_iter_chunks_and_doomed_page_through_in_chunk_id_order(ns: NS) -> None:
    f = ns.create(ROOT, b"f")
    ids = [ns.alloc(f, index, (1, 2))[0] for index in range(25)]
    seen, after = [], 0
    while page := ns.sm.iter_chunks(after_chunk_id=after, limit=7):
        seen.extend(c for c, _ in page)
        after = page[-1][0]
    assert seen == ids
    ns.do(Unlink, parent=ROOT, name=b"f")
    queued, after = [], 0
    while page := ns.sm.doomed(limit=10, after_chunk_id=after):
        queued.extend(c for c, _ in page)
        after = page[-1][0]
    assert queued == ids and ns.sm.doomed(limit=3) == [(c, DoomedChunk(1, (1, 2))) for c in ids[:3]]


# ---- sessions ------------------------------------------------------------------------------------------------


def _lanes(ns: NS) -> set[str]:
    with ns.sm.env.begin() as txn:
        return {bytes(k).decode() for k in txn.cursor(db=ns.sm.sessions_db).iternext(keys=True, values=False)}


def test_expire_session_keeps_the_lanes_records_and_a_clean_close_forgets_them(ns: NS) -> None:
    dead, closed, alive = (bytes.fromhex(h) for h in ("00aa11bb22cc33dd", "00aa11bb22cc33dc", "00aa11bb22cc33de"))
    lanes = (f"{dead.hex()}/0", f"{dead.hex()}/17", f"{closed.hex()}/3", f"{alive.hex()}/0", "kv-client-1")
    for seq, lane in enumerate(lanes):
        ns.do_on_lane(lane, seq + 1, Mknod, parent=ROOT, name=f"f{seq}".encode(), kind=Kind.FILE, mode=0o644,
                      inode=next(ns.ids))
    f = ns.sm.lookup(ROOT, b"f0")[0]
    ns.do_on_lane(f"{dead.hex()}/0", 9, Open, inode=f, session=dead)
    assert ns.sm.session_ids() == {dead, closed, alive}, "from the opens table and the lanes; other client ids skipped"
    assert ns.do(ExpireSession, session=dead) == 1
    assert ns.do(ExpireSession, session=closed, forget_lanes=True) == 0
    assert _lanes(ns) == set(lanes) - {f"{closed.hex()}/3"}, "a silent session's records stay for its late retries"
    assert ns.sm.session_ids() == {alive}, "an expired session is not timed again by a new leader"
    assert ns.do(ExpireSession, session=b"\x07" * 8) == 0, "an unknown session: nothing to do"


def test_an_expired_session_gets_its_last_answers_on_retry_and_every_new_command_is_refused(ns: NS) -> None:
    session, other = b"\x10" * 8, b"\x11" * 8
    lane, lane2 = f"{session.hex()}/1", f"{session.hex()}/2"
    inode = next(ns.ids)
    first = ns.do_on_lane(lane, 1, Mknod, parent=ROOT, name=b"f", kind=Kind.FILE, mode=0o644, inode=inode)
    again = ns.do_on_lane(lane, 1, Mknod, parent=ROOT, name=b"f", kind=Kind.FILE, mode=0o644, inode=inode)
    assert list(again) == list(first), "the stored reply, not a second apply (which would be EEXIST)"
    ns.do(ExpireSession, session=session)
    late = ns.do_on_lane(lane, 1, Mknod, parent=ROOT, name=b"f", kind=Kind.FILE, mode=0o644, inode=next(ns.ids))
    assert list(late) == list(first), "a retry after the expiry: still the truth (it was applied)"
    for name, on in ((b"g", lane), (b"h", lane2)):
        with pytest.raises(StaleHandle):  # new commands of the fenced session, on a used lane or a fresh one
            ns.do_on_lane(on, 2, Mknod, parent=ROOT, name=name, kind=Kind.FILE, mode=0o644, inode=next(ns.ids))
    assert ns.sm.lane_record(lane2) is None, "a refused command leaves no record"
    assert [name for name, _ in ns.sm.readdir(ROOT)] == [b"f"]
    ns.do_on_lane(f"{other.hex()}/1", 1, Mknod, parent=ROOT, name=b"g", kind=Kind.FILE, mode=0o644, inode=next(ns.ids))
    ns.do(ExpireSession, session=other, forget_lanes=True)
    with pytest.raises(StaleHandle):  # closed cleanly: no record kept, every command refused
        ns.do_on_lane(f"{other.hex()}/1", 1, Mknod, parent=ROOT, name=b"g", kind=Kind.FILE, mode=0o644,
                      inode=next(ns.ids))


# ---- determinism ----------------------------------------------------------------------------------------------


def _workload(ns: NS) -> None:
    for node in ("cs-a", "cs-b", "cs-c", "cs-d"):
        ns.register_cs(node)
    f, _ = filled(ns, b"f", 3)
    g, _ = filled(ns, b"g", 2, replicas=(4, 1))
    chunk_id = ns.sm.chunk_map(f, 1, 1)[0][1]
    ns.do(RepairChain, chunk_id=chunk_id, version=1, drop=(2,), add=(4,), new_version=2)
    ns.do(DropReplica, chunk_id=chunk_id, cs_id=1)
    ns.do(SetAttr, inode=f, size=MIB + 10)
    with pytest.raises(VStoreError):  # refusals count too: same result, no effects
        ns.do(AddReplica, chunk_id=chunk_id, version=1, cs_id=3)
    ns.do(Unlink, parent=ROOT, name=b"g")
    ns.do(ChunkDeleted, chunk_id=chunk_id, cs_id=1)
    ns.do(SetCsState, cs_id=3, state="draining")
    ns.do(UpdateCs, cs_id=2, address="cs-b:9500", capacity_bytes=7)
    ns.do_on_lane("00000000000000ff/3", 1, ExpireSession, session=b"\x00" * 7 + b"\xfe")
    assert g


def test_replicas_applying_the_same_chunk_commands_have_equal_state_hashes(tmp_path: Path) -> None:
    a, b = NS(tmp_path / "a", chunk_bytes=MIB), NS(tmp_path / "b", chunk_bytes=MIB)
    try:
        _workload(a)
        _workload(b)
        assert a.sm.state_hash() == b.sm.state_hash()
        assert a.sm.iter_chunks() == b.sm.iter_chunks() and a.sm.doomed() == b.sm.doomed()
        a.check()
        # one differing chain shows in the hash
        a.do(AddReplica, chunk_id=a.sm.iter_chunks()[0][0], version=1, cs_id=4)
        b.do(DropReplica, chunk_id=b.sm.iter_chunks()[0][0], cs_id=3)
        assert a.sm.state_hash()[0] == b.sm.state_hash()[0] and a.sm.state_hash() != b.sm.state_hash()
    finally:
        a.sm.close()
        b.sm.close()


def test_chunk_size_differences_show_in_the_state_hash(tmp_path: Path) -> None:
    a, b = NS(tmp_path / "a", chunk_bytes=MIB), NS(tmp_path / "b", chunk_bytes=2 * MIB)
    try:
        assert a.sm.state_hash()[0] == b.sm.state_hash()[0] and a.sm.state_hash() != b.sm.state_hash()
    finally:
        a.sm.close()
        b.sm.close()


def test_the_counters_the_leader_reloads_move_past_every_id_applied(ns: NS) -> None:
    f = ns.create(ROOT, b"f")
    ns.do(AllocChunk, inode=f, index=0, chunk_id=41, replicas=(1,))
    with ns.sm.env.begin() as txn:
        counters = ns.sm.tables[b"counters"]
        assert U64.unpack(txn.get(b"next_chunk", db=counters))[0] == 42
        assert U64.unpack(txn.get(b"next_cs", db=counters))[0] == 4


def test_ids_no_key_can_hold_are_refused_and_never_crash_the_apply(ns: NS) -> None:
    for inode in (-1, 2**64 - 1):
        with pytest.raises(NotFound):
            ns.do(AllocChunk, inode=inode, index=0, chunk_id=1, replicas=(1,))
        with pytest.raises(NotFound):
            ns.do(WriteDone, inode=inode, size=1, mtime_ns=1)
    f = ns.create(ROOT, b"f")
    ns.do(WriteDone, inode=f, size=1, mtime_ns=1, chunks=((2**40, 5),))  # no such index: skipped
    for chunk_id in (-1, 2**64 - 1):
        with pytest.raises(NotFound):
            ns.do(DropReplica, chunk_id=chunk_id, cs_id=1)
    with pytest.raises(InvalidArgument):
        ns.alloc(f, 0, (-1, 2**40))


def test_an_expired_session_leaves_a_tombstone_that_is_pruned_after_a_week(ns: NS) -> None:
    from vstore.metadata.fsm.schema import EXPIRED_KEEP_NS
    old, new = b"\x21" * 8, b"\x22" * 8
    assert not ns.sm.session_expired(old)
    ns.do(ExpireSession, session=old)
    assert ns.sm.session_expired(old) and not ns.sm.session_expired(new)
    ns.do_on_lane(f"{new.hex()}/0", 1, Mknod, parent=ROOT, name=b"n", kind=Kind.FILE, mode=0o644, inode=next(ns.ids))
    ns.do(ExpireSession, session=new, now_ns=next(ns.clock) + EXPIRED_KEEP_NS + 1)
    assert ns.sm.session_expired(new) and not ns.sm.session_expired(old)
    assert _lanes(ns) == {f"{new.hex()}/0"}
    ns.do(ExpireSession, session=old, now_ns=next(ns.clock) + 2 * EXPIRED_KEEP_NS + 2)
    assert _lanes(ns) == set(), "the lane records go with their session's tombstone"
