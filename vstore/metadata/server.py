"""One MDS process: opens its data dir, runs the Raft node and the metadata service on one
RPC server, and stops cleanly on SIGTERM/SIGINT (``vstore serve -c mds.toml``).

Order of start (and, reversed, of stop): failpoints (vstore/failpoints.py: refused unless the
config allows them), secret and data dir checks -> Raft log store and
state machine -> Raft node -> RPC server (Raft peers, clients and chunkservers share its
port) -> the service's background tasks. A fatal storage error in the Raft node (a failed
fsync, a full map) stops the process with exit code 1: after a failed fsync the node must
not go on as if the write had happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from vstore.config import NodeConfig
from vstore.errors import UsageError
import vstore.failpoints as failpoints
from vstore.metadata.bootstrap import join_peers, raft_dir, state_dir
from vstore.metadata.fsm.namespace import NamespaceStateMachine
from vstore.metadata.raft.node import RaftNode, RaftNodeConfig, StartupError
from vstore.metadata.raft.storage import RaftLogStore
from vstore.metadata.raft.types import RaftConfig
from vstore.metadata.chunkservers import ChunkserverManager
from vstore.metadata.events import EventLog
from vstore.metadata.membership import Membership
from vstore.metadata.service import MetadataService
from vstore.net import Auth, Router, RpcServer, limits_of, read_secret_file
from vstore.net.dgram import DatagramChannel
from vstore.wire import FrameAuth, Identity, datagram_key
from vstore.wire.capability import capability_key

log = logging.getLogger(__name__)

#: Roles allowed to connect to an MDS: its Raft peers, clients, chunkservers, admin tools.
MDS_PEER_ROLES = frozenset({"mds", "client", "cs", "admin"})


class MdsServer:
    def __init__(self, config: NodeConfig) -> None:
        if config.node.role != "mds" or config.mds is None:
            raise UsageError(f"node {config.node.id} has role {config.node.role!r}, not mds")
        # first: a node that must refuse its environment refuses before it touches anything
        failpoints.configure(allowed=config.node.failpoints, role="mds")
        self.config = config
        self.data_dir = Path(config.node.data_dir)
        secret = read_secret_file(config.cluster.secret_file)
        self.auth = Auth(secret, Identity(config.cluster.id, config.node.id, "mds"),
                         frame_auth=FrameAuth(config.net.frame_auth))
        if not (raft_dir(self.data_dir) / "data.mdb").exists():
            raise UsageError(f"{self.data_dir} is not an initialised MDS data dir (create it with 'vstore mkfs' or "
                             f"'vstore add-node --role mds')")
        mds = config.mds
        self.store = RaftLogStore(raft_dir(self.data_dir), map_size_bytes=mds.raft_log_map_bytes)
        identity = self.store.identity() or {}
        if identity.get("cluster_id") != config.cluster.id:
            self.store.close()
            raise UsageError(f"{self.data_dir} belongs to cluster {identity.get('cluster_id')!r}, but the config says "
                             f"{config.cluster.id!r}")
        self.sm = NamespaceStateMachine(state_dir(self.data_dir), map_size_bytes=mds.lmdb_map_bytes)
        self.store.attach(self.sm.conf_state, self.sm.snapshot_meta)
        tick_ms = mds.heartbeat_interval_ms
        raft = RaftConfig(election_tick=max(2, mds.election_timeout_ms // tick_ms), heartbeat_tick=1)
        try:
            self.node = RaftNode(RaftNodeConfig(node_id=config.node.id, data_dir=self.data_dir, tick_ms=tick_ms,
                                                raft=raft, peer_limits=limits_of(config.net),
                                                initial_peers=join_peers(self.data_dir)),
                                 self.store, self.sm, self.auth)
        except StartupError as exc:
            self.sm.close()
            self.store.close()
            raise UsageError(str(exc)) from None
        self.service = MetadataService(self.node, self.sm, session_expire_s=float(mds.session_expire_s),
                                       capability_key=capability_key(secret, config.cluster.id))
        self.chunkservers = ChunkserverManager(self.service, offline_after_s=float(mds.cs_offline_after_s),
                                               failed_after_s=float(mds.cs_failed_after_s),
                                               safe_mode_timeout_s=float(mds.safe_mode_timeout_s),
                                               write_lease_s=float(mds.write_lease_s),
                                               capability_skew_s=float(mds.capability_skew_s))
        self.service.chunkservers = self.chunkservers
        self.membership = Membership(self.service)
        self.events = EventLog()
        self.service.cluster_name = config.cluster.name
        self._dgram_key = datagram_key(secret, config.cluster.id)
        self.heartbeats: DatagramChannel | None = None
        #: called once the node serves (the dashboard starts then)
        self.on_started: Callable[[], None] | None = None
        router = Router()
        self.node.register(router)
        self.service.register(router)
        self.chunkservers.register(router)
        self.membership.register(router)
        self.events.register(router)
        net = config.net
        self.server = RpcServer(router, self.auth, allowed_roles=MDS_PEER_ROLES, limits=limits_of(config.net),
                                max_connections=net.max_connections, max_connections_per_ip=net.max_connections_per_ip)

    async def run(self, stop: asyncio.Event | None = None, *, handle_signals: bool = True) -> int:
        """Serve until ``stop`` is set (or SIGTERM/SIGINT with ``handle_signals``); returns
        the process exit code."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        if handle_signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, stop.set)
        listen = self.config.node.listen
        try:
            await self.server.start(listen.host, listen.port)
        except OSError as exc:
            self.close_stores()
            raise UsageError(f"cannot listen on {listen}: {exc.strerror}") from None
        try:
            self.heartbeats = await DatagramChannel.bind(listen.host, listen.port, key=self._dgram_key,
                                                         sender_id=self.config.node.id)
        except OSError as exc:
            await self.server.close()
            self.close_stores()
            raise UsageError(f"cannot receive heartbeats on UDP {listen}: {exc.strerror}") from None
        receiver = asyncio.ensure_future(self._receive_heartbeats(self.heartbeats))
        self.events.install()
        try:
            await self.node.start()
            await self.service.start()
            await self.chunkservers.start()
            await self.membership.start()
            log.info("mds.started", extra={"node": self.config.node.id, "listen": str(listen), "pid": os.getpid()})
            if self.on_started is not None:
                self.on_started()
            fatal = asyncio.ensure_future(self.node.wait_fatal())
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait([fatal, stopped], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (fatal, stopped):
                    task.cancel()
        finally:
            # reverse order of start
            await self.membership.stop()
            await self.chunkservers.stop()
            await self.service.stop()
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
            self.heartbeats.close()
            self.events.uninstall()
            await self.server.close()
            await self.node.stop()
            self.close_stores()
        log.info("mds.stopped", extra={"node": self.config.node.id, "fatal": str(self.node.fatal or "")})
        return 1 if self.node.fatal else 0

    async def _receive_heartbeats(self, channel: DatagramChannel) -> None:
        while True:
            datagram, _address = await channel.recv()
            try:
                self.chunkservers.on_heartbeat(datagram, datagram.message)
            except Exception:  # one bad heartbeat must not end the loop that hears them all
                log.exception("mds.heartbeat_failed", extra={"sender": datagram.sender})

    def close_stores(self) -> None:
        self.sm.close()
        self.store.close()
