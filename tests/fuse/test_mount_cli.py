"""``vstore mount`` / ``vstore umount`` as an operator runs them: in the background by default
(the command returns once the mount serves), and a clear one-line error for a mountpoint in
use and for a cluster nobody answers for."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.harness.fsprocs import FsCluster, unmount
from tests.harness.procs import free_port, vstore

pytestmark = pytest.mark.timeout(120)


def test_a_background_mount_serves_and_umount_stops_it(fs: FsCluster, tmp_path: Path) -> None:
    mnt = tmp_path / "bg"
    mnt.mkdir()
    config = fs.client_config("client-bg")
    result = vstore("mount", "-c", str(config), str(mnt), "--log-file", str(tmp_path / "bg.log"))
    try:
        assert result.returncode == 0, result.stderr
        assert "mounted on" in result.stdout and os.path.ismount(mnt)
        (mnt / "hello").write_text("from the background mount")
        assert (fs.mounts["client-1"] / "hello").read_text() == "from the background mount"

        again = vstore("mount", "-c", str(config), str(mnt))
        assert again.returncode == 2 and "is a mount point already" in again.stderr
        assert again.stderr.count("\n") == 1

        down = vstore("umount", str(mnt))
        assert down.returncode == 0, down.stderr
        deadline = time.monotonic() + 10
        while os.path.ismount(mnt) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.ismount(mnt)
        # where the kernel's requests spent their time, logged at unmount (and on SIGUSR1)
        deadline = time.monotonic() + 10
        while "event=fuse.unmounted" not in (log := (tmp_path / "bg.log").read_text()) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        stats = next(line for line in log.splitlines() if "event=fuse.op_stats" in line)
        assert 'create="1 calls, mean ' in stats and "flush=" in stats, stats
    finally:
        unmount(mnt)


def test_mounting_a_cluster_nobody_answers_for_fails_clearly(fs: FsCluster, tmp_path: Path) -> None:
    mnt = tmp_path / "nowhere"
    mnt.mkdir()
    config = tmp_path / "nowhere.toml"
    config.write_text(f"""
[cluster]
name = "ghost"
id = "{fs.cluster_id}"
mds = ["127.0.0.1:{free_port()}"]
secret_file = "{fs.secret_file}"

[client]
deadline_s = 2
""")
    result = vstore("mount", "-c", str(config), str(mnt), "--foreground")
    assert result.returncode == 1
    assert "cannot reach cluster 'ghost'" in result.stderr and "Traceback" not in result.stderr
    assert not os.path.ismount(mnt)
