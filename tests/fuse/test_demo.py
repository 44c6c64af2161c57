"""``vstore demo`` (what ``make demo`` runs): a mounted 3 MDS + 3 chunkserver cluster on
loopback in a few seconds, usable at once, stopped cleanly by Ctrl-C, and started again from
its directory with the data still there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.fsprocs import is_mounted, unmount

pytestmark = pytest.mark.timeout(180)


def start_demo(root: Path) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "vstore.cli.main", "demo", "--dir", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if "Ctrl-C stops everything" in line:
            return proc, lines
    proc.kill()
    raise AssertionError("the demo did not come up:\n" + "\n".join(lines))


def stop_demo(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_demo_runs_a_mounted_cluster_and_stops_cleanly(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    proc, lines = start_demo(root)
    try:
        assert lines[0].startswith("vstore demo running in")
        mnt = root / "mnt"
        assert os.path.ismount(mnt)
        data = os.urandom(3 * 1024 * 1024)
        (mnt / "hello.bin").write_bytes(data)
        assert (mnt / "hello.bin").read_bytes() == data
        assert stop_demo(proc) == 0
        assert not is_mounted(mnt)

        proc, lines = start_demo(root)
        assert lines[0].startswith("vstore demo restarted in")
        assert (mnt / "hello.bin").read_bytes() == data
        assert stop_demo(proc) == 0
        assert not is_mounted(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
        unmount(root / "mnt")


def test_the_demo_refuses_a_directory_that_holds_something_else(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = subprocess.run([sys.executable, "-m", "vstore.cli.main", "demo", "--dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "is not empty and holds no earlier demo" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
