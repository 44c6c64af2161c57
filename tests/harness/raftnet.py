"""A hand-driven network of Raft cores for scenario tests (etcd's InteractionEnv, in Python).

Nothing happens unless the test says so: ``tick``, ``campaign``, ``propose``, ``deliver``
or ``stabilize`` (process every Ready and deliver every message until nothing moves).
Nodes use the simulator's MemoryStorage and state machine and follow the Ready contract.
``isolate``/``cut`` drop messages; ``crash``/``restart`` lose everything not persisted.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable

import msgspec

from tests.harness.sim import Command, SimNode, _encoder
from vstore.metadata.raft.core import RaftCore
from vstore.metadata.raft.types import RaftConfig, Ready, Role
from vstore.wire.raft import Entry, RaftMessage, RaftMsgType, SnapshotMeta

MT = RaftMsgType


class Node(SimNode):
    """A simulator node that also records what it applied and the reads it was answered."""

    def __init__(self, node_id: str, config: RaftConfig, seed: int) -> None:
        super().__init__(node_id, config, random.Random(f"{seed}:{node_id}"))
        self.seed = seed
        self.applied_log: list[Entry] = []
        self.read_states: list[tuple[int, bytes]] = []

    def start(self) -> RaftCore:  # type: ignore[override]
        self.storage.state_machine = self.sm
        self.core = RaftCore(self.id, dataclasses.replace(self.config, applied=self.sm.applied), self.storage,
                             random.Random(f"{self.seed}:{self.id}"))
        return self.core


class Net:
    def __init__(self, ids: list[str], *, config: RaftConfig | None = None, seed: int = 1,
                 members: list[str] | None = None) -> None:
        self.config = config or RaftConfig(election_tick=10, heartbeat_tick=1)
        self.nodes: dict[str, Node] = {}
        self.queue: list[RaftMessage] = []   # sent, not yet delivered
        self.dropped: list[RaftMessage] = []
        self.cut_links: set[tuple[str, str]] = set()
        self.filter: Callable[[RaftMessage], bool] | None = None  # False = drop
        members = members if members is not None else ids
        for node_id in ids:
            node = Node(node_id, self.config, seed)
            if node_id in members:
                node.bootstrap(members)
            node.start()
            self.nodes[node_id] = node
        self.process_all()  # apply the bootstrap configuration

    def __getitem__(self, node_id: str) -> RaftCore:
        core = self.nodes[node_id].core
        assert core is not None, f"{node_id} is down"
        return core

    # ---- driving ----------------------------------------------------------------------------

    def process(self, node_id: str) -> bool:
        node = self.nodes[node_id]
        core = node.core
        if core is None or not core.has_ready():
            return False
        rd = core.ready()
        self._persist(node, rd)
        for m in rd.messages:
            if m.type == MT.SNAP:
                m = msgspec.structs.replace(m, snapshot=SnapshotMeta(index=node.sm.applied, term=node.sm.applied_term,
                                                                     conf_state=node.sm.conf_state))
                self.nodes[m.to].snapshot_data[m.snapshot.index] = copy.deepcopy(node.sm)  # type: ignore[union-attr]
            self.queue.append(m)
        self._apply(node, rd)
        node.read_states.extend((rs.index, rs.context) for rs in rd.read_states)
        core.advance(rd)
        return True

    def process_all(self) -> bool:
        moved = False
        for node_id in self.nodes:
            while self.process(node_id):
                moved = True
        return moved

    def deliver(self, *, types: set[int] | None = None) -> int:
        """Deliver queued messages (optionally only some types); returns how many."""
        pending, self.queue = self.queue, []
        count = 0
        for m in pending:
            if types is not None and m.type not in types:
                self.queue.append(m)
                continue
            if (m.frm, m.to) in self.cut_links or (self.filter is not None and not self.filter(m)):
                self.dropped.append(m)
                continue
            node = self.nodes.get(m.to)
            if node is None or node.core is None:
                self.dropped.append(m)
                continue
            node.core.step(m)
            count += 1
        return count

    def stabilize(self, max_rounds: int = 1000) -> None:
        for _ in range(max_rounds):
            moved = self.process_all()
            if not self.queue and not moved:
                return
            self.deliver()
        raise AssertionError("network did not stabilize")

    def tick(self, node_id: str, n: int = 1) -> None:
        for _ in range(n):
            self[node_id].tick()

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for node in self.nodes.values():
                if node.core is not None:
                    node.core.tick()

    def expire_leases(self) -> None:
        """Let an election timeout pass without anyone hearing from a leader, without the
        ticks that would make the nodes campaign themselves."""
        for node in self.nodes.values():
            if node.core is not None and node.core.role is not Role.LEADER:
                node.core.election_elapsed = node.core.config.election_tick

    def run_until_leader(self, max_ticks: int = 200) -> str:
        """Tick every node one tick at a time, delivering everything in between, until a
        leader is known to all live voters."""
        for _ in range(max_ticks):
            self.tick_all()
            self.stabilize()
            leader = self.leader()
            if leader is not None and all(node.core is None or node.core.leader == leader
                                          for n, node in self.nodes.items() if n in self[leader].voters):
                return leader
        raise AssertionError("no leader elected")

    def elect(self, node_id: str) -> None:
        self.expire_leases()
        self[node_id].campaign()
        self.stabilize()
        assert self[node_id].role is Role.LEADER, f"{node_id} failed to win: {self[node_id].status()}"

    def propose(self, node_id: str, value: int, key: str = "k") -> int:
        return self[node_id].propose(_encoder.encode(Command(client=1, seq=value, op="append", key=key, value=value)))

    # ---- faults ----------------------------------------------------------------------------

    def isolate(self, node_id: str) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut_links |= {(node_id, other), (other, node_id)}

    def cut(self, a: str, b: str) -> None:
        self.cut_links |= {(a, b), (b, a)}

    def heal(self) -> None:
        self.cut_links.clear()

    def crash(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node.core = None
        node.snapshot_data.clear()
        self.queue = [m for m in self.queue if m.to != node_id]

    def restart(self, node_id: str) -> RaftCore:
        return self.nodes[node_id].start()

    # ---- looking ---------------------------------------------------------------------------

    def leader(self) -> str | None:
        leaders = [n for n, node in self.nodes.items() if node.core is not None and node.core.role is Role.LEADER]
        return max(leaders, key=lambda n: self[n].term) if leaders else None

    def values(self, node_id: str, key: str = "k") -> tuple[int, ...]:
        return self.nodes[node_id].sm.data.get(key, ())

    def log_terms(self, node_id: str) -> list[int]:
        core = self[node_id]
        return [core.log.term(i) for i in range(core.log.first_index(), core.log.last_index() + 1)]

    # ---- the shell ---------------------------------------------------------------------------

    def _persist(self, node: Node, rd: Ready) -> None:
        node.persist(rd, rd.hard_state)

    def _apply(self, node: Node, rd: Ready) -> None:
        for entry in rd.committed_entries:
            assert entry.index == node.sm.applied + 1, (node.id, entry.index, node.sm.applied)
            node.apply(entry)
            node.applied_log.append(entry)
