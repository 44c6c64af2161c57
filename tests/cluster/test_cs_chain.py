"""Chain-replicated writes, verified reads and fsync down the chain, across three chunkserver
data services on real sockets and real disks (issue 5; DESIGN.md §5; RELIABILITY.md F6, F11,
F19, F26). The capability key stands in for the MDS that would issue the tokens.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import pytest
import xxhash

from vstore.chunkserver import chunkfile
from vstore.chunkserver.service import ChunkDataService
from vstore.chunkserver.store import ChunkStore
from vstore.errors import BadCapability, ChecksumMismatch, DeadlineExceeded, StaleVersion, Unavailable, VStoreError
from vstore.net import Auth, Router, RpcClient, RpcServer
from vstore.wire import Identity
from vstore.wire import cs as w
from vstore.wire.capability import capability_key, issue_capability

pytestmark = pytest.mark.timeout(60)

CLUSTER = "chain-test"
CHUNK_BYTES = 1 << 20
BLOCK = 4096


class Node:
    def __init__(self, root: Path, cs_id: int, secret: bytes) -> None:
        self.cs_id = cs_id
        self.store = ChunkStore(root / f"cs{cs_id}", chunk_bytes=CHUNK_BYTES, block_bytes=BLOCK)
        auth = Auth(secret, Identity(CLUSTER, f"cs-{cs_id}", "cs"))
        self.service = ChunkDataService(self.store, cs_id=cs_id, auth=auth,
                                        capability_key=capability_key(secret, CLUSTER), forward_deadline_s=3.0)
        router = Router()
        self.service.register(router)
        self.server = RpcServer(router, auth, allowed_roles=frozenset({"client", "cs"}))
        self.address = ""

    async def start(self) -> None:
        host, port = await self.server.start("127.0.0.1", 0)
        self.address = f"{host}:{port}"

    async def close(self) -> None:
        await self.server.close()
        await self.service.close()
        self.store.close()


@pytest.fixture
async def chain(tmp_path: Path):
    secret = secrets.token_bytes(32)
    nodes = [Node(tmp_path, i, secret) for i in (1, 2, 3)]
    for node in nodes:
        await node.start()
    client = RpcClient(("127.0.0.1", int(nodes[0].address.rsplit(":", 1)[1])),
                       Auth(secret, Identity(CLUSTER, "client-1", "client")), expected_role="cs",
                       default_deadline_s=10.0)
    key = capability_key(secret, CLUSTER)
    try:
        yield nodes, client, key
    finally:
        await client.close()
        for node in nodes:
            await node.close()


def pieces(offset: int, data: bytes) -> tuple[int, ...]:
    """The client's end-to-end checksums of a write."""
    return w.piece_checksums(offset, data, BLOCK)


def token(key: bytes, chunk_id: int, version: int, mode: str = "rw") -> bytes:
    return issue_capability(key, chunk_id, version, mode, int(time.time()) + 600)


def write_request(nodes, key, chunk_id, version, offset, data, *, create=True, checksums=None):  # type: ignore[no-untyped-def]
    return w.WriteChunkRequest(chunk_id=chunk_id, version=version, offset=offset,
                               checksums=checksums if checksums is not None else pieces(offset, data),
                               token=token(key, chunk_id, version), create=create,
                               chain=tuple(w.ChainHop(cs_id=n.cs_id, address=n.address) for n in nodes[1:]))


async def test_a_chain_write_reaches_every_replica_before_the_ack_and_reads_back_verified(chain) -> None:
    nodes, client, key = chain
    data = os.urandom(300_000)
    reply = await client.call(write_request(nodes, key, 7, 1, 5000, data), data)
    assert isinstance(reply.message, w.WriteChunkReply) and reply.message.replicas == 3
    synced = await client.call(w.FsyncChunkRequest(chunk_id=7, version=1, token=token(key, 7, 1),
                                                   chain=tuple(w.ChainHop(cs_id=n.cs_id, address=n.address)
                                                               for n in nodes[1:])))
    assert synced.message.replicas == 3
    for node in nodes:
        assert node.store.read(7, 1, 5000, len(data)) == data
        assert node.store.read(7, 1, 0, 5000) == bytes(5000), "the gap before the write reads as zeros"
    got = await client.call(w.ReadChunkRequest(chunk_id=7, version=1, offset=5000, length=len(data),
                                               token=token(key, 7, 1, "r")))
    assert bytes(got.payload) == data and got.message.checksum == xxhash.xxh3_64_intdigest(data)


async def test_a_wrong_client_checksum_is_refused_by_the_first_replica_and_nothing_is_written(chain) -> None:
    nodes, client, key = chain
    data = os.urandom(8192)
    bad = list(pieces(0, data))
    bad[1] ^= 1
    with pytest.raises(ChecksumMismatch):
        await client.call(write_request(nodes, key, 8, 1, 0, data, checksums=tuple(bad)), data)
    for node in nodes:  # every replica checked them itself: none wrote a byte
        assert node.store.read(8, 1, 0, 8192) == b""


async def test_requests_without_a_valid_capability_or_at_another_version_are_refused(chain) -> None:
    nodes, client, key = chain
    data = os.urandom(4096)
    await client.call(write_request(nodes, key, 9, 1, 0, data), data)
    with pytest.raises(BadCapability):
        await client.call(w.ReadChunkRequest(chunk_id=9, version=1, offset=0, length=10, token=b""))
    with pytest.raises(BadCapability):  # a token for another chunk
        await client.call(w.ReadChunkRequest(chunk_id=9, version=1, offset=0, length=10, token=token(key, 10, 1)))
    with pytest.raises(BadCapability):  # read-only token for a write
        request = write_request(nodes, key, 9, 1, 0, data)
        await client.call(w.WriteChunkRequest(chunk_id=9, version=1, offset=0, checksums=request.checksums,
                                              token=token(key, 9, 1, "r"), chain=request.chain), data)
    nodes[0].store.set_version(9, 1, 2)
    with pytest.raises(StaleVersion):  # a request for the old version: never served
        await client.call(w.ReadChunkRequest(chunk_id=9, version=1, offset=0, length=10, token=token(key, 9, 1)))
    with pytest.raises(StaleVersion):  # a version regression is refused
        nodes[0].store.set_version(9, 2, 1)


async def test_a_flipped_bit_on_the_first_replica_is_a_checksum_error_never_the_bytes(chain, expect_log) -> None:
    expect_log("cs.store.replica_damaged")
    nodes, client, key = chain
    data = os.urandom(16384)
    await client.call(write_request(nodes, key, 11, 1, 0, data), data)
    path = nodes[0].store.data_dir / "chunks" / chunkfile.chunk_file_name(11)
    header = chunkfile.decode_header(path.read_bytes()[:chunkfile.HEADER_BYTES])
    with open(path, "r+b") as fh:
        fh.seek(header.data_offset + 5000)
        byte = fh.read(1)
        fh.seek(header.data_offset + 5000)
        fh.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(ChecksumMismatch):
        await client.call(w.ReadChunkRequest(chunk_id=11, version=1, offset=0, length=16384,
                                             token=token(key, 11, 1, "r")))


async def test_a_dead_middle_replica_fails_the_write_naming_it_and_survivors_keep_what_was_acked(chain) -> None:
    nodes, client, key = chain
    first = os.urandom(65536)
    await client.call(write_request(nodes, key, 12, 1, 0, first), first)
    await nodes[1].server.close()  # the middle chunkserver dies
    second = os.urandom(65536)
    with pytest.raises((Unavailable, DeadlineExceeded, VStoreError)) as info:
        await client.call(write_request(nodes, key, 12, 1, 65536, second), second, deadline_s=15.0)
    assert info.value.details.get("failed_cs") == 2, f"the error names the dead replica: {info.value!r}"
    for node in (nodes[0], nodes[2]):
        assert node.store.read(12, 1, 0, 65536) == first, "everything acknowledged is on the survivors"
