"""What to copy and what to delete so every chunk gets back to its policy. Pure and deterministic.

``plan_repairs`` looks at an immutable snapshot (chunks with their replicas, chunkservers
with their state) and returns a bounded list of jobs, most urgent first, as MooseFS orders
its replication priorities:

    LAST_COPY     one good replica left: any further loss loses data
    BELOW_MIN     fewer good replicas than the policy's minimum: writes are refused
    BELOW_TARGET  fewer than N
    DRAINING      a good replica sits on a server an operator is removing
    WRONG_DOMAIN  two replicas share a host (or a rack while racks were available)
    REBALANCE     the fullest server is far fuller than the emptiest
    OVER_TARGET   more than N good replicas: delete the one on the fullest server
    STALE         a replica of an old version, or a damaged one: delete it

A replica is *good* when its version is the chunk's, it is not damaged, and its server is
online, offline (still within the grace period: it may come back) or draining. Replicas on
FAILED servers are gone as far as the plan is concerned.

The planner never mutates its input; it accounts for its own earlier picks (bytes planned
onto a target, jobs per server) inside one plan, as SeaweedFS's PickTarget does, so one
round never piles every copy onto the emptiest server.

Brakes (RELIABILITY.md §4.7-8):
* safe mode (after a cluster start, until the chunkservers have reported): no jobs at all;
* storm brake: more than ``storm_offline_max`` servers offline or failed at once (a rack
  power blip, a switch) stops automatic copies and deletions, and the plan says so, so
  the dashboard can raise the alarm instead of the cluster rebuilding everything.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vstore.metadata.placement import ChunkId, CsId, CsState, CsStatus, ReplicaPolicy, place_replicas

#: Rebalancing starts when the fullest online server's used ratio exceeds the emptiest one's
#: by this much (10 percentage points): tighter thresholds move data back and forth for nothing.
REBALANCE_SPREAD = 0.10


class Urgency(enum.IntEnum):
    LAST_COPY = 0
    BELOW_MIN = 1
    BELOW_TARGET = 2
    DRAINING = 3
    WRONG_DOMAIN = 4
    REBALANCE = 5
    OVER_TARGET = 6
    STALE = 7


class JobKind(enum.Enum):
    COPY = "copy"      # target copies the chunk from source, verifies it, then reports it complete
    DELETE = "delete"  # target deletes its replica


@dataclass(frozen=True, slots=True)
class Replica:
    cs_id: CsId
    version: int
    damaged: bool = False


@dataclass(frozen=True, slots=True)
class ChunkState:
    chunk_id: ChunkId
    version: int
    length_bytes: int
    policy: ReplicaPolicy
    replicas: tuple[Replica, ...]


@dataclass(frozen=True, slots=True)
class RepairJob:
    kind: JobKind
    urgency: Urgency
    chunk_id: ChunkId
    version: int
    target: CsId
    source: CsId | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds of one planning round (the rebuild rate is rounds per second × these)."""

    max_copies: int = 64
    max_copies_per_server: int = 4     # as source or target: one disk must not be swamped
    max_deletes: int = 256
    storm_offline_max: int = 2         # Virtuozzo mds.wd.max_offline_cs


@dataclass(frozen=True)
class RepairPlan:
    jobs: tuple[RepairJob, ...]
    #: chunks with no good replica at all: nothing to copy from (reported, never "repaired")
    lost: tuple[ChunkId, ...] = ()
    storm_brake: bool = False
    safe_mode: bool = False
    #: chunk counts by urgency, before the budget cut (what the dashboard shows)
    backlog: dict[Urgency, int] = field(default_factory=dict)


_COUNTS_AS_PRESENT = (CsStatus.ONLINE, CsStatus.OFFLINE, CsStatus.DRAINING)


def good_replicas(chunk: ChunkState, servers: dict[CsId, CsState]) -> list[Replica]:
    return [r for r in chunk.replicas
            if r.version == chunk.version and not r.damaged
            and r.cs_id in servers and servers[r.cs_id].status in _COUNTS_AS_PRESENT]


@dataclass(slots=True)
class CsTally:
    """What one chunkserver holds as far as removing it is concerned."""

    #: replicas of the chunk's version there
    chunks: int = 0
    #: of those, chunks with fewer than their target good copies on other online, not
    #: draining servers: what a drain still has to copy before the server can go
    drain_left: int = 0
    #: chunks with no good copy anywhere else: what removing it now would lose
    sole: int = 0


def cs_tallies(chunks: Iterable[ChunkState], servers: Sequence[CsState]) -> dict[CsId, CsTally]:
    """Per chunkserver, its ``CsTally`` (servers holding nothing are absent). Pure."""
    by_id = {cs.cs_id: cs for cs in servers}
    out: dict[CsId, CsTally] = {}
    for chunk in chunks:
        good = {r.cs_id for r in good_replicas(chunk, by_id)}
        resident = {c for c in good if by_id[c].status is CsStatus.ONLINE}
        for replica in chunk.replicas:
            if replica.version != chunk.version:
                continue
            tally = out.setdefault(replica.cs_id, CsTally())
            tally.chunks += 1
            if len(resident - {replica.cs_id}) < chunk.policy.replicas:
                tally.drain_left += 1
            if not good - {replica.cs_id}:
                tally.sole += 1
    return out


def classify(chunk: ChunkState, servers: dict[CsId, CsState]) -> Urgency | None:
    """The most urgent thing wrong with one chunk, or None if it is as it should be."""
    good = good_replicas(chunk, servers)
    resident = [r for r in good if servers[r.cs_id].status is not CsStatus.DRAINING]
    n = len(good)
    if n == 1 and chunk.policy.replicas > 1:
        return Urgency.LAST_COPY
    if n < chunk.policy.min:
        return Urgency.BELOW_MIN
    if n < chunk.policy.replicas:
        return Urgency.BELOW_TARGET
    if len(resident) < chunk.policy.replicas:
        return Urgency.DRAINING
    hosts = Counter(servers[r.cs_id].host for r in resident)
    if any(c > 1 for c in hosts.values()):
        return Urgency.WRONG_DOMAIN
    if n > chunk.policy.replicas:
        return Urgency.OVER_TARGET  # extra resident copies, or a drained copy now redundant
    if any(r not in good for r in chunk.replicas):
        return Urgency.STALE
    return None


def plan_repairs(chunks: Iterable[ChunkState], servers: Sequence[CsState], *, limits: Limits = Limits(),
                 safe_mode: bool = False) -> RepairPlan:
    """Plan one round of repairs. Deterministic: same snapshot, same plan."""
    by_id = {cs.cs_id: cs for cs in servers}
    chunks = list(chunks)
    if safe_mode:
        return RepairPlan((), safe_mode=True)
    down = sum(1 for cs in servers if cs.status in (CsStatus.OFFLINE, CsStatus.FAILED))
    storm = down > limits.storm_offline_max

    work: list[tuple[Urgency, int, ChunkId, ChunkState]] = []
    lost: list[ChunkId] = []
    backlog: Counter[Urgency] = Counter()
    for chunk in chunks:
        good = good_replicas(chunk, by_id)
        if not good:
            lost.append(chunk.chunk_id)
            continue
        urgency = classify(chunk, by_id)
        if urgency is not None:
            backlog[urgency] += 1
            work.append((urgency, len(good), chunk.chunk_id, chunk))
    if storm:
        return RepairPlan((), lost=tuple(sorted(lost)), storm_brake=True, backlog=dict(backlog))
    # most urgent first; among equals, fewest good replicas, then chunk id (stable)
    work.sort(key=lambda w: (w[0], w[1], w[2]))

    planner = _Round(by_id, limits)
    for urgency, _, _, chunk in work:
        planner.repair(chunk, urgency)
    planner.rebalance(chunks)
    return RepairPlan(tuple(planner.jobs), lost=tuple(sorted(lost)), backlog=dict(backlog))


class _Round:
    """The state of one planning round: budgets and the bytes already planned per server."""

    def __init__(self, servers: dict[CsId, CsState], limits: Limits) -> None:
        self.servers = servers
        self.limits = limits
        self.jobs: list[RepairJob] = []
        self.copies = 0
        self.deletes = 0
        self.per_server: Counter[CsId] = Counter()
        self.planned_bytes: dict[CsId, int] = {}
        self.touched: set[ChunkId] = set()

    def _busy(self, cs_id: CsId) -> bool:
        return self.per_server[cs_id] >= self.limits.max_copies_per_server

    def _copy(self, chunk: ChunkState, urgency: Urgency, holders: list[CsId]) -> bool:
        if self.copies >= self.limits.max_copies:
            return False
        good = good_replicas(chunk, self.servers)
        sources = sorted((r.cs_id for r in good if self.servers[r.cs_id].status is not CsStatus.OFFLINE
                          and not self._busy(r.cs_id)),
                         key=lambda c: (self.per_server[c], self.servers[c].status is CsStatus.DRAINING, c))
        if not sources:
            return False
        busy = {c for c in self.servers if self._busy(c)}
        # a draining holder's copy is leaving: its host may take the new one (another disk)
        draining = {c for c in holders if self.servers[c].status is CsStatus.DRAINING}
        placement = place_replicas(self.servers.values(), 1, existing=[c for c in holders if c not in draining],
                                   exclude=busy | draining, extra_used_bytes=self.planned_bytes,
                                   salt=chunk.chunk_id)
        if not placement.servers:
            return False
        target, source = placement.servers[0], sources[0]
        self.jobs.append(RepairJob(JobKind.COPY, urgency, chunk.chunk_id, chunk.version, target, source))
        self.copies += 1
        self.per_server[target] += 1
        self.per_server[source] += 1
        self.planned_bytes[target] = self.planned_bytes.get(target, 0) + chunk.length_bytes
        self.touched.add(chunk.chunk_id)
        return True

    def _delete(self, chunk: ChunkState, urgency: Urgency, cs_id: CsId) -> bool:
        if self.deletes >= self.limits.max_deletes:
            return False
        if self.servers[cs_id].status not in (CsStatus.ONLINE, CsStatus.DRAINING):
            return False  # it cannot act on the order now; the next round asks again
        self.jobs.append(RepairJob(JobKind.DELETE, urgency, chunk.chunk_id, chunk.version, cs_id))
        self.deletes += 1
        self.touched.add(chunk.chunk_id)
        return True

    def repair(self, chunk: ChunkState, urgency: Urgency) -> None:
        good = good_replicas(chunk, self.servers)
        good_ids = [r.cs_id for r in good]
        if urgency in (Urgency.LAST_COPY, Urgency.BELOW_MIN, Urgency.BELOW_TARGET):
            # the policy's hosts must stay distinct: count only one replica per host
            holders = list(good_ids)
            for _ in range(chunk.policy.replicas - len(_distinct_host_ids(good_ids, self.servers))):
                if not self._copy(chunk, urgency, holders):
                    break
                holders.append(self.jobs[-1].target)
        elif urgency is Urgency.DRAINING:
            self._copy(chunk, urgency, good_ids)
        elif urgency is Urgency.WRONG_DOMAIN:
            # copy to a new host first; a duplicate is deleted once enough hosts hold it,
            # and never while another copy is offline (it may be the one that comes back)
            distinct = _distinct_host_ids(good_ids, self.servers)
            if len(distinct) < chunk.policy.replicas:
                self._copy(chunk, urgency, good_ids)
            elif self._none_offline(good_ids):
                for cs_id in [c for c in good_ids if c not in distinct]:
                    self._delete(chunk, urgency, cs_id)
        elif urgency is Urgency.OVER_TARGET:
            # Never while a replica is offline (it may be the one that comes back); drained
            # copies go first, then resident extras from the fullest servers.
            if self._none_offline(good_ids):
                draining = [c for c in good_ids if self.servers[c].status is CsStatus.DRAINING]
                resident = [c for c in good_ids if c not in draining]
                fullest = sorted(resident, key=lambda c: (-self.servers[c].used_ratio, -c))
                for cs_id in draining + fullest[:len(resident) - chunk.policy.replicas]:
                    self._delete(chunk, urgency, cs_id)
        # Stale or damaged copies go once the chunk is safe again (>= min good copies):
        # while it is critical they are kept, as MooseFS keeps invalid copies, for forensics.
        if len(good) >= chunk.policy.min:
            for replica in chunk.replicas:
                if replica not in good and replica.cs_id in self.servers:
                    self._delete(chunk, Urgency.STALE, replica.cs_id)

    def _none_offline(self, ids: list[CsId]) -> bool:
        return all(self.servers[c].status is not CsStatus.OFFLINE for c in ids)

    def rebalance(self, chunks: list[ChunkState]) -> None:
        online = [cs for cs in self.servers.values() if cs.status is CsStatus.ONLINE]
        if len(online) < 2 or self.copies >= self.limits.max_copies:
            return
        fullest = max(online, key=lambda cs: (cs.used_ratio, -cs.cs_id))
        emptiest = min(online, key=lambda cs: (cs.used_ratio, cs.cs_id))
        if fullest.used_ratio - emptiest.used_ratio <= REBALANCE_SPREAD:
            return
        for chunk in sorted(chunks, key=lambda c: c.chunk_id):
            if chunk.chunk_id in self.touched or classify(chunk, self.servers) is not None:
                continue
            holders = [r.cs_id for r in good_replicas(chunk, self.servers)]
            if fullest.cs_id not in holders:
                continue
            # an extra copy on a new host; OVER_TARGET then deletes the one on the fullest server
            if not self._copy(chunk, Urgency.REBALANCE, holders):
                return


def _distinct_host_ids(ids: list[CsId], servers: dict[CsId, CsState]) -> list[CsId]:
    seen: set[str] = set()
    out = []
    for cs_id in ids:
        host = servers[cs_id].host
        if host not in seen:
            seen.add(host)
            out.append(cs_id)
    return out
