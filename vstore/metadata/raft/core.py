"""The Raft state machine of one node. Pure and deterministic.

Inputs: ``tick()``, ``step(message)``, ``propose(data)``, ``propose_conf_change(change)``,
``read_index(context)``, ``transfer_leader(to)``, ``campaign()``. Output: ``ready()``, a
``Ready`` of state to persist, messages to send, entries to apply and reads to serve, in
the order documented on ``Ready``; the shell does them and calls ``advance(ready)``.
No asyncio, sockets, files or clocks: time is ticks, randomness an injected Random, the
durable log a read-only LogStorage. The same inputs always give the same outputs, which
is what lets tests/harness/sim.py replay any run from its seed.

After etcd-io/raft (raft.go), with its safety features on by default:
* pre-vote (§9.6 of Ongaro's thesis) and check-quorum, so a partitioned or removed node
  cannot disrupt a healthy leader, and a leader cut off from a majority steps down;
  together they give leader stickiness (votes are ignored within the election timeout of
  hearing from a live leader);
* a no-op entry on election; entries of earlier terms are committed only indirectly,
  by committing a current-term entry (paper §5.4.2, Figure 8);
* the leader counts its own log only once it is durable (``advance``), never earlier;
* single-server membership changes, one at a time, only after the leader's no-op has
  committed; new members join as learners; changes take effect when applied;
* leadership transfer with TimeoutNow; proposals refused while a transfer runs;
* read-index reads (a heartbeat round confirms leadership), only once the leader has
  committed an entry of its term; lease reads only when configured;
* entries carry checksums; an append with a corrupt entry is dropped, never stored.
"""

from __future__ import annotations

import dataclasses
from random import Random

from vstore.metadata.raft import quorum
from vstore.metadata.raft.codec import encode_conf_change
from vstore.metadata.raft.log import RaftLog
from vstore.metadata.raft.progress import Progress, ProgressState
from vstore.metadata.raft.types import (HardState, LogCompacted, LogStorage, LogUnavailable, NotLeaderError,
                                        ProposalDropped, RaftConfig, ReadState, Ready, Role, SoftState, Status)
from vstore.wire.raft import ConfChange, ConfChangeType, ConfState, Entry, EntryType, RaftMessage, RaftMsgType, \
    SnapshotMeta

MT = RaftMsgType

#: context of a VOTE sent because of a leadership transfer: voters must not ignore it
#: because of their leader lease (they know the leader asked for it).
CAMPAIGN_TRANSFER = b"transfer"

_VOTE_RESP = {MT.VOTE: MT.VOTE_RESP, MT.PRE_VOTE: MT.PRE_VOTE_RESP}


class _ReadOnly:
    """Read-index requests waiting for a heartbeat round to confirm leadership."""

    def __init__(self) -> None:
        # context -> (commit index at request time, requester, acks)
        self.pending: dict[bytes, tuple[int, str, set[str]]] = {}
        self.queue: list[bytes] = []

    def add(self, index: int, context: bytes, requester: str, self_id: str) -> None:
        if context in self.pending:
            return
        self.pending[context] = (index, requester, {self_id})
        self.queue.append(context)

    def ack(self, context: bytes, frm: str) -> set[str] | None:
        entry = self.pending.get(context)
        if entry is None:
            return None
        entry[2].add(frm)
        return entry[2]

    def advance(self, context: bytes) -> list[tuple[bytes, int, str]]:
        """Release every request up to and including ``context`` (a later round's quorum
        also confirms the earlier requests)."""
        if context not in self.pending:
            return []
        position = self.queue.index(context)
        released = self.queue[:position + 1]
        del self.queue[:position + 1]
        out = []
        for ctx in released:
            index, requester, _ = self.pending.pop(ctx)
            out.append((ctx, index, requester))
        return out

    def last_pending(self) -> bytes:
        return self.queue[-1] if self.queue else b""


class RaftCore:
    def __init__(self, node_id: str, config: RaftConfig, storage: LogStorage, rng: Random) -> None:
        self.id = node_id
        self.config = config
        self._rng = rng
        hard_state, conf_state = storage.initial_state()
        self.log = RaftLog(storage, hard_state.commit, config.applied)
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.leader: str | None = None
        self.role = Role.FOLLOWER
        self.voters: tuple[str, ...] = ()
        self.learners: tuple[str, ...] = ()
        #: on a leader, the members heard from in the last complete check-quorum round
        self._last_round_active: frozenset[str] = frozenset()
        self.addresses: dict[str, str] = {}
        self.progress: dict[str, Progress] = {}
        self.votes: dict[str, bool] = {}
        self.messages: list[RaftMessage] = []
        self.read_states: list[ReadState] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_tick
        self.lead_transferee: str | None = None
        self.pending_conf_index = 0
        self.uncommitted_bytes = 0
        self.read_only = _ReadOnly()
        self.pending_read_index: list[tuple[bytes, str]] = []  # waiting for the no-op to commit
        self.dropped_corrupt_messages = 0
        self._bcast_pending = False
        self._apply_conf_state(conf_state)
        self._prev_hard_state = HardState(self.term, self.vote, self.log.committed)
        self._prev_soft_state = SoftState(None, Role.FOLLOWER)
        self._become_follower(self.term, None)

    # ===== public API ===========================================================================

    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def campaign(self) -> None:
        """Start an election now (as an election timeout would)."""
        self._hup(transfer=False)

    def propose(self, data: bytes) -> int:
        """Append a command to the leader's log. Returns its index; it is committed when an
        entry with this index *and the current term* is applied. Raises NotLeaderError,
        ProposalDropped."""
        return self._propose(data, EntryType.NORMAL)

    def propose_state_check(self, data: bytes) -> int:
        """Append a state-hash checkpoint (an encoded StateCheck) for every replica to verify."""
        return self._propose(data, EntryType.STATE_CHECK)

    def disable_voting(self) -> None:
        """From now on never vote or campaign (the node's state can no longer be trusted)."""
        self.config = dataclasses.replace(self.config, voting_disabled=True)
        if self.role is not Role.FOLLOWER:
            self._become_follower(self.term, None)

    def propose_conf_change(self, change: ConfChange) -> int:
        """Propose one membership change. Refused while another is pending, before the
        leader's no-op has committed, or when it makes no sense for the current config."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader)
        if self.pending_conf_index > self.log.applied:
            raise ProposalDropped(f"a configuration change (index {self.pending_conf_index}) is still pending")
        if not self._committed_entry_in_current_term():
            raise ProposalDropped("the leader has not committed an entry of its term yet")
        members = set(self.voters) | set(self.learners)
        kind = ConfChangeType(change.type)
        if kind is ConfChangeType.ADD_VOTER:
            raise ProposalDropped("members join as learners first, then are promoted")
        if kind is ConfChangeType.ADD_LEARNER and change.node_id in members:
            raise ProposalDropped(f"{change.node_id} is already a member")
        if kind is ConfChangeType.ADD_LEARNER and not change.address:
            raise ProposalDropped("a new member needs an address")
        if kind is ConfChangeType.PROMOTE and change.node_id not in self.learners:
            raise ProposalDropped(f"{change.node_id} is not a learner")
        if kind is ConfChangeType.PROMOTE and self.progress[change.node_id].match_index < self.log.committed:
            # A voter that cannot vote for anything yet only raises the quorum it is part of.
            raise ProposalDropped(f"learner {change.node_id} has not caught up (match "
                                  f"{self.progress[change.node_id].match_index} < commit {self.log.committed})")
        if kind is ConfChangeType.REMOVE and change.node_id not in members:
            raise ProposalDropped(f"{change.node_id} is not a member")
        if kind is ConfChangeType.REMOVE and self.voters == (change.node_id,):
            raise ProposalDropped("cannot remove the last voter")
        index = self._propose(encode_conf_change(change), EntryType.CONF_CHANGE)
        self.pending_conf_index = index
        return index

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point. The answer arrives as a ReadState with the same
        context in a later Ready (possibly never, if leadership is lost: callers time out).
        Raises NotLeaderError on a follower that knows no leader."""
        if self.role is Role.LEADER:
            self._leader_read_index(context, self.id)
        elif self.leader is None:
            raise NotLeaderError(None)
        else:
            self._send(RaftMessage(type=MT.READ_INDEX, to=self.leader, frm=self.id, term=0, context=context))

    def transfer_leader(self, to: str) -> None:
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader)
        self._handle_transfer_leader(to)

    def step(self, m: RaftMessage) -> None:
        """Feed one message received from a peer (any order, duplicates, stale terms)."""
        if m.to != self.id:
            return
        if m.entries and not all(e.verify() for e in m.entries):
            self.dropped_corrupt_messages += 1
            return
        if m.term == 0 and m.type in (MT.READ_INDEX, MT.READ_INDEX_RESP, MT.TRANSFER_LEADER):
            pass  # term-less requests between members, handled by the role
        elif m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (self.config.check_quorum and self.leader is not None
                            and self.election_elapsed < self.config.election_tick)
                if not force and in_lease:
                    return  # leader stickiness: we heard from a live leader recently
            if m.type == MT.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif m.type == MT.PRE_VOTE_RESP and not m.reject:
                pass  # granted pre-votes carry the future term; we bump it when we win
            elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, None)
        elif m.term < self.term:
            if (self.config.check_quorum or self.config.pre_vote) and m.type in (MT.HEARTBEAT, MT.APP):
                # A stale leader (e.g. after a partition) learns our term and steps down;
                # without this it could keep its followers from electing anyone forever.
                self._send(RaftMessage(type=MT.APP_RESP, to=m.frm, frm=self.id, term=self.term))
            elif m.type == MT.PRE_VOTE:
                self._send(RaftMessage(type=MT.PRE_VOTE_RESP, to=m.frm, frm=self.id, term=self.term, reject=True))
            return

        if m.type in (MT.VOTE, MT.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def report_unreachable(self, to: str) -> None:
        """The shell could not deliver to ``to``: stop streaming optimistically to it."""
        pr = self.progress.get(to)
        if self.role is Role.LEADER and pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, to: str, ok: bool) -> None:
        """The shell finished (or failed) streaming a snapshot to ``to``."""
        pr = self.progress.get(to)
        if self.role is not Role.LEADER or pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        pr.probe_sent = True  # wait for the follower's response before probing again

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        """Apply a committed configuration change (the shell calls this while applying the
        CONF_CHANGE entry, and stores the returned ConfState in the same transaction)."""
        voters, learners = list(self.voters), list(self.learners)
        addresses = dict(self.addresses)
        kind = ConfChangeType(change.type)
        node = change.node_id
        if kind is ConfChangeType.ADD_LEARNER:
            if node not in voters and node not in learners:
                learners.append(node)
            if change.address:
                addresses[node] = change.address
        elif kind is ConfChangeType.PROMOTE:
            if node in learners:
                learners.remove(node)
                voters.append(node)
        elif kind is ConfChangeType.ADD_VOTER:
            if node in learners:
                learners.remove(node)
            if node not in voters:
                voters.append(node)
            if change.address:
                addresses[node] = change.address
        elif kind is ConfChangeType.REMOVE:
            if node in voters:
                voters.remove(node)
            if node in learners:
                learners.remove(node)
            addresses.pop(node, None)
        conf_state = ConfState(voters=tuple(voters), learners=tuple(learners), addresses=addresses)
        self._apply_conf_state(conf_state)
        if self.role is Role.LEADER:
            if self.id not in self.voters and self.id not in self.learners:
                self._become_follower(self.term, None)  # step down on removal
            else:
                if self.lead_transferee is not None and self.lead_transferee not in self.voters:
                    self.lead_transferee = None
                if self._maybe_commit():
                    self._bcast_append()
        return conf_state

    def active_members(self) -> frozenset[str]:
        """On a leader: the members heard from in this check-quorum round or the last one
        (within one or two election timeouts), itself included. Empty on anyone else."""
        if self.role is not Role.LEADER:
            return frozenset()
        now = {node for node, pr in self.progress.items() if pr.recent_active}
        return frozenset(now | self._last_round_active | {self.id})

    def conf_state(self) -> ConfState:
        return ConfState(voters=self.voters, learners=self.learners, addresses=dict(self.addresses))

    # ---- Ready ---------------------------------------------------------------------------------

    def has_ready(self) -> bool:
        if self._bcast_pending:
            return True
        return bool(self.messages or self.read_states or self.log.unstable.entries
                    or self.log.unstable.snapshot is not None or self.log.has_next_committed_entries()
                    or self._soft_state() != self._prev_soft_state
                    or self._hard_state() != self._prev_hard_state)

    def ready(self) -> Ready:
        if self._bcast_pending:
            self._bcast_pending = False
            self._bcast_append()
        soft = self._soft_state()
        hard = self._hard_state()
        return Ready(
            soft_state=soft if soft != self._prev_soft_state else None,
            hard_state=hard if hard != self._prev_hard_state else None,
            entries=tuple(self.log.unstable_entries()),
            snapshot=self.log.unstable.snapshot,
            committed_entries=tuple(self.log.next_committed_entries(self.config.max_committed_bytes_per_ready)),
            messages=tuple(self.messages),
            read_states=tuple(self.read_states),
        )

    def advance(self, rd: Ready) -> None:
        """The shell has done everything ``rd`` asked, in order."""
        if rd.soft_state is not None:
            self._prev_soft_state = rd.soft_state
        if rd.hard_state is not None:
            self._prev_hard_state = rd.hard_state
        if rd.snapshot is not None:
            self.log.stable_snapshot_to(rd.snapshot.index)
            self.log.applied_to(rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)
            self.uncommitted_bytes = max(0, self.uncommitted_bytes - sum(len(e.data) for e in rd.committed_entries))
        del self.messages[:len(rd.messages)]
        del self.read_states[:len(rd.read_states)]
        if self.role is Role.LEADER:
            # Only now is our own log durable: count it (never before its fsync).
            own = self.progress.get(self.id)
            if own is not None and own.maybe_update(self.log.last_stable_index()):
                if self._maybe_commit():
                    self._bcast_append()
            self._release_pending_read_index()

    def status(self) -> Status:
        return Status(id=self.id, term=self.term, vote=self.vote, commit=self.log.committed, applied=self.log.applied,
                      last_index=self.log.last_index(), role=self.role, leader=self.leader,
                      lead_transferee=self.lead_transferee,
                      progress={k: repr(v) for k, v in self.progress.items()} if self.role is Role.LEADER else {},
                      voters=self.voters, learners=self.learners, dropped_corrupt_messages=self.dropped_corrupt_messages)

    # ===== roles ================================================================================

    def _soft_state(self) -> SoftState:
        return SoftState(self.leader, self.role)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = ""
        self.leader = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.config.election_tick + self._rng.randrange(self.config.election_tick)
        self.lead_transferee = None
        self.votes = {}
        last = self.log.last_index()
        for node_id, pr in list(self.progress.items()):
            fresh = Progress(last + 1, max_inflight=self.config.max_inflight_msgs, is_learner=pr.is_learner)
            if node_id == self.id:
                fresh.match_index = self.log.last_stable_index()
            self.progress[node_id] = fresh
        self.pending_conf_index = 0
        self.uncommitted_bytes = 0
        self.read_only = _ReadOnly()
        self.pending_read_index = []
        self._bcast_pending = False

    def _become_follower(self, term: int, leader: str | None) -> None:
        self._reset(term)
        self.leader = leader
        self.role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        assert self.role is not Role.LEADER
        # Pre-vote changes neither term nor vote: a partitioned node that keeps losing
        # pre-votes never inflates its term (the point of §9.6).
        self.votes = {}
        self.leader = None
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        assert self.role is not Role.LEADER
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        assert self.role is not Role.FOLLOWER
        self._reset(self.term)
        self.leader = self.id
        self.role = Role.LEADER
        self._last_round_active = frozenset()
        own = self.progress.get(self.id)
        if own is not None:
            own.become_replicate()
            own.match_index = self.log.last_stable_index()
        # Conservative: no configuration change until everything up to here is applied
        # (any uncommitted change from an earlier term among it included).
        self.pending_conf_index = self.log.last_index()
        self._append_entries([Entry.make(self.log.last_index() + 1, self.term, b"")])  # the no-op
        self._bcast_pending = True

    def _promotable(self) -> bool:
        return self.id in self.voters and not self.config.voting_disabled

    def _hup(self, *, transfer: bool) -> None:
        if self.role is Role.LEADER or not self._promotable():
            return
        if self._has_unapplied_conf_change():
            return  # campaigning with a pending config could count the wrong voters
        if self.config.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _has_unapplied_conf_change(self) -> bool:
        if self.log.applied >= self.log.committed:
            return False
        try:
            entries = self.log.slice(self.log.applied + 1, self.log.committed + 1)
        except (LogCompacted, LogUnavailable):
            return False
        return any(e.type == EntryType.CONF_CHANGE for e in entries)

    def _campaign(self, *, pre: bool, transfer: bool) -> None:
        if pre:
            self._become_pre_candidate()
            vote_type, term = MT.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            vote_type, term = MT.VOTE, self.term
        result = self._poll(self.id, True)
        if result is quorum.VoteResult.WON:
            if pre:
                self._campaign(pre=False, transfer=transfer)
            else:
                self._become_leader()
            return
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for voter in self.voters:
            if voter != self.id:
                self._send(RaftMessage(type=vote_type, to=voter, frm=self.id, term=term, index=last_index,
                                       log_term=last_term, context=CAMPAIGN_TRANSFER if transfer else b""))

    def _poll(self, node: str, granted: bool) -> quorum.VoteResult:
        self.votes.setdefault(node, granted)
        return quorum.vote_result(self.voters, self.votes)

    def _handle_vote_request(self, m: RaftMessage) -> None:
        can_vote = (self.vote == m.frm
                    or (self.vote == "" and self.leader is None)
                    or (m.type == MT.PRE_VOTE and m.term > self.term))
        if (can_vote and not self.config.voting_disabled and self.log.is_up_to_date(m.index, m.log_term)):
            # A granted pre-vote answers with the candidate's future term, so it is not
            # dropped as stale; a real vote is recorded and, via Ready, persisted first.
            self._send(RaftMessage(type=_VOTE_RESP[MT(m.type)], to=m.frm, frm=self.id, term=m.term))
            if m.type == MT.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(RaftMessage(type=_VOTE_RESP[MT(m.type)], to=m.frm, frm=self.id, term=self.term, reject=True))

    # ---- ticks ---------------------------------------------------------------------------------

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self._promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self._hup(transfer=False)

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_tick:
            self.election_elapsed = 0
            if self.config.check_quorum:
                active = {node for node, pr in self.progress.items() if pr.recent_active or node == self.id}
                self._last_round_active = frozenset(active)
                for node, pr in self.progress.items():
                    if node != self.id:
                        pr.recent_active = False
                if not quorum.has_quorum(self.voters, active):
                    self._become_follower(self.term, None)  # cut off from a majority: step down
                    return
            if self.lead_transferee is not None:
                self.lead_transferee = None  # the transfer did not finish within an election timeout
        if self.role is not Role.LEADER:
            return
        if self.heartbeat_elapsed >= self.config.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat(self.read_only.last_pending())

    # ---- leader ----------------------------------------------------------------------------------

    def _propose(self, data: bytes, entry_type: EntryType) -> int:
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader)
        if self.lead_transferee is not None:
            raise ProposalDropped(f"leadership is being transferred to {self.lead_transferee}")
        if (self.config.max_uncommitted_bytes and self.uncommitted_bytes
                and self.uncommitted_bytes + len(data) > self.config.max_uncommitted_bytes):
            raise ProposalDropped("too many uncommitted bytes; retry when the followers catch up")
        index = self.log.last_index() + 1
        self._append_entries([Entry.make(index, self.term, data, entry_type)])
        self.uncommitted_bytes += len(data)
        self._bcast_pending = True  # one append per follower for everything proposed this round
        return index

    def _append_entries(self, entries: list[Entry]) -> None:
        self.log.append(entries)

    def _maybe_commit(self) -> bool:
        match = {node: pr.match_index for node, pr in self.progress.items() if not pr.is_learner}
        index = quorum.committed_index(self.voters, match)
        return self.log.maybe_commit(index, self.term)

    def _committed_entry_in_current_term(self) -> bool:
        return self.log.term_or_zero(self.log.committed) == self.term

    def _bcast_append(self) -> None:
        for node in self.progress:
            if node != self.id:
                self._send_append(node)

    def _bcast_heartbeat(self, context: bytes) -> None:
        for node, pr in self.progress.items():
            if node != self.id:
                self._send(RaftMessage(type=MT.HEARTBEAT, to=node, frm=self.id, term=self.term,
                                       commit=min(pr.match_index, self.log.committed), context=context))

    def _send_append(self, to: str, *, send_if_empty: bool = True) -> bool:
        pr = self.progress[to]
        if pr.is_paused():
            return False
        prev_index = pr.next_index - 1
        try:
            prev_term = self.log.term(prev_index)
            entries = self.log.entries_from(pr.next_index, self.config.max_size_per_msg)
        except (LogCompacted, LogUnavailable):
            return self._send_snapshot(to, pr)
        if not entries and not send_if_empty:
            return False
        self._send(RaftMessage(type=MT.APP, to=to, frm=self.id, term=self.term, index=prev_index,
                               log_term=prev_term, entries=tuple(entries), commit=self.log.committed))
        if entries:
            pr.sent_entries(entries[-1].index)
        elif pr.state is ProgressState.PROBE:
            pr.probe_sent = True
        return True

    def _send_snapshot(self, to: str, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # do not start a (big) snapshot to a node we have not heard from
        meta = self.log.snapshot_meta()
        pr.become_snapshot(meta.index)
        self._send(RaftMessage(type=MT.SNAP, to=to, frm=self.id, term=self.term, snapshot=meta))
        return True

    def _step_leader(self, m: RaftMessage) -> None:
        if m.type == MT.READ_INDEX:
            if m.frm in self.progress:
                self._leader_read_index(m.context, m.frm)
            return
        if m.type == MT.TRANSFER_LEADER:
            target = m.context.decode(errors="replace")
            if target in self.voters:
                self._handle_transfer_leader(target)
            return
        pr = self.progress.get(m.frm)
        if pr is None:
            return
        if m.type == MT.APP_RESP:
            pr.recent_active = True
            if m.reject:
                if pr.maybe_decrease_to(m.index, self._next_probe_index(m)):
                    if pr.state is ProgressState.REPLICATE:
                        pr.become_probe()
                    self._send_append(m.frm)
                return
            was_paused = pr.is_paused()
            if pr.maybe_update(m.index):
                if pr.state is ProgressState.PROBE:
                    pr.become_replicate()
                elif pr.state is ProgressState.SNAPSHOT and pr.match_index >= pr.pending_snapshot:
                    pr.become_probe()
                    pr.become_replicate()
                elif pr.state is ProgressState.REPLICATE:
                    pr.inflights.free_le(m.index)
                if self._maybe_commit():
                    self._bcast_append()
                elif was_paused:
                    self._send_append(m.frm)
                while self._send_append(m.frm, send_if_empty=False):
                    pass
                if m.frm == self.lead_transferee and pr.match_index == self.log.last_index():
                    self._send(RaftMessage(type=MT.TIMEOUT_NOW, to=m.frm, frm=self.id, term=self.term))
        elif m.type == MT.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state is ProgressState.REPLICATE and pr.inflights.full():
                pr.inflights.free_first_one()
            if pr.match_index < self.log.last_index():
                self._send_append(m.frm)
            if m.context and not self.config.lease_reads:
                acks = self.read_only.ack(m.context, m.frm)
                if acks is not None and quorum.has_quorum(self.voters, acks):
                    for ctx, index, requester in self.read_only.advance(m.context):
                        self._answer_read(ctx, index, requester)

    def _next_probe_index(self, m: RaftMessage) -> int:
        hint = m.reject_hint
        if m.hint_term > 0:
            hint, _ = self.log.find_conflict_by_term(hint, m.hint_term)
        return hint

    def _leader_read_index(self, context: bytes, requester: str) -> None:
        if not self._committed_entry_in_current_term():
            # Our commit index may lag the cluster's until our no-op commits (§6.4).
            if len(self.pending_read_index) < 65536:
                self.pending_read_index.append((context, requester))
            return
        index = self.log.committed
        if self.voters == (self.id,) or self.config.lease_reads:
            self._answer_read(context, index, requester)
            return
        self.read_only.add(index, context, requester, self.id)
        self._bcast_heartbeat(context)

    def _release_pending_read_index(self) -> None:
        if self.pending_read_index and self._committed_entry_in_current_term():
            pending, self.pending_read_index = self.pending_read_index, []
            for context, requester in pending:
                self._leader_read_index(context, requester)

    def _answer_read(self, context: bytes, index: int, requester: str) -> None:
        if requester == self.id:
            self.read_states.append(ReadState(index, context))
        else:
            self._send(RaftMessage(type=MT.READ_INDEX_RESP, to=requester, frm=self.id, term=self.term,
                                   index=index, context=context))

    def _handle_transfer_leader(self, to: str) -> None:
        if to == self.id or to not in self.voters:
            return
        if self.lead_transferee == to:
            return
        self.lead_transferee = to
        self.election_elapsed = 0  # the transfer must finish within one election timeout
        if self.progress[to].match_index == self.log.last_index():
            self._send(RaftMessage(type=MT.TIMEOUT_NOW, to=to, frm=self.id, term=self.term))
        else:
            self._send_append(to)

    # ---- candidate and follower -----------------------------------------------------------------

    def _step_candidate(self, m: RaftMessage) -> None:
        expected = MT.PRE_VOTE_RESP if self.role is Role.PRE_CANDIDATE else MT.VOTE_RESP
        if m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
            self._become_follower(m.term, m.frm)  # someone won this term
            self._step_follower(m)
        elif m.type == expected:
            result = self._poll(m.frm, not m.reject)
            if result is quorum.VoteResult.WON:
                if self.role is Role.PRE_CANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self._become_leader()
            elif result is quorum.VoteResult.LOST:
                self._become_follower(self.term, None)
        elif m.type == MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _step_follower(self, m: RaftMessage) -> None:
        if m.type == MT.APP:
            self.election_elapsed = 0
            self.leader = m.frm
            self._handle_append(m)
        elif m.type == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.leader = m.frm
            self.log.commit_to(min(m.commit, self.log.last_index()))
            self._send(RaftMessage(type=MT.HEARTBEAT_RESP, to=m.frm, frm=self.id, term=self.term, context=m.context))
        elif m.type == MT.SNAP:
            self.election_elapsed = 0
            self.leader = m.frm
            self._handle_snapshot(m)
        elif m.type == MT.TIMEOUT_NOW:
            self._hup(transfer=True)
        elif m.type in (MT.READ_INDEX, MT.TRANSFER_LEADER):
            if self.leader is not None:
                self._send(RaftMessage(type=m.type, to=self.leader, frm=m.frm, term=0, context=m.context))
        elif m.type == MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _handle_append(self, m: RaftMessage) -> None:
        if m.index < self.log.committed:
            self._send(RaftMessage(type=MT.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(RaftMessage(type=MT.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=last_new))
            return
        hint_index, hint_term = self.log.find_conflict_by_term(min(m.index, self.log.last_index()), m.log_term)
        self._send(RaftMessage(type=MT.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=m.index, reject=True,
                               reject_hint=hint_index, hint_term=hint_term))

    def _handle_snapshot(self, m: RaftMessage) -> None:
        if m.snapshot is not None and self._restore(m.snapshot):
            self._send(RaftMessage(type=MT.APP_RESP, to=m.frm, frm=self.id, term=self.term,
                                   index=self.log.last_index()))
        else:
            self._send(RaftMessage(type=MT.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=self.log.committed))

    def _restore(self, snapshot: SnapshotMeta) -> bool:
        if snapshot.index <= self.log.committed:
            return False  # older than what we have: never install it over newer state
        if self.id not in snapshot.conf_state.members():
            return False  # not for us (a snapshot must never remove its own receiver silently)
        if self.log.match_term(snapshot.index, snapshot.term):
            self.log.commit_to(snapshot.index)  # we already have the log it covers
            return False
        self.log.restore(snapshot)
        self._apply_conf_state(snapshot.conf_state)
        return True

    # ---- plumbing --------------------------------------------------------------------------------

    def _apply_conf_state(self, conf_state: ConfState) -> None:
        self.voters = tuple(conf_state.voters)
        self.learners = tuple(conf_state.learners)
        self.addresses = dict(conf_state.addresses)
        last = self.log.last_index()
        members = self.voters + self.learners  # in configuration order: never a set, whose
        for node in list(self.progress):        # order would change with the hash seed and
            if node not in members:             # make runs unrepeatable
                del self.progress[node]
        for node in members:
            is_learner = node in self.learners
            pr = self.progress.get(node)
            if pr is None:
                pr = Progress(last + 1, max_inflight=self.config.max_inflight_msgs, is_learner=is_learner)
                if node == self.id:
                    pr.match_index = self.log.last_stable_index()
                self.progress[node] = pr
            pr.is_learner = is_learner

    def _send(self, m: RaftMessage) -> None:
        self.messages.append(m)

