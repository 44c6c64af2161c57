"""Message types and their schemas: the one place where every vstore message is defined.

Pure: no I/O. Each message is a frozen ``msgspec.Struct`` encoded as a msgpack array
(``array_like``: smaller and faster than a map; new optional fields may only be appended).
Decoding validates the schema in C: types, integer ranges, string and byte lengths, and no
unknown trailing fields. Anything that fails raises ``RemoteProtocolError``, never a
msgspec or msgpack exception.

Bulk data (chunk bytes) never goes inside the meta; it travels as the frame's raw payload.
Each message class states its own size limits (``MAX_META_BYTES``, ``MAX_PAYLOAD_BYTES``);
the frame decoder checks a frame's declared lengths against them before reading the body.

Names follow verb + noun + Request/Reply. Numbering ranges of ``MsgType``:
1-15 handshake and control, 100-199 metadata (client <-> MDS), 200-299 chunkserver,
300-349 Raft (MDS <-> MDS), 350-399 datagrams (heartbeats), 400-449 admin.
900-999 are reserved for test harnesses, which register their own messages there.
Later components append their messages here, in their range.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, ClassVar

import msgspec

from vstore.wire.errors import LocalProtocolError, RemoteProtocolError

# ---- field types shared by the schemas --------------------------------------------------
U8 = Annotated[int, msgspec.Meta(ge=0, le=0xFF)]
U16 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF_FFFF)]
#: Non-negative 63-bit integers: msgspec checks bounds only within int64, and every id, index
#: and term in vstore stays below 2**63 (chunk ids included: the schema is stricter than u64).
U64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
#: Node ids are short printable names ("mds-1", "cs-07"); they appear in logs and file names.
NodeIdStr = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
ClusterIdStr = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
RoleStr = Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
Nonce = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Mac = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
#: Human-readable text in replies (error messages); long enough for a useful explanation.
Text = Annotated[str, msgspec.Meta(max_length=4096)]
DetailKey = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
DetailValue = Annotated[str, msgspec.Meta(max_length=1024)] | int

KIB = 1024
MIB = 1024 * KIB

#: Largest meta any message may declare. Metadata replies (a readdir page, a chunk map)
#: fit easily; anything larger is a bug or an attack.
MAX_META_BYTES_ANY = 4 * MIB
#: Largest payload any message may declare: a chain write of up to 16 MiB of chunk data
#: (the client write-back flushes in multi-MiB pieces; 64 MiB chunks are sent in 4+ frames
#: so that one frame never pins more than 16 MiB of memory per connection).
MAX_PAYLOAD_BYTES_ANY = 16 * MIB


class MsgType(enum.IntEnum):
    # handshake and control
    HANDSHAKE_CHALLENGE = 1
    HANDSHAKE_HELLO = 2
    HANDSHAKE_WELCOME = 3
    ERROR_REPLY = 4
    PING_REQUEST = 5
    PING_REPLY = 6
    # metadata: client <-> MDS and chunkserver -> MDS (vstore/wire/mds.py)
    LOOKUP = 100
    GETATTR = 101
    SETATTR = 102
    MKNOD = 103
    MKDIR = 104
    SYMLINK = 105
    LINK = 106
    UNLINK = 107
    RMDIR = 108
    RENAME = 109
    READLINK = 110
    READDIR = 111
    STATFS = 112
    GETXATTR = 113
    SETXATTR = 114
    LISTXATTR = 115
    REMOVEXATTR = 116
    OPEN = 117
    RELEASE = 118
    GET_POLICY = 119
    SET_POLICY = 120
    SESSION_KEEPALIVE = 121
    SESSION_CLOSE = 122
    CHUNK_MAP = 130
    ALLOC_CHUNK = 131
    WRITE_DONE = 132
    REPAIR_CHAIN = 133
    MDS_STATUS = 150
    REGISTER_CS = 160
    CHUNK_REPORT = 161
    FETCH_ORDERS = 162
    ORDER_DONE = 163
    REPORT_DAMAGE = 164
    SET_CS_STATE = 165
    ATTR_REPLY = 180
    DONE_REPLY = 181
    READLINK_REPLY = 182
    READDIR_REPLY = 183
    STATFS_REPLY = 184
    XATTR_REPLY = 185
    XATTR_LIST_REPLY = 186
    POLICY_REPLY = 187
    SESSION_REPLY = 188
    CHUNK_MAP_REPLY = 189
    CHUNK_REPLY = 190
    MDS_STATUS_REPLY = 191
    REGISTER_CS_REPLY = 192
    CHUNK_REPORT_REPLY = 193
    ORDERS_REPLY = 194
    # chunk data: client <-> chunkserver, chunkserver <-> chunkserver (vstore/wire/cs.py)
    WRITE_CHUNK = 200
    WRITE_CHUNK_REPLY = 201
    READ_CHUNK = 202
    READ_CHUNK_REPLY = 203
    FSYNC_CHUNK = 204
    FSYNC_CHUNK_REPLY = 205
    VERIFY_CHUNK = 206
    VERIFY_CHUNK_REPLY = 207
    # Raft (vstore/wire/raft.py)
    RAFT_MESSAGE = 300
    RAFT_SNAPSHOT_CHUNK_REQUEST = 301
    RAFT_SNAPSHOT_CHUNK_REPLY = 302
    RAFT_SNAPSHOT_FETCH_REQUEST = 303
    RAFT_SNAPSHOT_FETCH_REPLY = 304
    # datagrams
    HEARTBEAT = 350
    # admin: operators' tools -> MDS (vstore/wire/admin.py)
    ADD_MDS = 400
    REMOVE_MDS = 401
    MEMBERSHIP_REPLY = 402
    CS_LIST = 403
    CS_LIST_REPLY = 404
    MEMBERSHIP = 405
    EVENTS = 406
    EVENTS_REPLY = 407


class Message(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """Base of every message. Subclasses set TYPE and may tighten the size limits."""

    TYPE: ClassVar[MsgType]
    #: Limit on the encoded meta of this message, checked before the meta is read.
    MAX_META_BYTES: ClassVar[int] = 64 * KIB
    #: Limit on the raw payload that may follow this message (0: none allowed).
    MAX_PAYLOAD_BYTES: ClassVar[int] = 0
    #: Allowed before the handshake has completed (only the handshake itself and its error).
    PRE_AUTH: ClassVar[bool] = False
    #: May travel in a signed UDP datagram (vstore/wire/datagram.py) rather than a frame.
    DATAGRAM: ClassVar[bool] = False


_REGISTRY: dict[int, type[Message]] = {}
_DECODERS: dict[int, msgspec.msgpack.Decoder[Any]] = {}
_ENCODER = msgspec.msgpack.Encoder()


def register(cls: type[Message]) -> type[Message]:
    """Class decorator: enter a message class in the registry under its TYPE."""
    msg_type = cls.TYPE
    if msg_type in _REGISTRY:
        raise LocalProtocolError(f"message type {msg_type!r} registered twice "
                                 f"({_REGISTRY[msg_type].__name__}, {cls.__name__})")
    if not 0 <= cls.MAX_META_BYTES <= MAX_META_BYTES_ANY or not 0 <= cls.MAX_PAYLOAD_BYTES <= MAX_PAYLOAD_BYTES_ANY:
        raise LocalProtocolError(f"{cls.__name__}: size limits above the protocol maximum")
    _REGISTRY[int(msg_type)] = cls
    _DECODERS[int(msg_type)] = msgspec.msgpack.Decoder(cls)
    return cls


def message_class(msg_type: int) -> type[Message] | None:
    """The registered class for a wire type number, or None for an unknown type."""
    return _REGISTRY.get(msg_type)


def all_message_classes() -> list[type[Message]]:
    """Every registered message class, in type order (tests walk this for round trips)."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def encode_meta(msg: Message) -> bytes:
    """Encode a message's fields as msgpack. Checks its own limit: an oversized meta is our bug."""
    data = _ENCODER.encode(msg)
    if len(data) > msg.MAX_META_BYTES:
        raise LocalProtocolError(f"{type(msg).__name__} meta is {len(data)} bytes, "
                                 f"limit {msg.MAX_META_BYTES}")
    return data


def decode_meta(msg_type: int, meta: bytes | memoryview) -> Message:
    """Decode and validate the meta of a frame of the given type.

    Raises RemoteProtocolError (naming the type and what is wrong) for an unknown type, bad
    msgpack, a wrong schema or a value out of range; never any other exception.
    """
    decoder = _DECODERS.get(msg_type)
    if decoder is None:
        raise RemoteProtocolError(f"unknown message type {msg_type}")
    try:
        return decoder.decode(meta)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise RemoteProtocolError(f"bad {_REGISTRY[msg_type].__name__} meta: {exc}") from None
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as exc:  # pragma: no cover
        # msgspec documents only the two errors above; this is a belt for hostile input.
        raise RemoteProtocolError(f"bad {_REGISTRY[msg_type].__name__} meta: {type(exc).__name__}") from None


# ---- handshake and control -------------------------------------------------------------
# The handshake protocol (who sends what, what each MAC covers) is in vstore/wire/handshake.py.

PRE_AUTH_META_BYTES = 256  # RELIABILITY.md §6.3: before authentication, frames <= 256 bytes


@register
class HandshakeChallenge(Message):
    """Server -> client, first frame on every connection."""

    TYPE = MsgType.HANDSHAKE_CHALLENGE
    MAX_META_BYTES = PRE_AUTH_META_BYTES
    PRE_AUTH = True
    protocol_version: U8
    cluster_id: ClusterIdStr
    node_id: NodeIdStr
    role: RoleStr
    frame_auth: RoleStr
    nonce: Nonce


@register
class HandshakeHello(Message):
    """Client -> server: the client's identity, its nonce and its proof of the secret."""

    TYPE = MsgType.HANDSHAKE_HELLO
    MAX_META_BYTES = PRE_AUTH_META_BYTES
    PRE_AUTH = True
    cluster_id: ClusterIdStr
    node_id: NodeIdStr
    role: RoleStr
    nonce: Nonce
    proof: Mac


@register
class HandshakeWelcome(Message):
    """Server -> client: the server's proof. After it, both sides are authenticated."""

    TYPE = MsgType.HANDSHAKE_WELCOME
    MAX_META_BYTES = PRE_AUTH_META_BYTES
    PRE_AUTH = True
    proof: Mac


@register
class ErrorReply(Message):
    """Reply to any request that failed: a typed code, a message for humans, and details
    (identifiers such as the chunk id or the leader's address; see ErrorCode comments)."""

    TYPE = MsgType.ERROR_REPLY
    PRE_AUTH = True  # an auth failure is reported with it before the connection closes
    code: U16
    message: Text
    details: Annotated[dict[DetailKey, DetailValue], msgspec.Meta(max_length=16)] = {}


@register
class PingRequest(Message):
    """Liveness and round-trip probe. The payload, if any, is echoed back."""

    TYPE = MsgType.PING_REQUEST
    MAX_PAYLOAD_BYTES = MAX_PAYLOAD_BYTES_ANY


@register
class PingReply(Message):
    """Reply to PingRequest: who answered, with the request's payload echoed."""

    TYPE = MsgType.PING_REPLY
    MAX_PAYLOAD_BYTES = MAX_PAYLOAD_BYTES_ANY
    node_id: NodeIdStr
    role: RoleStr


# ---- datagrams ---------------------------------------------------------------------------

@register
class Heartbeat(Message):
    """A node's periodic sign of life over signed UDP (vstore/wire/datagram.py).

    ``gauges`` carries the sender's current numbers by name (``free_bytes``, ``used_bytes``,
    ``chunks``, ``load_permille`` ...), so the receiver's registry and dashboard need no
    protocol change when a chunkserver learns to report a new figure.
    """

    TYPE = MsgType.HEARTBEAT
    MAX_META_BYTES = 1024
    DATAGRAM = True
    node_id: NodeIdStr
    role: RoleStr
    gauges: Annotated[dict[DetailKey, int], msgspec.Meta(max_length=32)] = {}
