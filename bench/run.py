"""The comparison benchmark (`make bench`): one workload suite on five targets, all in the same
run on the same disk, and a report of each target's figures and of vstore's ratios to the others.

Targets (--targets picks a subset, in this order):
  * local: a directory on the local disk under --tmp-dir.
  * passthrough: bench/passthrough.py, a pyfuse3 passthrough of a local directory (the FUSE
    overhead baseline).
  * moosefs: MooseFS (1 master, 3 chunkservers, goal 3, mfsmount) in a private network
    namespace, started and stopped by ../shared/peers/moosefs-up.sh / moosefs-down.sh, with
    MooseFS's default HDD_FSYNC_BEFORE_CLOSE=0 (an acknowledged fsync is in 3 page caches).
  * moosefs_fsync: the same with HDD_FSYNC_BEFORE_CLOSE=1 (MFS_FSYNC=1): the like-for-like one.
  * vstore: 3 MDS + 3 chunkservers (processes on loopback, replicas 3), one FUSE mount
    (bench/fs.py's vstore_target).
Workloads (the same code for every target; sizes are options, defaults from the issue):
  * seq_write / seq_read: --seq-mib (1 GiB) in 1 MiB blocks, fsync at the end (timed); the
    read after sync + drop_caches. fio (psync, direct=0, end_fsync=1, invalidate=1, no
    fallocate), or bench/fs.py's Python loops with --io python.
  * rand_{write,read}_j{1,4}: 4 KiB random blocks of a --rand-mib (256 MiB) file, 1 and 4 jobs
    of --rand-ops each (at most --rand-runtime s); writes fsync at the end, reads run cold.
  * create / stat / unlink: --meta-files (5,000) empty files in one directory (bench/fs.py).
  * untar: tar -xf of bench/fs.py's generated rootfs-like tarball (--tar-mib, ~100 MB).
  * container_disk: a sparse image (1 GiB, or twice --disk-mib) on the target, mkfs.ext4,
    mount -o loop, --disk-mib (300 MiB) of files of mixed sizes written into it, then sync -f,
    umount and an fsync of the image: timed from the first write to the end.
  * checkpoint: a directory of 50 files of 4-64 KiB and two --ckpt-mib (256 MiB) files, each
    written sequentially and fsynced: timed whole.
--runs N (3) repeats the suite with the targets in alternating order (forward, backward, ...);
each target is started afresh for each run and torn down in a finally (also on an error or
Ctrl-C), then anything it left (mounts, loop devices, its network namespace) is removed and
reported. A target that fails to start, or a workload that fails on one target, is recorded
with its error and the rest still runs.
Writes to --out (bench/results): bench.json (every figure of every run, medians, ratios of every
target to moosefs, moosefs_fsync, local and passthrough, all "higher is better": times are
inverted; code version, file system, machine, each target's settings), bench.md (the table and
the issue's targets, met or not) and bench.png (ratios to moosefs_fsync, log axis).
Needs root (drop_caches, loop devices, network namespaces), fio, MooseFS, fuse3: `make bench`.
Usage: python bench/run.py [--runs 3] [--targets local,passthrough,moosefs,moosefs_fsync,vstore]
         [--seq-mib 1024] [--rand-mib 256] [--rand-ops 2000] [--rand-runtime 60] [--meta-files 5000]
         [--tar-mib 100] [--disk-mib 300] [--ckpt-mib 256] [--io fio|python] [--out DIR] [--tmp-dir DIR]
Smoke: python bench/run.py --runs 1 --seq-mib 64 --rand-mib 32 --rand-ops 300 --meta-files 200 \\
         --tar-mib 10 --disk-mib 40 --ckpt-mib 16 --out /tmp/bench-smoke
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import random
import re
import shutil
import textwrap
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import fs  # noqa: E402
from bench.provenance import code_version, filesystem_of, system_busy_s  # noqa: E402

MIB = fs.MIB
KIB = 1024
PEERS = ROOT.parent / "shared" / "peers"
ALL_TARGETS = ("local", "passthrough", "moosefs", "moosefs_fsync", "vstore")
BASELINES = ("moosefs", "moosefs_fsync", "local", "passthrough")

#: every figure: (short name, unit); a figure in seconds is a time (lower is better)
FIGURES: dict[str, tuple[str, str]] = {
    "seq_write_mib_s": ("seq write", "MiB/s"),
    "seq_read_mib_s": ("seq read (cold)", "MiB/s"),
    "rand_write_j1_iops": ("4 KiB rand write, 1 job", "IOPS"),
    "rand_read_j1_iops": ("4 KiB rand read, 1 job", "IOPS"),
    "rand_write_j4_iops": ("4 KiB rand write, 4 jobs", "IOPS"),
    "rand_read_j4_iops": ("4 KiB rand read, 4 jobs", "IOPS"),
    "create_ops_s": ("create", "ops/s"),
    "stat_ops_s": ("stat", "ops/s"),
    "unlink_ops_s": ("unlink", "ops/s"),
    "untar_s": ("untar rootfs", "s"),
    "container_disk_s": ("container disk (ext4 on loop)", "s"),
    "checkpoint_s": ("checkpoint", "s"),
}
GOALS: list[tuple[str, str, tuple[str, ...], float]] = [
    ("vstore >= 1.0x moosefs_fsync on every workload", "moosefs_fsync", tuple(FIGURES), 1.0),
    ("vstore >= 1.0x moosefs (default) on seq read, rand read and metadata ops", "moosefs",
     ("seq_read_mib_s", "rand_read_j1_iops", "rand_read_j4_iops", "create_ops_s", "stat_ops_s", "unlink_ops_s"), 1.0),
    ("vstore seq write >= 0.5x local", "local", ("seq_write_mib_s",), 0.5),
    ("vstore seq read >= 0.7x local", "local", ("seq_read_mib_s",), 0.7),
    ("vstore 4 KiB rand read >= 0.5x passthrough", "passthrough", ("rand_read_j1_iops", "rand_read_j4_iops"), 0.5),
]


def higher_is_better(key: str) -> bool:
    return FIGURES[key][1] != "s"


def ratio(key: str, value: float, base: float) -> float:
    """value relative to base, > 1 when value is the better one."""
    return value / base if higher_is_better(key) else base / value


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, subprocess.CalledProcessError):
        text += f"\n{(exc.stderr or '').strip()}"
    return text.strip()[-2000:]


def sh(*argv: str, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    """Run a command in its own session (a Ctrl-C reaches only us), killed with all its
    children (fio's jobs) if it times out or we are interrupted; raise with its stderr if it fails."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, argv, stdout, stderr)
    return stdout


# ---- Ctrl-C / SIGTERM: raised once, never inside a start or a teardown -----------------------------


class Stop:
    """The first SIGINT/SIGTERM raises KeyboardInterrupt, except while a target starts or is
    torn down (``shielded``), where it waits until that is over; later ones only say so."""
    requested = False
    raised = False
    shield = 0

    @classmethod
    def handler(cls, signum: int, frame: Any) -> None:
        if cls.requested:
            print("stopping: tearing the targets down, please wait", file=sys.stderr, flush=True)
            return
        cls.requested = True
        if not cls.shield:
            cls.raised = True
            raise KeyboardInterrupt

    @classmethod
    def check(cls) -> None:
        if cls.requested and not cls.raised and not cls.shield:
            cls.raised = True
            raise KeyboardInterrupt


@contextmanager
def shielded(check_after: bool = True) -> Iterator[None]:
    Stop.shield += 1
    try:
        yield
    finally:
        Stop.shield -= 1
    if check_after:
        Stop.check()


@contextmanager
def guarded(cm: AbstractContextManager[Any]) -> Iterator[Any]:
    """Enter and exit ``cm`` shielded from Ctrl-C (a half-started or half-stopped target
    would leave processes, mounts or a network namespace behind)."""
    with shielded(check_after=False):
        value = cm.__enter__()
    try:
        Stop.check()
        yield value
    except BaseException:
        with shielded(check_after=False):
            if not cm.__exit__(*sys.exc_info()):
                raise
    else:
        with shielded():
            cm.__exit__(None, None, None)


# ---- leftovers: mounts, loop devices, network namespaces ---------------------------------------------

#: MooseFS directories and network namespaces made during this run (only these are swept)
MOOSEFS_DIRS: list[Path] = []
NETNS: set[str] = set()


def mounts_under(path: Path) -> list[tuple[str, str]]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount, fstype = line.split()[:3]
        mount = mount.replace("\\040", " ")
        if (mount + "/").startswith(prefix):
            found.append((mount, fstype))
    return found


def loops_under(path: Path) -> list[str]:
    try:
        out = subprocess.run(["losetup", "--list", "--json", "-O", "NAME,BACK-FILE"], capture_output=True,
                             text=True, timeout=30).stdout
        devices = json.loads(out)["loopdevices"] if out.strip() else []
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return []
    prefix = str(path).rstrip("/") + "/"
    return [d["name"] for d in devices if (d.get("back-file") or "").startswith(prefix)]


def netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def sweep(path: Path) -> list[str]:
    """Remove whatever the targets under ``path`` left behind; returns what there was (each
    one is a teardown bug, reported in the JSON)."""
    left: list[str] = []

    def quiet(*argv: str) -> bool:
        try:
            return subprocess.run(argv, capture_output=True, timeout=120, start_new_session=True).returncode == 0
        except subprocess.TimeoutExpired:
            return False
    with shielded(check_after=False):
        for mount, fstype in sorted(mounts_under(path), key=lambda m: -len(m[0])):  # loop-mounted ext4 first
            if not fstype.startswith("fuse"):
                left.append(f"mount {mount} ({fstype})")
                quiet("umount", mount) or quiet("umount", "-l", mount)
        for dev in loops_under(path):
            left.append(f"loop device {dev}")
            quiet("losetup", "-d", dev)
        for d in MOOSEFS_DIRS:
            if str(d).startswith(str(path)) and d.exists() and (list(d.rglob("*.pid")) or (d / "netns").exists()):
                left.append(f"MooseFS processes or namespace of {d}")
                quiet("bash", str(PEERS / "moosefs-down.sh"), str(d))
        for mount, fstype in sorted(mounts_under(path), key=lambda m: -len(m[0])):
            left.append(f"mount {mount} ({fstype})")
            quiet("fusermount3", "-u", mount) or quiet("fusermount3", "-u", "-z", mount) or quiet("umount", "-l", mount)
        for ns in sorted(NETNS & netns_list()):
            if any(str(d).startswith(str(path)) and moosefs_netns(d) == ns for d in MOOSEFS_DIRS):
                left.append(f"network namespace {ns}")
                quiet("ip", "netns", "del", ns)
    return left


# ---- targets: each yields (mount point, its settings) ----------------------------------------------


def mount_options(mnt: Path) -> str:
    """The mount table's line for ``mnt`` (octal escapes decoded)."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        device, mount, fstype, options = (re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
                                          for field in line.split()[:4])
        if mount == str(mnt):
            return f"{device} {fstype} {options}"
    return ""


@contextmanager
def local_target(base: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    with fs.local_target(base) as d:
        yield d, {"what": "a directory on the local disk", "filesystem": filesystem_of(d)}


@contextmanager
def passthrough_target(base: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    with fs.passthrough_target(base) as mnt:
        yield mnt, {"what": "bench/passthrough.py: pyfuse3 on asyncio, one system call per request on a local "
                            "directory; page cache on, no writeback cache, default_permissions (as the vstore mount)",
                    "source_filesystem": filesystem_of(base / "pt-src"), "mount": mount_options(mnt)}


def moosefs_netns(d: Path) -> str:
    return "vsb-mfs-" + hashlib.md5(str(d).encode()).hexdigest()[:8]  # moosefs-up.sh's name for it


def log_tails(d: Path, lines: int = 8) -> str:
    out = []
    for log in sorted(d.rglob("*.log")):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        if text:
            out.append(f"--- {log.relative_to(d)}\n" + "\n".join(text))
    return "\n".join(out)


@contextmanager
def moosefs_target(base: Path, fsync: bool) -> Iterator[tuple[Path, dict[str, Any]]]:
    d = base / "moosefs"
    d.mkdir()
    MOOSEFS_DIRS.append(d)
    NETNS.add(moosefs_netns(d))
    env = {**os.environ, "MFS_GOAL": "3", "MFS_FSYNC": "1" if fsync else "0", "MFS_CGI": "0"}
    try:
        try:
            sh("bash", str(PEERS / "moosefs-up.sh"), str(d), env=env, timeout=300)
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"moosefs-up.sh exited {exc.returncode}: {exc.stderr.strip()}\n{log_tails(d)}") from None
        if (d / "netns").exists():
            NETNS.add((d / "netns").read_text().strip())
        settings: dict[str, Any] = dict(line.split("=", 1) for line in (d / "env").read_text().splitlines() if "=" in line)
        ns, mnt = settings["MFS_NETNS"], d / "mnt"
        cs_cfg = (d / "cs1" / "mfschunkserver.cfg").read_text()
        settings.update({
            "what": "MooseFS: 1 master + 3 chunkservers + mfsmount in a private network namespace "
                    "(../shared/peers/moosefs-up.sh), data on the same disk",
            "version": subprocess.run(["dpkg-query", "-W", "-f=${Version}", "moosefs-master"], capture_output=True,
                                      text=True).stdout.strip(),
            "goal_on_mount": sh("nsenter", f"--net=/run/netns/{ns}", "mfsgetgoal", str(mnt)).split()[-1],
            "HDD_FSYNC_BEFORE_CLOSE": next((line.split("=")[1].strip() for line in cs_cfg.splitlines()
                                            if line.startswith("HDD_FSYNC_BEFORE_CLOSE")), "?"),
            "mount": mount_options(mnt)})
        yield mnt, settings
    finally:
        in_flight = sys.exc_info()[0] is not None
        result = subprocess.run(["bash", str(PEERS / "moosefs-down.sh"), str(d)], capture_output=True, text=True,
                                timeout=600, start_new_session=True)
        if result.returncode != 0:
            message = f"moosefs-down.sh exited {result.returncode}: {result.stderr.strip()}"
            if not in_flight:
                raise RuntimeError(message)
            print(message, file=sys.stderr, flush=True)


@contextmanager
def vstore_target(base: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    from vstore.metadata.fsm.namespace import DEFAULT_POLICY
    with fs.vstore_target(base) as mnt:
        yield mnt, {"what": "vstore: 3 MDS + 3 chunkservers (processes on loopback, distinct host labels), one "
                            "mount (tests/harness/fsprocs.FsCluster via bench/fs.py)",
                    "mds": 3, "chunkservers": 3, "replica_policy": DEFAULT_POLICY, "chunk_bytes": 64 * MIB,
                    "mount": mount_options(mnt)}


TARGETS: dict[str, Callable[[Path], AbstractContextManager[tuple[Path, dict[str, Any]]]]] = {
    "local": local_target,
    "passthrough": passthrough_target,
    "moosefs": lambda base: moosefs_target(base, fsync=False),
    "moosefs_fsync": lambda base: moosefs_target(base, fsync=True),
    "vstore": vstore_target,
}


# ---- workloads: each adds its figures to ``out`` (and what it checked to ``checks``) -----------------


class Ctx:
    """What every workload gets: the options, the tarball, a pool of random bytes."""

    def __init__(self, args: argparse.Namespace, tarball: Path, tar_shape: dict[str, int]) -> None:
        self.args = args
        self.tarball = tarball
        self.tar_shape = tar_shape
        self.pool = random.Random(7).randbytes(9 * MIB)
        #: a local-disk directory of the current target's run (outside its mount)
        self.scratch = Path()


def fio(path: Path, rw: str, bs: str, size: int, *, jobs: int = 1, ios: int = 0, runtime: int = 0) -> dict[str, Any]:
    """One fio job (``jobs`` processes on the same file, reported as a group): its read or
    write figures (io_bytes, total_ios, runtime in ms)."""
    write = "write" in rw
    argv = ["fio", f"--name={rw}", f"--filename={path}", "--ioengine=psync", "--direct=0", f"--rw={rw}", f"--bs={bs}",
            f"--size={size}", "--fallocate=none", "--invalidate=1", "--randrepeat=1", f"--numjobs={jobs}",
            "--group_reporting", "--output-format=json"]
    argv += ["--end_fsync=1"] if write else []
    argv += [f"--number_ios={ios}"] if ios else []
    argv += [f"--runtime={runtime}"] if runtime else []
    out = sh(*argv, timeout=3600)
    job = json.loads(out[out.index("{"):])["jobs"][0]
    if job.get("error"):
        raise RuntimeError(f"fio {rw}: error {job['error']}")
    figures = job["write" if write else "read"]
    if figures["runtime"] <= 0 or figures["io_bytes"] <= 0:
        raise RuntimeError(f"fio {rw}: nothing done ({figures['io_bytes']} bytes in {figures['runtime']} ms)")
    return {"io_bytes": figures["io_bytes"], "total_ios": figures["total_ios"], "runtime_ms": figures["runtime"]}


def seq(root: Path, ctx: Ctx, out: dict[str, float], checks: dict[str, Any]) -> None:
    big, total = root / "seq.bin", ctx.args.seq_mib * MIB
    if ctx.args.io == "python":
        out["seq_write_mib_s"] = fs.seq_write(big, total)
        out["seq_read_mib_s"] = fs.seq_read(big, total)  # drops the caches, checks the size read
    else:
        for key, rw in (("seq_write_mib_s", "write"), ("seq_read_mib_s", "read")):
            if rw == "read":
                checks["drop_caches"] = fs.drop_caches()
            got = fio(big, rw, "1M", total)
            if got["io_bytes"] != total:
                raise AssertionError(f"seq {rw}: {got['io_bytes']} of {total} bytes")
            out[key] = total / MIB / (got["runtime_ms"] / 1000)
            checks[key] = got
    if big.stat().st_size != total:
        raise AssertionError(f"seq.bin is {big.stat().st_size} bytes, not {total}")
    big.unlink()


def rand(root: Path, ctx: Ctx, out: dict[str, float], checks: dict[str, Any]) -> None:
    a = ctx.args
    rnd, size = root / "rand.bin", a.rand_mib * MIB
    if a.io == "python":
        fs.seq_write(rnd, size)
    else:
        fio(rnd, "write", "1M", size)  # laid out in full, fsynced (not timed)
    for jobs in (1, 4):
        for rw in ("randwrite", "randread"):
            key = f"rand_{rw[4:]}_j{jobs}_iops"
            if a.io == "python":
                out[key] = fs.rand_io(rnd, size, jobs, a.rand_ops, rw == "randwrite")  # reads: after drop_caches
                continue
            if rw == "randread":
                fs.drop_caches()
            got = fio(rnd, rw, "4k", size, jobs=jobs, ios=a.rand_ops, runtime=a.rand_runtime)
            if got["io_bytes"] != got["total_ios"] * 4096:
                raise AssertionError(f"{key}: {got['io_bytes']} bytes in {got['total_ios']} 4 KiB operations")
            out[key] = got["total_ios"] / (got["runtime_ms"] / 1000)
            checks[key] = {**got, "wanted_ios": jobs * a.rand_ops}
    if rnd.stat().st_size != size:
        raise AssertionError(f"rand.bin is {rnd.stat().st_size} bytes, not {size}")
    rnd.unlink()


def meta(root: Path, ctx: Ctx, out: dict[str, float], checks: dict[str, Any]) -> None:
    for k, v in fs.meta(root, ctx.args.meta_files).items():
        out[f"{k}_ops_s"] = v
    if left := os.listdir(root / "meta"):
        raise AssertionError(f"{len(left)} files left after unlink")
    (root / "meta").rmdir()


def untar(root: Path, ctx: Ctx, out: dict[str, float], checks: dict[str, Any]) -> None:
    out["untar_s"] = fs.untar(ctx.tarball, root / "untar")
    got = {"files": 0, "dirs": 0, "symlinks": 0, "bytes": 0}
    for dirpath, dirnames, filenames in os.walk(root / "untar"):
        got["dirs"] += len(dirnames)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISLNK(st.st_mode):
                got["symlinks"] += 1
            else:
                got["files"] += 1
                got["bytes"] += st.st_size
    if got != ctx.tar_shape:
        raise AssertionError(f"extracted {got}, the tarball has {ctx.tar_shape}")
    checks["untar"] = got


def write_file(path: Path, size: int, pool: bytes, *, at: int = 0, fsync: bool = False) -> None:
    """``size`` bytes from the random pool (starting at ``at``) in 1 MiB writes."""
    view = memoryview(pool)
    span = len(pool) - MIB
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = 0
        while done < size:
            start = (at + done) % span
            done += os.write(fd, view[start:start + min(MIB, size - done)])
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def container_disk(root: Path, ctx: Ctx, out: dict[str, float], checks: dict[str, Any]) -> None:
    total = ctx.args.disk_mib * MIB
    image, target = root / "disk.img", ctx.scratch / "disk-mnt"  # the ext4 mount point is on local disk
    image_bytes = max(1024 * MIB, 2 * total)
    with open(image, "wb") as fp:
        fp.truncate(image_bytes)  # sparse
    sh("mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", str(image))
    target.mkdir(exist_ok=True)
    rng = random.Random(11)
    sizes = []
    while sum(sizes) < total:
        sizes.append(min(rng.choices([4, 16, 64, 256, 1024, 4096], [30, 25, 20, 12, 8, 5])[0] * KIB,
                         total - sum(sizes)))
    mounted = False
    try:
        sh("mount", "-o", "loop", str(image), str(target), timeout=300)
        mounted = True
        began = time.perf_counter()
        for i, size in enumerate(sizes):
            if i % 100 == 0:
                (target / f"layer{i // 100:02d}").mkdir()
            write_file(target / f"layer{i // 100:02d}" / f"f{i:05d}", size, ctx.pool, at=i * 7919)
        written = sum(p.stat().st_size for p in target.glob("layer*/f*"))
        sh("sync", "-f", str(target), timeout=3600)
        sh("umount", str(target), timeout=3600)
        mounted = False
        fd = os.open(image, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        out["container_disk_s"] = time.perf_counter() - began
        if written != total:
            raise AssertionError(f"wrote {written} of {total} bytes into the image")
        checks["container_disk"] = {"files": len(sizes), "bytes": total, "image_bytes": image_bytes}
    finally:
        if mounted and subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)
        for dev in loops_under(root):
            subprocess.run(["losetup", "-d", dev], capture_output=True)
    if image.stat().st_size != image_bytes:
        raise AssertionError(f"disk.img is {image.stat().st_size} bytes, not {image_bytes}")
    image.unlink()


def checkpoint(root: Path, ctx: Ctx, out: dict[str, float], checks: dict[str, Any]) -> None:
    rng = random.Random(13)
    files = {f"shard{i:02d}.meta": rng.randint(1, 16) * 4 * KIB for i in range(50)}
    files |= {"model.0.bin": ctx.args.ckpt_mib * MIB, "model.1.bin": ctx.args.ckpt_mib * MIB}
    d = root / "ckpt"

    def run() -> None:
        d.mkdir()
        for i, (name, size) in enumerate(files.items()):
            write_file(d / name, size, ctx.pool, at=i * 104729, fsync=True)
    out["checkpoint_s"] = fs.timed(run)
    wrong = {name: (d / name).stat().st_size for name, size in files.items() if (d / name).stat().st_size != size}
    if wrong:
        raise AssertionError(f"checkpoint files of the wrong size: {wrong}")
    checks["checkpoint"] = {"files": len(files), "bytes": sum(files.values())}


WORKLOADS: dict[str, Callable[[Path, Ctx, dict[str, float], dict[str, Any]], None]] = {
    "seq": seq, "rand": rand, "meta": meta, "untar": untar, "container_disk": container_disk, "checkpoint": checkpoint,
}


# ---- one target in one run -------------------------------------------------------------------------


def run_target(name: str, run: int, run_dir: Path, ctx: Ctx, records: list[dict[str, Any]]) -> dict[str, Any]:
    record: dict[str, Any] = {"run": run, "target": name, "figures": {}, "errors": {}, "checks": {}, "wall": {}}
    records.append(record)  # kept if interrupted
    ctx.scratch = run_dir
    phase = "start"
    began, busy = time.monotonic(), system_busy_s()
    try:
        with guarded(TARGETS[name](run_dir)) as (mnt, settings):
            record["wall"]["start"] = time.monotonic() - began
            record["settings"] = settings
            phase = "workloads"
            for workload, fn in WORKLOADS.items():
                Stop.check()
                t = time.monotonic()
                try:
                    fn(mnt, ctx, record["figures"], record["checks"])
                except Exception as exc:  # noqa: BLE001 - recorded; the other workloads still run
                    record["errors"][workload] = describe(exc)
                    print(f"  {name} {workload}: {describe(exc).splitlines()[0]}", flush=True)
                record["wall"][workload] = time.monotonic() - t
            phase = "teardown"
            t = time.monotonic()
        record["wall"]["teardown"] = time.monotonic() - t
    except Exception as exc:  # noqa: BLE001 - recorded; the other targets still run
        record[f"{phase}_error" if phase != "workloads" else "error"] = describe(exc)
        print(f"  {name}: {phase} failed: {describe(exc)}", flush=True)
    finally:
        wall = time.monotonic() - began
        record["wall_s"] = wall  # all of it; "wall": each step's (workloads: with their preparation and checks)
        record["machine_busy"] = (system_busy_s() - busy) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0
        if left := sweep(run_dir):
            record["leftovers"] = left
            print(f"  {name}: removed what its teardown left: {', '.join(left)}", flush=True)
        if not ctx.args.keep and not mounts_under(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)  # its data: the disk stays as free for every target
    return record


# ---- report -----------------------------------------------------------------------------------------


def summarize(records: list[dict[str, Any]], targets: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    medians: dict[str, dict[str, float]] = {}
    for t in targets:
        values: dict[str, list[float]] = {}
        for r in records:
            if r["target"] == t:
                for k, v in r["figures"].items():
                    values.setdefault(k, []).append(v)
        medians[t] = {k: statistics.median(values[k]) for k in FIGURES if values.get(k)}
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for t in targets:
        for b in BASELINES:
            if b in medians and b != t:
                ratios.setdefault(t, {})[f"to_{b}"] = {
                    k: ratio(k, v, medians[b][k]) for k, v in medians[t].items() if medians[b].get(k)}
    return medians, ratios


def goals(ratios: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    vs = ratios.get("vstore", {})
    for text, base, keys, threshold in GOALS:
        got = vs.get(f"to_{base}", {})
        measured = {k: got[k] for k in keys if k in got}
        below = sorted(k for k, v in measured.items() if v < threshold)
        status = "not met" if below else "met" if len(measured) == len(keys) else "not measured"
        out.append({"goal": text, "baseline": base, "threshold": threshold, "status": status, "ratios": measured,
                    "below": below, "missing": [k for k in keys if k not in measured]})
    return out


def label(key: str, a: argparse.Namespace) -> str:
    name, unit = FIGURES[key]
    size = {"seq": f"{a.seq_mib} MiB", "rand": f"{a.rand_mib} MiB file", "untar": f"{a.tar_mib} MiB",
            "container": f"{a.disk_mib} MiB", "checkpoint": f"50 small + 2x{a.ckpt_mib} MiB"
            }.get(key.split("_")[0], f"{a.meta_files} files")
    return f"{name}, {size} ({unit})"


def number(v: float | None, unit: str) -> str:
    if v is None:
        return "–"
    if unit == "s":
        return f"{v:.2f}"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def write_markdown(path: Path, result: dict[str, Any], a: argparse.Namespace) -> None:
    targets, medians, ratios = result["targets_run"], result["medians"], result["ratios"]
    code = result["code"]
    vs_cols = [b for b in ("moosefs_fsync", "moosefs", "local", "passthrough")]
    lines = [
        "# vstore against local disk, a FUSE passthrough and MooseFS",
        "",
        f"{result['started']}, commit {code['commit'][:12]}{' (vstore/ modified)' if code['vstore_dirty'] else ''}, "
        f"{a.runs} run(s), medians; data on {result['filesystem']['device']} ({result['filesystem']['type']}), "
        f"{result['machine']['cpus']} CPUs, I/O by {a.io}. Ratios: higher is better (times inverted)."
        + (" **Interrupted: partial results.**" if result.get("interrupted") else ""),
        "",
        "| workload | " + " | ".join(targets) + " | " + " | ".join(f"vstore/{b}" for b in vs_cols) + " |",
        "|---|" + "---:|" * (len(targets) + len(vs_cols)),
    ]
    for key in FIGURES:
        cells = [number(medians.get(t, {}).get(key), FIGURES[key][1]) for t in targets]
        rs = [ratios.get("vstore", {}).get(f"to_{b}", {}).get(key) for b in vs_cols]
        lines.append(f"| {label(key, a)} | " + " | ".join(cells) + " | "
                     + " | ".join("–" if r is None else f"{r:.2f}x" for r in rs) + " |")
    lines += ["", "Targets from the issue:", ""]
    for g in result["goals"]:
        detail = "; ".join(f"{FIGURES[k][0]} {v:.2f}x" for k, v in g["ratios"].items() if k in g["below"])
        missing = "; ".join(FIGURES[k][0] for k in g["missing"]) if g["ratios"] else f"vstore or {g['baseline']}"
        lines.append(f"- {g['goal']}: **{g['status']}**" + (f" (below: {detail})" if detail else "")
                     + (f" (not measured: {missing})" if g["missing"] else ""))
    errors = [(r["run"] + 1, r["target"], w, e) for r in result["runs_data"]
              for w, e in [*r["errors"].items(), *((p, r[p]) for p in ("start_error", "error", "teardown_error")
                                                   if p in r)]]
    if errors:
        lines += ["", "Errors:", ""]
        lines += [f"- run {n} {t} {w}: {e.splitlines()[0][:300]}" for n, t, w, e in errors]
    lines += ["", "Targets:", ""]
    for t in targets:
        s = result["targets"].get(t) or {}
        extra = {"moosefs": f"; goal {s.get('goal_on_mount')}, HDD_FSYNC_BEFORE_CLOSE={s.get('HDD_FSYNC_BEFORE_CLOSE')}, "
                            f"MooseFS {s.get('version')}",
                 "vstore": f"; replica policy {s.get('replica_policy')}, {s.get('chunk_bytes', 0) // MIB} MiB chunks"
                 }.get(t.split("_")[0], "")
        lines.append(f"- {t}: {s.get('what', 'did not start')}{extra if s else ''}")
    lines += ["", "Every run's figures, the settings, machine and code version: bench.json; chart: bench.png.", ""]
    path.write_text("\n".join(lines))


def write_chart(path: Path, result: dict[str, Any]) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    medians, targets = result["medians"], result["targets_run"]
    ref = next((b for b in ("moosefs_fsync", "moosefs", "local", "passthrough") if medians.get(b)), None)
    if ref is None:
        return "no baseline measured"
    keys = [k for k in FIGURES if medians[ref].get(k)]
    fig, ax = plt.subplots(figsize=(14, 5.5))
    width = 0.8 / len(targets)
    for i, t in enumerate(targets):
        xs = [j + (i - (len(targets) - 1) / 2) * width for j, k in enumerate(keys) if medians[t].get(k)]
        ys = [ratio(k, medians[t][k], medians[ref][k]) for k in keys if medians[t].get(k)]
        ax.bar(xs, ys, width, label=t)
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([textwrap.fill(FIGURES[k][0], 14) for k in keys], fontsize=8)
    ax.set_ylabel(f"ratio to {ref} (higher is better, log)")
    ax.set_title(f"File-system workloads: each target relative to {ref} (medians of {result['runs']} run(s))")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"ratios to {ref}"


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    release = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)

    def version(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            return ""
    return {"os": release.get("PRETTY_NAME", "").strip('"'), "kernel": platform.release(), "cpus": os.cpu_count(),
            "cpu_model": next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                               if line.startswith("model name")), ""),
            "memory_bytes": int(meminfo["MemTotal"].split()[0]) * 1024, "python": platform.python_version(),
            "fio": version("fio", "--version"),
            "moosefs": version("dpkg-query", "-W", "-f=${Version}", "moosefs-master")}


def disk_of(device: str) -> dict[str, Any]:
    name = Path(device).name
    block = Path("/sys/class/block") / name
    if (block / "partition").exists():
        block = block.resolve().parent
    rotational = block / "queue" / "rotational"
    return {"device": device, "rotational": rotational.read_text().strip() == "1" if rotational.exists() else None}


def main() -> None:
    global PEERS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--targets", default=",".join(ALL_TARGETS))
    parser.add_argument("--seq-mib", type=int, default=1024)
    parser.add_argument("--rand-mib", type=int, default=256)
    parser.add_argument("--rand-ops", type=int, default=2000, help="4 KiB operations per job")
    parser.add_argument("--rand-runtime", type=int, default=60, help="at most this many s per random job (fio; 0: none)")
    parser.add_argument("--meta-files", type=int, default=5000)
    parser.add_argument("--tar-mib", type=int, default=100)
    parser.add_argument("--disk-mib", type=int, default=300, help="MiB of files written into the ext4 image")
    parser.add_argument("--ckpt-mib", type=int, default=256, help="size of each of the checkpoint's two big files")
    parser.add_argument("--io", choices=("fio", "python"), default="fio" if shutil.which("fio") else "python",
                        help="seq/rand workloads by fio or by bench/fs.py's Python loops")
    parser.add_argument("--tmp-dir", help="where every target's data lives (default: $TMPDIR or /tmp)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="bench.json, bench.md, bench.png")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (logs) afterwards")
    parser.add_argument("--moosefs-scripts", default=str(PEERS), help="where moosefs-up.sh and moosefs-down.sh are")
    a = parser.parse_args()
    PEERS = Path(a.moosefs_scripts).resolve()
    targets = [t for t in ALL_TARGETS if t in a.targets.split(",")]
    if not targets or set(a.targets.split(",")) - set(ALL_TARGETS):
        parser.error(f"--targets: a comma list of {', '.join(ALL_TARGETS)}")
    if os.geteuid() != 0:
        print("warning: not root: no drop_caches, loop devices or MooseFS network namespace", file=sys.stderr)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, Stop.handler)

    started, began = datetime.datetime.now(datetime.timezone.utc), time.monotonic()
    with shielded(check_after=False):
        code = code_version()
        base = Path(tempfile.mkdtemp(prefix="vstore-bench-", dir=a.tmp_dir))
    records: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    interrupted = False
    fs_info: dict[str, str] = filesystem_of(base)
    tar_shape: dict[str, int] = {}
    try:
        Stop.check()
        tarball = base / "rootfs.tar"
        tar_shape = fs.make_tarball(tarball, a.tar_mib)
        ctx = Ctx(a, tarball, tar_shape)
        for run in range(a.runs):
            for name in (targets if run % 2 == 0 else targets[::-1]):
                Stop.check()
                print(f"run {run + 1}/{a.runs} {name} ...", flush=True)
                run_dir = base / f"run{run}-{name}"
                run_dir.mkdir()
                record = run_target(name, run, run_dir, ctx, records)
                if record.get("settings") and not settings.get(name):
                    settings[name] = record["settings"]
                print(f"run {run + 1}/{a.runs} {name} ({record['wall_s']:.0f} s): "
                      + ", ".join(f"{k} {v:.1f}" for k, v in record["figures"].items()), flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: writing what was measured", file=sys.stderr, flush=True)
    finally:
        if left := sweep(base):
            print(f"removed leftovers: {', '.join(left)}", file=sys.stderr)
        if a.keep:
            print(f"kept {base}", flush=True)
        elif not mounts_under(base):
            shutil.rmtree(base, ignore_errors=True)

    if interrupted and not any(r["figures"] for r in records):
        print(f"nothing measured: {a.out} left as it was", file=sys.stderr)
        sys.exit(130)
    medians, ratios = summarize(records, targets)
    result: dict[str, Any] = {
        "benchmark": "run", "started": started.isoformat(timespec="seconds"), "interrupted": interrupted,
        "code": code, "filesystem": fs_info, "disk": disk_of(fs_info["device"]), "machine": machine(), "runs": a.runs,
        "targets_run": targets,
        "setup": {"io": a.io, "seq_bytes": a.seq_mib * MIB, "rand_bytes": a.rand_mib * MIB, "rand_ops_per_job": a.rand_ops,
                  "rand_runtime_max_s": a.rand_runtime, "meta_files": a.meta_files, "tarball": tar_shape,
                  "container_disk_bytes": a.disk_mib * MIB, "checkpoint_big_file_bytes": a.ckpt_mib * MIB,
                  "order": [targets if r % 2 == 0 else targets[::-1] for r in range(a.runs)],
                  "cold_reads": "sync + drop_caches (and fio invalidate=1) before every read workload: the page "
                                "caches of the kernel, of the passthrough's source and of every chunkserver on this "
                                "machine; a client's own memory caches (mfsmount, vstore mount) are not dropped",
                  "machine_busy": "runs_data[].machine_busy: the share of all CPUs busy (any process, ours too) "
                                  "while that target ran, to spot interference"},
        "targets": settings,
        "figures": {k: {"name": n, "unit": u, "higher_is_better": u != "s"} for k, (n, u) in FIGURES.items()},
        "ratio_note": "ratios[t]['to_b'][figure]: t's median relative to b's, higher is better for every figure "
                      "(rates t/b, times b/t)",
        "medians": medians, "ratios": ratios, "goals": goals(ratios), "runs_data": records,
        "elapsed_s": time.monotonic() - began,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result["chart"] = write_chart(out / "bench.png", result)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(out / "bench.md", result, a)
    print("\n" + (out / "bench.md").read_text())
    print(f"wrote {out / 'bench.json'}, bench.md, bench.png ({result['elapsed_s']:.0f} s)")
    if interrupted:
        sys.exit(130)


if __name__ == "__main__":
    main()
