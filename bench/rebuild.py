"""Rebuild benchmark: how fast the cluster restores replication after a chunkserver dies.

A cluster of 3 MDS + 4 chunkservers (processes on loopback, distinct host labels, 64 MiB
chunks, replicas 3) gets --mib of file data written through the client library (fsynced).
Then one chunkserver is killed (SIGKILL); the MDS declares it failed after
``cs_failed_after_s`` and copies each chunk it held from a surviving replica to the fourth
server. Measured: the rebuild's duration (from the first copy order to nothing left to
repair), the bytes copied, their rate, and the rate ``vstore top`` shows (its 10 s
average, sampled once a second). Baseline in the same run on the same disk: copying the same
number of bytes from one file to another with fsync (what one copy costs the disk without
any network or checksums), so the figure is a ratio. Writes bench/results/rebuild.json.

Usage: python bench/rebuild.py [--runs 3] [--mib 512]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.provenance import code_version, filesystem_of  # noqa: E402
from tests.harness.fsprocs import FsCluster, write_files  # noqa: E402

MIB = 1 << 20
TIMERS = {"cs_offline_after_s": 1, "cs_failed_after_s": 2, "write_lease_s": 2, "capability_skew_s": 1}


def local_copy_mib_s(base: Path, mib: int) -> float:
    src, dst = base / "copy-src", base / "copy-dst"
    block = os.urandom(MIB)
    with open(src, "wb") as out:
        for _ in range(mib):
            out.write(block)
        os.fsync(out.fileno())
    subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=False)
    started = time.perf_counter()
    with open(src, "rb") as inp, open(dst, "wb") as out:
        while piece := inp.read(4 * MIB):
            out.write(piece)
        os.fsync(out.fileno())
    elapsed = time.perf_counter() - started
    src.unlink()
    dst.unlink()
    return mib / elapsed


async def _cs_list(cluster: FsCluster, config: Path) -> dict:  # type: ignore[type-arg]
    from vstore.cli.tools import mds_link
    from vstore.config import load_client_config
    from vstore.wire import admin as a
    link = mds_link(load_client_config(config), "bench")
    try:
        reply = await link.call(a.CsListRequest())
        assert isinstance(reply, a.CsListReply)
        return dict(reply.summary)
    finally:
        await link.close_connections()


async def one_run(base: Path, mib: int) -> dict[str, float]:
    cluster = FsCluster(base, chunkservers=4, chunk_bytes=64 * MIB, mds_extra=TIMERS)
    async with cluster.running_fs():
        config = cluster.client_config("bench")
        files = {f"/bench/f{n}.img": os.urandom(64 * MIB) for n in range(max(1, mib // 64))}
        await write_files(config, files)
        del files
        await asyncio.sleep(3)  # the write leases end at close; let a repair round pass
        top = subprocess.Popen([sys.executable, "-m", "vstore.cli.main", "top", "-c", str(config),
                                "--interval-s", "1", "--iterations", "600"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
        before = await _cs_list(cluster, config)
        cluster.kill("cs-1")
        killed = time.monotonic()
        first_copy = done = None
        while time.monotonic() - killed < 600:
            summary = await _cs_list(cluster, config)
            waiting = sum(v for k, v in summary.items() if k.startswith("backlog_"))
            if first_copy is None and (summary.get("orders_in_flight") or summary["copied_bytes"] >
                                       before.get("copied_bytes", 0)):
                first_copy = time.monotonic()
            if first_copy is not None and not waiting and not summary.get("orders_in_flight"):
                done = time.monotonic()
                break
            await asyncio.sleep(0.1)
        top.terminate()
        frames, _ = top.communicate(timeout=30)
        assert first_copy is not None and done is not None, "the rebuild did not finish"
        copied = (summary["copied_bytes"] - before.get("copied_bytes", 0)) / MIB
        shown = [float(x) for x in re.findall(r"rebuild: now ([0-9.]+) MiB/s", frames)]
        return {"rebuild_s": done - first_copy, "failure_to_done_s": done - killed, "copied_mib": copied,
                "rebuild_mib_s": copied / (done - first_copy), "top_max_mib_s": max(shown, default=0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mib", type=int, default=512, help="file data written before the loss")
    parser.add_argument("--tmp-dir")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rebuild.json"))
    args = parser.parse_args()
    runs: list[dict[str, float]] = []
    baselines: list[float] = []
    with tempfile.TemporaryDirectory(prefix="vstore-bench-rebuild-", dir=args.tmp_dir) as name:
        base = Path(name)
        fs_info = filesystem_of(base)
        for run in range(args.runs):
            baselines.append(local_copy_mib_s(base, 256))
            run_dir = base / f"run{run}"
            run_dir.mkdir()
            figures = asyncio.run(one_run(run_dir, args.mib))
            runs.append(figures)
            print(f"run {run + 1}/{args.runs}: local copy {baselines[-1]:.1f} MiB/s; "
                  + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()), flush=True)
    medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    local = statistics.median(baselines)
    result = {"benchmark": "rebuild", "code": code_version(), "filesystem": fs_info, "runs": runs,
              "local_copy_mib_s": baselines, "median": medians, "local_copy_median_mib_s": local,
              "ratio_to_local_copy": medians["rebuild_mib_s"] / local,
              "setup": {"mds": 3, "chunkservers": 4, "replicas": 3, "chunk_mib": 64, "data_mib": args.mib,
                        **TIMERS}}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"rebuild {medians['rebuild_mib_s']:.1f} MiB/s ({medians['copied_mib']:.0f} MiB in "
          f"{medians['rebuild_s']:.1f} s), {result['ratio_to_local_copy']:.2f} of a local copy "
          f"({local:.1f} MiB/s); vstore top showed up to {medians['top_max_mib_s']:.1f} MiB/s")


if __name__ == "__main__":
    main()
