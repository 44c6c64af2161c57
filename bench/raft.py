"""Raft benchmark: vstore's Raft (3 processes on loopback, every commit fsynced) against
pysyncobj (3 processes, no fsync at all), measured in the same run.

Figures, for each implementation:
  * commits/s and latency p50/p99 with 1 and with 256 commands in flight, proposed from
    inside the leader process (what the consensus layer sustains; pysyncobj is measured
    the same way);
  * for vstore also through a client over RPC (the path a metadata client takes);
  * failover: time from kill -9 of the leader until a write succeeds again (10 kills:
    median and max).

pysyncobj is installed into bench/.venv-pysyncobj for the benchmark only.
Writes bench/results/raft.json (all figures, and vstore / pysyncobj ratios).
Usage: python bench/raft.py [--kills 10] [--tick-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness.kvproto import RaftBenchRequest  # noqa: E402
from tests.harness.procs import free_port  # noqa: E402
from tests.harness.raftprocs import RaftProcCluster  # noqa: E402

PEER_VENV = ROOT / "bench" / ".venv-pysyncobj"
COUNTS = {1: 3000, 256: 30000}


# ---- vstore -------------------------------------------------------------------------------------

async def bench_vstore(root: Path, kills: int, tick_ms: int) -> dict[str, object]:
    cluster = RaftProcCluster(root, ["m1", "m2", "m3"], tick_ms=tick_ms, election_tick=10)
    for node_id in ("m1", "m2", "m3"):
        cluster.start(node_id, bootstrap=["m1", "m2", "m3"])
    try:
        leader = await cluster.leader()
        result: dict[str, object] = {}
        for inflight, count in COUNTS.items():
            reply = (await cluster.client(leader).call(RaftBenchRequest(count=count, inflight=inflight),
                                                       deadline_s=600)).message
            result[f"in_leader_w{inflight}"] = {"ops_per_s": reply.ops_per_s, "latency_us_p50": reply.latency_us_p50,
                                                "latency_us_p99": reply.latency_us_p99}
        for inflight, count in ((1, 1000), (256, 10000)):
            result[f"rpc_client_w{inflight}"] = await _client_load(cluster, inflight, count)
        result["failover_s"] = await _failovers(cluster, kills)
        return result
    finally:
        await cluster.close()


async def _client_load(cluster: RaftProcCluster, inflight: int, count: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    numbers = iter(range(count))

    async def worker(w: int) -> None:
        seq = 0
        for n in numbers:
            seq += 1
            started = loop.time()
            await cluster.append(f"load{inflight}-{w}", seq, "k", n)
            latencies.append(loop.time() - started)

    started = loop.time()
    await asyncio.gather(*(worker(w) for w in range(inflight)))
    elapsed = loop.time() - started
    latencies.sort()
    return {"ops_per_s": count / elapsed, "latency_us_p50": latencies[len(latencies) // 2] * 1e6,
            "latency_us_p99": latencies[int(len(latencies) * 0.99)] * 1e6}


async def _failovers(cluster: RaftProcCluster, kills: int) -> dict[str, list[float]]:
    """Per kill: seconds until a survivor reports itself leader (the election), and until a
    client's write succeeds again (what an application sees)."""
    elected, writable = [], []
    for k in range(kills):
        leader = await cluster.leader()
        await cluster.append("failover", 2 * k + 1, "f", k)
        survivors = [n for n in cluster.ports if n != leader]
        cluster.kill(leader)
        cluster.leader_hint = None
        started = time.monotonic()
        write = asyncio.create_task(cluster.append("failover", 2 * k + 2, "f", -k))
        while True:
            statuses = await asyncio.gather(*(cluster.status(n) for n in survivors))
            if any(s and s.get("role") == "leader" for s in statuses):
                elected.append(time.monotonic() - started)
                break
            await asyncio.sleep(0.01)
        await write
        writable.append(time.monotonic() - started)
        cluster.start(leader)
        await asyncio.sleep(1.0)  # let it rejoin before the next kill
    return {"elected": elected, "writable": writable}


# ---- pysyncobj --------------------------------------------------------------------------------------

def peer_python() -> Path:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "pysyncobj"], check=True)
    return python


class PeerCluster:
    def __init__(self, python: Path, log_dir: Path) -> None:
        self.python = python
        self.log_dir = log_dir
        self.raft_ports = [free_port() for _ in range(3)]
        self.control_ports = [free_port() for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None, None, None]

    def start(self, i: int) -> None:
        me = f"127.0.0.1:{self.raft_ports[i]}"
        partners = [f"127.0.0.1:{p}" for j, p in enumerate(self.raft_ports) if j != i]
        log = open(self.log_dir / f"pysyncobj-{i}.log", "ab")
        self.procs[i] = subprocess.Popen([str(self.python), str(ROOT / "bench" / "peers" / "pysyncobj_node.py"), me,
                                          str(self.control_ports[i]), *partners], stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def wait_up(self, i: int, timeout_s: float = 30) -> None:
        """Until the restarted member answers and the cluster commits with it back."""
        deadline = time.monotonic() + timeout_s
        while self.command(i, "status", 2) is None:
            proc = self.procs[i]
            if proc is None or proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pysyncobj member {i} did not come back")
            time.sleep(0.05)
        time.sleep(1.0)

    def command(self, i: int, line: str, timeout_s: float = 600) -> dict[str, object] | None:
        try:
            with socket.create_connection(("127.0.0.1", self.control_ports[i]), timeout=timeout_s) as sock:
                sock.sendall((line + "\n").encode())
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        return None
                    data += chunk
            return json.loads(data)
        except OSError:
            return None

    def leader(self, timeout_s: float = 30) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is None:
                    status = self.command(i, "status", 2)
                    if status and status.get("leader"):
                        return i
            time.sleep(0.05)
        raise RuntimeError("pysyncobj elected no leader")

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def close(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)


#: pysyncobj's fastest settings found on this machine: it batches appends per period, so
#: a short period trades CPU (busy polling) for latency. Its defaults (0.05 s tick, 0.1 s
#: append period) are measured too.
PYSYNCOBJ_TUNED = {"autoTickPeriod": 0.0001, "appendEntriesPeriod": 0.0002}


def bench_pysyncobj(log_dir: Path, kills: int, conf: dict[str, float]) -> dict[str, object]:
    os.environ["PYSYNCOBJ_CONF"] = json.dumps(conf)
    cluster = PeerCluster(peer_python(), log_dir)
    for i in range(3):
        cluster.start(i)
    for i in range(3):
        cluster.wait_up(i)
    try:
        result: dict[str, object] = {}
        for inflight, count in COUNTS.items():
            leader = cluster.leader()
            result[f"in_leader_w{inflight}"] = cluster.command(leader, f"bench {count} {inflight}")
        times = []
        for _ in range(kills):
            leader = cluster.leader()
            cluster.kill(leader)
            started = time.monotonic()
            survivors = [i for i in range(3) if i != leader]
            while True:
                replies = [cluster.command(i, "write", 5) for i in survivors]
                if any(r and r.get("ok") for r in replies):
                    break
                if time.monotonic() - started > 60:
                    raise RuntimeError("pysyncobj did not accept a write within 60 s of a leader kill")
            times.append(time.monotonic() - started)
            cluster.start(leader)
            cluster.wait_up(leader)
        result["failover_s"] = {"writable": times}
        return result
    finally:
        cluster.close()


# ---- report -------------------------------------------------------------------------------------------

def summarize(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times), "max": max(times), "min": min(times)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--tick-ms", type=int, default=50)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "raft.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vstore-bench-raft-") as tmp:
        vstore = asyncio.run(bench_vstore(Path(tmp) / "vstore", args.kills, args.tick_ms))
        (Path(tmp) / "peer-logs").mkdir()
        peers = {"pysyncobj_default": bench_pysyncobj(Path(tmp) / "peer-logs", args.kills, {}),
                 "pysyncobj_tuned": bench_pysyncobj(Path(tmp) / "peer-logs", args.kills, PYSYNCOBJ_TUNED)}
    vstore["failover"] = {k: summarize(v) for k, v in vstore.pop("failover_s").items()}  # type: ignore[union-attr]
    ratios: dict[str, dict[str, float]] = {}
    for name, peer in peers.items():
        peer["failover"] = {k: summarize(v) for k, v in peer.pop("failover_s").items()}  # type: ignore[union-attr]
        ratios[name] = {f"{key}_ops_per_s": vstore[key]["ops_per_s"] / peer[key]["ops_per_s"]  # type: ignore[index]
                        for key in ("in_leader_w1", "in_leader_w256")}
        ratios[name]["failover_writable_median"] = (vstore["failover"]["writable"]["median"]  # type: ignore[index]
                                                    / peer["failover"]["writable"]["median"])  # type: ignore[index]
    result = {"benchmark": "raft", "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "vstore": {"fsync": True, "tick_ms": args.tick_ms, "election_ticks": "10-20", **vstore},
              **{name: {"fsync": False, "conf": PYSYNCOBJ_TUNED if "tuned" in name else "defaults", **peer}
                 for name, peer in peers.items()},
              "ratio_vstore_to_pysyncobj": ratios}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
