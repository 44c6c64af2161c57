"""The one table of error codes that cross the wire. Pure: imports nothing.

Every failure a peer reports travels as ``(ErrorCode, message, details)``; nobody ever
pattern-matches the message text. ``vstore.errors`` maps each code to its exception class,
and ``vstore.fuse.errno_map`` maps each code to an errno at the FUSE edge, nowhere else.

Numbers are stable for the life of protocol version 1: never renumber, only append.
Ranges: 1-19 protocol, 20-39 cluster (retryable), 40-59 file system, 60-79 data,
80-99 operator input.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    # --- protocol: the peer broke the rules, or we did -----------------------------------
    PROTOCOL = 1            # malformed frame or meta (bad schema, size, type); connection closed
    AUTH_FAILED = 2         # handshake failed: wrong secret, wrong cluster id, role not allowed
    UNKNOWN_MESSAGE = 3     # well-formed request that this node has no handler for
    INTERNAL = 4            # a bug on the replying node; the message carries the exception text

    # --- cluster: the request may succeed later; clients retry these with backoff ---------
    NOT_LEADER = 20         # this MDS is not the Raft leader; details["leader"] = "host:port" or absent
    UNAVAILABLE = 21        # no quorum, shutting down, or a peer unreachable; retry
    NO_CHUNKSERVERS = 22    # not enough eligible chunkservers to meet the replication minimum
    DEADLINE_EXCEEDED = 23  # the call's deadline passed before a reply
    BUSY = 24               # overloaded (queue full); retry after backoff
    CONNECTION_LOST = 25    # the connection broke while the request was in flight; outcome unknown

    # --- file system: POSIX outcomes, mapped to errno only in vstore/fuse/errno_map.py ----
    NOT_FOUND = 40          # ENOENT
    EXISTS = 41             # EEXIST
    NOT_EMPTY = 42          # ENOTEMPTY
    NOT_DIR = 43            # ENOTDIR
    IS_DIR = 44             # EISDIR
    PERMISSION_DENIED = 45  # EACCES
    NOT_PERMITTED = 46      # EPERM
    NAME_TOO_LONG = 47      # ENAMETOOLONG
    NO_SPACE = 48           # ENOSPC: cluster, chunkserver disk or MDS map full
    READ_ONLY = 49          # EROFS
    INVALID_ARGUMENT = 50   # EINVAL
    NO_ATTRIBUTE = 51       # ENODATA: xattr absent
    RANGE = 52              # ERANGE: xattr value larger than the caller's buffer
    TOO_MANY_LINKS = 53     # EMLINK
    FILE_TOO_BIG = 54       # EFBIG
    NOT_SUPPORTED = 55      # EOPNOTSUPP
    STALE_HANDLE = 56       # ESTALE: the inode is gone
    CROSS_DEVICE = 57       # EXDEV
    LOOP = 58               # ELOOP
    FILE_BUSY = 59          # EBUSY: another host holds the file's exclusive-writer lease

    # --- data: a replica or chunk is not usable ------------------------------------------
    CHECKSUM_MISMATCH = 60  # a block failed its xxh3 check; details: chunk, block. Never the bytes.
    STALE_VERSION = 61      # request version != replica version (details: chunk, have, want)
    CHUNK_LOST = 62         # no replica of the chunk is readable
    BAD_CAPABILITY = 63     # missing, expired or mismatched chunk capability token
    IO_ERROR = 64           # the disk returned EIO; the replica is being dropped

    # --- operator input --------------------------------------------------------------------
    USAGE = 80              # bad command-line arguments
    CONFIG = 81             # bad configuration file
    NOT_AVAILABLE = 82      # a command or feature this version does not provide yet


#: Codes whose failures may succeed on retry (the client retry helper honours this table).
RETRYABLE_CODES: frozenset[ErrorCode] = frozenset({
    ErrorCode.NOT_LEADER,
    ErrorCode.UNAVAILABLE,
    ErrorCode.NO_CHUNKSERVERS,
    ErrorCode.DEADLINE_EXCEEDED,
    ErrorCode.BUSY,
    ErrorCode.CONNECTION_LOST,
})
