"""The namespace part of the metadata state machine: commands, their apply functions, reads.

A command carries everything that must be deterministic (the caller's uid/gid, the leader's
clock reading, the inode id the leader chose); ``apply`` only replays it, inside a nested
LMDB transaction so that a command that fails leaves nothing behind. Failures are results
(``("err", ErrorCode, message)``), identical on every replica, not exceptions.

The chunk layer (a file's chunks, versions and replica chains, the chunkserver registry, the
deletion queue) has its commands here, in the one Command union, and its apply functions and
table access in chunks.py. Namespace commands that remove or shrink a file (unlink, rename
over it, the last release of an orphan, truncate) hand its chunks to that layer in the same
transaction.

POSIX rules kept here (the FUSE kernel side checks ordinary permissions with
``default_permissions``; what needs the namespace's own knowledge is done here): name
rules, EEXIST/ENOENT/ENOTDIR/EISDIR/ENOTEMPTY, rename over an existing target, across
directories, RENAME_NOREPLACE / RENAME_EXCHANGE, never a directory into its own subtree,
hard-link counts, the sticky bit on deletion and rename, chmod/chown ownership rules.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lmdb
import msgspec

from vstore.errors import (Exists, FileBusy, FileTooBig, InvalidArgument, IsDir, NameTooLong, NoAttribute, NotDir, NotEmpty,
                           NotFound, NotPermitted, RangeError, TooManyLinks, VStoreError)
from vstore.metadata.fsm.chunks import ChunkCommands, ChunkTables, check_chunk_bytes, need_regular_file
from vstore.metadata.fsm.schema import (CHUNK_BYTES_DEFAULT, CHUNK_ID_MAX, EXPIRED_KEEP_NS, FILE_BYTES_MAX,
                                        FLAG_EXCLUSIVE_WRITE, INHERITED_FLAGS, NAME_BYTES_MAX, PERMISSION_BITS, ROOT_INODE, S_ISGID, S_ISUID, S_ISVTX, SYMLINK_BYTES_MAX,
                                        TABLES, U64, XATTR_NAME_BYTES_MAX, XATTR_VALUE_BYTES_MAX, Chunk, CsRecord,
                                        DoomedChunk, Inode, Kind, chunk_decoder, cs_decoder, dentry_key,
                                        doomed_decoder, encoder, inode_decoder, inode_key, xattr_key)
from vstore.metadata.placement import ChunkId, CsId, ReplicaPolicy
from vstore.metadata.raft.statemachine import EffectTxn, LmdbStateMachine
from vstore.wire.codes import ErrorCode

LINKS_MAX = 65_000
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class Op(msgspec.Struct, array_like=True, frozen=True, tag=True):
    uid: int
    gid: int
    now_ns: int


class InitRoot(Op, tag="init"):
    """mkfs: the root directory, and the cluster's chunk size (a power of two from 1 MiB to
    1 GiB, fixed for the life of the file system)."""

    mode: int = 0o755
    chunk_bytes: int = CHUNK_BYTES_DEFAULT
    #: the dashboard's admin password as vstore/metadata/passwords.py stores it ("" = none)
    admin_password_hash: str = ""


class Mknod(Op, tag="mknod"):
    """Create a file, FIFO, socket or device node (create and mknod). ``open`` 1 or 2: a
    regular file is opened by ``session`` too, for reading or writing (as Open)."""

    parent: int
    name: bytes
    kind: int
    mode: int
    inode: int
    rdev: int = 0
    open: int = 0
    session: bytes = b""


class Mkdir(Op, tag="mkdir"):
    parent: int
    name: bytes
    mode: int
    inode: int


class Symlink(Op, tag="symlink"):
    parent: int
    name: bytes
    target: bytes
    inode: int


class Link(Op, tag="link"):
    inode: int
    parent: int
    name: bytes


class Unlink(Op, tag="unlink"):
    parent: int
    name: bytes


class Rmdir(Op, tag="rmdir"):
    parent: int
    name: bytes


class Rename(Op, tag="rename"):
    parent: int
    name: bytes
    new_parent: int
    new_name: bytes
    flags: int = 0


class SetAttr(Op, tag="setattr"):
    inode: int
    mode: int | None = None
    new_uid: int | None = None
    new_gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


class Open(Op, tag="open"):
    """A client session opened the inode: its data must outlive its names until released.
    ``write``: for writing; on an inode with FLAG_EXCLUSIVE_WRITE that fails with FileBusy
    while another session holds it open for writing (the exclusive-writer lease)."""

    inode: int
    session: bytes
    write: bool = False


class Release(Op, tag="release"):
    inode: int
    session: bytes
    write: bool = False


class ExpireSession(Op, tag="expire_session"):
    """A client went silent (its session expired) or closed: release everything it held
    open and leave a tombstone, which fences the session off: every later command on one of
    its lanes is refused with STALE_HANDLE (``refuse_client``), except a retry of the lane's
    last command, which still gets its stored answer. So a client cut off while a mutation
    was in flight learns truthfully whether it was applied, however late its retry comes
    (a refusal it could not tell from "not applied" would turn, through the kernel's own
    ESTALE retry, into EEXIST for a create that did happen). The lane records go with the
    tombstone a week later; ``forget_lanes`` (a clean close: nothing is in flight) drops them
    at once. The leader proposes it without a client id: under one of the session's own
    lanes, the base class would write that lane's record straight back."""

    session: bytes
    forget_lanes: bool = False


class SetPolicy(Op, tag="set_policy"):
    """``replicas=N:min`` on a file or directory. New entries copy their directory's policy
    when they are created (so moving a file later does not silently change its copies)."""

    inode: int
    policy: str | None = None
    #: set or clear FLAG_EXCLUSIVE_WRITE (None: unchanged); inherited like the policy
    exclusive_write: bool | None = None


DEFAULT_POLICY = "3:2"

XATTR_CREATE = 1   # fail if the attribute exists (setxattr flags, as in Linux)
XATTR_REPLACE = 2  # fail if it does not


class SetXattr(Op, tag="setxattr"):
    inode: int
    name: bytes
    value: bytes
    flags: int = 0


class RemoveXattr(Op, tag="removexattr"):
    inode: int
    name: bytes


# ---- the chunk layer (apply functions in chunks.py) ------------------------------------------------


class AllocChunk(Op, tag="alloc_chunk"):
    """Create the chunk at ``index`` of the regular file ``inode``: version 1, length 0, on
    ``replicas`` (chain order, chosen by the leader's placement; registered, active, distinct).
    ``chunk_id`` is chosen by the leader, above every id handed out before. Returns
    ``(chunk_id, msgpack Chunk)``. Exists when the index already has a chunk (two writers
    raced: the loser reads the winner's)."""

    inode: int
    index: int
    chunk_id: ChunkId
    replicas: tuple[CsId, ...]


class WriteDone(Op, tag="write_done"):
    """A writer's data reached every replica: the file is at least ``size`` bytes, its mtime
    is ``mtime_ns``, and each ``(index, length_bytes)`` chunk holds at least that many valid
    bytes. Chunks that no longer exist (truncated away since) are skipped. Returns
    ``(inode, msgpack Inode)``."""

    inode: int
    size: int
    mtime_ns: int
    chunks: tuple[tuple[int, int], ...] = ()


class RepairChain(Op, tag="repair_chain"):
    """A write to ``chunk_id`` at ``version`` failed on the replicas ``drop``: the chain
    becomes the others in order, then ``add``, at ``new_version`` (> version), so a dropped
    replica's copy is stale from now on. StaleVersion when the chunk is no longer at
    ``version``. Returns ``(chunk_id, msgpack Chunk)``."""

    chunk_id: ChunkId
    version: int
    drop: tuple[CsId, ...]
    add: tuple[CsId, ...]
    new_version: int


class AddReplica(Op, tag="add_replica"):
    """A repair copy of ``chunk_id`` at ``version`` on ``cs_id`` completed and was verified:
    append it to the chain. StaleVersion when the chunk has moved on (the copy is useless).
    Returns ``(chunk_id, msgpack Chunk)``."""

    chunk_id: ChunkId
    version: int
    cs_id: CsId


class DropReplica(Op, tag="drop_replica"):
    """Take ``cs_id`` out of the chunk's chain (over target, damaged, drained) and queue its
    copy for deletion. The last replica may go too: the chunk is then lost, not a hole.
    Returns ``(chunk_id, msgpack Chunk)``."""

    chunk_id: ChunkId
    cs_id: CsId


class ChunkDeleted(Op, tag="chunk_deleted"):
    """``cs_id`` deleted its doomed copy of ``chunk_id``. Idempotent; returns how many
    chunkservers still have to delete theirs."""

    chunk_id: ChunkId
    cs_id: CsId


class RegisterCs(Op, tag="register_cs"):
    """A new chunkserver joins under ``cs_id`` (chosen by the leader, above every id handed
    out before). One registration per node id, for ever. Returns ``cs_id``."""

    cs_id: CsId
    node_id: str
    host: str
    rack: str
    address: str
    capacity_bytes: int


class SetCsState(Op, tag="set_cs_state"):
    """``state``: "active", "draining" or "removed" (only once no chunk lists the server;
    final). Returns ``cs_id``."""

    cs_id: CsId
    state: str


class UpdateCs(Op, tag="update_cs"):
    """A restarted chunkserver's new address and capacity. Returns ``cs_id``."""

    cs_id: CsId
    address: str
    capacity_bytes: int


Command = (InitRoot | Mknod | Mkdir | Symlink | Link | Unlink | Rmdir | Rename | SetAttr | SetXattr | RemoveXattr
           | Open | Release | ExpireSession | SetPolicy | AllocChunk | WriteDone | RepairChain | AddReplica
           | DropReplica | ChunkDeleted | RegisterCs | SetCsState | UpdateCs)
command_decoder = msgspec.msgpack.Decoder(Command)


def encode_command(op: Command) -> bytes:
    return encoder.encode(op)


class NamespaceStateMachine(LmdbStateMachine):
    TABLES = TABLES

    # ---- applying ----------------------------------------------------------------------------

    def refuse_client(self, txn: EffectTxn, client_id: str) -> Any:
        """Commands on a lane of an expired session are refused (see ExpireSession)."""
        head, slash, _ = client_id.partition("/")
        if not slash:
            return None
        try:
            session = bytes.fromhex(head)
        except ValueError:
            return None
        if txn.get(session, db=self.tables[b"expired"]) is None:
            return None
        return ("err", int(ErrorCode.STALE_HANDLE), f"client session {head} was expired; remount")

    def apply_command(self, txn: EffectTxn, body: bytes, index: int, term: int) -> Any:
        op = command_decoder.decode(body)
        child = txn.child(self.env)
        try:
            result = _Apply(self, child, op).run()
        except VStoreError as exc:  # a refusal raised on purpose (FsError, StaleVersion, ...)
            child.abort()
            return ("err", int(exc.code), exc.message)
        child.commit()
        return ("ok", result)

    # ---- reads (local state; the service runs a read barrier first) --------------------------------

    def getattr(self, inode: int) -> Inode:
        with self.env.begin() as txn:
            return _get_inode(self, txn, inode)

    def lookup(self, parent: int, name: bytes) -> tuple[int, Inode]:
        with self.env.begin() as txn:
            _dir(self, txn, parent)
            child = _lookup(self, txn, parent, name)
            if child is None:
                raise NotFound(f"{name!r} not found in directory {parent}")
            return child, _get_inode(self, txn, child)

    def readdir(self, inode: int, after: bytes = b"", limit: int = 1000) -> list[tuple[bytes, int]]:
        """Entries of a directory in name order, starting after ``after`` (paging)."""
        out: list[tuple[bytes, int]] = []
        prefix = U64.pack(inode)
        with self.env.begin() as txn:
            _dir(self, txn, inode)
            cursor = txn.cursor(db=self.tables[b"dentries"])
            if not cursor.set_range(prefix + after):
                return out
            for key, value in cursor:
                if not key.startswith(prefix) or len(out) >= limit:
                    break
                name = key[8:]
                if name == after and after:
                    continue
                out.append((bytes(name), U64.unpack(value)[0]))
        return out

    def getxattr(self, inode: int, name: bytes) -> bytes:
        with self.env.begin() as txn:
            _get_inode(self, txn, inode)
            value = txn.get(xattr_key(inode, name), db=self.tables[b"xattrs"])
        if value is None:
            raise NoAttribute(f"inode {inode} has no attribute {name!r}")
        return bytes(value)

    def listxattr(self, inode: int) -> list[bytes]:
        prefix = U64.pack(inode)
        with self.env.begin() as txn:
            _get_inode(self, txn, inode)
            cursor = txn.cursor(db=self.tables[b"xattrs"])
            if not cursor.set_range(prefix):
                return []
            return [bytes(key[8:]) for key in cursor.iternext(keys=True, values=False) if key.startswith(prefix)]

    def readlink(self, inode: int) -> bytes:
        with self.env.begin() as txn:
            node = _get_inode(self, txn, inode)
            if node.kind != Kind.SYMLINK:
                raise InvalidArgument(f"inode {inode} is not a symlink")
            return bytes(txn.get(inode_key(inode), db=self.tables[b"symlinks"]) or b"")

    # ---- chunk reads --------------------------------------------------------------------------------

    @property
    def sessions_db(self) -> Any:
        """The base class's ``sessions`` table (one exactly-once record per client lane)."""
        return self._sessions

    def admin_password_hash(self) -> str:
        """The dashboard admin password's stored hash, set by mkfs ("" if none)."""
        with self.env.begin() as txn:
            raw = txn.get(b"admin_password_hash", db=self.tables[b"cluster"])
        return bytes(raw).decode() if raw else ""

    def chunk_bytes(self) -> int:
        """The cluster's chunk size, fixed at mkfs."""
        with self.env.begin() as txn:
            return ChunkTables(txn, self.tables).chunk_bytes()

    def chunk(self, chunk_id: int) -> Chunk:
        """The chunk's record; NotFound when it does not exist (never did, or was deleted)."""
        with self.env.begin() as txn:
            return ChunkTables(txn, self.tables).need_chunk(chunk_id)

    def chunk_map(self, inode: int, first_index: int = 0, count: int = 1) -> list[tuple[int, ChunkId, Chunk]]:
        """(index, chunk_id, chunk) of the file's chunks at indexes [first_index, first_index +
        count), in index order; holes are absent. NotFound, IsDir or InvalidArgument when
        ``inode`` is not an existing regular file. Reads at most ``count`` entries."""
        with self.env.begin() as txn:
            need_regular_file(_get_inode(self, txn, inode), inode)
            tables = ChunkTables(txn, self.tables)
            return [(index, chunk_id, tables.need_chunk(chunk_id))
                    for index, chunk_id in tables.file_chunks(inode, first_index, first_index + max(0, count))]

    def iter_chunks(self, after_chunk_id: int = 0, limit: int = 1000) -> list[tuple[ChunkId, Chunk]]:
        """One page of every chunk, in chunk id order, starting after ``after_chunk_id`` (the
        repair planner walks the whole table page by page, each page its own short read)."""
        with self.env.begin() as txn:
            return _page(txn.cursor(db=self.tables[b"chunks"]), after_chunk_id, limit, chunk_decoder)

    def chunkservers(self) -> dict[CsId, CsRecord]:
        """Every registered chunkserver, removed ones included (their ids stay taken)."""
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self.tables[b"chunkservers"])
            return {CsId(int.from_bytes(key, "big")): cs_decoder.decode(raw) for key, raw in cursor}

    def cs_by_node(self, node_id: str) -> CsId | None:
        """The cs id registered for a chunkserver's node id, if any."""
        with self.env.begin() as txn:
            return ChunkTables(txn, self.tables).cs_of_node(node_id)

    def doomed(self, limit: int = 1000, after_chunk_id: int = 0) -> list[tuple[ChunkId, DoomedChunk]]:
        """One page of the deletion queue, in chunk id order, after ``after_chunk_id``."""
        with self.env.begin() as txn:
            return _page(txn.cursor(db=self.tables[b"doomed"]), after_chunk_id, limit, doomed_decoder)

    def write_sessions(self, inode: int) -> set[bytes]:
        """The sessions that hold ``inode`` open for writing."""
        prefix = inode_key(inode)
        out: set[bytes] = set()
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self.tables[b"opens"])
            if cursor.set_range(prefix):
                for key, raw in cursor.iternext():
                    if not bytes(key).startswith(prefix):
                        break
                    if _open_counts(raw)[1]:
                        out.add(bytes(key)[len(prefix):])
        return out

    def write_opens(self, inode: int) -> int:
        """Write handles on ``inode``, every session's together (a range of the opens table)."""
        prefix = inode_key(inode)
        total = 0
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self.tables[b"opens"])
            if cursor.set_range(prefix):
                for key, raw in cursor.iternext():
                    if not bytes(key).startswith(prefix):
                        break
                    total += _open_counts(raw)[1]
        return total

    def session_expired(self, session: bytes) -> bool:
        """Was this client session expired (within the last EXPIRED_KEEP_NS)?"""
        with self.env.begin() as txn:
            return txn.get(session, db=self.tables[b"expired"]) is not None

    def session_ids(self) -> set[bytes]:
        """Every client session the state knows of: those holding files open, and those with
        request lanes (``<session hex>/<n>``) in the sessions table. A new leader starts an
        expiry timer for each, so a client that died under the old leader is still expired.
        Two full scans, once per leadership change; other client ids (no "/") are skipped."""
        found: set[bytes] = set()
        with self.env.begin() as txn:
            for key in txn.cursor(db=self.tables[b"opens"]).iternext(keys=True, values=False):
                found.add(bytes(key[8:]))
            for key in txn.cursor(db=self._sessions).iternext(keys=True, values=False):
                head, slash, _lane = bytes(key).partition(b"/")
                if not slash or not head:
                    continue
                try:
                    found.add(bytes.fromhex(head.decode("ascii")))
                except ValueError:
                    continue
            expired = self.tables[b"expired"]
            return {session for session in found if txn.get(session, db=expired) is None}


# ---- helpers shared by reads and applies ---------------------------------------------------------


def _page(cursor: lmdb.Cursor, after_chunk_id: int, limit: int, decoder: msgspec.msgpack.Decoder) -> list[Any]:
    """Up to ``limit`` (chunk_id, record) pairs of a table keyed by chunk id, after ``after_chunk_id``."""
    out: list[Any] = []
    if limit <= 0 or after_chunk_id >= CHUNK_ID_MAX or not cursor.set_range(U64.pack(max(0, after_chunk_id + 1))):
        return out
    for key, raw in cursor:
        out.append((ChunkId(U64.unpack(key)[0]), decoder.decode(raw)))
        if len(out) >= limit:
            break
    return out


def _get_inode(sm: NamespaceStateMachine, txn: lmdb.Transaction | EffectTxn, inode: int) -> Inode:
    # an id no key can hold is simply absent (a command's bad id must be refused, not crash the apply)
    raw = txn.get(inode_key(inode), db=sm.tables[b"inodes"]) if 0 <= inode < 2**64 else None
    if raw is None:
        raise NotFound(f"inode {inode} does not exist")
    return inode_decoder.decode(raw)


def _dir(sm: NamespaceStateMachine, txn: lmdb.Transaction | EffectTxn, inode: int) -> Inode:
    node = _get_inode(sm, txn, inode)
    if node.kind != Kind.DIR:
        raise NotDir(f"inode {inode} is not a directory")
    return node


def _lookup(sm: NamespaceStateMachine, txn: lmdb.Transaction | EffectTxn, parent: int, name: bytes) -> int | None:
    raw = txn.get(dentry_key(parent, name), db=sm.tables[b"dentries"])
    return U64.unpack(raw)[0] if raw is not None else None


def _check_name(name: bytes) -> None:
    if not name or name in (b".", b".."):
        raise InvalidArgument(f"invalid file name {name!r}")
    if b"/" in name or b"\0" in name:
        raise InvalidArgument(f"file name {name!r} contains '/' or NUL")
    if len(name) > NAME_BYTES_MAX:
        raise NameTooLong(f"file name of {len(name)} bytes exceeds {NAME_BYTES_MAX}")


class _Apply(ChunkCommands):
    """One command against one (child) transaction. Validates before it writes."""

    def __init__(self, sm: NamespaceStateMachine, txn: EffectTxn, op: Command) -> None:
        self.sm = sm
        self.txn = txn
        self.op = op
        self.t = sm.tables
        self.chunks = ChunkTables(txn, sm.tables)

    def run(self) -> Any:
        handler = getattr(self, f"_{type(self.op).__name__.lower()}")
        return handler(self.op)

    # ---- low-level writes ----------------------------------------------------------------------

    def get(self, inode: int) -> Inode:
        return _get_inode(self.sm, self.txn, inode)

    def put(self, inode: int, node: Inode) -> None:
        self.txn.put(inode_key(inode), encoder.encode(node), db=self.t[b"inodes"])

    def link_entry(self, parent: int, name: bytes, inode: int) -> None:
        self.txn.put(dentry_key(parent, name), U64.pack(inode), db=self.t[b"dentries"])

    def unlink_entry(self, parent: int, name: bytes) -> None:
        self.txn.delete(dentry_key(parent, name), db=self.t[b"dentries"])

    def drop_inode(self, inode: int) -> None:
        """The inode is gone for good: its record, target, attributes, and its chunks (into
        the deletion queue, in this same transaction, so no chunk outlives its file)."""
        self.txn.delete(inode_key(inode), db=self.t[b"inodes"])
        self.txn.delete(inode_key(inode), db=self.t[b"symlinks"])
        # xattrs: every key with this inode's prefix (collected first: deletions go through
        # the effect-recording transaction, not the cursor)
        cursor = self.txn.cursor(db=self.t[b"xattrs"])
        prefix = U64.pack(inode)
        keys = []
        if cursor.set_range(prefix):
            for key in cursor.iternext(keys=True, values=False):
                if not key.startswith(prefix):
                    break
                keys.append(bytes(key))
        for key in keys:
            self.txn.delete(key, db=self.t[b"xattrs"])
        self.chunks.doom_file(inode)

    def claim_inode(self, inode: int) -> None:
        raw = self.txn.get(b"next_inode", db=self.t[b"counters"])
        next_inode = U64.unpack(raw)[0] if raw else ROOT_INODE + 1
        if inode < next_inode:
            raise InvalidArgument(f"inode id {inode} was already handed out (next is {next_inode})")
        self.txn.put(b"next_inode", U64.pack(inode + 1), db=self.t[b"counters"])

    def touch_dir(self, parent: int, node: Inode, *, nlink_delta: int = 0) -> Inode:
        updated = msgspec.structs.replace(node, mtime_ns=self.op.now_ns, ctime_ns=self.op.now_ns,
                                          nlink=node.nlink + nlink_delta)
        self.put(parent, updated)
        return updated

    def new_entry_checks(self, parent: int, name: bytes) -> Inode:
        _check_name(name)
        directory = _dir(self.sm, self.txn, parent)
        if directory.nlink == 0:
            raise NotFound(f"directory {parent} was removed")
        if _lookup(self.sm, self.txn, parent, name) is not None:
            raise Exists(f"{name!r} already exists in directory {parent}")
        return directory

    def sticky_check(self, directory: Inode, victim: Inode) -> None:
        """In a sticky directory (/tmp) only the file's owner, the directory's owner or root
        may delete or rename an entry."""
        uid = self.op.uid
        if directory.mode & S_ISVTX and uid not in (0, victim.uid, directory.uid):
            raise NotPermitted("sticky directory: only the owner may remove or rename this entry")

    def create(self, parent: int, name: bytes, inode: int, node: Inode) -> Any:
        directory = self.new_entry_checks(parent, name)
        self.claim_inode(inode)
        node = msgspec.structs.replace(node, policy=directory.policy or DEFAULT_POLICY,
                                       flags=node.flags | (directory.flags & INHERITED_FLAGS))
        if directory.mode & S_ISGID:  # BSD group semantics in setgid directories
            node = msgspec.structs.replace(node, gid=directory.gid,
                                           mode=node.mode | (S_ISGID if node.kind == Kind.DIR else 0))
        self.put(inode, node)
        self.link_entry(parent, name, inode)
        self.touch_dir(parent, directory, nlink_delta=1 if node.kind == Kind.DIR else 0)
        return (inode, encoder.encode(node))

    def new_inode(self, kind: Kind, mode: int, *, nlink: int = 1, size: int = 0, rdev: int = 0,
                  parent: int = 0) -> Inode:
        now = self.op.now_ns
        return Inode(int(kind), mode & PERMISSION_BITS, self.op.uid, self.op.gid, nlink, size, now, now, now,
                     rdev, parent)

    # ---- commands ----------------------------------------------------------------------------------

    def _initroot(self, op: InitRoot) -> Any:
        if self.txn.get(inode_key(ROOT_INODE), db=self.t[b"inodes"]) is not None:
            raise Exists("the root directory already exists")
        check_chunk_bytes(op.chunk_bytes)
        root = self.new_inode(Kind.DIR, op.mode, nlink=2, parent=ROOT_INODE)
        self.put(ROOT_INODE, msgspec.structs.replace(root, policy=DEFAULT_POLICY))
        self.txn.put(b"next_inode", U64.pack(ROOT_INODE + 1), db=self.t[b"counters"])
        self.txn.put(b"chunk_bytes", U64.pack(op.chunk_bytes), db=self.t[b"cluster"])
        if op.admin_password_hash:
            self.txn.put(b"admin_password_hash", op.admin_password_hash.encode(), db=self.t[b"cluster"])
        return ROOT_INODE

    def _mknod(self, op: Mknod) -> Any:
        kind = Kind(op.kind)
        if kind in (Kind.DIR, Kind.SYMLINK):
            raise InvalidArgument("use mkdir or symlink")
        if op.open and (kind != Kind.FILE or not op.session):
            raise InvalidArgument("only a regular file is opened as it is created, by a session")
        result = self.create(op.parent, op.name, op.inode, self.new_inode(kind, op.mode, rdev=op.rdev))
        if op.open:
            self.count_open(op.inode, op.session, write=op.open == 2)
        return result

    def _mkdir(self, op: Mkdir) -> Any:
        return self.create(op.parent, op.name, op.inode, self.new_inode(Kind.DIR, op.mode, nlink=2, parent=op.parent))

    def _symlink(self, op: Symlink) -> Any:
        if not op.target or len(op.target) > SYMLINK_BYTES_MAX:
            raise NameTooLong(f"symlink target of {len(op.target)} bytes") if op.target else \
                InvalidArgument("empty symlink target")
        result = self.create(op.parent, op.name, op.inode,
                             self.new_inode(Kind.SYMLINK, 0o777, size=len(op.target)))
        self.txn.put(inode_key(op.inode), op.target, db=self.t[b"symlinks"])
        return result

    def _link(self, op: Link) -> Any:
        node = self.get(op.inode)
        if node.kind == Kind.DIR:
            raise NotPermitted("hard links to directories are not allowed")
        if node.nlink >= LINKS_MAX:
            raise TooManyLinks(f"inode {op.inode} already has {node.nlink} links")
        if node.nlink == 0:
            raise NotFound(f"inode {op.inode} was unlinked")
        directory = self.new_entry_checks(op.parent, op.name)
        node = msgspec.structs.replace(node, nlink=node.nlink + 1, ctime_ns=op.now_ns)
        self.put(op.inode, node)
        self.link_entry(op.parent, op.name, op.inode)
        self.touch_dir(op.parent, directory)
        return (op.inode, encoder.encode(node))

    def _remove(self, parent: int, name: bytes, *, want_dir: bool) -> Any:
        _check_name(name)
        directory = _dir(self.sm, self.txn, parent)
        child = _lookup(self.sm, self.txn, parent, name)
        if child is None:
            raise NotFound(f"{name!r} not found in directory {parent}")
        node = self.get(child)
        if want_dir and node.kind != Kind.DIR:
            raise NotDir(f"{name!r} is not a directory")
        if not want_dir and node.kind == Kind.DIR:
            raise IsDir(f"{name!r} is a directory")
        if want_dir and self.has_entries(child):
            raise NotEmpty(f"directory {name!r} is not empty")
        self.sticky_check(directory, node)
        self.unlink_entry(parent, name)
        self.touch_dir(parent, directory, nlink_delta=-1 if want_dir else 0)
        remaining = 0 if want_dir else node.nlink - 1
        if remaining <= 0:
            self.forget_name(child, node)
        else:
            self.put(child, msgspec.structs.replace(node, nlink=remaining, ctime_ns=self.op.now_ns))
        return child

    def is_open(self, inode: int) -> bool:
        cursor = self.txn.cursor(db=self.t[b"opens"])
        prefix = U64.pack(inode)
        return bool(cursor.set_range(prefix) and cursor.key().startswith(prefix))

    def forget_name(self, inode: int, node: Inode) -> None:
        """The inode lost its last name: remove it, unless a session still holds it open
        (then it lives on as an orphan until the last release: POSIX unlink-while-open)."""
        if node.kind != Kind.DIR and self.is_open(inode):
            self.put(inode, msgspec.structs.replace(node, nlink=0, ctime_ns=self.op.now_ns))
            self.txn.put(inode_key(inode), b"", db=self.t[b"orphans"])
        else:
            self.drop_inode(inode)

    def _opens_of(self, inode: int) -> Iterator[tuple[bytes, int, int]]:
        """(session, handles, write handles) of every session holding ``inode`` open."""
        cursor = self.txn.cursor(db=self.t[b"opens"])
        prefix = inode_key(inode)
        if not cursor.set_range(prefix):
            return
        for key, raw in cursor.iternext():
            if not key.startswith(prefix):
                return
            yield bytes(key[len(prefix):]), *_open_counts(raw)

    def _open(self, op: Open) -> Any:
        node = self.get(op.inode)
        if op.write and node.flags & FLAG_EXCLUSIVE_WRITE:
            for session, _, writers in self._opens_of(op.inode):
                if writers and session != op.session:
                    raise FileBusy(f"inode {op.inode} is open for writing by another client "
                                   f"(session {session.hex()[:8]}); it has an exclusive-writer lease")
        self.count_open(op.inode, op.session, write=op.write)
        return (op.inode, encoder.encode(node))

    def count_open(self, inode: int, session: bytes, *, write: bool) -> None:
        key = inode_key(inode) + session
        handles, writers = _open_counts(self.txn.get(key, db=self.t[b"opens"]))
        self.txn.put(key, _open_value(handles + 1, writers + bool(write)), db=self.t[b"opens"])

    def _release(self, op: Release) -> Any:
        key = inode_key(op.inode) + op.session
        raw = self.txn.get(key, db=self.t[b"opens"])
        if raw is None:
            raise InvalidArgument(f"session does not hold inode {op.inode} open")
        handles, writers = _open_counts(raw)
        handles -= 1
        writers = max(0, writers - bool(op.write))
        if handles:
            self.txn.put(key, _open_value(handles, min(writers, handles)), db=self.t[b"opens"])
        else:
            self.txn.delete(key, db=self.t[b"opens"])
            self.collect_orphan(op.inode)
        return op.inode

    def collect_orphan(self, inode: int) -> None:
        if self.txn.get(inode_key(inode), db=self.t[b"orphans"]) is not None and not self.is_open(inode):
            self.txn.delete(inode_key(inode), db=self.t[b"orphans"])
            self.drop_inode(inode)

    def _expiresession(self, op: ExpireSession) -> Any:
        # every open of this session: a full scan of the opens table (sessions expire rarely;
        # an index by session would cost a second write on every open)
        cursor = self.txn.cursor(db=self.t[b"opens"])
        held = [bytes(key) for key in cursor.iternext(keys=True, values=False) if key[8:] == op.session]
        for key in held:
            self.txn.delete(key, db=self.t[b"opens"])
        for key in held:
            self.collect_orphan(U64.unpack(key[:8])[0])
        if op.session:
            if op.forget_lanes:
                self.forget_lanes(op.session)
            self.txn.put(op.session, U64.pack(max(0, op.now_ns)), db=self.t[b"expired"])
            self.prune_tombstones(op.now_ns - EXPIRED_KEEP_NS)
        return len(held)

    def forget_lanes(self, session: bytes) -> None:
        """Drop the exactly-once records of a session's lanes: one range of the sessions
        table (keys sort by the hex prefix)."""
        prefix = session.hex().encode() + b"/"
        cursor = self.txn.cursor(db=self.sm.sessions_db)
        lanes = []
        if cursor.set_range(prefix):
            for key in cursor.iternext(keys=True, values=False):
                if not key.startswith(prefix):
                    break
                lanes.append(bytes(key))
        for key in lanes:
            self.txn.delete(key, db=self.sm.sessions_db)

    def prune_tombstones(self, before_ns: int) -> None:
        """Forget expired-session tombstones older than ``before_ns``, with their sessions'
        lane records (a full scan of a table that holds one small record per session expired
        in the last week)."""
        old = [bytes(key) for key, value in self.txn.cursor(db=self.t[b"expired"]).iternext()
               if U64.unpack(value)[0] < before_ns]
        for key in old:
            self.txn.delete(key, db=self.t[b"expired"])
            self.forget_lanes(key)

    def _unlink(self, op: Unlink) -> Any:
        return self._remove(op.parent, op.name, want_dir=False)

    def _rmdir(self, op: Rmdir) -> Any:
        return self._remove(op.parent, op.name, want_dir=True)

    def has_entries(self, inode: int) -> bool:
        cursor = self.txn.cursor(db=self.t[b"dentries"])
        prefix = U64.pack(inode)
        return bool(cursor.set_range(prefix) and cursor.key().startswith(prefix))

    def is_ancestor(self, ancestor: int, inode: int) -> bool:
        """Is ``ancestor`` on the path from ``inode`` up to the root (inclusive)?"""
        seen = 0
        while True:
            if inode == ancestor:
                return True
            if inode == ROOT_INODE:
                return False
            inode = self.get(inode).parent
            seen += 1
            if seen > 1_000_000:
                raise InvalidArgument("directory parent chain does not reach the root")

    def _rename(self, op: Rename) -> Any:
        if op.flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or op.flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise InvalidArgument(f"bad rename flags {op.flags:#x}")
        _check_name(op.name)
        _check_name(op.new_name)
        src_dir = _dir(self.sm, self.txn, op.parent)
        dst_dir = _dir(self.sm, self.txn, op.new_parent)
        src = _lookup(self.sm, self.txn, op.parent, op.name)
        if src is None:
            raise NotFound(f"{op.name!r} not found in directory {op.parent}")
        src_node = self.get(src)
        dst = _lookup(self.sm, self.txn, op.new_parent, op.new_name)
        dst_node = self.get(dst) if dst is not None else None
        if op.flags & RENAME_EXCHANGE:
            if dst is None or dst_node is None:
                raise NotFound(f"{op.new_name!r} not found in directory {op.new_parent} (RENAME_EXCHANGE)")
            return self._exchange(op, src_dir, dst_dir, src, src_node, dst, dst_node)
        if dst is not None and op.flags & RENAME_NOREPLACE:
            raise Exists(f"{op.new_name!r} exists in directory {op.new_parent} (RENAME_NOREPLACE)")
        if dst == src:
            return src  # same inode (a hard link onto itself): POSIX says do nothing
        if src_node.kind == Kind.DIR and self.is_ancestor(src, op.new_parent):
            raise InvalidArgument("cannot move a directory into its own subtree")
        self.sticky_check(src_dir, src_node)
        if dst is not None and dst_node is not None:
            if src_node.kind == Kind.DIR and dst_node.kind != Kind.DIR:
                raise NotDir(f"{op.new_name!r} is not a directory")
            if src_node.kind != Kind.DIR and dst_node.kind == Kind.DIR:
                raise IsDir(f"{op.new_name!r} is a directory")
            if dst_node.kind == Kind.DIR and self.has_entries(dst):
                raise NotEmpty(f"directory {op.new_name!r} is not empty")
            self.sticky_check(dst_dir, dst_node)
        # validation done: write
        moving_dir = src_node.kind == Kind.DIR
        if dst is not None and dst_node is not None:
            self.unlink_entry(op.new_parent, op.new_name)
            if dst_node.kind == Kind.DIR:
                dst_dir = msgspec.structs.replace(dst_dir, nlink=dst_dir.nlink - 1)
                self.drop_inode(dst)
            elif dst_node.nlink <= 1:
                self.forget_name(dst, dst_node)
            else:
                self.put(dst, msgspec.structs.replace(dst_node, nlink=dst_node.nlink - 1, ctime_ns=op.now_ns))
        self.unlink_entry(op.parent, op.name)
        self.link_entry(op.new_parent, op.new_name, src)
        self.put(src, msgspec.structs.replace(src_node, ctime_ns=op.now_ns,
                                              parent=op.new_parent if moving_dir else src_node.parent))
        if op.parent == op.new_parent:
            self.touch_dir(op.parent, dst_dir)
        else:
            self.touch_dir(op.parent, src_dir, nlink_delta=-1 if moving_dir else 0)
            self.touch_dir(op.new_parent, self.get(op.new_parent) if dst is None else dst_dir,
                           nlink_delta=1 if moving_dir else 0)
        return src

    def _exchange(self, op: Rename, src_dir: Inode, dst_dir: Inode, src: int, src_node: Inode, dst: int,
                  dst_node: Inode) -> Any:
        if src == dst:
            return src
        if src_node.kind == Kind.DIR and self.is_ancestor(src, op.new_parent):
            raise InvalidArgument("cannot move a directory into its own subtree")
        if dst_node.kind == Kind.DIR and self.is_ancestor(dst, op.parent):
            raise InvalidArgument("cannot move a directory into its own subtree")
        self.sticky_check(src_dir, src_node)
        self.sticky_check(dst_dir, dst_node)
        self.link_entry(op.parent, op.name, dst)
        self.link_entry(op.new_parent, op.new_name, src)
        if src_node.kind == Kind.DIR:
            self.put(src, msgspec.structs.replace(src_node, parent=op.new_parent, ctime_ns=op.now_ns))
        else:
            self.put(src, msgspec.structs.replace(src_node, ctime_ns=op.now_ns))
        if dst_node.kind == Kind.DIR:
            self.put(dst, msgspec.structs.replace(dst_node, parent=op.parent, ctime_ns=op.now_ns))
        else:
            self.put(dst, msgspec.structs.replace(dst_node, ctime_ns=op.now_ns))
        if op.parent != op.new_parent:
            delta = int(src_node.kind == Kind.DIR) - int(dst_node.kind == Kind.DIR)
            self.touch_dir(op.parent, self.get(op.parent), nlink_delta=-delta)
            self.touch_dir(op.new_parent, self.get(op.new_parent), nlink_delta=delta)
        else:
            self.touch_dir(op.parent, self.get(op.parent))
        return src

    def _setpolicy(self, op: SetPolicy) -> Any:
        node = self.get(op.inode)
        if op.uid not in (0, node.uid):
            raise NotPermitted("only the owner or root may change the replication policy")
        changes: dict[str, Any] = {"ctime_ns": op.now_ns}
        if op.policy is not None:
            try:
                changes["policy"] = str(ReplicaPolicy.parse(op.policy))
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from None
        if op.exclusive_write is not None:
            changes["flags"] = (node.flags | FLAG_EXCLUSIVE_WRITE) if op.exclusive_write \
                else (node.flags & ~FLAG_EXCLUSIVE_WRITE)
        node = msgspec.structs.replace(node, **changes)
        self.put(op.inode, node)
        return (node.policy or DEFAULT_POLICY, bool(node.flags & FLAG_EXCLUSIVE_WRITE))

    def _setxattr(self, op: SetXattr) -> Any:
        self.get(op.inode)
        if not op.name or b"\0" in op.name or len(op.name) > XATTR_NAME_BYTES_MAX:
            raise RangeError(f"bad extended attribute name {op.name[:40]!r}") if op.name else \
                InvalidArgument("empty extended attribute name")
        if len(op.value) > XATTR_VALUE_BYTES_MAX:
            raise RangeError(f"extended attribute value of {len(op.value)} bytes exceeds {XATTR_VALUE_BYTES_MAX}")
        key = xattr_key(op.inode, op.name)
        exists = self.txn.get(key, db=self.t[b"xattrs"]) is not None
        if op.flags & XATTR_CREATE and exists:
            raise Exists(f"attribute {op.name!r} exists (XATTR_CREATE)")
        if op.flags & XATTR_REPLACE and not exists:
            raise NoAttribute(f"attribute {op.name!r} does not exist (XATTR_REPLACE)")
        self.txn.put(key, op.value, db=self.t[b"xattrs"])
        self.put(op.inode, msgspec.structs.replace(self.get(op.inode), ctime_ns=op.now_ns))
        return op.inode

    def _removexattr(self, op: RemoveXattr) -> Any:
        self.get(op.inode)
        if not self.txn.delete(xattr_key(op.inode, op.name), db=self.t[b"xattrs"]):
            raise NoAttribute(f"inode {op.inode} has no attribute {op.name!r}")
        self.put(op.inode, msgspec.structs.replace(self.get(op.inode), ctime_ns=op.now_ns))
        return op.inode

    def _setattr(self, op: SetAttr) -> Any:
        node = self.get(op.inode)
        changes: dict[str, Any] = {"ctime_ns": op.now_ns}
        owner_or_root = op.uid in (0, node.uid)
        if op.mode is not None:
            if not owner_or_root:
                raise NotPermitted("only the owner may change the mode")
            mode = op.mode & PERMISSION_BITS
            if op.uid != 0 and op.gid != node.gid:
                mode &= ~S_ISGID  # a non-member may not set setgid (Linux inode_change_ok)
            changes["mode"] = mode
        if op.new_uid is not None and op.new_uid != node.uid:
            if op.uid != 0:
                raise NotPermitted("only root may change the owner")
            changes["uid"] = op.new_uid
        if op.new_gid is not None and op.new_gid != node.gid:
            if not owner_or_root:
                raise NotPermitted("only the owner or root may change the group")
            changes["gid"] = op.new_gid
        if ("uid" in changes or "gid" in changes) and node.kind != Kind.DIR:
            changes["mode"] = changes.get("mode", node.mode) & ~(S_ISUID | S_ISGID)
        if op.size is not None:
            if node.kind == Kind.DIR:
                raise IsDir("cannot truncate a directory")
            if node.kind != Kind.FILE:
                raise InvalidArgument("only regular files have a size to set")
            if op.size < 0:
                raise InvalidArgument("negative size")
            if op.size > FILE_BYTES_MAX:
                raise FileTooBig(f"size {op.size} exceeds the largest file ({FILE_BYTES_MAX} bytes)")
            changes["size"] = op.size
            changes["mtime_ns"] = op.now_ns
        if op.atime_ns is not None:
            changes["atime_ns"] = op.atime_ns
        if op.mtime_ns is not None:
            changes["mtime_ns"] = op.mtime_ns
        if op.size is not None and op.size < node.size:
            # the last write of the command (every check above passed): chunks past the new
            # end go, the one holding it is cut and re-versioned (ChunkTables.truncate_file).
            # Growing the size touches no chunk: the new range is a hole until written.
            self.chunks.truncate_file(op.inode, op.size)
        node = msgspec.structs.replace(node, **changes)
        self.put(op.inode, node)
        return (op.inode, encoder.encode(node))


def _open_counts(raw: bytes | None) -> tuple[int, int]:
    """(handles, write handles) of an ``opens`` value (4 bytes: no writers recorded)."""
    if raw is None:
        return 0, 0
    if len(raw) == 4:
        return int.from_bytes(raw, "big"), 0
    return int.from_bytes(raw[:4], "big"), int.from_bytes(raw[4:8], "big")


def _open_value(handles: int, writers: int) -> bytes:
    return handles.to_bytes(4, "big") + writers.to_bytes(4, "big")


__all__ = ["Command", "InitRoot", "Link", "Mkdir", "Mknod", "NamespaceStateMachine", "Op", "RemoveXattr", "Rename",
           "RENAME_EXCHANGE", "RENAME_NOREPLACE", "Rmdir", "SetAttr", "SetXattr", "Symlink", "Unlink", "XATTR_CREATE",
           "XATTR_REPLACE", "encode_command", "Open", "Release", "ExpireSession", "SetPolicy", "DEFAULT_POLICY",
           "AllocChunk", "WriteDone", "RepairChain", "AddReplica", "DropReplica", "ChunkDeleted", "RegisterCs",
           "SetCsState", "UpdateCs"]
