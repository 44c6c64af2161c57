"""RPC benchmark: vstore's framed, authenticated RPC against a plain asyncio stream echo.

Measured in the same run, server in its own process (one core each on a 2-core machine):
  * latency_us_p50 / p99: sequential round trips of a small request (16-byte payload);
  * pipelined_ops_per_s: small requests with 64 in flight on one connection;
  * throughput_mib_per_s: sequential 1 MiB request, 1 MiB reply (MiB moved each way per s).
The baseline is a length-prefixed echo over asyncio streams with no framing, no schema,
no authentication. vstore is run with frame_auth "hmac" (default) and "none".

Writes bench/results/rpc.json (every figure, plus each vstore figure's ratio to the
baseline of the same run) and prints a table. Usage: python bench/rpc.py [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vstore.net import Auth, Reply, Router, RpcClient, RpcServer  # noqa: E402
from vstore.wire import FrameAuth, Identity, PingReply, PingRequest  # noqa: E402

SECRET = b"b" * 32
CLUSTER = "bench"
SMALL = b"x" * 16
BIG = os.urandom(1 << 20)


# ---- servers (run in a child process) ------------------------------------------------------

async def serve_plain(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack(">I", await reader.readexactly(4))
                body = await reader.readexactly(length)
                writer.write(struct.pack(">I", length) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def serve_vstore(port: int, frame_auth: str) -> None:
    router = Router()

    async def ping(ctx, msg, payload):
        return Reply(PingReply(node_id="bench-server", role="mds"), payload)

    router.add(PingRequest, ping)
    server = RpcServer(router, Auth(SECRET, Identity(CLUSTER, "bench-server", "mds"), FrameAuth(frame_auth)),
                       allowed_roles=frozenset({"client"}))
    await server.start("127.0.0.1", port)
    await asyncio.Event().wait()


# ---- clients ---------------------------------------------------------------------------------

class PlainClient:
    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.lock = asyncio.Lock()

    async def call(self, payload: bytes) -> bytes:
        # a plain echo has no request ids, so concurrent callers take turns on the socket
        async with self.lock:
            self.writer.write(struct.pack(">I", len(payload)) + payload)
            (length,) = struct.unpack(">I", await self.reader.readexactly(4))
            return await self.reader.readexactly(length)

    async def pipelined(self, count: int, depth: int) -> None:
        # the fair baseline for pipelining: write `depth` requests, then read `depth` replies
        frame = struct.pack(">I", len(SMALL)) + SMALL
        for _ in range(count // depth):
            self.writer.write(frame * depth)
            for _ in range(depth):
                (length,) = struct.unpack(">I", await self.reader.readexactly(4))
                await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()


class VstoreClient:
    def __init__(self, frame_auth: str) -> None:
        self.frame_auth = FrameAuth(frame_auth)

    async def connect(self, port: int) -> None:
        self.client = RpcClient(("127.0.0.1", port), Auth(SECRET, Identity(CLUSTER, "bench-client", "client"),
                                                          self.frame_auth), expected_role="mds")
        await self.client.call(PingRequest())

    async def call(self, payload: bytes) -> bytes:
        return bytes((await self.client.call(PingRequest(), payload)).payload)

    async def pipelined(self, count: int, depth: int) -> None:
        sem = asyncio.Semaphore(depth)

        async def one() -> None:
            async with sem:
                await self.client.call(PingRequest(), SMALL)

        await asyncio.gather(*(one() for _ in range(count)))

    async def close(self) -> None:
        await self.client.close()


async def measure(client, port: int) -> dict[str, float]:
    await client.connect(port)
    for _ in range(200):
        await client.call(SMALL)
    lat = []
    for _ in range(3000):
        t = time.perf_counter()
        await client.call(SMALL)
        lat.append(time.perf_counter() - t)
    lat.sort()
    count = 20000
    t = time.perf_counter()
    await client.pipelined(count, 64)
    pipelined = count / (time.perf_counter() - t)
    n = 150
    assert await client.call(BIG) == BIG
    t = time.perf_counter()
    for _ in range(n):
        await client.call(BIG)
    mib_s = n / (time.perf_counter() - t)
    await client.close()
    return {"latency_us_p50": lat[len(lat) // 2] * 1e6, "latency_us_p99": lat[int(len(lat) * 0.99)] * 1e6,
            "pipelined_ops_per_s": pipelined, "throughput_mib_per_s": mib_s}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_kind(kind: str) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port)])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"{kind} server did not start")
                time.sleep(0.05)
        client = PlainClient() if kind == "plain" else VstoreClient(kind.split("-", 1)[1])
        return asyncio.run(measure(client, port))
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve")
    parser.add_argument("--port", type=int)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rpc.json"))
    args = parser.parse_args()
    if args.serve:
        coro = serve_plain(args.port) if args.serve == "plain" else serve_vstore(args.port, args.serve.split("-", 1)[1])
        asyncio.run(coro)
        return
    kinds = ["plain", "vstore-hmac", "vstore-none"]
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for _ in range(args.runs):  # interleaved, so drift in machine load hits every kind alike
        for kind in kinds:
            runs[kind].append(run_kind(kind))
    medians = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    base = medians["plain"]
    ratios = {k: {m: medians[k][m] / base[m] for m in base} for k in kinds if k != "plain"}
    result = {"benchmark": "rpc", "runs": args.runs, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                                  "platform": platform.platform()},
              "baseline": "plain asyncio stream echo, length-prefixed, same run",
              "medians": medians, "ratio_to_baseline": ratios, "all_runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'kind':<14}{'p50 us':>10}{'p99 us':>10}{'pipelined/s':>14}{'MiB/s':>10}")
    for k in kinds:
        m = medians[k]
        print(f"{k:<14}{m['latency_us_p50']:>10.1f}{m['latency_us_p99']:>10.1f}{m['pipelined_ops_per_s']:>14.0f}"
              f"{m['throughput_mib_per_s']:>10.1f}")
    for k, r in ratios.items():
        print(f"{k} / plain: " + ", ".join(f"{m} x{v:.2f}" for m, v in r.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
