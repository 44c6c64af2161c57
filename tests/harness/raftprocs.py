"""A Raft key-value cluster of real processes (tests/harness/raft_server.py) and its client."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

from tests.harness.kvproto import KvAppendRequest, KvReadRequest, RaftMemberRequest, RaftStatusRequest
from tests.harness.procs import ProcessGroup, free_port
from tests.harness.raft_server import CLUSTER_ID
from tests.harness.wait import wait_for
from vstore.errors import Busy, ConnectionLost, DeadlineExceeded, NotLeader, Unavailable
from vstore.net import Auth, RpcClient
from vstore.wire import Identity

RETRYABLE = (NotLeader, ConnectionLost, Unavailable, Busy, DeadlineExceeded)


class RaftProcCluster:
    def __init__(self, root: Path, ids: list[str], *, tick_ms: int = 100, election_tick: int = 10,
                 compact_trailing: int = 10_000) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.secret_file = root / "cluster.secret"
        self.secret_file.write_bytes(secrets.token_bytes(32))
        self.secret_file.chmod(0o600)
        self.group = ProcessGroup(root / "logs")
        self.ports = {i: free_port() for i in ids}
        self.tick_ms = tick_ms
        self.election_tick = election_tick
        self.compact_trailing = compact_trailing
        self.clients: dict[str, RpcClient] = {}
        self.auth = Auth(self.secret_file.read_bytes(), Identity(CLUSTER_ID, "test-client", "client"))
        self.leader_hint: str | None = None

    def address(self, node_id: str) -> str:
        return f"127.0.0.1:{self.ports[node_id]}"

    def peers_arg(self) -> str:
        return ",".join(f"{i}={self.address(i)}" for i in self.ports)

    def start(self, node_id: str, *, bootstrap: list[str] | None = None, join: bool = False) -> None:
        args = ["--id", node_id, "--data", str(self.root / node_id), "--listen", self.address(node_id),
                "--secret-file", str(self.secret_file), "--peers", self.peers_arg(),
                "--tick-ms", str(self.tick_ms), "--election-tick", str(self.election_tick),
                "--compact-trailing", str(self.compact_trailing)]
        if bootstrap:
            args += ["--bootstrap", ",".join(bootstrap)]
        if join:
            args += ["--join"]
        self.group.python(node_id, "tests.harness.raft_server", *args)

    def add_node_id(self, node_id: str) -> None:
        self.ports[node_id] = free_port()

    def kill(self, node_id: str) -> None:
        self.group.kill(node_id)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
        self.group.stop_all()

    def client(self, node_id: str) -> RpcClient:
        if node_id not in self.clients:
            host, port = self.address(node_id).rsplit(":", 1)
            self.clients[node_id] = RpcClient((host, int(port)), self.auth, expected_role="mds",
                                              default_deadline_s=5.0, reconnect_backoff_s_max=0.5)
        return self.clients[node_id]

    def running(self) -> list[str]:
        return [n for n, p in self.group.procs.items() if p.running]

    async def status(self, node_id: str) -> dict[str, Any] | None:
        try:
            reply = await self.client(node_id).call(RaftStatusRequest(), deadline_s=2.0)
        except RETRYABLE:
            return None
        return dict(reply.message.status)  # type: ignore[attr-defined]

    async def leader(self, timeout_s: float = 30.0) -> str:
        async def find() -> str | None:
            statuses = {n: await self.status(n) for n in self.running()}
            leaders = [n for n, s in statuses.items() if s and s.get("role") == "leader"]
            if len(leaders) == 1:
                self.leader_hint = leaders[0]
                return leaders[0]
            return None
        return await wait_for(find, timeout_s=timeout_s, what="one leader among the processes", interval_s=0.1)

    async def call_leader(self, msg: Any, *, timeout_s: float = 60.0) -> Any:
        """Send to the leader, following NotLeader and retrying retryable errors."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        candidates = list(self.ports)
        attempt = 0
        down_until: dict[str, float] = {}  # nodes that refused a connection: skip them a while
        while True:
            live = [n for n in candidates if down_until.get(n, 0) <= loop.time()] or candidates
            target = self.leader_hint if self.leader_hint in live else live[attempt % len(live)]
            attempt += 1
            try:
                return (await self.client(target).call(msg, deadline_s=5.0)).message
            except NotLeader as exc:
                leader_id = exc.details.get("leader_id")
                self.leader_hint = leader_id if leader_id in self.ports else None
            except Unavailable:
                down_until[target] = loop.time() + 1.0
                self.leader_hint = None
            except RETRYABLE:
                self.leader_hint = None
            if loop.time() > deadline:
                raise DeadlineExceeded(f"{type(msg).__name__}: no leader answered within {timeout_s} s")
            await asyncio.sleep(0.05)

    async def append(self, client_id: str, seq: int, key: str, value: int) -> str:
        reply = await self.call_leader(KvAppendRequest(client_id=client_id, seq=seq, key=key, value=value))
        return reply.result

    async def read_from(self, node_id: str, key: str) -> tuple[int, ...]:
        reply = await self.client(node_id).call(KvReadRequest(key=key), deadline_s=10.0)
        return tuple(reply.message.values)  # type: ignore[attr-defined]

    async def member(self, op: str, node_id: str) -> None:
        address = self.address(node_id) if op == "add" else ""
        await self.call_leader(RaftMemberRequest(op=op, node_id=node_id, address=address))
