"""POSIX behaviour through a real FUSE mount of a real cluster (issue 6's bar): permissions and
ownership (checked by the kernel with default_permissions, as container users are), hard
links and link counts, symlinks, rename edge cases, truncate, sparse files, O_APPEND, O_EXCL,
a 10,000-entry directory, xattrs, offsets past 4 GiB, unlink of an open file, concurrent
writers."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import hashlib
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.harness.fsprocs import FsCluster
from vstore.client.mds_link import MdsLink

pytestmark = pytest.mark.timeout(300)

MIB = 1024 * 1024
USER = 4321  # an unprivileged uid/gid for the permission tests


def as_user(cwd: Path, code: str, uid: int = USER, gid: int = USER) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as uid/gid with ``cwd`` as its working directory (entered as root first:
    the test's temp dirs above the mount are not open to other users)."""
    def drop() -> None:
        os.chdir(cwd)
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    # the system interpreter: the test's own may live under a directory other users cannot enter
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    return subprocess.run([python, "-c", code], preexec_fn=drop, capture_output=True, text=True, timeout=60)


def test_a_file_reads_back_what_was_written_across_chunks(mnt: Path) -> None:
    data = os.urandom(3 * MIB + 12345)
    (mnt / "f").write_bytes(data)
    assert (mnt / "f").read_bytes() == data
    assert os.stat(mnt / "f").st_size == len(data)


def test_permissions_are_checked_for_other_users_and_ownership_recorded(mnt: Path) -> None:
    private = mnt / "private"
    private.mkdir(mode=0o755)
    os.chmod(private, 0o755)
    denied = as_user(private, "open('x', 'w')")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    os.chown(private, USER, USER)
    made = as_user(private, "import os; open('x', 'w').write('mine'); os.chmod('x', 0o600)")
    assert made.returncode == 0, made.stderr
    st = os.stat(private / "x")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (USER, USER, 0o600)
    # another user may neither read the 0600 file nor chmod it; root may do both
    other = as_user(private, "open('x').read()", uid=USER + 1, gid=USER + 1)
    assert other.returncode != 0 and "Permission denied" in other.stderr
    chmod = as_user(private, "import os; os.chmod('x', 0o644)", uid=USER + 1, gid=USER + 1)
    assert chmod.returncode != 0 and "Operation not permitted" in chmod.stderr
    assert (private / "x").read_text() == "mine"
    chown = as_user(private, "import os; os.chown('x', 0, 0)")
    assert chown.returncode != 0 and "Operation not permitted" in chown.stderr


def test_hard_links_share_data_and_count_links(mnt: Path) -> None:
    a = mnt / "a"
    a.write_bytes(b"shared")
    os.link(a, mnt / "b")
    os.link(a, mnt / "c")
    assert os.stat(a).st_nlink == 3 and os.stat(a).st_ino == os.stat(mnt / "c").st_ino
    (mnt / "b").write_bytes(b"changed through b")
    assert a.read_bytes() == b"changed through b"
    os.unlink(a)
    assert os.stat(mnt / "c").st_nlink == 2 and (mnt / "c").read_bytes() == b"changed through b"
    with pytest.raises(PermissionError):
        os.link(mnt, mnt / "dirlink")


def test_symlinks(mnt: Path) -> None:
    (mnt / "target").write_text("via link")
    os.symlink("target", mnt / "rel")
    os.symlink(str(mnt / "missing"), mnt / "dangling")
    assert os.readlink(mnt / "rel") == "target"
    assert (mnt / "rel").read_text() == "via link"
    assert stat.S_ISLNK(os.lstat(mnt / "rel").st_mode)
    assert not (mnt / "dangling").exists() and os.path.lexists(mnt / "dangling")
    long_target = "x/" * 2000
    os.symlink(long_target, mnt / "long")
    assert os.readlink(mnt / "long") == long_target


def _renameat2(old: Path, new: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, bytes(old), at_fdcwd, bytes(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def test_rename_edge_cases(mnt: Path) -> None:
    (mnt / "src").write_text("source")
    (mnt / "dst").write_text("old target")
    ino = os.stat(mnt / "src").st_ino
    os.rename(mnt / "src", mnt / "dst")  # over an existing file
    assert (mnt / "dst").read_text() == "source" and os.stat(mnt / "dst").st_ino == ino
    assert not (mnt / "src").exists()
    os.rename(mnt / "dst", mnt / "dst")  # onto itself: nothing happens
    assert (mnt / "dst").read_text() == "source"

    (mnt / "d1" / "sub").mkdir(parents=True)
    (mnt / "d2").mkdir()
    (mnt / "full").mkdir()
    (mnt / "full" / "f").write_text("x")
    os.rename(mnt / "d1", mnt / "d2")  # a directory over an empty one
    assert (mnt / "d2" / "sub").is_dir() and not (mnt / "d1").exists()
    with pytest.raises(OSError) as info:
        os.rename(mnt / "d2", mnt / "full")
    assert info.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    with pytest.raises(OSError) as info:
        os.rename(mnt / "d2", mnt / "d2" / "sub" / "inside")  # into its own subtree
    assert info.value.errno == errno.EINVAL
    with pytest.raises(NotADirectoryError):
        os.rename(mnt / "d2", mnt / "dst")
    with pytest.raises(IsADirectoryError):
        os.rename(mnt / "dst", mnt / "d2")
    os.rename(mnt / "dst", mnt / "d2" / "sub" / "moved")  # across directories
    assert (mnt / "d2" / "sub" / "moved").read_text() == "source"

    (mnt / "x").write_text("x")
    (mnt / "y").write_text("y")
    with pytest.raises(FileExistsError):
        _renameat2(mnt / "x", mnt / "y", 1)  # RENAME_NOREPLACE
    _renameat2(mnt / "x", mnt / "y", 2)  # RENAME_EXCHANGE
    assert (mnt / "x").read_text() == "y" and (mnt / "y").read_text() == "x"


def test_truncate_up_and_down_and_sparse_files_read_as_zeros(mnt: Path) -> None:
    f = mnt / "t"
    data = os.urandom(2 * MIB + 100)
    f.write_bytes(data)
    os.truncate(f, 1 * MIB + 7)
    assert f.read_bytes() == data[:MIB + 7]
    os.truncate(f, 3 * MIB)
    got = f.read_bytes()
    assert got[:MIB + 7] == data[:MIB + 7] and got[MIB + 7:] == bytes(3 * MIB - MIB - 7)
    with open(f, "r+b") as fp:
        fp.truncate(10)
        fp.seek(0)
        assert fp.read() == data[:10]
    s = mnt / "sparse"
    with open(s, "wb") as fp:
        fp.seek(5 * MIB + 3)
        fp.write(b"end")
    got = s.read_bytes()
    assert len(got) == 5 * MIB + 6 and got[:5 * MIB + 3] == bytes(5 * MIB + 3) and got[-3:] == b"end"
    with open(s, "rb") as fp:
        fp.seek(2 * MIB)
        assert fp.read(4096) == bytes(4096)


def test_o_append_and_o_excl(mnt: Path) -> None:
    f = mnt / "log"
    f.write_bytes(b"one\n")
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"two\n")
        os.write(fd, b"three\n")
    finally:
        os.close(fd)
    assert f.read_bytes() == b"one\ntwo\nthree\n"
    with pytest.raises(FileExistsError):
        os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    fd = os.open(mnt / "new", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.close(fd)
    assert stat.S_IMODE(os.stat(mnt / "new").st_mode) == 0o640


def _create_through_the_mds(fs: FsCluster, parent: int, names: list[str]) -> None:
    """Create ``names`` in directory ``parent`` with 64 requests in flight: the kernel holds a
    directory's lock across each create, so through the mount they would go one at a time."""
    async def go() -> None:
        link = MdsLink([("127.0.0.1", fs.ports[i]) for i in fs.ids], fs.auth("filler"), lanes=64)
        await link.start()
        try:
            gate = asyncio.Semaphore(64)

            async def one(name: str) -> None:
                async with gate:
                    await link.create(parent, name.encode())
            await asyncio.gather(*(one(n) for n in names))
        finally:
            await link.close()
    asyncio.run(go())


def test_a_directory_of_ten_thousand_entries(fs: FsCluster, mnt: Path) -> None:
    big = mnt / "big"
    big.mkdir()
    names = [f"entry-{i:05d}" for i in range(10_000)]
    _create_through_the_mds(fs, os.stat(big).st_ino, names[100:])
    for n in names[:100]:  # and some through the mount
        os.mknod(big / n, 0o644 | stat.S_IFREG)
    listed = os.listdir(big)
    assert len(listed) == 10_000 and sorted(listed) == names
    with os.scandir(big) as it:
        assert sum(1 for e in it if e.is_file(follow_symlinks=False)) == 10_000
    assert os.stat(big / "entry-09999").st_size == 0 and (big / "entry-05000").exists()
    for n in names[::100]:
        os.unlink(big / n)
    assert sorted(os.listdir(big)) == [n for i, n in enumerate(names) if i % 100]
    with pytest.raises(OSError) as info:
        os.rmdir(big)
    assert info.value.errno == errno.ENOTEMPTY


def _mds_calls(fs: FsCluster) -> int:
    """How many calls the mount made to the MDS so far (its fuse.op_stats line, on SIGUSR1)."""
    proc = fs.group.procs["client-1"]
    assert proc.pid is not None
    before = proc.log_path.read_text().count("event=fuse.op_stats")
    os.kill(proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while (log := proc.log_path.read_text()).count("event=fuse.op_stats") == before:
        assert time.monotonic() < deadline, "no fuse.op_stats line after SIGUSR1"
        time.sleep(0.05)
    line = [x for x in log.splitlines() if "event=fuse.op_stats" in x][-1]
    found = re.search(r'\bmds_calls=(\d+)', line)
    assert found, line
    return int(found.group(1))


def test_writes_ask_the_mds_for_security_capability_once_not_per_write(fs: FsCluster, mnt: Path) -> None:
    """The kernel asks for security.capability before each write(2); the answer is reused
    for a second here (like attributes), and a local change to it is seen at once."""
    f = mnt / "caps"
    fd = os.open(f, os.O_CREAT | os.O_WRONLY, 0o755)
    try:
        os.write(fd, b"x")
        asked = _mds_calls(fs)
        for n in range(200):
            os.pwrite(fd, b"y" * 4096, n * 4096)
    finally:
        os.close(fd)
    assert _mds_calls(fs) - asked < 20, "getxattr(security.capability) went to the MDS per write"
    caps = struct.pack("<IIIII", 0x02000000, 1 << 10, 0, 0, 0)  # VFS_CAP_REVISION_2: cap_net_bind_service
    os.setxattr(f, "security.capability", caps)
    assert os.getxattr(f, "security.capability") == caps
    with open(f, "r+b") as out:   # a write by root clears it (the kernel's killpriv), through removexattr
        out.write(b"z")
    with pytest.raises(OSError) as info:
        os.getxattr(f, "security.capability")
    assert info.value.errno == errno.ENODATA
    assert f.read_bytes()[:2] == b"zy"


def test_xattrs(mnt: Path) -> None:
    f = mnt / "x"
    f.write_text("data")
    os.setxattr(f, "user.small", b"v")
    os.setxattr(f, "user.big", b"\x00\xff" * 8192)
    assert os.getxattr(f, "user.small") == b"v" and os.getxattr(f, "user.big") == b"\x00\xff" * 8192
    assert sorted(os.listxattr(f)) == ["user.big", "user.small"]
    os.setxattr(f, "user.small", b"replaced")
    assert os.getxattr(f, "user.small") == b"replaced"
    os.removexattr(f, "user.small")
    with pytest.raises(OSError) as info:
        os.getxattr(f, "user.small")
    assert info.value.errno == errno.ENODATA
    os.setxattr(mnt, "user.dir", b"on a directory")
    assert os.getxattr(mnt, "user.dir") == b"on a directory"


def test_offsets_past_four_gib(mnt: Path) -> None:
    f = mnt / "huge"
    offset = 5 * 1024 * MIB + 4093  # unaligned, far past 2^32
    payload = os.urandom(10_000)
    with open(f, "wb") as fp:
        fp.seek(offset)
        fp.write(payload)
    assert os.stat(f).st_size == offset + len(payload)
    with open(f, "rb") as fp:
        fp.seek(offset - 100)
        assert fp.read(100 + len(payload) + 50) == bytes(100) + payload
        fp.seek(4 * 1024 * MIB)
        assert fp.read(8192) == bytes(8192)


def test_an_unlinked_open_file_stays_readable_until_closed(mnt: Path) -> None:
    f = mnt / "doomed"
    data = os.urandom(2 * MIB)
    f.write_bytes(data)
    with open(f, "r+b") as fp:
        os.unlink(f)
        assert not f.exists()
        assert fp.read() == data
        fp.seek(0)
        fp.write(b"still writable")
        fp.flush()
        os.fsync(fp.fileno())
        fp.seek(0)
        assert fp.read(14) == b"still writable"
    assert not f.exists() and "doomed" not in os.listdir(mnt)


def test_concurrent_writers_on_different_files(mnt: Path) -> None:
    def writer(n: int) -> str:
        data = os.urandom(3 * MIB + n)
        with open(mnt / f"w{n}", "wb") as fp:
            for i in range(0, len(data), 128 * 1024):
                fp.write(data[i:i + 128 * 1024])
            fp.flush()
            os.fsync(fp.fileno())
        return hashlib.sha256(data).hexdigest()

    with ThreadPoolExecutor(4) as pool:
        sums = list(pool.map(writer, range(4)))
    for n, digest in enumerate(sums):
        assert hashlib.sha256((mnt / f"w{n}").read_bytes()).hexdigest() == digest


def test_concurrent_writers_and_readers_of_one_file_see_whole_writes(mnt: Path) -> None:
    """Writes of whole 64 KiB records by two threads at distinct offsets, read while written:
    every page of a record read is either not written yet (zeros) or exactly its writer's
    bytes, and afterwards every record is whole. Pages, not records: a read(2) that runs
    while a write(2) of the same range is copied into the page cache may see some of its
    pages before and some after (Linux does not order buffered reads against writes; ext4
    behaves the same), but never bytes of another record or garbage."""
    f = mnt / "shared"
    record = 64 * 1024
    with open(f, "wb") as fp:
        fp.truncate(64 * record)
    stop = threading.Event()
    bad: list[int] = []

    def write(parity: int) -> None:
        with open(f, "r+b") as fp:
            for i in range(parity, 64, 2):
                fp.seek(i * record)
                fp.write(bytes([i]) * record)
                fp.flush()

    def read() -> None:
        with open(f, "rb") as fp:
            while not stop.is_set():
                fp.seek(0)
                data = fp.read()
                for i in range(64):
                    for page in range(i * record, (i + 1) * record, 4096):
                        if data[page:page + 4096] not in (bytes(4096), bytes([i]) * 4096):
                            bad.append(i)

    reader = threading.Thread(target=read)
    reader.start()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(write, (0, 1)))
    stop.set()
    reader.join()
    assert not bad
    data = f.read_bytes()
    assert all(data[i * record:(i + 1) * record] == bytes([i]) * record for i in range(64))


def test_statfs_reports_the_cluster(mnt: Path) -> None:
    st = os.statvfs(mnt)
    assert st.f_blocks > 0 and 0 < st.f_bavail <= st.f_blocks and st.f_namemax == 255
