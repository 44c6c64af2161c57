"""``vstore scrub -c CONFIG [PATH] [--json] [--jobs N]``: read every replica of every file under
PATH against its block checksums, and report what was found (issue 7).

How. The namespace under PATH (a path from the cluster's root, default ``/``) is walked
through the MDS (lookup, readdir). For every regular file the chunk map is fetched a page at a
time, with read capabilities, and the chunkserver of EVERY listed replica is asked to verify
its replica (``VerifyChunkRequest``, vstore/wire/cs.py): it reads the whole replica through its
verified read path and answers with what it checked, or with the CHECKSUM_MISMATCH a read
would get. The chunkserver treats a bad replica as it treats a failed client read: it marks
the replica bad and reports it to the MDS, which drops it and rebuilds the chunk from a good
copy. So a scrub repairs what it finds, and a second scrub after the rebuild is clean.

Load. At most ``--jobs`` (default 4) verifications are in flight, and each chunkserver runs one
at a time (vstore/chunkserver/service.py VERIFY_CONCURRENCY), so a scrub never takes more
than one disk thread of a chunkserver from client I/O.

Roles. The scrub connects as a "client", like ``get-attr``/``set-attr``: it does nothing a
reading client cannot do (lookup, readdir, chunk maps with read capabilities, capability-checked
requests to chunkservers), so no role gains a right. Running as "admin" was rejected: the MDS
serves namespace reads, and the chunkservers serve data requests, only to clients, and opening
them to admins would grant more than a scrub needs.

The report goes to stdout at the end (``--json``: the same as one object): files, chunks and
replicas checked, bytes verified, elapsed time and rate, then every problem:

* a **bad replica** failed a check: a block checksum, an unreadable header, a disk error, a
  missing replica file, a replica shorter than the MDS records, or a stale one (at another
  version than the MDS's);
* an **unreachable replica** could not be checked: its chunkserver was down, timed out,
  refused the capability, or is too old to verify;
* an **under-replicated chunk** has fewer replicas listed than its file's policy asks for (the
  MDS leaves out replicas it knows are damaged, until they are rebuilt);
* a **lost chunk** has no replica listed, or every listed one bad.

Files and chunks that changed during the scrub (deleted, truncated, a replica moved) are
counted as skipped, not as problems. While stderr is a terminal a one-line progress bar is
redrawn there; otherwise stderr gets nothing but errors.

Exit codes: 0 clean; 1 problems found, or the cluster could not be read; 2 usage errors (a
PATH that does not exist, a bad config).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import stat
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from vstore.errors import NotDir, NotFound, UsageError, VStoreError
from vstore.wire import ErrorCode
from vstore.wire import mds as w

ROOT_INODE = 1
#: The checksum block of every replica (fixed for the cluster): turns a failed block's index
#: into its byte offset in the chunk for the report.
BLOCK_BYTES = 4096
JOBS_DEFAULT = 4
#: More would only queue at the chunkservers, which verify one replica at a time each.
JOBS_MAX = 64
#: Problems kept per list of the report (the counts stay exact): enough to act on, and bounded
#: when a whole chunkserver is down under millions of chunks.
DETAIL_MAX = 10_000
#: One replica's verification, queueing at its chunkserver included (it verifies one at a time,
#: so a request may wait behind ``jobs - 1`` others): 64 MiB at a slow 20 MiB/s, times 4, with
#: room. A chunkserver that takes longer is reported unreachable (hung or overloaded).
VERIFY_DEADLINE_S = 120.0
#: MDS calls (walk, chunk maps) retry through leader changes for this long, then the scrub fails.
MDS_DEADLINE_S = 60.0
#: A capability with less life than this left is renewed before it is sent.
TOKEN_MARGIN_S = 30
#: Verification jobs waiting to be taken; the walk pauses when the queue is full, so the walk
#: (and the chunk maps it holds, with their capabilities) stays a little ahead of the checks.
QUEUE_JOBS_MAX = 256
PROGRESS_INTERVAL_S = 0.25
MIB = 1 << 20

#: Codes after which the chunk's info is fetched again and the replica asked once more: the
#: chunk may have moved on (a new version, a replica dropped), or the capability expired.
_REFRESH = frozenset({ErrorCode.STALE_VERSION, ErrorCode.BAD_CAPABILITY, ErrorCode.NOT_FOUND})
#: Codes that mean the replica could not be checked, not that it is bad.
_UNREACHABLE = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED, ErrorCode.CONNECTION_LOST,
                          ErrorCode.BUSY, ErrorCode.AUTH_FAILED, ErrorCode.UNKNOWN_MESSAGE, ErrorCode.PROTOCOL,
                          ErrorCode.INTERNAL, ErrorCode.NOT_LEADER, ErrorCode.NO_CHUNKSERVERS})
#: Of those, the ones that say the whole chunkserver cannot be used by this scrub: its other
#: replicas are reported unreachable without asking (a host that is down would otherwise
#: cost a connection timeout per replica).
_CS_DOWN = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED, ErrorCode.AUTH_FAILED,
                      ErrorCode.UNKNOWN_MESSAGE})


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser(
        "scrub", help="verify every replica of the files under PATH (exit 0 clean, 1 problems, 2 usage)",
        description="Read every replica of every file under PATH against its checksums and report bad, "
                    "unreachable, under-replicated and lost chunks. A bad replica is dropped and rebuilt by "
                    "the cluster. Exit codes: 0 clean, 1 problems found, 2 usage error.")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="any node's or a client's config")
    p.add_argument("path", nargs="?", default="/", help="a path from the cluster's root (default: /)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--jobs", type=int, default=JOBS_DEFAULT, metavar="N",
                   help=f"verifications in flight (default {JOBS_DEFAULT}, at most {JOBS_MAX})")
    p.set_defaults(handler=_scrub)


# ---- pure parts: paths, pages, classification, the report ---------------------------------------


def split_path(path: str) -> list[str]:
    """The components of a path from the cluster's root (``/`` -> [], ``/a//b/`` -> [a, b]).
    UsageError for a relative path or a ``.``/``..`` component (the MDS resolves neither). Pure."""
    if not path.startswith("/"):
        raise UsageError(f"{path!r}: give a path from the cluster's root, e.g. /images")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise UsageError(f"{path!r}: give the path without '.' or '..'")
    return parts


def child_path(parent: str, name: bytes) -> str:
    """``parent/name`` for the report; a name that is not UTF-8 keeps its bytes as escapes. Pure."""
    text = name.decode("utf-8", "backslashreplace")
    return f"{parent.rstrip('/')}/{text}"


def chunk_map_pages(size_bytes: int, chunk_bytes: int, page: int = w.CHUNK_MAP_MAX) -> list[tuple[int, int]]:
    """(first_index, count) of every chunk-map request that covers a file of ``size_bytes``
    in chunks of ``chunk_bytes``, ``page`` chunks per request; an empty file needs none. Pure."""
    if chunk_bytes <= 0 or page <= 0:
        raise ValueError(f"chunk_bytes={chunk_bytes}, page={page}: both must be positive")
    chunks = -(-size_bytes // chunk_bytes)
    return [(first, min(page, chunks - first)) for first in range(0, chunks, page)]


def expected_replicas(policy: str) -> int:
    """The replicas a file's policy asks for (``"3:2"`` -> 3); an empty policy is the default's.
    Pure."""
    from vstore.metadata.fsm.namespace import DEFAULT_POLICY
    from vstore.metadata.placement import ReplicaPolicy
    try:
        return ReplicaPolicy.parse(policy or DEFAULT_POLICY).replicas
    except ValueError:
        return ReplicaPolicy.parse(DEFAULT_POLICY).replicas


def classify(code: ErrorCode, *, refreshed: bool) -> str:
    """What a chunkserver's error to a verification means: "refresh" (fetch the chunk's info
    again and ask once more), "unreachable" (the replica could not be checked) or "bad". After
    a refresh, a stale version or a missing replica is bad (the MDS still lists it there) and a
    refused capability is unreachable (clock or key trouble, not the data's). Pure."""
    if code in _REFRESH and not refreshed:
        return "refresh"
    if code in _UNREACHABLE or code == ErrorCode.BAD_CAPABILITY:
        return "unreachable"
    return "bad"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclasses.dataclass(frozen=True)
class ReplicaProblem:
    path: str
    chunk_index: int
    chunk_id: int
    version: int
    cs_id: int
    address: str
    code: str     # the ErrorCode name ("CHECKSUM_MISMATCH", ...) or "SHORT"
    reason: str
    block: int | None = None  # the first failed block, for a checksum failure


@dataclasses.dataclass(frozen=True)
class ChunkProblem:
    path: str
    chunk_index: int
    chunk_id: int
    listed: int
    expected: int
    reason: str


@dataclasses.dataclass(frozen=True)
class Skipped:
    path: str
    chunk_index: int | None
    reason: str


_LISTS = ("bad", "unreachable", "under_replicated", "lost", "skipped")


@dataclasses.dataclass
class ScrubReport:
    """What a scrub found. Counters are exact; each problem list keeps its first DETAIL_MAX
    entries (``<list>_count`` is the full count). ``files``, ``chunks`` and ``bytes_done``
    count finished work; ``*_found`` and ``bytes_total`` what the walk has found so far."""

    path: str
    cluster: str = ""
    walk_done: bool = False
    files: int = 0
    files_found: int = 0
    chunks: int = 0
    chunks_found: int = 0
    replicas_listed: int = 0
    replicas_checked: int = 0   # answered: good or bad
    replicas_good: int = 0
    bytes_total: int = 0        # file bytes found (logical, once per file)
    bytes_done: int = 0         # file bytes whose chunks are all finished
    bytes_verified: int = 0     # replica bytes the chunkservers read and checked
    elapsed_s: float = 0.0
    bad: list[ReplicaProblem] = dataclasses.field(default_factory=list)
    unreachable: list[ReplicaProblem] = dataclasses.field(default_factory=list)
    under_replicated: list[ChunkProblem] = dataclasses.field(default_factory=list)
    lost: list[ChunkProblem] = dataclasses.field(default_factory=list)
    skipped: list[Skipped] = dataclasses.field(default_factory=list)
    counts: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(_LISTS, 0))

    def note(self, kind: str, item: Any) -> None:
        """Add a problem (or a skip) of ``kind`` (one of _LISTS), keeping at most DETAIL_MAX."""
        self.counts[kind] += 1
        entries: list[Any] = getattr(self, kind)
        if len(entries) < DETAIL_MAX:
            entries.append(item)

    @property
    def clean(self) -> bool:
        return not any(self.counts[k] for k in ("bad", "unreachable", "under_replicated", "lost"))

    @property
    def exit_code(self) -> int:
        return 0 if self.clean else 1

    @property
    def mib_per_s(self) -> float:
        return self.bytes_verified / MIB / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path, "cluster": self.cluster, "clean": self.clean, "files": self.files,
            "chunks": self.chunks, "replicas_listed": self.replicas_listed, "replicas_checked": self.replicas_checked,
            "replicas_good": self.replicas_good, "bytes_verified": self.bytes_verified,
            "file_bytes": self.bytes_done, "elapsed_s": round(self.elapsed_s, 3),
            "mib_per_s": round(self.mib_per_s, 1)}
        for kind in _LISTS:
            out[kind] = [dataclasses.asdict(e) for e in getattr(self, kind)]
            out[f"{kind}_count"] = self.counts[kind]
        return out

    def render(self) -> str:
        """The text report (several lines, no trailing newline)."""
        c = self.counts
        where = f"{self.path} (cluster {self.cluster})" if self.cluster else self.path
        lines = [f"scrub of {where}: {'CLEAN' if self.clean else 'PROBLEMS FOUND'}",
                 f"  files {self.files}, chunks {self.chunks}, replicas checked {self.replicas_checked} of "
                 f"{self.replicas_listed} listed ({self.replicas_good} good), "
                 f"{human_bytes(self.bytes_verified)} verified in {self.elapsed_s:.1f} s ({self.mib_per_s:.1f} MiB/s)",
                 f"  bad replicas {c['bad']}, unreachable replicas {c['unreachable']}, "
                 f"under-replicated chunks {c['under_replicated']}, lost chunks {c['lost']}"
                 + (f", skipped (changed during the scrub) {c['skipped']}" if c["skipped"] else "")]

        def section(kind: str, title: str, fmt: Callable[[Any], str]) -> None:
            if not c[kind]:
                return
            lines.append(f"  {title}:")
            lines.extend(f"    {fmt(e)}" for e in getattr(self, kind))
            if c[kind] > len(getattr(self, kind)):
                lines.append(f"    ... and {c[kind] - len(getattr(self, kind))} more")

        def replica(e: ReplicaProblem) -> str:
            at = f" (block {e.block}, byte {e.block * BLOCK_BYTES} of the chunk)" if e.block is not None else ""
            return (f"{e.path} chunk {e.chunk_index} (id {e.chunk_id:016x} v{e.version}) on cs {e.cs_id} "
                    f"{e.address}: {e.code}{at}: {e.reason}")

        def chunk(e: ChunkProblem) -> str:
            return f"{e.path} chunk {e.chunk_index} (id {e.chunk_id:016x}): {e.reason}"

        section("bad", "bad replicas", replica)
        if c["unreachable"]:
            # one line per chunkserver: a server that is down makes every one of its replicas
            # unreachable, and a line each would bury the rest (--json lists every replica)
            by_cs: dict[int, list[ReplicaProblem]] = {}
            for e in self.unreachable:
                by_cs.setdefault(e.cs_id, []).append(e)
            lines.append("  unreachable replicas, by chunkserver (--json lists each):")
            for cs_id, entries in sorted(by_cs.items()):
                first = next((e for e in entries if e.code != "NOT_ASKED"), entries[0])
                lines.append(f"    cs {cs_id} {first.address}: {len(entries)} replica(s) not checked, e.g. "
                             f"{first.path} chunk {first.chunk_index}: {first.code}: {first.reason}")
            if c["unreachable"] > len(self.unreachable):
                lines.append(f"    ... and {c['unreachable'] - len(self.unreachable)} more")
        section("under_replicated", "under-replicated chunks", chunk)
        section("lost", "lost chunks", chunk)
        section("skipped", "skipped", lambda e: f"{e.path}" + (f" chunk {e.chunk_index}" if e.chunk_index is not None
                                                               else "") + f": {e.reason}")
        return "\n".join(lines)


def progress_line(report: ScrubReport, width: int = 100) -> str:
    """The one-line progress bar: file bytes done of those found so far ("+": the walk goes
    on), files, chunks, bad replicas so far. At most ``width`` characters. Pure."""
    more = "" if report.walk_done else "+"
    if report.bytes_total:
        fraction = min(1.0, report.bytes_done / report.bytes_total)
    else:
        fraction = 1.0 if report.walk_done and report.files == report.files_found else 0.0
    bar_cells = 20
    filled = int(fraction * bar_cells)
    text = (f"scrub [{'#' * filled}{'.' * (bar_cells - filled)}] {fraction:4.0%} "
            f"{human_bytes(report.bytes_done)}/{human_bytes(report.bytes_total)}{more} "
            f"files {report.files}/{report.files_found}{more} chunks {report.chunks}/{report.chunks_found}{more} "
            f"bad {report.counts['bad']}")
    if report.counts["unreachable"]:
        text += f" unreachable {report.counts['unreachable']}"
    return text[:width]


# ---- the scrub itself ---------------------------------------------------------------------------


@dataclasses.dataclass
class _File:
    path: str
    inode: int
    size_bytes: int
    expected: int
    pending: int = 0          # chunks not finished yet
    mapped: bool = False      # every chunk-map page fetched
    counted_bytes: int = 0    # bytes_done added for it so far


@dataclasses.dataclass
class _Chunk:
    file: _File
    info: w.ChunkInfo
    chunk_bytes: int
    pending: int = 0          # replicas not finished yet
    good: int = 0
    bad: int = 0
    gone: bool = False        # the chunk changed under the scrub: skipped


class Scrub:
    """One scrub run over an MDS link and a ChunkIo (both owned by the caller)."""

    def __init__(self, link: Any, io: Any, report: ScrubReport, *, jobs: int = JOBS_DEFAULT,
                 clock: Callable[[], float] = time.monotonic, wall_s: Callable[[], float] = time.time) -> None:
        self.link = link
        self.io = io
        self.report = report
        self.jobs = jobs
        self.clock = clock
        self.wall_s = wall_s
        self._queue: asyncio.Queue[tuple[_Chunk, int] | None] = asyncio.Queue(maxsize=QUEUE_JOBS_MAX)
        self._seen: set[int] = set()       # inodes with several links, scrubbed once
        self._down: dict[int, str] = {}    # cs id -> why this scrub stopped asking it

    async def resolve(self, path: str) -> w.Attr:
        """The attributes of ``path``; UsageError (exit 2) when it does not exist."""
        attr = await self.link.getattr(ROOT_INODE)
        for part in split_path(path):
            try:
                attr = await self.link.lookup(attr.inode, part.encode())
            except (NotFound, NotDir):
                raise UsageError(f"no such path in the cluster: {path}") from None
        return attr

    async def run(self, top: w.Attr) -> ScrubReport:
        """Scrub everything under ``top`` (a file or a directory at ``report.path``)."""
        started = self.clock()
        try:
            # one task group: a worker that fails (the MDS gone past its deadline while renewing a
            # capability) cancels the walk, which would otherwise wait on a full queue for ever
            async with asyncio.TaskGroup() as group:
                for n in range(self.jobs):
                    group.create_task(self._worker(), name=f"scrub-{n}")
                await self._walk(top, self.report.path)
                self.report.walk_done = True
                for _ in range(self.jobs):
                    await self._queue.put(None)
        except BaseExceptionGroup as failed:
            # the first typed error is the one line the operator gets; anything else is a bug
            first = next((e for e in failed.exceptions if isinstance(e, VStoreError)), None)
            if first is not None:
                raise first from None
            raise
        finally:
            self.report.elapsed_s = self.clock() - started
        return self.report

    # ---- the walk -------------------------------------------------------------------------------

    async def _walk(self, top: w.Attr, path: str) -> None:
        if stat.S_ISREG(top.mode):
            await self._file(top, path)
            return
        if not stat.S_ISDIR(top.mode):
            return  # a symlink or a device: no chunks
        stack = [(top.inode, path)]
        while stack:
            inode, where = stack.pop()
            try:
                entries = await self.link.readdir(inode)
            except (NotFound, NotDir):
                self.report.note("skipped", Skipped(where, None, "directory removed during the scrub"))
                continue
            subdirs = []
            for entry in entries:
                if stat.S_ISDIR(entry.attr.mode):
                    subdirs.append((entry.attr.inode, child_path(where, entry.name)))
                elif stat.S_ISREG(entry.attr.mode):
                    await self._file(entry.attr, child_path(where, entry.name))
            stack.extend(reversed(subdirs))  # depth first, in name order

    async def _file(self, attr: w.Attr, path: str) -> None:
        if attr.nlink > 1:
            if attr.inode in self._seen:
                return  # another name of a file scrubbed already
            self._seen.add(attr.inode)
        report = self.report
        file = _File(path=path, inode=attr.inode, size_bytes=attr.size, expected=expected_replicas(attr.policy))
        report.files_found += 1
        report.bytes_total += attr.size
        pages = [(0, w.CHUNK_MAP_MAX)]
        fetched = 0
        while fetched < len(pages):
            first, count = pages[fetched]
            fetched += 1
            try:
                reply = await self._chunk_map(file.inode, first, count)
            except (NotFound, NotDir):
                report.note("skipped", Skipped(path, None, "file removed during the scrub"))
                break
            if first == 0:  # the first page says the file's size now and the chunk size
                report.bytes_total += reply.size - file.size_bytes
                file.size_bytes = reply.size
                pages.extend(chunk_map_pages(reply.size, reply.chunk_bytes)[1:])
            for info in reply.chunks:
                await self._chunk(file, info, reply.chunk_bytes)
        file.mapped = True
        if file.pending == 0:
            self._file_done(file)

    async def _chunk_map(self, inode: int, first: int, count: int) -> w.ChunkMapReply:
        reply = await self.link.call(w.ChunkMapRequest(uid=0, gid=0, inode=inode, first_index=first, count=count))
        if not isinstance(reply, w.ChunkMapReply):
            raise VStoreError(f"ChunkMap of inode {inode}: unexpected reply {type(reply).__name__}")
        return reply

    async def _chunk(self, file: _File, info: w.ChunkInfo, chunk_bytes: int) -> None:
        report = self.report
        report.chunks_found += 1
        chunk = _Chunk(file=file, info=info, chunk_bytes=chunk_bytes, pending=len(info.replicas))
        file.pending += 1
        report.replicas_listed += len(info.replicas)
        if not info.replicas:
            self._chunk_done(chunk)
            return
        for replica in info.replicas:
            await self._queue.put((chunk, replica.cs_id))  # waits while QUEUE_JOBS_MAX are queued

    # ---- verification ---------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            job = await self._queue.get()
            if job is None:
                return
            chunk, cs_id = job
            try:
                await self._verify(chunk, cs_id)
            finally:
                chunk.pending -= 1
                if chunk.pending == 0:
                    self._chunk_done(chunk)

    async def _refresh(self, chunk: _Chunk) -> bool:
        """Fetch the chunk's info again (a fresh capability, the current version and replicas).
        False when the file no longer has this chunk at that index: it changed, skip it."""
        file, old = chunk.file, chunk.info
        try:
            reply = await self._chunk_map(file.inode, old.index, 1)
        except (NotFound, NotDir):
            reply = None
        new = next((c for c in reply.chunks if c.index == old.index), None) if reply is not None else None
        if new is None or new.chunk_id != old.chunk_id:
            if not chunk.gone:
                chunk.gone = True
                self.report.note("skipped", Skipped(file.path, old.index, "chunk removed or replaced during the scrub"))
            return False
        chunk.info = new
        return True

    def _problem(self, chunk: _Chunk, replica: w.ReplicaAddress, code: str, reason: str,
                 block: int | None = None) -> ReplicaProblem:
        info = chunk.info
        return ReplicaProblem(path=chunk.file.path, chunk_index=info.index, chunk_id=info.chunk_id,
                              version=info.version, cs_id=replica.cs_id, address=replica.address, code=code,
                              reason=reason, block=block)

    async def _verify(self, chunk: _Chunk, cs_id: int) -> None:
        """Verify the replica of ``chunk`` on ``cs_id`` and count the outcome exactly once."""
        report = self.report
        refreshed = renewed = False  # at most one refresh for an error, one for an expiring capability
        while True:
            if chunk.gone:
                return
            replica = next((r for r in chunk.info.replicas if r.cs_id == cs_id), None)
            if replica is None:
                report.note("skipped", Skipped(chunk.file.path, chunk.info.index,
                                               f"replica on cs {cs_id} dropped during the scrub"))
                return
            if cs_id in self._down:
                report.note("unreachable", self._problem(chunk, replica, "NOT_ASKED", self._down[cs_id]))
                return
            expires = chunk.info.token_expires_s
            if expires and expires - TOKEN_MARGIN_S < self.wall_s() and not renewed:
                renewed = True
                if not await self._refresh(chunk):
                    return
                continue
            try:
                reply = await self.io.verify(chunk.info, replica, deadline_s=VERIFY_DEADLINE_S)
            except VStoreError as exc:
                kind = classify(exc.code, refreshed=refreshed)
                if kind == "refresh":
                    refreshed = True
                    if not await self._refresh(chunk):
                        return
                    continue
                if kind == "unreachable":
                    if exc.code in _CS_DOWN:
                        self._down[cs_id] = f"cs {cs_id} gave {exc.code.name} earlier in this scrub: {exc.message}"
                    report.note("unreachable", self._problem(chunk, replica, exc.code.name, exc.message))
                else:
                    block = exc.details.get("block") if exc.code == ErrorCode.CHECKSUM_MISMATCH else None
                    report.note("bad", self._problem(chunk, replica, exc.code.name, exc.message,
                                                     block if isinstance(block, int) else None))
                    report.replicas_checked += 1
                    chunk.bad += 1
                return
            report.replicas_checked += 1
            if reply.length_bytes < chunk.info.length_bytes:
                # a short replica would read as zeros where the file has data: wrong bytes
                report.note("bad", self._problem(chunk, replica, "SHORT", f"replica holds {reply.length_bytes} "
                                                 f"bytes, the MDS records {chunk.info.length_bytes}"))
                chunk.bad += 1
                return
            report.replicas_good += 1
            report.bytes_verified += reply.length_bytes
            chunk.good += 1
            return

    def _chunk_done(self, chunk: _Chunk) -> None:
        report, file, info = self.report, chunk.file, chunk.info
        report.chunks += 1
        listed = len(info.replicas)
        if not chunk.gone:
            if listed == 0 or chunk.bad == listed:
                reason = "no replica listed" if listed == 0 else f"all {listed} listed replicas are bad"
                report.note("lost", ChunkProblem(file.path, info.index, info.chunk_id, listed, file.expected, reason))
            if listed < file.expected:
                report.note("under_replicated", ChunkProblem(file.path, info.index, info.chunk_id, listed,
                                                             file.expected, f"{listed} of {file.expected} replicas "
                                                             "listed"))
        start = info.index * chunk.chunk_bytes
        piece = max(0, min(chunk.chunk_bytes, file.size_bytes - start))
        file.counted_bytes += piece
        report.bytes_done += piece
        file.pending -= 1
        if file.pending == 0 and file.mapped:
            self._file_done(file)

    def _file_done(self, file: _File) -> None:
        self.report.files += 1
        rest = max(0, file.size_bytes - file.counted_bytes)  # holes: nothing stored, nothing to check
        self.report.bytes_done += rest
        file.counted_bytes += rest


# ---- the command --------------------------------------------------------------------------------


async def _progress(report: ScrubReport, out: TextIO) -> None:
    while True:
        out.write("\r" + progress_line(report) + "\x1b[K")
        out.flush()
        await asyncio.sleep(PROGRESS_INTERVAL_S)


async def _run(config: Any, path: str, jobs: int, progress: TextIO | None) -> ScrubReport:
    from vstore.cli.tools import mds_link
    from vstore.client.chunk_io import ChunkIo
    from vstore.net import limits_of

    link = mds_link(config, "scrub", role="client", deadline_s=MDS_DEADLINE_S)
    io = ChunkIo(link.auth, limits=limits_of(config.net), attempt_deadline_s=VERIFY_DEADLINE_S)
    report = ScrubReport(path=path, cluster=config.cluster.name)
    ticker: asyncio.Task[None] | None = None
    try:
        scrub = Scrub(link, io, report, jobs=jobs)
        top = await scrub.resolve(path)
        if progress is not None:
            ticker = asyncio.create_task(_progress(report, progress), name="scrub-progress")
        return await scrub.run(top)
    finally:
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            assert progress is not None
            progress.write("\r\x1b[K")
            progress.flush()
        await io.close()
        await link.close_connections()


def _scrub(args: argparse.Namespace) -> int:
    from vstore.cli.tools import quiet_transport
    from vstore.config import load_client_config
    if not 1 <= args.jobs <= JOBS_MAX:
        raise UsageError(f"--jobs {args.jobs}: expected 1..{JOBS_MAX}")
    split_path(args.path)  # a bad path is a usage error before anything connects
    config = load_client_config(args.config)
    quiet_transport()  # an unreachable chunkserver is in the report itself
    report = asyncio.run(_run(config, args.path, args.jobs, sys.stderr if sys.stderr.isatty() else None))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.render())
    return report.exit_code
