"""Two mounts of one cluster are two hosts: close-to-open consistency between them (a file
closed on one and then opened on the other shows the first one's bytes, with no stale page
cache), and namespace changes of one seen by the other."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from tests.harness.fsprocs import FsCluster

pytestmark = pytest.mark.timeout(300)
MIB = 1024 * 1024


def test_close_on_one_host_then_open_on_the_other_shows_the_bytes(fs: FsCluster, second_mount: Path) -> None:
    a = fs.mounts["client-1"] / "shared-c2o"
    a.mkdir()
    b = second_mount / "shared-c2o"
    first = os.urandom(2 * MIB + 17)
    (a / "f").write_bytes(first)
    assert (b / "f").read_bytes() == first  # B had never seen it

    # B reads it into its page cache, A rewrites part of it and grows it, B opens again
    with open(b / "f", "rb") as fp:
        assert fp.read() == first
    second = bytearray(first)
    second[1000:5000] = os.urandom(4000)
    second += os.urandom(MIB)
    with open(a / "f", "r+b") as fp:
        fp.seek(1000)
        fp.write(second[1000:5000])
        fp.seek(len(first))
        fp.write(second[len(first):])
    assert os.stat(b / "f").st_size == len(second)
    assert (b / "f").read_bytes() == bytes(second)

    # and back: B truncates and writes, A opens
    with open(b / "f", "r+b") as fp:
        fp.truncate(3000)
        fp.seek(0)
        fp.write(b"from B")
    assert (a / "f").read_bytes() == b"from B" + bytes(second[6:3000])


def test_names_made_on_one_host_appear_on_the_other(fs: FsCluster, second_mount: Path) -> None:
    a = fs.mounts["client-1"] / "shared-names"
    a.mkdir()
    b = second_mount / "shared-names"
    (a / "new").write_text("hello")
    assert (b / "new").read_text() == "hello"
    os.rename(a / "new", a / "renamed")
    assert _gone_within(b / "new", 5.0) and (b / "renamed").read_text() == "hello"
    os.unlink(b / "renamed")
    assert _gone_within(a / "renamed", 5.0)


def _gone_within(path: Path, seconds: float) -> bool:
    """A name cached on the other host lives for entry_timeout (1 s in these mounts)."""
    deadline = time.monotonic() + seconds
    while os.path.lexists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_an_image_in_an_exclusive_write_directory_has_one_writing_host(fs: FsCluster, second_mount: Path) -> None:
    a = fs.mounts["client-1"] / "images"
    a.mkdir()
    os.setxattr(a, "vstore.exclusive_write", b"1")
    assert os.getxattr(a, "vstore.exclusive_write") == b"1"
    b = second_mount / "images"
    with open(a / "ct.img", "wb") as writer:
        writer.write(b"A's disk")
        writer.flush()
        with pytest.raises(OSError) as info:
            open(b / "ct.img", "r+b")
        assert info.value.errno == errno.EBUSY
        with open(a / "ct.img", "r+b") as again:  # the same host may open it again
            again.read()
        with open(b / "ct.img", "rb") as reader:  # and anyone may read
            assert reader.read() == b"A's disk"
    with open(b / "ct.img", "r+b") as taken:  # A closed it: the lease moves to B
        taken.write(b"B")
        with pytest.raises(OSError) as info:
            open(a / "ct.img", "ab")
        assert info.value.errno == errno.EBUSY
    assert (a / "ct.img").read_bytes() == b"B's disk"
    with open(fs.mounts["client-1"] / "free.img", "wb"), open(second_mount / "free.img", "r+b"):
        pass  # outside the marked directory, no lease
