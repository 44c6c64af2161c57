"""A chunkserver's link to the metadata servers: registration, heartbeats, chunk reports, orders.

* Registration (RegisterCs over the authenticated RPC): ``join`` the first time (add-node),
  afterwards a restart that refreshes the address and capacity. The reply carries the cs id
  and the cluster's chunk size.
* Heartbeats: a signed UDP datagram to every MDS each ``heartbeat_interval_s`` with the
  disk's capacity, use and chunk count (every MDS tracks liveness, so a new leader knows at
  once who is alive).
* Orders by long poll: one FetchOrders call open to the leader at a time (the link follows
  redirects like a client); a ``report_wanted`` answer sends the full chunk report in pages;
  every order's outcome goes back with OrderDone.
* Orders: COPY (read the chunk from the source replica with the capability in the order,
  in pieces checked in transit, into a new INCOMPLETE replica; fsync; only then complete),
  DELETE, SET_VERSION, TRUNCATE, all against the store, in its executor. Orders fetched
  before a pause of this process (vstore/chunkserver/pauses.py) are refused, not run late,
  and so is the completion of a copy that such a pause interrupted.

What it must not do: change a replica except as ordered, or report a copy before it is
complete and durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import xxhash

from vstore.chunkserver.pauses import TICK_S, PauseWatch
from vstore.chunkserver.service import ChunkDataService
from vstore.chunkserver.store import FULL_RATIO, NEARFULL_RATIO, ChunkStore
from vstore.errors import ChecksumMismatch, DeadlineExceeded, Exists, NotPermitted, VStoreError
from vstore.net import Auth, RpcClient, RpcClients, parse_address
from vstore.net.leader import LeaderCaller
from vstore.net.dgram import DatagramChannel
from vstore.wire import Heartbeat
from vstore.wire import cs as wcs
from vstore.wire import mds as w

log = logging.getLogger(__name__)

#: Bytes fetched per read while copying a chunk from a peer.
COPY_PIECE_BYTES = 4 << 20


async def register(mds: Sequence[tuple[str, int]], auth: Auth, *, host: str, rack: str, address: str,
                   capacity_bytes: int, join: bool, deadline_s: float = 30.0) -> w.RegisterCsReply:
    """Register this chunkserver with the leader (``join`` only the first time)."""
    link = LeaderCaller(mds, auth, deadline_s=deadline_s, attempt_deadline_s=5.0)
    try:
        reply = await link.call(w.RegisterCsRequest(host=host, rack=rack, address=address,
                                                    capacity_bytes=capacity_bytes, join=join))
    finally:
        await link.close_connections()
    assert isinstance(reply, w.RegisterCsReply)
    return reply


#: How often a chunkserver an operator removed asks again (it may have been a mistake
#: undone by re-adding the node under a new id; mostly it waits to be stopped).
REMOVED_POLL_S = 30.0


class CsMdsLink:
    def __init__(self, store: ChunkStore, data: ChunkDataService, *, cs_id: int, node_id: str, host: str,
                 mds: Sequence[tuple[str, int]], auth: Auth, datagram_key: bytes,
                 heartbeat_interval_s: float = 1.0, poll_wait_ms: int = 1000) -> None:
        self.store = store
        self.data = data
        self.cs_id = cs_id
        self.node_id = node_id
        self.host = host
        self.mds = list(mds)
        self.auth = auth
        self.datagram_key = datagram_key
        self.heartbeat_interval_s = heartbeat_interval_s
        self.poll_wait_ms = poll_wait_ms
        self._link = LeaderCaller(self.mds, auth, deadline_s=30.0, attempt_deadline_s=max(5.0, poll_wait_ms / 500))
        self._channel: DatagramChannel | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._peers = RpcClients(auth, expected_role="cs", default_deadline_s=30.0)
        self._fill_level = 0
        self.stats = {"orders": 0, "orders_failed": 0, "copies": 0, "copied_bytes": 0, "deletes": 0, "reports": 0,
                      "orders_void": 0}
        self._pauses = PauseWatch(0.0)

    async def start(self) -> None:
        self._channel = await DatagramChannel.bind("0.0.0.0", 0, key=self.datagram_key, sender_id=self.node_id)
        self._pauses = PauseWatch(asyncio.get_running_loop().time())
        self._tasks = [asyncio.create_task(self._heartbeats(), name=f"cs-heartbeats-{self.node_id}"),
                       asyncio.create_task(self._orders(), name=f"cs-orders-{self.node_id}"),
                       asyncio.create_task(self._watch_pauses(), name=f"cs-pauses-{self.node_id}")]

    async def _watch_pauses(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK_S)
            gap = self._pauses.tick(loop.time())
            if gap:   # past the leader's offline_after_s (5 s) it has certainly given up on some
                log.log(logging.WARNING if gap > 5.0 else logging.INFO, "cs.paused",
                        extra={"seconds": round(gap, 1), "action": "orders received before it are refused"})

    def _void(self, fetched_at: float) -> DeadlineExceeded | None:
        """The refusal of an order fetched at ``fetched_at`` if this process paused since."""
        if not self._pauses.paused_since(fetched_at, asyncio.get_running_loop().time()):
            return None
        return DeadlineExceeded("order received before a pause of this chunkserver (the leader may have given "
                                "up on it meanwhile); not carried out")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        await self._link.close_connections()
        await self._peers.close()

    async def _disk(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self.data._disk(fn, *args, **kwargs)

    async def report_damage(self, chunk_id: int, version: int, reason: str) -> None:
        """Tell the leader a replica here failed its checksums (a read or the scrubber)."""
        try:
            await self._link.call(w.ReportDamageRequest(chunk_id=chunk_id, version=version, cs_id=self.cs_id,
                                                        reason=reason[:256]), deadline_s=10.0)
        except VStoreError as exc:
            log.warning("cs.damage_report_failed", extra={"chunk": chunk_id, "error": exc.message})

    # ---- heartbeats ------------------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        assert self._channel is not None
        while True:
            try:
                total, used, free = await self._disk(self.store.usage)
                chunks = len(await self._disk(self.store.list_chunks))
                self._note_fill(used / total if total else 1.0)
                io = self.data.stats
                beat = Heartbeat(node_id=self.node_id, role="cs",
                                 gauges={"capacity_bytes": total, "used_bytes": used, "free_bytes": free,
                                         "chunks": chunks, "read_bytes": io["bytes_read"],
                                         "written_bytes": io["bytes_written"],
                                         "copied_bytes": self.stats["copied_bytes"]})
                for address in self.mds:
                    with contextlib.suppress(OSError):
                        await self._channel.send(beat, address)
            except VStoreError as exc:
                log.warning("cs.heartbeat_failed", extra={"error": exc.message})
            await asyncio.sleep(self.heartbeat_interval_s)

    def _note_fill(self, ratio: float) -> None:
        """Warn once when the disk crosses 85 % (nearfull), once more at 95 % (full: new
        chunks are refused), and say when it is back below (RELIABILITY.md F9)."""
        level = 2 if ratio >= FULL_RATIO else 1 if ratio >= NEARFULL_RATIO else 0
        if level != self._fill_level:
            if level:
                log.warning("cs.disk_full" if level == 2 else "cs.disk_nearfull",
                            extra={"cs_id": self.cs_id, "used_percent": round(ratio * 100, 1),
                                   "action": "new chunks refused" if level == 2 else "free space or add disks"})
            else:
                log.info("cs.disk_ok", extra={"cs_id": self.cs_id, "used_percent": round(ratio * 100, 1)})
            self._fill_level = level

    # ---- orders ------------------------------------------------------------------------------------------

    async def _orders(self) -> None:
        assert self._channel is not None
        boot_id = self._channel.boot_id
        removed = False
        loop = asyncio.get_running_loop()
        while True:
            fetched_at = loop.time()
            try:
                reply = await self._link.call(w.FetchOrdersRequest(boot_id=boot_id, wait_ms=self.poll_wait_ms),
                                              deadline_s=30.0)
            except NotPermitted as exc:  # removed by an operator: nothing to do here any more
                if not removed:
                    log.warning("cs.removed", extra={"error": exc.message, "action": "stop this chunkserver"})
                    removed = True
                await asyncio.sleep(REMOVED_POLL_S)
                continue
            except VStoreError as exc:
                log.info("cs.poll_failed", extra={"error": exc.message})
                await asyncio.sleep(0.5)
                continue
            removed = False
            assert isinstance(reply, w.OrdersReply)
            self._learn_mds(reply.mds)
            if reply.report_wanted:
                await self._report(boot_id)
            for order in reply.orders:
                code, message = await self._execute(order, fetched_at)
                self.stats["orders"] += 1
                if code:
                    self.stats["orders_failed"] += 1
                with contextlib.suppress(VStoreError):
                    await self._link.call(w.OrderDoneRequest(order_id=order.order_id, code=code,
                                                             message=message[:1024]), deadline_s=10.0)

    def _learn_mds(self, members: dict[str, str]) -> None:
        """The leader's configuration is where heartbeats go from now on: an MDS added after
        this chunkserver was configured must hear it before it may lead, and a removed one
        need not."""
        if not members:
            return
        addresses = []
        for address in members.values():
            with contextlib.suppress(ValueError):
                addresses.append(parse_address(address))
        if addresses and sorted(addresses) != sorted(self.mds):
            log.info("cs.mds_members", extra={"mds": sorted(members.values())})
            self.mds = addresses
            self._link.learn(members.values())

    async def _report(self, boot_id: bytes) -> None:
        replicas = await self._disk(self.store.list_chunks)
        items = [w.ReportedChunk(chunk_id=r.chunk_id, version=r.version, length_bytes=r.length_bytes,
                                 damaged=r.damaged) for r in replicas]
        size = w.CHUNK_REPORT_PAGE_MAX
        pages = [items[i:i + size] for i in range(0, len(items), size)] or [[]]
        try:
            for n, page in enumerate(pages):
                await self._link.call(w.ChunkReportRequest(boot_id=boot_id, page=n, last=n == len(pages) - 1,
                                                           chunks=tuple(page)), deadline_s=30.0)
            self.stats["reports"] += 1
        except VStoreError as exc:
            log.info("cs.report_failed", extra={"error": exc.message})

    async def _execute(self, order: w.Order, fetched_at: float) -> tuple[int, str]:
        try:
            void = self._void(fetched_at)
            if void is not None:
                self.stats["orders_void"] += 1
                raise void
            if order.kind == w.OrderKind.DELETE:
                await self._disk(self.store.delete, order.chunk_id, at_most_version=order.version)
                self.stats["deletes"] += 1
            elif order.kind == w.OrderKind.SET_VERSION:
                await self._disk(self.store.set_version, order.chunk_id, order.old_version, order.version)
            elif order.kind == w.OrderKind.TRUNCATE:
                await self._disk(self.store.truncate, order.chunk_id, order.version, order.length_bytes,
                                 at_most_version=order.version)
            elif order.kind == w.OrderKind.COPY:
                await self._copy(order, fetched_at)
            else:
                return 55, f"unknown order {order.kind!r}"  # ErrorCode.NOT_SUPPORTED
        except VStoreError as exc:
            log.info("cs.order_failed", extra={"order": order.kind, "chunk": order.chunk_id, "error": exc.message})
            return int(exc.code), exc.message
        return 0, ""

    def _peer(self, address: str) -> RpcClient:
        return self._peers.get(address)

    async def _copy(self, order: w.Order, fetched_at: float) -> None:
        """Fetch the chunk from the source into a new INCOMPLETE replica, verified in transit
        and by the store's own checksums as it is written; durable before it is complete.
        A pause since the order was fetched leaves it incomplete (never served; deleted when
        reported or copied again)."""
        assert order.source is not None
        source = self._peer(order.source.address)
        with contextlib.suppress(VStoreError):
            # an old copy of ours (stale version, or a failed earlier copy) makes way
            await self._disk(self.store.delete, order.chunk_id, at_most_version=order.version)
        try:
            await self._disk(self.store.create, order.chunk_id, order.version, incomplete=True)
        except Exists:
            pass
        offset = 0
        block = self.store.block_bytes
        while offset < self.store.chunk_bytes:
            want = min(COPY_PIECE_BYTES, self.store.chunk_bytes - offset)
            reply = await source.call(wcs.ReadChunkRequest(chunk_id=order.chunk_id, version=order.version,
                                                           offset=offset, length=want, token=order.token))
            data = bytes(reply.payload)
            msg = reply.message
            assert isinstance(msg, wcs.ReadChunkReply)
            if xxhash.xxh3_64_intdigest(data) != msg.checksum:
                raise ChecksumMismatch(f"chunk {order.chunk_id}: copy piece at {offset} damaged in transit")
            if data:
                await self._disk(self.store.write, order.chunk_id, order.version, offset, data,
                                 client_checksums=list(wcs.piece_checksums(offset, data, block)))
                offset += len(data)
            if len(data) < want:
                break
        await self._disk(self.store.fsync, order.chunk_id)
        void = self._void(fetched_at)
        if void is not None:
            self.stats["orders_void"] += 1
            raise void
        await self._disk(self.store.mark_complete, order.chunk_id)
        self.stats["copies"] += 1
        self.stats["copied_bytes"] += offset
