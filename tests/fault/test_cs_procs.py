"""Chunkservers as real ``vstore serve`` processes with a real MDS process: kill -9 the middle
of a write chain (issue 5's bar; RELIABILITY.md F6): the writer gets a clear error naming
that chunkserver within its deadline, and the surviving replicas hold identical bytes for
everything that was acknowledged. Logs of every process are printed when a test fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import call_failed
from tests.harness.fsprocs import cs_config
from tests.harness.mdsprocs import MdsProcCluster
from tests.harness.wait import wait_for
from vstore.errors import VStoreError
from vstore.metadata.fsm.schema import ROOT_INODE
from vstore.net import RpcClient
from vstore.wire import cs as wcs
from vstore.wire import mds as w

pytestmark = pytest.mark.timeout(180)
BLOCK = 4096


def pieces(offset: int, data: bytes) -> tuple[int, ...]:
    """The client's end-to-end checksums of a write."""
    return wcs.piece_checksums(offset, data, BLOCK)


@pytest.fixture
async def procs(tmp_path: Path, request: pytest.FixtureRequest):
    cluster = MdsProcCluster(tmp_path, ("m1",), chunk_bytes=1 << 20,
                             mds_extra={"cs_offline_after_s": 1, "cs_failed_after_s": 3, "write_lease_s": 2,
                                        "capability_skew_s": 1})
    async with cluster.serving(dump_logs_if=lambda: call_failed(request.node)):
        for n in (1, 2, 3):
            cluster.group.python(f"cs-{n}", "vstore.cli.main", "serve", "-c", str(cs_config(cluster, f"cs-{n}")))
        yield cluster


async def chain_write(cluster: MdsProcCluster, chunk: w.ChunkInfo, offset: int, data: bytes,
                      deadline_s: float = 20.0) -> None:
    host, port = chunk.replicas[0].address.rsplit(":", 1)
    head = RpcClient((host, int(port)), cluster.auth("writer"), expected_role="cs")
    chain = tuple(wcs.ChainHop(cs_id=r.cs_id, address=r.address) for r in chunk.replicas[1:])
    try:
        await head.call(wcs.WriteChunkRequest(chunk_id=chunk.chunk_id, version=chunk.version, offset=offset,
                                              checksums=pieces(offset, data), token=chunk.token, chain=chain,
                                              create=offset == 0), data, deadline_s=deadline_s)
        await head.call(wcs.FsyncChunkRequest(chunk_id=chunk.chunk_id, version=chunk.version, token=chunk.token,
                                              chain=chain), deadline_s=deadline_s)
    finally:
        await head.close()


async def test_killing_the_middle_of_a_chain_fails_the_write_naming_it_and_survivors_agree(procs) -> None:
    cluster = procs
    link = await cluster.link()
    f = await link.create(ROOT_INODE, b"disk.img")

    async def all_online() -> bool:
        status = await cluster.status("m1")
        return status is not None and status.chunks.get("cs_online") == 3
    await wait_for(all_online, timeout_s=60, what="three chunkservers registered and online")
    reply = await link.mutate(lambda lane, seq: w.AllocChunkRequest(uid=0, gid=0, lane=lane, seq=seq, inode=f.inode,
                                                                    index=0))
    assert isinstance(reply, w.ChunkReply) and len(reply.chunk.replicas) == 3
    chunk = reply.chunk
    acked = os.urandom(256 * 1024)
    await chain_write(cluster, chunk, 0, acked)
    middle = next(name for name in ("cs-1", "cs-2", "cs-3")
                  if (cluster.root / name / "cs-id").read_text().strip() == str(chunk.replicas[1].cs_id))
    cluster.kill(middle)
    with pytest.raises(VStoreError) as info:
        await chain_write(cluster, chunk, len(acked), os.urandom(256 * 1024), deadline_s=20.0)
    assert info.value.details.get("failed_cs") == chunk.replicas[1].cs_id, repr(info.value)

    survivors = [chunk.replicas[0], chunk.replicas[2]]
    for replica in survivors:
        host, port = replica.address.rsplit(":", 1)
        client = RpcClient((host, int(port)), cluster.auth("reader"), expected_role="cs")
        try:
            got = await client.call(wcs.ReadChunkRequest(chunk_id=chunk.chunk_id, version=chunk.version, offset=0,
                                                         length=len(acked), token=chunk.token))
        finally:
            await client.close()
        assert bytes(got.payload) == acked, f"cs {replica.cs_id} lost acknowledged bytes"
