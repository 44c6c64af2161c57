"""A chunkserver's data path: chain-replicated writes, verified reads, fsync down the chain,
and whole-replica verification for ``vstore scrub``.

What it owns: the handlers of vstore/wire/cs.py on top of one ``ChunkStore``. Every request
is checked in this order before any disk work: the capability (issued by the MDS for this
chunk and version; BAD_CAPABILITY), the chunk id (parsed by the chunk file layout; nothing
else ever names a file), then the replica's own version (STALE_VERSION). Blocking disk work
runs in the store's executor, never on the event loop.

Chain writes: the local write and the forward to the next replica run concurrently; the
answer goes back only when both are done, so an acknowledged write is on every replica of
the chain. A failure names the chunkserver where it happened (``failed_cs`` in the error's
details, set by the replica that saw it first), so the writer can ask the MDS to repair
the chain without it. fsync goes down the chain the same way: acknowledged only once every
replica has made the data durable; a failed fsync marks the local replica bad for good and
is never reported as success (RELIABILITY.md §4.2).

What it must not do: decide anything about placement or versions (the MDS does), or retry
a failed fsync.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import xxhash

from vstore.chunkserver.store import ChunkStore
from vstore.errors import Exists, Unavailable, VStoreError
from vstore.net import Auth, Reply, Router, RpcClient, RpcClients
from vstore.net.rpc import RequestContext
from vstore.wire import ErrorCode
from vstore.wire import cs as w
from vstore.wire.capability import verify_capability

log = logging.getLogger(__name__)

_DATA_ROLES = frozenset({"client", "cs"})
#: A verification (``vstore scrub``) reads the replica this much at a time, one disk job per
#: piece: client reads and writes queued meanwhile on the executor run between two pieces,
#: and a verification holds at most this much memory. 4 MiB streams at disk speed (pread of
#: 1024 blocks); a whole 64 MiB chunk per job was rejected (it would pin the chunk's lock and
#: a disk thread for the whole chunk, and 64 MiB of memory per verification).
VERIFY_PIECE_BYTES = 4 * 1024 * 1024
#: Verifications running at once on this chunkserver; more wait their turn. One, so at most
#: one disk thread of ``disk_threads`` is ever busy verifying and the others stay free for
#: client I/O, however many verifications scrubs send (a rate limit like the background
#: scrubber's was rejected: an operator who runs a scrub wants it done at the disk's pace
#: when the disk is otherwise idle).
VERIFY_CONCURRENCY = 1


class ChunkDataService:
    def __init__(self, store: ChunkStore, *, cs_id: int, auth: Auth, capability_key: bytes,
                 capability_skew_s: float = 30.0, forward_deadline_s: float = 30.0, disk_threads: int = 4) -> None:
        self.store = store
        self.cs_id = cs_id
        self.auth = auth
        self.capability_key = capability_key
        self.capability_skew_s = capability_skew_s
        self.forward_deadline_s = forward_deadline_s
        self.executor = ThreadPoolExecutor(max_workers=disk_threads, thread_name_prefix=f"cs-disk-{cs_id}")
        self._peers = RpcClients(auth, expected_role="cs", default_deadline_s=self.forward_deadline_s)
        #: this process's boot id (``wire.cs.Boots``): a restart draws a new one
        self.boot = secrets.randbits(63) | 1
        #: called (not awaited) when a read finds a replica here damaged: the MDS is told
        self.on_damage: Callable[[int, int, str], Awaitable[None]] | None = None
        self._reports: set[asyncio.Task[None]] = set()
        self._verify_slots = asyncio.Semaphore(VERIFY_CONCURRENCY)
        self.stats = {"writes": 0, "reads": 0, "fsyncs": 0, "verifies": 0, "bytes_written": 0, "bytes_read": 0,
                      "bytes_verified": 0, "refused": 0}

    def register(self, router: Router) -> None:
        router.add(w.WriteChunkRequest, self._write, roles=_DATA_ROLES)
        router.add(w.ReadChunkRequest, self._read, roles=_DATA_ROLES)
        router.add(w.FsyncChunkRequest, self._fsync, roles=_DATA_ROLES)
        router.add(w.VerifyChunkRequest, self._verify, roles=_DATA_ROLES)

    async def close(self) -> None:
        await asyncio.gather(*self._reports, return_exceptions=True)
        await self._peers.close()
        self.executor.shutdown(wait=True)

    # ---- helpers ------------------------------------------------------------------------------------

    def _check(self, chunk_id: int, version: int, token: bytes, mode: str) -> None:
        try:
            verify_capability(self.capability_key, token, chunk_id=chunk_id, version=version, mode=mode,
                              now_s=time.time(), skew_s=self.capability_skew_s)
        except VStoreError:
            self.stats["refused"] += 1
            raise

    async def _disk(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def _peer(self, address: str) -> RpcClient:
        return self._peers.get(address)

    async def _forward(self, request: Any, payload: bytes | bytearray | memoryview, chain: tuple[w.ChainHop, ...],
                       payload_digest: bytes | None = None) -> Any:
        """Send the request to the next hop with the rest of the chain. An error that names
        no chunkserver (the hop is unreachable, or broke the connection) names the hop."""
        hop = chain[0]
        onward = msgspec.structs.replace(request, chain=chain[1:])
        try:
            reply = await self._peer(hop.address).call(onward, payload, deadline_s=self.forward_deadline_s,
                                                       payload_digest=payload_digest)
        except VStoreError as exc:
            exc.details.setdefault("failed_cs", hop.cs_id)
            raise
        return reply.message

    def _local_failure(self, exc: VStoreError) -> VStoreError:
        exc.details.setdefault("failed_cs", self.cs_id)
        return exc

    def _note_damage(self, chunk_id: int, version: int, exc: VStoreError) -> None:
        """A read or a verification of the local replica failed: when it failed a checksum
        (the store has marked it bad already), tell the MDS, which drops it and rebuilds the
        chunk from a good replica. Not awaited: the reader gets its error now."""
        if exc.code == ErrorCode.CHECKSUM_MISMATCH and self.on_damage is not None:
            task = asyncio.ensure_future(self.on_damage(chunk_id, version, exc.message))
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)

    # ---- handlers -----------------------------------------------------------------------------------

    async def _write(self, ctx: RequestContext, m: w.WriteChunkRequest, payload: bytes) -> Any:
        self._check(m.chunk_id, m.version, m.token, "rw")

        async def local() -> None:
            try:
                if m.create:
                    try:
                        await self._disk(self.store.create, m.chunk_id, m.version, incomplete=False)
                    except Exists:
                        pass  # the replica is there already (a retried first write)
                await self._disk(self.store.write, m.chunk_id, m.version, m.offset, payload,
                                 client_checksums=list(m.checksums))
            except VStoreError as exc:
                raise self._local_failure(exc) from None

        jobs = [local()]
        if m.chain:
            jobs.append(self._forward(m, payload, m.chain, ctx.payload_digest))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        self.stats["writes"] += 1
        self.stats["bytes_written"] += len(payload)
        below: Any = results[1] if m.chain else None
        return w.WriteChunkReply(replicas=1 + (below.replicas if below else 0),
                                 boots=(self.boot, *(below.boots if below else ())))

    async def _read(self, ctx: RequestContext, m: w.ReadChunkRequest, payload: bytes) -> Any:
        self._check(m.chunk_id, m.version, m.token, "r")
        try:
            data = await self._disk(self.store.read, m.chunk_id, m.version, m.offset, m.length)
        except VStoreError as exc:
            self._note_damage(m.chunk_id, m.version, exc)
            raise
        self.stats["reads"] += 1
        self.stats["bytes_read"] += len(data)
        length = m.offset + len(data) if len(data) < m.length else 0
        return Reply(w.ReadChunkReply(length_bytes=length, checksum=xxhash.xxh3_64_intdigest(data)), data)

    async def _verify(self, ctx: RequestContext, m: w.VerifyChunkRequest, payload: bytes) -> Any:
        """Read the whole replica through the store's verified read path and discard the bytes.

        Same checks as a read, in the same order (capability, chunk id, version), and the same
        consequence of a failed block (replica marked bad, damage reported to the MDS). Pieces
        of VERIFY_PIECE_BYTES, one disk job each, from block 0 up to the valid length; the
        length is re-read with every piece, so a replica that grows meanwhile (a write at the
        same version) is checked to its new end, and a version change (truncate, chain repair)
        ends it with STALE_VERSION. A replica is reported good only once every block below its
        valid length has been read and checked."""
        self._check(m.chunk_id, m.version, m.token, "r")
        async with self._verify_slots:  # await: waits behind other verifications, never client I/O
            offset = blocks = 0
            while True:
                try:
                    done = await self._disk(self.store.verify, m.chunk_id, m.version, offset, VERIFY_PIECE_BYTES)
                except VStoreError as exc:
                    self._note_damage(m.chunk_id, m.version, exc)
                    raise
                blocks += done.blocks
                offset += done.blocks * done.block_bytes
                if done.blocks == 0 or offset >= done.length_bytes:
                    break
        assert offset >= done.length_bytes, (offset, done)  # every block below the valid length was checked
        self.stats["verifies"] += 1
        self.stats["bytes_verified"] += done.length_bytes
        return w.VerifyChunkReply(length_bytes=done.length_bytes, blocks_checked=blocks, block_bytes=done.block_bytes)

    async def _fsync(self, ctx: RequestContext, m: w.FsyncChunkRequest, payload: bytes) -> Any:
        self._check(m.chunk_id, m.version, m.token, "rw")
        if m.boots and m.boots[0] != self.boot:
            # acknowledged by an earlier run of this server: what it had not synced is gone
            # (a power loss), and an fsync now would make the loss look durable
            raise Unavailable(f"chunkserver {self.cs_id} restarted since it acknowledged writes of chunk "
                              f"{m.chunk_id:016x} v{m.version}; they may be lost on it",
                              details={"failed_cs": self.cs_id, "chunk": m.chunk_id})

        async def local() -> None:
            try:
                await self._disk(self.store.fsync, m.chunk_id)
            except VStoreError as exc:
                log.error("cs.fsync_failed", extra={"chunk": m.chunk_id, "version": m.version, "cs_id": self.cs_id,
                                                    "error": exc.message, "action": "replica marked bad"})
                raise self._local_failure(exc) from None

        jobs = [local()]
        if m.chain:
            jobs.append(self._forward(msgspec.structs.replace(m, boots=m.boots[1:]), b"", m.chain))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        self.stats["fsyncs"] += 1
        downstream = results[1].replicas if m.chain else 0  # type: ignore[union-attr]
        return w.FsyncChunkReply(replicas=1 + downstream)
