"""Root of the vstore exception tree and its protocol branch. Pure: imports only ``codes``.

These live in ``wire`` because the sans-I/O codec must raise them and ``wire`` imports
nothing from the rest of vstore. Import them from ``vstore.errors``, which re-exports them
beside the rest of the tree (the whole tree is drawn in that module's docstring).
"""

from __future__ import annotations

from typing import Any

from vstore.wire.codes import RETRYABLE_CODES, ErrorCode


class VStoreError(Exception):
    """Base of every error vstore raises on purpose.

    ``code`` is what crosses the wire, ``message`` is for humans, ``details`` carries the
    identifiers an operator needs (chunk id, block, leader address), ``retryable`` tells
    the client retry helper whether another attempt may succeed.
    """

    default_code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, code: ErrorCode | None = None,
                 details: dict[str, Any] | None = None, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code if code is not None else self.default_code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.retryable: bool = self.code in RETRYABLE_CODES if retryable is None else retryable

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.message!r}, {self.details!r})"


class ProtocolError(VStoreError):
    """A frame, message or handshake broke the protocol. The connection is closed."""

    default_code = ErrorCode.PROTOCOL


class LocalProtocolError(ProtocolError):
    """We were about to send something invalid: a bug on this side."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid: close the connection and log the reason."""


class AuthFailed(ProtocolError):
    """The handshake failed: wrong secret, wrong cluster id, replayed transcript, bad role."""

    default_code = ErrorCode.AUTH_FAILED
