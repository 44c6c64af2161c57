"""``vstore status`` (issue 7): exit 0 on a healthy 3 MDS + 3 chunkserver cluster, 1 with a
chunkserver dead (it says which counts are off), 2 when no MDS leads; ``--json`` carries the
same. And the pure classification on its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import call_failed
from tests.harness.fsprocs import FsCluster
from tests.harness.wait import wait_for
from vstore.admin.model import assess

pytestmark = pytest.mark.timeout(180)


def status(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vstore.cli.main", "status", "-c", str(config), *extra],
                          capture_output=True, text=True, timeout=60)


def test_assess_classifies_health() -> None:
    up = {"role": "leader"}
    follower = {"role": "follower"}
    chunks = {"cs_total": 3, "cs_online": 3, "lost": 0}
    assert assess({"a": up, "b": follower, "c": follower}, chunks) == ("healthy", [])
    health, reasons = assess({"a": up, "b": None, "c": follower}, chunks)
    assert health == "degraded" and reasons == ["MDS b does not answer"]
    health, reasons = assess({"a": up}, {**chunks, "cs_online": 2, "backlog_below_target": 5})
    assert health == "degraded" and "1 of 3 chunkservers not online" in reasons
    assert "5 chunk(s) below their target" in reasons
    assert assess({"a": None, "b": follower}, chunks)[0] == "unavailable"


async def test_status_follows_the_cluster_from_healthy_to_degraded_to_unavailable(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    cluster = FsCluster(tmp_path, ("m1", "m2", "m3"), mds_extra={"cs_offline_after_s": 1, "cs_failed_after_s": 30})
    async with cluster.running_fs(dump_logs_if=lambda: call_failed(request.node)):
        config = cluster.client_config("status-client")
        # right after start the leader may still be in safe mode, waiting for reports: degraded
        ok = await wait_for(lambda: (r := status(config)).returncode == 0 and r, timeout_s=60, interval_s=0.5,
                            what="status exits 0 once the new cluster is healthy")
        assert "HEALTHY" in ok.stdout and "chunkservers 3/3 online" in ok.stdout
        data = json.loads(status(config, "--json").stdout)
        assert data["health"] == "healthy" and len(data["mds"]) == 3

        cluster.kill(cluster.cs_names[0])
        degraded = await wait_for(lambda: (r := status(config)).returncode == 1 and r, timeout_s=30,
                                  what="status exits 1 with a chunkserver dead", interval_s=0.5)
        assert "DEGRADED" in degraded.stdout and "1 of 3 chunkservers not online" in degraded.stdout

        leader = await cluster.leader()
        others = [m for m in cluster.ids if m != leader]
        cluster.kill(others[0])
        cluster.kill(others[1])  # the leader alone has no quorum: it steps down
        down = await wait_for(lambda: (r := status(config)).returncode == 2 and r, timeout_s=30,
                              what="status exits 2 without a quorum", interval_s=0.5)
        assert "UNAVAILABLE" in down.stdout
