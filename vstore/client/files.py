"""The client file system: files over the MDS and the chunkservers, as the FUSE layer uses it.

What it owns, per inode open on this client (``OpenFile``): the local view of the size, a
write-back buffer of dirty extents, the write leases (chunk infos with ``rw`` capabilities)
of the chunks being written, a read cache of the chunk map, a read-ahead window, and the
lengths written and acknowledged but not yet reported to the MDS. Metadata operations go
straight to the MDS (vstore/client/mds_link.py); this module adds the data path.

Writes. ``write`` lays the bytes into the buffer (sequential writes extend one extent) and
returns; the buffer is flushed when it holds ``writeback_bytes``, when a read overlaps it,
on ``flush`` (every close), ``fsync``, truncate, and by the background flusher once data
has been dirty for ``writeback_age_s``. A flush cuts the extents at chunk boundaries into
pieces of at most ``io_bytes`` and writes up to ``inflight`` of them at once down each
chunk's chain. A piece that fails is retried until the deadline (default 60 s, then EIO):

* a chunkserver of the chain failed (the error names it in ``failed_cs``): ask the MDS to
  repair the chain (drop it, bump the version) and resend the same bytes on the new chain;
* the replica's version or the capability no longer match (a repair by someone else, an
  expired lease, a truncate): fetch the chunk's current info and resend;
* anything retryable (no quorum, no chunkservers, a broken connection): back off, retry.

After the data is on every replica, ``WriteDone`` tells the MDS the file's size, mtime and
the chunks' lengths (on flush, fsync, release, and after background flushes). ``fsync``
flushes, fsyncs every chunk written since the last fsync down its chain, then reports: an
acknowledged fsync is on every replica's disk and in the MDS's committed state.

Reads. A read first flushes dirty data it overlaps (so a file reads back what was written
to it), then reads chunk by chunk: holes are zeros, bytes come from ``ChunkIo.read`` (local
replica first, verified, the next replica on any failure). When no replica answers, the
chunk's info is fetched again and the read retried until the deadline. Sequential reads
grow a read-ahead window up to ``readahead_bytes``.

Consistency. Close-to-open across hosts: ``open`` drops the file's cached chunk map and
read-ahead and takes the size from the MDS; ``flush`` (every close) reports size and
lengths. Within a host, POSIX: every handle of an inode shares one ``OpenFile``.

A write error that a background flush met is kept and returned by the next write, flush
or fsync of the file (as the kernel reports a failed write-back), never swallowed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec

from vstore.client.chunk_io import ChunkIo
from vstore.client.mds_link import MdsLink, expect_attr
from vstore.errors import (BadCapability, DeadlineExceeded, FileBusy, FileTooBig, InvalidArgument, NotPermitted, StaleHandle,
                           VStoreError)
from vstore.wire import ErrorCode
from vstore.wire import mds as w
from vstore.wire.codes import RETRYABLE_CODES

log = logging.getLogger(__name__)

MIB = 1024 * 1024
#: The largest file: 2^63 - 1 bytes would do for POSIX, but chunk indexes are 32-bit.
FILE_BYTES_MAX = 2**62
#: a read overtaken by this many writes in a row returns what it fetched last
READ_ATTEMPTS_MAX = 8


@dataclasses.dataclass(frozen=True)
class ClientOptions:
    """Tuning of the data path (the [client] config section)."""

    deadline_s: float = 60.0            # a request retried this long, then EIO
    io_bytes: int = MIB                 # the largest single chain write
    writeback_bytes: int = 16 * MIB     # dirty bytes per file that start a flush
    writeback_extents: int = 512        # separate dirty extents per file that start a flush
    writeback_age_s: float = 5.0        # dirty data older than this is flushed in the background
    inflight: int = 4                   # chain writes in flight per flush
    readahead_bytes: int = 4 * MIB      # the largest read-ahead window
    map_ttl_s: float = 30.0             # a cached chunk map (for reads) is fetched again after this
    busy_wait_s: float = 3.0            # an open refused by another host's exclusive-writer lease is retried this long
    host: str = ""                      # this client's failure-domain label (a local replica is read first)


@dataclasses.dataclass
class _Extent:
    offset: int
    data: bytearray

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclasses.dataclass
class _Handle:
    inode: int
    writable: bool


class OpenFile:
    """The state of one inode that is open on this client."""

    def __init__(self, inode: int, size: int) -> None:
        self.inode = inode
        self.size = size
        self.handles = 0
        self.extents: list[_Extent] = []        # dirty, sorted, disjoint
        self.flushing: list[_Extent] = []       # being written by the flush in progress
        self.dirty_bytes = 0
        self.dirty_since = 0.0                  # monotonic time of the oldest dirty byte
        self.mtime_ns: int | None = None        # of the last write not yet reported
        self.flush_lock = asyncio.Lock()
        self.wchunks: dict[int, w.ChunkInfo] = {}       # index -> info with a write capability
        self.written: set[int] = set()                  # chunk ids this client wrote (never create again)
        self.pending: dict[int, int] = {}               # index -> length written, not yet reported
        self.unsynced: set[int] = set()                 # indexes written since the last fsync
        self.rmap: dict[int, tuple[float, w.ChunkInfo | None]] = {}  # index -> (fetched at, info or hole)
        self.ra_offset = 0
        self.ra_data = b""
        self.ra_next = -1
        self.ra_window = 0
        #: counts writes into the buffer: a read that spans one fetches again
        self.generation = 0
        self.error: VStoreError | None = None

    # ---- the dirty buffer ----------------------------------------------------------------------

    def overlaps_dirty(self, offset: int, length: int) -> bool:
        end = offset + length
        return any(e.offset < end and offset < e.end for e in itertools.chain(self.extents, self.flushing))

    def add(self, offset: int, data: bytes | memoryview) -> None:
        """Lay ``data`` over the dirty buffer at ``offset`` (newest bytes win)."""
        end = offset + len(data)
        if not self.extents:
            self.dirty_since = time.monotonic()
        last = self.extents[-1] if self.extents else None
        if last is not None and last.end == offset:
            last.data += data                          # the sequential case
        elif last is not None and last.offset <= offset and end <= last.end:
            last.data[offset - last.offset:end - last.offset] = data
        else:
            touching = [e for e in self.extents if e.offset <= end and offset <= e.end]
            if len(touching) == 1 and touching[0].offset <= offset and end <= touching[0].end:
                e = touching[0]
                e.data[offset - e.offset:end - e.offset] = data
            elif not touching:
                self.extents.append(_Extent(offset, bytearray(data)))
                self.extents.sort(key=lambda e: e.offset)
            else:
                start = min(offset, touching[0].offset)
                stop = max(end, touching[-1].end)
                merged = bytearray(stop - start)
                for e in touching:
                    merged[e.offset - start:e.end - start] = e.data
                merged[offset - start:end - start] = data
                self.extents = [e for e in self.extents if e not in touching]
                self.extents.append(_Extent(start, merged))
                self.extents.sort(key=lambda e: e.offset)
        self.dirty_bytes = sum(len(e.data) for e in self.extents)
        self.generation += 1
        self.drop_readahead()

    def cut(self, size: int) -> None:
        """Forget dirty bytes at or past ``size`` (a truncate)."""
        kept = []
        for e in self.extents:
            if e.end <= size:
                kept.append(e)
            elif e.offset < size:
                kept.append(_Extent(e.offset, e.data[:size - e.offset]))
        self.extents = kept
        self.dirty_bytes = sum(len(e.data) for e in self.extents)
        self.generation += 1

    def drop_readahead(self) -> None:
        self.ra_data = b""
        self.ra_next = -1

    def forget_chunks(self) -> None:
        """Drop every cached chunk info (after a truncate, or at open: close-to-open)."""
        self.wchunks.clear()
        self.rmap.clear()
        self.drop_readahead()


class FileClient:
    """Files over the cluster. One per mount; ``close()`` flushes and ends the session."""

    def __init__(self, mds: MdsLink, io: ChunkIo, options: ClientOptions = ClientOptions(), *,
                 rng: random.Random | None = None) -> None:
        self.mds = mds
        self.io = io
        self.options = options
        self.chunk_bytes = 0
        self._files: dict[int, OpenFile] = {}
        self._handles: dict[int, _Handle] = {}
        self._next_fh = 1
        self._rng = rng or random.Random()
        self._flusher: asyncio.Task[None] | None = None
        self.stats = {"flushes": 0, "repairs": 0, "write_retries": 0, "fsync_retries": 0, "read_retries": 0,
                      "background_flushes": 0}

    async def start(self) -> None:
        await self.mds.start()
        self._flusher = asyncio.create_task(self._flush_loop(), name="client-flusher")

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        for state in list(self._files.values()):
            try:
                await self._flush(state)
                await self._report(state, release=True)
            except VStoreError as exc:
                log.error("client.flush_at_close_failed", extra={"inode": state.inode, "error": exc.message})
        await self.io.close()
        await self.mds.close()

    # ---- attributes (the local view of open files) ------------------------------------------------

    def local_attr(self, attr: w.Attr) -> w.Attr:
        """``attr`` with this client's size and mtime for a file it has open and is writing."""
        state = self._files.get(attr.inode)
        if state is None:
            return attr
        changes: dict[str, Any] = {}
        if state.size != attr.size:
            changes["size"] = state.size
        if state.mtime_ns is not None and state.mtime_ns > attr.mtime_ns:
            changes["mtime_ns"] = state.mtime_ns
        return msgspec.structs.replace(attr, **changes) if changes else attr

    async def getattr(self, inode: int, *, uid: int = 0, gid: int = 0) -> w.Attr:
        return self.local_attr(await self.mds.getattr(inode, uid=uid, gid=gid))

    async def setattr(self, inode: int, *, uid: int = 0, gid: int = 0, **fields: Any) -> w.Attr:
        """SetattrRequest fields; a size change goes through the file's buffer first."""
        state = self._files.get(inode)
        size = fields.get("size")
        if size is not None:
            if size > FILE_BYTES_MAX:
                raise FileTooBig(f"size {size} is past the largest file ({FILE_BYTES_MAX} bytes)")
            if state is not None:
                async with state.flush_lock:
                    state.cut(size)
                    await self._flush_locked(state)
                    await self._report(state)  # lengths written before the cut must not land after it
                    reply = await self.mds.mutate(lambda lane, seq: w.SetattrRequest(
                        uid=uid, gid=gid, lane=lane, seq=seq, inode=inode, **fields))
                    state.size = size
                    state.pending.clear()
                    if self.chunk_bytes:  # chunks wholly past the end are gone: nothing to fsync there
                        state.unsynced = {i for i in state.unsynced if i * self.chunk_bytes < size}
                    state.forget_chunks()
                    return self.local_attr(expect_attr(reply))
        reply = await self.mds.mutate(lambda lane, seq: w.SetattrRequest(uid=uid, gid=gid, lane=lane, seq=seq,
                                                                         inode=inode, **fields))
        return self.local_attr(expect_attr(reply))

    # ---- open and close ---------------------------------------------------------------------------

    async def open(self, inode: int, *, writable: bool, uid: int = 0, gid: int = 0) -> tuple[int, w.Attr]:
        """Open ``inode``: returns (file handle, attributes as the MDS has them now).

        FileBusy (an exclusive-write file another host writes) is retried for
        ``busy_wait_s``: close(2) on that host returns before its kernel sends the release,
        so an open right after the other host's close would otherwise see the lease held."""
        loop = asyncio.get_running_loop()
        busy_until = loop.time() + self.options.busy_wait_s
        backoff = 0.05
        while True:
            try:
                attr = expect_attr(await self.mds.mutate(lambda lane, seq: w.OpenRequest(
                    uid=uid, gid=gid, lane=lane, seq=seq, inode=inode, write=writable)))
                break
            except FileBusy:
                if loop.time() + backoff > busy_until:
                    raise
                await asyncio.sleep(backoff)
                backoff = min(0.5, backoff * 2)
        return await self._opened(attr, writable)

    async def create(self, parent: int, name: bytes, mode: int, *, writable: bool, uid: int = 0,
                     gid: int = 0) -> tuple[int, w.Attr]:
        """open(O_CREAT) of a new regular file: created and opened by one MDS command
        (MknodRequest ``open``), so there is no file this client made but could not open."""
        attr = expect_attr(await self.mds.mutate(lambda lane, seq: w.MknodRequest(
            uid=uid, gid=gid, lane=lane, seq=seq, parent=parent, name=name, kind=1, mode=mode,
            open=2 if writable else 1)))
        return await self._opened(attr, writable)

    async def _opened(self, attr: w.Attr, writable: bool) -> tuple[int, w.Attr]:
        """Count an open the MDS granted; the handle and the attributes for the kernel."""
        inode = attr.inode
        if attr.mode & 0o170000 != w.IFMT_OF_KIND[1]:
            raise InvalidArgument(f"inode {inode} is not a regular file")
        state = self._files.get(inode)
        if state is None:
            state = self._files[inode] = OpenFile(inode, attr.size)
        elif not state.extents and not state.flushing and not state.pending:
            state.size = attr.size
        if not state.extents and not state.flushing:
            state.forget_chunks()  # close-to-open: another host may have written since
        state.handles += 1
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = _Handle(inode, writable)
        if not self.chunk_bytes:
            await self._learn_chunk_bytes(inode)
        return fh, self.local_attr(attr)

    async def flush(self, fh: int) -> None:
        """Every close(2): write the buffer and report size and lengths (close-to-open)."""
        state = self._state(fh)
        await self._flush(state)
        await self._report(state)
        self._raise_deferred(state)

    async def release(self, fh: int) -> None:
        """The last close of a handle. Flushes (errors are logged: the kernel ignores them
        here; ``flush`` reported them to close(2) already) and tells the MDS."""
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        state = self._files.get(handle.inode)
        if state is None:
            return
        state.handles -= 1
        try:
            if state.handles <= 0:
                await self._flush(state)
                await self._report(state, release=True)
        except VStoreError as exc:
            log.error("client.release_flush_failed", extra={"inode": state.inode, "error": exc.message,
                                                            "dirty_bytes": state.dirty_bytes})
        finally:
            # only this state: while its flush ran, the file may have been closed by every
            # other handle and opened again, with a new state another handle writes through
            if state.handles <= 0 and self._files.get(handle.inode) is state:
                del self._files[handle.inode]
            try:  # every open was counted by the MDS, so every handle is released there
                await self.mds.mutate(lambda lane, seq: w.ReleaseRequest(uid=0, gid=0, lane=lane, seq=seq,
                                                                         inode=handle.inode, write=handle.writable))
            except VStoreError as exc:
                log.warning("client.release_failed", extra={"inode": handle.inode, "error": exc.message})

    async def fsync(self, fh: int) -> None:
        """Data on every replica's disk and size in the MDS's committed state, or an error."""
        state = self._state(fh)
        await self._flush(state)
        async with state.flush_lock:
            for index in sorted(state.unsynced):
                await self._fsync_chunk(state, index)
            state.unsynced.clear()
        await self._report(state)
        self._raise_deferred(state)

    def inode_of(self, fh: int) -> int:
        handle = self._handles.get(fh)
        return handle.inode if handle is not None else 0

    def _state(self, fh: int) -> OpenFile:
        handle = self._handles.get(fh)
        state = self._files.get(handle.inode) if handle is not None else None
        if state is None:
            raise StaleHandle(f"file handle {fh} is not open")
        return state

    def _raise_deferred(self, state: OpenFile) -> None:
        if state.error is not None:
            error, state.error = state.error, None
            raise error

    # ---- writes -------------------------------------------------------------------------------

    async def write(self, fh: int, offset: int, data: bytes | memoryview) -> int:
        handle = self._handles.get(fh)
        if handle is None or not handle.writable:
            raise NotPermitted(f"file handle {fh} is not open for writing")
        state = self._state(fh)
        self._raise_deferred(state)
        end = offset + len(data)
        if offset < 0 or end > FILE_BYTES_MAX:
            raise FileTooBig(f"a write up to byte {end} is past the largest file ({FILE_BYTES_MAX} bytes)")
        if not data:
            return 0
        state.add(offset, data)
        state.size = max(state.size, end)
        state.mtime_ns = time.time_ns()
        if state.dirty_bytes >= self.options.writeback_bytes or len(state.extents) >= self.options.writeback_extents:
            await self._flush(state)
        return len(data)

    async def _flush(self, state: OpenFile) -> None:
        async with state.flush_lock:
            await self._flush_locked(state)

    async def _flush_locked(self, state: OpenFile) -> None:
        if not state.extents:
            return
        state.flushing, state.extents = state.extents, []
        state.dirty_bytes = 0
        self.stats["flushes"] += 1
        try:
            pieces = list(self._pieces(state.flushing))
            written = [False] * len(pieces)
            queue = iter(range(len(pieces)))

            async def worker() -> None:
                for n in queue:
                    index, in_chunk, view = pieces[n]
                    await self._write_piece(state, index, in_chunk, view)
                    written[n] = True

            results = await asyncio.gather(*(worker() for _ in range(max(1, self.options.inflight))),
                                           return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                # every piece not written (failed, or left in the queue when the workers
                # stopped) stays dirty, below anything written since, for a later flush
                state.flushing, kept = [], state.flushing
                for n, (index, in_chunk, view) in enumerate(pieces):
                    start = index * self.chunk_bytes + in_chunk
                    if not written[n] and not state.overlaps_dirty(start, len(view)):
                        state.add(start, bytes(view))
                del kept
                for error in errors:
                    if not isinstance(error, VStoreError):
                        raise error
                raise errors[0]
        finally:
            state.flushing = []

    def _pieces(self, extents: list[_Extent]) -> Iterator[tuple[int, int, memoryview]]:
        """(chunk index, offset in the chunk, bytes) of at most io_bytes, inside one chunk."""
        size = self.chunk_bytes
        for e in extents:
            view = memoryview(e.data)
            pos = e.offset
            while pos < e.end:
                index, in_chunk = divmod(pos, size)
                n = min(e.end - pos, size - in_chunk, self.options.io_bytes)
                yield index, in_chunk, view[pos - e.offset:pos - e.offset + n]
                pos += n

    async def _write_piece(self, state: OpenFile, index: int, in_chunk: int, data: memoryview) -> None:
        async def write(info: w.ChunkInfo) -> None:
            await self.io.write(info, in_chunk, data,
                                create=info.chunk_id not in state.written and info.length_bytes == 0)
            state.written.add(info.chunk_id)

        await self._on_chain(state, index, "write", write)
        state.pending[index] = max(state.pending.get(index, 0), in_chunk + len(data))
        state.unsynced.add(index)

    async def _on_chain(self, state: OpenFile, index: int, what: str,
                        op: Callable[[w.ChunkInfo], Awaitable[None]], *, existing_only: bool = False) -> bool:
        """Run ``op`` on the chunk at ``index`` until it succeeds or the deadline passes (the
        module docstring's rules: repair around a failed chunkserver, fetch the chunk again
        once per version when it moved on, back off on anything retryable). With
        ``existing_only`` nothing is allocated: a chunk that is gone is skipped (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.deadline_s
        backoff = 0.05
        stale_versions: set[int] = set()
        while True:
            if existing_only and index not in state.wchunks:
                state.rmap.pop(index, None)
                if await self._read_info(state, index) is None:
                    return False
            info = await self._write_info(state, index)
            try:
                await op(info)
                return True
            except VStoreError as exc:
                self.stats[f"{what}_retries"] += 1
                if loop.time() >= deadline:
                    raise DeadlineExceeded(f"inode {state.inode} chunk {index}: {what} not done within "
                                           f"{self.options.deadline_s:g} s (last error: {exc.message})") from None
                failed = exc.details.get("failed_cs")
                if exc.code in (ErrorCode.STALE_VERSION, ErrorCode.BAD_CAPABILITY) \
                        and info.version not in stale_versions:
                    stale_versions.add(info.version)   # someone moved the chunk on: fetch it again
                    state.wchunks.pop(index, None)
                    continue
                if isinstance(failed, int) and exc.code not in (ErrorCode.INVALID_ARGUMENT, ErrorCode.RANGE):
                    # the survivors hold every acknowledged write; the dropped one is rebuilt
                    try:
                        await self._repair(state, index, info, failed, exc)
                        continue
                    except VStoreError as repair_error:
                        if repair_error.code not in RETRYABLE_CODES:
                            raise
                        log.info("client.repair_retry", extra={"inode": state.inode, "chunk": info.chunk_id,
                                                               "error": repair_error.message})
                elif exc.code not in RETRYABLE_CODES:
                    raise
                await asyncio.sleep(min(backoff, max(0.0, deadline - loop.time())) * (0.5 + self._rng.random()))
                backoff = min(1.0, backoff * 2)

    async def _write_info(self, state: OpenFile, index: int) -> w.ChunkInfo:
        """The chunk at ``index`` with a write capability still valid for a while."""
        info = state.wchunks.get(index)
        if info is None or not _usable(info):
            reply = await self.mds.mutate(lambda lane, seq: w.AllocChunkRequest(
                uid=0, gid=0, lane=lane, seq=seq, inode=state.inode, index=index, writer_host=self.options.host[:253]))
            if not isinstance(reply, w.ChunkReply):
                raise BadCapability(f"AllocChunk: unexpected reply {type(reply).__name__}")
            self.chunk_bytes = self.chunk_bytes or reply.chunk_bytes
            info = state.wchunks[index] = reply.chunk
        return info

    async def _repair(self, state: OpenFile, index: int, info: w.ChunkInfo, failed: int, cause: VStoreError) -> None:
        log.warning("client.chain_repair", extra={"inode": state.inode, "chunk": info.chunk_id,
                                                  "version": info.version, "failed_cs": failed,
                                                  "error": f"{cause.code.name}: {cause.message}"})
        reply = await self.mds.mutate(lambda lane, seq: w.RepairChainRequest(
            uid=0, gid=0, lane=lane, seq=seq, inode=state.inode, chunk_id=info.chunk_id, version=info.version, failed=(failed,)))
        if not isinstance(reply, w.ChunkReply):
            raise BadCapability(f"RepairChain: unexpected reply {type(reply).__name__}")
        self.stats["repairs"] += 1
        state.wchunks[index] = reply.chunk
        state.rmap.pop(index, None)

    async def _fsync_chunk(self, state: OpenFile, index: int) -> None:
        # never allocate here: a chunk that is gone (truncated away) has nothing to sync
        await self._on_chain(state, index, "fsync", self.io.fsync, existing_only=True)

    async def _report(self, state: OpenFile, *, release: bool = False) -> None:
        """WriteDone: size, mtime and the lengths written since the last report (``release``:
        and the write leases of those chunks). Nothing written since: nothing to say (the
        leases of chunks reported before go with the ReleaseRequest that follows)."""
        if not state.pending and state.mtime_ns is None:
            return
        pending = sorted(state.pending.items())
        mtime = state.mtime_ns if state.mtime_ns is not None else time.time_ns()
        batches = [pending[i:i + w.CHUNK_MAP_MAX] for i in range(0, len(pending), w.CHUNK_MAP_MAX)] or [[]]
        for n, batch in enumerate(batches):
            chunks = tuple(w.WrittenChunk(index=i, length_bytes=length) for i, length in batch)
            last = n == len(batches) - 1
            await self.mds.mutate(lambda lane, seq, chunks=chunks, last=last: w.WriteDoneRequest(  # type: ignore[misc]
                uid=0, gid=0, lane=lane, seq=seq, inode=state.inode, size=state.size, mtime_ns=mtime, chunks=chunks,
                release=release and last))
            for i, _ in batch:
                if state.pending.get(i) == dict(batch)[i]:
                    state.pending.pop(i, None)
        if state.mtime_ns == mtime:
            state.mtime_ns = None

    async def _flush_loop(self) -> None:
        """Background write-back: data dirty for writeback_age_s is written and reported."""
        while True:
            await asyncio.sleep(min(1.0, self.options.writeback_age_s / 2))
            now = time.monotonic()
            for state in list(self._files.values()):
                if state.extents and now - state.dirty_since >= self.options.writeback_age_s \
                        and not state.flush_lock.locked():
                    self.stats["background_flushes"] += 1
                    try:
                        await self._flush(state)
                        await self._report(state)
                    except VStoreError as exc:
                        state.error = state.error or exc
                        log.error("client.writeback_failed", extra={"inode": state.inode, "error": exc.message})

    # ---- reads --------------------------------------------------------------------------------

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        state = self._state(fh)
        data = b""
        for _ in range(READ_ATTEMPTS_MAX):
            if offset >= state.size or size <= 0:
                return b""
            generation = state.generation
            data = await self._read_once(state, offset, min(size, state.size - offset))
            if state.generation == generation:
                return data
            # a write landed while the bytes were fetched: they may predate it, or be torn by
            # its flush running alongside; read again (the write is in the buffer now, or its
            # flush is, and the read waits for it)
            self.stats["read_retries"] += 1
        return data

    async def _read_once(self, state: OpenFile, offset: int, size: int) -> bytes:
        if state.overlaps_dirty(offset, size):
            await self._flush(state)
        ra = state.ra_data
        if state.ra_offset <= offset and offset + size <= state.ra_offset + len(ra):
            state.ra_next = offset + size
            return ra[offset - state.ra_offset:offset - state.ra_offset + size]
        fetch = size
        if offset == state.ra_next:
            state.ra_window = min(self.options.readahead_bytes, max(state.ra_window * 2, 256 * 1024))
            fetch = max(size, state.ra_window)
        else:
            state.ra_window = 0
        fetch = min(fetch, state.size - offset)
        if fetch > size and state.overlaps_dirty(offset, fetch):
            fetch = size
        generation = state.generation
        data = await self._read_range(state, offset, fetch)
        if state.generation == generation:  # never cache bytes a write may have overtaken
            state.ra_offset, state.ra_data, state.ra_next = offset, data, offset + size
        return data[:size]

    async def _read_range(self, state: OpenFile, offset: int, length: int) -> bytes:
        size = self.chunk_bytes
        parts = []
        pos, end = offset, offset + length
        while pos < end:
            index, in_chunk = divmod(pos, size)
            n = min(end - pos, size - in_chunk)
            parts.append(await self._read_piece(state, index, in_chunk, n))
            pos += n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _read_piece(self, state: OpenFile, index: int, in_chunk: int, n: int) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.deadline_s
        backoff = 0.05
        refreshed = False
        while True:
            info = await self._read_info(state, index)
            if info is None:
                return bytes(n)
            known = max(info.length_bytes, state.pending.get(index, 0))
            try:
                return await self.io.read(info, in_chunk, n, expect_length=known)
            except VStoreError as exc:
                self.stats["read_retries"] += 1
                codes = set(exc.details.get("codes") or ())
                if loop.time() >= deadline:
                    raise DeadlineExceeded(f"inode {state.inode} chunk {index}: no replica readable within "
                                           f"{self.options.deadline_s:g} s ({exc.message})") from None
                state.rmap.pop(index, None)
                state.wchunks.pop(index, None)
                hopeless = codes and all(c in (int(ErrorCode.CHECKSUM_MISMATCH), int(ErrorCode.IO_ERROR))
                                         for c in codes)
                if hopeless and refreshed:
                    raise  # every replica is bad: EIO, never other bytes
                refreshed = True
                await asyncio.sleep(backoff * (0.5 + self._rng.random()))
                backoff = min(1.0, backoff * 2)

    async def _read_info(self, state: OpenFile, index: int) -> w.ChunkInfo | None:
        """The chunk to read at ``index`` (None: a hole). A chunk this client is writing is
        read with its write capability (it covers reads); else the cached chunk map, fetched
        a page at a time."""
        info = state.wchunks.get(index)
        if info is not None and _usable(info):
            return info
        cached = state.rmap.get(index)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.options.map_ttl_s and (
                cached[1] is None or _usable(cached[1])):
            return cached[1]
        last_index = max(index, (max(state.size, 1) - 1) // self.chunk_bytes)
        count = max(1, min(w.CHUNK_MAP_MAX, last_index - index + 1))
        reply = await self.mds.call(w.ChunkMapRequest(uid=0, gid=0, inode=state.inode, first_index=index,
                                                      count=count))
        if not isinstance(reply, w.ChunkMapReply):
            raise BadCapability(f"ChunkMap: unexpected reply {type(reply).__name__}")
        found = {c.index: c for c in reply.chunks}
        for i in range(index, index + count):
            state.rmap[i] = (now, found.get(i))
        return found.get(index)

    async def _learn_chunk_bytes(self, inode: int) -> None:
        reply = await self.mds.call(w.ChunkMapRequest(uid=0, gid=0, inode=inode, first_index=0, count=1))
        if not isinstance(reply, w.ChunkMapReply) or reply.chunk_bytes <= 0:
            raise BadCapability("the MDS did not say the cluster's chunk size")
        self.chunk_bytes = reply.chunk_bytes


def _usable(info: w.ChunkInfo) -> bool:
    """The chunk info's capability has no expiry, or more than 5 s left."""
    return not info.token_expires_s or info.token_expires_s - 5 > time.time()

