"""A container disk on the mount (issue 6's bar): a 2 GiB sparse image, mkfs.ext4, mounted
through a loop device, a few hundred MiB of files written with a checksum manifest,
unmounted, ``e2fsck -fn`` clean, mounted again and every file verified. Regular files use the
page cache (no direct_io), so the loop device does not deadlock on the FUSE file."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("losetup") is None,
                                 reason="e2fsprogs / util-linux missing (make test installs them)")]
MIB = 1024 * 1024


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(argv)}: {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_an_ext4_image_on_the_mount_survives_write_unmount_fsck_and_remount(mnt: Path, tmp_path: Path) -> None:
    image = mnt / "disk.img"
    with open(image, "wb") as fp:
        fp.truncate(2 * 1024 * MIB)
    run("mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", str(image))
    target = tmp_path / "rootfs"
    target.mkdir()
    loop = run("losetup", "--find", "--show", str(image)).strip()
    mounted = False
    try:
        run("mount", "-t", "ext4", loop, str(target))
        mounted = True
        rng = random.Random(7)
        manifest: dict[str, str] = {}
        total = 0
        for d in range(8):
            (target / f"dir{d}").mkdir()
            for f in range(40):
                size = rng.choice([100, 4096, 70_000, 300_000, 1_500_000])
                data = rng.randbytes(size)
                name = f"dir{d}/file{f}"
                (target / name).write_bytes(data)
                manifest[name] = hashlib.sha256(data).hexdigest()
                total += size
        big = rng.randbytes(96 * MIB)
        (target / "big.bin").write_bytes(big)
        manifest["big.bin"] = hashlib.sha256(big).hexdigest()
        total += len(big)
        assert total > 200 * MIB
        run("umount", str(target))
        mounted = False
        run("losetup", "-d", loop)
        loop = ""
        fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True, timeout=300)
        assert fsck.returncode == 0, f"e2fsck -fn: {fsck.returncode}\n{fsck.stdout}\n{fsck.stderr}"

        loop = run("losetup", "--find", "--show", str(image)).strip()
        run("mount", "-t", "ext4", "-o", "ro", loop, str(target))
        mounted = True
        for name, digest in manifest.items():
            assert hashlib.sha256((target / name).read_bytes()).hexdigest() == digest, name
    finally:
        if mounted:
            subprocess.run(["umount", str(target)], capture_output=True)
        if loop:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
    assert os.stat(image).st_size == 2 * 1024 * MIB
