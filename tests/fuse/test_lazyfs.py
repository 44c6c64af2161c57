"""The power-loss layer the F18 row runs a chunkserver on (tests/harness/lazyfs.py): what was
fsynced survives its crash, what was not is gone, and a torn crash keeps a prefix of the
unsynced writes cut at a sector. A test of the harness: a layer that lost nothing would make
F18 prove nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.harness.lazyfs import LazyMount

pytestmark = pytest.mark.timeout(60)


def _write(path: Path, data: bytes, *, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def test_a_crash_keeps_what_was_fsynced_and_loses_what_was_not(tmp_path: Path) -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse missing")
    synced, unsynced = os.urandom(20_000), os.urandom(20_000)
    with LazyMount(tmp_path / "disk", tmp_path / "mnt") as lazy:
        mnt = lazy.mountpoint
        _write(mnt / "synced", synced, sync=True)
        _write(mnt / "unsynced", unsynced, sync=False)
        _write(mnt / "synced", b"later, unsynced", sync=False)
        assert (mnt / "unsynced").read_bytes() == unsynced, "before the crash the writes are seen"
        assert lazy.crash() == "crashed 2 files"
        assert (mnt / "synced").read_bytes() == synced
        assert (mnt / "unsynced").read_bytes() == b"", "created (namespace ops are kept), its data lost"
        assert (tmp_path / "disk" / "synced").read_bytes() == synced


def test_a_torn_crash_keeps_a_sector_aligned_prefix_of_the_unsynced_writes(tmp_path: Path) -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse missing")
    data = os.urandom(64 * 1024)
    for seed in range(4):
        with LazyMount(tmp_path / f"disk{seed}", tmp_path / f"mnt{seed}", seed=seed) as lazy:
            fd = os.open(lazy.mountpoint / "f", os.O_WRONLY | os.O_CREAT, 0o644)
            for off in range(0, len(data), 8192):
                os.pwrite(fd, data[off:off + 8192], off)
            os.close(fd)
            lazy.crash(torn=True)
            kept = (lazy.mountpoint / "f").read_bytes()
            assert len(kept) % 512 == 0 and kept == data[:len(kept)], (seed, len(kept))
