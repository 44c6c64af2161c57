"""``vstore top`` on a live cluster (issue 7): it lists every MDS and chunkserver, and after a
chunkserver dies it shows the server failed, the chunks waiting for repair and the rebuild
running at a measured rate, until nothing waits any more."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.conftest import call_failed
from tests.harness.fsprocs import FsCluster, write_files
from tests.harness.procs import vstore
from tests.harness.wait import wait_for

pytestmark = pytest.mark.timeout(240)

TIMERS = {"cs_offline_after_s": 1, "cs_failed_after_s": 3, "write_lease_s": 2, "capability_skew_s": 1}


async def test_top_shows_a_chunkserver_loss_and_the_rebuild(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    cluster = FsCluster(tmp_path, chunkservers=4, chunk_bytes=1 << 20, mds_extra=TIMERS)
    async with cluster.running_fs(dump_logs_if=lambda: call_failed(request.node)):
        config = cluster.client_config("top")
        await write_files(config, {f"/ckpt/pages-{n}.img": os.urandom(12 << 20) for n in range(2)})
        frame = vstore("top", "-c", str(config), "--once", "--interval-s", "0.5").stdout
        assert "HEALTHY" in frame and frame.count(" online ") == 4, frame
        assert all(f" {m} " in frame for m in cluster.ids)

        cluster.kill("cs-4")
        rates: list[float] = []

        def rebuilding() -> str | None:
            out = vstore("top", "-c", str(config), "--once", "--interval-s", "1").stdout
            rate = re.search(r"rebuild: now ([0-9.]+) MiB/s", out)
            if rate:
                rates.append(float(rate.group(1)))
            return out if "failed" in out and rates and rates[-1] > 0 else None
        frame = await wait_for(rebuilding, timeout_s=90, interval_s=0.2, what="top showing the rebuild")
        assert "DEGRADED" in frame and "waiting for repair" in frame
        done = await wait_for(lambda: (out := vstore("top", "-c", str(config), "--once", "--interval-s", "0.2").stdout)
                              and "waiting for repair 0" in out and out, timeout_s=120, interval_s=0.5,
                              what="the rebuild finished")
        assert re.search(r"this leader made (\d+) copies", done) and max(rates) > 0
        print(f"rebuild rate seen by vstore top: max {max(rates):.1f} MiB/s")
