"""``python -m tests.harness.lazyfs SOURCE MOUNTPOINT``: a FUSE layer that forgets what was not
synced, for power-loss tests (RELIABILITY.md F18, the "L2 lazy FUSE layer"; the idea of
LazyFS, used by etcd's robustness tests).

A passthrough of SOURCE (bench/passthrough.py) that keeps every ``write`` in memory, per file,
until that file is fsynced: reads see the writes (as a page cache would), ``fsync`` and
``fdatasync`` apply them to SOURCE in order and sync it. Then, with the process using the
mount already dead (kill -9 first):

* ``SIGUSR1`` is a **crash**: every unsynced write is dropped, as a power loss drops a page
  cache, and the kernel's cached pages and attributes of those files are invalidated;
* ``SIGUSR2`` is a **torn crash**: of each file's unsynced writes, a seeded random prefix
  reaches SOURCE, the last of them cut at a random 512-byte sector, and the rest is dropped.

Each signal is answered by a line on stdout (``crashed N files`` / ``torn N files``) once
done. Namespace operations (create, rename, unlink, mkdir) reach SOURCE at once, as on a
journaled file system that commits them promptly; a truncate first applies the file's
pending writes (a simplification: a truncate is a point where nothing of that file is lost).
Page cache as the vstore mount has it (no writeback cache: every write reaches this layer).
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyfuse3

from bench.passthrough import Passthrough, _os, serve

SECTOR = 512
REPO = Path(__file__).resolve().parents[2]


class LazyFs(Passthrough):
    def __init__(self, source: str, seed: int = 0) -> None:
        super().__init__(source)
        #: inode -> writes not yet synced, oldest first: (offset, bytes)
        self.pending: dict[int, list[tuple[int, bytes]]] = {}
        self.rng = random.Random(seed)

    def _end(self, inode: int) -> int:
        return max((off + len(data) for off, data in self.pending.get(inode, ())), default=0)

    def _entry(self, path: str) -> pyfuse3.EntryAttributes:
        entry = super()._entry(path)
        end = self._end(entry.st_ino)
        if end > entry.st_size:
            entry.st_size = end
        return entry

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self.pending.setdefault(self.fds[fh], []).append((off, bytes(buf)))
        return len(buf)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        data = bytearray(_os(os.pread, fh, size, off))
        for start, chunk in self.pending.get(self.fds[fh], ()):
            lo, hi = max(start, off), min(start + len(chunk), off + size)
            if lo >= hi:
                continue
            if len(data) < hi - off:
                data.extend(bytes(hi - off - len(data)))
            data[lo - off:hi - off] = chunk[lo - start:hi - start]
        return bytes(data)

    def _apply(self, inode: int, writes: list[tuple[int, bytes]]) -> None:
        if not writes:
            return
        fd = _os(os.open, self._path(inode), os.O_WRONLY | os.O_CLOEXEC)
        try:
            for off, data in writes:
                _os(os.pwrite, fd, data, off)
        finally:
            os.close(fd)

    def _sync(self, inode: int) -> None:
        self._apply(inode, self.pending.pop(inode, []))

    async def fsync(self, fh: int, datasync: bool) -> None:
        self._sync(self.fds[fh])
        await super().fsync(fh, datasync)

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        if fields.update_size:
            self._sync(inode)
        return await super().setattr(inode, attr, fields, fh, ctx)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        path = self._child(parent_inode, name)
        st = _os(os.lstat, path)
        await super().unlink(parent_inode, name, ctx)
        if st.st_nlink <= 1:
            self.pending.pop(st.st_ino, None)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: Any) -> None:
        try:
            replaced = os.lstat(self._child(parent_inode_new, name_new))
        except OSError:
            replaced = None
        await super().rename(parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx)
        if replaced is not None and replaced.st_nlink <= 1:
            self.pending.pop(replaced.st_ino, None)

    def crash(self, *, torn: bool) -> int:
        """Drop every unsynced write (``torn``: a random prefix of each file's reaches the disk
        first, the last one cut at a sector); returns how many files lost something."""
        hit = 0
        for inode, writes in list(self.pending.items()):
            kept: list[tuple[int, bytes]] = []
            if torn:
                n = self.rng.randrange(len(writes) + 1)
                kept = writes[:n]
                if n < len(writes):
                    off, data = writes[n]
                    cut = self.rng.randrange(len(data) // SECTOR + 1) * SECTOR
                    if cut:
                        kept.append((off, data[:cut]))
            try:
                self._apply(inode, kept)
            except pyfuse3.FUSEError:
                pass   # removed meanwhile
            hit += 1
        self.pending.clear()
        for inode in list(self.paths):
            if inode != pyfuse3.ROOT_INODE:
                try:
                    pyfuse3.invalidate_inode(inode, attr_only=False)
                except OSError:
                    pass   # the kernel did not know it
        return hit


class LazyMount:
    """The layer as a child process of a test: ``with LazyMount(source, mountpoint) as lazy``,
    ``lazy.crash()`` / ``lazy.crash(torn=True)`` (only once whatever uses the mount is dead),
    unmounted and stopped on exit."""

    def __init__(self, source: Path, mountpoint: Path, *, seed: int = 0) -> None:
        self.source, self.mountpoint, self.seed = source, mountpoint, seed
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> LazyMount:
        self.source.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.harness.lazyfs", str(self.source),
                                      str(self.mountpoint), str(self.seed)], cwd=REPO, stdout=subprocess.PIPE,
                                     text=True)
        self._expect("ready")
        return self

    def _expect(self, word: str) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(word):
            raise AssertionError(f"lazyfs on {self.mountpoint}: expected {word!r}, got {line!r} "
                                 f"(exit {self.proc.poll()})")
        return line.strip()

    def crash(self, *, torn: bool = False) -> str:
        """Lose what was not synced; returns the layer's line ("crashed N files")."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR2 if torn else signal.SIGUSR1)
        return self._expect("torn" if torn else "crashed")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True, timeout=30)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


async def main(source: str, mountpoint: str, seed: int) -> None:
    fs = LazyFs(os.path.abspath(source), seed)
    await serve(fs, mountpoint, "lazyfs", {
        signal.SIGUSR1: lambda: print(f"crashed {fs.crash(torn=False)} files", flush=True),
        signal.SIGUSR2: lambda: print(f"torn {fs.crash(torn=True)} files", flush=True)})


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        print("usage: python -m tests.harness.lazyfs SOURCE MOUNTPOINT [SEED]", file=sys.stderr)
        sys.exit(2)
    try:
        asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) == 4 else 0))
    except OSError as exc:
        print(f"lazyfs: {exc}", file=sys.stderr)
        sys.exit(errno.EIO)
