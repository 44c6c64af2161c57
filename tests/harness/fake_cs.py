"""A test double of a chunkserver's MDS link, for testing the leader's registry, liveness and
repair driver before (and independently of) the real chunkserver (issue 5).

It speaks the real protocol over real sockets: registers with RegisterCsRequest, sends
signed UDP heartbeats to every MDS, answers ``report_wanted`` with a paged ChunkReport,
long-polls FetchOrders and reports each order with OrderDone. Its "disk" is a dict of
chunk id -> (version, data); a COPY order reads the source's dict through the shared
``FakeDisks`` registry (by address), so a copy of a missing or wrong version fails like a
real one would. ``stop()`` is a crash as far as the MDS can tell: the heartbeats and polls
stop; ``start()`` again is a restart with a new boot id and the same disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from tests.harness.procs import free_port
from vstore.net.leader import LeaderCaller
from vstore.errors import VStoreError
from vstore.net import Auth
from vstore.net.dgram import DatagramChannel
from vstore.wire import ErrorCode, Heartbeat, Identity, datagram_key
from vstore.wire import mds as w

log = logging.getLogger(__name__)


@dataclass
class FakeDisks:
    """Every fake chunkserver's chunks, by its advertised address (the 'network' for copies)."""

    by_address: dict[str, dict[int, tuple[int, bytes]]] = field(default_factory=dict)
    up: set[str] = field(default_factory=set)


class FakeChunkserver:
    def __init__(self, disks: FakeDisks, node_id: str, host: str, *, secret: bytes, cluster_id: str,
                 mds: list[tuple[str, int]], rack: str = "", capacity_bytes: int = 1 << 40,
                 heartbeat_interval_s: float = 0.2) -> None:
        self.disks = disks
        self.node_id = node_id
        self.host = host
        self.rack = rack
        self.capacity_bytes = capacity_bytes
        self.address = f"127.0.0.1:{free_port()}"
        self.chunks: dict[int, tuple[int, bytes]] = disks.by_address.setdefault(self.address, {})
        self.secret = secret
        self.cluster_id = cluster_id
        self.mds = mds
        self.heartbeat_interval_s = heartbeat_interval_s
        self.cs_id: int | None = None
        self.joined = False
        self.orders_done: list[w.Order] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._link: LeaderCaller | None = None
        self._channel: DatagramChannel | None = None
        #: cleared by ``pause``: a zombie (SIGSTOP) that keeps its sockets but neither beats nor executes
        self.awake = asyncio.Event()
        self.awake.set()
        self.beating = asyncio.Event()
        self.beating.set()

    def pause(self, *, heartbeats: bool = False) -> None:
        """Stop heartbeating and executing, as a SIGSTOPped server does: a poll already
        answered leaves its orders waiting here, run on ``resume``. ``heartbeats``: keep
        beating (alive to the leader, but its orders never answered)."""
        self.awake.clear()
        if not heartbeats:
            self.beating.clear()

    def resume(self) -> None:
        self.awake.set()
        self.beating.set()

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    async def start(self) -> None:
        auth = Auth(self.secret, Identity(self.cluster_id, self.node_id, "cs"))
        self._link = LeaderCaller(self.mds, auth, deadline_s=30.0, attempt_deadline_s=3.0)
        try:
            reply = await self._link.call(w.RegisterCsRequest(host=self.host, rack=self.rack, address=self.address,
                                                              capacity_bytes=self.capacity_bytes,
                                                              join=not self.joined))
        except BaseException:
            await self._link.close_connections()
            self._link = None
            raise
        assert isinstance(reply, w.RegisterCsReply)
        self.cs_id, self.joined = reply.cs_id, True
        self._channel = await DatagramChannel.bind("127.0.0.1", 0, key=datagram_key(self.secret, self.cluster_id),
                                                   sender_id=self.node_id)
        self.disks.up.add(self.address)
        self._tasks = [asyncio.create_task(self._heartbeats(), name=f"fake-{self.node_id}-hb"),
                       asyncio.create_task(self._orders(), name=f"fake-{self.node_id}-orders")]

    async def stop(self) -> None:
        self.disks.up.discard(self.address)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._link is not None:
            await self._link.close_connections()
            self._link = None

    # ---- what a writer does on the data path (the real one is a chain write) -------------------------

    def store(self, chunk_id: int, version: int, data: bytes) -> None:
        self.chunks[chunk_id] = (version, data)

    # ---- the MDS link --------------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        assert self._channel is not None
        while True:
            await self.beating.wait()
            used = sum(len(d) for _, d in self.chunks.values())
            beat = Heartbeat(node_id=self.node_id, role="cs",
                             gauges={"capacity_bytes": self.capacity_bytes, "used_bytes": used,
                                     "chunks": len(self.chunks)})
            for address in self.mds:
                with contextlib.suppress(OSError):
                    await self._channel.send(beat, address)
            await asyncio.sleep(self.heartbeat_interval_s)

    async def _orders(self) -> None:
        assert self._link is not None and self._channel is not None
        boot_id = self._channel.boot_id
        while True:
            try:
                reply = await self._link.call(w.FetchOrdersRequest(boot_id=boot_id, wait_ms=500), deadline_s=10.0)
            except VStoreError as exc:
                log.info("fake_cs.poll_failed", extra={"node": self.node_id, "error": exc.message})
                await asyncio.sleep(0.1)
                continue
            assert isinstance(reply, w.OrdersReply)
            if reply.report_wanted:
                await self._report(boot_id)
            for order in reply.orders:
                await self.awake.wait()
                code, message = self._execute(order)
                self.orders_done.append(order)
                with contextlib.suppress(VStoreError):
                    await self._link.call(w.OrderDoneRequest(order_id=order.order_id, code=code, message=message),
                                          deadline_s=10.0)

    async def _report(self, boot_id: bytes) -> None:
        assert self._link is not None
        items = [w.ReportedChunk(chunk_id=c, version=v, length_bytes=len(d)) for c, (v, d) in sorted(self.chunks.items())]
        pages = [items[i:i + 100] for i in range(0, len(items), 100)] or [[]]
        for n, page in enumerate(pages):
            await self._link.call(w.ChunkReportRequest(boot_id=boot_id, page=n, last=n == len(pages) - 1,
                                                       chunks=tuple(page)), deadline_s=10.0)

    def _execute(self, order: w.Order) -> tuple[int, str]:
        if order.kind == w.OrderKind.DELETE:
            held = self.chunks.get(order.chunk_id)
            if held is not None and held[0] <= order.version:
                del self.chunks[order.chunk_id]
            return 0, ""
        if order.kind == w.OrderKind.COPY:
            assert order.source is not None
            if order.source.address not in self.disks.up:
                return int(ErrorCode.UNAVAILABLE), "source unreachable"
            source = self.disks.by_address.get(order.source.address, {})
            held = source.get(order.chunk_id)
            if held is None:
                return int(ErrorCode.NOT_FOUND), "source has no such chunk"
            if held[0] != order.version:
                return int(ErrorCode.STALE_VERSION), f"source holds version {held[0]}"
            self.chunks[order.chunk_id] = held
            return 0, ""
        if order.kind == w.OrderKind.SET_VERSION:
            held = self.chunks.get(order.chunk_id)
            if held is None:
                return int(ErrorCode.NOT_FOUND), "no such chunk"
            if held[0] not in (order.old_version, order.version):
                return int(ErrorCode.STALE_VERSION), f"replica holds version {held[0]}"
            self.chunks[order.chunk_id] = (order.version, held[1])
            return 0, ""
        if order.kind == w.OrderKind.TRUNCATE:
            held = self.chunks.get(order.chunk_id)
            if held is None:
                return int(ErrorCode.NOT_FOUND), "no such chunk"
            if held[0] > order.version:
                return int(ErrorCode.STALE_VERSION), f"replica holds version {held[0]}"
            self.chunks[order.chunk_id] = (order.version, held[1][:order.length_bytes])
            return 0, ""
        return int(ErrorCode.NOT_SUPPORTED), f"unknown order {order.kind}"
