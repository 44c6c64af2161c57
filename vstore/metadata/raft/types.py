"""Raft configuration, persistent state, the Ready contract and the storage interface. Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from vstore.wire.raft import ConfState, Entry, RaftMessage, SnapshotMeta


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Tuning of one node's core. Time is in ticks; the shell ticks every ``tick_ms``.

    Defaults (100 ms ticks): heartbeat every tick, election timeout randomised in
    [10, 20) ticks = 1-2 s, which makes failover "seconds" as DESIGN.md §4 asks while a
    heartbeat RTT on a LAN stays far below it.
    """

    election_tick: int = 10
    heartbeat_tick: int = 1
    #: Entries per append message, by bytes (etcd MaxSizePerMsg).
    max_size_per_msg: int = 1 << 20
    #: Appends in flight to one follower before waiting for acks (etcd MaxInflightMsgs).
    max_inflight_msgs: int = 256
    #: Bytes of proposed-but-uncommitted entries the leader accepts before refusing new
    #: proposals (etcd MaxUncommittedEntriesSize); 0 = no limit.
    max_uncommitted_bytes: int = 64 << 20
    #: Bytes of committed entries handed out per Ready.
    max_committed_bytes_per_ready: int = 16 << 20
    pre_vote: bool = True
    check_quorum: bool = True
    #: Serve read-index requests from the leader's lease instead of a heartbeat round.
    #: Only safe with check_quorum and bounded clock drift; off by default (RAFT.md §4.2.6).
    lease_reads: bool = False
    #: The state machine's applied index at start: entries up to it are never handed out again.
    applied: int = 0
    #: Never vote or campaign (a node whose data was lost, or whose state hash diverged;
    #: RELIABILITY.md §4.5-6). It still receives the log and can be re-added.
    voting_disabled: bool = False

    def __post_init__(self) -> None:
        if self.heartbeat_tick < 1 or self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must be greater than heartbeat_tick >= 1")
        if self.max_inflight_msgs < 1:
            raise ValueError("max_inflight_msgs must be >= 1")
        if self.lease_reads and not self.check_quorum:
            raise ValueError("lease_reads requires check_quorum")


class HardState(msgspec.Struct, array_like=True, frozen=True):
    """What must be durable before any message that depends on it is sent."""

    term: int = 0
    vote: str = ""    # "" = voted for nobody in this term
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state, reported when it changes (not persisted)."""

    leader: str | None
    role: Role


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied ``index``."""

    index: int
    context: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    """Everything the core wants done, in the order the shell must do it:

    1. persist ``snapshot`` (install its data), then ``entries`` (appended after truncating
       any conflicting suffix from ``entries[0].index``), then ``hard_state``, with ONE
       durable write (one fsync covers all of it: group commit);
    2. only then send ``messages`` (a vote or an append ack must never reach a peer before
       what it promises is on disk);
    3. apply ``committed_entries`` in order, writing the applied index in the same
       transaction as their effects; serve ``read_states`` once applied >= their index;
    4. call ``advance(ready)``.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: SnapshotMeta | None = None
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[RaftMessage, ...] = ()
    read_states: tuple[ReadState, ...] = ()

    @property
    def must_sync(self) -> bool:
        return bool(self.entries) or self.hard_state is not None or self.snapshot is not None


class LogUnavailable(Exception):
    """The requested index is beyond the stored log."""


class LogCompacted(Exception):
    """The requested index was compacted away (a snapshot covers it)."""


class NotLeaderError(Exception):
    """This node cannot take the request: it is not the leader. ``leader`` is a hint."""

    def __init__(self, leader: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class ProposalDropped(Exception):
    """The leader refused the proposal (transfer in progress, too many uncommitted bytes,
    a configuration change already pending). Retry later."""


class LogStorage(Protocol):
    """The durable log as the core may read it (etcd's Storage).

    ``term(i)`` is defined for ``first_index() - 1 <= i <= last_index()``: the entry just
    before the first is the compaction point, whose term is kept. Raises LogCompacted below
    and LogUnavailable above that range. ``entries`` returns [lo, hi) but at least one
    entry when any is available, and no more than ``max_bytes`` after the first.
    """

    def initial_state(self) -> tuple[HardState, ConfState]: ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]: ...

    def term(self, index: int) -> int: ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot_meta(self) -> SnapshotMeta:
        """A snapshot the leader can send now (its data is streamed by the shell)."""
        ...


@dataclass
class Status:
    """A plain-data picture of one node's core, for the dashboard and the tests."""

    id: str
    term: int
    vote: str
    commit: int
    applied: int
    last_index: int
    role: Role
    leader: str | None
    lead_transferee: str | None
    progress: dict[str, str] = field(default_factory=dict)
    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()
    dropped_corrupt_messages: int = 0
