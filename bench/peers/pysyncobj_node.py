"""One pysyncobj member for bench/raft.py (runs in bench/.venv-pysyncobj, never in vstore's venv).

    python pysyncobj_node.py SELF_ADDR CONTROL_PORT PARTNER_ADDR...

A line-based control socket on 127.0.0.1:CONTROL_PORT answers:
  status        -> {"leader": bool}
  bench N W     -> runs N increments W at a time from this process, replies with the stats
  write         -> one synchronous increment (1 s timeout): {"ok": bool}
pysyncobj keeps its log in memory and never fsyncs (RAFT.md measured this with strace);
that is the configuration the issue asks us to match.
"""

from __future__ import annotations

import json
import os
import socketserver
import sys
import threading
import time

from pysyncobj import SyncObj, SyncObjConf, replicated


class Counter(SyncObj):
    def __init__(self, me: str, partners: list[str]) -> None:
        # PYSYNCOBJ_CONF (JSON) overrides SyncObjConf fields; bench/raft.py passes the
        # fastest settings it found, so the baseline is pysyncobj at its best.
        options = {"appendEntriesUseBatch": True, **json.loads(os.environ.get("PYSYNCOBJ_CONF", "{}"))}
        super().__init__(me, partners, SyncObjConf(**options))
        self.value = 0

    @replicated
    def incr(self) -> int:
        self.value += 1
        return self.value


#: A slow configuration (the defaults commit ~10/s one at a time) stops early rather than
#: taking minutes; the rate is computed over what was done.
BENCH_SECONDS_MAX = 20.0


def bench(obj: Counter, count: int, inflight: int) -> dict[str, float]:
    lock = threading.Lock()
    done = threading.Event()
    latencies: list[float] = []
    state = {"sent": 0, "finished": 0}
    began = time.perf_counter()

    def launch() -> None:
        with lock:
            stop = state["sent"] >= count or time.perf_counter() - began > BENCH_SECONDS_MAX
            if stop:
                if state["finished"] == state["sent"]:
                    done.set()  # nothing left in flight
                return
            state["sent"] += 1
        started = time.perf_counter()

        def callback(result, error) -> None:  # type: ignore[no-untyped-def]
            latencies.append(time.perf_counter() - started)
            with lock:
                state["finished"] += 1
            launch()

        obj.incr(callback=callback)

    for _ in range(inflight):
        launch()
    done.wait(600)
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {"ops_per_s": len(latencies) / elapsed, "latency_us_p50": latencies[len(latencies) // 2] * 1e6,
            "latency_us_p99": latencies[int(len(latencies) * 0.99)] * 1e6}


def main() -> None:
    me, control_port, partners = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    obj = Counter(me, partners)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                words = line.decode().split()
                if not words:
                    continue
                if words[0] == "status":
                    reply = {"leader": obj._isLeader()}
                elif words[0] == "bench":
                    reply = bench(obj, int(words[1]), int(words[2]))
                elif words[0] == "write":
                    try:
                        obj.incr(sync=True, timeout=1.0)
                        reply = {"ok": True}
                    except Exception as exc:  # pysyncobj raises SyncObjException on failure
                        reply = {"ok": False, "error": type(exc).__name__}
                else:
                    reply = {"error": "unknown command"}
                self.wfile.write((json.dumps(reply) + "\n").encode())

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", control_port), Handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
