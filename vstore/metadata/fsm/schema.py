"""The metadata state machine's on-disk layout: the one reference for every LMDB table.

Everything lives in the state machine's LMDB environment (vstore/metadata/raft/
statemachine.py adds ``meta`` and ``sessions``). Keys are big-endian so that LMDB's
byte order is numeric order, a directory's entries sit together, sorted by name, and a
file's chunks sit together, sorted by index.

    table         key                                   value
    ------------  ------------------------------------  --------------------------------------
    inodes        inode u64                              msgpack Inode
    dentries      parent u64 + name bytes                child inode u64
    symlinks      inode u64                              target bytes
    xattrs        inode u64 + name bytes                 value bytes
    counters      b"next_inode"                          u64: every inode id below it was handed out
                  b"next_chunk"                          u64: every chunk id below it was handed out
                  b"next_cs"                             u64: every chunkserver id below it was handed out
    cluster       b"chunk_bytes"                         u64: the chunk size, fixed by InitRoot (mkfs)
    opens         inode u64 + session id bytes           u32 handles that session holds, u32 of them
                                                         for writing (a 4-byte value: none)
    orphans       inode u64                              b"": unlinked (nlink 0) but still open
    chunks        chunk_id u64                           msgpack Chunk
    file_chunks   inode u64 + chunk index u32            chunk_id u64 (a missing index is a hole)
    chunkservers  cs_id u32                              msgpack CsRecord
    cs_by_node    node id (utf-8)                        cs_id u32
    doomed        chunk_id u64                           msgpack DoomedChunk: replicas still to delete
    expired       session id bytes                       u64: when (leader ns) it was expired

A missing counter means "nothing handed out yet": the first inode is 2 (1 is the root), the
first chunk id and the first cs id are 1 (0 is never an id). The ``sessions`` table of the
base class holds one record per Raft client lane; a lane is named ``<session hex>/<n>``
(vstore/wire/mds.py), which is how a session's lanes are found. ``expired`` remembers
expired sessions (tombstones): on any leader, and in the apply itself, every new command of
such a session is refused, while a retry of a lane's last command still gets its stored
reply (the lane records stay with the tombstone). Each ExpireSession prunes tombstones older
than ``EXPIRED_KEEP_NS`` (7 days) together with their sessions' lane records.

Invariants (checked by ``NS.check`` in tests/harness/namespace.py after every scenario):
* every dentry points to an existing inode, and an inode's ``nlink`` equals the number of
  dentries naming it (plus, for a directory, its "." and each subdirectory's "..");
* a directory has exactly one dentry and its ``parent`` field names the directory holding it;
* the root (inode 1) is a directory that no dentry names, and is its own parent;
* an inode with nlink 0 exists only while some session holds it open, and is then listed in
  ``orphans``; the last release (or the expiry of the last session holding it) removes it;
* every ``file_chunks`` entry names an existing chunk whose (inode, index) is that entry's
  key, the inode is a regular file, and every chunk has exactly that one entry;
* a chunk's replicas are distinct, registered chunkservers that are not removed, in chain
  order (the first is the chain head a writer sends to); an empty list means the chunk is
  lost (kept, so a read says so instead of returning a hole's zeros);
  ``version >= 1`` and ``length_bytes <= chunk_bytes``;
* a ``doomed`` entry lists at least one chunkserver, and never one that holds a live
  replica of the same chunk: the entry is either a deleted chunk (the file was removed or
  truncated) or replicas dropped from a live chunk (DropReplica). AddReplica and
  RepairChain refuse a chunkserver with a doomed copy of the chunk pending, because the
  pending delete would destroy the new copy;
* every chunk id is below ``next_chunk``, every cs id below ``next_cs``, and ``cs_by_node``
  is exactly the inverse of the chunkservers' node ids.

Ids (inodes, chunks, chunkservers), versions and times are chosen by the leader and carried
in the log entry (apply only replays); apply refuses an id below its counter, so a replay or
a confused leader can never reuse one.
"""

from __future__ import annotations

import enum
import struct

import msgspec

from vstore.metadata.placement import ChunkId, CsId
from vstore.wire.mds import IFMT_OF_KIND

U64 = struct.Struct(">Q")
U32 = struct.Struct(">I")

TABLES = (b"inodes", b"dentries", b"symlinks", b"xattrs", b"counters", b"opens", b"orphans", b"cluster", b"chunks",
          b"file_chunks", b"chunkservers", b"cs_by_node", b"doomed", b"expired")
#: How long an expired session's tombstone is kept (a client gone a week does not come back
#: with a retry; its process has long given up: the client deadline is a minute).
EXPIRED_KEEP_NS = 7 * 86_400 * 10**9

ROOT_INODE = 1
NAME_BYTES_MAX = 255          # NAME_MAX on Linux
SYMLINK_BYTES_MAX = 4095      # PATH_MAX - 1
XATTR_NAME_BYTES_MAX = 255
XATTR_VALUE_BYTES_MAX = 65536

#: The chunk size unless mkfs says otherwise (DESIGN.md §4). Large enough that a file's chunk
#: map stays small (a 1 TiB disk image is 16384 chunks), small enough that a repair copy of
#: one chunk takes about a second on a 1 Gbit/s link.
CHUNK_BYTES_DEFAULT = 64 * 1024 * 1024
#: A chunk size is a power of two in [1 MiB, 1 GiB]: a power of two so that offset -> (index,
#: offset in chunk) is a shift; at least 1 MiB so that a file's chunk map stays small (and it
#: is then a multiple of the 4 KiB checksum block); at most 1 GiB because one repair job
#: copies a whole chunk and should finish in seconds, not minutes.
CHUNK_BYTES_MIN = 1024 * 1024
CHUNK_BYTES_MAX = 1024 * 1024 * 1024
#: The largest file: 256 TiB. ext4's limit is 16 TiB; this leaves room for any disk image
#: while keeping ``index * chunk_bytes`` and every size far below 2**63 (the wire's limit).
FILE_BYTES_MAX = 2**48
#: Replicas of one chunk at most (the replication policy's own limit, placement.py).
REPLICAS_MAX = 16
#: Chunk ids stay below 2**63 (the wire schema is stricter than u64); cs ids fit in u32.
CHUNK_ID_MAX = 2**63 - 1
CS_ID_MAX = 2**32 - 1
NODE_ID_BYTES_MAX = 64        # as NodeIdStr in vstore/wire/messages.py
HOST_LABEL_BYTES_MAX = 253    # a DNS name
ADDRESS_BYTES_MAX = 300       # as AddressText in vstore/wire/mds.py


class Kind(enum.IntEnum):
    FILE = 1
    DIR = 2
    SYMLINK = 3
    FIFO = 4
    SOCKET = 5
    CHAR = 6
    BLOCK = 7


#: The S_IFMT bits for each kind (stat's st_mode), and back.
S_IFMT = {Kind(kind): bits for kind, bits in IFMT_OF_KIND.items()}
KIND_OF_IFMT = {v: k for k, v in S_IFMT.items()}
PERMISSION_BITS = 0o7777
S_ISVTX = 0o1000
S_ISGID = 0o2000
S_ISUID = 0o4000


#: Inode flag: a write open by one client session makes write opens by others fail with
#: FILE_BUSY until it closes or its session expires (container disk images; issue 6).
FLAG_EXCLUSIVE_WRITE = 1
INHERITED_FLAGS = FLAG_EXCLUSIVE_WRITE


class Inode(msgspec.Struct, array_like=True, frozen=True):
    kind: int
    mode: int            # permission bits only (PERMISSION_BITS); the type is ``kind``
    uid: int
    gid: int
    nlink: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0
    parent: int = 0      # directories only: the directory that holds it
    policy: str = ""     # replication policy set on this inode ("" = inherit from the parent)
    flags: int = 0       # FLAG_* bits; new entries copy their directory's INHERITED_FLAGS

    @property
    def is_dir(self) -> bool:
        return self.kind == Kind.DIR

    @property
    def st_mode(self) -> int:
        return S_IFMT[Kind(self.kind)] | self.mode


class CsAdminState(enum.StrEnum):
    """What the operator decided about a chunkserver (liveness, online or offline, is not
    replicated: vstore/metadata/liveness.py tracks it on the leader)."""

    ACTIVE = "active"        # takes new replicas
    DRAINING = "draining"    # takes none; the repair planner moves its replicas away
    REMOVED = "removed"      # gone for good; holds no replica; its node id is never registered again


class Chunk(msgspec.Struct, array_like=True, frozen=True):
    """One chunk of a file. ``replicas`` in chain order: a writer sends to the first, which
    forwards down the chain. ``length_bytes``: the valid bytes writers have reported (reads
    past it, up to the file size, return zeros). ``version`` changes whenever the bytes some
    replica holds may no longer be the chunk's (a chain repair, a truncate into the chunk);
    chunkservers refuse requests naming another version."""

    inode: int
    index: int
    version: int
    length_bytes: int
    replicas: tuple[CsId, ...]


class CsRecord(msgspec.Struct, array_like=True, frozen=True):
    """A registered chunkserver. ``node_id`` is its config's stable id; ``host`` and ``rack``
    are its failure domains; ``address`` is where it serves chunk RPCs ("host:port")."""

    node_id: str
    host: str
    rack: str
    address: str
    capacity_bytes: int
    state: str               # a CsAdminState value
    registered_ns: int


class DoomedChunk(msgspec.Struct, array_like=True, frozen=True):
    """Replicas of a chunk that chunkservers still have to delete (the garbage-collection
    queue). A chunkserver deletes its copy of the chunk if that copy's version is at most
    ``version``, then confirms with ChunkDeleted."""

    version: int
    replicas: tuple[CsId, ...]


inode_decoder = msgspec.msgpack.Decoder(Inode)
chunk_decoder = msgspec.msgpack.Decoder(Chunk)
cs_decoder = msgspec.msgpack.Decoder(CsRecord)
doomed_decoder = msgspec.msgpack.Decoder(DoomedChunk)
encoder = msgspec.msgpack.Encoder()


def inode_key(inode: int) -> bytes:
    return U64.pack(inode)


def dentry_key(parent: int, name: bytes) -> bytes:
    return U64.pack(parent) + name


def xattr_key(inode: int, name: bytes) -> bytes:
    return U64.pack(inode) + name


def chunk_key(chunk_id: ChunkId | int) -> bytes:
    return U64.pack(chunk_id)


def file_chunk_key(inode: int, index: int) -> bytes:
    return U64.pack(inode) + U32.pack(index)


def cs_key(cs_id: CsId | int) -> bytes:
    return U32.pack(cs_id)
