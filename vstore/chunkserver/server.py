"""One chunkserver process: registers with the MDS, opens its store, serves chunk data, keeps
the MDS link (heartbeats, reports, orders), and stops cleanly (``vstore serve -c cs.toml``).

Order of start (reversed at stop): failpoints (vstore/failpoints.py: refused unless the config
allows them) -> secret -> registration (a data dir without a ``cs-id``
marker joins the cluster, one with it re-registers as that cs id; the MDS tells the chunk
size) -> store and start-up scan -> data service and RPC server -> MDS link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from pathlib import Path

from vstore.chunkserver.chunkfile import VERSION_MAX
from vstore.chunkserver.mds_link import CsMdsLink, register
from vstore.chunkserver.scrubber import Scrubber
from vstore.chunkserver.service import ChunkDataService
from vstore.chunkserver.store import ChunkStore
from vstore.config import NodeConfig
from vstore.errors import UsageError
import vstore.failpoints as failpoints
from vstore.net import Auth, Router, RpcServer, read_secret_file
from vstore.wire import FrameAuth, Identity, datagram_key
from vstore.wire.capability import capability_key

log = logging.getLogger(__name__)

CS_ID_MARKER = "cs-id"


class CsServer:
    def __init__(self, config: NodeConfig) -> None:
        if config.node.role != "cs" or config.chunkserver is None:
            raise UsageError(f"node {config.node.id} has role {config.node.role!r}, not cs")
        # first: a node that must refuse its environment refuses before it touches anything
        failpoints.configure(allowed=config.node.failpoints, role="cs")
        self.config = config
        self.data_dir = Path(config.node.data_dir)
        self.secret = read_secret_file(config.cluster.secret_file)
        self.auth = Auth(self.secret, Identity(config.cluster.id, config.node.id, "cs"),
                         frame_auth=FrameAuth(config.net.frame_auth))
        self.host = config.node.host or socket.gethostname()
        self.mds = [(a.host, a.port) for a in config.cluster.mds]
        self.store: ChunkStore | None = None
        self.data: ChunkDataService | None = None
        self.link: CsMdsLink | None = None
        self.server: RpcServer | None = None
        self.cs_id: int | None = None
        self.scrubber: Scrubber | None = None

    async def run(self, stop: asyncio.Event | None = None, *, handle_signals: bool = True) -> int:
        stop = stop or asyncio.Event()
        if handle_signals:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(NotImplementedError, RuntimeError):
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, stop.set)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        marker = self.data_dir / CS_ID_MARKER
        known = int(marker.read_text()) if marker.exists() else None
        listen = self.config.node.listen
        probe = os.statvfs(self.data_dir)
        reply = await register(self.mds, self.auth, host=self.host, rack=self.config.node.rack, address=str(listen),
                               capacity_bytes=probe.f_blocks * probe.f_frsize, join=known is None)
        if known is not None and known != reply.cs_id:
            raise UsageError(f"{self.data_dir} belongs to cs {known}, but the cluster knows {self.config.node.id} "
                             f"as cs {reply.cs_id}")
        if known is None:
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(f"{reply.cs_id}\n")
            os.replace(tmp, marker)
        self.cs_id = reply.cs_id
        cs = self.config.chunkserver
        assert cs is not None
        self.store = ChunkStore(self.data_dir, chunk_bytes=reply.chunk_bytes, reserve_bytes=cs.reserve_bytes)
        report = self.store.scan_startup()
        # a copy or first write that was in progress when the process died: not a replica
        # anyone counts on (the MDS lists a copy only after it completed); the planner copies
        # it again if it is still needed
        for chunk_id in report.incomplete:
            self.store.delete(chunk_id, at_most_version=VERSION_MAX)
        log.info("cs.scanned", extra={"cs_id": self.cs_id, "replicas": report.replicas, "adopted": len(report.adopted),
                                      "missing": len(report.missing), "damaged": len(report.damaged),
                                      "incomplete_deleted": len(report.incomplete), "strays": len(report.strays)})
        self.data = ChunkDataService(self.store, cs_id=self.cs_id, auth=self.auth,
                                     capability_key=capability_key(self.secret, self.config.cluster.id))
        router = Router()
        self.data.register(router)
        self.server = RpcServer(router, self.auth, allowed_roles=frozenset({"client", "cs"}))
        try:
            await self.server.start(listen.host, listen.port)
        except OSError as exc:
            await self.data.close()
            self.store.close()
            raise UsageError(f"cannot listen on {listen}: {exc.strerror}") from None
        self.link = CsMdsLink(self.store, self.data, cs_id=self.cs_id, node_id=self.config.node.id, host=self.host,
                              mds=self.mds,
                              auth=self.auth, datagram_key=datagram_key(self.secret, self.config.cluster.id),
                              heartbeat_interval_s=cs.heartbeat_interval_ms / 1000)
        self.data.on_damage = self.link.report_damage
        self.scrubber = Scrubber(self.store, self.data._disk, rate_bytes_per_s=cs.scrub_rate_bytes_per_s,
                                 on_damage=self.link.report_damage)
        scrubbing = asyncio.ensure_future(self.scrubber.run())
        try:
            await self.link.start()
            log.info("cs.started", extra={"cs_id": self.cs_id, "listen": str(listen), "pid": os.getpid()})
            await stop.wait()
        finally:
            scrubbing.cancel()
            await asyncio.gather(scrubbing, return_exceptions=True)
            await self.link.stop()
            await self.server.close()
            await self.data.close()
            self.store.close()
            log.info("cs.stopped", extra={"cs_id": self.cs_id})
        return 0
