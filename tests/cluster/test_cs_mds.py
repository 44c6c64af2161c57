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

from tests.harness.mdsprocs import MdsInProcCluster
from tests.harness.procs import free_port
from tests.harness.wait import wait_for
from vstore.chunkserver import chunkfile
from vstore.chunkserver.server import CsServer
from vstore.config import load_config
from vstore.errors import ChecksumMismatch
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

    async def online(self, count: int) -> None:
        async def seen() -> bool:
            status = await self.cluster.status(self.cluster.ids[0])
            return status is not None and status.chunks.get("cs_online") == count
        await wait_for(seen, timeout_s=30, what=f"{count} chunkservers online at the MDS")


@pytest.fixture(autouse=True)
def _disk_warnings_allowed(expect_log) -> None:  # type: ignore[no-untyped-def]
    # the chunkservers report the machine's real disk: a nearly full disk warns, rightly
    expect_log("cs.disk_nearfull", 0)
    expect_log("cs.disk_full", 0)


@pytest.fixture
async def rig(tmp_path: Path):
    async with MdsInProcCluster(tmp_path, ("m1",), mds_extra=TIMERS, chunk_bytes=1 << 20).serving() as cluster:
        servers = Chunkservers(cluster)
        try:
            yield cluster, servers
        finally:
            await servers.close()


def pieces(offset: int, data: bytes) -> tuple[int, ...]:
    """The client's end-to-end checksums of a write."""
    return wcs.piece_checksums(offset, data, BLOCK)


async def write_file(cluster, link, name: bytes, data: bytes):  # type: ignore[no-untyped-def]
    """What a client does for one chunk: create, allocate, chain write, fsync, report."""
    auth = cluster.auth("writer")
    f = await link.create(ROOT_INODE, name)
    reply = await link.mutate(lambda lane, seq: w.AllocChunkRequest(uid=0, gid=0, lane=lane, seq=seq, inode=f.inode,
                                                                    index=0))
    assert isinstance(reply, w.ChunkReply)
    chunk = reply.chunk
    assert len(chunk.replicas) == 3 and len({r.host for r in chunk.replicas}) == 3
    head_host, head_port = chunk.replicas[0].address.rsplit(":", 1)
    head = RpcClient((head_host, int(head_port)), auth, expected_role="cs")
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
    return f.inode, chunk


async def read_all(cluster, info: w.ChunkInfo, length: int) -> list[bytes]:  # type: ignore[no-untyped-def]
    """The chunk's bytes from every replica the map lists (a failure is raised)."""
    out = []
    for replica in info.replicas:
        host, port = replica.address.rsplit(":", 1)
        client = RpcClient((host, int(port)), cluster.auth("reader"), expected_role="cs")
        try:
            got = await client.call(wcs.ReadChunkRequest(chunk_id=info.chunk_id, version=info.version, offset=0,
                                                         length=length, token=info.token))
            out.append(bytes(got.payload))
        finally:
            await client.close()
    return out


async def chunk_map(link, inode: int) -> w.ChunkInfo:  # type: ignore[no-untyped-def]
    got = await link.call(w.ChunkMapRequest(uid=0, gid=0, inode=inode, first_index=0, count=1))
    assert isinstance(got, w.ChunkMapReply)
    return got.chunks[0]


async def test_a_file_written_through_the_chain_is_rebuilt_by_a_real_copy_after_a_chunkserver_dies(
        rig, expect_log) -> None:
    expect_log("cs.failed", 0)
    cluster, servers = rig
    for n in range(1, 5):
        await servers.start(f"cs-{n}")
    await servers.online(4)
    link = await cluster.link()
    data = os.urandom(700_000)
    inode, chunk = await write_file(cluster, link, b"disk.img", data)
    assert await read_all(cluster, await chunk_map(link, inode), len(data)) == [data] * 3
    victim = next(n for n, (s, _, _) in servers.running.items() if s.cs_id == chunk.replicas[1].cs_id)
    await servers.stop(victim)

    async def rebuilt() -> w.ChunkInfo | None:
        info = await chunk_map(link, inode)
        ids = {r.cs_id for r in info.replicas}
        return info if len(ids) == 3 and chunk.replicas[1].cs_id not in ids else None
    info = await wait_for(rebuilt, timeout_s=40, what="the chunk rebuilt on another chunkserver")
    assert await read_all(cluster, info, len(data)) == [data] * 3, "every replica, the copy too"


def flip_a_bit(server: CsServer, chunk_id: int, at: int) -> None:
    path = server.data_dir / "chunks" / chunkfile.chunk_file_name(chunk_id)
    with open(path, "r+b") as fh:
        header = chunkfile.decode_header(fh.read(chunkfile.HEADER_BYTES))
        fh.seek(header.data_offset + at)
        byte = fh.read(1)
        fh.seek(header.data_offset + at)
        fh.write(bytes([byte[0] ^ 0x04]))


@pytest.mark.parametrize("found_by", ["read", "scrub"])
async def test_a_flipped_bit_is_reported_the_replica_replaced_and_never_served(rig, expect_log, found_by) -> None:
    expect_log("chunk.damaged")
    expect_log("cs.store.replica_damaged")
    expect_log("cs.scrub_damage", 1 if found_by == "scrub" else 0)
    cluster, servers = rig
    for n in range(1, 5):
        await servers.start(f"cs-{n}")
    await servers.online(4)
    link = await cluster.link()
    data = os.urandom(200_000)
    inode, chunk = await write_file(cluster, link, b"f", data)
    bad_id = chunk.replicas[0].cs_id
    bad = next(s for s, _, _ in servers.running.values() if s.cs_id == bad_id)
    flip_a_bit(bad, chunk.chunk_id, 123_456)
    if found_by == "read":
        with pytest.raises(ChecksumMismatch):
            await read_all(cluster, await chunk_map(link, inode), len(data))
    else:
        assert bad.scrubber is not None and await bad.scrubber.one_pass() == 1

    async def replaced() -> bool:
        # the bad copy is dropped at once, deleted, and a verified copy made (possibly on the
        # same chunkserver once its bad copy is gone); until then reads of it fail
        info = await chunk_map(link, inode)
        if len({r.cs_id for r in info.replicas}) != 3:
            return False
        try:
            return await read_all(cluster, info, len(data)) == [data] * 3
        except ChecksumMismatch:
            return False
    await wait_for(replaced, timeout_s=40, what="the damaged replica replaced by a verified copy")
    assert bad.data is not None and bad.link is not None
