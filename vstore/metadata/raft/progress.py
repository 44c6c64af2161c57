"""The leader's view of each follower's log: match/next indexes, replication state and the
window of in-flight appends. Pure. After etcd-io/raft's tracker package.

States (etcd's names):
* PROBE: we do not know where the follower's log ends; send one append at a time and
  wait for its answer (or a heartbeat response) before sending the next.
* REPLICATE: the follower is keeping up; stream appends optimistically, up to
  ``max_inflight`` messages not yet acknowledged.
* SNAPSHOT: the follower needs a snapshot; send nothing until it reports back.

``match_index`` only moves forward and ``next_index`` never drops below ``match_index + 1``,
whatever order responses arrive in (pysyncobj #166/#167 were exactly that bug).
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """Last indexes of appends sent but not yet acknowledged, oldest first, bounded."""

    __slots__ = ("_items", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[int] = deque()

    def add(self, last_index: int) -> None:
        assert not self.full(), "inflights overflow: caller must check full() first"
        self._items.append(last_index)

    def free_le(self, index: int) -> None:
        """Forget every append whose last index is <= index (they were acknowledged)."""
        while self._items and self._items[0] <= index:
            self._items.popleft()

    def free_first_one(self) -> None:
        if self._items:
            self._items.popleft()

    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def reset(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class Progress:
    __slots__ = ("match_index", "next_index", "state", "pending_snapshot", "recent_active", "probe_sent",
                 "inflights", "is_learner")

    def __init__(self, next_index: int, *, max_inflight: int, is_learner: bool = False, match_index: int = 0) -> None:
        self.match_index = match_index
        self.next_index = next_index
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        #: heard from since the last check-quorum round
        self.recent_active = False
        #: in PROBE, an append is outstanding; cleared by any response or heartbeat response
        self.probe_sent = False
        self.inflights = Inflights(max_inflight)
        self.is_learner = is_learner

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        # Coming out of SNAPSHOT, resume right after the snapshot (or what matched since).
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next_index = max(self.match_index + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next_index = self.match_index + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next_index = self.match_index + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged everything up to ``index``. True if match moved."""
        updated = False
        if self.match_index < index:
            self.match_index = index
            updated = True
            self.probe_sent = False
        self.next_index = max(self.next_index, index + 1)
        return updated

    def sent_entries(self, last_index: int) -> None:
        """An append carrying entries up to ``last_index`` went out."""
        if self.state is ProgressState.REPLICATE:
            self.next_index = last_index + 1
            self.inflights.add(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append at ``rejected``; ``match_hint`` is the highest
        index where it may match. False if the rejection is stale (a reordered response)."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match_index:
                return False  # stale: we already know it matches up to match_index
            self.next_index = self.match_index + 1
            return True
        if self.next_index - 1 != rejected:
            return False  # stale: not the probe we are waiting for
        self.next_index = max(min(rejected, match_hint + 1), self.match_index + 1, 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True  # SNAPSHOT

    def __repr__(self) -> str:
        return (f"Progress(match={self.match_index}, next={self.next_index}, {self.state.value}"
                f"{', learner' if self.is_learner else ''}, inflight={len(self.inflights)})")
