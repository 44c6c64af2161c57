"""Chunkserver data-path benchmark: a 3-chunkserver replica chain on loopback against plain
os.pwrite / os.pread on the same disk, measured in the same run.

Each chunkserver is its own process (this script in --serve-cs mode: ChunkStore +
ChunkDataService + RpcServer on one data dir, no MDS: this process issues the capability
tokens itself with the cluster secret). The client is this process, one RpcClient (one
connection) to the head of the chain; every write goes head -> middle -> tail and is
acknowledged once all three replicas wrote it.

Patterns (vstore and the local baseline run the same offsets, sizes and data):
  * seq_write: a --seq-mib file (256 MiB) in 64 MiB chunks (4 chunks), 1 MiB writes, one
    fsync at the end of each chunk (FsyncChunkRequest down the chain; baseline: os.fsync
    every 64 MiB of one file). Elapsed time includes the fsyncs.
  * seq_read: the same file in 1 MiB reads from the head replica, page cache dropped first
    (sync; echo 3 > /proc/sys/vm/drop_caches, as root) when possible ("cold_cache" says).
  * rand_write / rand_read: 4 KiB block-aligned offsets (seeded; the same list for vstore
    and the baseline) within the first 64 MiB chunk, --ops each (5000), with 1 and with 16
    requests in flight (16 pipelined on the one connection; baseline: 16 threads). The
    random writes end with one fsync (included). Random reads run on a warm page cache
    (the chunk was just written and read), so they measure the software path, not the disk.
Client-side work a real writer does is inside the timing: the end-to-end checksums of every
write (xxh3 per 4 KiB piece) and the check of every read's checksum and length.

Figures per pattern: MiB/s, IOPS, per-request latency p50 / p99 (ms), CPU used (cores) by
each chunkserver, the client and the rest of the machine. --runs (3) runs, vstore and the
baseline alternating which goes first; the JSON has the medians, every run, and
ratio_to_local_disk = vstore / local per figure. Note that the three replicas share one disk
here, so the chain writes three times the bytes the baseline does.

Target (the issue): the chain's sequential write at least half the local disk's rate
(``target_seq_write_half_of_local_met``).

Writes bench/results/chunkserver.json and prints a table.
Usage: python bench/chunkserver.py [--runs 3] [--seq-mib 256] [--ops 5000] [--tmp-dir DIR]
       python bench/chunkserver.py --profile OUT.txt   (py-spy --idle on the head chunkserver
                                                         for --duration-s during sequential writes)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import xxhash

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.provenance import code_version, filesystem_of, proc_cpu_s, system_busy_s, top_frames  # noqa: E402,E501

from vstore.chunkserver.service import ChunkDataService  # noqa: E402
from vstore.chunkserver.store import ChunkStore  # noqa: E402
from vstore.net import Auth, Router, RpcClient, RpcServer  # noqa: E402
from vstore.wire import Identity  # noqa: E402
from vstore.wire.cs import piece_checksums  # noqa: E402
from vstore.wire import cs as w  # noqa: E402
from vstore.wire.capability import capability_key, issue_capability  # noqa: E402

CLUSTER = "bench-cs"
MIB = 1 << 20
CHUNK_BYTES = 64 * MIB
BLOCK = 4096
SEQ_IO = MIB
RAND_IO = 4096
RAND_INFLIGHT = (1, 16)
#: the issue's sequential write is one 1 MiB write at a time; with 4 in flight as well, to show
#: what pipelining the chain gives
SEQ_WRITE_INFLIGHT = 4
CLK_TCK = os.sysconf("SC_CLK_TCK")
PATTERNS = ("seq_write", f"seq_write_q{SEQ_WRITE_INFLIGHT}", "seq_read", *(f"rand_{op}_q{q}" for op in ("write", "read") for q in RAND_INFLIGHT))


# ---- the chunkserver worker (this script with --serve-cs) ---------------------------------------------

async def serve_cs(args: argparse.Namespace) -> None:
    """One chunkserver: store + data service + RPC server, until stdin closes or SIGTERM.
    Prints {"ready", "port", "pid"} once listening and {"stats"} on the way out."""
    secret = Path(args.secret_file).read_bytes()
    store = ChunkStore(Path(args.data), chunk_bytes=args.chunk_bytes, block_bytes=BLOCK)
    auth = Auth(secret, Identity(CLUSTER, f"cs-{args.serve_cs}", "cs"))
    service = ChunkDataService(store, cs_id=args.serve_cs, auth=auth, capability_key=capability_key(secret, CLUSTER),
                               forward_deadline_s=60.0)
    router = Router()
    service.register(router)
    server = RpcServer(router, auth, allowed_roles=frozenset({"client", "cs"}))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    try:
        _, port = await server.start("127.0.0.1", args.port)
        print(json.dumps({"ready": True, "port": port, "pid": os.getpid()}), flush=True)
        eof = asyncio.ensure_future(stdin.read())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([eof, stopped], return_when=asyncio.FIRST_COMPLETED)
        eof.cancel()
        stopped.cancel()
    finally:
        await server.close()
        await service.close()
        store.close()
        with contextlib.suppress(OSError):
            print(json.dumps({"stats": service.stats}), flush=True)


class Chain:
    """Three chunkserver processes, head first, and the client's connection to the head."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.secret_file = root / "cluster.secret"
        self.secret_file.write_bytes(secrets.token_bytes(32))
        self.secret_file.chmod(0o600)
        self.secret = self.secret_file.read_bytes()
        self.key = capability_key(self.secret, CLUSTER)
        self.procs: list[asyncio.subprocess.Process] = []
        self.ports: list[int] = []
        self.data_dirs = [root / f"cs{i}" for i in (1, 2, 3)]
        self.client: RpcClient | None = None
        self.stats: list[dict[str, int]] = []

    async def start(self) -> None:
        for cs_id, data in zip((1, 2, 3), self.data_dirs):
            log = open(self.root / f"cs{cs_id}.log", "ab")
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "--serve-cs", str(cs_id), "--data", str(data), "--port", "0",
                    "--secret-file", str(self.secret_file), "--chunk-bytes", str(CHUNK_BYTES),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
            finally:
                log.close()
            self.procs.append(proc)
        for cs_id, proc in zip((1, 2, 3), self.procs):
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            if not line:
                log_text = (self.root / f"cs{cs_id}.log").read_text(errors="replace")
                raise RuntimeError(f"chunkserver {cs_id} exited (code {await proc.wait()}):\n{log_text}")
            self.ports.append(int(json.loads(line)["port"]))
        self.client = RpcClient(("127.0.0.1", self.ports[0]), Auth(self.secret, Identity(CLUSTER, "bench-client",
                                                                                          "client")),
                                expected_role="cs", default_deadline_s=60.0)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    @property
    def hops(self) -> tuple[w.ChainHop, ...]:
        """The chain after the head, as the client sends it."""
        return tuple(w.ChainHop(cs_id=i, address=f"127.0.0.1:{p}") for i, p in zip((2, 3), self.ports[1:]))

    def token(self, chunk_id: int, mode: str) -> bytes:
        return issue_capability(self.key, chunk_id, 1, mode, int(time.time()) + 3600)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        for proc in self.procs:
            if proc.returncode is None and proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                assert proc.stdout is not None
                out = await asyncio.wait_for(proc.stdout.read(), 10)
                await asyncio.wait_for(proc.wait(), 10)
                for line in out.decode(errors="replace").splitlines():
                    if line.startswith('{"stats"'):
                        self.stats.append(json.loads(line)["stats"])
            except asyncio.TimeoutError:
                pass
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


# ---- the floor: the same chain with plain sockets and no checks ----------------------------------------

RAW_OP = struct.Struct(">cQI")  # op (W write, F fsync), file offset, payload bytes


def serve_raw(args: argparse.Namespace) -> None:
    """One hop of the socket floor (this script with --serve-raw): receive each write into a
    buffer, send it on to the next hop (if any), pwrite it into one file, wait for the next
    hop's ack, ack. No framing beyond 13 bytes, no MAC, no checksums, no executor: what three
    processes relaying 1 MiB writes over loopback cost before any of vstore's work."""
    listener = socket.create_server(("127.0.0.1", 0))
    print(json.dumps({"ready": True, "port": listener.getsockname()[1], "pid": os.getpid()}), flush=True)
    nxt = socket.create_connection(("127.0.0.1", args.next_port)) if args.next_port else None
    conn, _ = listener.accept()
    fd = os.open(args.data, os.O_CREAT | os.O_RDWR, 0o600)
    buf = bytearray(SEQ_IO)
    view = memoryview(buf)

    def exact(target: memoryview) -> bool:
        got = 0
        while got < len(target):
            n = conn.recv_into(target[got:])
            if not n:
                return False
            got += n
        return True

    head = bytearray(RAW_OP.size)
    while exact(memoryview(head)):
        op, offset, size = RAW_OP.unpack(head)
        if not exact(view[:size]):
            break
        if nxt is not None:
            nxt.sendall(head + view[:size] if size < 65536 else head)
            if size >= 65536:
                nxt.sendall(view[:size])
        if op == b"W":
            os.pwrite(fd, view[:size], offset)
        else:
            os.fsync(fd)
        if nxt is not None and nxt.recv(1) != b"k":
            break
        conn.sendall(b"k")
    os.close(fd)


class RawChain:
    """Three --serve-raw processes, head first, and a blocking socket to the head."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sock: socket.socket | None = None

    def __enter__(self) -> RawChain:
        port = 0
        for i in (3, 2, 1):  # the tail first: each hop connects on to the one after it
            proc = subprocess.Popen([sys.executable, __file__, "--serve-raw", "--data", str(self.root / f"raw{i}"),
                                     "--next-port", str(port)], stdout=subprocess.PIPE)
            self.procs.append(proc)
            assert proc.stdout is not None
            port = int(json.loads(proc.stdout.readline())["port"])
        self.sock = socket.create_connection(("127.0.0.1", port))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sock is not None:
            self.sock.close()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def call(self, op: bytes, offset: int, data: bytes = b"") -> None:
        assert self.sock is not None
        self.sock.sendall(RAW_OP.pack(op, offset, len(data)))
        if data:
            self.sock.sendall(data)
        if self.sock.recv(1) != b"k":
            raise RuntimeError("the socket floor chain broke")


def bench_floor(root: Path, load: Workload) -> dict[str, Any]:
    """seq_write through RawChain: the same 1 MiB writes in order, 1 in flight, an fsync down
    the chain at the end of every 64 MiB (each hop's file is one 256 MiB file)."""
    root.mkdir(parents=True, exist_ok=True)
    lat: list[float] = []
    with RawChain(root) as raw, Meter([p.pid for p in raw.procs]) as meter:
        for _, ops in load.seq_by_chunk():
            for i, c, offset in ops:
                t = time.perf_counter()
                raw.call(b"W", c * CHUNK_BYTES + offset, load.seq_buf(i))
                lat.append(time.perf_counter() - t)
            raw.call(b"F", 0)
    return {"seq_write": figures(meter, lat, SEQ_IO)}


# ---- measuring ------------------------------------------------------------------------------------------





class Meter:
    """Elapsed time and the CPU of the chunkservers, this process and the rest of the machine."""

    def __init__(self, cs_pids: Sequence[int]) -> None:
        self.cs_pids = list(cs_pids)

    def __enter__(self) -> Meter:
        self.cs = [proc_cpu_s(p) for p in self.cs_pids]
        self.me = time.process_time()
        self.busy = system_busy_s()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.started
        cs = [(proc_cpu_s(p) - c) / self.elapsed for p, c in zip(self.cs_pids, self.cs)]
        me = (time.process_time() - self.me) / self.elapsed
        busy = (system_busy_s() - self.busy) / self.elapsed
        self.cpu = {"chunkservers": cs, "client": me, "other_processes": max(0.0, busy - sum(cs) - me)}


def figures(meter: Meter, latencies: list[float], io_bytes: int, **extra: Any) -> dict[str, Any]:
    lat = sorted(latencies)
    return {"ops": len(lat), "io_bytes": io_bytes, "elapsed_s": meter.elapsed,
            "mib_per_s": len(lat) * io_bytes / MIB / meter.elapsed, "iops": len(lat) / meter.elapsed,
            "latency_ms_p50": lat[len(lat) // 2] * 1e3, "latency_ms_p99": lat[int(len(lat) * 0.99)] * 1e3,
            "cpu_cores": meter.cpu, **extra}


def drop_caches() -> bool:
    """Write back and drop the page cache (root only). True if it was dropped."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def pieces(offset: int, data: bytes | memoryview) -> tuple[int, ...]:
    """The client's end-to-end checksums: xxh3 of the payload cut at block boundaries."""
    return piece_checksums(offset, data, BLOCK)


def seq_layout(total_bytes: int) -> list[tuple[int, int]]:
    """(chunk index, offset in chunk) of every 1 MiB piece of the sequential file."""
    return [(pos // CHUNK_BYTES, pos % CHUNK_BYTES) for pos in range(0, total_bytes, SEQ_IO)]


async def pipelined(ops: Sequence[Any], inflight: int, one: Callable[[Any], Awaitable[None]]) -> list[float]:
    """Run ``one(op)`` for every op, ``inflight`` at a time; per-op latencies."""
    clock = time.perf_counter
    latencies: list[float] = []
    todo = iter(ops)

    async def worker() -> None:
        for op in todo:
            t = clock()
            await one(op)
            latencies.append(clock() - t)

    await asyncio.gather(*(worker() for _ in range(inflight)))
    return latencies


def threaded(ops: Sequence[Any], inflight: int, one: Callable[[Any], None]) -> list[float]:
    """The same with ``inflight`` threads (1: this thread)."""
    clock = time.perf_counter
    todo = iter(ops)
    lock = threading.Lock()

    def worker() -> list[float]:
        out = []
        while True:
            with lock:
                op = next(todo, None)
            if op is None:
                return out
            t = clock()
            one(op)
            out.append(clock() - t)

    if inflight == 1:
        return worker()
    with ThreadPoolExecutor(inflight) as pool:
        return [x for f in [pool.submit(worker) for _ in range(inflight)] for x in f.result()]


class Workload:
    """The data and offsets both sides use, fixed for the whole benchmark."""

    def __init__(self, seq_bytes: int, ops: int, seed: int) -> None:
        rng = random.Random(seed)
        self.seq_bufs = [rng.randbytes(SEQ_IO) for _ in range(4)]
        self.rand_bufs = [rng.randbytes(RAND_IO) for _ in range(64)]
        self.seq = seq_layout(seq_bytes)
        self.chunks = (seq_bytes + CHUNK_BYTES - 1) // CHUNK_BYTES
        blocks = min(seq_bytes, CHUNK_BYTES) // RAND_IO
        self.rand = {kind: [(rng.randrange(blocks) * RAND_IO, i % len(self.rand_bufs)) for i in range(ops)]
                     for kind in ("write", "read")}

    def seq_by_chunk(self) -> Iterator[tuple[int, list[tuple[int, int, int]]]]:
        """(chunk index, its pieces as (piece number, chunk index, offset in chunk))."""
        for c in range(self.chunks):
            yield c, [(i, cc, off) for i, (cc, off) in enumerate(self.seq) if cc == c]

    def seq_buf(self, i: int) -> bytes:
        return self.seq_bufs[i % len(self.seq_bufs)]


# ---- vstore ------------------------------------------------------------------------------------------

async def bench_vstore(chain: Chain, load: Workload, first_chunk_id: int) -> dict[str, Any]:
    client = chain.client
    assert client is not None
    hops = chain.hops
    ids = [first_chunk_id + c for c in range(load.chunks)]
    rw = {cid: chain.token(cid, "rw") for cid in ids}
    ro = {cid: chain.token(cid, "r") for cid in ids}
    out: dict[str, Any] = {}

    async def write(cid: int, offset: int, data: bytes, create: bool = False) -> None:
        request = w.WriteChunkRequest(chunk_id=cid, version=1, offset=offset, checksums=pieces(offset, data),
                                      token=rw[cid], chain=hops, create=create)
        reply = (await client.call(request, data)).message
        if not isinstance(reply, w.WriteChunkReply) or reply.replicas != 3:
            raise RuntimeError(f"write of chunk {cid} at {offset}: {reply!r}, expected 3 replicas")

    async def fsync(cid: int) -> float:
        t = time.perf_counter()
        reply = (await client.call(w.FsyncChunkRequest(chunk_id=cid, version=1, token=rw[cid], chain=hops))).message
        if not isinstance(reply, w.FsyncChunkReply) or reply.replicas != 3:
            raise RuntimeError(f"fsync of chunk {cid}: {reply!r}, expected 3 replicas")
        return time.perf_counter() - t

    async def read(cid: int, offset: int, length: int, expect: bytes | None) -> None:
        reply = await client.call(w.ReadChunkRequest(chunk_id=cid, version=1, offset=offset, length=length,
                                                     token=ro[cid]))
        payload = reply.payload
        if len(payload) != length or xxhash.xxh3_64_intdigest(payload) != reply.message.checksum:
            raise RuntimeError(f"read of chunk {cid} at {offset}: {len(payload)} bytes, checksum "
                               f"{'ok' if xxhash.xxh3_64_intdigest(payload) == reply.message.checksum else 'BAD'}")
        if expect is not None and payload != expect:
            raise RuntimeError(f"read of chunk {cid} at {offset}: not the bytes written")

    # sequential write: 1 MiB pieces in order, fsync down the chain at the end of each chunk.
    # With q in flight, a chunk's first write (the one that creates the replicas) goes alone.
    clock = time.perf_counter
    for q, name, base in ((1, "seq_write", 0), (SEQ_WRITE_INFLIGHT, f"seq_write_q{SEQ_WRITE_INFLIGHT}", 50)):
        for c in range(load.chunks):
            rw[first_chunk_id + base + c] = chain.token(first_chunk_id + base + c, "rw")
        lat: list[float] = []
        fsyncs: list[float] = []

        async def seq_write(op: tuple[int, int, int], base: int = base) -> None:
            i, c, offset = op
            await write(first_chunk_id + base + c, offset, load.seq_buf(i), create=offset == 0)

        with Meter(chain.pids) as meter:
            for c, ops in load.seq_by_chunk():
                t = clock()
                await seq_write(ops[0])
                lat.append(clock() - t)
                lat += await pipelined(ops[1:], q, seq_write)
                fsyncs.append(await fsync(first_chunk_id + base + c))
        out[name] = figures(meter, lat, SEQ_IO, fsync_ms=[f * 1e3 for f in fsyncs])

    cold = drop_caches()
    lat = []
    with Meter(chain.pids) as meter:
        for i, (c, offset) in enumerate(load.seq):
            t = clock()
            await read(ids[c], offset, SEQ_IO, load.seq_buf(i))
            lat.append(clock() - t)
    out["seq_read"] = figures(meter, lat, SEQ_IO, cold_cache=cold)

    cid = ids[0]
    for q in RAND_INFLIGHT:
        async def rand_write(op: tuple[int, int]) -> None:
            await write(cid, op[0], load.rand_bufs[op[1]])

        with Meter(chain.pids) as meter:
            lat = await pipelined(load.rand["write"], q, rand_write)
            synced = await fsync(cid)
        out[f"rand_write_q{q}"] = figures(meter, lat, RAND_IO, fsync_ms=[synced * 1e3])
    for q in RAND_INFLIGHT:
        async def rand_read(op: tuple[int, int]) -> None:
            await read(cid, op[0], RAND_IO, None)

        with Meter(chain.pids) as meter:
            lat = await pipelined(load.rand["read"], q, rand_read)
        out[f"rand_read_q{q}"] = figures(meter, lat, RAND_IO, cold_cache=False)
    return out


# ---- the local disk baseline ---------------------------------------------------------------------------

def bench_local(root: Path, load: Workload, cs_pids: Sequence[int]) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "seq.dat"
    out: dict[str, Any] = {}
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    try:
        clock = time.perf_counter
        for q, name, target in ((1, "seq_write", fd), (SEQ_WRITE_INFLIGHT, f"seq_write_q{SEQ_WRITE_INFLIGHT}", None)):
            wfd = target if target is not None else os.open(root / f"seq_q{q}.dat", os.O_RDWR | os.O_CREAT |
                                                            os.O_EXCL | os.O_CLOEXEC, 0o640)
            lat: list[float] = []
            fsyncs: list[float] = []

            def seq_write(op: tuple[int, int, int], wfd: int = wfd) -> None:
                i, c, offset = op
                data = load.seq_buf(i)
                if os.pwrite(wfd, data, c * CHUNK_BYTES + offset) != len(data):
                    raise RuntimeError("short pwrite")

            try:
                with Meter(cs_pids) as meter:
                    for _, ops in load.seq_by_chunk():
                        lat += threaded(ops, q, seq_write)
                        t = clock()
                        os.fsync(wfd)
                        fsyncs.append(clock() - t)
            finally:
                if target is None:
                    os.close(wfd)
            out[name] = figures(meter, lat, SEQ_IO, fsync_ms=[f * 1e3 for f in fsyncs])

        cold = drop_caches()
        lat = []
        with Meter(cs_pids) as meter:
            for i, (c, offset) in enumerate(load.seq):
                t = clock()
                if os.pread(fd, SEQ_IO, c * CHUNK_BYTES + offset) != load.seq_buf(i):
                    raise RuntimeError("local read: not the bytes written")
                lat.append(clock() - t)
        out["seq_read"] = figures(meter, lat, SEQ_IO, cold_cache=cold)

        for q in RAND_INFLIGHT:
            def rand_write(op: tuple[int, int]) -> None:
                if os.pwrite(fd, load.rand_bufs[op[1]], op[0]) != RAND_IO:
                    raise RuntimeError("short pwrite")

            with Meter(cs_pids) as meter:
                lat = threaded(load.rand["write"], q, rand_write)
                t = clock()
                os.fsync(fd)
                synced = clock() - t
            out[f"rand_write_q{q}"] = figures(meter, lat, RAND_IO, fsync_ms=[synced * 1e3])
        for q in RAND_INFLIGHT:
            def rand_read(op: tuple[int, int]) -> None:
                if len(os.pread(fd, RAND_IO, op[0])) != RAND_IO:
                    raise RuntimeError("short pread")

            with Meter(cs_pids) as meter:
                lat = threaded(load.rand["read"], q, rand_read)
            out[f"rand_read_q{q}"] = figures(meter, lat, RAND_IO, cold_cache=False)
    finally:
        os.close(fd)
    for leftover in root.iterdir():
        leftover.unlink()
    return out


# ---- profile --------------------------------------------------------------------------------------------



async def profile(args: argparse.Namespace, tmp: Path) -> None:
    """py-spy --idle on the head chunkserver for --duration-s while sequential writes run
    (fresh chunks until py-spy is done)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = Path(args.profile)
    raw = out.with_suffix(".raw")
    chain = Chain(tmp)
    try:
        await chain.start()
        load = Workload(args.seq_mib * MIB, 1, args.seed)
        spy_proc = await asyncio.create_subprocess_exec(
            spy, "record", "--pid", str(chain.pids[0]), "--duration", str(args.duration_s), "--idle", "--threads",
            "--format", "raw", "--output", str(raw), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results = []
        try:
            for n in itertools.count():
                results.append(await bench_vstore_seq_only(chain, load, 1000 + n * 100))
                if spy_proc.returncode is not None:  # set by the child watcher when py-spy exits
                    break
        finally:
            if spy_proc.returncode is None:
                await spy_proc.wait()
        rates = ", ".join(f"{r:.0f}" for r in results)
        text = (f"py-spy --idle on the head chunkserver (pid {chain.pids[0]}), {args.duration_s} s during sequential "
                f"1 MiB chain writes (MiB/s of each pass: {rates})\n\n{top_frames(raw)}")
        out.write_text(text)
        print(text)
    finally:
        await chain.close()


async def bench_vstore_seq_only(chain: Chain, load: Workload, first_chunk_id: int) -> float:
    client = chain.client
    assert client is not None
    started = time.perf_counter()
    for i, (c, offset) in enumerate(load.seq):
        cid = first_chunk_id + c
        data = load.seq_buf(i)
        await client.call(w.WriteChunkRequest(chunk_id=cid, version=1, offset=offset, checksums=pieces(offset, data),
                                              token=chain.token(cid, "rw"), chain=chain.hops, create=offset == 0),
                          data)
        if offset + SEQ_IO == CHUNK_BYTES or i == len(load.seq) - 1:
            await client.call(w.FsyncChunkRequest(chunk_id=cid, version=1, token=chain.token(cid, "rw"),
                                                  chain=chain.hops))
    return len(load.seq) * SEQ_IO / MIB / (time.perf_counter() - started)


# ---- report -----------------------------------------------------------------------------------------------

KEYS = ("mib_per_s", "iops", "latency_ms_p50", "latency_ms_p99")


def medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {p: {k: statistics.median(r[p][k] for r in runs) for k in KEYS} for p in PATTERNS}


def cpu_medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for p in PATTERNS:
        cpu = [r[p]["cpu_cores"] for r in runs]
        out[p] = {"chunkservers": [statistics.median(c["chunkservers"][i] for c in cpu) for i in range(3)],
                  "client": statistics.median(c["client"] for c in cpu),
                  "other_processes_max": max(c["other_processes"] for c in cpu)}
    return out






def print_table(result: dict[str, Any]) -> None:
    v, loc, r = result["vstore"]["medians"], result["local_disk"]["medians"], result["ratio_to_local_disk"]
    print(f"\nmedians of {result['runs']} runs; x = vstore / local disk; seq read cold cache: "
          f"{result['cold_cache_seq_read']}")
    print(f"{'pattern':<15}{'':<7}{'MiB/s':>9}{'IOPS':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for p in PATTERNS:
        for name, table in (("local", loc), ("vstore", v)):
            m = table[p]
            print(f"{p if name == 'local' else '':<15}{name:<7}{m['mib_per_s']:>9.1f}{m['iops']:>9.0f}"
                  f"{m['latency_ms_p50']:>9.3f}{m['latency_ms_p99']:>9.3f}")
        x = r[p]
        print(f"{'':<15}{'x':<7}{x['mib_per_s']:>9.2f}{x['iops']:>9.2f}{x['latency_ms_p50']:>9.1f}"
              f"{x['latency_ms_p99']:>9.1f}")
    print(f"\ntarget (chain seq write >= half the local disk's): {result['target_seq_write_half_of_local_met']} "
          f"({r['seq_write']['mib_per_s']:.2f} of local)")
    fl = result["socket_chain_floor"]
    print(f"socket floor (same chain, plain sockets, no checks): {fl['seq_write']['mib_per_s']:.1f} MiB/s = "
          f"{fl['ratio_to_local_disk']:.2f} of local; vstore = {fl['vstore_ratio_to_floor']:.2f} of the floor "
          f"(q{SEQ_WRITE_INFLIGHT}: {fl[f'vstore_q{SEQ_WRITE_INFLIGHT}_ratio_to_floor']:.2f})")
    cpu = result["vstore"]["cpu_cores_median"]
    print("CPU in cores (cs1 head / cs2 / cs3 / client): " + "; ".join(
        f"{p} {'/'.join(f'{c:.2f}' for c in cpu[p]['chunkservers'])}/{cpu[p]['client']:.2f}" for p in PATTERNS))


async def main_async(args: argparse.Namespace) -> dict[str, Any] | None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # finally blocks still run
    with tempfile.TemporaryDirectory(prefix="vstore-bench-cs-", dir=args.tmp_dir or tempfile.gettempdir()) as name:
        tmp = Path(name)
        if args.profile:
            await profile(args, tmp)
            return None
        started = time.monotonic()
        code = code_version()
        load = Workload(args.seq_mib * MIB, args.ops, args.seed)
        chain = Chain(tmp)
        vstore_runs: list[dict[str, Any]] = []
        local_runs: list[dict[str, Any]] = []
        floor_runs: list[dict[str, Any]] = []
        try:
            await chain.start()
            for run in range(args.runs):  # alternate which side goes first: drift hits both alike
                first_id = 1 + run * 100
                if run % 2 == 0:
                    local_runs.append(bench_local(tmp / "local" / f"run{run}", load, chain.pids))
                    vstore_runs.append(await bench_vstore(chain, load, first_id))
                else:
                    vstore_runs.append(await bench_vstore(chain, load, first_id))
                    local_runs.append(bench_local(tmp / "local" / f"run{run}", load, chain.pids))
                floor_runs.append(bench_floor(tmp / "floor" / f"run{run}", load))
                shutil.rmtree(tmp / "floor" / f"run{run}", ignore_errors=True)
                print(f"run {run + 1}/{args.runs}: seq write vstore {vstore_runs[-1]['seq_write']['mib_per_s']:.0f} "
                      f"MiB/s, local {local_runs[-1]['seq_write']['mib_per_s']:.0f} MiB/s, socket floor "
                      f"{floor_runs[-1]['seq_write']['mib_per_s']:.0f} MiB/s", flush=True)
        finally:
            await chain.close()
        if code_version()["vstore_sources_sha256"] != code["vstore_sources_sha256"]:
            raise RuntimeError("the sources under vstore/ changed during the run: the figures mix two versions")
        fs = {"chunkservers": filesystem_of(chain.data_dirs[0]), "local_disk": filesystem_of(tmp / "local")}
    v, loc = medians(vstore_runs), medians(local_runs)
    ratios = {p: {k: v[p][k] / loc[p][k] for k in KEYS} for p in PATTERNS}
    floor = {k: statistics.median(r["seq_write"][k] for r in floor_runs) for k in KEYS}
    cold = [r[p]["cold_cache"] for r in vstore_runs + local_runs for p in ("seq_read",)]
    expected = args.runs * (2 * args.seq_mib * MIB + len(RAND_INFLIGHT) * args.ops * RAND_IO)
    written = [s.get("bytes_written", 0) for s in chain.stats]
    return {
        "benchmark": "chunkserver",
        "machine": {"cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
                    "python": platform.python_version(), "kernel": platform.release(),
                    "platform": platform.platform()},
        "code": code,
        "setup": "3 chunkserver processes (ChunkStore + ChunkDataService + RpcServer, frame_auth hmac) on loopback, "
                 "one chain head -> middle -> tail, all data dirs on the same filesystem as the baseline; one client "
                 "connection to the head; capability tokens issued by the benchmark with the cluster secret",
        "filesystem": fs,
        "chunk_bytes": CHUNK_BYTES, "block_bytes": BLOCK, "seq_bytes": args.seq_mib * MIB, "seq_io_bytes": SEQ_IO,
        "rand_io_bytes": RAND_IO, "rand_ops": args.ops, "rand_inflight": list(RAND_INFLIGHT), "seed": args.seed,
        "runs": args.runs,
        "patterns": {
            "seq_write": "1 MiB writes in order, 1 in flight, fsync at the end of every 64 MiB chunk (down the chain; "
                         "baseline os.fsync every 64 MiB); the time includes the fsyncs",
            f"seq_write_q{SEQ_WRITE_INFLIGHT}": f"the same into a second file with {SEQ_WRITE_INFLIGHT} writes in "
                                                "flight (vstore: pipelined on one connection, each chunk's first "
                                                f"write alone; baseline: {SEQ_WRITE_INFLIGHT} threads)",
            "seq_read": "1 MiB reads in order from the head replica (baseline os.pread), 1 in flight, after "
                        "sync + drop_caches when cold_cache",
            "rand_write_qN": "4 KiB block-aligned seeded offsets in the first 64 MiB chunk, N in flight (vstore: "
                             "pipelined on one connection; baseline: N threads), one fsync at the end (included)",
            "rand_read_qN": "the same for reads, warm page cache (the chunk was just written and read)",
        },
        "cold_cache_seq_read": all(cold),
        "baseline": "os.pwrite / os.pread on one file in the same temp dir (same filesystem as the chunkservers' "
                    "data), same offsets, sizes and data, same run",
        "ratio_to_local_disk": ratios,
        "target_seq_write_half_of_local_met": ratios["seq_write"]["mib_per_s"] >= 0.5,
        f"target_met_with_{SEQ_WRITE_INFLIGHT}_writes_in_flight":
            ratios[f"seq_write_q{SEQ_WRITE_INFLIGHT}"]["mib_per_s"] >= 0.5,
        "note": "the three replicas share one disk here: the chain writes 3x the bytes of the baseline (and each "
                "replica also its checksum table and header)",
        "socket_chain_floor": {
            "what": "seq_write (1 in flight, fsync every 64 MiB) through the same three-hop chain of processes with "
                    "plain blocking sockets and os.pwrite, no MAC, checksums or framing: what the machine allows "
                    "before any of vstore's work",
            "seq_write": floor, "runs": floor_runs,
            "ratio_to_local_disk": floor["mib_per_s"] / loc["seq_write"]["mib_per_s"],
            "vstore_ratio_to_floor": v["seq_write"]["mib_per_s"] / floor["mib_per_s"],
            f"vstore_q{SEQ_WRITE_INFLIGHT}_ratio_to_floor": v[f"seq_write_q{SEQ_WRITE_INFLIGHT}"]["mib_per_s"]
            / floor["mib_per_s"]},
        "vstore": {"medians": v, "cpu_cores_median": cpu_medians(vstore_runs), "runs": vstore_runs},
        "local_disk": {"medians": loc, "cpu_cores_median": cpu_medians(local_runs), "runs": local_runs},
        "chunkserver_stats": chain.stats,
        "payload_bytes_written_per_replica": {"expected": expected, "reported": written,
                                              "every_replica_wrote_all": len(written) == 3
                                              and all(b == expected for b in written)},
        "elapsed_s": time.monotonic() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seq-mib", type=int, default=256, help="size of the sequential file (MiB)")
    parser.add_argument("--ops", type=int, default=5000, help="random 4 KiB operations per pattern")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tmp-dir", help="where the chunkservers' data dirs and the baseline file live "
                        "(default: $TMPDIR)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "chunkserver.json"))
    parser.add_argument("--profile", metavar="OUT", help="only run py-spy --idle on the head chunkserver during "
                        "sequential writes; write its top frames to OUT (no JSON)")
    parser.add_argument("--duration-s", type=int, default=10, help="py-spy duration for --profile")
    # chunkserver worker mode (started by this script)
    parser.add_argument("--serve-cs", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--secret-file", help=argparse.SUPPRESS)
    parser.add_argument("--chunk-bytes", type=int, default=CHUNK_BYTES, help=argparse.SUPPRESS)
    parser.add_argument("--serve-raw", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--next-port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_raw:
        serve_raw(args)
        return
    if args.serve_cs is not None:
        try:
            asyncio.run(serve_cs(args))
        except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent cleans up
            pass
        return
    if args.seq_mib < 1 or args.ops < 1 or args.runs < 1:
        parser.error("--seq-mib, --ops and --runs must be at least 1")
    try:
        result = asyncio.run(main_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit(130)
    if result is None:
        return
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"\nwrote {args.out} ({result['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
