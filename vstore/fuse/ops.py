"""pyfuse3 operations: kernel requests translated to vstore.client calls, nothing more.

Every handler is wrapped (``_guarded``): a VStoreError becomes the errno of
vstore/fuse/errno_map.py, any other exception a logged EIO. With pyfuse3 on asyncio an
exception that escapes a handler leaves the request unanswered and the caller hangs, so
nothing escapes.

Caching and consistency. Directories and symlinks get ``attr_timeout`` in the kernel. A
regular file's attributes get a timeout of 0, so the kernel asks again before it trusts a
size (a read past the size it knows, every stat): the answer comes from a short cache here,
which ``open`` refreshes from the MDS. Together with ``open`` never keeping the page cache,
that gives close-to-open consistency across hosts: a file closed on host A (its data and
size reported to the MDS by ``flush``) and then opened on host B reads A's bytes. Names are
trusted for ``entry_timeout``; no negative entries are cached. Regular files use the page
cache (no ``direct_io``), so a loop device over an image on the mount does not deadlock.

Permissions: the mount uses ``default_permissions``; the kernel checks modes and owners
against the attributes before a request reaches us.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pyfuse3

from vstore.client.files import FileClient
from vstore.errors import NoAttribute, VStoreError
from vstore.fuse.errno_map import errno_of
from vstore.wire import mds as w

log = logging.getLogger(__name__)

T = TypeVar("T")
S_IFMT = 0o170000
S_IFREG = 0o100000
#: how long an attribute answer is reused here for a regular file (the kernel is told 0)
FILE_ATTR_CACHE_S = 1.0
CAPABILITY_XATTR = b"security.capability"
#: ``setfattr -n vstore.exclusive_write -v 1 DIR``: new files in DIR get the exclusive-writer
#: lease (a second host opening one for writing gets EBUSY while the first has it open);
#: ``getfattr`` shows it. Not listed by listxattr: it is a setting, not stored data.
EXCLUSIVE_WRITE_XATTR = b"vstore.exclusive_write"


def _guarded(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: VstoreOperations, *args: Any) -> T:
        started = time.perf_counter()
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except VStoreError as exc:
            code = errno_of(exc.code)
            # EIO and ESTALE reach the application as failures it cannot fix by itself
            level = logging.WARNING if code in (errno.EIO, errno.ESTALE) else logging.DEBUG
            log.log(level, "fuse.request_failed", extra={"op": name, "errno": errno.errorcode.get(code, code),
                                                         "error": f"{exc.code.name}: {exc.message}"})
            raise pyfuse3.FUSEError(code) from None
        except Exception:
            log.exception("fuse.handler_crashed", extra={"op": name})
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            took = time.perf_counter() - started
            stat = self.op_stats.get(name)
            if stat is None:
                self.op_stats[name] = [1, took, took]
            else:
                stat[0] += 1
                stat[1] += took
                stat[2] = max(stat[2], took)
    return wrapper


class VstoreOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, client: FileClient, *, attr_timeout_s: float = 1.0, entry_timeout_s: float = 1.0) -> None:
        super().__init__()
        self.client = client
        self.mds = client.mds
        self.attr_timeout_s = attr_timeout_s
        self.entry_timeout_s = entry_timeout_s
        self._attrs: dict[int, tuple[float, w.Attr]] = {}
        self._dirs: dict[int, list[w.DirEntry]] = {}
        self._next_dir = 1
        #: inode -> (when, security.capability value or None for "none"): ``getxattr``
        self._caps: dict[int, tuple[float, bytes | None]] = {}
        #: per handler: [calls, seconds in all, longest call] (``op_summary``)
        self.op_stats: dict[str, list[float]] = {}

    def op_summary(self) -> dict[str, str]:
        """Per handler: calls, mean and longest time, for the ``fuse.op_stats`` log line; and
        the calls made to the MDS in all (``mds_calls``)."""
        out = {name: f"{int(n)} calls, mean {total / n * 1000:.2f} ms, max {longest * 1000:.1f} ms"
               for name, (n, total, longest) in sorted(self.op_stats.items(), key=lambda kv: -kv[1][1])}
        out["mds_calls"] = str(self.mds.stats.get("calls", 0))
        return out

    # ---- attributes -------------------------------------------------------------------------------

    def _remember(self, attr: w.Attr) -> w.Attr:
        self._attrs[attr.inode] = (time.monotonic(), attr)
        if len(self._attrs) > 100_000:
            self._attrs.clear()
        return attr

    def _entry(self, attr: w.Attr) -> pyfuse3.EntryAttributes:
        attr = self.client.local_attr(attr)
        e = pyfuse3.EntryAttributes()
        e.st_ino = attr.inode
        e.generation = 0
        e.entry_timeout = self.entry_timeout_s
        e.attr_timeout = 0 if attr.mode & S_IFMT == S_IFREG else self.attr_timeout_s
        e.st_mode = attr.mode
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_rdev = attr.rdev
        e.st_size = attr.size
        e.st_blksize = 128 * 1024
        e.st_blocks = (attr.size + 511) // 512
        e.st_atime_ns = attr.atime_ns
        e.st_mtime_ns = attr.mtime_ns
        e.st_ctime_ns = attr.ctime_ns
        return e

    def _forget_attr(self, inode: int) -> None:
        self._attrs.pop(inode, None)

    @_guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        cached = self._attrs.get(inode)
        if cached is not None and time.monotonic() - cached[0] < FILE_ATTR_CACHE_S:
            return self._entry(cached[1])
        return self._entry(self._remember(await self.mds.getattr(inode)))

    @_guarded
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self._remember(await self.mds.lookup(parent_inode, name, uid=ctx.uid, gid=ctx.gid)))

    @_guarded
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        change: dict[str, Any] = {}
        if fields.update_mode:
            change["mode"] = attr.st_mode & 0o7777
        if fields.update_uid:
            change["new_uid"] = attr.st_uid
        if fields.update_gid:
            change["new_gid"] = attr.st_gid
        if fields.update_size:
            change["size"] = attr.st_size
        if fields.update_atime:
            change["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            change["mtime_ns"] = attr.st_mtime_ns
        self._forget_attr(inode)
        if not change:
            return await self.getattr(inode, ctx)
        return self._entry(self._remember(await self.client.setattr(inode, uid=ctx.uid, gid=ctx.gid, **change)))

    # ---- names ------------------------------------------------------------------------------------

    @_guarded
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        kind = w.KIND_OF_IFMT.get(mode & S_IFMT)
        if kind is None or kind == 2:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return self._entry(self._remember(await self.mds.create(parent_inode, name, mode & 0o7777, kind=kind,
                                                                uid=ctx.uid, gid=ctx.gid, rdev=rdev)))

    @_guarded
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._forget_attr(parent_inode)
        return self._entry(self._remember(await self.mds.mkdir(parent_inode, name, mode & 0o7777, uid=ctx.uid,
                                                               gid=ctx.gid)))

    @_guarded
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self._remember(await self.mds.symlink(parent_inode, name, target, uid=ctx.uid,
                                                                 gid=ctx.gid)))

    @_guarded
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._forget_attr(inode)
        return self._entry(self._remember(await self.mds.link(inode, new_parent_inode, new_name, uid=ctx.uid,
                                                              gid=ctx.gid)))

    @_guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.mds.readlink(inode, uid=ctx.uid, gid=ctx.gid)

    @_guarded
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._attrs.clear()  # the victim's link count changed; we do not know its inode here
        await self.mds.unlink(parent_inode, name, uid=ctx.uid, gid=ctx.gid)

    @_guarded
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._attrs.clear()
        await self.mds.rmdir(parent_inode, name, uid=ctx.uid, gid=ctx.gid)

    @_guarded
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        self._attrs.clear()
        await self.mds.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags, uid=ctx.uid,
                              gid=ctx.gid)

    # ---- directories ------------------------------------------------------------------------------

    @_guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        entries = await self.mds.readdir(inode, uid=ctx.uid, gid=ctx.gid)
        fh = self._next_dir
        self._next_dir += 1
        self._dirs[fh] = entries
        return fh

    @_guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._dirs.get(fh)
        if entries is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        for i in range(start_id, len(entries)):
            entry = entries[i]
            if not pyfuse3.readdir_reply(token, entry.name, self._entry(self._remember(entry.attr)), i + 1):
                return

    @_guarded
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @_guarded
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None  # every namespace change is committed by the MDS before it is acknowledged

    # ---- files ------------------------------------------------------------------------------------

    @_guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        fh, attr = await self.client.open(inode, writable=writable, uid=ctx.uid, gid=ctx.gid)
        self._remember(attr)
        return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=False)

    @_guarded
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        fh, attr = await self.client.create(parent_inode, name, mode & 0o7777, writable=writable, uid=ctx.uid,
                                            gid=ctx.gid)
        return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=False), self._entry(self._remember(attr))

    @_guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.client.read(fh, off, size)

    @_guarded
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.client.write(fh, off, buf)

    @_guarded
    async def flush(self, fh: int) -> None:
        self._forget_attr(self.client.inode_of(fh))
        await self.client.flush(fh)

    @_guarded
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.client.fsync(fh)

    @_guarded
    async def release(self, fh: int) -> None:
        self._forget_attr(self.client.inode_of(fh))
        await self.client.release(fh)

    # ---- the rest ---------------------------------------------------------------------------------

    @_guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        reply = await self.mds.statfs(uid=ctx.uid, gid=ctx.gid)
        st = pyfuse3.StatvfsData()
        bs = reply.block_bytes or 4096
        st.f_bsize = bs
        st.f_frsize = bs
        st.f_blocks = reply.total_bytes // bs
        st.f_bfree = reply.free_bytes // bs
        st.f_bavail = reply.free_bytes // bs
        st.f_files = reply.files + 2**32
        st.f_ffree = 2**32
        st.f_favail = 2**32
        st.f_namemax = reply.name_max
        return st

    @_guarded
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if name == EXCLUSIVE_WRITE_XATTR:
            attr = await self.mds.getattr(inode)
            return b"1" if attr.exclusive_write else b"0"
        if name != CAPABILITY_XATTR:
            return await self.mds.getxattr(inode, name, uid=ctx.uid, gid=ctx.gid)
        # The kernel asks for security.capability before every write(2) (to clear it), so
        # the answer is reused for FILE_ATTR_CACHE_S, as attributes are: without this, each
        # 4 KiB write cost an MDS round trip. Dropped on any local xattr change of the inode.
        cached = self._caps.get(inode)
        if cached is not None and time.monotonic() - cached[0] < FILE_ATTR_CACHE_S:
            if cached[1] is None:
                raise pyfuse3.FUSEError(errno.ENODATA)
            return cached[1]
        try:
            value: bytes | None = await self.mds.getxattr(inode, name, uid=ctx.uid, gid=ctx.gid)
        except NoAttribute:
            value = None
        if len(self._caps) > 100_000:
            self._caps.clear()
        self._caps[inode] = (time.monotonic(), value)
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value

    @_guarded
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._caps.pop(inode, None)
        if name == EXCLUSIVE_WRITE_XATTR:
            if value.strip() not in (b"0", b"1"):
                raise pyfuse3.FUSEError(errno.EINVAL)
            self._forget_attr(inode)
            await self.mds.set_policy(inode, exclusive_write=value.strip() == b"1", uid=ctx.uid, gid=ctx.gid)
            return
        await self.mds.setxattr(inode, name, value, uid=ctx.uid, gid=ctx.gid)

    @_guarded
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return await self.mds.listxattr(inode, uid=ctx.uid, gid=ctx.gid)

    @_guarded
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._caps.pop(inode, None)
        await self.mds.removexattr(inode, name, uid=ctx.uid, gid=ctx.gid)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, _ in inode_list:
            self._attrs.pop(inode, None)

