"""``vstore scrub``'s own logic without a cluster: the pure helpers (paths, chunk-map pages,
error classification, the report and the progress line), and the walk and its accounting
against a fake MDS and fake chunkservers (every outcome a replica can have, counted once)."""

from __future__ import annotations

import asyncio
import json
import stat

import pytest

from vstore.cli import scrub as s
from vstore.errors import (BadCapability, ChecksumMismatch, DiskIOError, NotFound, StaleVersion, Unavailable,
                           UsageError, from_wire, to_wire)
from vstore.wire import ErrorCode
from vstore.wire import cs as wcs
from vstore.wire import mds as w

MIB = 1 << 20
CHUNK = 64 * MIB


def test_split_path_takes_paths_from_the_root_only() -> None:
    assert s.split_path("/") == []
    assert s.split_path("/images//vm-1/") == ["images", "vm-1"]
    for bad in ("images", "", "/a/../b", "/./a"):
        with pytest.raises(UsageError):
            s.split_path(bad)


def test_child_path_joins_and_keeps_undecodable_names_visible() -> None:
    assert s.child_path("/", b"a") == "/a"
    assert s.child_path("/images", b"vm.img") == "/images/vm.img"
    assert s.child_path("/d", b"\xff\xfe") == "/d/\\xff\\xfe"


def test_chunk_map_pages_cover_every_chunk_once_in_pages() -> None:
    assert s.chunk_map_pages(0, CHUNK) == []
    assert s.chunk_map_pages(1, CHUNK) == [(0, 1)]
    assert s.chunk_map_pages(CHUNK, CHUNK) == [(0, 1)]
    assert s.chunk_map_pages(CHUNK + 1, CHUNK) == [(0, 2)]
    assert s.chunk_map_pages(600 * CHUNK - 5, CHUNK, page=256) == [(0, 256), (256, 256), (512, 88)]
    for size in (1, 255 * CHUNK, 256 * CHUNK, 256 * CHUNK + 1, 1000 * CHUNK + 7):
        indexes = [i for first, count in s.chunk_map_pages(size, CHUNK) for i in range(first, first + count)]
        assert indexes == list(range(-(-size // CHUNK)))
    with pytest.raises(ValueError):
        s.chunk_map_pages(10, 0)


def test_classify_refreshes_once_then_says_bad_or_unreachable() -> None:
    assert s.classify(ErrorCode.STALE_VERSION, refreshed=False) == "refresh"
    assert s.classify(ErrorCode.STALE_VERSION, refreshed=True) == "bad"
    assert s.classify(ErrorCode.NOT_FOUND, refreshed=True) == "bad"
    assert s.classify(ErrorCode.BAD_CAPABILITY, refreshed=False) == "refresh"
    assert s.classify(ErrorCode.BAD_CAPABILITY, refreshed=True) == "unreachable"
    for code in (ErrorCode.CHECKSUM_MISMATCH, ErrorCode.IO_ERROR, ErrorCode.INVALID_ARGUMENT):
        assert s.classify(code, refreshed=False) == "bad"
    for code in (ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED, ErrorCode.UNKNOWN_MESSAGE):
        assert s.classify(code, refreshed=False) == "unreachable"


def test_expected_replicas_follows_the_policy_and_the_default() -> None:
    assert s.expected_replicas("2:1") == 2
    assert s.expected_replicas("5") == 5
    assert s.expected_replicas("") == 3


def test_report_text_json_and_exit_code() -> None:
    report = s.ScrubReport(path="/images", cluster="prod", walk_done=True, files=2, chunks=3, replicas_listed=9,
                           replicas_checked=9, replicas_good=9, bytes_verified=300 * MIB, elapsed_s=2.0)
    assert report.clean and report.exit_code == 0
    text = report.render()
    assert text.splitlines()[0] == "scrub of /images (cluster prod): CLEAN"
    assert "files 2, chunks 3, replicas checked 9 of 9 listed (9 good), 300.0 MiB verified in 2.0 s (150.0 MiB/s)" \
        in text
    report.note("bad", s.ReplicaProblem("/images/a", 1, 0x2A, 3, 2, "10.0.0.2:9402", "CHECKSUM_MISMATCH",
                                        "1 block(s) failed", block=5))
    report.note("under_replicated", s.ChunkProblem("/images/b", 0, 7, 2, 3, "2 of 3 replicas listed"))
    assert not report.clean and report.exit_code == 1
    text = report.render()
    assert "PROBLEMS FOUND" in text and "bad replicas 1," in text
    assert ("/images/a chunk 1 (id 000000000000002a v3) on cs 2 10.0.0.2:9402: CHECKSUM_MISMATCH "
            "(block 5, byte 20480 of the chunk): 1 block(s) failed") in text
    data = json.loads(json.dumps(report.to_json()))
    assert data["clean"] is False and data["bad_count"] == 1 and data["bad"][0]["cs_id"] == 2
    assert data["under_replicated"][0] == {"path": "/images/b", "chunk_index": 0, "chunk_id": 7, "listed": 2,
                                           "expected": 3, "reason": "2 of 3 replicas listed"}
    assert data["mib_per_s"] == 150.0 and data["lost_count"] == 0
    skipped_only = s.ScrubReport(path="/")
    skipped_only.note("skipped", s.Skipped("/x", None, "file removed during the scrub"))
    assert skipped_only.clean, "what changed under the scrub is not a problem"


def test_report_lists_are_bounded_but_counts_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s, "DETAIL_MAX", 3)
    report = s.ScrubReport(path="/")
    for n in range(5):
        report.note("unreachable", s.ReplicaProblem("/f", n, n + 1, 1, 4, "a:1", "UNAVAILABLE", "down"))
    assert len(report.unreachable) == 3 and report.counts["unreachable"] == 5
    text = report.render()
    assert "    cs 4 a:1: 3 replica(s) not checked, e.g. /f chunk 0: UNAVAILABLE: down\n    ... and 2 more" in text
    assert text.count("UNAVAILABLE") == 1, "one line per chunkserver, not one per replica"


def test_progress_line_shows_the_fraction_and_marks_an_unfinished_walk() -> None:
    report = s.ScrubReport(path="/", files=1, files_found=3, chunks=2, chunks_found=5, bytes_total=4 * MIB,
                           bytes_done=1 * MIB)
    line = s.progress_line(report)
    assert line.startswith("scrub [#####...............]  25% 1.0 MiB/4.0 MiB+ files 1/3+ chunks 2/5+ bad 0")
    report.walk_done = True
    report.note("bad", s.ReplicaProblem("/f", 0, 1, 1, 1, "a:1", "CHECKSUM_MISMATCH", "x"))
    assert "files 1/3 chunks 2/5 bad 1" in s.progress_line(report)
    assert len(s.progress_line(report, width=30)) == 30
    empty = s.ScrubReport(path="/", walk_done=True)
    assert "100%" in s.progress_line(empty)


# ---- the walk against fakes -------------------------------------------------------------------------

REG, DIR = stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755


def attr(inode: int, mode: int, size: int = 0, nlink: int = 1, policy: str = "3:2") -> w.Attr:
    return w.Attr(inode=inode, mode=mode, uid=0, gid=0, nlink=nlink, size=size, atime_ns=0, mtime_ns=0, ctime_ns=0,
                  policy=policy)


def replicas(*cs_ids: int) -> tuple[w.ReplicaAddress, ...]:
    return tuple(w.ReplicaAddress(cs_id=c, address=f"10.0.0.{c}:9402") for c in cs_ids)


def chunk(index: int, chunk_id: int, length: int, *cs_ids: int, version: int = 1, expires_s: int = 0) -> w.ChunkInfo:
    return w.ChunkInfo(index=index, chunk_id=chunk_id, version=version, length_bytes=length,
                       replicas=replicas(*cs_ids), token=b"t" * 41, token_expires_s=expires_s)


class FakeMds:
    """A namespace: dirs map names to inodes, files have chunk maps; ``after_first`` swaps a
    chunk map after it was served once (a chunk that moved on during the scrub)."""

    def __init__(self) -> None:
        self.attrs: dict[int, w.Attr] = {1: attr(1, DIR)}
        self.dirs: dict[int, dict[bytes, int]] = {1: {}}
        self.maps: dict[int, list[w.ChunkInfo]] = {}
        self.after_first: dict[int, list[w.ChunkInfo]] = {}
        self.map_calls: list[tuple[int, int, int]] = []

    def mkdir(self, parent: int, name: bytes, inode: int) -> int:
        self.attrs[inode] = attr(inode, DIR)
        self.dirs[inode] = {}
        self.dirs[parent][name] = inode
        return inode

    def add_file(self, parent: int, name: bytes, inode: int, size: int, chunks: list[w.ChunkInfo],
                 **kw: object) -> int:
        self.attrs.setdefault(inode, attr(inode, REG, size, **kw))  # type: ignore[arg-type]
        self.maps[inode] = chunks
        self.dirs[parent][name] = inode
        return inode

    async def getattr(self, inode: int) -> w.Attr:
        return self.attrs[inode]

    async def lookup(self, parent: int, name: bytes) -> w.Attr:
        try:
            return self.attrs[self.dirs[parent][name]]
        except KeyError:
            raise NotFound(f"no {name!r}") from None

    async def readdir(self, inode: int) -> list[w.DirEntry]:
        return [w.DirEntry(name=n, attr=self.attrs[i]) for n, i in sorted(self.dirs[inode].items())]

    async def call(self, request: w.ChunkMapRequest) -> w.ChunkMapReply:
        assert isinstance(request, w.ChunkMapRequest)
        self.map_calls.append((request.inode, request.first_index, request.count))
        chunks = self.maps[request.inode]
        if request.inode in self.after_first and request.first_index == 0 and request.count > 1:
            self.maps[request.inode] = self.after_first.pop(request.inode)
        end = request.first_index + request.count
        return w.ChunkMapReply(chunk_bytes=CHUNK, size=self.attrs[request.inode].size,
                               chunks=tuple(c for c in chunks if request.first_index <= c.index < end))


class FakeCs:
    """Answers per (chunk id, version, cs id): an exception to raise, a reply length, or the
    chunk's own length by default. Counts every request."""

    def __init__(self) -> None:
        self.answers: dict[tuple[int, int, int], object] = {}
        self.asked: list[tuple[int, int, int]] = []
        self.expiries: list[int] = []

    async def verify(self, info: w.ChunkInfo, replica: w.ReplicaAddress, *, deadline_s: float) -> object:
        key = (info.chunk_id, info.version, replica.cs_id)
        self.asked.append(key)
        self.expiries.append(info.token_expires_s)
        await asyncio.sleep(0)
        answer = self.answers.get(key, info.length_bytes)
        if isinstance(answer, Exception):
            raise from_wire(to_wire(answer))  # as it arrives from the wire: a fresh typed error
        assert isinstance(answer, int)
        return wcs.VerifyChunkReply(length_bytes=answer, blocks_checked=-(-answer // 4096), block_bytes=4096)


async def scrub(mds: FakeMds, cs: FakeCs, path: str = "/", jobs: int = 3) -> s.ScrubReport:
    run = s.Scrub(mds, cs, s.ScrubReport(path=path), jobs=jobs, wall_s=lambda: 1000.0)
    return await run.run(await run.resolve(path))


async def test_a_clean_tree_is_walked_once_per_file_and_every_listed_replica_is_asked() -> None:
    mds, cs = FakeMds(), FakeCs()
    images = mds.mkdir(1, b"images", 2)
    deep = mds.mkdir(images, b"deep", 3)
    mds.add_file(images, b"a.img", 10, 2 * CHUNK + 5, [chunk(0, 100, CHUNK, 1, 2, 3), chunk(2, 102, 5, 2, 3, 1)])
    mds.add_file(deep, b"b", 11, 300, [chunk(0, 110, 300, 3, 1, 2)])
    mds.add_file(deep, b"b-link", 11, 300, [chunk(0, 110, 300, 3, 1, 2)], nlink=2)
    mds.attrs[11] = attr(11, REG, 300, nlink=2)
    mds.add_file(1, b"elsewhere", 12, 10, [chunk(0, 120, 10, 1, 2, 3)])
    mds.add_file(images, b"empty", 13, 0, [])
    report = await scrub(mds, cs, "/images")
    assert report.clean, report.render()
    assert (report.files, report.chunks, report.replicas_listed, report.replicas_good) == (3, 3, 9, 9)
    assert sorted(set(cs.asked)) == sorted(cs.asked), "each replica asked once"
    assert {k[0] for k in cs.asked} == {100, 102, 110}, "nothing outside /images, the hard link once"
    assert report.bytes_verified == 3 * (CHUNK + 5 + 300)
    assert report.bytes_done == report.bytes_total == 2 * CHUNK + 5 + 300, "holes count as done"
    assert "100%" in s.progress_line(report)
    one = await scrub(mds, FakeCs(), "/images/deep/b")
    assert (one.files, one.chunks, one.replicas_checked) == (1, 1, 3)


async def test_every_outcome_of_a_replica_is_counted_once_where_it_belongs() -> None:
    mds, cs = FakeMds(), FakeCs()
    mds.add_file(1, b"bad", 10, 100, [chunk(0, 1, 100, 1, 2, 3)])
    cs.answers[(1, 1, 2)] = ChecksumMismatch("1 block(s) failed", details={"block": 3, "chunk": 1})
    mds.add_file(1, b"short", 11, 100, [chunk(0, 2, 100, 1, 2, 3)])
    cs.answers[(2, 1, 3)] = 40
    mds.add_file(1, b"lost", 12, 100, [chunk(0, 3, 100, 1, 2)], policy="2:1")
    cs.answers[(3, 1, 1)] = DiskIOError("EIO")
    cs.answers[(3, 1, 2)] = ChecksumMismatch("marked damaged")
    mds.add_file(1, b"none", 13, 100, [chunk(0, 4, 100)])
    mds.add_file(1, b"under", 14, 100, [chunk(0, 5, 100, 1, 3)])
    mds.add_file(1, b"z-down", 15, 100, [chunk(0, 6, 100, 4, 1, 2), chunk(1, 7, 100, 4, 1, 2)])
    cs.answers[(6, 1, 4)] = Unavailable("connection refused")
    report = await scrub(mds, cs, jobs=1)  # one at a time: cs 4 is known down before chunk 7
    bad = {(p.path, p.cs_id, p.code) for p in report.bad}
    assert bad == {("/bad", 2, "CHECKSUM_MISMATCH"), ("/short", 3, "SHORT"), ("/lost", 1, "IO_ERROR"),
                   ("/lost", 2, "CHECKSUM_MISMATCH")}
    assert next(p.block for p in report.bad if p.path == "/bad") == 3
    assert [(p.path, p.chunk_index, p.code) for p in report.unreachable] == [("/z-down", 0, "UNAVAILABLE"),
                                                                             ("/z-down", 1, "NOT_ASKED")]
    assert (7, 1, 4) not in cs.asked, "a chunkserver found down is not asked again"
    assert {(p.path, p.reason) for p in report.lost} == {("/lost", "all 2 listed replicas are bad"),
                                                         ("/none", "no replica listed")}
    assert {(p.path, p.listed, p.expected) for p in report.under_replicated} == {("/none", 0, 3), ("/under", 2, 3)}
    assert report.replicas_checked == 3 + 3 + 2 + 2 + 4 and report.replicas_good == 2 + 2 + 2 + 4
    assert report.exit_code == 1 and report.files == 6 and report.chunks == 7


async def test_a_chunk_that_moves_on_is_refetched_and_one_that_is_replaced_is_skipped() -> None:
    mds, cs = FakeMds(), FakeCs()
    # chunk 1 went to version 2 after the walk fetched its map: the stale answer leads to a refetch
    mds.add_file(1, b"bumped", 10, 100, [chunk(0, 1, 100, 1, 2, 3, version=1)])
    mds.after_first[10] = [chunk(0, 1, 100, 1, 2, 3, version=2)]
    for c in (1, 2, 3):
        cs.answers[(1, 1, c)] = StaleVersion("replica at version 2")
    # chunk 2 was replaced by another chunk (file truncated and rewritten): skipped, not a problem
    mds.add_file(1, b"replaced", 11, 100, [chunk(0, 2, 100, 1, 2, 3)])
    mds.after_first[11] = [chunk(0, 9, 100, 1, 2, 3)]
    for c in (1, 2, 3):
        cs.answers[(2, 1, c)] = BadCapability("expired")
    # chunk 3: a replica still stale after the refetch is a stale replica: bad
    mds.add_file(1, b"stale", 12, 100, [chunk(0, 3, 100, 1, 2, 3)])
    cs.answers[(3, 1, 2)] = StaleVersion("replica at version 7")
    report = await scrub(mds, cs)
    assert [(p.path, p.cs_id, p.code) for p in report.bad] == [("/stale", 2, "STALE_VERSION")]
    assert {(1, 2, c) for c in (1, 2, 3)} <= set(cs.asked), "the refetched version was verified"
    assert report.counts["skipped"] == 1 and report.skipped[0].path == "/replaced"
    assert report.replicas_good == 3 + 2 and report.counts["unreachable"] == 0


async def test_an_expiring_capability_is_renewed_before_it_is_sent() -> None:
    mds, cs = FakeMds(), FakeCs()
    mds.add_file(1, b"f", 10, 100, [chunk(0, 1, 100, 1, expires_s=1010)], policy="1")  # the fake clock says 1000
    mds.after_first[10] = [chunk(0, 1, 100, 1, expires_s=1600)]
    report = await scrub(mds, cs)
    assert report.clean, report.render()
    assert (10, 0, 1) in mds.map_calls and cs.expiries == [1600], "renewed with a one-chunk map, then sent"


async def test_a_path_that_does_not_exist_is_a_usage_error() -> None:
    mds = FakeMds()
    mds.add_file(1, b"f", 10, 1, [])
    run = s.Scrub(mds, FakeCs(), s.ScrubReport(path="/nope"))
    with pytest.raises(UsageError, match="no such path in the cluster: /nope"):
        await run.resolve("/nope")
