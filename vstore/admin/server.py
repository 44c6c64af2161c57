"""The dashboard inside one MDS process: its links to the cluster, the aiohttp sites, and
the Prometheus exposition.

``vstore serve`` starts it next to the MDS (vstore/cli/serve.py) when ``[mds]
admin_enabled``. It reads the cluster through the cluster's own RPCs (vstore/admin/source.py)
with the node's secret, so a follower shows the leader's data. Two things come from the
MDS process itself, as callables: the stored admin password hash (replicated state, present
on every MDS) and this node's Raft status (for its own metrics). A dashboard that cannot
bind its address logs an error and stays off: the metadata service does not depend on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from vstore.admin.app import Dashboard
from vstore.admin.model import assess, banner, chunk_health
from vstore.admin.source import ClusterSource
from vstore.metrics import Metrics

log = logging.getLogger(__name__)

HEALTH_LEVEL = {"healthy": 0, "degraded": 1, "urgent": 2, "unavailable": 3}


class AdminServer:
    def __init__(self, config: Any, *, password_hash: Callable[[], str], verify: Callable[[str, str], bool],
                 node_status: Callable[[], dict[str, Any]]) -> None:
        from vstore.client.factory import client_auth
        from vstore.client.mds_link import MdsLink
        from vstore.net import limits_of
        self.config = config
        self.node_status = node_status
        mds = config.mds
        addresses = [(a.host, a.port) for a in config.cluster.mds]
        listen = config.node.listen
        if (listen.host, listen.port) not in addresses:
            addresses.insert(0, (listen.host, listen.port))
        node = config.node.id

        def auth(role: str) -> Any:
            return client_auth(cluster_id=config.cluster.id, secret_file=config.cluster.secret_file, role=role,
                               frame_auth=config.net.frame_auth, node_id=f"dash-{node}-{role}"[:64])
        limits = limits_of(config.net)
        admin = MdsLink(addresses, auth("admin"), deadline_s=8.0, attempt_deadline_s=3.0, limits=limits)
        client = MdsLink(addresses, auth("client"), deadline_s=15.0, attempt_deadline_s=5.0, limits=limits,
                         host=f"dashboard-{node}")
        self.source = ClusterSource(name=config.cluster.name, cluster_id=config.cluster.id, node_id=node,
                                    admin_link=admin, client_link=client,
                                    mds_addresses=[f"{h}:{p}" for h, p in addresses])
        token = _read_token(mds.metrics_token_file) if mds.metrics_token_file else ""
        self.dashboard = Dashboard(self.source, password_hash=password_hash, verify=verify, metrics=self.exposition,
                                   metrics_token=token, secure_cookie=bool(config.tls.enabled))
        self._runners: list[web.AppRunner] = []
        self.url = f"http://{mds.admin_listen}/"

    async def start(self) -> bool:
        """Serve; False (logged) when an address cannot be bound."""
        mds = self.config.mds
        sites = [(self.dashboard.app(), mds.admin_listen.host, mds.admin_listen.port)]
        if mds.metrics_listen:
            from vstore.config import Address
            where = Address.parse(mds.metrics_listen)
            sites.append((self.dashboard.metrics_app(), where.host, where.port))
        for app, host, port in sites:
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            try:
                await web.TCPSite(runner, host, port, reuse_address=True).start()
            except OSError as exc:
                await runner.cleanup()
                log.error("admin.listen_failed", extra={"address": f"{host}:{port}", "error": exc.strerror or str(exc),
                                                        "action": "the dashboard is off; fix [mds] admin_listen"})
                await self.stop()
                return False
            self._runners.append(runner)
        await self.source.start()
        log.info("admin.started", extra={"url": self.url, "metrics": mds.metrics_listen or "admin_listen"})
        return True

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        await self.source.stop()

    async def exposition(self) -> bytes:
        """Prometheus text: this node's Raft numbers and the cluster's as the leader tells them."""
        m = Metrics()
        st = self.node_status()
        node = str(st.get("id", self.config.node.id))
        m.gauge("vstore_raft_current_term", "current Raft term", ["node"]).labels(node).set(st.get("term", 0))
        m.gauge("vstore_raft_commit_index", "highest log index known committed", ["node"]).labels(node).set(
            st.get("commit", 0))
        m.gauge("vstore_raft_applied_index", "highest log index applied to the state", ["node"]).labels(node).set(
            st.get("applied", 0))
        m.gauge("vstore_raft_leader_state", "1 if this MDS leads", ["node"]).labels(node).set(
            int(st.get("role") == "leader"))
        look = await self.source.look()
        health, _ = assess(look.mds, look.summary)
        if look.error:
            health = "unavailable"
        m.gauge("vstore_cluster_health_state", "0 healthy, 1 degraded, 2 urgent, 3 unavailable").set(
            HEALTH_LEVEL[banner(health, look.summary)])
        up = m.gauge("vstore_cluster_mds_nodes", "MDS by whether they answer", ["state"])
        up.labels("up").set(sum(1 for s in look.mds.values() if s))
        up.labels("down").set(sum(1 for s in look.mds.values() if not s))
        chunks = m.gauge("vstore_cluster_stored_chunks", "chunks by health", ["state"])
        for state, n in chunk_health(look.summary).items():
            chunks.labels(state).set(n)
        servers = m.gauge("vstore_cluster_cs_nodes", "chunkservers by liveness", ["status"])
        for status in ("online", "offline", "failed", "draining"):
            servers.labels(status).set(sum(1 for s in look.servers if s.status == status and s.state != "removed"))
        m.gauge("vstore_rebuild_copied_bytes", "bytes copied by the current leader's rebuilds").set(
            look.summary.get("copied_bytes", 0))
        m.gauge("vstore_rebuild_waiting_chunks", "chunks waiting for repair").set(
            sum(v for k, v in look.summary.items() if k.startswith("backlog_")))
        used = m.gauge("vstore_cs_used_bytes", "bytes used on the chunkserver's disk", ["cs_id", "node"])
        size = m.gauge("vstore_cs_capacity_bytes", "size of the chunkserver's disk", ["cs_id", "node"])
        held = m.gauge("vstore_cs_listed_chunks", "replicas listed on the chunkserver", ["cs_id", "node"])
        for cs in look.servers:
            if cs.state == "removed":
                continue
            labels = (str(cs.cs_id), cs.node_id)
            used.labels(*labels).set(cs.used_bytes)
            size.labels(*labels).set(cs.capacity_bytes)
            held.labels(*labels).set(cs.chunks)
        return m.exposition()


def _read_token(path: str) -> str:
    from vstore.errors import UsageError
    try:
        token = open(path, encoding="utf-8").read().strip()
    except OSError as exc:
        raise UsageError(f"[mds] metrics_token_file {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise UsageError(f"[mds] metrics_token_file {path}: the token must be at least 16 characters")
    return token
