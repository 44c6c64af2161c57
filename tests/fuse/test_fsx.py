"""fsx-style: one seeded sequence of writes, truncates, reads, fsyncs and reopens applied to
a file on the mount and to a file on local disk, compared after every step (issue 6's bar).
The seed is printed; a failure names the step."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

KIB = 1024
MIB = 1024 * KIB
MAX_SIZE = 6 * MIB  # six of the test cluster's 1 MiB chunks


def _pread_all(fd: int, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        got = os.pread(fd, size - len(out), len(out))
        if not got:
            break
        out += got
    return bytes(out)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_operations_match_a_local_file(mnt: Path, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    print(f"fsx seed {seed}")
    remote_path, local_path = mnt / f"fsx-{seed}", tmp_path / f"fsx-{seed}"
    flags = os.O_RDWR | os.O_CREAT
    remote, local = os.open(remote_path, flags, 0o644), os.open(local_path, flags, 0o644)
    try:
        for step in range(400):
            op = rng.choices(["write", "write_small", "truncate", "read", "fsync", "reopen"],
                             weights=[30, 25, 8, 25, 5, 7])[0]
            size = os.fstat(local).st_size
            if op in ("write", "write_small"):
                length = rng.randint(1, 256 * KIB if op == "write" else 9000)
                offset = rng.randint(0, max(0, min(MAX_SIZE, size + 512 * KIB) - length))
                data = rng.randbytes(length)
                assert os.pwrite(remote, data, offset) == os.pwrite(local, data, offset) == length
            elif op == "truncate":
                new = rng.choice([0, rng.randint(0, MAX_SIZE), size // 2, size + rng.randint(1, 300 * KIB)])
                os.ftruncate(remote, new)
                os.ftruncate(local, new)
            elif op == "read":
                offset = rng.randint(0, size + 1000)
                length = rng.randint(1, 512 * KIB)
                assert os.pread(remote, length, offset) == os.pread(local, length, offset), \
                    f"seed {seed} step {step}: read of {length} at {offset} differs"
            elif op == "fsync":
                os.fsync(remote)
            else:
                os.close(remote)
                remote = os.open(remote_path, os.O_RDWR)
            assert os.fstat(remote).st_size == os.fstat(local).st_size, f"seed {seed} step {step} ({op}): size"
            if step % 40 == 39:
                size = os.fstat(local).st_size
                assert _pread_all(remote, size) == _pread_all(local, size), f"seed {seed} step {step}: contents"
        os.fsync(remote)
        os.close(remote)
        remote = os.open(remote_path, os.O_RDONLY)
        size = os.fstat(local).st_size
        assert os.stat(remote_path).st_size == size
        assert _pread_all(remote, size) == _pread_all(local, size), f"seed {seed}: contents after reopen"
    finally:
        os.close(remote)
        os.close(local)
