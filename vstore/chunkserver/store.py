"""The blocking disk side of one chunkserver: replica files and their index on one data dir.

This module owns the pread, pwrite, fsync, create and unlink of replica files, and a small
LMDB index of what the disk holds. It must not:

* compute a byte offset, a checksum slot or a header byte itself: every one comes from
  vstore/chunkserver/chunkfile.py, the one reference for the file format;
* build a path from anything but ``chunk_file_name(parse_chunk_id(x))``, follow a symlink,
  or touch the file system before the chunk id has been validated (RELIABILITY.md F24);
* return a byte that failed its checksum (§4.4, F11), or report success for an fsync after
  one failed (§4.2, F14, "fsyncgate");
* use asyncio. The service calls every method through a per-disk executor (STYLE.md §9);
  the methods are thread-safe (one lock stripe per chunk id).

Layout of a data dir::

    data_dir/chunks/<shard>/<id>.chunk   replica files (chunkfile.chunk_file_name); shard dirs on demand
    data_dir/index/                      LMDB env, sync=True, metasync=True, writemap=False
        db "replicas": key u64 chunk id (big-endian) -> value (version u64, length_bytes u64, flags u32)

The index is a cache of the headers plus the damage flags, which exist nowhere else. The
headers are the truth: ``scan_startup`` rebuilds any index entry from its file's header. The
index is written at create, fsync, set_version, truncate, mark_complete and delete (synced
commits); a plain ``write`` does not touch it (the length it records is the one at the last
fsync). Index flags: INCOMPLETE (mirrors the header), BAD_DATA (a check failed: the replica
is refused until deleted and rebuilt from a peer), BAD_IO (the disk returned EIO: same, and
no later fsync may succeed).

Failpoints (vstore/failpoints.py, tests only) stand where the OS calls they imitate would
fail, so an injected error takes the real error's path: ``cs.write`` before a write's
pwrites (``_apply``), ``cs.fsync`` before each replica fsync (``_fsync_fd``), ``cs.read``
before a block read (``_read_blocks``).

Every directory and file is opened relative to a directory fd with O_NOFOLLOW, so a symlink
planted anywhere below data_dir/chunks fails with ``errors.Loop`` instead of being followed.
data_dir itself is operator configuration and may be a symlink.

Errors raised (all VStoreError): chunkfile's ChunkFileError tree (ChunkIdError, ChunkFormatError
and its subclasses, TruncatedTable below, WrongChunk, WrongVersion, BlockChecksumMismatch,
ChunkRangeError), and from vstore.errors NotFound, Exists, Loop, NotDir, InvalidArgument,
NoSpace, DiskIOError, ChecksumMismatch (client checksums, replica marked damaged),
StaleVersion (version regression), IncompleteReplica (below).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import stat
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import lmdb
from xxhash import xxh3_64_intdigest

import vstore.errors as errors
from vstore.chunkserver.chunkfile import (
    HEADER_BYTES,
    SHARD_DIRS,
    SLOT_BYTES,
    TABLE_OFFSET,
    VERSION_MAX,
    BlockChecksumMismatch,
    ChunkFlag,
    ChunkFormatError,
    ChunkHeader,
    ChunkIdError,
    ReadPlan,
    WrongChunk,
    assemble_write,
    block_offset,
    chunk_file_name,
    decode_header,
    decode_slots,
    encode_header,
    expect,
    new_header,
    parse_chunk_file_name,
    parse_chunk_id,
    plan_read,
    plan_resize,
    plan_write,
    slot_offset,
    verified_content,
    verify_blocks,
)
from vstore.failpoints import failpoint

log = logging.getLogger(__name__)

#: Refuse new chunks above this fill ratio; warn (``nearfull``) above NEARFULL_RATIO. The MDS
#: stops placing at PLACE_STOP_RATIO. Ceph's full/backfillfull/nearfull .95/.90/.85 (RELIABILITY F9):
#: the gap between stop-placing and refuse leaves room for chunks already placed to be written.
FULL_RATIO = 0.95
PLACE_STOP_RATIO = 0.90
NEARFULL_RATIO = 0.85
#: The index holds ~50 bytes per replica; 256 MiB of (sparse) map covers millions of replicas.
INDEX_MAP_BYTES_DEFAULT = 1 << 28
#: Scrub reads this many blocks per pread (1 MiB at 4 KiB blocks): big enough to stream, small
#: enough not to hold a large buffer per disk thread.
SCRUB_BATCH_BLOCKS = 256
#: Lock stripes: bounded memory, and two chunks share a lock only by id modulo this.
LOCK_STRIPES = 64

INDEX_INCOMPLETE = 1
INDEX_BAD_DATA = 2
INDEX_BAD_IO = 4
_INDEX_VALUE = struct.Struct(">QQI")
_INDEX_KEY = struct.Struct(">Q")

_OPEN_FILE = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a planted FIFO cannot hang us
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TruncatedTable(ChunkFormatError):
    """The file is shorter than its header says the checksum table is: the replica is bad."""

    reason = "truncated_table"


class IncompleteReplica(errors.NotFound):
    """The replica is INCOMPLETE (being created or copied): no good replica here, read another."""


class VerifiedRange(NamedTuple):
    """What one ``verify`` call checked: ``blocks`` blocks of ``block_bytes`` from the offset
    asked, every one against its checksum; ``length_bytes`` is the replica's valid length."""

    length_bytes: int
    blocks: int
    block_bytes: int


class ReplicaInfo(NamedTuple):
    chunk_id: int
    version: int
    length_bytes: int
    damaged: bool


@dataclasses.dataclass
class ScanReport:
    """What ``scan_startup`` found. Ids are chunk ids; strays are paths relative to chunks/."""

    replicas: int = 0                                                # files with a sound header
    adopted: list[int] = dataclasses.field(default_factory=list)     # file had no index entry: added
    updated: list[int] = dataclasses.field(default_factory=list)     # index entry rewritten from the header
    missing: list[int] = dataclasses.field(default_factory=list)     # index entry had no file: dropped
    incomplete: list[int] = dataclasses.field(default_factory=list)  # INCOMPLETE: delete or re-check
    damaged: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # (id, reason); flagged in index
    strays: list[str] = dataclasses.field(default_factory=list)      # not chunk files: left alone


def _os_error(exc: OSError, chunk_id: int | None, what: str) -> errors.VStoreError:
    """The typed error for an OSError from the data dir. errno is read here because this is
    where the OS hands it to us; nothing past this function sees it."""
    details = {"chunk": chunk_id, "op": what, "errno": errno.errorcode.get(exc.errno or 0, str(exc.errno))}
    details = {k: v for k, v in details.items() if v is not None}
    name = f"chunk {chunk_id:016x}" if chunk_id is not None else "data dir"
    message = f"{name}: {what}: {exc.strerror or exc}"
    if exc.errno == errno.ENOENT:
        return errors.NotFound(message, details=details)
    if exc.errno == errno.EEXIST:
        return errors.Exists(message, details=details)
    if exc.errno == errno.ELOOP:
        return errors.Loop(f"{message} (a symlink in the data dir is never followed)", details=details)
    if exc.errno == errno.ENOTDIR:
        return errors.NotDir(message, details=details)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return errors.NoSpace(message, details=details)
    return errors.DiskIOError(message, details=details)


def _open_dir(name: str, dir_fd: int) -> int:
    """Open the directory ``name`` under ``dir_fd`` without following a symlink. Linux fails
    O_DIRECTORY|O_NOFOLLOW on a symlink with ENOTDIR, not ELOOP, so that case is told apart here."""
    try:
        return os.open(name, _OPEN_DIR, dir_fd=dir_fd)
    except NotADirectoryError as exc:
        try:
            is_link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            is_link = False
        if is_link:
            raise OSError(errno.ELOOP, f"{name} is a symlink") from exc
        raise


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset``, short only at EOF (pread may return less mid-file)."""
    parts = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _parse_version(value: object, name: str = "version") -> int:
    if type(value) is not int or not 1 <= value <= VERSION_MAX:
        raise errors.InvalidArgument(f"{name} must be an int in 1..2**63-1, not {value!r:.40}")
    return value


class ChunkStore:
    """The replicas on one data dir. Blocking; call it from the disk's executor thread(s).

    ``chunk_bytes`` and ``block_bytes`` shape new replicas only: an existing file is read with
    the geometry its own header records. ``reserve_bytes`` of the file system are never
    counted as free (room for the index, logs and the root user).
    """

    def __init__(self, data_dir: Path, *, chunk_bytes: int, block_bytes: int = 4096, reserve_bytes: int = 0,
                 index_map_bytes: int = INDEX_MAP_BYTES_DEFAULT) -> None:
        try:
            new_header(1, 1, chunk_bytes=chunk_bytes, block_bytes=block_bytes)
        except errors.LocalProtocolError as exc:
            raise errors.InvalidArgument(f"chunk store geometry: {exc}") from exc
        if type(reserve_bytes) is not int or reserve_bytes < 0:
            raise errors.InvalidArgument(f"reserve_bytes must be an int >= 0, not {reserve_bytes!r}")
        self.data_dir = Path(data_dir)
        self.chunk_bytes = chunk_bytes
        self.block_bytes = block_bytes
        self.reserve_bytes = reserve_bytes
        self._locks = tuple(threading.Lock() for _ in range(LOCK_STRIPES))
        self._chunks_fd = -1
        self._env: lmdb.Environment | None = None
        # Damage flags also kept in memory: on a full disk the index commit that records them can
        # fail, and the replica must stay refused anyway (after a restart its checks fail again).
        # Bounded by the damaged replicas on this disk; an entry goes with the replica's delete.
        self._bad: dict[int, int] = {}
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            data_fd = os.open(self.data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for sub in ("chunks", "index"):
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(sub, 0o750, dir_fd=data_fd)
                        os.fsync(data_fd)
                self._chunks_fd = _open_dir("chunks", data_fd)
                os.close(_open_dir("index", data_fd))  # ELOOP if index/ is a symlink
            finally:
                os.close(data_fd)
            for name in ("data.mdb", "lock.mdb"):
                path = self.data_dir / "index" / name
                if path.is_symlink():
                    raise OSError(errno.ELOOP, f"{path} is a symlink")
        except OSError as exc:
            self.close()
            raise _os_error(exc, None, f"open data dir {self.data_dir}") from exc
        try:
            # sync and metasync both on (RELIABILITY §4.1): unlike the MDS state machine, no Raft
            # log replays what a lost commit forgets; writemap off so a stray pointer write
            # cannot corrupt the file.
            self._env = lmdb.open(str(self.data_dir / "index"), map_size=index_map_bytes, max_dbs=2, sync=True,
                                  metasync=True, writemap=False, subdir=True, readahead=False, max_readers=256)
            self._db = self._env.open_db(b"replicas")
        except lmdb.Error as exc:
            self.close()
            raise errors.DiskIOError(f"cannot open chunk index in {self.data_dir / 'index'}: {exc}") from exc

    # ---- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the index, then the chunks dir fd (reverse order of opening). Idempotent."""
        if self._env is not None:
            self._env.close()
            self._env = None
        if self._chunks_fd >= 0:
            os.close(self._chunks_fd)
            self._chunks_fd = -1

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- space -------------------------------------------------------------------------------

    def usage(self) -> tuple[int, int, int]:
        """(total_bytes, used_bytes, free_bytes) of the data dir's file system. free is what an
        unprivileged writer may still use minus reserve_bytes; used = total - free."""
        st = os.statvfs(self._chunks_fd)
        total = st.f_blocks * st.f_frsize
        free = max(0, st.f_bavail * st.f_frsize - self.reserve_bytes)
        return total, max(0, total - free), free

    @property
    def fill_ratio(self) -> float:
        total, used, _ = self.usage()
        return used / total if total else 1.0

    @property
    def nearfull(self) -> bool:
        """Above NEARFULL_RATIO (85 %): the operator should look (the chunk report carries it)."""
        return self.fill_ratio >= NEARFULL_RATIO

    @property
    def full(self) -> bool:
        """Above FULL_RATIO (95 %): ``create`` refuses new replicas with NoSpace."""
        return self.fill_ratio >= FULL_RATIO

    # ---- index -------------------------------------------------------------------------------

    def _index_get(self, chunk_id: int) -> tuple[int, int, int] | None:
        assert self._env is not None, "chunk store is closed"
        with self._env.begin(db=self._db) as txn:
            raw = txn.get(_INDEX_KEY.pack(chunk_id))
        return _INDEX_VALUE.unpack(raw) if raw is not None else None

    def _index_put(self, chunk_id: int, header: ChunkHeader | None, *, add_flags: int = 0) -> None:
        """Record ``header`` (or keep the recorded values when None), keeping damage flags."""
        assert self._env is not None, "chunk store is closed"
        try:
            with self._env.begin(db=self._db, write=True) as txn:
                key = _INDEX_KEY.pack(chunk_id)
                raw = txn.get(key)
                version, length, flags = _INDEX_VALUE.unpack(raw) if raw is not None else (0, 0, 0)
                flags |= add_flags
                if header is not None:
                    version, length = header.version, header.length_bytes
                    flags = (flags & ~INDEX_INCOMPLETE) | (INDEX_INCOMPLETE if header.incomplete else 0)
                txn.put(key, _INDEX_VALUE.pack(version, length, flags))
        except lmdb.Error as exc:
            raise self._index_error(exc, chunk_id) from exc

    def _index_delete(self, chunk_id: int) -> None:
        assert self._env is not None, "chunk store is closed"
        try:
            with self._env.begin(db=self._db, write=True) as txn:
                txn.delete(_INDEX_KEY.pack(chunk_id))
        except lmdb.Error as exc:
            raise self._index_error(exc, chunk_id) from exc

    def _index_error(self, exc: lmdb.Error, chunk_id: int) -> errors.VStoreError:
        if isinstance(exc, lmdb.MapFullError) or "No space" in str(exc):
            return errors.NoSpace(f"chunk index full writing chunk {chunk_id:016x}: {exc}",
                                  details={"chunk": chunk_id})
        return errors.DiskIOError(f"chunk index write for chunk {chunk_id:016x} failed: {exc}",
                                  details={"chunk": chunk_id})

    def _mark_bad(self, chunk_id: int, flag: int, reason: str) -> None:
        """Flag the replica damaged in the index, so it is refused and reported until deleted.
        A failure to record it is logged (the in-memory flag still holds until restart); the
        caller raises its original error either way."""
        self._bad[chunk_id] = self._bad.get(chunk_id, 0) | flag
        log.warning("cs.store.replica_damaged", extra={"chunk": chunk_id, "reason": reason, "data_dir":
                                                        str(self.data_dir)})
        try:
            self._index_put(chunk_id, None, add_flags=flag)
        except errors.VStoreError as exc:
            log.error("cs.store.damage_not_recorded", extra={"chunk": chunk_id, "reason": reason,
                                                             "error": exc.message})

    def _refuse_damaged(self, chunk_id: int) -> None:
        entry = self._index_get(chunk_id)
        flags = (entry[2] if entry is not None else 0) | self._bad.get(chunk_id, 0)
        if flags & INDEX_BAD_IO:
            raise errors.DiskIOError(f"chunk {chunk_id:016x}: replica had a disk I/O error and is being dropped",
                                     details={"chunk": chunk_id})
        if flags & INDEX_BAD_DATA:
            raise errors.ChecksumMismatch(f"chunk {chunk_id:016x}: replica is marked damaged",
                                          details={"chunk": chunk_id, "reason": "marked_damaged"})

    # ---- files -------------------------------------------------------------------------------

    def _lock(self, chunk_id: int) -> threading.Lock:
        return self._locks[chunk_id % LOCK_STRIPES]

    @contextlib.contextmanager
    def _shard(self, chunk_id: int, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """(shard dir fd, file name) of the replica. With ``create``, makes the shard dir and
        fsyncs chunks/ when it is new, so the new file's directory entry has a durable parent."""
        assert self._chunks_fd >= 0, "chunk store is closed"
        shard, name = chunk_file_name(chunk_id).split("/")
        try:
            if create:
                try:
                    os.mkdir(shard, 0o750, dir_fd=self._chunks_fd)
                    os.fsync(self._chunks_fd)
                except FileExistsError:
                    pass
            shard_fd = _open_dir(shard, self._chunks_fd)
        except OSError as exc:
            raise _os_error(exc, chunk_id, "open shard dir") from exc
        try:
            yield shard_fd, name
        finally:
            os.close(shard_fd)

    @contextlib.contextmanager
    def _file(self, chunk_id: int) -> Iterator[int]:
        """An fd of the replica's regular file, opened per call with O_NOFOLLOW."""
        with self._shard(chunk_id) as (shard_fd, name):
            try:
                fd = os.open(name, _OPEN_FILE, dir_fd=shard_fd)
            except OSError as exc:
                raise _os_error(exc, chunk_id, "open replica") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise errors.InvalidArgument(f"chunk {chunk_id:016x}: replica path is not a regular file",
                                             details={"chunk": chunk_id})
            yield fd
        finally:
            os.close(fd)

    def _header(self, fd: int, chunk_id: int) -> ChunkHeader:
        """The file's decoded header, checked to name ``chunk_id`` and to have its whole table.
        A failure flags the replica damaged (the version is not checked: a stale replica is
        not a damaged one)."""
        try:
            header = decode_header(_pread_exact(fd, HEADER_BYTES, 0))
            if header.chunk_id != chunk_id:
                expect(header, chunk_id, header.version)  # raises WrongChunk
            size = os.fstat(fd).st_size
            if size < header.data_offset:
                raise TruncatedTable(f"chunk {chunk_id:016x} file is {size} bytes, its checksum table ends at "
                                     f"{TABLE_OFFSET + header.table_bytes}", chunk=chunk_id)
        except (ChunkFormatError, WrongChunk) as exc:
            exc.details.setdefault("chunk", chunk_id)
            self._mark_bad(chunk_id, INDEX_BAD_DATA, exc.details.get("reason", "bad_header"))
            raise
        except OSError as exc:
            raise self._io_failure(exc, chunk_id, "read header") from exc
        return header

    def _io_failure(self, exc: OSError, chunk_id: int, what: str) -> errors.VStoreError:
        typed = _os_error(exc, chunk_id, what)
        if exc.errno == errno.EIO:
            self._mark_bad(chunk_id, INDEX_BAD_IO, f"eio_{what.replace(' ', '_')}")
        return typed

    def _read_blocks(self, fd: int, header: ChunkHeader, first: int, count: int) -> tuple[bytes, list[int]]:
        """(stored data, slots) of ``count`` blocks from ``first``. The slots must be whole (the
        table length was checked against the file size); the data may be short at EOF."""
        try:
            failpoint("cs.read")
            raw_slots = _pread_exact(fd, count * SLOT_BYTES, slot_offset(header, first))
            data = _pread_exact(fd, count * header.block_bytes, block_offset(header, first))
        except OSError as exc:
            raise self._io_failure(exc, header.chunk_id, "read blocks") from exc
        if len(raw_slots) != count * SLOT_BYTES:
            self._mark_bad(header.chunk_id, INDEX_BAD_DATA, "truncated_table")
            raise TruncatedTable(f"chunk {header.chunk_id:016x}: checksum table cut short at block {first}",
                                 chunk=header.chunk_id)
        return data, decode_slots(raw_slots)

    def _verified(self, fd: int, header: ChunkHeader, first: int, count: int) -> bytes:
        data, slots = self._read_blocks(fd, header, first, count)
        try:
            return verified_content(header, first, data, slots)
        except BlockChecksumMismatch:
            self._mark_bad(header.chunk_id, INDEX_BAD_DATA, "block_checksum")
            raise

    def _apply(self, fd: int, chunk_id: int, pwrites: Sequence[tuple[int, bytes]]) -> None:
        """Issue the pwrites in order. A failure leaves the range undefined on disk (a pwrite
        may have landed in part: each block old, new or failing its checksum), so the replica
        is flagged damaged as well as the error raised: the service drops it from the chain and
        the MDS rebuilds it (F9, F14). Telling "nothing landed" apart was rejected as fragile."""
        for n, (offset, data) in enumerate(pwrites):
            try:
                if n == 0:
                    failpoint("cs.write")
                _pwrite_all(fd, data, offset)
            except OSError as exc:
                typed = _os_error(exc, chunk_id, "write")
                flag = INDEX_BAD_IO if exc.errno == errno.EIO else INDEX_BAD_DATA
                self._mark_bad(chunk_id, flag, f"write_failed_{errno.errorcode.get(exc.errno or 0, 'os')}")
                raise typed from exc

    def _fsync_fd(self, fd: int, chunk_id: int) -> None:
        """fsync, and on failure flag the replica BAD_IO: Linux reports a write-back error once,
        so a retried fsync could "succeed" over lost pages. Never retried here."""
        try:
            failpoint("cs.fsync")
            os.fsync(fd)
        except OSError as exc:
            log.error("cs.store.fsync_failed", extra={"chunk": chunk_id, "error": str(exc)})
            self._mark_bad(chunk_id, INDEX_BAD_IO, "fsync_failed")
            raise errors.DiskIOError(f"chunk {chunk_id:016x}: fsync failed: {exc.strerror or exc}; "
                                     "replica dropped", details={"chunk": chunk_id, "op": "fsync"}) from exc

    # ---- operations --------------------------------------------------------------------------

    def create(self, chunk_id: object, version: object, *, incomplete: bool = True) -> None:
        """Create an empty replica: the header (INCOMPLETE unless told otherwise) and a zeroed
        table up to data_offset (ftruncate: every block a hole).

        Persisted in this order: file fsync, shard dir fsync (and chunks/ when the shard dir is
        new), then the index entry. A crash before the index commit leaves a file that
        ``scan_startup`` adopts and reports as INCOMPLETE. Raises Exists if the file exists,
        NoSpace above FULL_RATIO or when the disk fills meanwhile (the partial file is removed).
        """
        cid = parse_chunk_id(chunk_id)
        ver = _parse_version(version)
        header = new_header(cid, ver, chunk_bytes=self.chunk_bytes, block_bytes=self.block_bytes,
                            flags=ChunkFlag.INCOMPLETE if incomplete else ChunkFlag(0))
        total, used, free = self.usage()
        if not total or used / total >= FULL_RATIO or free < header.data_offset:
            raise errors.NoSpace(f"chunk {cid:016x}: data dir {self.data_dir} is {used * 100 // max(total, 1)}% "
                                 f"full ({free} bytes free); refusing new replicas above {FULL_RATIO:.0%}",
                                 details={"chunk": cid, "free_bytes": free})
        with self._lock(cid), self._shard(cid, create=True) as (shard_fd, name):
            try:
                fd = os.open(name, _OPEN_FILE | os.O_CREAT | os.O_EXCL, 0o640, dir_fd=shard_fd)
            except OSError as exc:
                raise _os_error(exc, cid, "create replica") from exc
            try:
                try:
                    _pwrite_all(fd, encode_header(header), 0)
                    os.ftruncate(fd, header.data_offset)
                    os.fsync(fd)
                    os.fsync(shard_fd)
                except OSError as exc:
                    raise _os_error(exc, cid, "create replica") from exc
                finally:
                    os.close(fd)
                self._index_put(cid, header)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=shard_fd)
                    os.fsync(shard_fd)
                raise

    def write(self, chunk_id: object, version: object, offset: int, data: bytes | bytearray | memoryview, *,
              client_checksums: Sequence[int] | None = None) -> None:
        """Write ``data`` at ``offset`` of the replica at ``version``. Not durable until ``fsync``.

        Checks the header against (chunk_id, version) (WrongChunk, WrongVersion), plans with
        ``plan_write``, reads and verifies only the blocks the plan names, then pwrites the data
        blocks, the slots and the header, in chunkfile's order. ``client_checksums`` are xxh3_64
        of ``data`` split at the chunk's block boundaries; they are all checked before anything
        is written (ChecksumMismatch, details piece), so a corrupted transfer changes nothing.
        """
        cid = parse_chunk_id(chunk_id)
        ver = _parse_version(version)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise errors.InvalidArgument(f"write data must be bytes, not {type(data).__name__}")
        with self._lock(cid):
            self._refuse_damaged(cid)
            with self._file(cid) as fd:
                header = self._header(fd, cid)
                expect(header, cid, ver)
                plan = plan_write(header, offset, len(data))
                if client_checksums is not None:
                    self._check_client_checksums(header, cid, offset, data, client_checksums)
                old = {b: self._verified(fd, header, b, 1) for b in plan.reads}
                self._apply(fd, cid, assemble_write(plan, data, old))

    @staticmethod
    def _check_client_checksums(header: ChunkHeader, cid: int, offset: int, data: bytes | bytearray | memoryview,
                                sums: Sequence[int]) -> None:
        size = header.block_bytes
        view = memoryview(data)
        bounds = []
        pos, end = offset, offset + len(data)
        while pos < end:
            nxt = min((pos // size + 1) * size, end)
            bounds.append((pos - offset, nxt - offset))
            pos = nxt
        if not isinstance(sums, Sequence) or len(sums) != len(bounds):
            raise errors.InvalidArgument(f"chunk {cid:016x}: {len(bounds)} client checksums expected for "
                                         f"{len(data)} bytes at {offset}", details={"chunk": cid})
        for piece, ((lo, hi), want) in enumerate(zip(bounds, sums)):
            got = xxh3_64_intdigest(view[lo:hi])
            if got != want:
                raise errors.ChecksumMismatch(
                    f"chunk {cid:016x}: piece {piece} ({hi - lo} bytes at {offset + lo}) has xxh3 {got:016x}, "
                    f"the client sent {want if not isinstance(want, int) else format(want, '016x')}; nothing written",
                    details={"chunk": cid, "piece": piece, "offset": offset + lo, "reason": "client_checksum"})

    def read(self, chunk_id: object, version: object, offset: int, length: int, *,
             allow_incomplete: bool = False) -> bytes:
        """``length`` bytes from ``offset`` of the replica at ``version``, cut at the valid length
        (chunkfile ``plan_read``: the client fills a shortfall with zeros). Holes, and bytes of
        the last block past the length, come back as zeros.

        Every block read is verified: a mismatch raises BlockChecksumMismatch and flags the
        replica; no byte is returned. An INCOMPLETE replica is not a good replica and raises
        IncompleteReplica unless ``allow_incomplete`` (the service's own first-write path).
        ChunkRangeError for a range past the capacity; NotFound for a missing file.
        """
        _, plan, content = self._read_verified(chunk_id, version, offset, length, allow_incomplete=allow_incomplete)
        return content[plan.skip_bytes:plan.skip_bytes + plan.length_bytes]

    def verify(self, chunk_id: object, version: object, offset: int, max_bytes: int) -> VerifiedRange:
        """Check the replica at ``version`` from ``offset`` (block-aligned) for up to
        ``max_bytes``, cut at the valid length and at the capacity, and return what was checked
        instead of the bytes (``vstore scrub``: the service calls it piece by piece).

        It is ``read``'s path exactly: the same checks in the same order (damage flags, header,
        chunk id, version, INCOMPLETE), the same verified block read, and the same marking of
        the replica as damaged when a block fails (BlockChecksumMismatch). InvalidArgument for
        an offset that is not block-aligned (the block count would not be exact)."""
        header, plan, _ = self._read_verified(chunk_id, version, offset, max_bytes, cut_at_capacity=True)
        return VerifiedRange(length_bytes=header.length_bytes, blocks=plan.block_count,
                             block_bytes=header.block_bytes)

    def _read_verified(self, chunk_id: object, version: object, offset: int, length: int, *,
                       allow_incomplete: bool = False, cut_at_capacity: bool = False
                       ) -> tuple[ChunkHeader, ReadPlan, bytes]:
        """What ``read`` and ``verify`` share: (header, plan, verified content of the planned
        blocks), under the chunk's lock. ``cut_at_capacity`` shortens a range that runs past the
        chunk's capacity instead of refusing it (ChunkRangeError)."""
        cid = parse_chunk_id(chunk_id)
        ver = _parse_version(version)
        with self._lock(cid):
            self._refuse_damaged(cid)
            with self._file(cid) as fd:
                header = self._header(fd, cid)
                expect(header, cid, ver)
                if header.incomplete and not allow_incomplete:
                    raise IncompleteReplica(f"chunk {cid:016x} replica is incomplete", details={"chunk": cid})
                if cut_at_capacity:
                    if type(offset) is not int or offset % header.block_bytes:
                        raise errors.InvalidArgument(f"chunk {cid:016x}: verify offset {offset!r} is not a multiple "
                                                     f"of the {header.block_bytes}-byte block", details={"chunk": cid})
                    length = max(0, min(length, header.chunk_bytes - offset))
                plan = plan_read(header, offset, length)
                if plan.block_count == 0:
                    return header, plan, b""
                return header, plan, self._verified(fd, header, plan.first_block, plan.block_count)

    def fsync(self, chunk_id: object) -> None:
        """Make every write so far durable, then record the header's length in the index.

        An fsync error flags the replica BAD_IO and raises DiskIOError, and every later call on
        it raises DiskIOError too: the kernel reports a lost write-back once, so a second fsync
        returning 0 proves nothing (RELIABILITY §4.2, F14)."""
        cid = parse_chunk_id(chunk_id)
        with self._lock(cid):
            self._refuse_damaged(cid)
            with self._file(cid) as fd:
                self._fsync_fd(fd, cid)
                header = self._header(fd, cid)
            entry = self._index_get(cid)
            want_flags = INDEX_INCOMPLETE if header.incomplete else 0
            if entry is None or entry[:2] != (header.version, header.length_bytes) or \
                    (entry[2] & INDEX_INCOMPLETE) != want_flags:
                self._index_put(cid, header)

    def _rewrite_header(self, fd: int, cid: int, header: ChunkHeader) -> None:
        """One 64-byte pwrite of the header, fsync, then the index: the atomic step behind
        set_version and mark_complete (a torn header fails its checksum, never misreads)."""
        self._apply(fd, cid, [(0, encode_header(header))])
        self._fsync_fd(fd, cid)
        self._index_put(cid, header)

    def set_version(self, chunk_id: object, old_version: object, new_version: object) -> None:
        """Compare-and-set the replica's version from ``old_version`` up to ``new_version``.

        Idempotent when already at ``new_version``. StaleVersion when new_version is not above
        the current one; WrongVersion when the current one is not ``old_version``. Durable on
        return (header pwrite + fsync, then the index)."""
        cid = parse_chunk_id(chunk_id)
        old = _parse_version(old_version, "old_version")
        new = _parse_version(new_version, "new_version")
        with self._lock(cid):
            self._refuse_damaged(cid)
            with self._file(cid) as fd:
                header = self._header(fd, cid)
                if header.version == new:
                    return
                if new < header.version:
                    raise errors.StaleVersion(f"chunk {cid:016x}: version {header.version} cannot go down to {new}",
                                              details={"chunk": cid, "have": header.version, "want": new})
                expect(header, cid, old)
                if new <= old:
                    raise errors.StaleVersion(f"chunk {cid:016x}: new version {new} is not above {old}",
                                              details={"chunk": cid, "have": header.version, "want": new})
                self._rewrite_header(fd, cid, dataclasses.replace(header, version=new))

    def mark_complete(self, chunk_id: object) -> None:
        """Clear INCOMPLETE (after a verified copy, or the first fsync of a new chunk). Durable
        on return; idempotent."""
        cid = parse_chunk_id(chunk_id)
        with self._lock(cid):
            self._refuse_damaged(cid)
            with self._file(cid) as fd:
                header = self._header(fd, cid)
                if header.incomplete:
                    self._rewrite_header(fd, cid, dataclasses.replace(
                        header, flags=header.flags & ~ChunkFlag.INCOMPLETE))
                else:
                    self._index_put(cid, header)

    def truncate(self, chunk_id: object, new_version: object, length: int, *, at_most_version: object) -> None:
        """Set the valid length to ``length`` and the version to ``new_version``, durably.

        The replica must be at a version <= ``at_most_version`` and <= ``new_version``
        (StaleVersion otherwise). A growth clears [old length, length) per ``plan_resize``;
        a shrink rewrites only the header (no space is freed yet). The header goes last, after
        the blocks and slots, then fsync and the index. A retry after success is a no-op.
        """
        cid = parse_chunk_id(chunk_id)
        new = _parse_version(new_version, "new_version")
        most = _parse_version(at_most_version, "at_most_version")
        with self._lock(cid):
            self._refuse_damaged(cid)
            with self._file(cid) as fd:
                header = self._header(fd, cid)
                if header.version == new and header.length_bytes == length:
                    return  # a retry of a truncate that already happened
                if header.version > most or header.version > new:
                    raise errors.StaleVersion(f"chunk {cid:016x}: replica at version {header.version}, truncate to "
                                              f"version {new} allows at most {most}",
                                              details={"chunk": cid, "have": header.version, "want": new})
                plan = plan_resize(dataclasses.replace(header, version=new), length)
                old = {b: self._verified(fd, header, b, 1) for b in plan.reads}
                pwrites = [pw for pw in assemble_write(plan, b"", old) if pw[0] != 0]
                pwrites.append((0, encode_header(plan.header)))
                self._apply(fd, cid, pwrites)
                self._fsync_fd(fd, cid)
            self._index_put(cid, plan.header)

    def delete(self, chunk_id: object, *, at_most_version: object) -> None:
        """Remove the replica if its version is <= ``at_most_version`` (StaleVersion otherwise,
        so a delayed delete never removes a newer replica). A damaged header does not block the
        delete (the index version is used). Missing: no error. Unlink, fsync the shard dir, then
        drop the index entry."""
        cid = parse_chunk_id(chunk_id)
        most = _parse_version(at_most_version, "at_most_version")
        with self._lock(cid):
            entry = self._index_get(cid)
            try:
                with self._file(cid) as fd:
                    try:
                        version = self._header(fd, cid).version
                    except (ChunkFormatError, WrongChunk):
                        version = entry[0] if entry else 0
                if version > most:
                    raise errors.StaleVersion(f"chunk {cid:016x}: replica at version {version} is newer than the "
                                              f"delete allows ({most})", details={"chunk": cid, "have": version})
                with self._shard(cid) as (shard_fd, name):
                    try:
                        os.unlink(name, dir_fd=shard_fd)
                        os.fsync(shard_fd)
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        raise _os_error(exc, cid, "delete replica") from exc
            except errors.NotFound:
                pass
            if entry is not None:
                self._index_delete(cid)
            self._bad.pop(cid, None)

    def list_chunks(self) -> list[ReplicaInfo]:
        """The chunk report: every replica in the index that is not INCOMPLETE (a partial
        replica never counts as good), damaged ones included and flagged. Sorted by id."""
        return [info for info, incomplete in self._index_items() if not incomplete]

    def list_incomplete(self) -> list[ReplicaInfo]:
        """The INCOMPLETE replicas (being written or copied): not part of the chunk report."""
        return [info for info, incomplete in self._index_items() if incomplete]

    def _index_items(self) -> list[tuple[ReplicaInfo, bool]]:
        assert self._env is not None, "chunk store is closed"
        out = []
        with self._env.begin(db=self._db) as txn:
            for key, raw in txn.cursor():
                (cid,) = _INDEX_KEY.unpack(key)
                version, length, flags = _INDEX_VALUE.unpack(raw)
                flags |= self._bad.get(cid, 0)
                out.append((ReplicaInfo(cid, version, length, bool(flags & (INDEX_BAD_DATA | INDEX_BAD_IO))),
                            bool(flags & INDEX_INCOMPLETE)))
        return out

    def scrub_one(self, chunk_id: object) -> list[int]:
        """The blocks of the replica that fail their checksum (empty: all good), read in batches
        of SCRUB_BATCH_BLOCKS. Any version. A header problem raises its ChunkFormatError (or
        WrongChunk, TruncatedTable); found damage is flagged in the index and logged."""
        cid = parse_chunk_id(chunk_id)
        bad: list[int] = []
        with self._lock(cid), self._file(cid) as fd:
            header = self._header(fd, cid)
            for first in range(0, header.used_blocks, SCRUB_BATCH_BLOCKS):
                count = min(SCRUB_BATCH_BLOCKS, header.used_blocks - first)
                data, slots = self._read_blocks(fd, header, first, count)
                bad.extend(verify_blocks(header, first, data, slots))
        if bad:
            self._mark_bad(cid, INDEX_BAD_DATA, "block_checksum")
        return bad

    def scan_startup(self) -> ScanReport:
        """Reconcile the index with chunks/ after a start (or a crash). Never deletes a file.

        Every file whose name ``parse_chunk_file_name`` accepts is opened and its header checked:
        sound ones get an index entry matching the header (adopted, or updated when the entry
        disagreed: the header is the truth); failing ones are flagged damaged and reported;
        INCOMPLETE ones are reported for the service to delete or re-check. Anything else
        (other names, symlinks, directories) is a stray, logged and left alone. Index entries
        with no file are dropped and reported missing.
        """
        report = ScanReport()
        seen: set[int] = set()
        assert self._chunks_fd >= 0, "chunk store is closed"
        for top in sorted(os.scandir(self._chunks_fd), key=lambda e: e.name):
            if top.name not in SHARD_DIRS or not top.is_dir(follow_symlinks=False):
                self._stray(report, top.name)
                continue
            try:
                shard_fd = _open_dir(top.name, self._chunks_fd)
            except OSError:
                self._stray(report, top.name)
                continue
            try:
                entries = sorted(os.scandir(shard_fd), key=lambda e: e.name)
            finally:
                os.close(shard_fd)
            for entry in entries:
                rel = f"{top.name}/{entry.name}"
                try:
                    cid = parse_chunk_file_name(rel)
                except ChunkIdError:
                    self._stray(report, rel)
                    continue
                if not entry.is_file(follow_symlinks=False):
                    self._stray(report, rel)
                    continue
                seen.add(cid)
                self._scan_file(report, cid)
        for info, _ in self._index_items():
            if info.chunk_id not in seen:
                log.warning("cs.store.replica_missing", extra={"chunk": info.chunk_id, "version": info.version})
                self._index_delete(info.chunk_id)
                report.missing.append(info.chunk_id)
        return report

    def _stray(self, report: ScanReport, rel: str) -> None:
        log.warning("cs.store.stray_file", extra={"path": rel, "data_dir": str(self.data_dir)})
        report.strays.append(rel)

    def _scan_file(self, report: ScanReport, cid: int) -> None:
        entry = self._index_get(cid)
        try:
            with self._lock(cid), self._file(cid) as fd:
                header = self._header(fd, cid)
        except (ChunkFormatError, WrongChunk) as exc:  # flagged by _header
            report.damaged.append((cid, str(exc.details.get("reason", "bad_header"))))
            return
        except errors.VStoreError as exc:
            self._mark_bad(cid, INDEX_BAD_IO, "unreadable")
            report.damaged.append((cid, exc.message))
            return
        report.replicas += 1
        if header.incomplete:
            report.incomplete.append(cid)
        flags = INDEX_INCOMPLETE if header.incomplete else 0
        if entry is None:
            report.adopted.append(cid)
            self._index_put(cid, header)
        elif entry[:2] != (header.version, header.length_bytes) or (entry[2] & INDEX_INCOMPLETE) != flags:
            report.updated.append(cid)
            self._index_put(cid, header)
        if entry is not None and entry[2] & (INDEX_BAD_DATA | INDEX_BAD_IO):
            report.damaged.append((cid, "flagged_before_restart"))
