"""The one table from vstore error codes to errno, used only at the FUSE edge.

File-system outcomes keep their POSIX meaning. Everything else that reaches the kernel has
already been retried through failures up to the client's deadline (vstore/client), so it
means "the data cannot be served now": EIO, never a guess that could pass for success.
"""

from __future__ import annotations

import errno

from vstore.wire.codes import ErrorCode

ERRNO: dict[ErrorCode, int] = {
    ErrorCode.NOT_FOUND: errno.ENOENT,
    ErrorCode.EXISTS: errno.EEXIST,
    ErrorCode.NOT_EMPTY: errno.ENOTEMPTY,
    ErrorCode.NOT_DIR: errno.ENOTDIR,
    ErrorCode.IS_DIR: errno.EISDIR,
    ErrorCode.PERMISSION_DENIED: errno.EACCES,
    ErrorCode.NOT_PERMITTED: errno.EPERM,
    ErrorCode.NAME_TOO_LONG: errno.ENAMETOOLONG,
    ErrorCode.NO_SPACE: errno.ENOSPC,
    ErrorCode.READ_ONLY: errno.EROFS,
    ErrorCode.INVALID_ARGUMENT: errno.EINVAL,
    ErrorCode.NO_ATTRIBUTE: errno.ENODATA,
    ErrorCode.RANGE: errno.ERANGE,
    ErrorCode.TOO_MANY_LINKS: errno.EMLINK,
    ErrorCode.FILE_TOO_BIG: errno.EFBIG,
    ErrorCode.NOT_SUPPORTED: errno.EOPNOTSUPP,
    ErrorCode.STALE_HANDLE: errno.ESTALE,
    ErrorCode.CROSS_DEVICE: errno.EXDEV,
    ErrorCode.LOOP: errno.ELOOP,
    ErrorCode.FILE_BUSY: errno.EBUSY,
    ErrorCode.BUSY: errno.EBUSY,
    ErrorCode.USAGE: errno.EINVAL,
    ErrorCode.CONFIG: errno.EINVAL,
    ErrorCode.NOT_AVAILABLE: errno.EOPNOTSUPP,
}
#: every code not listed: data errors, retries exhausted, protocol and internal errors
DEFAULT_ERRNO = errno.EIO


def errno_of(code: ErrorCode | int) -> int:
    try:
        return ERRNO.get(ErrorCode(code), DEFAULT_ERRNO)
    except ValueError:
        return DEFAULT_ERRNO
