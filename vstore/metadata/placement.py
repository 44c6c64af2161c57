"""Where a chunk's replicas go. Pure and deterministic.

The failure we must survive is a whole host (or, when racks are labelled, a whole rack)
going dark, so replicas go to distinct hosts, and to distinct racks while there are racks
to spread over. Among the servers that qualify, the one with the most free bytes wins, then
the lowest ``cs_id``: every MDS, the simulator and a replayed test compute the same answer
from the same snapshot. The first replica goes to a chunkserver on the writing client's own
host when one qualifies: it saves a network hop on every write of that chunk.

A chunkserver qualifies only when it is ONLINE (not offline, failed or draining) and below
``FULL_RATIO_MAX`` of its capacity (Ceph's nearfull/backfillfull thresholds: beyond it a
server fills up faster than the cluster can react).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import NewType

CsId = NewType("CsId", int)
ChunkId = NewType("ChunkId", int)

#: No new replica goes to a chunkserver filled beyond this fraction of its capacity.
FULL_RATIO_MAX = 0.90
#: Filled beyond this, a chunkserver is reported nearly full (status degraded: act before it is full).
NEARFULL_RATIO = 0.85


class CsStatus(enum.Enum):
    ONLINE = "online"        # heartbeating
    OFFLINE = "offline"      # no heartbeat for offline_after_s: its replicas still count (grace period)
    FAILED = "failed"        # offline past the grace period: its replicas are rebuilt elsewhere
    DRAINING = "draining"    # being removed by an operator: its replicas move away, it takes no new ones


@dataclass(frozen=True, slots=True)
class CsState:
    """What the planners know of one chunkserver (a plain snapshot of the registry)."""

    cs_id: CsId
    host: str
    rack: str
    status: CsStatus
    capacity_bytes: int
    used_bytes: int

    @property
    def free_bytes(self) -> int:
        return max(0, self.capacity_bytes - self.used_bytes)

    @property
    def used_ratio(self) -> float:
        return self.used_bytes / self.capacity_bytes if self.capacity_bytes > 0 else 1.0

    def accepts_new_replicas(self) -> bool:
        return self.status is CsStatus.ONLINE and self.used_ratio < FULL_RATIO_MAX


@dataclass(frozen=True, slots=True)
class ReplicaPolicy:
    """``replicas=N:min``: keep N copies; below ``min`` a write is refused (default 3:2)."""

    replicas: int = 3
    min: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.replicas <= 16:
            raise ValueError(f"replicas={self.replicas}:{self.min}: need 1 <= min <= replicas <= 16")

    def __str__(self) -> str:
        return f"{self.replicas}:{self.min}"

    @classmethod
    def parse(cls, text: str) -> ReplicaPolicy:
        """``"3:2"`` or ``"3"`` (min = replicas - 1, at least 1). Raises ValueError."""
        replicas_text, colon, min_text = text.partition(":")
        try:
            replicas = int(replicas_text)
            minimum = int(min_text) if colon else max(1, replicas - 1)
        except ValueError:
            raise ValueError(f"replicas={text!r}: expected N or N:MIN, e.g. 3:2") from None
        return cls(replicas, minimum)


@dataclass(frozen=True, slots=True)
class Placement:
    servers: tuple[CsId, ...]
    wanted: int

    @property
    def complete(self) -> bool:
        return len(self.servers) >= self.wanted


#: Servers whose free space differs by less than this share of the largest capacity count
#: as equally free: among them the choice is spread by the chunk (below), so a new cluster
#: of identical disks does not put every chunk on the same lowest-numbered servers.
FREE_SPACE_BUCKET = 0.01
_MASK = (1 << 64) - 1


def _spread(salt: int, cs_id: int) -> int:
    """A well-mixed 64-bit number per (chunk, server): rendezvous hashing's order. Pure."""
    x = (salt * 0x9E3779B97F4A7C15 + cs_id * 0xC2B2AE3D27D4EB4F + 0x165667B19E3779F9) & _MASK
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    return x ^ (x >> 29)


def place_replicas(servers: Iterable[CsState], count: int, *, writer_host: str | None = None,
                   existing: Collection[CsId] = (), exclude: Collection[CsId] = (),
                   extra_used_bytes: dict[CsId, int] | None = None, salt: int = 0) -> Placement:
    """Choose up to ``count`` chunkservers for new replicas of one chunk.

    ``existing``: servers already holding a replica (their hosts and racks count as used,
    and they are never chosen again). ``exclude``: servers not to use (e.g. the source of a
    copy that just failed). ``extra_used_bytes``: bytes the caller has already planned onto
    a server in this round, so one plan does not pile everything on the emptiest server.
    ``salt``: names the chunk (its id, or its file and index): among servers about equally
    free (``FREE_SPACE_BUCKET``) the order is the chunk's own, so chunks spread evenly.

    Returns fewer servers than asked when the cluster cannot meet the constraints; the
    caller refuses the write below the policy's minimum and records the chunk as degraded
    otherwise. Never two replicas on one host; never an offline, draining or full server.
    """
    by_id = {cs.cs_id: cs for cs in servers}
    extra = extra_used_bytes or {}

    def effective(cs: CsState) -> CsState:
        planned = extra.get(cs.cs_id, 0)
        if not planned:
            return cs
        return CsState(cs.cs_id, cs.host, cs.rack, cs.status, cs.capacity_bytes, cs.used_bytes + planned)

    pool = [effective(cs) for cs in by_id.values() if cs.cs_id not in existing and cs.cs_id not in exclude]
    bucket = max(1, int(max((cs.capacity_bytes for cs in pool), default=1) * FREE_SPACE_BUCKET))
    candidates = sorted(pool, key=lambda cs: (-(cs.free_bytes // bucket), _spread(salt, cs.cs_id)))
    candidates = [cs for cs in candidates if cs.accepts_new_replicas()]
    used_hosts = {by_id[c].host for c in existing if c in by_id}
    used_racks = {by_id[c].rack for c in existing if c in by_id and by_id[c].rack}
    racks_labelled = any(cs.rack for cs in candidates) or bool(used_racks)
    chosen: list[CsId] = []

    def take(cs: CsState) -> None:
        chosen.append(cs.cs_id)
        used_hosts.add(cs.host)
        if cs.rack:
            used_racks.add(cs.rack)

    if writer_host is not None and count > 0 and writer_host not in used_hosts:
        local = [cs for cs in candidates if cs.host == writer_host]
        if local and not (racks_labelled and local[0].rack and local[0].rack in used_racks):
            take(local[0])
    # First pass: a new rack and a new host each time (only while racks are labelled);
    # second pass: any new host. Greedy in rank order reaches the largest possible number
    # of distinct racks and hosts, because each host sits in one rack.
    passes = (True, False) if racks_labelled else (False,)
    for need_new_rack in passes:
        for cs in candidates:
            if len(chosen) >= count:
                break
            if cs.cs_id in chosen or cs.host in used_hosts:
                continue
            if need_new_rack and (not cs.rack or cs.rack in used_racks):
                continue
            take(cs)
    return Placement(tuple(chosen), count)


def distinct_hosts(servers: Sequence[CsState], ids: Iterable[CsId]) -> bool:
    by_id = {cs.cs_id: cs.host for cs in servers}
    hosts = [by_id[i] for i in ids]
    return len(hosts) == len(set(hosts))
