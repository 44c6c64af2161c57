"""The vstore exception tree. Every error vstore raises on purpose is one of these.

::

    VStoreError(message, code: ErrorCode, details, retryable)
    ├── UserError(exit_code)          bad CLI input or config: one line, no traceback
    │   ├── UsageError                bad arguments (exit 2)
    │   ├── ConfigError(file, key)    bad config file (exit 2)
    │   └── NotAvailable              a command this version does not provide yet (exit 3)
    ├── FsError                       NotFound, Exists, NotEmpty, NotDir, IsDir, PermissionDenied,
    │                                 NotPermitted, NameTooLong, NoSpace, ReadOnly, InvalidArgument, ...
    ├── DataError                     ChecksumMismatch, StaleVersion, ChunkLost, BadCapability, DiskIOError
    ├── ClusterError (retryable)      NotLeader(leader), Unavailable, NoChunkservers, DeadlineExceeded,
    │                                 Busy, ConnectionLost
    ├── InternalError                 the remote side hit a bug (code INTERNAL)
    └── ProtocolError                 LocalProtocolError (our bug), RemoteProtocolError (peer: close + log),
        │                             UnknownMessage
        └── AuthFailed

Errors cross the wire as ``(ErrorCode, message, details)``: ``to_wire()`` and ``from_wire()``
are the two directions, and the code alone decides the class on arrival. errno appears only
at the FUSE edge (vstore/fuse/errno_map.py).
"""

from __future__ import annotations

from typing import Any

from vstore.wire.codes import ErrorCode
from vstore.wire.errors import AuthFailed, LocalProtocolError, ProtocolError, RemoteProtocolError, VStoreError
from vstore.wire.messages import ErrorReply

__all__ = [
    "AuthFailed", "BadCapability", "Busy", "ChecksumMismatch", "ChunkLost", "ClusterError", "ConfigError",
    "ConnectionLost", "CrossDevice", "DataError", "DeadlineExceeded", "DiskIOError", "Exists", "FileBusy", "FileTooBig",
    "FsError", "InternalError", "InvalidArgument", "IsDir", "LocalProtocolError", "Loop", "NameTooLong",
    "NoAttribute", "NoChunkservers", "NoSpace", "NotAvailable", "NotDir", "NotEmpty", "NotFound", "NotLeader",
    "NotPermitted", "NotSupported", "PermissionDenied", "ProtocolError", "RangeError", "ReadOnly",
    "RemoteProtocolError", "StaleHandle", "StaleVersion", "TooManyLinks", "Unavailable", "UnknownMessage",
    "UsageError", "UserError", "VStoreError", "error_class", "from_wire", "to_wire",
]

# ---- operator input -----------------------------------------------------------------------


class UserError(VStoreError):
    """Bad input from the operator. The CLI prints ``vstore: <message>`` and exits ``exit_code``."""

    default_code = ErrorCode.USAGE
    exit_code = 2


class UsageError(UserError):
    default_code = ErrorCode.USAGE


class ConfigError(UserError):
    """A bad config file. The message names the file, the key path and the fix."""

    default_code = ErrorCode.CONFIG

    def __init__(self, file: str, key: str, problem: str) -> None:
        super().__init__(f"{file}: {key}: {problem}" if key else f"{file}: {problem}",
                         details={"file": file, "key": key})
        self.file = file
        self.key = key


class NotAvailable(UserError):
    """A command or feature that this version of vstore does not provide yet."""

    default_code = ErrorCode.NOT_AVAILABLE
    exit_code = 3


# ---- file system ----------------------------------------------------------------------------


class FsError(VStoreError):
    """A POSIX outcome; vstore/fuse/errno_map.py turns the code into an errno."""

    default_code = ErrorCode.INVALID_ARGUMENT


def _fs(name: str, code: ErrorCode) -> type[FsError]:
    return type(name, (FsError,), {"default_code": code, "__doc__": f"{code.name} (see ErrorCode)."})


NotFound = _fs("NotFound", ErrorCode.NOT_FOUND)
Exists = _fs("Exists", ErrorCode.EXISTS)
NotEmpty = _fs("NotEmpty", ErrorCode.NOT_EMPTY)
NotDir = _fs("NotDir", ErrorCode.NOT_DIR)
IsDir = _fs("IsDir", ErrorCode.IS_DIR)
PermissionDenied = _fs("PermissionDenied", ErrorCode.PERMISSION_DENIED)
NotPermitted = _fs("NotPermitted", ErrorCode.NOT_PERMITTED)
NameTooLong = _fs("NameTooLong", ErrorCode.NAME_TOO_LONG)
NoSpace = _fs("NoSpace", ErrorCode.NO_SPACE)
ReadOnly = _fs("ReadOnly", ErrorCode.READ_ONLY)
InvalidArgument = _fs("InvalidArgument", ErrorCode.INVALID_ARGUMENT)
NoAttribute = _fs("NoAttribute", ErrorCode.NO_ATTRIBUTE)
RangeError = _fs("RangeError", ErrorCode.RANGE)
TooManyLinks = _fs("TooManyLinks", ErrorCode.TOO_MANY_LINKS)
FileTooBig = _fs("FileTooBig", ErrorCode.FILE_TOO_BIG)
NotSupported = _fs("NotSupported", ErrorCode.NOT_SUPPORTED)
StaleHandle = _fs("StaleHandle", ErrorCode.STALE_HANDLE)
CrossDevice = _fs("CrossDevice", ErrorCode.CROSS_DEVICE)
Loop = _fs("Loop", ErrorCode.LOOP)
FileBusy = _fs("FileBusy", ErrorCode.FILE_BUSY)

# ---- data -----------------------------------------------------------------------------------


class DataError(VStoreError):
    """A replica or chunk cannot be used as asked. Never means wrong bytes were returned."""

    default_code = ErrorCode.IO_ERROR


class ChecksumMismatch(DataError):
    default_code = ErrorCode.CHECKSUM_MISMATCH


class StaleVersion(DataError):
    default_code = ErrorCode.STALE_VERSION


class ChunkLost(DataError):
    default_code = ErrorCode.CHUNK_LOST


class BadCapability(DataError):
    default_code = ErrorCode.BAD_CAPABILITY


class DiskIOError(DataError):
    default_code = ErrorCode.IO_ERROR


# ---- cluster (retryable) ----------------------------------------------------------------------


class ClusterError(VStoreError):
    """The cluster cannot serve this now; the same request may succeed later."""

    default_code = ErrorCode.UNAVAILABLE


class NotLeader(ClusterError):
    """This MDS is not the leader. ``leader`` is the leader's address when known."""

    default_code = ErrorCode.NOT_LEADER

    @property
    def leader(self) -> str | None:
        hint = self.details.get("leader")
        return hint if isinstance(hint, str) and hint else None


class Unavailable(ClusterError):
    default_code = ErrorCode.UNAVAILABLE


class NoChunkservers(ClusterError):
    default_code = ErrorCode.NO_CHUNKSERVERS


class DeadlineExceeded(ClusterError):
    default_code = ErrorCode.DEADLINE_EXCEEDED


class Busy(ClusterError):
    default_code = ErrorCode.BUSY


class ConnectionLost(ClusterError):
    """The connection broke with the request in flight: it may or may not have been applied."""

    default_code = ErrorCode.CONNECTION_LOST


class InternalError(VStoreError):
    default_code = ErrorCode.INTERNAL


class UnknownMessage(ProtocolError):
    default_code = ErrorCode.UNKNOWN_MESSAGE


# ---- wire mapping -----------------------------------------------------------------------------

_BY_CODE: dict[ErrorCode, type[VStoreError]] = {}
for _cls in (UsageError, ConfigError, NotAvailable, NotFound, Exists, NotEmpty, NotDir, IsDir,
             PermissionDenied, NotPermitted, NameTooLong, NoSpace, ReadOnly, InvalidArgument, NoAttribute,
             RangeError, TooManyLinks, FileTooBig, NotSupported, StaleHandle, CrossDevice, Loop, FileBusy,
             ChecksumMismatch, StaleVersion, ChunkLost, BadCapability, DiskIOError, NotLeader, Unavailable,
             NoChunkservers, DeadlineExceeded, Busy, ConnectionLost, InternalError, ProtocolError,
             UnknownMessage, AuthFailed):
    _BY_CODE[_cls.default_code] = _cls
assert set(_BY_CODE) == set(ErrorCode), "every ErrorCode needs an exception class"


def error_class(code: ErrorCode) -> type[VStoreError]:
    return _BY_CODE[code]


def to_wire(exc: VStoreError) -> ErrorReply:
    """The ErrorReply that carries ``exc`` to the peer (details cut to what the schema allows)."""
    details = {str(k)[:64]: (v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63
                             else str(v)[:1024])
               for k, v in list(exc.details.items())[:16] if k}
    return ErrorReply(code=int(exc.code), message=exc.message[:4096], details=details)


def from_wire(reply: ErrorReply) -> VStoreError:
    """The exception for an ErrorReply received from a peer. An unknown code becomes an
    InternalError that names it, so a newer peer's new code never crashes an older client."""
    try:
        code = ErrorCode(reply.code)
    except ValueError:
        return InternalError(f"peer error code {reply.code} unknown to this version: {reply.message}",
                             details=dict(reply.details))
    cls = _BY_CODE[code]
    exc: VStoreError
    if cls is ConfigError:
        exc = VStoreError.__new__(cls)
        VStoreError.__init__(exc, reply.message, code=code, details=dict(reply.details))
        exc.file = str(reply.details.get("file", ""))  # type: ignore[attr-defined]
        exc.key = str(reply.details.get("key", ""))  # type: ignore[attr-defined]
        return exc
    # peer_silent describes the sender's own peer (the transport sets it on a local timeout):
    # the sender itself answered, so it does not travel on
    exc = cls(reply.message, details={k: v for k, v in reply.details.items() if k != "peer_silent"})
    return exc


def describe(exc: Any) -> str:
    """One line for logs: class, code and message."""
    if isinstance(exc, VStoreError):
        return f"{type(exc).__name__}[{exc.code.name}]: {exc.message}"
    return f"{type(exc).__name__}: {exc}"
