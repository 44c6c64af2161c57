"""File-system benchmark: the same workloads on a local-disk directory, on a minimal pyfuse3
passthrough of local disk (bench/passthrough.py), and on a vstore mount (3 MDS + 3
chunkservers on loopback, replicas 3), all in the same run on the same disk.

Workloads (the same code for every target):
  * seq_write: a --seq-mib file (1 GiB) in 1 MiB writes, fsync at the end (included).
  * seq_read: that file in 1 MiB reads after sync + drop_caches (cold), a fresh open.
  * rand_write_jN / rand_read_jN: 4 KiB block-aligned seeded offsets in a --rand-mib (256 MiB)
    file, N = 1 and 4 threads each with its own descriptor, --rand-ops per thread; writes end
    with an fsync per thread (included); reads run after drop_caches.
  * create / stat / unlink: --meta-files (5,000) empty files in one directory, one thread.
  * untar: ``tar -xf`` of a generated root-file-system-like tarball (--tar-mib, ~100 MB, a few
    thousand files, directories and symlinks; seeded, built once per run directory).
Figures: MiB/s or ops/s per workload and target, and each target's ratio to local disk and
to the passthrough. Writes bench/results/fs.json and prints a table.
Usage: python bench/fs.py [--runs 1] [--seq-mib 1024] [--rand-mib 256] [--rand-ops 2000]
                          [--meta-files 5000] [--tar-mib 100] [--targets local,passthrough,vstore]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.provenance import code_version, filesystem_of  # noqa: E402

MIB = 1024 * 1024
BLOCK = 4096


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---- workloads ------------------------------------------------------------------------------------


def seq_write(path: Path, total: int) -> float:
    buf = random.Random(1).randbytes(MIB)

    def run() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(total // MIB):
                os.write(fd, buf)
            os.fsync(fd)
        finally:
            os.close(fd)
    return total / MIB / timed(run)


def seq_read(path: Path, total: int) -> float:
    drop_caches()

    def run() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            got = 0
            while chunk := os.read(fd, MIB):
                got += len(chunk)
            assert got == total, f"read {got} of {total} bytes"
        finally:
            os.close(fd)
    return total / MIB / timed(run)


def rand_io(path: Path, size: int, jobs: int, ops: int, write: bool) -> float:
    blocks = size // BLOCK
    errors: list[BaseException] = []
    if not write:
        drop_caches()

    def job(n: int) -> None:
        rng = random.Random(100 + n)
        offsets = [rng.randrange(blocks) * BLOCK for _ in range(ops)]
        data = rng.randbytes(BLOCK)
        fd = os.open(path, os.O_RDWR)
        try:
            for off in offsets:
                if write:
                    os.pwrite(fd, data, off)
                elif len(os.pread(fd, BLOCK, off)) != BLOCK:
                    raise AssertionError(f"short read at {off}")
            if write:
                os.fsync(fd)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
        finally:
            os.close(fd)

    def run() -> None:
        threads = [threading.Thread(target=job, args=(n,)) for n in range(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elapsed = timed(run)
    if errors:
        raise errors[0]
    return jobs * ops / elapsed


def meta(root: Path, files: int) -> dict[str, float]:
    d = root / "meta"
    d.mkdir()
    names = [str(d / f"f{i:05d}") for i in range(files)]

    def create() -> None:
        for name in names:
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))

    def stat() -> None:
        for name in names:
            os.stat(name)

    def unlink() -> None:
        for name in names:
            os.unlink(name)
    return {"create": files / timed(create), "stat": files / timed(stat), "unlink": files / timed(unlink)}


def make_tarball(path: Path, total_mib: int) -> dict[str, int]:
    """A root-file-system-like tarball: many small files, some large, dirs and symlinks."""
    rng = random.Random(42)
    budget = total_mib * MIB
    files = dirs = links = 0
    with tarfile.open(path, "w") as tar:
        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        top = [f"usr/lib/pkg{i:03d}" for i in range(60)] + [f"etc/conf{i:02d}" for i in range(20)]
        seen: set[str] = set()
        for d in top:
            parts = d.split("/")
            for k in range(1, len(parts) + 1):
                sub = "/".join(parts[:k])
                if sub not in seen:
                    seen.add(sub)
                    add_dir(sub)
                    dirs += 1
        used = 0
        while used < budget:
            size = rng.choice([200, 1500, 4000, 12_000, 40_000]) if rng.random() < 0.97 else rng.randint(1, 4) * MIB
            size = min(size, budget - used)
            name = f"{rng.choice(top)}/file{files:05d}"
            info = tarfile.TarInfo(name)
            info.size = size
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(rng.randbytes(size)))
            used += size
            files += 1
            if files % 25 == 0:
                link = tarfile.TarInfo(f"{name}.link")
                link.type = tarfile.SYMTYPE
                link.linkname = os.path.basename(name)
                tar.addfile(link)
                links += 1
    return {"files": files, "dirs": dirs, "symlinks": links, "bytes": used}


def untar(tarball: Path, target: Path) -> float:
    target.mkdir()
    return timed(lambda: subprocess.run(["tar", "-xf", str(tarball), "-C", str(target)], check=True))


def run_suite(root: Path, args: argparse.Namespace, tarball: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    big = root / "seq.bin"
    out["seq_write_mib_s"] = seq_write(big, args.seq_mib * MIB)
    out["seq_read_mib_s"] = seq_read(big, args.seq_mib * MIB)
    os.unlink(big)
    rnd = root / "rand.bin"
    seq_write(rnd, args.rand_mib * MIB)
    for jobs in (1, 4):
        out[f"rand_write_j{jobs}_iops"] = rand_io(rnd, args.rand_mib * MIB, jobs, args.rand_ops, True)
        out[f"rand_read_j{jobs}_iops"] = rand_io(rnd, args.rand_mib * MIB, jobs, args.rand_ops, False)
    os.unlink(rnd)
    for k, v in meta(root, args.meta_files).items():
        out[f"{k}_ops_s"] = v
    out["untar_s"] = untar(tarball, root / "untar")
    return out


# ---- targets --------------------------------------------------------------------------------------


@contextmanager
def local_target(base: Path) -> Iterator[Path]:
    d = base / "local"
    d.mkdir()
    yield d


@contextmanager
def passthrough_target(base: Path) -> Iterator[Path]:
    src, mnt = base / "pt-src", base / "pt-mnt"
    src.mkdir()
    mnt.mkdir()
    from tests.harness.fsprocs import unmount
    # its own session: a Ctrl-C in the terminal reaches only us, and the finally unmounts it
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "passthrough.py"), str(src), str(mnt)],
                            stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"bench/passthrough.py did not start (exit code {proc.wait(30)})")
        deadline = time.monotonic() + 10
        while not os.path.ismount(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield mnt
    finally:
        unmount(mnt)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def vstore_target(base: Path) -> Iterator[Path]:
    from tests.harness.fsprocs import FsCluster, unmount
    (base / "vstore").mkdir(exist_ok=True)
    cluster = FsCluster(base / "vstore", ("m1", "m2", "m3"), chunk_bytes=64 * MIB)
    loop = asyncio.new_event_loop()
    ctx = cluster.running_fs()
    try:
        loop.run_until_complete(ctx.__aenter__())
        mnt = loop.run_until_complete(cluster.mount("bench-client"))
        yield mnt
    finally:
        try:
            loop.run_until_complete(ctx.__aexit__(None, None, None))
        finally:  # also when the start was interrupted half-way: no mount or process is left
            for path in (base / "vstore").glob("mnt-*"):
                unmount(path)
            cluster.group.stop_all()
            loop.close()


TARGETS = {"local": local_target, "passthrough": passthrough_target, "vstore": vstore_target}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seq-mib", type=int, default=1024)
    parser.add_argument("--rand-mib", type=int, default=256)
    parser.add_argument("--rand-ops", type=int, default=2000, help="4 KiB operations per thread")
    parser.add_argument("--meta-files", type=int, default=5000)
    parser.add_argument("--tar-mib", type=int, default=100)
    parser.add_argument("--targets", default="local,passthrough,vstore")
    parser.add_argument("--tmp-dir", help="where everything lives (default: $TMPDIR)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fs.json"))
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    if any(t not in TARGETS for t in targets):
        parser.error(f"--targets: choose from {', '.join(TARGETS)}")
    started = time.monotonic()
    code = code_version()
    results: dict[str, list[dict[str, float]]] = {t: [] for t in targets}
    with tempfile.TemporaryDirectory(prefix="vstore-bench-fs-", dir=args.tmp_dir) as name:
        base = Path(name)
        tarball = base / "rootfs.tar"
        tar_shape = make_tarball(tarball, args.tar_mib)
        fs_info = filesystem_of(base)
        for run in range(args.runs):
            for target in (targets if run % 2 == 0 else targets[::-1]):
                run_dir = base / f"run{run}-{target}"
                run_dir.mkdir()
                with TARGETS[target](run_dir) as root:
                    figures = run_suite(root, args, tarball)
                results[target].append(figures)
                print(f"run {run + 1}/{args.runs} {target}: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()),
                      flush=True)
    medians = {t: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for t, runs in results.items()}
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for t in targets:
        for base_name in ("local", "passthrough"):
            if base_name in medians and t != base_name:
                ratios.setdefault(t, {})[f"to_{base_name}"] = {
                    k: (medians[base_name][k] / v if k.endswith("_s") and not k.endswith("_mib_s")
                        and not k.endswith("ops_s") else v / medians[base_name][k])
                    for k, v in medians[t].items()}
    result = {
        "benchmark": "fs", "code": code, "filesystem": fs_info, "runs": args.runs,
        "setup": {"seq_bytes": args.seq_mib * MIB, "rand_bytes": args.rand_mib * MIB, "rand_ops_per_job": args.rand_ops,
                  "meta_files": args.meta_files, "tarball": tar_shape,
                  "vstore": "3 MDS + 3 chunkservers (processes) on loopback, replicas 3:2, 64 MiB chunks, one mount",
                  "passthrough": "bench/passthrough.py: pyfuse3 on asyncio, same kernel options as the vstore mount"},
        "ratio_note": "higher is better for every ratio (untar: baseline time / target time)",
        "medians": medians, "ratios": ratios, "runs_data": results, "elapsed_s": time.monotonic() - started,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    keys = list(next(iter(medians.values())))
    print(f"\n{'workload':<22}" + "".join(f"{t:>14}" for t in targets))
    for k in keys:
        print(f"{k:<22}" + "".join(f"{medians[t][k]:>14.1f}" for t in targets))
    print(f"\nwrote {args.out} ({result['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
