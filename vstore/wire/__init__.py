"""The vstore protocol, sans-I/O: frames, messages, error codes, handshake, datagrams.

Every component imports the protocol from here; none re-implements any of it. This package
imports nothing from the rest of vstore and nothing that does I/O (h11 is the model).

Modules: ``codes`` (ErrorCode table), ``errors`` (root and protocol exceptions),
``messages`` (MsgType and schemas), ``frames`` (header, encoder, decoder, frame MAC),
``handshake`` (mutual authentication), ``datagram`` (signed UDP and replay guard),
``capability`` (chunk capability tokens).
"""

from vstore.wire.capability import (CAPABILITY_BYTES, CapabilityError, CapabilityReason, capability_key,
                                   issue_capability, verify_capability)
from vstore.wire.codes import RETRYABLE_CODES, ErrorCode
from vstore.wire.datagram import Datagram, ReplayGuard, datagram_key, decode_datagram, encode_datagram
from vstore.wire.errors import AuthFailed, LocalProtocolError, ProtocolError, RemoteProtocolError, VStoreError
from vstore.wire.frames import (FLAG_ONEWAY, FLAG_REPLY, HEADER_BYTES, PROTOCOL_VERSION, Frame, FrameDecoder,
                                FrameMac, encode_frame, encode_frame_bytes)
from vstore.wire.handshake import ClientHandshake, FrameAuth, Identity, Role, ServerHandshake, Session
from vstore.wire import raft as _raft  # noqa: F401  (registers the Raft message types)
from vstore.wire import mds as _mds  # noqa: F401  (registers the metadata message types)
from vstore.wire import cs as _cs  # noqa: F401  (registers the chunk data message types)
from vstore.wire import admin as _admin  # noqa: F401  (registers the admin message types)
from vstore.wire.messages import (ErrorReply, HandshakeChallenge, HandshakeHello, HandshakeWelcome, Heartbeat,
                                  Message, MsgType, PingReply, PingRequest, all_message_classes, decode_meta,
                                  encode_meta, message_class)

__all__ = [
    "AuthFailed", "ClientHandshake", "Datagram", "ErrorCode", "ErrorReply", "FLAG_ONEWAY", "FLAG_REPLY",
    "Frame", "FrameAuth", "FrameDecoder", "FrameMac", "HEADER_BYTES", "HandshakeChallenge", "HandshakeHello",
    "HandshakeWelcome", "Heartbeat", "Identity", "LocalProtocolError", "Message", "MsgType", "PROTOCOL_VERSION",
    "PingReply", "PingRequest", "ProtocolError", "RETRYABLE_CODES", "RemoteProtocolError", "ReplayGuard", "Role",
    "ServerHandshake", "Session", "VStoreError", "all_message_classes", "datagram_key", "decode_datagram",
    "decode_meta", "encode_datagram", "encode_frame", "encode_frame_bytes", "encode_meta", "message_class",
    "CAPABILITY_BYTES", "CapabilityError", "CapabilityReason", "capability_key", "issue_capability",
    "verify_capability",
]
