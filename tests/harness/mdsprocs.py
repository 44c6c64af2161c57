"""A metadata cluster of real ``vstore serve`` processes on loopback, and its clients.

Each MDS gets a TOML config, a data dir initialised as a founding member (what ``vstore
mkfs`` does for one node, here for three at once), and runs as ``python -m vstore.cli.main
serve -c CONFIG``, owned by PID through ProcessGroup (SIGKILL is a real crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from tests.harness.procs import ProcessGroup, free_port
from tests.harness.wait import wait_for
from vstore.client.mds_link import MdsLink, client_node_id
from vstore.errors import VStoreError
from vstore.metadata.bootstrap import init_founding_member
from vstore.metadata.passwords import hash_password, new_password
from vstore.net import Auth
from vstore.wire import Identity
from vstore.wire import mds as w


class MdsProcCluster:
    def __init__(self, root: Path, ids: tuple[str, ...] = ("m1", "m2", "m3"), *, heartbeat_ms: int = 50,
                 election_ms: int = 500, session_expire_s: int = 30, chunk_bytes: int = 64 << 20,
                 mds_extra: dict[str, int] | None = None, admin: bool = False, failpoints: bool = False) -> None:
        self.mds_extra = mds_extra or {}
        #: ``[node] failpoints = true`` in every node's config (vstore/failpoints.py): a
        #: process started with VSTORE_FAILPOINTS in its ``env`` then runs them
        self.failpoints = failpoints
        #: with ``admin``, every MDS serves the dashboard (``admin_url``), and this logs in to it
        self.admin = admin
        self.admin_password = new_password() if admin else ""
        self.admin_ports = {i: free_port() for i in ids}
        self.root = root
        self.ids = ids
        self.cluster_id = str(uuid.uuid4())
        self.secret_file = root / "cluster.secret"
        self.secret_file.write_bytes(secrets.token_bytes(32))
        self.secret_file.chmod(0o600)
        self.group = ProcessGroup(root / "logs")
        self.ports = {i: free_port() for i in ids}
        self.links: list[MdsLink] = []
        members = [(i, self.address(i)) for i in ids]
        now_ns = time.time_ns()
        for node_id in ids:
            data = root / node_id
            init_founding_member(data, node_id=node_id, cluster_id=self.cluster_id, members=members,
                                 root_now_ns=now_ns, chunk_bytes=chunk_bytes, map_size_bytes=1 << 28,
                                 admin_password_hash=hash_password(self.admin_password) if admin else "")
            (root / f"{node_id}.toml").write_text(self._config(node_id, heartbeat_ms, election_ms, session_expire_s))

    def address(self, node_id: str) -> str:
        return f"127.0.0.1:{self.ports[node_id]}"

    def admin_url(self, node_id: str) -> str:
        """The dashboard of that MDS (``admin=True`` clusters only)."""
        assert self.admin, "this cluster was made without admin=True: its MDS serve no dashboard"
        return f"http://127.0.0.1:{self.admin_ports[node_id]}"

    def cluster_section(self) -> str:
        """The [cluster] section every node and client of this cluster has."""
        mds = ", ".join(f'"{self.address(i)}"' for i in self.ids)
        return f"""[cluster]
name = "test"
id = "{self.cluster_id}"
mds = [{mds}]
secret_file = "{self.secret_file}"
"""

    def _config(self, node_id: str, heartbeat_ms: int, election_ms: int, session_expire_s: int) -> str:
        return f"""
[node]
id = "{node_id}"
role = "mds"
listen = "{self.address(node_id)}"
host = "host-{node_id}"
data_dir = "{self.root / node_id}"
failpoints = {"true" if self.failpoints else "false"}

{self.cluster_section()}
[log]
level = "info"

[mds]
admin_listen = "127.0.0.1:{self.admin_ports[node_id]}"
admin_enabled = {"true" if self.admin else "false"}
heartbeat_interval_ms = {heartbeat_ms}
election_timeout_ms = {election_ms}
session_expire_s = {session_expire_s}
""" + "".join(f"{k} = {v}\n" for k, v in {"lmdb_map_bytes": 1 << 28, "raft_log_map_bytes": 1 << 28,
                                           **self.mds_extra}.items())

    # ---- processes ---------------------------------------------------------------------------------

    def start(self, node_id: str, *, env: Mapping[str, str] | None = None) -> None:
        """Start (or restart) one MDS; ``env`` for this start only (e.g. VSTORE_FAILPOINTS)."""
        self.group.python(node_id, "vstore.cli.main", "serve", "-c", str(self.root / f"{node_id}.toml"), env=env)

    def start_all(self) -> None:
        for node_id in self.ids:
            self.start(node_id)

    def kill(self, node_id: str) -> None:
        self.group.kill(node_id)

    def running(self) -> list[str]:
        """The MDS processes that are running (other processes of the group are not MDS)."""
        return [n for n, p in self.group.procs.items() if p.running and n in self.ids]

    async def close(self) -> None:
        for link in self.links:
            await link.close(expire_session=False)
        self.group.stop_all()

    # ---- clients -----------------------------------------------------------------------------------

    def auth(self, name: str = "test") -> Auth:
        return Auth(self.secret_file.read_bytes(), Identity(self.cluster_id, client_node_id(name), "client"))

    async def link(self, *, deadline_s: float = 60.0, lanes: int = 64, start: bool = True) -> MdsLink:
        addresses = [("127.0.0.1", self.ports[i]) for i in self.ids]
        link = MdsLink(addresses, self.auth(), deadline_s=deadline_s, attempt_deadline_s=3.0, lanes=lanes,
                       host="test-host")
        self.links.append(link)
        if start:
            await link.start()
        return link

    async def status(self, node_id: str) -> w.MdsStatusReply | None:
        link = self.links[0] if self.links else await self.link(start=False)
        try:
            return await link.status(self.address(node_id))
        except VStoreError:
            return None

    async def leader(self, timeout_s: float = 30.0) -> str:
        async def find() -> str | None:
            statuses = {n: await self.status(n) for n in self.running()}
            leaders = [(s.term, n) for n, s in statuses.items() if s and s.role == "leader"]
            terms = [t for t, _ in leaders]
            assert len(terms) == len(set(terms)), f"two leaders in one term: {leaders}"
            # a deposed leader that has not heard of the newer term yet is normal in Raft
            # for a moment (until its check-quorum or the new leader's append reaches it)
            return max(leaders)[1] if leaders else None
        return await wait_for(find, timeout_s=timeout_s, what="one MDS leader", interval_s=0.05)

    async def converged(self, timeout_s: float = 30.0) -> dict[str, w.MdsStatusReply]:
        """Wait until every running MDS has applied the same index with the same state hash."""
        async def same() -> dict[str, w.MdsStatusReply] | None:
            statuses = {n: await self.status(n) for n in self.running()}
            if any(s is None for s in statuses.values()):
                return None
            points = {(s.applied, s.state_hash) for s in statuses.values() if s is not None}
            return statuses if len(points) == 1 else None  # type: ignore[return-value]
        return await wait_for(same, timeout_s=timeout_s, what="equal applied index and state hash on every MDS",
                              interval_s=0.1)

    @contextlib.asynccontextmanager
    async def serving(self, *, dump_logs_if: Callable[[], bool] = lambda: False) -> AsyncIterator[MdsProcCluster]:
        """Start every MDS, wait for a leader, and always clean up (printing every log when
        ``dump_logs_if()`` says the test failed)."""
        self.start_all()
        try:
            await self.leader()
            yield self
        finally:
            await self.close()
            if dump_logs_if() and self.group.procs:
                print(self.group.dump_logs())


class MdsInProcCluster(MdsProcCluster):
    """The same cluster with every MDS as an ``MdsServer`` in this process and event loop:
    real sockets and LMDB, fast to start. ``stop`` is a clean stop, not a crash."""

    def __init__(self, root: Path, ids: tuple[str, ...] = ("m1", "m2", "m3"), **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(root, ids, **kwargs)
        self.servers: dict[str, tuple[object, asyncio.Event, asyncio.Task[int]]] = {}

    def start(self, node_id: str) -> None:
        from vstore.config import load_config
        from vstore.metadata.server import MdsServer
        server = MdsServer(load_config(self.root / f"{node_id}.toml"))
        stop = asyncio.Event()
        task = asyncio.create_task(server.run(stop, handle_signals=False), name=f"mds-{node_id}")
        self.servers[node_id] = (server, stop, task)

    def server(self, node_id: str):  # type: ignore[no-untyped-def]
        return self.servers[node_id][0]

    async def stop(self, node_id: str) -> int:
        _, stop, task = self.servers.pop(node_id)
        stop.set()
        return await task

    def running(self) -> list[str]:
        return [n for n, (_, _, task) in self.servers.items() if not task.done()]

    async def close(self) -> None:
        for link in self.links:
            await link.close(expire_session=False)
        for node_id in list(self.servers):
            await self.stop(node_id)
