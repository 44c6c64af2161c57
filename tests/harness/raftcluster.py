"""In-process Raft clusters on real sockets (127.0.0.1) and real LMDB in a temp dir.

Each node has its own RpcServer, Raft log store, KV state machine and RaftNode. ``stop``
keeps a node's data (a crash-stop of the process as far as Raft can tell: everything it
acknowledged was fsynced); ``start`` brings it back from its data directory.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

from tests.harness.kvsm import KvStateMachine, command
from tests.harness.wait import wait_for
from vstore.errors import Busy, ConnectionLost, DeadlineExceeded, NotLeader, Unavailable
from vstore.metadata.raft.codec import encode_conf_change
from vstore.metadata.raft.node import RaftNode, RaftNodeConfig
from vstore.metadata.raft.statemachine import encode_proposal
from vstore.metadata.raft.storage import RaftLogStore
from vstore.metadata.raft.types import HardState, RaftConfig
from vstore.net import Auth, Limits, Router, RpcServer
from vstore.wire import Identity
from vstore.wire.raft import ConfChange, ConfChangeType, Entry, EntryType

CLUSTER_ID = "raft-test-cluster"
RETRYABLE = (NotLeader, ConnectionLost, Unavailable, Busy, DeadlineExceeded)


class ClusterNode:
    def __init__(self, cluster: RaftCluster, node_id: str) -> None:
        self.cluster = cluster
        self.id = node_id
        self.data_dir = cluster.root / node_id
        self.server: RpcServer | None = None
        self.node: RaftNode | None = None
        self.sm: KvStateMachine | None = None
        self.store: RaftLogStore | None = None
        self.address: tuple[str, int] | None = None
        self.starts = 0

    async def listen(self) -> None:
        router = Router()
        self.router = router
        self.server = RpcServer(router, self.cluster.auth(self.id), allowed_roles=frozenset({"mds", "client"}),
                                limits=Limits(handshake_timeout_s=2.0))
        self.address = await self.server.start("127.0.0.1", self.address[1] if self.address else 0)

    async def start(self) -> None:
        if self.server is None:
            await self.listen()
        self.sm = KvStateMachine(self.data_dir / "state", map_size_bytes=1 << 28)
        sm = self.sm
        self.store = RaftLogStore(self.data_dir / "raft", map_size_bytes=1 << 28, conf_state_fn=lambda: sm.conf_state(),
                                  snapshot_fn=lambda: sm.snapshot_meta())
        if self.starts == 0:
            self.store.claim(self.id, CLUSTER_ID)  # what mkfs / add-node do for a new node
        self.starts += 1
        peers = {n.id: f"127.0.0.1:{n.address[1]}" for n in self.cluster.nodes.values() if n.address}
        self.node = RaftNode(RaftNodeConfig(node_id=self.id, data_dir=self.data_dir, tick_ms=self.cluster.tick_ms,
                                            raft=self.cluster.raft_config,
                                            compact_trailing_entries=self.cluster.compact_trailing_entries,
                                            snapshot_chunk_bytes=self.cluster.snapshot_chunk_bytes,
                                            state_check_every_entries=self.cluster.state_check_every_entries,
                                            initial_peers=peers),
                             self.store, self.sm, self.cluster.auth(self.id))
        self.node.register(self.router)
        await self.node.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None
        if self.node is not None:
            await self.node.stop()
            self.node = None
        if self.sm is not None:
            self.sm.close()
            self.sm = None
        if self.store is not None:
            self.store.close()
            self.store = None

    @property
    def running(self) -> bool:
        return self.node is not None


class RaftCluster:
    def __init__(self, root: Path, ids: list[str], *, tick_ms: int = 50, raft_config: RaftConfig | None = None,
                 compact_trailing_entries: int = 10_000, snapshot_chunk_bytes: int = 1 << 20,
                 state_check_every_entries: int = 1000) -> None:
        self.root = root
        self.secret = secrets.token_bytes(32)
        self.tick_ms = tick_ms
        self.raft_config = raft_config or RaftConfig(election_tick=10, heartbeat_tick=1)
        self.compact_trailing_entries = compact_trailing_entries
        self.snapshot_chunk_bytes = snapshot_chunk_bytes
        self.state_check_every_entries = state_check_every_entries
        self.nodes = {node_id: ClusterNode(self, node_id) for node_id in ids}
        self.seq = 0

    def auth(self, node_id: str) -> Auth:
        return Auth(self.secret, Identity(CLUSTER_ID, node_id, "mds"))

    async def start(self, voters: list[str] | None = None) -> None:
        voters = voters if voters is not None else list(self.nodes)
        for node in self.nodes.values():
            await node.listen()
        for node_id in voters:
            node = self.nodes[node_id]
            store = RaftLogStore(node.data_dir / "raft", map_size_bytes=1 << 28)
            entries = [Entry.make(i + 1, 1, encode_conf_change(ConfChange(
                type=ConfChangeType.ADD_VOTER, node_id=v, address=f"127.0.0.1:{self.nodes[v].address[1]}")),
                EntryType.CONF_CHANGE) for i, v in enumerate(voters)]
            store.bootstrap(entries, HardState(term=1, commit=len(entries)))
            store.close()
        for node in self.nodes.values():
            await node.start()

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.stop()

    def running(self) -> list[ClusterNode]:
        return [n for n in self.nodes.values() if n.running]

    async def leader(self, timeout_s: float = 20.0) -> ClusterNode:
        def find() -> ClusterNode | None:
            leaders = [n for n in self.running() if n.node is not None and n.node.is_leader]
            return leaders[0] if len(leaders) == 1 else None
        return await wait_for(find, timeout_s=timeout_s, what="exactly one leader")

    async def propose(self, body: bytes, *, client_id: str = "test", seq: int | None = None,
                      timeout_s: float = 30.0) -> Any:
        """Submit through whoever leads, retrying retryable failures with the same session
        sequence number (so the command is applied once)."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        data = encode_proposal(client_id, seq, body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            leader = await self.leader(timeout_s=max(0.1, deadline - loop.time()))
            try:
                assert leader.node is not None
                async with asyncio.timeout(5):
                    return await leader.node.propose(data)
            except (*RETRYABLE, TimeoutError):
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def append(self, key: str, value: Any, **kw: Any) -> Any:
        return await self.propose(command("append", key, value), **kw)

    async def add_member(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.server is None:
            await node.listen()
        if node.node is None:
            await node.start()
        assert node.address is not None
        await self._conf_change(ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=node_id,
                                           address=f"127.0.0.1:{node.address[1]}"))

    async def _conf_change(self, change: ConfChange, timeout_s: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            leader = await self.leader()
            try:
                assert leader.node is not None
                await leader.node.propose_conf_change(change)
                return
            except RETRYABLE:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def promote(self, node_id: str) -> None:
        await self._conf_change(ConfChange(type=ConfChangeType.PROMOTE, node_id=node_id))

    async def remove(self, node_id: str) -> None:
        await self._conf_change(ConfChange(type=ConfChangeType.REMOVE, node_id=node_id))

    async def converged(self, key: str, expected: tuple[Any, ...], timeout_s: float = 20.0,
                        nodes: list[str] | None = None) -> None:
        names = nodes or [n.id for n in self.running()]
        def lagging() -> dict[str, Any]:
            return {n: (len(self.nodes[n].sm.get(key)) if self.nodes[n].sm else None) for n in names
                    if self.nodes[n].sm is None or self.nodes[n].sm.get(key) != expected}

        await wait_for(lambda: not lagging(), timeout_s=timeout_s,
                       what=lambda: f"{key} to hold {len(expected)} values on {names}; lagging (count): {lagging()}")

        def hashes() -> set[tuple[int, int]]:
            return {self.nodes[n].sm.state_hash() for n in names if self.nodes[n].sm is not None}

        # once they have applied the same entries, their state hashes must agree
        await wait_for(lambda: len(hashes()) == 1, timeout_s=timeout_s,
                       what=lambda: f"equal (applied, state hash) on {names}: {hashes()}")
