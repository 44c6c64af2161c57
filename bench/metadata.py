"""Metadata benchmark: create, stat (getattr and lookup), rename and unlink per second against
a 3-MDS cluster of real ``vstore serve`` processes on loopback (every Raft commit fsynced),
with 1 and with 32 concurrent clients, against the same operations on the local disk
measured in the same run.

Each client is its own MdsLink (own session, own connections), works in its own directory
and issues its operations one after the other. Per phase, every client does all of its N
files: all creates, then getattr of each file's inode, then lookup of each name, then a
rename of each file within its directory, then all unlinks. Each phase is timed from the
first client starting it to the last one finishing it: ops/s, and per-operation latency
p50 / p99 (ms). Every configuration is repeated --runs times, each on a fresh cluster;
the JSON has the medians and every run.

Load generator. With 2 cores shared by 3 MDS processes and the client side, one Python
process driving 32 clients could be the bottleneck, so 32 clients are measured both from
this process (one event loop) and spread over --workers worker processes (this script in
--worker mode, each with its own event loop and its own MdsLinks to the same cluster),
interleaved run by run; the 32-client figures are those of the generator with the higher
throughput (geometric mean over the five operations), and "load_generator" says which one
and with what numbers.

Baseline: os.open(O_CREAT|O_EXCL)+close, os.stat (for both getattr and lookup), os.rename
and os.unlink in a temp dir on the same filesystem as the cluster's data, from 1 and 32
threads (one directory per thread, the same file counts). No fsync there: the local figures
are page-cache speed, vstore's are durable on a quorum. ratio_to_local_disk is
vstore / local for each figure (ops/s below 1 = slower; latency above 1 = slower).

Also recorded per phase: CPU used (in cores) by the leader, the followers and the load
generator, which says where the time goes; by everything else on the machine (kernel
threads such as the ext4 journal, and other people's jobs: figures taken while that is
well above ~0.1 core are disturbed); and the leader's Raft counters (Ready cycles, fsynced
log writes, operations per log write). The on-disk and memory figures at 1M files come
unchanged from bench/results/metadata_fsm.json (bench/metadata_fsm.py measures them).

Writes bench/results/metadata.json and prints a table.
Usage: python bench/metadata.py [--runs 3] [--files-1 2000] [--files-32 500] [--workers 2]
       python bench/metadata.py --profile-create OUT.txt   (py-spy on the leader during a
                                                             32-client create phase; no JSON)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.provenance import code_version, filesystem_of, proc_cpu_s, system_busy_s, top_frames  # noqa: E402,E501

from tests.harness.mdsprocs import MdsProcCluster  # noqa: E402
from vstore.client.mds_link import MdsLink, client_node_id  # noqa: E402
from vstore.metadata.fsm.schema import ROOT_INODE  # noqa: E402
from vstore.net import Auth  # noqa: E402
from vstore.wire import Identity  # noqa: E402

OPS = ("create", "getattr", "lookup", "rename", "unlink")
FSM_RESULTS = ROOT / "bench" / "results" / "metadata_fsm.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- the client side (in this process, or in a worker process) ------------------------------------

class Clients:
    """``count`` clients, numbered from ``first``: each an MdsLink with its own directory."""

    def __init__(self, links: list[MdsLink], first: int, files: int) -> None:
        self.links = links
        self.first = first
        self.files = files
        self.dirs: list[int] = []
        self.inodes: list[list[int]] = [[] for _ in links]

    async def setup(self) -> None:
        for k, link in enumerate(self.links):
            self.dirs.append((await link.mkdir(ROOT_INODE, f"c{self.first + k:03d}".encode())).inode)

    async def phase(self, op: str) -> dict[str, Any]:
        """Every client runs ``op`` on all of its files, sequentially; clients concurrently."""
        latencies: list[float] = []

        async def client(k: int) -> None:
            link, directory, inodes = self.links[k], self.dirs[k], self.inodes[k]
            clock = time.perf_counter
            for i in range(self.files):
                name = f"f{i:06d}".encode()
                started = clock()
                if op == "create":
                    inodes.append((await link.create(directory, name)).inode)
                elif op == "getattr":
                    await link.getattr(inodes[i])
                elif op == "lookup":
                    await link.lookup(directory, name)
                elif op == "rename":
                    await link.rename(directory, name, directory, f"r{i:06d}".encode())
                else:
                    await link.unlink(directory, f"r{i:06d}".encode())
                latencies.append(clock() - started)

        cpu = time.process_time()
        started = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
        await asyncio.gather(*(client(k) for k in range(len(self.links))))
        return {"start": started, "end": time.monotonic(), "cpu_s": time.process_time() - cpu,
                "latencies": latencies}


def make_link(addresses: list[tuple[str, int]], auth: Auth) -> MdsLink:
    # the same settings as MdsProcCluster.link()
    return MdsLink(addresses, auth, deadline_s=60.0, attempt_deadline_s=3.0, lanes=64, host="bench-host")


async def worker_main(args: argparse.Namespace) -> None:
    """--worker: open the links, make the directories, then run the phases named on stdin
    (one JSON line out per phase); EOF on stdin ends the worker."""
    addresses = [(h, int(p)) for h, _, p in (a.rpartition(":") for a in args.addresses.split(","))]
    auth = Auth(Path(args.secret_file).read_bytes(),
                Identity(args.cluster_id, client_node_id(f"bench-w{args.first_client}"), "client"))
    links = [make_link(addresses, auth) for _ in range(args.clients)]
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    try:
        for link in links:
            await link.start()
        clients = Clients(links, args.first_client, args.files)
        await clients.setup()
        print(json.dumps({"ready": True}), flush=True)
        while line := (await stdin.readline()).decode().strip():
            print(json.dumps(await clients.phase(line)), flush=True)
    finally:
        for link in links:
            await link.close(expire_session=False)


class WorkerPool:
    """The clients spread over worker processes, driven over their stdin/stdout."""

    def __init__(self, cluster: MdsProcCluster, clients: int, workers: int, files: int) -> None:
        self.cluster = cluster
        self.shares = [clients // workers + (1 if w < clients % workers else 0) for w in range(workers)]
        self.files = files
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        addresses = ",".join(self.cluster.address(i) for i in self.cluster.ids)
        first = 0
        for share in self.shares:
            self.procs.append(await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--worker", "--addresses", addresses,
                "--secret-file", str(self.cluster.secret_file), "--cluster-id", self.cluster.cluster_id,
                "--clients", str(share), "--first-client", str(first), "--files", str(self.files),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, limit=1 << 26))
            first += share
        for proc in self.procs:
            await self._reply(proc)

    async def _reply(self, proc: asyncio.subprocess.Process) -> dict[str, Any]:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 600)
        if not line:
            raise RuntimeError(f"load generator worker {proc.pid} exited (code {await proc.wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    async def phase(self, op: str) -> dict[str, Any]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{op}\n".encode())
            await proc.stdin.drain()
        cpu = time.process_time()
        replies = [await self._reply(proc) for proc in self.procs]
        return {"start": min(r["start"] for r in replies), "end": max(r["end"] for r in replies),
                "cpu_s": sum(r["cpu_s"] for r in replies) + time.process_time() - cpu,
                "latencies": [x for r in replies for x in r["latencies"]]}

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None and proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                pass
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


# ---- measuring against a cluster ------------------------------------------------------------------------



RAFT_COUNTERS = ("readies", "fsyncs", "entries_persisted", "entries_applied", "messages_sent")


async def raft_counters(cluster: MdsProcCluster) -> dict[str, dict[str, int]]:
    """Each MDS's Raft counters (vstore/metadata/raft/node.py RaftNode.stats)."""
    out = {}
    for node_id in cluster.ids:
        status = await cluster.status(node_id)
        out[node_id] = {k: int(status.raft.get(k, 0)) if status else 0 for k in RAFT_COUNTERS}  # type: ignore[arg-type]
    return out




def summary(result: dict[str, Any], count: int) -> dict[str, float]:
    lat = sorted(result["latencies"])
    assert len(lat) == count, (len(lat), count)
    elapsed = result["end"] - result["start"]
    return {"ops": count, "elapsed_s": elapsed, "ops_per_s": count / elapsed,
            "latency_ms_p50": lat[len(lat) // 2] * 1e3, "latency_ms_p99": lat[int(len(lat) * 0.99)] * 1e3}


async def bench_vstore(root: Path, clients: int, files: int, workers: int,
                       on_phase: Callable[[str, MdsProcCluster, str], Any] | None = None) -> dict[str, Any]:
    """One run on a fresh cluster: ``workers`` 0 drives the clients from this process."""
    root.mkdir(parents=True)
    cluster = MdsProcCluster(root)
    pool: WorkerPool | None = None
    try:
        cluster.start_all()
        await cluster.leader()
        await cluster.converged()
        if workers:
            pool = WorkerPool(cluster, clients, workers, files)
            await pool.start()
            driver: Clients | WorkerPool = pool
        else:
            driver = Clients([await cluster.link() for _ in range(clients)], 0, files)
            await driver.setup()
        leader = await cluster.leader()
        pids = {n: cluster.group.procs[n].pid for n in cluster.ids}
        phases: dict[str, Any] = {}
        for op in OPS:
            counters = await raft_counters(cluster)
            before = {n: proc_cpu_s(pid) for n, pid in pids.items()}
            busy = system_busy_s()
            task = asyncio.ensure_future(on_phase(op, cluster, leader)) if on_phase else None
            result = await driver.phase(op)
            if task is not None:
                await task
            figures = summary(result, clients * files)
            elapsed = figures["elapsed_s"]
            busy = (system_busy_s() - busy) / elapsed
            used = {n: (proc_cpu_s(pid) - before[n]) / elapsed for n, pid in pids.items()}
            figures["cpu_cores"] = {"leader": used[leader],
                                    "followers": sorted(v for n, v in used.items() if n != leader),
                                    "load_generator": result["cpu_s"] / elapsed,
                                    # anything else on the machine (other users' jobs): noise if not ~0
                                    "other_processes": max(0.0, busy - sum(used.values()) - result["cpu_s"] / elapsed)}
            after = await raft_counters(cluster)
            delta = {k: after[leader][k] - counters[leader][k] for k in RAFT_COUNTERS}
            figures["leader_raft"] = {**delta, "ops_per_fsync": figures["ops"] / max(1, delta["fsyncs"]),
                                      "readies_per_s": delta["readies"] / elapsed}
            phases[op] = figures
        if await cluster.leader() != leader:
            raise RuntimeError("the MDS leader changed during the run: figures are not comparable")
        return phases
    finally:
        if pool is not None:
            await pool.close()
        await cluster.close()


# ---- the local disk baseline ------------------------------------------------------------------------

def bench_local(root: Path, threads: int, files: int) -> dict[str, Any]:
    dirs = [root / f"t{t:03d}" for t in range(threads)]
    for d in dirs:
        d.mkdir(parents=True)
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    phases: dict[str, Any] = {}
    for op in OPS:
        start = threading.Barrier(threads)

        def one(d: Path, op: str = op, start: threading.Barrier = start) -> tuple[float, float, list[float]]:
            names = [str(d / f"f{i:06d}") for i in range(files)]
            renamed = [str(d / f"r{i:06d}") for i in range(files)]
            clock = time.perf_counter
            out = []
            start.wait()
            began = time.monotonic()
            for i in range(files):
                t = clock()
                if op == "create":
                    os.close(os.open(names[i], flags, 0o644))
                elif op in ("getattr", "lookup"):
                    os.stat(names[i])
                elif op == "rename":
                    os.rename(names[i], renamed[i])
                else:
                    os.unlink(renamed[i])
                out.append(clock() - t)
            return began, time.monotonic(), out

        busy, cpu = system_busy_s(), time.process_time()
        with ThreadPoolExecutor(threads) as pool:
            results = [f.result() for f in [pool.submit(one, d) for d in dirs]]
        phases[op] = summary({"start": min(r[0] for r in results), "end": max(r[1] for r in results),
                              "latencies": [x for r in results for x in r[2]]}, threads * files)
        elapsed = phases[op]["elapsed_s"]
        phases[op]["cpu_cores"] = {"benchmark": (time.process_time() - cpu) / elapsed,
                                   "other_processes": max(0.0, (system_busy_s() - busy - time.process_time() + cpu)
                                                          / elapsed)}
    shutil.rmtree(root)
    return phases


# ---- report ---------------------------------------------------------------------------------------

def medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys = ("ops_per_s", "latency_ms_p50", "latency_ms_p99")
    return {op: {k: statistics.median(r[op][k] for r in runs) for k in keys} for op in OPS}


def with_ratios(vstore: dict[str, dict[str, float]], local: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {op: {**figures, "ratio_to_local_disk": {k: v / local[op][k] for k, v in figures.items()}}
            for op, figures in vstore.items()}


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))




def fmt_ratio(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.2g}"


def print_table(result: dict[str, Any]) -> None:
    rows = [("local disk", 1, result["local_disk"]["c1"]["medians"], None),
            ("vstore", 1, result["vstore"]["c1"]["medians"], True),
            ("local disk", 32, result["local_disk"]["c32"]["medians"], None),
            ("vstore", 32, result["vstore"]["c32"]["medians"], True)]
    print(f"\nmedians of {result['runs']} runs; ms = per-operation latency; x = vstore / local disk "
          f"(32-client vstore load generator: {result['load_generator']['chosen']})")
    print(f"{'':<12}{'cl':>3}  {'op':<8}{'ops/s':>9}{'x':>8}{'p50 ms':>9}{'x':>7}{'p99 ms':>9}{'x':>7}")
    for name, clients, table, ratios in rows:
        for op in OPS:
            m = table[op]
            r = m.get("ratio_to_local_disk") if ratios else None
            cells = [f"{m['ops_per_s']:>9.0f}", f"{fmt_ratio(r['ops_per_s']) if r else '':>8}",
                     f"{m['latency_ms_p50']:>9.3f}", f"{fmt_ratio(r['latency_ms_p50']) if r else '':>7}",
                     f"{m['latency_ms_p99']:>9.3f}", f"{fmt_ratio(r['latency_ms_p99']) if r else '':>7}"]
            print(f"{name:<12}{clients:>3}  {op:<8}{''.join(cells)}")
    lg = result["load_generator"]
    print("\n32-client load generators (median ops/s): "
          + "; ".join(f"{k}: " + ", ".join(f"{op} {v[op]['ops_per_s']:.0f}" for op in OPS)
                      for k, v in lg["medians_ops_per_s"].items()))
    other = max(c["other_processes_max"] for k in ("c1", "c32", "c32_other_load_generator")
                for c in result["vstore"][k]["cpu_cores_median"].values())
    print(f"CPU of other processes on the machine (max over phases and runs): {other:.2f} cores")
    same = [op for op, o in lg["runs_overlap"].items() if o]
    print(f"multi / single (geometric mean): {lg['multi_over_single']:.2f}; run ranges overlap for: "
          f"{', '.join(same) or 'none'}")
    cpu = result["vstore"]["c32"]["cpu_cores_median"]
    print("CPU in cores, 32 clients (leader / followers / load generator): "
          + "; ".join(f"{op} {c['leader']:.2f}/{c['followers'][0]:.2f},{c['followers'][1]:.2f}/"
                      f"{c['load_generator']:.2f}" for op, c in cpu.items()))


def cpu_medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for op in OPS:
        cores = [r[op]["cpu_cores"] for r in runs]
        out[op] = {"leader": statistics.median(c["leader"] for c in cores),
                   "followers": [statistics.median(c["followers"][i] for c in cores) for i in range(2)],
                   "load_generator": statistics.median(c["load_generator"] for c in cores),
                   "other_processes_max": max(c["other_processes"] for c in cores)}
    return out


async def bench_all(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    single = "single process (one event loop, 32 MdsLinks)"
    multi = f"{args.workers} worker processes ({32 // args.workers} clients each, own event loop each)"
    local: dict[str, list[Any]] = {"c1": [], "c32": []}
    vstore: dict[str, list[Any]] = {"c1": [], "c32_single": [], "c32_multi": []}
    for run in range(args.runs):  # interleaved, so drift in machine load hits every configuration alike
        base = tmp / f"run{run}"
        print(f"run {run + 1}/{args.runs}: local disk", flush=True)
        local["c1"].append(bench_local(base / "local1", 1, args.files_1))
        local["c32"].append(bench_local(base / "local32", 32, args.files_32))
        for key, clients, files, workers in (("c1", 1, args.files_1, 0), ("c32_single", 32, args.files_32, 0),
                                             ("c32_multi", 32, args.files_32, args.workers)):
            print(f"run {run + 1}/{args.runs}: vstore {key}", flush=True)
            vstore[key].append(await bench_vstore(base / f"vstore-{key}", clients, files, workers))
            shutil.rmtree(base / f"vstore-{key}")
    local_medians = {k: medians(v) for k, v in local.items()}
    vstore_medians = {k: medians(v) for k, v in vstore.items()}
    gm = {k: geomean([vstore_medians[k][op]["ops_per_s"] for op in OPS]) for k in ("c32_single", "c32_multi")}
    chosen = "c32_multi" if gm["c32_multi"] > gm["c32_single"] else "c32_single"
    spread = {k: {op: (min(r[op]["ops_per_s"] for r in vstore[k]), max(r[op]["ops_per_s"] for r in vstore[k]))
                  for op in OPS} for k in ("c32_single", "c32_multi")}
    overlap = {op: spread["c32_single"][op][0] <= spread["c32_multi"][op][1]
               and spread["c32_multi"][op][0] <= spread["c32_single"][op][1] for op in OPS}
    per_op_winner = {op: ("multi" if vstore_medians["c32_multi"][op]["ops_per_s"]
                          > vstore_medians["c32_single"][op]["ops_per_s"] else "single") for op in OPS}
    return {
        "local_disk": {k: {"medians": local_medians[k], "runs": v} for k, v in local.items()},
        "vstore": {
            "c1": {"load_generator": "single process (one event loop, 1 MdsLink)", "medians": with_ratios(vstore_medians["c1"],
                                                                                       local_medians["c1"]),
                   "cpu_cores_median": cpu_medians(vstore["c1"]), "runs": vstore["c1"]},
            "c32": {"load_generator": single if chosen == "c32_single" else multi,
                    "medians": with_ratios(vstore_medians[chosen], local_medians["c32"]),
                    "cpu_cores_median": cpu_medians(vstore[chosen]), "runs": vstore[chosen]},
            "c32_other_load_generator": {
                "load_generator": multi if chosen == "c32_single" else single,
                "medians": with_ratios(vstore_medians["c32_multi" if chosen == "c32_single" else "c32_single"],
                                       local_medians["c32"]),
                "cpu_cores_median": cpu_medians(vstore["c32_multi" if chosen == "c32_single" else "c32_single"]),
                "runs": vstore["c32_multi" if chosen == "c32_single" else "c32_single"]},
        },
        "load_generator": {
            "chosen": single if chosen == "c32_single" else multi,
            "rule": "the 32-client generator with the higher geometric mean of median ops/s over the five "
                    "operations; both measured in every run, interleaved, each on a fresh cluster",
            "geomean_ops_per_s": {"single_process": gm["c32_single"], "multi_process": gm["c32_multi"]},
            "multi_over_single": gm["c32_multi"] / gm["c32_single"],
            "per_op_faster": per_op_winner,
            # True where the two generators' ranges over the runs overlap: the difference is within
            # run-to-run noise at this number of runs
            "runs_overlap": overlap,
            "ops_per_s_min_max": {"single_process": spread["c32_single"], "multi_process": spread["c32_multi"]},
            "medians_ops_per_s": {"single_process": vstore_medians["c32_single"],
                                  "multi_process": vstore_medians["c32_multi"]},
        },
    }


async def profile_create(args: argparse.Namespace, tmp: Path) -> None:
    """py-spy on the leader for --duration-s from 1 s into a 32-client phase (--profile-op,
    default create): wall-clock samples of every thread, idle ones included, so each
    thread's table says where its time goes. Writes the tables to ``args.profile_create``."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = Path(args.profile_create)

    async def on_phase(op: str, cluster: MdsProcCluster, leader: str) -> None:
        if op != args.profile_op:
            return
        pid = cluster.group.procs[leader].pid
        await asyncio.sleep(1.0)
        raw = out.with_suffix(".raw")
        gil = out.with_suffix(".gil.raw")
        for extra, path in ((["--idle"], raw), (["--gil"], gil)):
            proc = await asyncio.create_subprocess_exec(
                spy, "record", "--pid", str(pid), "--duration", str(args.duration_s // 2), "--format", "raw",
                "--threads", *extra, "--output", str(path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await proc.wait()
        text = (f"py-spy on the leader ({leader}, pid {pid}), 32 clients, {op} phase\n\n"
                f"== wall clock, idle included ({args.duration_s // 2} s) ==\n{top_frames(raw)}\n"
                f"== holding the GIL ({args.duration_s // 2} s) ==\n{top_frames(gil)}")
        out.write_text(text)
        print(text)

    workers = args.workers if args.profile_multi else 0
    await bench_vstore(tmp / "profile", 32, args.files_32, workers, on_phase)






async def main_async(args: argparse.Namespace) -> dict[str, Any] | None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # finally blocks still run
    tmp_parent = args.tmp_dir or tempfile.gettempdir()
    with tempfile.TemporaryDirectory(prefix="vstore-bench-metadata-", dir=tmp_parent) as name:
        tmp = Path(name)
        if args.profile_create:
            await profile_create(args, tmp)
            return None
        started = time.monotonic()
        code = code_version()
        result = await bench_all(args, tmp)
        if code_version()["vstore_sources_sha256"] != code["vstore_sources_sha256"]:
            raise RuntimeError("the sources under vstore/ changed during the run: the figures mix two versions")
        fs = filesystem_of(tmp)
    fsm = json.loads(FSM_RESULTS.read_text()) if FSM_RESULTS.exists() else None
    return {
        "benchmark": "metadata",
        "machine": {"cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
                    "python": platform.python_version(), "kernel": platform.release(),
                    "platform": platform.platform()},
        "code": code,
        "cluster": "3 MDS processes (vstore serve) on loopback, heartbeat 50 ms, election 500 ms; every Raft "
                   "commit fsynced (LMDB sync=True)",
        "runs": args.runs, "files_per_client": {"c1": args.files_1, "c32": args.files_32},
        "phases": "per client, sequentially: create N files; getattr each inode; lookup each name; rename each "
                  "within its directory; unlink each. Clients concurrently, each its own MdsLink and directory.",
        "filesystem": fs,
        "baseline": "local disk, same filesystem as the cluster's data, same run: os.open(O_CREAT|O_EXCL)+close, "
                    "os.stat (for getattr and lookup), os.rename, os.unlink; 1 and 32 threads, one directory "
                    "each; no fsync (page cache), while vstore's mutations are fsynced on a quorum",
        "ratio_to_local_disk": "vstore / local disk per figure: ops/s < 1 is slower, latency > 1 is slower",
        "cpu_cores": "per phase, CPU seconds / phase seconds: leader, followers, load generator (all its processes), "
                     "other_processes = the rest of the machine (kernel threads, other jobs: noise when well above "
                     "~0.1)",
        "load_generator": result.pop("load_generator"),
        **result,
        "state_at_1m_files": {
            "note": "measured by bench/metadata_fsm.py (the state machine alone, not re-run here); copied unchanged "
                    "from bench/results/metadata_fsm.json",
            "figures": fsm,
        },
        "elapsed_s": time.monotonic() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--files-1", type=int, default=2000, help="files for the 1-client configuration")
    parser.add_argument("--files-32", type=int, default=500, help="files per client with 32 clients")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the multi-process generator")
    parser.add_argument("--tmp-dir", help="where the cluster and the local-disk baseline live (default: $TMPDIR)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "metadata.json"))
    parser.add_argument("--profile-create", metavar="OUT", help="only run py-spy (pip install py-spy) on the leader "
                        "during a 32-client phase; write its top frames to OUT (no JSON)")
    parser.add_argument("--profile-multi", action="store_true", help="with --profile-create: use the workers")
    parser.add_argument("--profile-op", default="create", choices=OPS, help="with --profile-create: the phase")
    parser.add_argument("--duration-s", type=int, default=10, help="py-spy duration for --profile-create")
    # worker mode (started by this script)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--addresses", help=argparse.SUPPRESS)
    parser.add_argument("--secret-file", help=argparse.SUPPRESS)
    parser.add_argument("--cluster-id", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--first-client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--files", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        try:
            asyncio.run(worker_main(args))
        except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent cleans up
            pass
        return
    try:
        result = asyncio.run(main_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, SIGTERM: everything is stopped by now
        sys.exit(130)
    if result is None:
        return
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"\nwrote {args.out} ({result['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
