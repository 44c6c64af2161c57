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
    cluster = RaftCluster(tmp_path, ["m1", "m2", "m3"], compact_trailing_entries=5)
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
