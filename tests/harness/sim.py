"""Deterministic simulator for the Raft core (TigerBeetle VOPR / FoundationDB style).

One seed drives everything: message delays, drops, duplicates and reordering, partitions
(symmetric and one-way), crashes at any point of a Ready's processing (losing whatever the
shell had not yet persisted), restarts, log compaction and snapshot transfer, and the
clients' requests. Time is an integer count of "units"; every node ticks every
``TICK_UNITS`` units with its own phase, so elections can race.

Each simulated node runs the real ``RaftCore`` with a shell that follows the Ready
contract exactly: persist (snapshot, entries, hard state) -> send -> apply (with the applied
index and client sessions in the same atomic write) -> advance.

Checked after every step (the safety phase): election safety (one leader per term), state
machine safety (no two nodes apply different entries at an index), leader completeness
(a new leader holds every entry applied anywhere), log matching (periodically, every pair
of durable logs), and monotonic durable commit and applied indexes. Then a liveness phase
heals every fault and requires a leader, completion of every client operation still in
flight, and identical state machines. The client history (a key -> list register with
append and read operations, exactly-once through client sessions) is finally checked
for linearizability by tests/harness/checkers.py.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any

import msgspec

from vstore.metadata.raft.codec import decode_conf_change, encode_conf_change
from vstore.metadata.raft.core import RaftCore
from vstore.metadata.raft.log import limit_size
from vstore.metadata.raft.types import (HardState, LogCompacted, LogUnavailable, NotLeaderError, ProposalDropped,
                                        RaftConfig, Ready, Role)
from vstore.wire.raft import ConfChange, ConfChangeType, ConfState, Entry, EntryType, RaftMessage, RaftMsgType, \
    SnapshotMeta

TICK_UNITS = 10


class SafetyViolation(AssertionError):
    pass


# ---- durable storage -----------------------------------------------------------------------

class MemoryStorage:
    """A LogStorage whose contents are exactly what the shell persisted (the 'disk')."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.compacted_index = 0
        self.compacted_term = 0
        self.log: list[Entry] = []
        self.state_machine: KvStateMachine | None = None  # set by the node (for initial_state/snapshots)

    # LogStorage
    def initial_state(self) -> tuple[HardState, ConfState]:
        assert self.state_machine is not None
        return self.hard_state, self.state_machine.conf_state

    def first_index(self) -> int:
        return self.compacted_index + 1

    def last_index(self) -> int:
        return self.compacted_index + len(self.log)

    def term(self, index: int) -> int:
        if index == self.compacted_index:
            return self.compacted_term
        if index < self.compacted_index:
            raise LogCompacted(index)
        if index > self.last_index():
            raise LogUnavailable(index)
        return self.log[index - self.compacted_index - 1].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        if lo <= self.compacted_index:
            raise LogCompacted(lo)
        if hi > self.last_index() + 1:
            raise LogUnavailable(hi)
        out = limit_size(self.log[lo - self.compacted_index - 1:hi - self.compacted_index - 1], max_bytes)
        for entry in out:
            assert entry.verify(), f"stored entry {entry.index} fails its checksum"
        return out

    def snapshot_meta(self) -> SnapshotMeta:
        sm = self.state_machine
        assert sm is not None
        return SnapshotMeta(index=sm.applied, term=sm.applied_term, conf_state=sm.conf_state)

    # persisting (called by the simulated shell)
    def append(self, entries: tuple[Entry, ...]) -> None:
        first = entries[0].index
        assert first > self.compacted_index, "appending below the compaction point"
        assert first <= self.last_index() + 1, f"gap: appending {first} after {self.last_index()}"
        del self.log[first - self.compacted_index - 1:]
        self.log.extend(entries)

    def compact(self, index: int) -> None:
        if index <= self.compacted_index or index > self.last_index():
            return
        self.compacted_term = self.term(index)
        del self.log[:index - self.compacted_index]
        self.compacted_index = index

    def install_snapshot(self, meta: SnapshotMeta) -> None:
        if meta.index <= self.last_index() and self.term_or_none(meta.index) == meta.term:
            self.compact(meta.index)  # keep the suffix that matches (etcd keeps it too)
        else:
            self.log = []
            self.compacted_index, self.compacted_term = meta.index, meta.term

    def term_or_none(self, index: int) -> int | None:
        try:
            return self.term(index)
        except (LogCompacted, LogUnavailable):
            return None


# ---- the replicated state machine ------------------------------------------------------------

class Command(msgspec.Struct, array_like=True, frozen=True):
    client: int
    seq: int
    op: str        # "append" | "noop"
    key: str
    value: int


_command_decoder = msgspec.msgpack.Decoder(Command)
_encoder = msgspec.msgpack.Encoder()


@dataclass
class KvStateMachine:
    """key -> tuple of appended values, with client sessions for exactly-once (thesis §6.3).
    Everything here is written atomically with ``applied`` (as one LMDB transaction would)."""

    data: dict[str, tuple[int, ...]] = field(default_factory=dict)
    sessions: dict[int, tuple[int, Any]] = field(default_factory=dict)
    applied: int = 0
    applied_term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)

    def apply_command(self, cmd: Command) -> Any:
        last = self.sessions.get(cmd.client)
        if last is not None and cmd.seq <= last[0]:
            return last[1] if cmd.seq == last[0] else None  # a retry: answer, never re-apply
        if cmd.op == "append":
            self.data[cmd.key] = self.data.get(cmd.key, ()) + (cmd.value,)
            result: Any = "ok"
        else:
            result = None
        self.sessions[cmd.client] = (cmd.seq, result)
        return result


# ---- network -------------------------------------------------------------------------------------

@dataclass(order=True)
class _InFlight:
    deliver_at: int
    seq: int
    message: RaftMessage = field(compare=False)
    attachment: KvStateMachine | None = field(compare=False, default=None)


class SimNetwork:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.in_flight: list[_InFlight] = []
        self.blocked: set[tuple[str, str]] = set()  # (from, to) pairs that drop
        self.drop_rate = 0.0
        self.duplicate_rate = 0.0
        self.max_delay_units = 30
        self._seq = 0

    def send(self, now: int, m: RaftMessage, attachment: KvStateMachine | None = None) -> bool:
        """Queue ``m``; False if it was dropped (the sender may learn it, as TCP would say)."""
        if (m.frm, m.to) in self.blocked or self.rng.random() < self.drop_rate:
            return False
        copies = 2 if self.rng.random() < self.duplicate_rate else 1
        for _ in range(copies):
            self._seq += 1
            self.in_flight.append(_InFlight(now + self.rng.randint(1, self.max_delay_units), self._seq, m, attachment))
        return True

    def due(self, now: int) -> list[_InFlight]:
        ready = [f for f in self.in_flight if f.deliver_at <= now]
        if ready:
            self.in_flight = [f for f in self.in_flight if f.deliver_at > now]
            self.rng.shuffle(ready)
        return [f for f in ready if (f.message.frm, f.message.to) not in self.blocked]


# ---- clients and history ----------------------------------------------------------------------------

@dataclass
class ClientOp:
    client: int
    seq: int
    kind: str             # "append" | "read"
    key: str
    value: Any
    invoke: int
    complete: int | None = None
    output: Any = None
    # current attempt
    node: str | None = None
    index: int = 0
    term: int = 0
    context: bytes = b""
    attempt_deadline: int = 0
    attempts: int = 0


# ---- nodes ------------------------------------------------------------------------------------------

class SimNode:
    def __init__(self, node_id: str, config: RaftConfig, rng: random.Random) -> None:
        self.id = node_id
        self.config = config
        self.rng = rng
        self.storage = MemoryStorage()
        self.sm = KvStateMachine()
        self.storage.state_machine = self.sm
        self.core: RaftCore | None = None
        self.snapshot_data: dict[int, KvStateMachine] = {}
        self.reads: list[tuple[int, bytes]] = []   # (index, context) waiting for applied >= index
        self.durable_commit = 0
        self.lives = 0

    @property
    def alive(self) -> bool:
        return self.core is not None

    def bootstrap(self, members: list[str]) -> None:
        entries = tuple(Entry.make(i + 1, 1, encode_conf_change(ConfChange(type=ConfChangeType.ADD_VOTER,
                                                                           node_id=m, address=f"sim:{m}")),
                                   EntryType.CONF_CHANGE) for i, m in enumerate(members))
        self.storage.append(entries)
        self.storage.hard_state = HardState(term=1, vote="", commit=len(entries))
        self.durable_commit = len(entries)

    def start(self) -> None:
        assert self.core is None
        self.storage.state_machine = self.sm
        cfg = dataclasses.replace(self.config, applied=self.sm.applied)
        self.core = RaftCore(self.id, cfg, self.storage, random.Random(self.rng.random()))
        self.lives += 1

    def crash(self) -> None:
        self.core = None
        self.snapshot_data.clear()
        self.reads.clear()

    # ---- the shell's two writes (what the LMDB stores do for real) ---------------------------

    def persist(self, rd: Ready, hard_state: HardState | None) -> None:
        """Install the Ready's snapshot, append its entries, store the hard state: one
        atomic write, as one LMDB transaction would be."""
        if rd.snapshot is not None:
            data = self.snapshot_data.get(rd.snapshot.index)
            assert data is not None, f"{self.id}: snapshot {rd.snapshot.index} installed without its data"
            self.sm = copy.deepcopy(data)
            self.storage.state_machine = self.sm
            self.storage.install_snapshot(rd.snapshot)
            self.snapshot_data.clear()
        if rd.entries:
            self.storage.append(rd.entries)
        if hard_state is not None:
            self.storage.hard_state = hard_state

    def apply(self, entry: Entry) -> Any:
        """Apply one committed entry to the state machine; returns the command's result."""
        core = self.core
        assert core is not None
        result: Any = None
        if entry.type == EntryType.CONF_CHANGE:
            self.sm.conf_state = core.apply_conf_change(decode_conf_change(entry.data))
        elif entry.data:
            result = self.sm.apply_command(_command_decoder.decode(entry.data))
        self.sm.applied, self.sm.applied_term = entry.index, entry.term
        return result


@dataclass
class SimOptions:
    nodes: int = 3
    safety_units: int = 6000
    liveness_units: int = 4000
    clients: int = 3
    keys: int = 2
    drop_rate: float = 0.05
    duplicate_rate: float = 0.05
    crash_rate: float = 0.0008        # per unit, per simulation
    partition_rate: float = 0.0008
    compact_rate: float = 0.002
    #: nodes beyond ``nodes`` that start empty and outside the configuration
    spare_nodes: int = 0
    membership_rate: float = 0.0      # per unit: try one membership change
    transfer_rate: float = 0.0        # per unit: try a leadership transfer
    min_voters: int = 3
    config: RaftConfig = field(default_factory=lambda: RaftConfig(election_tick=10, heartbeat_tick=1,
                                                                  max_size_per_msg=4096, max_inflight_msgs=8))
    #: deliberately broken shell behaviour, to prove the checkers catch it
    bug: str | None = None            # "send_before_persist" | "forget_vote" | "local_reads"


class Simulation:
    def __init__(self, seed: int, options: SimOptions | None = None) -> None:
        self.seed = seed
        self.options = options or SimOptions()
        self.rng = random.Random(seed)
        self.now = 0
        self.network = SimNetwork(random.Random(self.rng.random()))
        self.network.drop_rate = self.options.drop_rate
        self.network.duplicate_rate = self.options.duplicate_rate
        ids = [f"n{i + 1}" for i in range(self.options.nodes)]
        spares = [f"n{i + 1}" for i in range(self.options.nodes, self.options.nodes + self.options.spare_nodes)]
        self.nodes: dict[str, SimNode] = {}
        for node_id in ids + spares:
            node = SimNode(node_id, self.options.config, random.Random(self.rng.random()))
            if node_id in ids:
                node.bootstrap(ids)
            node.start()
            self.nodes[node_id] = node
        self.phase_offset = {n: self.rng.randrange(TICK_UNITS) for n in self.nodes}
        self.membership_changes: list[str] = []
        self.leaders_by_term: dict[int, str] = {}
        self.applied_entries: dict[int, tuple[int, int]] = {}  # index -> (term, checksum)
        self.history: list[ClientOp] = []
        self.open_ops: dict[int, ClientOp] = {}
        self.next_seq = {c: 1 for c in range(self.options.clients)}
        self.next_value = 1
        self.events: list[str] = []
        self.snapshots_installed = 0
        self.leader_changes = 0
        self.restart_at: dict[str, int] = {}

    # ---- the run -----------------------------------------------------------------------------

    def run(self) -> Simulation:
        for _ in range(self.options.safety_units):
            self._unit(faults=True)
        self._heal_everything()
        for _ in range(self.options.liveness_units):
            self._unit(faults=False)
            if self._quiet_and_converged():
                break
        self._check_liveness()
        return self

    def _unit(self, *, faults: bool) -> None:
        self.now += 1
        if faults:
            self._inject_faults()
        for node_id, node in self.nodes.items():
            if node.core is not None and (self.now + self.phase_offset[node_id]) % TICK_UNITS == 0:
                node.core.tick()
        for flight in self.network.due(self.now):
            node = self.nodes[flight.message.to]
            if node.core is None:
                continue
            if flight.attachment is not None and flight.message.snapshot is not None:
                node.snapshot_data[flight.message.snapshot.index] = flight.attachment
            node.core.step(flight.message)
        for _ in range(20):
            busy = False
            for node in self.nodes.values():
                if node.core is not None and node.core.has_ready():
                    busy = True
                    self._process_ready(node, faults=faults)
            if not busy:
                break
        self._run_clients(allow_new=faults)
        self._check_safety()

    # ---- the shell of one node ------------------------------------------------------------------

    def _process_ready(self, node: SimNode, *, faults: bool) -> None:
        core = node.core
        assert core is not None
        rd = core.ready()
        crash_point = None
        if faults and self.rng.random() < 0.02 and self._down_count() < (len(self.nodes) - 1) // 2:
            crash_point = self.rng.choice(["before_persist", "before_send", "before_apply", "before_advance"])
        bug = self.options.bug
        if bug == "send_before_persist":
            self._send_all(node, rd)
        if crash_point == "before_persist":
            return self._crash(node, crash_point)
        self._persist(node, rd)
        if crash_point == "before_send":
            return self._crash(node, crash_point)
        if bug != "send_before_persist":
            self._send_all(node, rd)
        if crash_point == "before_apply":
            return self._crash(node, crash_point)
        self._apply(node, rd)
        node.reads.extend((rs.index, rs.context) for rs in rd.read_states)
        if crash_point == "before_advance":
            return self._crash(node, crash_point)
        if rd.soft_state is not None and rd.soft_state.role is Role.LEADER:
            self._on_new_leader(node)
        core.advance(rd)
        self._serve_reads(node)

    def _persist(self, node: SimNode, rd: Ready) -> None:
        storage = node.storage
        hs = rd.hard_state
        if hs is not None:
            if self.options.bug == "forget_vote":
                hs = HardState(hs.term, "", hs.commit)
            if hs.commit < storage.hard_state.commit:
                raise SafetyViolation(f"{node.id}: durable commit went back {storage.hard_state.commit} -> {hs.commit}")
        if rd.snapshot is not None:
            self.snapshots_installed += 1
        node.persist(rd, hs)
        if hs is not None and hs.commit > storage.last_index():
            raise SafetyViolation(f"{node.id}: commit {hs.commit} persisted beyond the log ({storage.last_index()})")

    def _send_all(self, node: SimNode, rd: Ready) -> None:
        core = node.core
        assert core is not None
        for m in rd.messages:
            attachment = None
            if m.type == RaftMsgType.SNAP:
                # The shell streams the state machine as it is now, so the snapshot it sends
                # covers node.sm.applied (>= what the core asked for).
                attachment = copy.deepcopy(node.sm)
                m = msgspec.structs.replace(m, snapshot=SnapshotMeta(index=node.sm.applied, term=node.sm.applied_term,
                                                                     conf_state=node.sm.conf_state))
            delivered = self.network.send(self.now, m, attachment)
            if m.type == RaftMsgType.SNAP:
                core.report_snapshot(m.to, delivered)

    def _apply(self, node: SimNode, rd: Ready) -> None:
        core = node.core
        assert core is not None
        sm = node.sm
        for entry in rd.committed_entries:
            if entry.index <= sm.applied:
                raise SafetyViolation(f"{node.id}: entry {entry.index} handed out again (applied {sm.applied})")
            if entry.index != sm.applied + 1:
                raise SafetyViolation(f"{node.id}: gap in applied entries {sm.applied} -> {entry.index}")
            seen = self.applied_entries.get(entry.index)
            if seen is None:
                self.applied_entries[entry.index] = (entry.term, entry.checksum)
            elif seen != (entry.term, entry.checksum):
                raise SafetyViolation(f"state machine safety: index {entry.index} applied as {seen} elsewhere and "
                                      f"as {(entry.term, entry.checksum)} on {node.id}")
            result = node.apply(entry)
            self._complete_writes(node, entry, result)

    def _serve_reads(self, node: SimNode) -> None:
        core = node.core
        if core is None:
            return
        for read in list(node.reads):
            index, context = read
            if node.sm.applied >= index:
                node.reads.remove(read)
                self._complete_read(node, context)

    def _crash(self, node: SimNode, point: str) -> None:
        self.events.append(f"{self.now}: crash {node.id} at {point}")
        node.crash()
        if self.rng.random() < 0.5:
            # a process restart (supervisor): back within a few ticks, mid-election perhaps
            self.restart_at[node.id] = self.now + self.rng.randint(1, 5 * TICK_UNITS)

    # ---- faults ------------------------------------------------------------------------------

    def _down_count(self) -> int:
        return sum(1 for n in self.nodes.values() if not n.alive)

    def _inject_faults(self) -> None:
        opts = self.options
        for node_id, when in list(self.restart_at.items()):
            if when <= self.now:
                del self.restart_at[node_id]
                if not self.nodes[node_id].alive:
                    self.nodes[node_id].start()
                    self.events.append(f"{self.now}: restart {node_id}")
        r = self.rng.random()
        if r < opts.crash_rate:
            alive = [n for n in self.nodes.values() if n.alive]
            if self._down_count() < (len(self.nodes) - 1) // 2 and alive:
                node = self.rng.choice(alive)
                self._crash(node, "random")
        elif r < opts.crash_rate * 2:
            dead = [n for n in self.nodes.values() if not n.alive]
            if dead:
                node = self.rng.choice(dead)
                node.start()
                self.events.append(f"{self.now}: restart {node.id}")
        if self.rng.random() < opts.partition_rate:
            ids = list(self.nodes)
            if self.network.blocked:
                self.network.blocked.clear()
                self.events.append(f"{self.now}: heal partition")
            else:
                victim = self.rng.choice(ids)
                one_way = self.rng.random() < 0.3
                for other in ids:
                    if other != victim:
                        self.network.blocked.add((victim, other))
                        if not one_way:
                            self.network.blocked.add((other, victim))
                self.events.append(f"{self.now}: partition {victim}{' (one way)' if one_way else ''}")
        if self.rng.random() < opts.membership_rate:
            self._change_membership()
        if self.rng.random() < opts.transfer_rate:
            leader = self._leader()
            if leader is not None and leader.core is not None:
                target = self.rng.choice(leader.core.voters)
                leader.core.transfer_leader(target)
                self.events.append(f"{self.now}: transfer leadership {leader.id} -> {target}")
        if self.rng.random() < opts.compact_rate:
            node = self.rng.choice(list(self.nodes.values()))
            if node.alive:
                node.storage.compact(node.sm.applied - self.rng.randint(0, 3))

    def _leader(self) -> SimNode | None:
        leaders = [n for n in self.nodes.values() if n.core is not None and n.core.role is Role.LEADER]
        return max(leaders, key=lambda n: n.core.term) if leaders else None  # type: ignore[union-attr]

    def _change_membership(self) -> None:
        leader = self._leader()
        if leader is None or leader.core is None:
            return
        core = leader.core
        members = set(core.voters) | set(core.learners)
        outsiders = [n for n in self.nodes if n not in members]
        choices: list[ConfChange] = []
        for node_id in outsiders:
            choices.append(ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=node_id, address=f"sim:{node_id}"))
        for node_id in core.learners:
            pr = core.progress.get(node_id)
            if pr is not None and pr.match_index >= core.log.committed:
                choices.append(ConfChange(type=ConfChangeType.PROMOTE, node_id=node_id))
            choices.append(ConfChange(type=ConfChangeType.REMOVE, node_id=node_id))
        if len(core.voters) > self.options.min_voters:
            choices.extend(ConfChange(type=ConfChangeType.REMOVE, node_id=v) for v in core.voters)
        if not choices:
            return
        change = self.rng.choice(choices)
        if change.type == ConfChangeType.ADD_LEARNER:
            # a node (re)joins with a fresh data dir, as rm-node + add-node requires
            node = self.nodes[change.node_id]
            if node.lives and (node.storage.last_index() or node.sm.applied):
                fresh = SimNode(node.id, self.options.config, random.Random(self.rng.random()))
                fresh.start()
                self.nodes[node.id] = fresh
        try:
            core.propose_conf_change(change)
        except (NotLeaderError, ProposalDropped):
            return
        self.events.append(f"{self.now}: propose {ConfChangeType(change.type).name} {change.node_id}")
        self.membership_changes.append(f"{ConfChangeType(change.type).name} {change.node_id}")

    def _heal_everything(self) -> None:
        self.network.blocked.clear()
        self.network.drop_rate = 0.0
        self.network.duplicate_rate = 0.0
        self.restart_at.clear()
        for node in self.nodes.values():
            if not node.alive:
                node.start()
        self.events.append(f"{self.now}: heal everything (liveness phase)")

    # ---- clients ------------------------------------------------------------------------------

    def _run_clients(self, *, allow_new: bool) -> None:
        for client in range(self.options.clients):
            op = self.open_ops.get(client)
            if op is None:
                if allow_new and self.rng.random() < 0.05:
                    self._new_op(client)
                continue
            if self.now >= op.attempt_deadline:
                self._attempt(op)

    def _new_op(self, client: int) -> None:
        kind = "append" if self.rng.random() < 0.6 else "read"
        key = f"k{self.rng.randrange(self.options.keys)}"
        value = None
        if kind == "append":
            value = self.next_value
            self.next_value += 1
        op = ClientOp(client, self.next_seq[client], kind, key, value, invoke=self.now)
        self.next_seq[client] += 1
        self.open_ops[client] = op
        self.history.append(op)
        self._attempt(op)

    def _attempt(self, op: ClientOp) -> None:
        op.attempts += 1
        op.attempt_deadline = self.now + 40 * TICK_UNITS
        alive = [n for n in self.nodes.values() if n.alive]
        leaders = [n for n in alive if n.core is not None and n.core.role is Role.LEADER]
        # clients mostly find the leader, sometimes ask a follower (redirect or follower read)
        node = self.rng.choice(leaders) if leaders and self.rng.random() < 0.8 else \
            (self.rng.choice(alive) if alive else None)
        op.node = node.id if node is not None else None
        if node is None or node.core is None:
            return
        try:
            if op.kind == "append":
                data = _encoder.encode(Command(op.client, op.seq, "append", op.key, op.value))
                op.index = node.core.propose(data)
                op.term = node.core.term
            elif self.options.bug == "local_reads":
                self._finish(op, node.sm.data.get(op.key, ()))  # no read index: may be stale
            else:
                op.context = f"{op.client}:{op.seq}:{op.attempts}".encode()
                node.core.read_index(op.context)
        except (NotLeaderError, ProposalDropped):
            op.attempt_deadline = self.now + TICK_UNITS  # try again soon, elsewhere

    def _complete_writes(self, node: SimNode, entry: Entry, result: Any) -> None:
        for op in list(self.open_ops.values()):
            if op.kind == "append" and op.node == node.id and op.index == entry.index:
                if op.term == entry.term:
                    self._finish(op, result)
                else:
                    op.attempt_deadline = self.now  # our entry lost its slot: retry (same seq)

    def _complete_read(self, node: SimNode, context: bytes) -> None:
        for op in list(self.open_ops.values()):
            if op.kind == "read" and op.node == node.id and op.context == context:
                self._finish(op, node.sm.data.get(op.key, ()))

    def _finish(self, op: ClientOp, output: Any) -> None:
        op.complete = self.now
        op.output = output
        del self.open_ops[op.client]

    # ---- checks ---------------------------------------------------------------------------------

    def _on_new_leader(self, node: SimNode) -> None:
        core = node.core
        assert core is not None
        self.leader_changes += 1
        holder = self.leaders_by_term.setdefault(core.term, node.id)
        if holder != node.id:
            raise SafetyViolation(f"election safety: {holder} and {node.id} both leaders in term {core.term}")
        # leader completeness: every entry applied anywhere is in the new leader's log
        first = core.log.first_index()
        for index, (term, _) in self.applied_entries.items():
            if index >= first - 1 and index <= core.log.last_index():
                if core.log.term_or_zero(index) != term:
                    raise SafetyViolation(f"leader completeness: {node.id} (term {core.term}) has term "
                                          f"{core.log.term_or_zero(index)} at committed index {index}, expected {term}")
            elif index > core.log.last_index():
                raise SafetyViolation(f"leader completeness: {node.id} (term {core.term}) lacks committed index "
                                      f"{index} (last {core.log.last_index()})")

    def _check_safety(self) -> None:
        for node in self.nodes.values():
            core = node.core
            if core is None:
                continue
            if core.role is Role.LEADER:
                holder = self.leaders_by_term.setdefault(core.term, node.id)
                if holder != node.id:
                    raise SafetyViolation(f"election safety: {holder} and {node.id} both leaders in term {core.term}")
            if node.sm.applied > core.log.committed:
                raise SafetyViolation(f"{node.id}: applied {node.sm.applied} beyond commit {core.log.committed}")
        if self.now % 100 == 0:
            self.check_log_matching()

    def check_log_matching(self) -> None:
        """Log Matching: if two logs hold an entry with the same index and term, the logs
        are identical up to it (checked on the durable logs of every pair)."""
        nodes = list(self.nodes.values())
        for i, a in enumerate(nodes):
            for b in nodes[i + 1:]:
                lo = max(a.storage.first_index(), b.storage.first_index())
                hi = min(a.storage.last_index(), b.storage.last_index())
                top = 0
                for index in range(hi, lo - 1, -1):
                    if a.storage.term(index) == b.storage.term(index):
                        top = index
                        break
                for index in range(lo, top + 1):
                    ea = a.storage.log[index - a.storage.compacted_index - 1]
                    eb = b.storage.log[index - b.storage.compacted_index - 1]
                    if ea != eb:
                        raise SafetyViolation(f"log matching: {a.id} and {b.id} agree at {top} but differ at {index}")

    def _quiet_and_converged(self) -> bool:
        if self.open_ops:
            return False
        leader = self._leader()
        if leader is None or leader.core is None:
            return False
        core = leader.core
        members = [self.nodes[n] for n in core.voters + core.learners]
        if any(n.core is not None and n.core.role is Role.LEADER and n is not leader for n in members):
            return False
        applied = {n.sm.applied for n in members}
        return applied == {core.log.committed} and len({repr(sorted(n.sm.data.items())) for n in members}) == 1

    def _check_liveness(self) -> None:
        self.check_log_matching()
        if self.open_ops:
            raise AssertionError(f"liveness: client operations still open after healing: "
                                 f"{[(o.client, o.seq, o.kind) for o in self.open_ops.values()]}")
        if not self._quiet_and_converged():
            state = {n.id: (n.core.role.value if n.core else 'down', n.sm.applied) for n in self.nodes.values()}
            raise AssertionError(f"liveness: cluster did not converge after healing: {state}")

    def describe(self) -> str:
        state = {n.id: (n.core.status().role.value if n.core else "down", n.core.term if n.core else None,
                        n.sm.applied) for n in self.nodes.values()}
        return (f"seed {self.seed} at unit {self.now}: {state}; {len(self.history)} client ops, "
                f"{self.leader_changes} leader changes, {self.snapshots_installed} snapshots installed; "
                f"last events: {self.events[-8:]}")
