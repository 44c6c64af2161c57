"""Raft nodes over real sockets and LMDB, in one process: election, replication, failover
without losing acknowledged writes, catch-up by log and by snapshot, exactly-once retries,
membership changes under load. (Multi-process kill -9 tests: tests/fault/test_raft_procs.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.harness.raftcluster import RaftCluster
from tests.harness.wait import wait_for


@pytest.fixture
async def cluster(tmp_path: Path):
    c = RaftCluster(tmp_path, ["m1", "m2", "m3"])
    await c.start()
    yield c
    await c.close()


async def test_three_nodes_elect_one_leader_and_replicate_writes(cluster: RaftCluster) -> None:
    await cluster.leader()
    for i in range(20):
        assert await cluster.append("k", i) == "ok"
    await cluster.converged("k", tuple(range(20)))


async def test_a_follower_read_barrier_sees_every_acknowledged_write(cluster: RaftCluster) -> None:
    leader = await cluster.leader()
    await cluster.append("k", 1)
    follower = next(n for n in cluster.running() if n is not leader)
    assert follower.node is not None and follower.sm is not None
    index = await follower.node.read_barrier()
    assert index >= 1 and follower.sm.get("k") == (1,)


async def test_a_read_index_the_leader_never_answers_fails_instead_of_waiting_forever(
        cluster: RaftCluster, monkeypatch: pytest.MonkeyPatch, expect_log) -> None:
    """A follower forwards its read index to the leader; if the answer never comes (that
    leader was stopped, then deposed, or the message was lost) the read fails, retryable,
    instead of waiting forever: a metadata service's reads share one barrier round at a
    time, so one read stuck forever held a leader's every later request (the thrash saw a
    leader that never served its term)."""
    from vstore.errors import Unavailable
    from vstore.wire.raft import RaftMsgType
    expect_log("raft.read_index_timeout")
    leader = await cluster.leader()
    follower = next(n for n in cluster.running() if n is not leader)
    assert leader.node is not None and follower.node is not None
    core = leader.node.core
    real = core.step
    monkeypatch.setattr(core, "step", lambda m: None if m.type == RaftMsgType.READ_INDEX else real(m))
    started = asyncio.get_running_loop().time()
    with pytest.raises(Unavailable):
        await follower.node.read_barrier(timeout_s=1.0)
    assert asyncio.get_running_loop().time() - started < 5
    monkeypatch.setattr(core, "step", real)
    assert await follower.node.read_barrier() >= 1, "the next read goes through"


async def test_a_retried_proposal_is_applied_exactly_once(cluster: RaftCluster) -> None:
    await cluster.append("k", "x", client_id="c1", seq=7)
    assert await cluster.append("k", "x", client_id="c1", seq=7) == "ok"
    await cluster.append("k", "y", client_id="c1", seq=8)
    await cluster.converged("k", ("x", "y"))


async def test_a_new_leader_takes_over_and_no_acknowledged_write_is_lost(cluster: RaftCluster, expect_log) -> None:
    expect_log("net.connection_closed", count=0)
    acked = []
    for i in range(30):
        await cluster.append("k", i)
        acked.append(i)
    old = await cluster.leader()
    await old.stop()
    new = await cluster.leader(timeout_s=15)
    assert new is not old
    for i in range(30, 40):
        await cluster.append("k", i)
        acked.append(i)
    await old.start()
    await cluster.converged("k", tuple(acked))


async def test_a_follower_that_missed_a_compacted_log_catches_up_by_snapshot(tmp_path: Path) -> None:
    # small chunks: the snapshot streams in many pieces
    cluster = RaftCluster(tmp_path, ["m1", "m2", "m3"], compact_trailing_entries=5, snapshot_chunk_bytes=4096)
    await cluster.start()
    try:
        leader = await cluster.leader()
        lagging = next(n for n in cluster.running() if n is not leader)
        await lagging.stop()
        for i in range(60):
            await cluster.append("k", i)
        assert leader.store is not None
        await wait_for(lambda: leader.store.first_index() > 20, timeout_s=10, what="leader log compaction")
        await lagging.start()
        await cluster.converged("k", tuple(range(60)))
        assert lagging.node is not None and lagging.node.stats["snapshots_installed"] >= 1
        assert leader.node is not None and leader.node.stats["snapshots_sent"] >= 1
        await cluster.append("k", 60)
        await cluster.converged("k", tuple(range(61)))
    finally:
        await cluster.close()


async def test_the_cluster_grows_from_three_to_five_and_shrinks_back_under_load(tmp_path: Path) -> None:
    cluster = RaftCluster(tmp_path, ["m1", "m2", "m3", "m4", "m5"])
    await cluster.start(voters=["m1", "m2", "m3"])
    written: list[int] = []
    stop = asyncio.Event()

    async def load() -> None:
        i = 0
        while not stop.is_set():
            await cluster.append("k", i)
            written.append(i)
            i += 1

    task = asyncio.create_task(load())
    try:
        await cluster.leader()
        for node_id in ("m4", "m5"):
            await cluster.add_member(node_id)
            await cluster.promote(node_id)
        leader = await cluster.leader()
        assert leader.node is not None and sorted(leader.node.core.voters) == ["m1", "m2", "m3", "m4", "m5"]
        for node_id in ("m1", "m2"):
            await cluster.remove(node_id)
        leader = await cluster.leader()
        assert leader.node is not None and sorted(leader.node.core.voters) == ["m3", "m4", "m5"]
        await wait_for(lambda: len(written) > 20, timeout_s=20, what="writes during membership changes")
    finally:
        stop.set()
        await task
    await cluster.converged("k", tuple(written), nodes=["m3", "m4", "m5"])
    await cluster.close()


async def test_a_wiped_data_dir_refuses_to_start_and_a_lost_log_never_votes_again(tmp_path: Path, expect_log) -> None:
    """RELIABILITY.md §4.6 / F2: a member that lost its Raft state could vote twice in a term
    it no longer remembers. With the whole data dir gone the node refuses to start; with
    the log lost under a re-created log store it runs, catches up, but never votes."""
    expect_log("raft.log_lost")
    expect_log("raft.log_behind_state")
    import shutil

    from tests.harness.raftcluster import CLUSTER_ID
    from vstore.metadata.raft.node import StartupError
    from vstore.metadata.raft.storage import RaftLogStore

    cluster = RaftCluster(tmp_path, ["m1", "m2", "m3"])
    await cluster.start()
    try:
        for i in range(5):
            await cluster.append("k", i)
        leader = await cluster.leader()
        victim = next(n for n in cluster.running() if n is not leader)
        await victim.stop()
        shutil.rmtree(victim.data_dir / "raft")
        with pytest.raises(StartupError, match="never initialised"):
            await victim.start()
        await victim.stop()
        # an operator re-creates the log store in place (instead of rm-node + add-node)
        store = RaftLogStore(victim.data_dir / "raft")
        store.claim(victim.id, CLUSTER_ID)
        store.close()
        await victim.start()
        assert victim.node is not None and victim.node.status()["voting_disabled"] == 1
        for i in range(5, 10):
            await cluster.append("k", i)
        survivors = [n.id for n in cluster.running() if n is not victim]
        await cluster.converged("k", tuple(range(10)), nodes=survivors)
        # The victim may have acknowledged an entry it never applied and then lost: the
        # leader then cannot tell its rejections from stale ones (etcd has the same limit),
        # which is why the way back is rm-node + add-node. It must never hold wrong data.
        assert victim.sm is not None and victim.sm.get("k") == tuple(range(10))[:len(victim.sm.get("k"))]
        # it is still a voter in the configuration, but stays disabled across restarts
        await victim.stop()
        await victim.start()
        assert victim.node is not None and victim.node.status()["voting_disabled"] == 1
    finally:
        await cluster.close()


async def test_leadership_moves_to_the_named_follower(cluster: RaftCluster) -> None:
    leader = await cluster.leader()
    await cluster.append("k", 1)
    target = next(n for n in cluster.running() if n is not leader)
    assert leader.node is not None
    leader.node.transfer_leadership(target.id)
    await wait_for(lambda: target.node is not None and target.node.is_leader, timeout_s=10,
                   what=f"{target.id} to lead")
    await cluster.append("k", 2)
    await cluster.converged("k", (1, 2))


async def test_a_failed_log_write_stops_the_node_and_fails_its_requests(cluster: RaftCluster, expect_log) -> None:
    """An fsync error is never retried as if the write had happened (fsyncgate): the node
    stops, everything waiting on it fails, and the rest of the cluster carries on."""
    expect_log("raft.fatal")
    from vstore.errors import Unavailable
    from vstore.metadata.raft.storage import FatalStorageError

    leader = await cluster.leader()
    assert leader.node is not None and leader.store is not None

    def broken_persist(rd):  # type: ignore[no-untyped-def]
        raise FatalStorageError("injected: fsync returned EIO")

    leader.store.persist = broken_persist  # type: ignore[method-assign]
    from vstore.metadata.raft.statemachine import encode_proposal
    from tests.harness.kvsm import command
    with pytest.raises(Unavailable):
        await leader.node.propose(encode_proposal("c", 1, command("append", "k", 1)))
    assert isinstance(leader.node.fatal, FatalStorageError)
    await leader.stop()
    await cluster.append("k", 2)
    # the failed write's outcome is unknown (the leader sent it before its own fsync
    # failed): the survivors may or may not have committed it, but never twice
    survivors = [n.id for n in cluster.running()]
    await wait_for(lambda: all(cluster.nodes[n].sm.get("k") in ((2,), (1, 2)) for n in survivors)
                   and len({cluster.nodes[n].sm.get("k") for n in survivors}) == 1,
                   timeout_s=20, what="survivors to agree")


async def test_a_replica_whose_state_diverges_stops_voting_and_resyncs_from_the_leader(tmp_path: Path,
                                                                                          expect_log) -> None:
    """RELIABILITY.md §4.5: the leader's periodic state-hash checkpoints let every replica
    compare; one that applied something different stops voting (and must be re-synced)."""
    expect_log("raft.state_diverged")
    expect_log("raft.resynced")
    cluster = RaftCluster(tmp_path, ["m1", "m2", "m3"], state_check_every_entries=5)
    await cluster.start()
    try:
        for i in range(12):
            await cluster.append("k", i)
        await cluster.converged("k", tuple(range(12)))
        leader = await cluster.leader()
        assert leader.node is not None and leader.node.stats["state_checks"] >= 2
        assert all(n.sm is not None and n.sm.divergence is None for n in cluster.running())
        victim = next(n for n in cluster.running() if n is not leader)
        assert victim.sm is not None and victim.node is not None
        # simulate a non-deterministic apply on one replica: its hash stops matching
        victim.sm._state_hash ^= 0xDEADBEEF
        for i in range(12, 24):
            await cluster.append("k", i)
        # detected (raft.state_diverged, checked by expect_log); the re-sync may follow at once
        await wait_for(lambda: victim.node is not None and victim.node.status()["voting_disabled"] == 1,
                       timeout_s=10, what="voting to be disabled")
        assert victim.store is not None and victim.store.voting_disabled
        # ... and re-syncs: its state is replaced by the leader's snapshot, then it follows on
        await wait_for(lambda: victim.node is not None and victim.node.resyncs == 1, timeout_s=20,
                       what="the diverged replica to re-sync from the leader's snapshot")
        for i in range(24, 30):
            await cluster.append("k", i)
        await cluster.converged("k", tuple(range(30)))
        leader = await cluster.leader()

        def same_hash() -> bool:
            assert leader.sm is not None and victim.sm is not None
            return leader.sm.state_hash() == victim.sm.state_hash()
        await wait_for(same_hash, timeout_s=20, what="the re-synced replica's state hash to equal the leader's")
        assert victim.node.status()["voting_disabled"] == 1, "it stays a non-voter until re-added"
    finally:
        await cluster.close()
