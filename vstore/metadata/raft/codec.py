"""Encodings of the Raft core's own records: configuration changes inside log entries, and
the hard state. Pure. (Peer messages are wire structs: vstore/wire/raft.py.)"""

from __future__ import annotations

import msgspec

from vstore.metadata.raft.types import HardState
from vstore.wire.raft import ConfChange, ConfState

_encoder = msgspec.msgpack.Encoder()
_conf_change = msgspec.msgpack.Decoder(ConfChange)
_conf_state = msgspec.msgpack.Decoder(ConfState)
_hard_state = msgspec.msgpack.Decoder(HardState)


def encode_conf_change(change: ConfChange) -> bytes:
    return _encoder.encode(change)


def decode_conf_change(data: bytes) -> ConfChange:
    return _conf_change.decode(data)


def encode_conf_state(conf_state: ConfState) -> bytes:
    return _encoder.encode(conf_state)


def decode_conf_state(data: bytes) -> ConfState:
    return _conf_state.decode(data)


def encode_hard_state(hard_state: HardState) -> bytes:
    return _encoder.encode(hard_state)


def decode_hard_state(data: bytes) -> HardState:
    return _hard_state.decode(data)
