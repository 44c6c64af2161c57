"""A client's data path to the chunkservers: chain writes, fsync down the chain, verified
reads that fall back from one replica to the next.

What it owns: one reconnecting, authenticated connection per chunkserver address, and the
checks a reader makes on every reply. What it does not do: decide when to retry, repair a
chain or refresh a chunk map (vstore/client/files.py does, with the MDS); it reports every
failure as a typed error naming the chunkserver (``details["failed_cs"]``).

Reads. Replicas are tried local host first, then in the MDS's order (online ones first). A
replica's answer is accepted only if its payload has the checksum the chunkserver sent with
it (xxh3 of the bytes, checked again here: the end-to-end check of the read path), and it is
not shorter than the length the caller knows the chunk to have (``expect_length``: what the
MDS recorded, or what this client wrote and had acknowledged). A short replica would read as
zeros where data exists, i.e. wrong bytes, so it counts as failed and the next replica is
asked. Bytes past the replica's valid length, within what was asked, are zeros.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import xxhash

from vstore.errors import ChecksumMismatch, ChunkLost, DataError, InternalError, Unavailable, VStoreError
from vstore.net import Auth, Limits, RpcClient, RpcClients
from vstore.wire import ErrorCode
from vstore.wire import cs as wcs
from vstore.wire import mds as w

log = logging.getLogger(__name__)

#: The checksum block of every replica (fixed for the cluster; the chunkservers' default).
BLOCK_BYTES = 4096
#: chunks whose chain boot ids a client remembers between a write and its fsync (oldest dropped)
BOOTS_KEPT = 65536


def chain_of(info: w.ChunkInfo) -> tuple[wcs.ChainHop, ...]:
    """The hops after the head, as a write or fsync names them."""
    return tuple(wcs.ChainHop(cs_id=r.cs_id, address=r.address) for r in info.replicas[1:])


class ChunkIo:
    """Connections to chunkservers, the three data operations on one chunk, and the
    verification of one replica (``vstore scrub``)."""

    def __init__(self, auth: Auth, *, limits: Limits = Limits(), host: str = "",
                 attempt_deadline_s: float = 10.0) -> None:
        self.auth = auth
        self.limits = limits
        self.host = host
        self.attempt_deadline_s = attempt_deadline_s
        self._clients = RpcClients(auth, expected_role="cs", limits=limits, default_deadline_s=attempt_deadline_s)
        #: (chunk id, version) -> boot ids of its chain since its last fsync (_note_boots)
        self._boots: OrderedDict[tuple[int, int], tuple[int, ...]] = OrderedDict()
        self.stats = {"writes": 0, "reads": 0, "fsyncs": 0, "read_fallbacks": 0, "bytes_written": 0,
                      "bytes_read": 0}

    def _client(self, address: str) -> RpcClient:
        return self._clients.get(address)

    async def close(self) -> None:
        await self._clients.close()

    # ---- writes -----------------------------------------------------------------------------------

    async def write(self, info: w.ChunkInfo, offset: int, data: bytes | bytearray | memoryview, *,
                    create: bool) -> None:
        """Write ``data`` at ``offset`` of the chunk on every replica of its chain. Raises the
        chain's error; ``details["failed_cs"]`` names the chunkserver to drop."""
        if not info.replicas:
            raise ChunkLost(f"chunk {info.chunk_id:016x} has no replica to write to", details={"chunk": info.chunk_id})
        head = info.replicas[0]
        request = wcs.WriteChunkRequest(chunk_id=info.chunk_id, version=info.version, offset=offset,
                                        checksums=wcs.piece_checksums(offset, data, BLOCK_BYTES), token=info.token,
                                        chain=chain_of(info), create=create)
        reply = await self._call(head, request, data)
        if not isinstance(reply, wcs.WriteChunkReply) or reply.replicas != len(info.replicas):
            raise InternalError(f"chunk {info.chunk_id:016x}: write acknowledged by "
                                f"{getattr(reply, 'replicas', '?')} of {len(info.replicas)} replicas")
        self._note_boots(info, reply.boots)
        self.stats["writes"] += 1
        self.stats["bytes_written"] += len(data)

    async def fsync(self, info: w.ChunkInfo) -> None:
        """Make the chunk's writes durable on every replica of its chain."""
        if not info.replicas:
            raise ChunkLost(f"chunk {info.chunk_id:016x} has no replica to fsync", details={"chunk": info.chunk_id})
        key = (info.chunk_id, info.version)
        boots = self._boots.get(key, ())
        request = wcs.FsyncChunkRequest(chunk_id=info.chunk_id, version=info.version, token=info.token,
                                        chain=chain_of(info), boots=boots if len(boots) == len(info.replicas) else ())
        reply = await self._call(info.replicas[0], request, b"")
        if not isinstance(reply, wcs.FsyncChunkReply) or reply.replicas != len(info.replicas):
            raise InternalError(f"chunk {info.chunk_id:016x}: fsync acknowledged by "
                                f"{getattr(reply, 'replicas', '?')} of {len(info.replicas)} replicas")
        if self._boots.get(key) == boots:   # no write was acknowledged meanwhile under other boot ids
            self._boots.pop(key, None)
        self.stats["fsyncs"] += 1

    def _note_boots(self, info: w.ChunkInfo, boots: tuple[int, ...]) -> None:
        """Remember the boot ids the chain acknowledged this chunk's writes under since its
        last fsync (``wire.cs.Boots``). A chunkserver that shows another one restarted since it
        acknowledged earlier writes, which it may have lost: it counts as failed (the writer
        drops it with a version bump) instead of being fsynced as if it held them."""
        if len(boots) != len(info.replicas):
            return   # a chunkserver that does not report boot ids: nothing to check
        key = (info.chunk_id, info.version)
        known = self._boots.get(key)
        if known is None:
            self._boots[key] = boots
            while len(self._boots) > BOOTS_KEPT:
                self._boots.popitem(last=False)
            return
        for replica, before, now in zip(info.replicas, known, boots):
            if before != now:
                raise Unavailable(f"chunkserver {replica.cs_id} restarted since it acknowledged earlier writes of "
                                  f"chunk {info.chunk_id:016x} v{info.version}; they may be lost on it",
                                  details={"failed_cs": replica.cs_id, "chunk": info.chunk_id})

    async def _call(self, replica: w.ReplicaAddress, request: object, payload: bytes | bytearray | memoryview) -> object:
        try:
            reply = await self._client(replica.address).call(request, payload)  # type: ignore[arg-type]
        except VStoreError as exc:
            # unreachable head, broken connection, or an error no hop claimed: the head's
            exc.details.setdefault("failed_cs", replica.cs_id)
            raise
        return reply.message

    # ---- verification (vstore scrub) ----------------------------------------------------------------

    async def verify(self, info: w.ChunkInfo, replica: w.ReplicaAddress, *,
                     deadline_s: float | None = None) -> wcs.VerifyChunkReply:
        """Ask one replica's chunkserver to read its whole replica against its checksums
        (with the chunk info's read capability). Returns the reply only when it covers the
        replica's valid length block by block; raises the chunkserver's typed error otherwise
        (CHECKSUM_MISMATCH for a bad replica; ``details["failed_cs"]`` names the replica)."""
        request = wcs.VerifyChunkRequest(chunk_id=info.chunk_id, version=info.version, token=info.token)
        try:
            reply = await self._client(replica.address).call(request, deadline_s=deadline_s)
        except VStoreError as exc:
            exc.details.setdefault("failed_cs", replica.cs_id)
            raise
        message = reply.message
        if not isinstance(message, wcs.VerifyChunkReply):
            raise InternalError(f"cs {replica.cs_id}: unexpected reply {type(message).__name__} to VerifyChunk",
                                details={"chunk": info.chunk_id, "failed_cs": replica.cs_id})
        if message.block_bytes < 1 or message.blocks_checked * message.block_bytes < message.length_bytes:
            raise InternalError(f"cs {replica.cs_id}: chunk {info.chunk_id:016x} verified {message.blocks_checked} "
                                f"blocks of {message.block_bytes} bytes, short of its {message.length_bytes} bytes",
                                details={"chunk": info.chunk_id, "failed_cs": replica.cs_id})
        return message

    # ---- reads ------------------------------------------------------------------------------------

    def read_order(self, replicas: Sequence[w.ReplicaAddress]) -> list[w.ReplicaAddress]:
        """Replicas on this client's host first, then the MDS's order."""
        return sorted(replicas, key=lambda r: not (self.host and r.host == self.host))

    async def read(self, info: w.ChunkInfo, offset: int, length: int, *, expect_length: int = 0) -> bytes:
        """``length`` bytes at ``offset`` of the chunk from the first replica that answers with
        verified bytes; zeros past the replica's valid length. Raises ChunkLost (details:
        every replica's error) when none does."""
        failures: list[str] = []
        codes: list[int] = []
        must_have = max(0, min(offset + length, expect_length) - offset)
        for n, replica in enumerate(self.read_order(info.replicas)):
            request = wcs.ReadChunkRequest(chunk_id=info.chunk_id, version=info.version, offset=offset,
                                           length=length, token=info.token)
            try:
                reply = await self._client(replica.address).call(request)
                message, data = reply.message, reply.payload
                if not isinstance(message, wcs.ReadChunkReply):
                    raise InternalError(f"unexpected reply {type(message).__name__}")
                if len(data) > length or xxhash.xxh3_64_intdigest(data) != message.checksum:
                    raise ChecksumMismatch(f"reply of {len(data)} bytes failed its checksum",
                                           details={"chunk": info.chunk_id})
                if len(data) < must_have:
                    raise DataError(f"replica holds {offset + len(data)} bytes, the chunk has at least "
                                    f"{offset + must_have}", details={"chunk": info.chunk_id})
            except VStoreError as exc:
                failures.append(f"cs {replica.cs_id}: {exc.code.name}: {exc.message}")
                codes.append(int(exc.code))
                if n + 1 < len(info.replicas):
                    self.stats["read_fallbacks"] += 1
                    log.info("client.read_fallback", extra={"chunk": info.chunk_id, "version": info.version,
                                                            "cs_id": replica.cs_id, "error": exc.message})
                continue
            self.stats["reads"] += 1
            self.stats["bytes_read"] += len(data)
            if len(data) < length:
                return bytes(data) + bytes(length - len(data))
            return bytes(data)
        raise ChunkLost(f"chunk {info.chunk_id:016x} version {info.version}: no replica gave verified bytes "
                        f"({'; '.join(failures) or 'no replicas listed'})",
                        details={"chunk": info.chunk_id, "version": info.version, "codes": codes,
                                 "stale": int(ErrorCode.STALE_VERSION) in codes
                                 or int(ErrorCode.BAD_CAPABILITY) in codes})
