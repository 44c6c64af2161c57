"""The frame codec: round trips of every message, and a decoder that hostile bytes cannot
crash, hang or make allocate (RELIABILITY.md F21, F22)."""

from __future__ import annotations

import struct
import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import strategies
from vstore.wire import (FLAG_ONEWAY, FLAG_REPLY, HEADER_BYTES, ErrorReply, FrameDecoder, FrameMac, MsgType,
                         PingReply, PingRequest, RemoteProtocolError, all_message_classes, encode_frame_bytes)
from vstore.wire.errors import LocalProtocolError
from vstore.wire.frames import HEADER, MAGIC, PROTOCOL_VERSION
from vstore.wire.messages import MAX_PAYLOAD_BYTES_ANY, PRE_AUTH_META_BYTES, decode_meta, encode_meta

ALL = all_message_classes()
TEST_RANGE = range(900, 1000)  # test harnesses register their own messages there


def test_every_msg_type_has_exactly_one_registered_class() -> None:
    product = [int(cls.TYPE) for cls in ALL if int(cls.TYPE) not in TEST_RANGE]
    assert sorted(product) == sorted(int(t) for t in MsgType)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_every_message_type_survives_a_frame_round_trip(cls: type, data: st.DataObject) -> None:
    msg = data.draw(strategies.message(cls))
    payload = data.draw(st.binary(max_size=min(cls.MAX_PAYLOAD_BYTES, 2048)))
    request_id = data.draw(st.integers(0, 2**64 - 1))
    flags = data.draw(st.sampled_from([0, FLAG_REPLY, FLAG_ONEWAY]))
    decoder = FrameDecoder(pre_auth=cls.PRE_AUTH and len(encode_meta(msg)) <= PRE_AUTH_META_BYTES)
    decoder.feed(encode_frame_bytes(msg, request_id, flags=flags, payload=payload))
    frame = decoder.next_frame()
    assert frame is not None
    assert (frame.message, frame.payload, frame.request_id, frame.flags) == (msg, payload, request_id, flags)
    assert decoder.next_frame() is None and decoder.buffered_bytes == 0


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(st.tuples(st.binary(max_size=3000), st.integers(0, 2**64 - 1)), min_size=1, max_size=6),
       cuts=st.lists(st.integers(1, 700), max_size=40))
def test_decoder_yields_the_same_frames_however_the_bytes_are_split(frames, cuts) -> None:
    stream = b"".join(encode_frame_bytes(PingRequest(), rid, payload=p) for p, rid in frames)
    decoder = FrameDecoder()
    got = []
    pos = 0
    for cut in cuts + [len(stream)]:
        decoder.feed(stream[pos:pos + cut])
        pos += cut
        while (frame := decoder.next_frame()) is not None:
            got.append((frame.payload, frame.request_id))
        if pos >= len(stream):
            break
    assert got == frames


def _decode_all(data: bytes, *, pre_auth: bool) -> None:
    decoder = FrameDecoder(pre_auth=pre_auth)
    decoder.feed(data)
    for _ in range(len(data) // HEADER_BYTES + 1):  # bounded: each frame consumes >= 24 bytes
        if decoder.next_frame() is None:
            return


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=400), pre_auth=st.booleans())
def test_decoder_raises_only_protocol_errors_on_random_bytes(data: bytes, pre_auth: bool) -> None:
    try:
        _decode_all(data, pre_auth=pre_auth)
    except RemoteProtocolError:
        pass


@st.composite
def _valid_header_random_body(draw: st.DrawFn) -> bytes:
    msg_type = draw(st.sampled_from([int(t) for t in MsgType]))
    meta = draw(st.one_of(st.binary(max_size=300),
                          st.builds(lambda v: msgpack.packb(v, use_bin_type=True),
                                    st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70).filter(
                                        lambda i: -2**63 <= i < 2**64) | st.text(max_size=40) | st.binary(max_size=40)
                                        | st.floats(allow_nan=True),
                                        lambda kids: st.lists(kids, max_size=5) | st.dictionaries(
                                            st.text(max_size=5), kids, max_size=4), max_leaves=20))))
    payload = draw(st.binary(max_size=64))
    flags = draw(st.sampled_from([0, 1, 2, 3, 4, 0x80]))
    header = HEADER.pack(MAGIC, PROTOCOL_VERSION, flags, msg_type, draw(st.integers(0, 2**64 - 1)),
                         len(meta), len(payload))
    return header + meta + payload


@settings(max_examples=500, deadline=None)
@given(data=_valid_header_random_body(), truncate=st.integers(0, 400))
def test_decoder_raises_only_protocol_errors_on_bad_msgpack_and_truncated_frames(data: bytes, truncate: int) -> None:
    for chunk in (data, data[:truncate]):
        try:
            _decode_all(chunk, pre_auth=False)
        except RemoteProtocolError:
            pass


def test_deeply_nested_msgpack_meta_is_a_protocol_error() -> None:
    meta = b"\x91" * 100_000 + b"\xc0"  # 100k nested one-element arrays
    header = HEADER.pack(MAGIC, PROTOCOL_VERSION, 0, int(MsgType.ERROR_REPLY), 1, len(meta), 0)
    decoder = FrameDecoder()
    decoder.feed(header)
    # ErrorReply meta is limited to 64 KiB, so this is refused from the header alone
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        decoder.next_frame()
    with pytest.raises(RemoteProtocolError):
        decode_meta(int(MsgType.ERROR_REPLY), meta)


@pytest.mark.parametrize("meta_len,payload_len", [(2**32 - 1, 0), (0, 2**32 - 1), (65 * 1024, 0),
                                                  (0, MAX_PAYLOAD_BYTES_ANY + 1)])
def test_oversized_frame_is_refused_from_its_header_before_any_allocation(meta_len: int, payload_len: int) -> None:
    header = HEADER.pack(MAGIC, PROTOCOL_VERSION, 0, int(MsgType.PING_REQUEST), 7, meta_len, payload_len)
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        decoder.feed(header)
        with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
            decoder.next_frame()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    # and the decoder stays failed: the connection must be closed, not resynchronised
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"more")


@pytest.mark.parametrize("mutate,reason", [
    (lambda h: b"XXXX" + h[4:], "bad magic"),
    (lambda h: h[:4] + bytes([9]) + h[5:], "unsupported protocol version 9"),
    (lambda h: h[:5] + bytes([0x80]) + h[6:], "unknown frame flags"),
    (lambda h: h[:6] + struct.pack(">H", 999) + h[8:], "unknown message type 999"),
])
def test_bad_header_fields_are_refused_with_a_reason(mutate, reason: str) -> None:
    frame = encode_frame_bytes(PingRequest(), 1)
    decoder = FrameDecoder()
    decoder.feed(mutate(frame[:HEADER_BYTES]) + frame[HEADER_BYTES:])
    with pytest.raises(RemoteProtocolError, match=reason):
        decoder.next_frame()


def test_meta_with_wrong_schema_is_refused_naming_the_message() -> None:
    for bad in ([1, 2, 3], ["node", 5], ["node", "mds", "extra"], [b"\x00" * 3, "mds"], {"node_id": "x"}):
        meta = msgpack.packb(bad, use_bin_type=True)
        with pytest.raises(RemoteProtocolError, match="bad PingReply meta"):
            decode_meta(int(MsgType.PING_REPLY), meta)


def test_integer_fields_reject_negative_and_out_of_range_values() -> None:
    for code in (-1, 2**16, 2**64, 1.5, "3", None, True):
        meta = msgpack.packb([code, "m", {}], use_bin_type=True) if not isinstance(code, int) or code < 2**64 \
            else b"\x93\xcf" + b"\xff" * 8 + b"\xa1m\x80"
        with pytest.raises(RemoteProtocolError):
            decode_meta(int(MsgType.ERROR_REPLY), meta)


def test_invalid_utf8_in_a_string_field_is_a_protocol_error() -> None:
    meta = b"\x92\xa3\xff\xfe\xfd\xa3mds"  # fixarray(2), fixstr(3) invalid UTF-8, "mds"
    with pytest.raises(RemoteProtocolError):
        decode_meta(int(MsgType.PING_REPLY), meta)


def test_pre_auth_decoder_accepts_only_small_handshake_frames() -> None:
    decoder = FrameDecoder(pre_auth=True)
    decoder.feed(encode_frame_bytes(PingRequest(), 1))
    with pytest.raises(RemoteProtocolError, match="before the handshake completed"):
        decoder.next_frame()
    big = ErrorReply(code=1, message="x" * 300)
    decoder = FrameDecoder(pre_auth=True)
    decoder.feed(encode_frame_bytes(big, 1))
    with pytest.raises(RemoteProtocolError, match="before the handshake completed"):
        decoder.next_frame()


def test_encoder_refuses_to_break_its_own_limits() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame_bytes(PingReply(node_id="a", role="mds"), 1, payload=b"x" * (MAX_PAYLOAD_BYTES_ANY + 1))
    with pytest.raises(LocalProtocolError):
        encode_frame_bytes(ErrorReply(code=1, message="m"), 1, payload=b"x")
    with pytest.raises(LocalProtocolError):
        encode_frame_bytes(PingRequest(), 2**64)


def _mac_pair() -> tuple[FrameMac, FrameDecoder]:
    decoder = FrameDecoder()
    decoder.authenticated(FrameMac(b"s" * 32))
    return FrameMac(b"s" * 32), decoder


def test_authenticated_frames_pass_and_a_flipped_bit_anywhere_fails() -> None:
    sender, decoder = _mac_pair()
    frame = encode_frame_bytes(PingRequest(), 5, payload=b"chunk data", mac=sender)
    decoder.feed(frame)
    assert decoder.next_frame().payload == b"chunk data"
    for position in (0 + 8, HEADER_BYTES, len(frame) - 20, len(frame) - 1):
        sender, decoder = _mac_pair()
        frame = bytearray(encode_frame_bytes(PingRequest(), 5, payload=b"chunk data", mac=sender))
        frame[position] ^= 0x01
        decoder.feed(bytes(frame))
        with pytest.raises(RemoteProtocolError):
            decoder.next_frame()


def test_a_replayed_or_reordered_authenticated_frame_fails_its_mac() -> None:
    sender, decoder = _mac_pair()
    first = encode_frame_bytes(PingRequest(), 1, mac=sender)
    second = encode_frame_bytes(PingRequest(), 2, mac=sender)
    decoder.feed(first)
    assert decoder.next_frame().request_id == 1
    decoder.feed(first)  # replay
    with pytest.raises(RemoteProtocolError, match="failed its MAC"):
        decoder.next_frame()
    sender, decoder = _mac_pair()
    first = encode_frame_bytes(PingRequest(), 1, mac=sender)
    second = encode_frame_bytes(PingRequest(), 2, mac=sender)
    decoder.feed(second + first)  # reorder
    with pytest.raises(RemoteProtocolError, match="failed its MAC"):
        decoder.next_frame()


def test_an_unauthenticated_frame_on_an_authenticated_connection_fails() -> None:
    _, decoder = _mac_pair()
    decoder.feed(encode_frame_bytes(PingRequest(), 1) + b"\x00" * 16)
    with pytest.raises(RemoteProtocolError, match="failed its MAC"):
        decoder.next_frame()


def _receive_into(decoder: FrameDecoder, stream: bytes, cuts: list[int]) -> list[tuple[bytes, int]]:
    """Drive the decoder as asyncio.BufferedProtocol does: copy at most ``cut`` bytes (and at
    most what the decoder's buffer holds) into the buffer it hands out, then tell it."""
    got = []
    pos = 0
    cuts = cuts or [len(stream)]
    k = 0
    while pos < len(stream):
        view = decoder.get_buffer()
        assert len(view) > 0
        n = min(len(view), cuts[k % len(cuts)], len(stream) - pos)
        k += 1
        view[:n] = stream[pos:pos + n]
        view.release()
        pos += n
        decoder.buffer_updated(n)
        while (frame := decoder.next_frame()) is not None:
            got.append((bytes(frame.payload), frame.request_id))
    return got


BIG = FrameDecoder.DIRECT_PAYLOAD_BYTES


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.sampled_from([0, 1, 100, BIG - 1, BIG, BIG + 7, 3 * BIG]), min_size=1, max_size=5),
       cuts=st.lists(st.integers(1, 2 * BIG), max_size=12), mac=st.booleans(), via_feed=st.booleans())
def test_big_payloads_received_into_their_own_buffer_decode_like_small_ones(sizes, cuts, mac, via_feed) -> None:
    frames = [(bytes([i % 251]) * size, i) for i, size in enumerate(sizes)]
    sender = FrameMac(b"s" * 32) if mac else None
    stream = b"".join(encode_frame_bytes(PingRequest(), rid, payload=p, mac=sender) for p, rid in frames)
    decoder = FrameDecoder()
    decoder.authenticated(FrameMac(b"s" * 32) if mac else None)
    if via_feed:
        got, pos = [], 0
        for cut in (cuts or [len(stream)]) * (len(stream) // max(1, min(cuts or [1])) + 1):
            if pos >= len(stream):
                break
            decoder.feed(stream[pos:pos + cut])
            pos += cut
            while (frame := decoder.next_frame()) is not None:
                got.append((bytes(frame.payload), frame.request_id))
    else:
        got = _receive_into(decoder, stream, cuts)
    assert got == frames
    assert not decoder.in_frame and decoder.buffered_bytes == 0


def test_a_big_payload_with_a_flipped_bit_fails_its_mac() -> None:
    sender, decoder = _mac_pair()
    frame = bytearray(encode_frame_bytes(PingRequest(), 5, payload=b"x" * (2 * BIG), mac=sender))
    frame[HEADER_BYTES + 10 + BIG] ^= 0x40
    with pytest.raises(RemoteProtocolError, match="failed its MAC"):
        _receive_into(decoder, bytes(frame), [BIG // 3])
    with pytest.raises(RemoteProtocolError):
        decoder.get_buffer()
