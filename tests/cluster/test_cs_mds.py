"""Real chunkservers with a real MDS, in one process on real sockets and disks: registration,
heartbeats and reports; a file written through the chain with the capability the MDS
issued; and a rebuild by a real copy, verified block by block, after a chunkserver is gone
(issues 4 and 5 together; DESIGN.md §4-5, §8 invariants 2-4).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import xxhash

from tests.harness.mdsprocs import MdsInProcCluster
from tests.harness.procs import free_port
from tests.harness.wait import wait_for
from vstore.chunkserver.server import CsServer
from vstore.config import load_config
from vstore.metadata.fsm.schema import ROOT_INODE
from vstore.net import RpcClient
from vstore.wire import cs as wcs
from vstore.wire import mds as w

pytestmark = pytest.mark.timeout(120)

TIMERS = {"cs_offline_after_s": 1, "cs_failed_after_s": 2, "safe_mode_timeout_s": 30, "write_lease_s": 1,
          "capability_skew_s": 1}
BLOCK = 4096


class Chunkservers:
    def __init__(self, cluster: MdsInProcCluster) -> None:
        self.cluster = cluster
        self.running: dict[str, tuple[CsServer, asyncio.Event, asyncio.Task[int]]] = {}

    def config(self, name: str, host: str) -> Path:
        mds = ", ".join(f'"{self.cluster.address(i)}"' for i in self.cluster.ids)
        path = self.cluster.root / f"{name}.toml"
        path.write_text(f"""
[node]
id = "{name}"
role = "cs"
listen = "127.0.0.1:{free_port()}"
host = "{host}"
data_dir = "{self.cluster.root / name}"

[cluster]
name = "test"
id = "{self.cluster.cluster_id}"
mds = [{mds}]
secret_file = "{self.cluster.secret_file}"

[chunkserver]
heartbeat_interval_ms = 200
reserve_bytes = 0
""")
        return path

    async def start(self, name: str, host: str | None = None) -> CsServer:
        path = self.cluster.root / f"{name}.toml"
        if not path.exists():
            self.config(name, host or f"host-{name}")
        server = CsServer(load_config(path))
        stop = asyncio.Event()
        task = asyncio.create_task(server.run(stop, handle_signals=False))
        self.running[name] = (server, stop, task)
        await wait_for(lambda: server.link is not None or task.done(), timeout_s=20, what=f"{name} started")
        if task.done():
            task.result()
        return server

    async def stop(self, name: str) -> None:
        _, stop, task = self.running.pop(name)
        stop.set()
        await task

    async def close(self) -> None:
        for name in list(self.running):
            await self.stop(name)


@pytest.fixture
async def rig(tmp_path: Path):
    async with MdsInProcCluster(tmp_path, ("m1",), mds_extra=TIMERS, chunk_bytes=1 << 20).serving() as cluster:
        servers = Chunkservers(cluster)
        try:
            yield cluster, servers
        finally:
            await servers.close()


def pieces(offset: int, data: bytes) -> tuple[int, ...]:
    out, pos = [], 0
    while pos < len(data):
        end = min(len(data), pos + BLOCK - (offset + pos) % BLOCK)
        out.append(xxhash.xxh3_64_intdigest(data[pos:end]))
        pos = end
    return tuple(out)


async def test_a_file_written_through_the_chain_is_rebuilt_by_a_real_copy_after_a_chunkserver_dies(
        rig, expect_log) -> None:
    expect_log("cs.failed", 0)
    cluster, servers = rig
    for n in range(1, 5):
        await servers.start(f"cs-{n}")
    link = await cluster.link()
    auth = cluster.auth("writer")
    f = await link.create(ROOT_INODE, b"disk.img")
    reply = await link.mutate(lambda lane, seq: w.AllocChunkRequest(uid=0, gid=0, lane=lane, seq=seq, inode=f.inode,
                                                                    index=0))
    assert isinstance(reply, w.ChunkReply)
    chunk = reply.chunk
    assert len(chunk.replicas) == 3 and len({r.host for r in chunk.replicas}) == 3
    head_host, head_port = chunk.replicas[0].address.rsplit(":", 1)
    head = RpcClient((head_host, int(head_port)), auth, expected_role="cs")
    data = os.urandom(700_000)
    chain = tuple(wcs.ChainHop(cs_id=r.cs_id, address=r.address) for r in chunk.replicas[1:])
    try:
        written = await head.call(wcs.WriteChunkRequest(chunk_id=chunk.chunk_id, version=chunk.version, offset=0,
                                                        checksums=pieces(0, data), token=chunk.token, chain=chain,
                                                        create=True), data)
        assert written.message.replicas == 3
        synced = await head.call(wcs.FsyncChunkRequest(chunk_id=chunk.chunk_id, version=chunk.version,
                                                       token=chunk.token, chain=chain))
        assert synced.message.replicas == 3
    finally:
        await head.close()
    await link.mutate(lambda lane, seq: w.WriteDoneRequest(
        uid=0, gid=0, lane=lane, seq=seq, inode=f.inode, size=len(data), mtime_ns=1,
        chunks=(w.WrittenChunk(index=0, length_bytes=len(data)),), release=True))

    async def read_all(replicas: tuple[w.ReplicaAddress, ...], token: bytes, version: int) -> list[bytes]:
        out = []
        for replica in replicas:
            host, port = replica.address.rsplit(":", 1)
            client = RpcClient((host, int(port)), auth, expected_role="cs")
            try:
                got = await client.call(wcs.ReadChunkRequest(chunk_id=chunk.chunk_id, version=version, offset=0,
                                                             length=len(data), token=token))
                out.append(bytes(got.payload))
            finally:
                await client.close()
        return out

    assert await read_all(chunk.replicas, chunk.token, chunk.version) == [data] * 3
    victim = next(n for n, (s, _, _) in servers.running.items() if s.cs_id == chunk.replicas[1].cs_id)
    await servers.stop(victim)

    async def rebuilt() -> w.ChunkInfo | None:
        got = await link.call(w.ChunkMapRequest(uid=0, gid=0, inode=f.inode, first_index=0, count=1))
        assert isinstance(got, w.ChunkMapReply)
        info = got.chunks[0]
        ids = {r.cs_id for r in info.replicas}
        return info if len(ids) == 3 and chunk.replicas[1].cs_id not in ids else None
    info = await wait_for(rebuilt, timeout_s=40, what="the chunk rebuilt on another chunkserver")
    assert await read_all(info.replicas, info.token, info.version) == [data] * 3, "every replica, the copy too"
