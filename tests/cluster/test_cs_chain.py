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

from tests.harness.wait import wait_for
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


# ---- VerifyChunk (vstore scrub) -------------------------------------------------------------------


async def test_verify_reads_the_whole_replica_in_pieces_and_returns_what_it_checked_not_the_bytes(
        chain, monkeypatch: pytest.MonkeyPatch) -> None:
    from vstore.chunkserver import service as service_mod
    monkeypatch.setattr(service_mod, "VERIFY_PIECE_BYTES", 64 * 1024)  # 1 MiB chunk: many pieces
    nodes, client, key = chain
    data = os.urandom(700_001)
    await client.call(write_request(nodes, key, 20, 1, 5000, data), data)
    got = await client.call(w.VerifyChunkRequest(chunk_id=20, version=1, token=token(key, 20, 1, "r")))
    length = 5000 + len(data)
    assert got.message == w.VerifyChunkReply(length_bytes=length, blocks_checked=-(-length // BLOCK),
                                             block_bytes=BLOCK)
    assert bytes(got.payload) == b"", "a verification sends no data back"
    assert nodes[0].service.stats["verifies"] == 1 and nodes[0].service.stats["bytes_verified"] == length
    empty = await client.call(w.WriteChunkRequest(chunk_id=21, version=1, offset=0, checksums=(),
                                                  token=token(key, 21, 1), create=True), b"")
    assert empty.message.replicas == 1
    got = await client.call(w.VerifyChunkRequest(chunk_id=21, version=1, token=token(key, 21, 1)))
    assert got.message == w.VerifyChunkReply(length_bytes=0, blocks_checked=0, block_bytes=BLOCK)


async def test_verify_checks_the_capability_then_the_chunk_id_then_the_version(chain) -> None:
    nodes, client, key = chain
    data = os.urandom(8192)
    await client.call(write_request(nodes, key, 22, 1, 0, data), data)

    async def verify(chunk_id: int, version: int, tok: bytes) -> object:
        return (await client.call(w.VerifyChunkRequest(chunk_id=chunk_id, version=version, token=tok))).message

    with pytest.raises(BadCapability):
        await verify(22, 1, b"")
    with pytest.raises(BadCapability):  # a token for another chunk
        await verify(22, 1, token(key, 23, 1, "r"))
    with pytest.raises(BadCapability):  # a token for another version
        await verify(22, 1, token(key, 22, 2, "r"))
    with pytest.raises(BadCapability):  # an unknown chunk with no valid token: the capability comes first
        await verify(999, 1, b"x" * 41)
    with pytest.raises(BadCapability):  # an expired token
        await verify(22, 1, issue_capability(key, 22, 1, "r", int(time.time()) - 3600))
    with pytest.raises(VStoreError) as bad_id:  # a valid token for an id that names no file
        await verify(0, 1, token(key, 0, 1, "r"))
    assert bad_id.value.code.name == "INVALID_ARGUMENT"
    with pytest.raises(VStoreError) as unknown:
        await verify(999, 1, token(key, 999, 1, "r"))
    assert unknown.value.code.name == "NOT_FOUND"
    with pytest.raises(StaleVersion):  # the replica is at version 1
        await verify(22, 2, token(key, 22, 2, "r"))
    nodes[0].store.set_version(22, 1, 3)
    with pytest.raises(StaleVersion):
        await verify(22, 1, token(key, 22, 1, "r"))
    assert isinstance(await verify(22, 3, token(key, 22, 3, "r")), w.VerifyChunkReply)
    assert nodes[0].service.stats["refused"] == 5


async def test_verify_of_a_flipped_byte_is_a_checksum_error_naming_the_block_and_is_reported_to_the_mds(
        chain, expect_log) -> None:
    expect_log("cs.store.replica_damaged")
    nodes, client, key = chain
    reported: list[tuple[int, int, str]] = []

    async def on_damage(chunk_id: int, version: int, reason: str) -> None:
        reported.append((chunk_id, version, reason))
    nodes[0].service.on_damage = on_damage
    data = os.urandom(40_000)
    await client.call(write_request(nodes, key, 24, 1, 0, data), data)
    path = nodes[0].store.data_dir / "chunks" / chunkfile.chunk_file_name(24)
    header = chunkfile.decode_header(path.read_bytes()[:chunkfile.HEADER_BYTES])
    with open(path, "r+b") as fh:
        fh.seek(header.data_offset + 5 * BLOCK + 77)
        byte = fh.read(1)
        fh.seek(header.data_offset + 5 * BLOCK + 77)
        fh.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(ChecksumMismatch) as info:
        await client.call(w.VerifyChunkRequest(chunk_id=24, version=1, token=token(key, 24, 1, "r")))
    assert info.value.details["block"] == 5 and info.value.details["chunk"] == 24
    await wait_for(lambda: reported, timeout_s=10, what="the damage reported to the MDS")
    assert [(c, v) for c, v, _ in reported] == [(24, 1)] and "block" in reported[0][2]
    assert nodes[0].store.list_chunks()[0].damaged
    for node in nodes[1:]:  # the other replicas are untouched and verify
        peer = RpcClient(("127.0.0.1", int(node.address.rsplit(":", 1)[1])),
                         Auth(node.service.auth.secret, Identity(CLUSTER, "client-2", "client")),
                         expected_role="cs", default_deadline_s=10.0)
        try:
            ok = await peer.call(w.VerifyChunkRequest(chunk_id=24, version=1, token=token(key, 24, 1, "r")))
            assert ok.message.length_bytes == len(data)
        finally:
            await peer.close()


async def test_a_chunkserver_restarted_between_a_write_and_its_fsync_fails_the_fsync_naming_itself(chain) -> None:
    """RELIABILITY F18: a chunkserver that lost power after acknowledging a write (the bytes
    were only in its page cache) comes back as a new process with a new boot id. The fsync
    carries the boot ids the writes were acknowledged under, and the restarted server refuses
    it, naming itself, instead of making the loss look durable; a write that shows the new
    boot id is refused by the client the same way. After an fsync, a restart costs nothing."""
    from vstore.client.chunk_io import ChunkIo
    from vstore.wire import mds as wm
    nodes, client, key = chain
    io = ChunkIo(client.auth)

    def info(chunk_id: int) -> wm.ChunkInfo:
        return wm.ChunkInfo(index=0, chunk_id=chunk_id, version=1, length_bytes=0, token=token(key, chunk_id, 1),
                            replicas=tuple(wm.ReplicaAddress(cs_id=n.cs_id, address=n.address) for n in nodes))
    try:
        first = info(11)
        await io.write(first, 0, os.urandom(8192), create=True)
        nodes[1].service.boot ^= 2          # the middle server restarted: a new process, a new boot id
        with pytest.raises(Unavailable) as refused:
            await io.fsync(first)
        assert refused.value.details["failed_cs"] == 2 and "restarted" in refused.value.message
        with pytest.raises(Unavailable) as seen:
            await io.write(first, 8192, os.urandom(4096), create=False)
        assert seen.value.details["failed_cs"] == 2
        second = info(12)
        await io.write(second, 0, os.urandom(4096), create=True)
        await io.fsync(second)
        nodes[2].service.boot ^= 2          # a restart after the fsync: nothing unsynced to lose
        await io.write(second, 4096, os.urandom(4096), create=False)
        await io.fsync(second)
    finally:
        await io.close()
