"""``vstore top`` on a live cluster (issue 7): it lists every MDS and chunkserver, and after a
chunkserver dies it shows the server failed, the chunks waiting for repair and the rebuild
running at a measured rate, until nothing waits any more."""

from __future__ import annotations

import asyncio
import os
import re
import sys
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
        # one top watching the failure and the whole rebuild, as an operator would: its rates
        # are averages over its own last 10 s of frames. Separate --once runs (each a new
        # process, a second or two apart on a loaded machine) could miss a 5 s rebuild.
        watch = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vstore.cli.main", "top", "-c", str(config), "--iterations", "240",
            "--interval-s", "0.5", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        rates: list[float] = []
        frame = ""
        try:
            assert watch.stdout is not None
            lines: list[str] = []
            async for raw in watch.stdout:
                line = raw.decode()
                if line.startswith("vstore top - cluster") and lines:
                    lines = []
                lines.append(line)
                rate = re.search(r"rebuild: now ([0-9.]+) MiB/s", line)
                if rate:
                    rates.append(float(rate.group(1)))
                    text = "".join(lines)
                    if "failed" in text and rates[-1] > 0:
                        frame = text
                        break
        finally:
            if watch.returncode is None:
                watch.kill()
            await watch.wait()
        assert frame, f"top never showed the failed server with the rebuild running (rates seen: {rates})"
        assert "DEGRADED" in frame and "waiting for repair" in frame
        done = await wait_for(lambda: (out := vstore("top", "-c", str(config), "--once", "--interval-s", "0.2").stdout)
                              and "waiting for repair 0" in out and out, timeout_s=120, interval_s=0.5,
                              what="the rebuild finished")
        assert re.search(r"this leader made (\d+) copies", done) and max(rates) > 0
        print(f"rebuild rate seen by vstore top: max {max(rates):.1f} MiB/s")
