"""The metadata state machine's on-disk layout: the one reference for every LMDB table.

Everything lives in the state machine's LMDB environment (vstore/metadata/raft/
statemachine.py adds ``meta`` and ``sessions``). Keys are big-endian so that LMDB's
byte order is numeric order, and a directory's entries sit together, sorted by name.

    table        key                                   value
    -----------  ------------------------------------  --------------------------------------
    inodes       inode u64                              msgpack Inode
    dentries     parent u64 + name bytes                child inode u64
    symlinks     inode u64                              target bytes
    xattrs       inode u64 + name bytes                 value bytes
    counters     b"next_inode"                          u64: every inode id below it was handed out
    opens        inode u64 + session id bytes           u32: how many handles that session holds
    orphans      inode u64                              b"": unlinked (nlink 0) but still open

Invariants (checked by ``check_namespace`` in the tests after every scenario):
* every dentry points to an existing inode, and an inode's ``nlink`` equals the number of
  dentries naming it (plus, for a directory, its "." and each subdirectory's "..");
* a directory has exactly one dentry and its ``parent`` field names the directory holding it;
* the root (inode 1) is a directory that no dentry names, and is its own parent;
* an inode with nlink 0 exists only while some session holds it open, and is then listed in
  ``orphans``; the last release (or the expiry of the last session holding it) removes it.

Inode ids are chosen by the leader and carried in the log entry (apply only replays); apply
refuses an id at or below ``next_inode``'s previous value, so a replay or a confused leader
can never reuse one.
"""

from __future__ import annotations

import enum
import struct

import msgspec

U64 = struct.Struct(">Q")

TABLES = (b"inodes", b"dentries", b"symlinks", b"xattrs", b"counters", b"opens", b"orphans")

ROOT_INODE = 1
NAME_BYTES_MAX = 255          # NAME_MAX on Linux
SYMLINK_BYTES_MAX = 4095      # PATH_MAX - 1
XATTR_NAME_BYTES_MAX = 255
XATTR_VALUE_BYTES_MAX = 65536


class Kind(enum.IntEnum):
    FILE = 1
    DIR = 2
    SYMLINK = 3
    FIFO = 4
    SOCKET = 5
    CHAR = 6
    BLOCK = 7


#: The S_IFMT bits for each kind (stat's st_mode), and back.
S_IFMT = {Kind.FILE: 0o100000, Kind.DIR: 0o040000, Kind.SYMLINK: 0o120000, Kind.FIFO: 0o010000,
          Kind.SOCKET: 0o140000, Kind.CHAR: 0o020000, Kind.BLOCK: 0o060000}
KIND_OF_IFMT = {v: k for k, v in S_IFMT.items()}
PERMISSION_BITS = 0o7777
S_ISVTX = 0o1000
S_ISGID = 0o2000
S_ISUID = 0o4000


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

    @property
    def is_dir(self) -> bool:
        return self.kind == Kind.DIR

    @property
    def st_mode(self) -> int:
        return S_IFMT[Kind(self.kind)] | self.mode


inode_decoder = msgspec.msgpack.Decoder(Inode)
encoder = msgspec.msgpack.Encoder()


def inode_key(inode: int) -> bytes:
    return U64.pack(inode)


def dentry_key(parent: int, name: bytes) -> bytes:
    return U64.pack(parent) + name


def xattr_key(inode: int, name: bytes) -> bytes:
    return U64.pack(inode) + name
