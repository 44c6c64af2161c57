"""A minimal pyfuse3 passthrough of a local directory: the FUSE-overhead baseline of bench/fs.py.

Every request is answered by the same system call on the source directory (inodes are the
source's, paths kept per inode), on the same asyncio loop pyfuse3 runs on, with the same
kernel options as the vstore mount (page cache on, no writeback cache, default_permissions).
Usage: python bench/passthrough.py SOURCE MOUNTPOINT   (foreground; unmount or SIGTERM stops it)
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
import pyfuse3.asyncio

T = TypeVar("T")


def _os(fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except OSError as exc:
        raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None


class Passthrough(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, source: str) -> None:
        super().__init__()
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: source}
        self.fds: dict[int, int] = {}

    def _path(self, inode: int) -> str:
        try:
            return self.paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def _entry(self, path: str) -> pyfuse3.EntryAttributes:
        st = _os(os.lstat, path)
        inode = pyfuse3.ROOT_INODE if path == self.paths[pyfuse3.ROOT_INODE] else st.st_ino
        if inode != pyfuse3.ROOT_INODE:
            self.paths[inode] = path  # the latest name: the source reuses inode numbers after unlink
        e = pyfuse3.EntryAttributes()
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_atime_ns", "st_mtime_ns",
                     "st_ctime_ns", "st_blksize", "st_blocks"):
            setattr(e, name, getattr(st, name))
        e.st_ino = inode
        e.attr_timeout = 1.0
        e.entry_timeout = 1.0
        return e

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._entry(self._child(parent_inode, name))

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._entry(self._path(inode))

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        path = self._path(inode)
        if fields.update_size:
            _os(os.truncate, path, attr.st_size)
        if fields.update_mode:
            _os(os.chmod, path, attr.st_mode & 0o7777)
        if fields.update_uid or fields.update_gid:
            _os(os.chown, path, attr.st_uid if fields.update_uid else -1, attr.st_gid if fields.update_gid else -1)
        if fields.update_atime or fields.update_mtime:
            st = _os(os.lstat, path)
            times = (attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                     attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns)
            _os(lambda: os.utime(path, ns=times))
        return self._entry(path)

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return os.fsencode(_os(os.readlink, self._path(inode)))

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        _os(os.mknod, path, mode, rdev)
        return self._entry(path)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        _os(os.mkdir, path, mode)
        return self._entry(path)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        _os(os.symlink, os.fsdecode(target), path)
        return self._entry(path)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        path = self._child(new_parent_inode, new_name)
        _os(os.link, self._path(inode), path)
        return self._entry(path)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        _os(os.unlink, self._child(parent_inode, name))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        _os(os.rmdir, self._child(parent_inode, name))

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: Any) -> None:
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old, new = self._child(parent_inode_old, name_old), self._child(parent_inode_new, name_new)
        _os(os.rename, old, new)
        st = os.lstat(new)
        self.paths[st.st_ino] = new

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        path = self._path(fh)
        names = sorted(_os(os.listdir, path))
        for i in range(start_id, len(names)):
            if not pyfuse3.readdir_reply(token, os.fsencode(names[i]), self._entry(os.path.join(path, names[i])),
                                         i + 1):
                return

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        fd = _os(os.open, self._path(inode), flags & ~os.O_CREAT)
        self.fds[fd] = inode
        return pyfuse3.FileInfo(fh=fd)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._child(parent_inode, name)
        fd = _os(os.open, path, flags | os.O_CREAT | os.O_TRUNC, mode)
        entry = self._entry(path)
        self.fds[fd] = entry.st_ino
        return pyfuse3.FileInfo(fh=fd), entry

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return _os(os.pread, fh, size, off)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return _os(os.pwrite, fh, buf, off)

    async def flush(self, fh: int) -> None:
        return None

    async def fsync(self, fh: int, datasync: bool) -> None:
        _os(os.fdatasync if datasync else os.fsync, fh)

    async def release(self, fh: int) -> None:
        self.fds.pop(fh, None)
        _os(os.close, fh)

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = _os(os.statvfs, self.paths[pyfuse3.ROOT_INODE])
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail",
                     "f_namemax"):
            setattr(out, name, getattr(st, name))
        return out

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        return None


async def serve(fs: pyfuse3.Operations, mountpoint: str, fsname: str,
                signals: dict[int, Callable[[], None]] | None = None) -> None:
    """Mount ``fs`` and serve it until unmounted or SIGTERM/SIGINT; ``signals``: more
    handlers (signal -> callback) on the loop. Prints "ready" once mounted."""
    pyfuse3.asyncio.enable()
    pyfuse3.init(fs, mountpoint, set(pyfuse3.default_options) | {f"fsname={fsname}"})
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, pyfuse3.terminate)
    for sig, callback in (signals or {}).items():
        loop.add_signal_handler(sig, callback)
    print("ready", flush=True)
    try:
        await pyfuse3.main()
    finally:
        pyfuse3.close(unmount=True)


async def main(source: str, mountpoint: str) -> None:
    await serve(Passthrough(os.path.abspath(source)), mountpoint, "passthrough")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
