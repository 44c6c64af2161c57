"""The leader's side of the chunkservers: registration, heartbeats, chunk reports, and the
repair driver that turns the pure planners' jobs into orders.

What it owns: the registry RPCs (RegisterCs, ChunkReport, FetchOrders, OrderDone,
ReportDamage), the liveness view fed by signed UDP heartbeats (vstore/metadata/liveness.py),
and the loop that plans repairs (vstore/metadata/repair.py) and hands orders to the
chunkservers. What it must not do: change replicated state except through commands proposed
to Raft (RegisterCs, UpdateCs, AddReplica, DropReplica, ChunkDeleted), or act while the
cluster is in safe mode.

Orders travel by long poll: each chunkserver keeps a FetchOrders call open to the leader,
which answers when it has orders for it (or after the poll's wait), and reports each order's
outcome with OrderDone. So the leader needs no connection of its own to the chunkservers,
and a new leader reaches every chunkserver as soon as their polls find it.

Decisions that must survive a failover are committed before anyone acts on them: a copy
counts as a replica only once AddReplica is applied (after the target verified it); a good
replica is deleted only after DropReplica (which queues it in ``doomed``) is applied; the
doomed queue is the garbage collector's work list, and ChunkDeleted empties it. Orders in
flight live only in the leader's memory: a new leader re-plans from the replicated state,
and a repeated order is harmless (copying a chunk already there, deleting one already gone).

Concurrency: all of it runs on the event loop. ``_repair_round`` reads LMDB between awaits;
each proposal await may let other handlers run, which only add orders or mark damage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vstore.errors import Busy, InvalidArgument, NotFound, NotPermitted, StaleVersion, VStoreError
from vstore.metadata.fsm import namespace as ns
from vstore.metadata.fsm.schema import Chunk, CsRecord
from vstore.metadata.liveness import CsLiveness, HeartbeatOutcome
from vstore.metadata.placement import (FULL_RATIO_MAX, NEARFULL_RATIO, CsId, CsState, CsStatus, ReplicaPolicy,
                                      place_replicas)
from vstore.metadata.repair import (ChunkState, CsTally, JobKind, Limits, RepairPlan, Replica, Urgency, cs_tallies,
                                    good_replicas, plan_repairs)
from vstore.net.rpc import RequestContext
from vstore.wire import Datagram, ErrorCode, Heartbeat, Message
from vstore.wire import admin as a
from vstore.wire import mds as w
from vstore.wire.capability import issue_capability

if TYPE_CHECKING:
    from vstore.metadata.service import MetadataService

log = logging.getLogger(__name__)

_CS = frozenset({"cs"})

#: Lifetime of the capability a copy order carries (the copy must start within it).
COPY_TOKEN_S = 600
#: Clock difference between the MDS and chunkservers that write capabilities allow for
#: (vstore/wire/capability.py verify_capability's default skew).
CAPABILITY_SKEW_S = 30
#: Leased chunks copied with their writers held at a time (``_refill_under_lease``).
LEASE_REFILLS_MAX = 4


@dataclass
class _InFlight:
    order: w.Order
    cs_id: CsId
    issued_s: float
    doomed: bool = False   # a delete from the doomed queue (confirm with ChunkDeleted)
    #: the boot id of the chunkserver run that fetched it (empty while still queued)
    boot_id: bytes = b""


class ChunkserverManager:
    def __init__(self, service: MetadataService, *, offline_after_s: float = 5.0, failed_after_s: float = 60.0,
                 safe_mode_timeout_s: float = 60.0, repair_interval_s: float = 1.0, limits: Limits = Limits(),
                 order_timeout_s: float = 120.0, write_lease_s: float = 60.0,
                 capability_skew_s: float = CAPABILITY_SKEW_S, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.sm = service.sm
        self.offline_after_s = offline_after_s
        self.failed_after_s = failed_after_s
        self.safe_mode_timeout_s = safe_mode_timeout_s
        self.repair_interval_s = repair_interval_s
        self.limits = limits
        self.order_timeout_s = order_timeout_s
        self.write_lease_s = write_lease_s
        self.capability_skew_s = capability_skew_s
        #: no copies before this (monotonic): leases granted by an earlier leader may be out
        self._copies_after_s = monotonic() + write_lease_s + capability_skew_s
        self._monotonic = monotonic
        # Every MDS hears the heartbeats (chunkservers send them to all), so a new leader
        # knows at once who is alive; chunk reports and orders are the leader's alone.
        self.liveness = CsLiveness(monotonic(), offline_after_s=offline_after_s, failed_after_s=failed_after_s)
        self._term = -1
        self._queues: dict[CsId, deque[w.Order]] = {}
        self._wakeups: dict[CsId, asyncio.Event] = {}
        self._inflight: dict[int, _InFlight] = {}
        self._busy_chunks: set[int] = set()
        #: chunk id -> copies of it in flight (writers get no lease while any is; a chunk may
        #: have several, a refill to more than one server)
        self._copying: dict[int, int] = {}
        #: chunks whose writers are held (no lease granted) while a version bump fences the
        #: capabilities out before a copy (``_refill_under_lease``)
        self._held: set[int] = set()
        #: chunk id -> monotonic time the rounds first saw it leased and below its policy
        self._leased_below_since: dict[int, float] = {}
        self._leased_states: list[ChunkState] = []
        self._lease_refills: dict[int, asyncio.Task[None]] = {}
        self._next_order = 1
        #: per chunkserver, what its last full report said: chunk id -> version
        self._reports: dict[CsId, dict[int, int]] = {}
        self._incoming: dict[CsId, tuple[bytes, int, dict[int, int]]] = {}
        self._stale: dict[CsId, dict[int, int]] = {}
        #: listed replicas that reported an older version than the chunk's (a version bump
        #: that did not reach them): brought up to date with a TRUNCATE order
        self._behind: dict[CsId, dict[int, int]] = {}
        self._missing: dict[CsId, set[int]] = {}
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._missing_ok: set[int] = set()  # bump orders whose replica may lack the file
        #: (chunk, cs) replicas reported damaged that could not be dropped (the last copy);
        #: an entry goes when that server deletes its copy or completes a new one
        self.damaged: set[tuple[int, CsId]] = set()
        #: chunk id -> monotonic time its write lease ends (no copies while a writer is at it)
        self.write_leases: dict[int, float] = {}
        self.last_plan: RepairPlan = RepairPlan(())
        #: per chunkserver, what the last repair round counted on it (chunks, drain left, sole)
        self.tallies: dict[CsId, CsTally] = {}
        #: chunks the last repair round saw
        self.chunks_total = 0
        #: no copies before this (monotonic): a storm just ended, its servers may still return
        self._storm_hold_until = 0.0
        #: (monotonic start, copied bytes then) of the rebuild under way, if any
        self._rebuild_from: tuple[float, int] | None = None
        self.safe_mode = True
        self.stats = {"heartbeats": 0, "unknown_heartbeats": 0, "orders_sent": 0, "orders_done": 0,
                      "orders_failed": 0, "copies_committed": 0, "copied_bytes": 0, "deletes_confirmed": 0,
                      "rounds": 0}
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------

    def register(self, router: Any) -> None:
        router.add(w.RegisterCsRequest, self._register_cs, roles=_CS)
        router.add(w.ChunkReportRequest, self._chunk_report, roles=_CS)
        router.add(w.FetchOrdersRequest, self._fetch_orders, roles=_CS)
        router.add(w.OrderDoneRequest, self._order_done, roles=_CS)
        router.add(w.ReportDamageRequest, self._report_damage, roles=frozenset({"cs", "client"}))
        router.add(w.SetCsStateRequest, self._set_cs_state, roles=frozenset({"admin"}))
        router.add(a.CsListRequest, self._cs_list, roles=frozenset({"admin"}))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="mds-repair")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        refills = list(self._lease_refills.values())
        for task in refills:
            task.cancel()
        await asyncio.gather(*refills, return_exceptions=True)
        for event in self._wakeups.values():
            event.set()

    def _rebase_liveness(self, now: float) -> None:
        """Liveness as if this leadership started ``now``: heartbeats heard before stay, but
        nobody is offline or failed for a silence that began before it."""
        fresh = CsLiveness(now, offline_after_s=self.offline_after_s, failed_after_s=self.failed_after_s)
        for cs_id in self.sm.chunkservers():
            boot = self.liveness.boot_id(cs_id)
            last = self.liveness.last_heard_s(cs_id)
            if boot is not None and last is not None:
                fresh.heartbeat(cs_id, now, boot, self.liveness.gauges(cs_id))
        self.liveness = fresh

    def _take_over(self) -> None:
        """A new term on this leader: orders of an earlier leadership are forgotten (they are
        re-planned from the state), and chunk reports are asked for again."""
        term = self.service.node.term
        if term == self._term:
            return
        self._term = term
        self._queues.clear()
        self._inflight.clear()
        self._busy_chunks.clear()
        self._copying.clear()
        self._held.clear()
        self._leased_below_since.clear()
        self._reports.clear()
        self._incoming.clear()
        self._stale.clear()
        self._behind.clear()
        self._missing.clear()
        self.safe_mode = True
        started = self._monotonic()
        self._copies_after_s = started + self.write_lease_s + self.capability_skew_s
        fresh = CsLiveness(started, offline_after_s=self.offline_after_s, failed_after_s=self.failed_after_s)
        for cs_id in self.sm.chunkservers():
            last = self.liveness.last_heard_s(cs_id)
            boot = self.liveness.boot_id(cs_id)
            if last is not None and boot is not None and last >= started - self.offline_after_s:
                fresh.heartbeat(cs_id, max(last, started), boot, self.liveness.gauges(cs_id))
        self.liveness = fresh

    # ---- the cluster view ---------------------------------------------------------------------------

    def records(self) -> dict[CsId, CsRecord]:
        return {CsId(k): v for k, v in self.sm.chunkservers().items()}

    def view(self, now_s: float | None = None) -> list[CsState]:
        """Every registered, not removed chunkserver as the planners see it now."""
        now = self._monotonic() if now_s is None else now_s
        rows = [(cs_id, r.host, r.rack, r.state == "draining", r.capacity_bytes)
                for cs_id, r in self.records().items() if r.state != "removed"]
        return self.liveness.snapshot(rows, now)

    def address(self, cs_id: int, records: dict[CsId, CsRecord] | None = None) -> w.ReplicaAddress:
        record = (records or self.records()).get(CsId(cs_id))
        if record is None:
            return w.ReplicaAddress(cs_id=cs_id, address="", host="")
        return w.ReplicaAddress(cs_id=cs_id, address=record.address, host=record.host)

    def grant_lease(self, chunk_id: int) -> None:
        """A writer holds (or renewed) a write capability for the chunk: no copy of it is
        made until the capability has expired everywhere, or the writer releases it. Refused
        (Busy, retryable) while a copy of the chunk is in flight: the copy finishes first."""
        if chunk_id in self._copying or chunk_id in self._held:
            raise Busy(f"chunk {chunk_id} is being copied to a new replica; retry in a moment")
        self.write_leases[chunk_id] = self._monotonic() + self.write_lease_s + self.capability_skew_s

    def _leased(self, chunk_id: int, now: float | None = None) -> bool:
        return self.write_leases.get(chunk_id, 0) > (self._monotonic() if now is None else now)

    def release_lease(self, chunk_id: int) -> None:
        self.write_leases.pop(chunk_id, None)

    def release_leases_of(self, inode: int) -> None:
        """Every write lease on a chunk of ``inode`` (its last writer closed it)."""
        for chunk_id in list(self.write_leases):
            try:
                if self.sm.chunk(chunk_id).inode == inode:
                    del self.write_leases[chunk_id]
            except NotFound:
                del self.write_leases[chunk_id]

    # ---- heartbeats (UDP, every MDS) ----------------------------------------------------------------

    def on_heartbeat(self, datagram: Datagram, msg: Message) -> None:
        if not isinstance(msg, Heartbeat) or msg.role != "cs" or msg.node_id != datagram.sender:
            return
        cs_id = self.sm.cs_by_node(msg.node_id)
        if cs_id is None:
            self.stats["unknown_heartbeats"] += 1
            return
        self.stats["heartbeats"] += 1
        outcome = self.liveness.heartbeat(CsId(cs_id), self._monotonic(), datagram.boot_id, dict(msg.gauges))
        if outcome is HeartbeatOutcome.RESTARTED:
            self._reports.pop(CsId(cs_id), None)
            log.info("cs.restarted", extra={"cs_id": cs_id, "node_id": msg.node_id})
        if outcome.wants_report:
            self._wake(CsId(cs_id))

    # ---- RPC handlers -------------------------------------------------------------------------------

    def _cs_of(self, ctx: RequestContext) -> CsId:
        cs_id = self.sm.cs_by_node(ctx.peer.node_id)
        if cs_id is None:
            raise NotFound(f"chunkserver {ctx.peer.node_id!r} is not registered (join it with "
                           f"'vstore add-node --role cs')")
        record = self.sm.chunkservers().get(cs_id)
        if record is not None and record.state == "removed":
            raise NotPermitted(f"chunkserver {ctx.peer.node_id!r} (cs {cs_id}) was removed from the cluster")
        return CsId(cs_id)

    async def _register_cs(self, ctx: RequestContext, m: w.RegisterCsRequest, payload: bytes) -> Message:
        svc = self.service
        await svc.leader()
        node_id = ctx.peer.node_id
        existing = self.sm.cs_by_node(node_id)
        if existing is None and node_id in svc.node.members():
            raise ns.Exists(f"{node_id!r} is the node id of an MDS; pick another id for the chunkserver")
        if existing is not None:
            if m.join:
                raise ns.Exists(f"chunkserver {node_id!r} is already registered as cs {existing}; "
                                f"it cannot join twice")
            record = self.sm.chunkservers()[existing]
            if record.state == "removed":
                raise NotPermitted(f"chunkserver {node_id!r} (cs {existing}) was removed; use a new node id")
            if (record.address, record.capacity_bytes) != (m.address, m.capacity_bytes):
                await svc.propose_op(lambda now: ns.UpdateCs(uid=0, gid=0, now_ns=now, cs_id=existing,
                                                             address=m.address, capacity_bytes=m.capacity_bytes))
            cs_id = existing
        else:
            if not m.join:
                raise NotFound(f"chunkserver {node_id!r} is not registered; join it with 'vstore add-node --role cs'")
            cs_id = int(await svc.propose_op(lambda now: ns.RegisterCs(
                uid=0, gid=0, now_ns=now, cs_id=svc.alloc_cs_id(), node_id=node_id, host=m.host, rack=m.rack,
                address=m.address, capacity_bytes=m.capacity_bytes)))
            log.info("cs.registered", extra={"cs_id": cs_id, "node_id": node_id, "host": m.host, "rack": m.rack,
                                             "address": m.address})
        peers = tuple(a for a in svc.node.core.addresses.values())
        return w.RegisterCsReply(cs_id=cs_id, chunk_bytes=self.sm.chunk_bytes(), heartbeat_to=peers)

    async def _chunk_report(self, ctx: RequestContext, m: w.ChunkReportRequest, payload: bytes) -> Message:
        await self.service.leader()
        self._take_over()
        cs_id = self._cs_of(ctx)
        boot, page, chunks = self._incoming.get(cs_id, (m.boot_id, -1, {}))
        if m.page == 0:
            boot, page, chunks = m.boot_id, -1, {}
        if boot != m.boot_id or m.page != page + 1:
            self._incoming.pop(cs_id, None)
            raise InvalidArgument(f"chunk report page {m.page} out of order (expected {page + 1}); start again")
        for c in m.chunks:
            chunks[c.chunk_id] = c.version
            if c.damaged:
                self.damaged.add((c.chunk_id, cs_id))
        if not m.last:
            self._incoming[cs_id] = (boot, m.page, chunks)
            return w.ChunkReportReply(accepted=len(m.chunks))
        self._incoming.pop(cs_id, None)
        self._reports[cs_id] = chunks
        self.liveness.report_received(cs_id, m.boot_id)
        self._reconcile(cs_id, chunks)
        log.info("cs.reported", extra={"cs_id": cs_id, "chunks": len(chunks)})
        return w.ChunkReportReply(accepted=len(m.chunks))

    def _reconcile(self, cs_id: CsId, reported: dict[int, int]) -> None:
        """Replicas the chunkserver has that the state does not list for it (orphans of
        deleted files, copies of an old version) are stale: deleted once out of safe mode."""
        stale: dict[int, int] = {}
        behind: dict[int, int] = {}
        for chunk_id, version in reported.items():
            try:
                chunk = self.sm.chunk(chunk_id)
            except NotFound:
                stale[chunk_id] = version
                continue
            if cs_id not in chunk.replicas:
                stale[chunk_id] = version
            elif version < chunk.version:
                # listed, but a version bump (chain repair, truncate) never reached it: its
                # data up to the chunk's acknowledged length is the chunk's; cut and bump it
                behind[chunk_id] = version
            elif version > chunk.version:
                log.error("chunk.version_ahead", extra={"chunk": chunk_id, "cs_id": cs_id, "version": version,
                                                        "expected": chunk.version,
                                                        "action": "replica not served; rebuilt from others"})
                self.damaged.add((chunk_id, cs_id))
        self._stale[cs_id] = stale
        self._behind[cs_id] = behind
        # the other direction: listed here but not reported (a full scan of the chunk table,
        # once per report; an index by chunkserver is the next step for big clusters)
        missing: set[int] = set()
        after = 0
        while True:
            page = self.sm.iter_chunks(after_chunk_id=after, limit=10_000)
            if not page:
                break
            for chunk_id, chunk in page:
                after = chunk_id
                # a chunk never written (length 0) has no file on any chunkserver yet
                if cs_id in chunk.replicas and chunk_id not in reported and chunk.length_bytes > 0:
                    missing.add(chunk_id)
        self._missing[cs_id] = missing

    async def _fetch_orders(self, ctx: RequestContext, m: w.FetchOrdersRequest, payload: bytes) -> Message:
        await self.service.leader()
        self._take_over()
        cs_id = self._cs_of(ctx)
        self._forget_orders_of_earlier_runs(cs_id, m.boot_id)
        queue = self._queues.setdefault(cs_id, deque())
        if not queue and not self._report_wanted(cs_id, m.boot_id):
            event = self._wakeups.setdefault(cs_id, asyncio.Event())
            event.clear()
            try:
                await asyncio.wait_for(event.wait(), m.wait_ms / 1000)
            except TimeoutError:
                pass
            if not self.service.node.is_leader:
                raise self.service.node.not_leader_error()
        orders = []
        while queue and len(orders) < w.ORDERS_PER_FETCH_MAX:
            order = queue.popleft()
            flight = self._inflight.get(order.order_id)
            if flight is not None:
                flight.boot_id = m.boot_id
            orders.append(order)
        self.stats["orders_sent"] += len(orders)
        return w.OrdersReply(report_wanted=self._report_wanted(cs_id, m.boot_id), orders=tuple(orders),
                             mds=self.service.node.members())

    def _report_wanted(self, cs_id: CsId, boot_id: bytes) -> bool:
        return cs_id not in self._reports and self._incoming.get(cs_id) is None

    async def _order_done(self, ctx: RequestContext, m: w.OrderDoneRequest, payload: bytes) -> Message:
        await self.service.leader()
        cs_id = self._cs_of(ctx)
        flight = self._inflight.pop(m.order_id, None)
        if flight is None or flight.cs_id != cs_id:
            return w.DoneReply()  # an order of an earlier leadership, or unknown: nothing to do
        order = flight.order
        self._busy_chunks.discard(order.chunk_id)
        try:
            return await self._order_outcome(m, order, flight, cs_id)
        finally:
            # a copy stops holding writers off only once its replica is in the chain (or
            # refused): a writer's AllocChunk answered in between got the chain without it,
            # and the copy, committed after, joined at the same version without that
            # writer's next writes (the 60 s thrash read stale bytes from one)
            if order.kind == w.OrderKind.COPY:
                self._copy_ended(order.chunk_id)

    def _copy_ended(self, chunk_id: int) -> None:
        left = self._copying.get(chunk_id, 0) - 1
        if left > 0:
            self._copying[chunk_id] = left
        else:
            self._copying.pop(chunk_id, None)

    async def _order_outcome(self, m: w.OrderDoneRequest, order: w.Order, flight: _InFlight,
                             cs_id: CsId) -> Message:
        waiter = self._waiters.pop(m.order_id, None)
        if m.order_id in self._missing_ok:
            self._missing_ok.discard(m.order_id)
            if m.code == ErrorCode.NOT_FOUND:
                log.info("cs.bump_nothing_there", extra={"cs_id": cs_id, "chunk": order.chunk_id,
                                                         "version": order.version})
                if waiter is not None and not waiter.done():
                    waiter.set_result(0)
                return w.DoneReply()
        if waiter is not None and not waiter.done() and (m.code or order.kind != w.OrderKind.COPY):
            waiter.set_result(m.code)   # a copy's waiter hears once the replica is in the chain (below)
        if order.kind in (w.OrderKind.SET_VERSION, w.OrderKind.TRUNCATE) and not m.code:
            self._behind.get(cs_id, {}).pop(order.chunk_id, None)
            if cs_id in self._reports:
                self._reports[cs_id][order.chunk_id] = order.version
        if order.kind == w.OrderKind.DELETE and m.code == ErrorCode.STALE_VERSION:
            # it holds a newer copy than the one it reported: not ours to delete by that
            # report; its next report (asked for now) says what is there
            self._stale.get(cs_id, {}).pop(order.chunk_id, None)
            self._reports.pop(cs_id, None)
        if m.code:
            self.stats["orders_failed"] += 1
            log.warning("cs.order_failed", extra={"cs_id": cs_id, "order": order.kind, "chunk": order.chunk_id,
                                                  "version": order.version, "code": m.code, "error": m.message})
            return w.DoneReply()
        self.stats["orders_done"] += 1
        if order.kind == w.OrderKind.COPY:
            try:
                await self.service.propose_op(lambda now: ns.AddReplica(uid=0, gid=0, now_ns=now,
                                                                        chunk_id=order.chunk_id,
                                                                        version=order.version, cs_id=cs_id))
                # the copy replaced whatever file the server had for the chunk (a damaged
                # one makes way first), and was verified: it is not the damaged replica
                # reported earlier; counting it damaged would drop it and copy it again forever
                self.damaged.discard((order.chunk_id, cs_id))
                self._stale.get(cs_id, {}).pop(order.chunk_id, None)   # replaced by this copy
                self.stats["copies_committed"] += 1
                self.stats["copied_bytes"] += order.length_bytes
                log.info("chunk.replicated", extra={"chunk": order.chunk_id, "version": order.version,
                                                    "cs_id": cs_id})
                if waiter is not None and not waiter.done():
                    waiter.set_result(0)
            except (StaleVersion, NotFound, InvalidArgument) as exc:
                # the chunk moved on (written, truncated, deleted) while it was copied: the
                # copy is useless; its report will list it as stale and it is deleted then
                log.info("chunk.copy_obsolete", extra={"chunk": order.chunk_id, "cs_id": cs_id, "error": exc.message})
                self._stale.setdefault(cs_id, {})[order.chunk_id] = order.version
                if waiter is not None and not waiter.done():
                    waiter.set_result(int(exc.code))
            finally:
                if waiter is not None and not waiter.done():
                    waiter.set_result(int(ErrorCode.UNAVAILABLE))
        elif order.kind == w.OrderKind.DELETE:
            self.damaged.discard((order.chunk_id, cs_id))  # the damaged file is gone with it
            self._stale.get(cs_id, {}).pop(order.chunk_id, None)
            if cs_id in self._reports:
                self._reports[cs_id].pop(order.chunk_id, None)
            if flight.doomed:
                await self.service.propose_op(lambda now: ns.ChunkDeleted(uid=0, gid=0, now_ns=now,
                                                                          chunk_id=order.chunk_id, cs_id=cs_id))
                self.stats["deletes_confirmed"] += 1
        return w.DoneReply()

    async def _report_damage(self, ctx: RequestContext, m: w.ReportDamageRequest, payload: bytes) -> Message:
        """A replica failed its checksums. If another good replica exists it is dropped at
        once (committed: no leader serves it again) and the planner rebuilds the chunk;
        the last copy is kept, marked damaged, for whatever blocks of it are still good."""
        await self.service.leader()
        log.warning("chunk.damaged", extra={"chunk": m.chunk_id, "version": m.version, "cs_id": m.cs_id,
                                            "reporter": ctx.peer.node_id, "reason": m.reason})
        try:
            chunk = self.sm.chunk(m.chunk_id)
        except NotFound:
            return w.DoneReply()
        if chunk.version != m.version or m.cs_id not in chunk.replicas:
            return w.DoneReply()
        others = [c for c in chunk.replicas if c != m.cs_id and (m.chunk_id, c) not in self.damaged]
        if others:
            await self.service.propose_op(lambda now: ns.DropReplica(uid=0, gid=0, now_ns=now, chunk_id=m.chunk_id,
                                                                     cs_id=CsId(m.cs_id)))
        else:
            self.damaged.add((m.chunk_id, CsId(m.cs_id)))
        return w.DoneReply()

    async def _set_cs_state(self, ctx: RequestContext, m: w.SetCsStateRequest, payload: bytes) -> Message:
        await self.service.leader()
        if m.cs_id not in self.sm.chunkservers():
            raise NotFound(f"no chunkserver with id {m.cs_id}")
        dropped = 0
        if m.state == "removed" and m.force:
            after = 0
            while page := self.sm.iter_chunks(after_chunk_id=after, limit=1000):
                for chunk_id, chunk in page:
                    after = chunk_id
                    if m.cs_id in chunk.replicas:
                        await self.service.propose_op(lambda now, c=chunk_id: ns.DropReplica(
                            uid=0, gid=0, now_ns=now, chunk_id=c, cs_id=CsId(m.cs_id)))
                        dropped += 1
        await self.service.propose_op(lambda now: ns.SetCsState(uid=0, gid=0, now_ns=now, cs_id=CsId(m.cs_id),
                                                                state=m.state))
        log.log(logging.WARNING if dropped else logging.INFO, "cs.state_set",
                extra={"cs_id": m.cs_id, "state": m.state, "by": ctx.peer.node_id, "replicas_dropped": dropped})
        if m.state == "removed":
            self.liveness.forget(CsId(m.cs_id))
            # a removed server fetches no more orders: every order to it would sit in flight
            # until order_timeout_s (and hold `rm-node`'s stall check of the next drain off)
            self._forget_orders_to(CsId(m.cs_id), every_kind=True)
        return w.DoneReply(value=m.cs_id)

    async def _cs_list(self, ctx: RequestContext, m: a.CsListRequest, payload: bytes) -> Message:
        await self.service.leader()
        now = self._monotonic()
        records = self.records()
        status = {cs.cs_id: cs for cs in self.view(now)}
        servers = []
        for cs_id, record in sorted(records.items()):
            view = status.get(cs_id)
            tally = self.tallies.get(cs_id, CsTally()) if record.state != "removed" else CsTally()
            last = self.liveness.last_heard_s(cs_id)
            gauges = {k: v for k, v in self.liveness.gauges(cs_id).items() if isinstance(v, int)}
            servers.append(a.CsInfo(
                cs_id=cs_id, node_id=record.node_id, address=record.address, host=record.host, rack=record.rack,
                state=record.state, status=view.status.value if view is not None else "removed",
                capacity_bytes=view.capacity_bytes if view is not None else record.capacity_bytes,
                used_bytes=view.used_bytes if view is not None else 0, chunks=tally.chunks,
                drain_left=tally.drain_left, sole=tally.sole,
                last_heartbeat_ms=-1 if last is None else max(0, int((now - last) * 1000)), gauges=gauges))
        return a.CsListReply(servers=tuple(servers), summary=self.summary(), now_ms=int(now * 1000))

    # ---- orders ----------------------------------------------------------------------------------------

    def _wake(self, cs_id: CsId) -> None:
        event = self._wakeups.get(cs_id)
        if event is not None:
            event.set()

    def _order(self, cs_id: CsId, kind: str, chunk_id: int, version: int, *, length: int = 0,
               source: w.ReplicaAddress | None = None, doomed: bool = False, old_version: int = 0) -> w.Order:
        token = b""
        if source is not None and self.service.capability_key:
            token = issue_capability(self.service.capability_key, chunk_id, version, "r",
                                     int(time.time()) + COPY_TOKEN_S)
        # an order id is unique across leaderships and across MDS processes (one leader per
        # term): an OrderDone a chunkserver still carries for an earlier leader's order (it is
        # retried to whoever leads now) must not match an order of this one. With a plain
        # per-process counter it could: a copy the old leader had ordered, made before the
        # writes that followed it, was then committed as this leader's own fresh copy, a
        # listed replica with old bytes (the 60 s thrash read them).
        order_id = (self.service.node.term << 32) | (self._next_order & 0xFFFF_FFFF)
        order = w.Order(order_id=order_id, kind=kind, chunk_id=chunk_id, version=version,
                        length_bytes=length, source=source, token=token, old_version=old_version)
        self._next_order += 1
        self._queues.setdefault(cs_id, deque()).append(order)
        self._inflight[order_id] = _InFlight(order, cs_id, self._monotonic(), doomed)
        self._busy_chunks.add(chunk_id)
        if kind == w.OrderKind.COPY:
            self._copying[chunk_id] = self._copying.get(chunk_id, 0) + 1
        self._wake(cs_id)
        return order

    async def bump_versions(self, chunk_id: int, replicas: tuple[CsId, ...] | list[CsId], old_version: int,
                            new_version: int, *, truncate_to: int | None = None,
                            timeout_s: float = 5.0, missing_ok: bool = False) -> list[CsId]:
        """Tell each replica to move from ``old_version`` to ``new_version`` (cutting it to
        ``truncate_to`` bytes first, for a truncate) and wait for the answers. Returns the
        replicas that failed or did not answer in time (``carry_bump`` fences them off). An
        unanswered order still queued is withdrawn. The bump itself is already committed.

        ``missing_ok``: a chunkserver that has no file for the chunk counts as bumped. For a
        chain repair of a chunk nothing was ever written to: its first write failed before
        any replica was created (an acknowledged write exists on every replica of the chain,
        so a survivor without the file never acknowledged one), and the writer's resend
        creates the replicas at the new version."""
        kind = w.OrderKind.SET_VERSION if truncate_to is None else w.OrderKind.TRUNCATE
        loop = asyncio.get_running_loop()
        pending: dict[CsId, asyncio.Future[int]] = {}
        orders: dict[int, asyncio.Future[int]] = {}
        for cs_id in replicas:
            order = self._order(CsId(cs_id), kind, chunk_id, new_version, length=truncate_to or 0,
                                old_version=old_version)
            self._busy_chunks.discard(chunk_id)  # a bump does not hold off the planner's other work
            future: asyncio.Future[int] = loop.create_future()
            self._waiters[order.order_id] = future
            if missing_ok:
                self._missing_ok.add(order.order_id)
            pending[CsId(cs_id)] = future
            orders[order.order_id] = future
        if pending:
            await asyncio.wait(pending.values(), timeout=timeout_s)
        failed = [cs for cs, f in pending.items() if not f.done() or f.result() != 0]
        for order_id, future in orders.items():
            if future.done():
                continue
            future.cancel()
            self._waiters.pop(order_id, None)
            self._missing_ok.discard(order_id)
            flight = self._inflight.pop(order_id, None)
            queue = self._queues.get(flight.cs_id) if flight is not None else None
            if flight is not None and queue and flight.order in queue:
                queue.remove(flight.order)   # still queued: it never leaves (fetched: carry_bump fences it off)
        return failed

    def _expire_orders(self, now: float) -> None:
        for order_id, flight in list(self._inflight.items()):
            if now - flight.issued_s > self.order_timeout_s:
                self._forget_order(order_id, flight)

    def _forget_orders_of_earlier_runs(self, cs_id: CsId, boot_id: bytes) -> None:
        """Orders an earlier run of this chunkserver fetched died with that process: no
        OrderDone will come for them. Forget them now, not after ``order_timeout_s``, so the
        planner can order the work again at once (a restart in the middle of a rebuild
        would otherwise stall it for two minutes). Safe whatever the dead run had done: a
        copy it finished is a replica the state does not list, reported stale by the new
        run and deleted; a version bump it missed is found behind in that report."""
        for order_id, flight in list(self._inflight.items()):
            if flight.cs_id == cs_id and flight.boot_id and flight.boot_id != boot_id:
                self._abandon(order_id, flight)

    def _forget_orders_to(self, cs_id: CsId, *, every_kind: bool = False) -> None:
        """A chunkserver stopped heartbeating: the copies ordered to it will not complete
        (and each would hold its chunk's writers off with Busy until the order timed out).
        Forget them now; the planner orders the work elsewhere, or again when it is back.
        Safe whatever it does with them later: an unlisted copy is reported stale and
        deleted, and its OrderDone for a forgotten order is ignored."""
        for order_id, flight in list(self._inflight.items()):
            if flight.cs_id == cs_id and (every_kind or flight.order.kind == w.OrderKind.COPY):
                self._abandon(order_id, flight)

    def _abandon(self, order_id: int, flight: _InFlight) -> None:
        """Forget an order that will never be answered; whoever waits for it hears UNAVAILABLE."""
        self._forget_order(order_id, flight)
        waiter = self._waiters.pop(order_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(int(ErrorCode.UNAVAILABLE))

    def _forget_order(self, order_id: int, flight: _InFlight) -> None:
        del self._inflight[order_id]
        self._missing_ok.discard(order_id)
        self._busy_chunks.discard(flight.order.chunk_id)
        if flight.order.kind == w.OrderKind.COPY:
            self._copy_ended(flight.order.chunk_id)
        queue = self._queues.get(flight.cs_id)
        if queue and flight.order in queue:
            queue.remove(flight.order)

    # ---- the repair loop (leader only) ------------------------------------------------------------------

    async def _loop(self) -> None:
        last = self._monotonic()
        while True:
            await asyncio.sleep(self.repair_interval_s)
            now = self._monotonic()
            gap, last = now - last, now
            svc = self.service
            if not svc.node.is_leader or not svc.serving:
                continue
            if gap > max(3 * self.repair_interval_s, self.offline_after_s):
                # this process did not run for a while (SIGSTOP, a VM pause, a swap storm):
                # the chunkservers' silence is its own, and its leadership may be gone. Give
                # every chunkserver a fresh grace and confirm leadership before acting.
                self._rebase_liveness(now)
                log.warning("mds.paused", extra={"seconds": round(gap, 1),
                                                 "action": "liveness restarted; leadership re-checked"})
                continue
            try:
                await self._repair_round()
            except VStoreError as exc:  # lost leadership, a full map: the next round retries
                log.info("mds.repair_round_failed", extra={"error": exc.message})

    async def _repair_round(self) -> None:
        self._take_over()
        self.stats["rounds"] += 1
        now = self._monotonic()
        records = self.records()
        active = [c for c, r in records.items() if r.state != "removed"]
        for cs_id, old, new in self.liveness.transitions(now, active):
            if new is not CsStatus.ONLINE:
                self._forget_orders_to(cs_id)
            level = logging.WARNING if new is CsStatus.FAILED else logging.INFO
            event = {CsStatus.ONLINE: "cs.back", CsStatus.OFFLINE: "cs.offline", CsStatus.FAILED: "cs.failed"}[new]
            log.log(level, event, extra={"cs_id": cs_id, "host": records[cs_id].host if cs_id in records else "",
                                         "was": old.value})
        was_safe = self.safe_mode
        self.safe_mode = self.liveness.in_safe_mode(now, active, timeout_s=self.safe_mode_timeout_s)
        if was_safe and not self.safe_mode:
            log.info("mds.safe_mode_ended", extra={"chunkservers": len(active), "reported": len(self._reports)})
        self._expire_orders(now)
        for chunk_id, until in list(self.write_leases.items()):
            if until < now:
                del self.write_leases[chunk_id]
        servers = self.view(now)
        if self.safe_mode:
            self.last_plan = RepairPlan((), safe_mode=True)
            return
        status = {cs.cs_id: cs.status for cs in servers}
        await self._drop_missing()
        self._sweep_doomed(status)
        self._sweep_stale(status)
        self._sweep_behind(status)
        chunks = await self._chunk_states(records, status)
        plan = plan_repairs(chunks, servers, limits=self.limits)
        self._note_rebuild(plan)
        self.last_plan = plan
        if plan.storm_brake and not getattr(self, "_storm_logged", False):
            log.error("mds.storm_brake", extra={"down": sum(1 for cs in servers if cs.status in
                                                            (CsStatus.OFFLINE, CsStatus.FAILED)),
                                                "action": "automatic rebuild stopped; bring chunkservers back"})
        self._storm_logged = plan.storm_brake
        if plan.storm_brake:
            # servers of a storm come back one by one: the brake releases at the first ones,
            # and the last would be rebuilt a moment before they report. Hold copies for one
            # more grace after the storm; whoever is still down then is rebuilt.
            self._storm_hold_until = now + self.failed_after_s
        by_id = {c.chunk_id: c for c in chunks}
        copies_allowed = now >= self._copies_after_s and now >= self._storm_hold_until
        for job in plan.jobs:
            chunk = by_id[job.chunk_id]
            if job.kind is JobKind.COPY:
                if not copies_allowed or self._leased(job.chunk_id) or job.chunk_id in self._busy_chunks:
                    # looked again now: the chunk was free when the round read the chunk table,
                    # but a writer may have been granted its lease since (the round awaits in
                    # between); a copy started now would miss that writer's writes, and the
                    # replica it adds would be listed at the same version without them
                    continue
                assert job.source is not None
                self._order(job.target, w.OrderKind.COPY, job.chunk_id, job.version, length=chunk.length_bytes,
                            source=self.address(job.source, records))
            elif job.target in self._listed(job.chunk_id):
                # a good (listed) replica: drop it from the state first; the doomed sweep
                # deletes it on the next round
                await self.service.propose_op(lambda now, j=job: ns.DropReplica(
                    uid=0, gid=0, now_ns=now, chunk_id=j.chunk_id, cs_id=j.target))
            else:
                self._order(job.target, w.OrderKind.DELETE, job.chunk_id, job.version)
        if copies_allowed and not plan.storm_brake:
            self._refill_leased(servers, now)
        await self._forget_failed_holders(chunks, status)

    def _refill_leased(self, servers: list[CsState], now: float) -> None:
        """Chunks a writer keeps leased stay out of the plan; one that stays below its policy
        for ``cs_failed_after_s`` meanwhile is copied with its writers held
        (``_refill_under_lease``). A container image open for days renews its lease with
        every write: without this its chunks stayed a replica short for as long as it was
        open, after any chunkserver loss (issue 9's note listed the gap)."""
        by_id = {cs.cs_id: cs for cs in servers}
        below: set[int] = set()
        for state in self._leased_states:
            good = good_replicas(state, by_id)
            staying = [r for r in good if by_id[r.cs_id].status is not CsStatus.DRAINING]
            if not good or (len(staying) >= state.policy.replicas and len(staying) == len(good)):
                continue   # at its policy, and nothing on a draining server to move away
            below.add(state.chunk_id)
            since = self._leased_below_since.setdefault(state.chunk_id, now)
            if (now - since >= self.failed_after_s and state.chunk_id not in self._lease_refills
                    and len(self._lease_refills) < LEASE_REFILLS_MAX):
                task = asyncio.create_task(self._refill_under_lease(state.chunk_id),
                                           name=f"lease-refill-{state.chunk_id}")
                self._lease_refills[state.chunk_id] = task
                task.add_done_callback(lambda _t, c=state.chunk_id: self._lease_refills.pop(c, None))
        for chunk_id in [c for c in self._leased_below_since if c not in below]:
            del self._leased_below_since[chunk_id]

    async def _refill_under_lease(self, chunk_id: int) -> None:
        """Copy a chunk below its policy that writers hold leased: no lease is granted from
        now (AllocChunk is BUSY while the chunk is held, then while it is copied), and a
        version bump among the replicas that answer fences off the capabilities already out
        (a write at the old version is refused; its writer asks again and waits). The copy
        is then made at the new version, which nothing can change until it is in the chain."""
        try:
            chunk = self.sm.chunk(chunk_id)
        except NotFound:
            return
        if chunk_id in self._copying or chunk_id in self._busy_chunks or chunk_id in self._held:
            return
        status = {cs.cs_id: cs.status for cs in self.view()}
        live = [c for c in chunk.replicas if status.get(c) in (CsStatus.ONLINE, CsStatus.DRAINING)
                and (chunk_id, c) not in self.damaged]
        draining = [c for c in live if status.get(c) is CsStatus.DRAINING]
        need = self._policy(chunk).replicas - (len(live) - len(draining))
        if not live or (need <= 0 and not draining):
            return
        gone = tuple(c for c in chunk.replicas if c not in live)
        if need <= 0:
            # enough copies elsewhere: the ones on draining servers leave with the bump (a
            # drain of a server holding a file kept open completes; rm-node waits for it)
            gone += tuple(draining)
            live = [c for c in live if c not in draining]
        self._held.add(chunk_id)
        try:
            try:
                await self.service.propose_op(lambda now: ns.RepairChain(
                    uid=0, gid=0, now_ns=now, chunk_id=chunk_id, version=chunk.version, drop=gone, add=(),
                    new_version=chunk.version + 1))
            except VStoreError as exc:   # written or repaired meanwhile: a later round looks again
                log.info("chunk.lease_refill_skipped", extra={"chunk": chunk_id, "error": exc.message})
                return
            for cs_id in draining:
                if cs_id in gone:   # its copy stays at the old version, unlisted: delete it
                    self._stale.setdefault(cs_id, {})[chunk_id] = chunk.version
            version = await self.carry_bump(chunk_id, live, chunk.version, chunk.version + 1,
                                            missing_ok=chunk.length_bytes == 0,
                                            reason="missed the bump that held its writers for a copy")
            chunk = self.sm.chunk(chunk_id)
            if chunk.version != version or not chunk.replicas:
                return
            targets = self._order_copies(chunk_id, chunk, list(chunk.replicas), list(gone), need) if need > 0 else []
            log.info("chunk.lease_refill", extra={"chunk": chunk_id, "version": chunk.version, "dropped": list(gone),
                                                  "targets": [t for t, _ in targets]})
        except VStoreError as exc:   # deleted, or this leader deposed meanwhile: the next leader looks again
            log.info("chunk.lease_refill_failed", extra={"chunk": chunk_id, "error": exc.message})
        finally:
            # the copies' own mark (copying) holds the writers from here until they are in the chain
            self._held.discard(chunk_id)

    def _order_copies(self, chunk_id: int, chunk: Chunk, survivors: list[CsId], exclude: list[CsId],
                      count: int) -> list[tuple[CsId, asyncio.Future[int]]]:
        """COPY orders of the chunk at its version from the first survivor to ``count`` more
        servers (placement's choice), each with a future that hears when its copy is in the
        chain (or why not)."""
        placement = place_replicas(self.view(), count, existing=tuple(chunk.replicas), exclude=exclude,
                                   salt=chunk_id)
        source = self.address(survivors[0], self.records())
        loop = asyncio.get_running_loop()
        out = []
        for target in placement.servers:
            order = self._order(target, w.OrderKind.COPY, chunk_id, chunk.version, length=chunk.length_bytes,
                                source=source)
            future: asyncio.Future[int] = loop.create_future()
            self._waiters[order.order_id] = future
            out.append((target, future))
        return out

    def _note_rebuild(self, plan: RepairPlan) -> None:
        """Log the start and the end of a rebuild (repair work below the target, by urgency)
        once each: the dashboard's event log shows them."""
        waiting = sum(n for u, n in plan.backlog.items() if u <= Urgency.BELOW_TARGET) + len(plan.lost)
        copied = self.stats["copied_bytes"]
        if waiting and self._rebuild_from is None:
            self._rebuild_from = (self._monotonic(), copied)
            log.info("rebuild.started", extra={"chunks": waiting, "lost": len(plan.lost)})
        elif not waiting and self._rebuild_from is not None and not self._copying:
            began, copied_before = self._rebuild_from
            self._rebuild_from = None
            seconds = self._monotonic() - began
            mib = (copied - copied_before) / (1 << 20)
            log.info("rebuild.finished", extra={"seconds": round(seconds, 1), "copied_mib": round(mib, 1),
                                                "mib_s": round(mib / seconds, 1) if seconds > 0 else 0.0})

    async def _forget_failed_holders(self, chunks: list[ChunkState], status: dict[CsId, CsStatus]) -> None:
        """A replica on a FAILED server counts for nothing; once the chunk is back at its
        policy elsewhere, take it out of the chain with a version bump (RepairChain), as a
        failed write does. Without the bump its copy would keep the chunk's version while
        later writes change the other replicas at that same version, and a reader holding a
        chunk map from before the drop could be served old bytes by it, with a valid
        capability, once its server returns (HDFS-7065; MooseFS bumps too). With it, that
        copy is stale by version: refused for reads and writes, and deleted when its server
        reports it. Before that it stays listed, in case its server comes back first.
        Chunks under a write lease wait: their writer's chain repair does the same."""
        budget = self.limits.max_deletes
        bumps = []
        for chunk in chunks:
            failed = tuple(r.cs_id for r in chunk.replicas if status.get(r.cs_id) is CsStatus.FAILED
                           and r.version == chunk.version)
            if not failed or chunk.chunk_id in self.write_leases or chunk.chunk_id in self._busy_chunks:
                continue
            # the chunk's policy met by replicas that can follow the bump now (an offline one
            # could not; wait for it, or for its server to fail too)
            live = [r.cs_id for r in chunk.replicas if r.version == chunk.version and not r.damaged
                    and status.get(r.cs_id) in (CsStatus.ONLINE, CsStatus.DRAINING)]
            if len(live) < chunk.policy.replicas:
                continue
            if budget <= 0:
                break
            budget -= 1
            try:
                await self.service.propose_op(lambda now, c=chunk, f=failed: ns.RepairChain(
                    uid=0, gid=0, now_ns=now, chunk_id=c.chunk_id, version=c.version, drop=f, add=(),
                    new_version=c.version + 1))
            except VStoreError as exc:  # written meanwhile (a new version): the next round looks again
                log.info("chunk.failed_holders_kept", extra={"chunk": chunk.chunk_id, "error": exc.message})
                continue
            log.info("chunk.failed_holders_dropped", extra={"chunk": chunk.chunk_id, "cs_ids": list(failed),
                                                             "version": chunk.version + 1})
            # the survivors follow the new version now; as after a chain repair, one that
            # misses the bump is dropped (the planner copies the chunk again): nothing else
            # would bring this replica's version forward until its server reports again
            bumps.append(self._bump_or_drop(chunk.chunk_id, live, chunk.version))
        if bumps:
            await asyncio.gather(*bumps)

    async def _bump_or_drop(self, chunk_id: int, replicas: list[CsId], version: int) -> None:
        await self.carry_bump(chunk_id, replicas, version, version + 1,
                              reason="missed the version bump that took out a failed holder")

    async def refill_for_writer(self, chunk_id: int, survivors: list[CsId], exclude: list[CsId], count: int, *,
                                timeout_s: float = 8.0) -> list[CsId]:
        """A writer's chain repair would leave fewer replicas than the policy's minimum:
        copy the chunk from a survivor to ``count`` more servers now, and return those whose
        copy is in the chain (AddReplica, at the chunk's current version). The writer waits
        for this (its write lease is why the planner made no copy of the chunk: a chunk
        written without a pause never got back to its policy, and after enough faults every
        repair was refused, so the application got EIO; the 30-minute thrash). Its writes
        being held, the copy cannot miss one: a write racing it also went to the failed
        replica, is refused there, and is resent to the new chain. A copy that outlasts
        ``timeout_s`` (kept under the client's attempt deadline) goes on: the writer's retry
        finds it in the chain, or waits for it."""
        chunk = self.sm.chunk(chunk_id)
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[int]] = []
        if chunk_id not in self._copying and survivors and count > 0:
            ordered = self._order_copies(chunk_id, chunk, survivors, exclude, count)
            futures = [f for _, f in ordered]
            log.info("chunk.refill_for_writer", extra={"chunk": chunk_id, "version": chunk.version,
                                                       "targets": [t for t, _ in ordered], "source": survivors[0]})
        if futures:
            await asyncio.wait(futures, timeout=timeout_s)
        else:   # a copy already under way (an earlier attempt of this repair): give it the time
            deadline = loop.time() + timeout_s
            while chunk_id in self._copying and loop.time() < deadline:
                await asyncio.sleep(0.05)
        listed = self._listed(chunk_id)
        return [c for c in listed if c not in chunk.replicas]

    async def carry_bump(self, chunk_id: int, replicas: tuple[CsId, ...] | list[CsId], old_version: int,
                         new_version: int, *, truncate_to: int | None = None, missing_ok: bool = False,
                         reason: str) -> int:
        """Carry a committed bump from ``old_version`` to ``new_version`` to ``replicas``
        (``bump_versions``) and return the chunk's version after it.

        A replica that fails or does not answer in time is taken out with one more bump among
        those that followed (RepairChain: drop it, next version), not merely dropped: its
        order may still run later (a SIGSTOPped server finds it in its socket when it wakes;
        RELIABILITY F7), and would then leave an unlisted copy at the chunk's version while
        the writes that follow change the listed ones at that same version. With the second
        bump that late copy is one version behind, refused for reads and deleted when its
        server reports. When no replica followed, they are dropped down to the last one
        (``drop_replicas``), which its report brings forward later."""
        version = new_version
        for _ in range(3):
            failed = await self.bump_versions(chunk_id, replicas, old_version, version, truncate_to=truncate_to,
                                              missing_ok=missing_ok)
            followed = [c for c in replicas if c not in failed]
            if not failed or not followed:
                break
            try:
                await self.service.propose_op(lambda now, v=version, f=tuple(failed): ns.RepairChain(
                    uid=0, gid=0, now_ns=now, chunk_id=chunk_id, version=v, drop=f, add=(), new_version=v + 1))
            except VStoreError as exc:  # the chunk moved on meanwhile: whoever moved it carries its bump
                log.info("chunk.bump_fence_skipped", extra={"chunk": chunk_id, "error": exc.message})
                return self._version(chunk_id, version)
            for cs_id in failed:
                log.warning("chunk.replica_dropped", extra={"chunk": chunk_id, "cs_id": cs_id, "reason": reason,
                                                            "version": version + 1})
            replicas, old_version, version, truncate_to = followed, version, version + 1, None
        if failed:
            await self.drop_replicas(chunk_id, failed, reason=reason)
        return version

    def _version(self, chunk_id: int, default: int) -> int:
        try:
            return self.sm.chunk(chunk_id).version
        except NotFound:
            return default

    def _listed(self, chunk_id: int) -> tuple[int, ...]:
        try:
            return tuple(self.sm.chunk(chunk_id).replicas)
        except NotFound:
            return ()

    async def drop_replicas(self, chunk_id: int, failed: list[CsId], *, reason: str) -> None:
        """Drop replicas that could not follow a version bump, keeping at least one."""
        for cs_id in failed:
            listed = self._listed(chunk_id)
            if cs_id not in listed or len(listed) <= 1:
                continue
            log.warning("chunk.replica_dropped", extra={"chunk": chunk_id, "cs_id": cs_id, "reason": reason})
            await self.service.propose_op(lambda now, s=cs_id: ns.DropReplica(uid=0, gid=0, now_ns=now,
                                                                              chunk_id=chunk_id, cs_id=s))

    async def _drop_missing(self) -> None:
        """Replicas the state lists on a chunkserver whose report did not include them are
        gone (a lost disk, a deleted file): drop them, so the planner rebuilds the chunk."""
        for cs_id, missing in list(self._missing.items()):
            for chunk_id in list(missing):
                missing.discard(chunk_id)
                if cs_id in self._listed(chunk_id):
                    log.warning("chunk.replica_missing", extra={"chunk": chunk_id, "cs_id": cs_id})
                    await self.service.propose_op(lambda now, c=chunk_id, s=cs_id: ns.DropReplica(
                        uid=0, gid=0, now_ns=now, chunk_id=c, cs_id=s))
            if not missing:
                self._missing.pop(cs_id, None)

    def _sweep_doomed(self, status: dict[CsId, CsStatus]) -> None:
        for chunk_id, doomed in self.sm.doomed(limit=self.limits.max_deletes):
            if chunk_id in self._busy_chunks:
                continue
            for cs_id in doomed.replicas:
                if status.get(cs_id) in (CsStatus.ONLINE, CsStatus.DRAINING):
                    self._order(cs_id, w.OrderKind.DELETE, chunk_id, doomed.version, doomed=True)

    def _sweep_stale(self, status: dict[CsId, CsStatus]) -> None:
        budget = self.limits.max_deletes
        for cs_id, stale in self._stale.items():
            if status.get(cs_id) not in (CsStatus.ONLINE, CsStatus.DRAINING):
                continue
            for chunk_id, version in list(stale.items()):
                if budget <= 0:
                    return
                if chunk_id in self._busy_chunks:
                    continue
                if cs_id in self._listed(chunk_id):
                    # a replica there again since its report (a copy, a refill for a writer):
                    # the old copy it reported is gone, and deleting "at most" its version
                    # would be refused every round, holding the chunk busy (no rebuild) forever
                    stale.pop(chunk_id, None)
                    continue
                self._order(cs_id, w.OrderKind.DELETE, chunk_id, version)
                budget -= 1

    def _sweep_behind(self, status: dict[CsId, CsStatus]) -> None:
        for cs_id, behind in self._behind.items():
            if status.get(cs_id) not in (CsStatus.ONLINE, CsStatus.DRAINING):
                continue
            for chunk_id, version in list(behind.items()):
                if chunk_id in self._busy_chunks or chunk_id in self.write_leases:
                    continue
                try:
                    chunk = self.sm.chunk(chunk_id)
                except NotFound:
                    behind.pop(chunk_id)
                    continue
                if cs_id not in chunk.replicas:
                    behind.pop(chunk_id)
                    continue
                self._order(cs_id, w.OrderKind.TRUNCATE, chunk_id, chunk.version, length=chunk.length_bytes,
                            old_version=version)

    async def _chunk_states(self, records: dict[CsId, CsRecord], status: dict[CsId, CsStatus]) -> list[ChunkState]:
        """Every chunk as the planner sees it (a full scan: bounded by the chunk count; a
        cursor over the chunk table resumed each round is the next step for big clusters)."""
        policies: dict[int, ReplicaPolicy] = {}
        out: list[ChunkState] = []
        every: list[ChunkState] = []
        leased: list[ChunkState] = []
        after = 0
        now = self._monotonic()
        while True:
            page = self.sm.iter_chunks(after_chunk_id=after, limit=1000)
            if not page:
                break
            for chunk_id, chunk in page:
                after = chunk_id
                policy = policies.get(chunk.inode)
                if policy is None:
                    policy = self._policy(chunk)
                    policies[chunk.inode] = policy
                state = self._state(chunk_id, chunk, policy)
                every.append(state)
                if chunk_id not in self._busy_chunks:
                    (leased if self._leased(chunk_id, now) else out).append(state)
            await asyncio.sleep(0)  # let requests in between pages
        # what each server holds, busy chunks included (what rm-node and top show)
        self.tallies = cs_tallies(every, self.view(now))
        self.chunks_total = len(every)
        self._leased_states = leased
        return out

    def _policy(self, chunk: Chunk) -> ReplicaPolicy:
        try:
            text = self.sm.getattr(chunk.inode).policy or ns.DEFAULT_POLICY
        except NotFound:
            text = ns.DEFAULT_POLICY
        try:
            return ReplicaPolicy.parse(text)
        except ValueError:
            return ReplicaPolicy.parse(ns.DEFAULT_POLICY)

    def _state(self, chunk_id: int, chunk: Chunk, policy: ReplicaPolicy) -> ChunkState:
        # a listed replica that is behind counts at the chunk's version: the TRUNCATE order
        # that brings it up to date is on its way (counting it stale would delete it)
        replicas = [Replica(CsId(c), chunk.version, (chunk_id, c) in self.damaged) for c in chunk.replicas]
        listed = set(chunk.replicas)
        for cs_id, stale in self._stale.items():
            version = stale.get(chunk_id)
            if version is not None and cs_id not in listed:
                replicas.append(Replica(cs_id, version))
        return ChunkState(chunk_id=chunk_id, version=chunk.version, length_bytes=chunk.length_bytes, policy=policy,
                          replicas=tuple(replicas))

    # ---- status ------------------------------------------------------------------------------------------

    def summary(self) -> dict[str, int]:
        """Flat counters for status replies: safe mode and storm brake (0/1), lost chunks,
        chunkservers registered and online, the repair backlog by urgency
        (``backlog_<urgency>``), orders in flight, the stats."""
        plan = self.last_plan
        servers = self.view()
        out = {"safe_mode": int(self.safe_mode), "storm_brake": int(plan.storm_brake), "lost": len(plan.lost),
               "orders_in_flight": len(self._inflight), "cs_total": len(servers),
               # a draining server heartbeats: online, not a fault (the operator is moving it out)
               "cs_online": sum(1 for cs in servers if cs.status in (CsStatus.ONLINE, CsStatus.DRAINING)),
               "cs_draining": sum(1 for cs in servers if cs.status is CsStatus.DRAINING),
               # space, among the servers that hold data: full = no new replicas placed there
               "cs_nearfull": sum(1 for cs in servers if cs.status is not CsStatus.FAILED
                                  and NEARFULL_RATIO <= cs.used_ratio < FULL_RATIO_MAX),
               "cs_full": sum(1 for cs in servers if cs.status is not CsStatus.FAILED
                              and cs.used_ratio >= FULL_RATIO_MAX),
               "chunks_total": self.chunks_total, "rebuilding": len(self._copying), **self.stats}
        out.update({f"backlog_{u.name.lower()}": n for u, n in plan.backlog.items()})
        return out
