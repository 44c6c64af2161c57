"""Chunk capability tokens (RELIABILITY.md F26: a raw chunk request without a capability, with
an expired one, or with one for another chunk or version is refused with a typed error)."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vstore import errors
from vstore.wire import (CAPABILITY_BYTES, CapabilityError, CapabilityReason, ErrorCode, LocalProtocolError,
                         capability_key, datagram_key, issue_capability, verify_capability)

KEY = capability_key(b"s" * 32, "cluster-a")
CHUNK, VERSION, EXPIRES = 0x1234_5678_9ABC, 7, 1_700_000_600
U64 = st.integers(0, 2**64 - 1)


def _refusal(token: bytes, *, chunk_id: int = CHUNK, version: int = VERSION, mode: str = "r",
             now_s: float = EXPIRES - 60, skew_s: float = 30, key: bytes = KEY) -> CapabilityReason:
    with pytest.raises(CapabilityError) as info:
        verify_capability(key, token, chunk_id=chunk_id, version=version, mode=mode, now_s=now_s, skew_s=skew_s)
    return info.value.reason


def test_a_token_is_a_fixed_41_bytes() -> None:
    assert CAPABILITY_BYTES == 41
    assert len(issue_capability(KEY, CHUNK, VERSION, "rw", EXPIRES)) == CAPABILITY_BYTES


@settings(max_examples=200, deadline=None)
@given(chunk_id=U64, version=U64, expires=U64, mode=st.sampled_from(["r", "rw"]))
def test_a_token_is_accepted_for_exactly_what_it_was_issued_for(chunk_id: int, version: int, expires: int,
                                                                  mode: str) -> None:
    token = issue_capability(KEY, chunk_id, version, mode, expires)
    verify_capability(KEY, token, chunk_id=chunk_id, version=version, mode=mode, now_s=expires, skew_s=0)


def test_an_rw_token_allows_reads_and_an_r_token_refuses_writes() -> None:
    rw = issue_capability(KEY, CHUNK, VERSION, "rw", EXPIRES)
    r = issue_capability(KEY, CHUNK, VERSION, "r", EXPIRES)
    verify_capability(KEY, rw, chunk_id=CHUNK, version=VERSION, mode="r", now_s=EXPIRES - 60)
    verify_capability(KEY, rw, chunk_id=CHUNK, version=VERSION, mode="rw", now_s=EXPIRES - 60)
    verify_capability(KEY, r, chunk_id=CHUNK, version=VERSION, mode="r", now_s=EXPIRES - 60)
    assert _refusal(r, mode="rw") is CapabilityReason.WRONG_MODE


def test_each_kind_of_refusal_has_its_own_reason() -> None:
    token = issue_capability(KEY, CHUNK, VERSION, "r", EXPIRES)
    forged = token[:-1] + bytes([token[-1] ^ 1])
    unknown_mode = _forge_mode_byte(0b10)
    reasons = [
        _refusal(b""),
        _refusal(token[:-1]),
        _refusal(token + b"\0"),
        _refusal(forged),
        _refusal(unknown_mode),
        _refusal(token, chunk_id=CHUNK + 1),
        _refusal(token, version=VERSION + 1),
        _refusal(token, mode="rw"),
        _refusal(token, now_s=EXPIRES + 31),
    ]
    assert reasons == [CapabilityReason.WRONG_LENGTH] * 3 + [
        CapabilityReason.BAD_TAG, CapabilityReason.UNKNOWN_MODE, CapabilityReason.WRONG_CHUNK,
        CapabilityReason.WRONG_VERSION, CapabilityReason.WRONG_MODE, CapabilityReason.EXPIRED]
    assert len(set(CapabilityReason)) == len(set(reasons))


def _forge_mode_byte(bits: int) -> bytes:
    """An authentic token with a mode byte issue_capability never writes (a newer MDS's mode)."""
    body = struct.pack(">QQBQ", CHUNK, VERSION, bits, EXPIRES)
    return body + hmac.new(KEY, body, hashlib.sha256).digest()[:16]


def test_a_token_of_an_older_version_is_refused_after_the_version_moves_on() -> None:
    old = issue_capability(KEY, CHUNK, VERSION, "rw", EXPIRES)
    assert _refusal(old, version=VERSION + 1, mode="rw") is CapabilityReason.WRONG_VERSION


def test_the_skew_allowance_extends_the_expiry_inclusively() -> None:
    token = issue_capability(KEY, CHUNK, VERSION, "r", EXPIRES)
    verify_capability(KEY, token, chunk_id=CHUNK, version=VERSION, mode="r", now_s=EXPIRES + 30)
    assert _refusal(token, now_s=EXPIRES + 30.5) is CapabilityReason.EXPIRED
    verify_capability(KEY, token, chunk_id=CHUNK, version=VERSION, mode="r", now_s=EXPIRES + 100, skew_s=100)
    assert _refusal(token, now_s=EXPIRES + 1, skew_s=0) is CapabilityReason.EXPIRED


def test_a_nan_clock_refuses_rather_than_accepts() -> None:
    token = issue_capability(KEY, CHUNK, VERSION, "r", EXPIRES)
    assert _refusal(token, now_s=float("nan")) is CapabilityReason.EXPIRED


def test_a_token_of_another_cluster_or_secret_is_refused() -> None:
    token = issue_capability(KEY, CHUNK, VERSION, "r", EXPIRES)
    for key in (capability_key(b"s" * 32, "cluster-b"), capability_key(b"t" * 32, "cluster-a")):
        assert _refusal(token, key=key) is CapabilityReason.BAD_TAG


def test_the_capability_key_is_not_the_datagram_key() -> None:
    assert capability_key(b"s" * 32, "cluster-a") != datagram_key(b"s" * 32, "cluster-a")
    assert len(KEY) == 32


@settings(max_examples=300, deadline=None)
@given(index=st.integers(0, CAPABILITY_BYTES - 1), flip=st.integers(1, 255),
       mode=st.sampled_from(["r", "rw"]))
def test_tampering_with_any_byte_of_a_token_fails_its_tag(index: int, flip: int, mode: str) -> None:
    token = bytearray(issue_capability(KEY, CHUNK, VERSION, mode, EXPIRES))
    token[index] ^= flip
    assert _refusal(bytes(token)) is CapabilityReason.BAD_TAG


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_are_refused_with_a_capability_error_only(token: bytes) -> None:
    assert _refusal(token) in (CapabilityReason.WRONG_LENGTH, CapabilityReason.BAD_TAG)


def test_a_refusal_crosses_the_wire_as_bad_capability() -> None:
    token = issue_capability(KEY, CHUNK, VERSION, "r", EXPIRES)
    with pytest.raises(CapabilityError) as info:
        verify_capability(KEY, token, chunk_id=CHUNK, version=VERSION + 1, mode="r", now_s=EXPIRES)
    exc = info.value
    assert isinstance(exc, errors.VStoreError) and exc.code is ErrorCode.BAD_CAPABILITY and not exc.retryable
    assert exc.details == {"reason": "wrong_version", "chunk": CHUNK, "version": VERSION + 1}
    received = errors.from_wire(errors.to_wire(exc))
    assert isinstance(received, errors.BadCapability)
    assert received.details["reason"] == "wrong_version"


def test_invalid_arguments_on_our_side_are_local_protocol_errors() -> None:
    with pytest.raises(LocalProtocolError):
        capability_key(b"short", "cluster-a")
    for args in ((CHUNK, VERSION, "w", EXPIRES), (-1, VERSION, "r", EXPIRES), (CHUNK, 2**64, "r", EXPIRES),
                 (CHUNK, VERSION, "r", 2**64)):
        with pytest.raises(LocalProtocolError):
            issue_capability(KEY, *args)
    token = issue_capability(KEY, CHUNK, VERSION, "r", EXPIRES)
    with pytest.raises(LocalProtocolError):
        verify_capability(KEY, token, chunk_id=CHUNK, version=VERSION, mode="x", now_s=EXPIRES)
    with pytest.raises(LocalProtocolError):
        verify_capability(KEY, token, chunk_id=CHUNK, version=VERSION, mode="r", now_s=EXPIRES, skew_s=-1)


def test_issuing_is_deterministic() -> None:
    assert issue_capability(KEY, CHUNK, VERSION, "r", EXPIRES) == issue_capability(KEY, CHUNK, VERSION, "r", EXPIRES)
    assert issue_capability(KEY, CHUNK, VERSION, "r", EXPIRES) != issue_capability(KEY, CHUNK, VERSION, "rw", EXPIRES)
