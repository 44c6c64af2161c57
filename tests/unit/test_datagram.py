"""Signed UDP datagrams and the replay guard (RELIABILITY.md F23: a replayed heartbeat of a
dead chunkserver must never keep it online)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vstore.wire import Heartbeat, PingRequest, RemoteProtocolError, ReplayGuard, datagram_key, decode_datagram, \
    encode_datagram
from vstore.wire.errors import LocalProtocolError

KEY = datagram_key(b"s" * 32, "cluster-a")
BOOT = b"b" * 16
BEAT = Heartbeat(node_id="cs-1", role="cs", gauges={"free_bytes": 123, "chunks": 4})


def test_a_datagram_round_trips() -> None:
    got = decode_datagram(KEY, encode_datagram(KEY, "cs-1", BOOT, 7, BEAT))
    assert (got.sender, got.boot_id, got.counter, got.message) == ("cs-1", BOOT, 7, BEAT)


def test_a_datagram_of_another_cluster_or_secret_is_refused() -> None:
    packet = encode_datagram(KEY, "cs-1", BOOT, 1, BEAT)
    for key in (datagram_key(b"s" * 32, "cluster-b"), datagram_key(b"t" * 32, "cluster-a")):
        with pytest.raises(RemoteProtocolError, match="failed its MAC"):
            decode_datagram(key, packet)


def test_any_flipped_bit_is_refused() -> None:
    packet = encode_datagram(KEY, "cs-1", BOOT, 1, BEAT)
    for i in range(len(packet)):
        damaged = bytearray(packet)
        damaged[i] ^= 0x10
        with pytest.raises(RemoteProtocolError):
            decode_datagram(KEY, bytes(damaged))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500))
def test_random_packets_raise_only_protocol_errors(packet: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_datagram(KEY, packet)


def test_only_datagram_message_types_may_be_sent() -> None:
    with pytest.raises(LocalProtocolError):
        encode_datagram(KEY, "cs-1", BOOT, 1, PingRequest())


def test_the_guard_accepts_increasing_counters_and_refuses_replays() -> None:
    guard = ReplayGuard()
    assert guard.accept("cs-1", BOOT, 1)
    assert guard.accept("cs-1", BOOT, 2)
    assert not guard.accept("cs-1", BOOT, 2)
    assert not guard.accept("cs-1", BOOT, 1)
    assert guard.accept("cs-1", BOOT, 10)
    assert guard.accept("cs-2", BOOT, 1)  # senders are independent


def test_the_guard_takes_a_new_boot_and_never_goes_back_to_an_old_one() -> None:
    guard = ReplayGuard()
    old, new = b"o" * 16, b"n" * 16
    assert guard.accept("cs-1", old, 500)
    assert guard.accept("cs-1", new, 1)  # the chunkserver restarted
    assert not guard.accept("cs-1", old, 501)  # a replay of the dead process
    assert guard.accept("cs-1", new, 2)


def test_the_guard_is_bounded() -> None:
    guard = ReplayGuard(max_senders=10)
    for i in range(100):
        assert guard.accept(f"cs-{i}", BOOT, 1)
    assert len(guard._senders) == 10
