"""What a benchmark result was measured on and with: the code (commit, dirty flag, a hash of
vstore/'s sources), the file system under the data, CPU time of processes and of the whole
machine (to see interference), and the top frames of a py-spy profile. Shared by the
benchmarks in this folder."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def code_version() -> dict[str, Any]:
    """The commit measured, whether vstore/ differs from it, and a hash of vstore/'s sources
    (the MDS processes are started throughout the run: the code must not change meanwhile)."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "vstore").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD"), "vstore_dirty": bool(git("status", "--porcelain", "--", "vstore")),
            "vstore_sources_sha256": digest.hexdigest()}


def filesystem_of(path: Path) -> dict[str, str]:
    best = ("", "", "")
    for line in Path("/proc/self/mounts").read_text().splitlines():
        device, mount, fstype = line.split()[:3]
        mount = mount.replace("\\040", " ")
        if (str(path) + "/").startswith(mount.rstrip("/") + "/") and len(mount) >= len(best[1]):
            best = (device, mount, fstype)
    return {"path": str(path), "device": best[0], "mount": best[1], "type": best[2]}


def proc_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_busy_s() -> float:
    """CPU seconds every process on the machine has used (user, nice, system, irq, softirq)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return sum(int(fields[i]) for i in (0, 1, 2, 5, 6)) / CLK_TCK


def top_frames(raw: Path, top: int = 15) -> str:
    """py-spy's raw (collapsed, --threads) stacks -> per thread: its share of the samples, and
    the frames with the most self time and total time."""
    threads: dict[str, dict[str, Any]] = {}
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        samples += n
        thread, *frames = stack.split(";")
        t = threads.setdefault(thread, {"self": {}, "total": {}, "n": 0})
        t["n"] += n
        leaf = frames[-1] if frames else "?"
        t["self"][leaf] = t["self"].get(leaf, 0) + n
        for frame in set(frames):
            t["total"][frame] = t["total"].get(frame, 0) + n
    lines = [f"{samples} samples"]
    for thread, t in sorted(threads.items(), key=lambda x: -x[1]["n"]):
        n = t["n"]
        lines += ["", f"-- {thread}: {n} samples", "  self %  frame"]
        lines += [f"  {100 * c / n:6.1f}  {f}" for f, c in sorted(t["self"].items(), key=lambda x: -x[1])[:top]]
        lines += ["  total %  frame"]
        lines += [f"  {100 * c / n:7.1f}  {f}" for f, c in sorted(t["total"].items(), key=lambda x: -x[1])[:top]
                  if c < n]
    return "\n".join(lines) + "\n"
