"""The failpoint sites in the chunk store and the Raft state machine, on real files in
tmp_path: an injected error takes the path the real OS error takes (RELIABILITY.md F14 and
§4.2), and a failed apply transaction leaves nothing applied.

The process-level consequences (a replica dropped from the chain, the MDS exiting, a crash
recovered) are in tests/fault/test_failpoints.py; here each site is checked directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.kvsm import KvStateMachine, command
from tests.harness.raftcluster import RaftCluster
from vstore import errors
from vstore import failpoints as fp
from vstore.chunkserver.store import ChunkStore, ReplicaInfo
from vstore.metadata.raft.statemachine import encode_proposal
from vstore.metadata.raft.storage import FatalStorageError
from vstore.wire.raft import Entry

B = 4096


@pytest.fixture(autouse=True)
def _all_off() -> Iterator[None]:
    fp.disable()
    yield
    fp.disable()


def enable(spec: str, expect_log: Callable[..., None]) -> None:
    expect_log("failpoints.enabled")
    assert fp.configure(allowed=True, environ={fp.ENV_VAR: spec})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChunkStore]:
    s = ChunkStore(tmp_path / "data", chunk_bytes=16 * B, block_bytes=B)
    s.create(1, 1, incomplete=False)
    try:
        yield s
    finally:
        s.close()


def test_an_injected_fsync_eio_marks_the_replica_bad_and_no_later_fsync_succeeds(
        store: ChunkStore, expect_log: Callable[..., None]) -> None:
    expect_log("cs.store.fsync_failed")
    expect_log("cs.store.replica_damaged")
    store.write(1, 1, 0, b"x" * B)
    enable("cs.fsync=1*error(EIO)", expect_log)
    with pytest.raises(errors.DiskIOError, match="fsync failed"):
        store.fsync(1)
    assert fp.active() == {"cs.fsync": (1, 1)}
    fp.disable()
    with pytest.raises(errors.DiskIOError):
        store.fsync(1)  # the point is off and the disk fine: still never a success
    assert store.list_chunks() == [ReplicaInfo(1, 1, 0, True)]


def test_an_injected_write_error_fails_the_write_and_marks_the_replica_bad(
        store: ChunkStore, expect_log: Callable[..., None]) -> None:
    expect_log("cs.store.replica_damaged")
    enable("cs.write=1*error(EIO)", expect_log)
    with pytest.raises(errors.DiskIOError):
        store.write(1, 1, 0, b"y" * B)
    with pytest.raises(errors.DiskIOError):
        store.write(1, 1, 0, b"y" * B)  # refused: the replica had an I/O error
    assert store.list_chunks() == [ReplicaInfo(1, 1, 0, True)]


def test_an_injected_enospc_on_write_is_a_typed_no_space(store: ChunkStore, expect_log: Callable[..., None]) -> None:
    expect_log("cs.store.replica_damaged")
    enable("cs.write=error(ENOSPC)", expect_log)
    with pytest.raises(errors.NoSpace):
        store.write(1, 1, 0, b"z" * B)


def test_an_injected_read_eio_fails_the_read_and_marks_the_replica_bad(
        store: ChunkStore, expect_log: Callable[..., None]) -> None:
    expect_log("cs.store.replica_damaged")
    store.write(1, 1, 0, b"r" * B)
    store.fsync(1)
    assert store.read(1, 1, 0, B) == b"r" * B
    enable("cs.read=1*error(EIO)", expect_log)
    with pytest.raises(errors.DiskIOError):
        store.read(1, 1, 0, B)
    with pytest.raises(errors.DiskIOError):
        store.read(1, 1, 0, B)  # no byte from a replica whose disk failed, even once the point is off
    assert store.list_chunks() == [ReplicaInfo(1, 1, B, True)]


def _entries(first: int, count: int) -> list[Entry]:
    return [Entry.make(i, 1, encode_proposal("", 0, command("append", "k", i))) for i in range(first, first + count)]


def test_a_failed_apply_transaction_leaves_nothing_applied_and_the_retry_reaches_the_same_hash(
        tmp_path: Path, expect_log: Callable[..., None]) -> None:
    reference = KvStateMachine(tmp_path / "reference")
    reference.apply(_entries(1, 5), {})
    sm = KvStateMachine(tmp_path / "sm")
    sm.apply(_entries(1, 2), {})
    before = sm.state_hash()
    enable("apply.before_txn_commit=1*error(EIO)", expect_log)
    with pytest.raises(FatalStorageError, match="failpoint apply.before_txn_commit"):
        sm.apply(_entries(3, 3), {})
    assert sm.state_hash() == before and sm.get("k") == (1, 2)
    sm.close()
    sm = KvStateMachine(tmp_path / "sm")  # what the disk holds
    assert sm.state_hash() == before and sm.get("k") == (1, 2)
    sm.apply(_entries(3, 3), {})
    assert sm.state_hash() == reference.state_hash() and sm.get("k") == (1, 2, 3, 4, 5)
    sm.close()
    reference.close()


async def test_a_failed_log_write_stops_the_raft_node_so_its_process_exits(
        tmp_path: Path, expect_log: Callable[..., None]) -> None:
    """``raft.before_persist=error(EIO)``: the node's first persist (its election) fails;
    the node stops with FatalStorageError and ``wait_fatal`` (what MdsServer.run waits on
    to exit 1) resolves: no task of the dead node keeps the process alive."""
    expect_log("raft.fatal")
    cluster = RaftCluster(tmp_path, ["m1"])
    enable("raft.before_persist=error(EIO)", expect_log)
    try:
        await cluster.start()
        node = cluster.nodes["m1"].node
        assert node is not None
        fatal = await asyncio.wait_for(node.wait_fatal(), timeout=10)
        assert isinstance(fatal, FatalStorageError) and "failpoint raft.before_persist" in str(fatal)
        assert node.log_store.hard_state.term == 1, "nothing of the failed persist was written"
    finally:
        fp.disable()
        await cluster.close()
