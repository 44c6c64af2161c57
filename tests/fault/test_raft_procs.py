"""Raft across real processes on loopback (tests/harness/raft_server.py): kill -9 the
leader under load, restart followers that catch up by log and by snapshot, grow the
cluster from three to five members and shrink it back while clients write.

The checker after each scenario: every acknowledged append is present exactly once on
every member, nothing appears that no client sent, and all members agree. Logs of every
process are printed when a test fails.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from tests.conftest import call_failed
from tests.harness.raftprocs import RETRYABLE, RaftProcCluster
from tests.harness.wait import wait_for

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def procs(tmp_path: Path, request: pytest.FixtureRequest):
    cluster = RaftProcCluster(tmp_path, ["m1", "m2", "m3"], compact_trailing=20)
    for node_id in ("m1", "m2", "m3"):
        cluster.start(node_id, bootstrap=["m1", "m2", "m3"])
    try:
        yield cluster
    finally:
        await cluster.close()
        if call_failed(request.node):
            print(cluster.group.dump_logs())


class Load:
    """Concurrent writers appending unique values with session sequence numbers."""

    def __init__(self, cluster: RaftProcCluster, writers: int = 4, *, name: str = "w", first_value: int = 1) -> None:
        self.cluster = cluster
        self.acked: list[int] = []
        self.attempted: set[int] = set()
        self._values = itertools.count(first_value)
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._writer(f"{name}{i}")) for i in range(writers)]

    async def _writer(self, client_id: str) -> None:
        for seq in itertools.count(1):
            if self._stop.is_set():
                return
            value = next(self._values)
            self.attempted.add(value)
            # the same (client, seq) is retried inside append() until it is acknowledged
            assert await self.cluster.append(client_id, seq, "k", value) == "ok"
            self.acked.append(value)

    async def until(self, count: int, timeout_s: float = 60) -> None:
        await wait_for(lambda: len(self.acked) >= count, timeout_s=timeout_s, what=f"{count} acknowledged writes")

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def check_members(cluster: RaftProcCluster, load: Load, members: list[str]) -> None:
    async def agreed() -> bool:
        views = {}
        for node_id in members:
            try:
                views[node_id] = await cluster.read_from(node_id, "k")
            except RETRYABLE:
                return False
        return len(set(views.values())) == 1
    await wait_for(agreed, timeout_s=60, what=f"{members} to agree", interval_s=0.2)
    values = await cluster.read_from(members[0], "k")
    assert len(values) == len(set(values)), "a retried append was applied twice"
    missing = set(load.acked) - set(values)
    assert not missing, f"acknowledged appends lost: {sorted(missing)[:20]}"
    assert set(values) <= load.attempted, "values nobody wrote"


async def test_killing_the_leader_under_load_loses_no_acknowledged_write(procs: RaftProcCluster) -> None:
    load = Load(procs)
    await load.until(40)
    old = await procs.leader()
    procs.kill(old)
    killed_at = time.monotonic()
    new = await wait_for(lambda: _new_leader(procs, old), timeout_s=20, what="a new leader", interval_s=0.05)
    failover_s = time.monotonic() - killed_at
    print(f"failover after kill -9 of {old}: {new} leads after {failover_s:.2f} s")
    acked_before = len(load.acked)
    await load.until(acked_before + 40)
    procs.start(old)
    await load.until(len(load.acked) + 20)
    await load.stop()
    await check_members(procs, load, ["m1", "m2", "m3"])


async def _new_leader(procs: RaftProcCluster, old: str) -> str | None:
    for node_id in procs.running():
        status = await procs.status(node_id)
        if status and status.get("role") == "leader" and node_id != old:
            procs.leader_hint = node_id
            return node_id
    return None


async def test_a_restarted_follower_catches_up_by_log_and_after_compaction_by_snapshot(procs: RaftProcCluster) -> None:
    load = Load(procs, writers=2)
    await load.until(10)
    await load.stop()
    leader = await procs.leader()
    follower = next(n for n in ("m1", "m2", "m3") if n != leader)
    # briefly away: fewer entries than the compaction keeps (20), so the log suffices
    procs.kill(follower)
    for seq in range(1, 6):
        await procs.append("solo", seq, "k", 10_000 + seq)
        load.attempted.add(10_000 + seq)
        load.acked.append(10_000 + seq)
    procs.start(follower)
    await wait_for(lambda: _caught_up(procs, follower), timeout_s=30, what=f"{follower} to catch up", interval_s=0.1)
    status = await procs.status(follower)
    assert status is not None and status["snapshots_installed"] == 0
    # long away: the leader compacts past it, so it needs a snapshot
    procs.kill(follower)
    more = Load(procs, writers=2, name="later", first_value=100_000)
    await more.until(150)
    await more.stop()
    leader = await procs.leader()
    await wait_for(lambda: _compacted_past(procs, leader, follower), timeout_s=30, what="leader log compaction",
                   interval_s=0.1)
    procs.start(follower)
    await wait_for(lambda: _caught_up(procs, follower), timeout_s=60, what=f"{follower} to catch up by snapshot",
                   interval_s=0.1)
    status = await procs.status(follower)
    assert status is not None and status["snapshots_installed"] >= 1
    load.acked.extend(more.acked)
    load.attempted |= more.attempted
    await check_members(procs, load, ["m1", "m2", "m3"])


async def _caught_up(procs: RaftProcCluster, node_id: str) -> bool:
    leader = procs.leader_hint or await procs.leader()
    ls, fs = await procs.status(leader), await procs.status(node_id)
    return bool(ls and fs and fs["applied"] >= ls["commit"] - 5 and fs["applied"] > 0)


async def _compacted_past(procs: RaftProcCluster, leader: str, follower: str) -> bool:
    ls = await procs.status(leader)
    return bool(ls and ls["first_index"] > 60)


async def test_the_cluster_grows_to_five_and_shrinks_back_to_three_under_load(procs: RaftProcCluster) -> None:
    load = Load(procs, writers=2)
    await load.until(10)
    for node_id in ("m4", "m5"):
        procs.add_node_id(node_id)
    for node_id in ("m4", "m5"):
        procs.start(node_id, join=True)  # empty data dir, no bootstrap: waits to be added
        await procs.member("add", node_id)
        await _retry_until_ok(lambda n=node_id: procs.member("promote", n))
    leader = await procs.leader()
    status = await procs.status(leader)
    assert status is not None and sorted(status["voters"]) == ["m1", "m2", "m3", "m4", "m5"]
    await load.until(len(load.acked) + 20)
    for node_id in ("m1", "m2"):
        await _retry_until_ok(lambda n=node_id: procs.member("remove", n))
    leader = await procs.leader()
    status = await procs.status(leader)
    assert status is not None and sorted(status["voters"]) == ["m3", "m4", "m5"]
    await load.until(len(load.acked) + 20)
    await load.stop()
    await check_members(procs, load, ["m3", "m4", "m5"])


async def _retry_until_ok(action, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            await action()
            return
        except RETRYABLE:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)
