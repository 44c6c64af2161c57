"""The mutual handshake as a pure state machine: both sides prove the secret, and wrong
secrets, wrong clusters, replays, reflections and downgrades all fail (RELIABILITY.md §6.3)."""

from __future__ import annotations

import pytest

from vstore.wire import AuthFailed, ClientHandshake, FrameAuth, Identity, ServerHandshake
from vstore.wire.errors import LocalProtocolError, RemoteProtocolError
from vstore.wire.handshake import hkdf_sha256
from vstore.wire.messages import HandshakeHello, HandshakeWelcome

SECRET = bytes(range(32))
SERVER = Identity("cluster-a", "mds-1", "mds")
CLIENT = Identity("cluster-a", "cli-1", "client")
ROLES = frozenset({"client", "mds"})


def _nonce(n: int) -> bytes:
    return bytes([n]) * 32


def _run(server_secret=SECRET, client_secret=SECRET, server=SERVER, client=CLIENT, *, roles=ROLES,
         expected_role="mds", server_auth=FrameAuth.HMAC, client_auth=FrameAuth.HMAC, ns=1, nc=2):
    s = ServerHandshake(server_secret, server, _nonce(ns), allowed_roles=roles, frame_auth=server_auth)
    c = ClientHandshake(client_secret, client, _nonce(nc), expected_role=expected_role, frame_auth=client_auth)
    hello = c.on_challenge(s.challenge())
    welcome = s.on_hello(hello)
    return s, c, hello, welcome, c.on_welcome(welcome)


def test_both_sides_authenticate_and_derive_mirrored_session_keys() -> None:
    s, _, _, _, client_session = _run()
    assert s.session is not None
    assert client_session.peer == SERVER and s.session.peer == CLIENT
    assert client_session.send_key == s.session.recv_key and client_session.recv_key == s.session.send_key
    assert client_session.send_key != client_session.recv_key
    assert SECRET not in (client_session.send_key, client_session.recv_key)


def test_session_keys_differ_per_connection() -> None:
    first = _run(ns=1, nc=2)[4]
    second = _run(ns=3, nc=4)[4]
    assert first.send_key != second.send_key


def test_a_client_with_the_wrong_secret_is_refused_by_the_server() -> None:
    s = ServerHandshake(SECRET, SERVER, _nonce(1), allowed_roles=ROLES)
    c = ClientHandshake(b"x" * 32, CLIENT, _nonce(2), expected_role="mds")
    with pytest.raises(AuthFailed, match="bad proof from 'cli-1'"):
        s.on_hello(c.on_challenge(s.challenge()))
    assert s.session is None


def test_a_server_with_the_wrong_secret_is_refused_by_the_client() -> None:
    s = ServerHandshake(SECRET, SERVER, _nonce(1), allowed_roles=ROLES)
    c = ClientHandshake(SECRET, CLIENT, _nonce(2), expected_role="mds")
    c.on_challenge(s.challenge())
    impostor = ServerHandshake(b"y" * 32, SERVER, _nonce(1), allowed_roles=ROLES)
    impostor.challenge()
    forged = HandshakeWelcome(proof=b"\x00" * 32)
    with pytest.raises(AuthFailed, match="failed to prove the cluster secret"):
        c.on_welcome(forged)
    assert c.session is None


def test_a_client_of_another_cluster_is_refused_with_the_cluster_ids_named() -> None:
    other = Identity("cluster-b", "cli-1", "client")
    s = ServerHandshake(SECRET, SERVER, _nonce(1), allowed_roles=ROLES)
    c = ClientHandshake(SECRET, other, _nonce(2), expected_role="mds")
    with pytest.raises(AuthFailed, match="belongs to cluster 'cluster-a'"):
        c.on_challenge(s.challenge())
    forged_hello = HandshakeHello(cluster_id="cluster-b", node_id="cli-1", role="client", nonce=_nonce(2),
                                  proof=b"\x00" * 32)
    with pytest.raises(AuthFailed, match="wrong cluster id 'cluster-b'"):
        s.on_hello(forged_hello)


def test_a_replayed_hello_fails_against_a_fresh_challenge() -> None:
    _, _, recorded_hello, _, _ = _run(ns=1, nc=2)
    s = ServerHandshake(SECRET, SERVER, _nonce(9), allowed_roles=ROLES)
    s.challenge()
    with pytest.raises(AuthFailed, match="bad proof"):
        s.on_hello(recorded_hello)


def test_a_replayed_welcome_fails_against_a_fresh_client_nonce() -> None:
    _, _, _, recorded_welcome, _ = _run(ns=1, nc=2)
    s = ServerHandshake(SECRET, SERVER, _nonce(1), allowed_roles=ROLES)  # same server nonce replayed
    c = ClientHandshake(SECRET, CLIENT, _nonce(7), expected_role="mds")
    c.on_challenge(s.challenge())
    with pytest.raises(AuthFailed):
        c.on_welcome(recorded_welcome)


def test_a_server_proof_reflected_as_a_client_proof_fails() -> None:
    # The attacker gets a server to compute a proof over a transcript, then presents that
    # proof as a client's. Direction labels make the two proofs differ.
    s = ServerHandshake(SECRET, SERVER, _nonce(1), allowed_roles=ROLES)
    c = ClientHandshake(SECRET, CLIENT, _nonce(2), expected_role="mds")
    hello = c.on_challenge(s.challenge())
    welcome = s.on_hello(hello)
    s2 = ServerHandshake(SECRET, SERVER, _nonce(1), allowed_roles=ROLES)
    s2.challenge()
    reflected = HandshakeHello(cluster_id=hello.cluster_id, node_id=hello.node_id, role=hello.role,
                               nonce=hello.nonce, proof=welcome.proof)
    with pytest.raises(AuthFailed, match="bad proof"):
        s2.on_hello(reflected)


def test_echoing_the_other_sides_nonce_is_refused() -> None:
    s = ServerHandshake(SECRET, SERVER, _nonce(1), allowed_roles=ROLES)
    challenge = s.challenge()
    c = ClientHandshake(SECRET, CLIENT, _nonce(1), expected_role="mds")
    with pytest.raises(AuthFailed, match="reflection"):
        c.on_challenge(challenge)


def test_a_role_the_server_does_not_accept_is_refused() -> None:
    cs = Identity("cluster-a", "cs-1", "cs")
    with pytest.raises(AuthFailed, match="role 'cs' not accepted"):
        _run(client=cs, roles=frozenset({"client"}))


def test_the_client_refuses_a_server_of_the_wrong_role() -> None:
    with pytest.raises(AuthFailed, match="expected a 'cs'"):
        _run(expected_role="cs")


def test_a_frame_auth_mismatch_is_refused_with_the_fix() -> None:
    with pytest.raises(AuthFailed, match="frame_auth alike"):
        _run(server_auth=FrameAuth.NONE)


def test_tampering_with_the_negotiated_frame_auth_breaks_the_proofs() -> None:
    # An on-path attacker rewrites the challenge to "none" for both sides: the client
    # agrees, but the server's transcript says "hmac", so its check of the client fails.
    s = ServerHandshake(SECRET, SERVER, _nonce(1), allowed_roles=ROLES, frame_auth=FrameAuth.HMAC)
    c = ClientHandshake(SECRET, CLIENT, _nonce(2), expected_role="mds", frame_auth=FrameAuth.NONE)
    challenge = s.challenge()
    downgraded = type(challenge)(**{**{f: getattr(challenge, f) for f in challenge.__struct_fields__},
                                    "frame_auth": "none"})
    with pytest.raises(AuthFailed, match="bad proof"):
        s.on_hello(c.on_challenge(downgraded))


def test_frame_auth_none_yields_no_session_keys() -> None:
    session = _run(server_auth=FrameAuth.NONE, client_auth=FrameAuth.NONE)[4]
    assert session.send_key is None and session.send_mac() is None


def test_out_of_order_calls_are_refused() -> None:
    s = ServerHandshake(SECRET, SERVER, _nonce(1), allowed_roles=ROLES)
    with pytest.raises(LocalProtocolError):
        s.on_hello(None)
    c = ClientHandshake(SECRET, CLIENT, _nonce(2), expected_role=None)
    with pytest.raises(RemoteProtocolError):
        c.on_welcome(HandshakeWelcome(proof=b"\x00" * 32))
    with pytest.raises(LocalProtocolError):
        ServerHandshake(b"short", SERVER, _nonce(1), allowed_roles=ROLES)


def test_hkdf_matches_rfc5869_test_case_1() -> None:
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = hkdf_sha256(ikm, salt, info, 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")
