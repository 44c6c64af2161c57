"""Chunk capability tokens (HDFS block tokens; RELIABILITY.md §6.3 and row F26). Pure, sans-I/O.

The MDS issues a token when a client opens a file; the client sends it with every chunk
request; the chunkserver checks it locally, with no call to the MDS. A token grants one
``mode`` ("r", or "rw" which includes reading) on one chunk at one version until
``expires_at_s``, so a client can touch only chunks of files it opened, and only at the
current version: a bump of the version (a new write lease, a truncate) retires every token
for the old one.

Layout (big-endian, fixed, ``CAPABILITY_BYTES`` = 41 bytes)::

    chunk_id u64 | version u64 | mode u8 | expires_at_s u64 | tag 16 bytes

``tag`` is HMAC-SHA256 over the 25 bytes before it, truncated to 16 bytes (as frame and
datagram tags: 128 bits, and a token lives minutes), under a key derived by HKDF from the
cluster secret and cluster id with its own label, so a capability tag can never be mistaken
for a datagram or frame tag, nor accepted by another cluster. Verification checks the tag
first, in constant time, and reads no field of an unauthenticated token.

**Wall-clock time, unlike everything else** (RELIABILITY.md §4.10 keeps timeouts and leases
on the monotonic clock). ``expires_at_s`` is integer Unix time because it crosses machines:
the MDS's monotonic clock means nothing to a chunkserver. That is acceptable here because
tokens are issued with minutes of lifetime and checked with a configurable skew allowance
(``skew_s``, default 30 s), so an NTP-synchronised cluster never refuses a fresh token, and
a clock error only shortens or stretches a token's life by that error: it never grants
access to another chunk or version.

What it does not protect against: the key derives from the cluster secret, so a holder of
that secret can mint tokens. The token stops a buggy or stale client (wrong chunk, old
version, expired open, read-only open used for writing) and a peer without the secret;
a deliberately malicious client holding the secret needs a CS-only key instead, which
``capability_key`` accepts unchanged (any 32-byte secret). No client id is bound in: every
client authenticates with the same secret, so the id would be self-declared.

Errors: ``verify_capability`` raises ``CapabilityError``, a VStoreError carrying
``ErrorCode.BAD_CAPABILITY`` and a ``reason`` (one per check), so the chunkserver can send
it as is (``errors.to_wire``; the client's ``errors.from_wire`` makes it
``errors.BadCapability``) or re-raise it as ``errors.BadCapability(e.message, details=e.details)``.
Invalid arguments on our side (a bad mode, an out-of-range id) raise LocalProtocolError.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct

from vstore.wire.codes import ErrorCode
from vstore.wire.errors import LocalProtocolError, VStoreError
from vstore.wire.frames import TAG_BYTES
from vstore.wire.handshake import SECRET_BYTES, hkdf_sha256

_BODY = struct.Struct(">QQBQ")
CAPABILITY_BYTES = _BODY.size + TAG_BYTES  # 41
_KEY_INFO = b"vstore capability v1"
_U64 = 2**64

#: Mode name -> byte on the wire (a bit set: 1 read, 2 write): the two ways a file is opened.
#: A bit set rather than an enumeration, so "rw includes r" is one AND and not a table.
MODES: dict[str, int] = {"r": 0b01, "rw": 0b11}
_MODE_NAMES = {bits: name for name, bits in MODES.items()}


class CapabilityReason(enum.StrEnum):
    """Why a token was refused: one value per check, in the order the checks run."""

    WRONG_LENGTH = "wrong_length"    # not CAPABILITY_BYTES long (absent, truncated, padded)
    BAD_TAG = "bad_tag"              # forged, tampered, or issued under another key or cluster
    UNKNOWN_MODE = "unknown_mode"    # authentic but a mode byte this version does not know
    WRONG_CHUNK = "wrong_chunk"      # issued for another chunk
    WRONG_VERSION = "wrong_version"  # issued for another version of this chunk (stale open)
    WRONG_MODE = "wrong_mode"        # a read-only token used for a write
    EXPIRED = "expired"              # past expires_at_s plus the skew allowance


class CapabilityError(VStoreError):
    """A chunk request's capability was refused. ``reason`` says which check failed;
    ``details`` carries it with the chunk id and version asked for (what an operator needs)."""

    default_code = ErrorCode.BAD_CAPABILITY

    def __init__(self, reason: CapabilityReason, message: str, *, chunk_id: int, version: int) -> None:
        super().__init__(f"capability refused ({reason}): {message}",
                         details={"reason": str(reason), "chunk": chunk_id, "version": version})
        self.reason = reason


def capability_key(secret: bytes, cluster_id: str) -> bytes:
    """The 32-byte key that signs capabilities of one cluster (the MDS and every CS derive it).

    ``secret`` is the 32-byte cluster secret (or a CS-only secret of the same size). Raises
    LocalProtocolError for a secret of another size. Deterministic.
    """
    if len(secret) != SECRET_BYTES:
        raise LocalProtocolError(f"capability secret must be {SECRET_BYTES} bytes")
    return hkdf_sha256(secret, cluster_id.encode(), _KEY_INFO)


def _tag(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()[:TAG_BYTES]


def issue_capability(key: bytes, chunk_id: int, version: int, mode: str, expires_at_s: int) -> bytes:
    """A token granting ``mode`` ("r" or "rw") on ``chunk_id`` at ``version`` until the Unix
    wall-clock second ``expires_at_s``. Deterministic (no nonce: the same grant gives the same
    bytes, which is harmless as the token is a bearer grant, not a secret-bearing message).

    Raises LocalProtocolError for an unknown mode or a value outside u64.
    """
    bits = MODES.get(mode)
    if bits is None:
        raise LocalProtocolError(f"capability mode {mode!r}: expected one of {sorted(MODES)}")
    for name, value in (("chunk_id", chunk_id), ("version", version), ("expires_at_s", expires_at_s)):
        if not isinstance(value, int) or not 0 <= value < _U64:
            raise LocalProtocolError(f"capability {name}={value!r}: must be an integer in [0, 2**64)")
    body = _BODY.pack(chunk_id, version, bits, expires_at_s)
    return body + _tag(key, body)


def verify_capability(key: bytes, token: bytes, *, chunk_id: int, version: int, mode: str, now_s: float,
                      skew_s: float = 30) -> None:
    """Check that ``token`` allows ``mode`` on ``chunk_id`` at ``version`` at wall-clock
    time ``now_s``. Returns None when it does; raises CapabilityError (reason: one
    CapabilityReason) when it does not.

    The tag is checked first, in constant time (hmac.compare_digest), and before any field
    is read, so a forged token learns nothing beyond "bad tag". An "rw" token allows "r".
    A token is accepted until ``expires_at_s + skew_s`` inclusive. Raises
    LocalProtocolError for an unknown ``mode`` or a negative ``skew_s`` (the caller's bug).
    """
    wanted = MODES.get(mode)
    if wanted is None:
        raise LocalProtocolError(f"capability mode {mode!r}: expected one of {sorted(MODES)}")
    if not skew_s >= 0:
        raise LocalProtocolError(f"capability skew_s={skew_s}: must be >= 0")

    def refuse(reason: CapabilityReason, message: str) -> CapabilityError:
        return CapabilityError(reason, message, chunk_id=chunk_id, version=version)

    if len(token) != CAPABILITY_BYTES:
        raise refuse(CapabilityReason.WRONG_LENGTH, f"token of {len(token)} bytes, expected {CAPABILITY_BYTES}")
    body, tag = token[:_BODY.size], token[_BODY.size:]
    if not hmac.compare_digest(_tag(key, body), tag):
        raise refuse(CapabilityReason.BAD_TAG, "token failed its MAC (forged, tampered, or another cluster's)")
    token_chunk, token_version, token_bits, expires_at_s = _BODY.unpack(body)
    if token_bits not in _MODE_NAMES:
        raise refuse(CapabilityReason.UNKNOWN_MODE, f"mode byte {token_bits:#04x} unknown to this version")
    if token_chunk != chunk_id:
        raise refuse(CapabilityReason.WRONG_CHUNK, f"token is for chunk {token_chunk:016x}, not {chunk_id:016x}")
    if token_version != version:
        raise refuse(CapabilityReason.WRONG_VERSION, f"token is for version {token_version}, not {version}")
    if token_bits & wanted != wanted:
        raise refuse(CapabilityReason.WRONG_MODE, f"token allows {_MODE_NAMES[token_bits]!r}, request needs {mode!r}")
    if not now_s <= expires_at_s + skew_s:  # written so that a NaN clock refuses (fails closed)
        raise refuse(CapabilityReason.EXPIRED, f"token expired at {expires_at_s} (now {now_s:.0f}, skew {skew_s} s)")
