"""Mutual HMAC-SHA256 challenge-response over the cluster secret, as pure state machines.

Pure: no sockets, no clock, no randomness of its own (nonces are passed in).

The exchange (three frames, the server speaks first)::

    server -> client  HandshakeChallenge(version, cluster_id, server node/role, frame_auth, Ns)
    client -> server  HandshakeHello(cluster_id, client node/role, Nc,
                                     proof_c = HMAC(K, "client" ‖ T))
    server -> client  HandshakeWelcome(proof_s = HMAC(K, "server" ‖ T))

where K is the 32-byte cluster secret and the transcript T is every identity field of both
sides, the negotiated frame authentication and both nonces, each length-prefixed:

    T = "vstore-hs-v1" ‖ cluster_id ‖ server id ‖ server role ‖ client id ‖ client role
        ‖ frame_auth ‖ Ns ‖ Nc

Why this shape:
* Both proofs cover both fresh nonces, so a recorded transcript replayed to a server fails
  (a new Ns), and one replayed to a client fails (a new Nc).
* The direction labels differ ("client" / "server"), so a server's proof can never be
  reflected back as a client's proof, the flaw of naive schemes that send one message both
  ways (Python's multiprocessing.connection before 3.12).
* The roles and the cluster id are inside the MAC, so a proof for one cluster or role is
  useless for another, and a downgrade of frame_auth in transit is detected.
* The server verifies the client first, so the side that accepts connections can log
  exactly why a peer was refused (wrong cluster id, bad proof, role not allowed).
* Comparisons use hmac.compare_digest (constant time).

After success both sides derive per-direction session keys with HKDF-SHA256 (RFC 5869)
from K, salted with Ns ‖ Nc; with frame_auth "hmac" every later frame carries a tag under
them (see frames.FrameMac).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass

from vstore.wire.errors import AuthFailed, LocalProtocolError, RemoteProtocolError
from vstore.wire.frames import PROTOCOL_VERSION, FrameMac
from vstore.wire.messages import HandshakeChallenge, HandshakeHello, HandshakeWelcome

SECRET_BYTES = 32
NONCE_BYTES = 32
_LABEL = b"vstore-hs-v1"


class FrameAuth(enum.StrEnum):
    """Per-frame protection after the handshake. Both sides must be configured alike."""

    HMAC = "hmac"   # every frame tagged under a session key: no injection, replay or reordering
    NONE = "none"   # only the handshake is authenticated: trusted networks, or under TLS


class Role(enum.StrEnum):
    MDS = "mds"
    CS = "cs"
    CLIENT = "client"
    ADMIN = "admin"    # the CLI acting for an operator (status, rm-node, ...)


@dataclass(frozen=True, slots=True)
class Identity:
    cluster_id: str
    node_id: str
    role: str


@dataclass(frozen=True, slots=True)
class Session:
    """The outcome of a successful handshake."""

    peer: Identity
    frame_auth: FrameAuth
    send_key: bytes | None
    recv_key: bytes | None

    def send_mac(self) -> FrameMac | None:
        return FrameMac(self.send_key) if self.send_key is not None else None

    def recv_mac(self) -> FrameMac | None:
        return FrameMac(self.recv_key) if self.recv_key is not None else None


def hkdf_sha256(key: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF (RFC 5869) with SHA-256: extract then expand. Twelve lines instead of a dependency."""
    prk = hmac.new(salt, key, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _lp(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return len(raw).to_bytes(2, "big") + raw


def _transcript(cluster_id: str, server: Identity, client: Identity, frame_auth: str,
                nonce_s: bytes, nonce_c: bytes) -> bytes:
    return b"".join((_LABEL, _lp(cluster_id), _lp(server.node_id), _lp(server.role),
                     _lp(client.node_id), _lp(client.role), _lp(frame_auth),
                     _lp(nonce_s), _lp(nonce_c)))


def _proof(secret: bytes, direction: bytes, transcript: bytes) -> bytes:
    return hmac.new(secret, direction + b"\0" + transcript, hashlib.sha256).digest()


def _session(secret: bytes, transcript: bytes, nonce_s: bytes, nonce_c: bytes, peer: Identity,
             frame_auth: FrameAuth, we_are_client: bool) -> Session:
    if frame_auth is FrameAuth.NONE:
        return Session(peer, frame_auth, None, None)
    salt = nonce_s + nonce_c
    digest = hashlib.sha256(transcript).digest()
    c2s = hkdf_sha256(secret, salt, b"c2s" + digest)
    s2c = hkdf_sha256(secret, salt, b"s2c" + digest)
    return Session(peer, frame_auth, c2s if we_are_client else s2c, s2c if we_are_client else c2s)


def _check_secret(secret: bytes) -> None:
    if len(secret) != SECRET_BYTES:
        raise LocalProtocolError(f"cluster secret must be {SECRET_BYTES} bytes, got {len(secret)}")


def _check_nonce(nonce: bytes) -> None:
    if len(nonce) != NONCE_BYTES:
        raise LocalProtocolError(f"nonce must be {NONCE_BYTES} bytes")


class ServerHandshake:
    """The accepting side. ``challenge()`` first, then ``on_hello()``; ``session`` after success.

    ``allowed_roles``: the client roles this server talks to (a chunkserver refuses a
    connection claiming to be a chunkserver, for instance, if it never expects one).
    """

    def __init__(self, secret: bytes, local: Identity, nonce: bytes, *,
                 allowed_roles: frozenset[str], frame_auth: FrameAuth = FrameAuth.HMAC) -> None:
        _check_secret(secret)
        _check_nonce(nonce)
        self._secret = secret
        self._local = local
        self._nonce = nonce
        self._allowed_roles = allowed_roles
        self._frame_auth = frame_auth
        self._challenged = False
        self.session: Session | None = None

    def challenge(self) -> HandshakeChallenge:
        if self._challenged:
            raise LocalProtocolError("challenge() called twice")
        self._challenged = True
        return HandshakeChallenge(protocol_version=PROTOCOL_VERSION, cluster_id=self._local.cluster_id,
                                  node_id=self._local.node_id, role=self._local.role,
                                  frame_auth=self._frame_auth.value, nonce=self._nonce)

    def on_hello(self, hello: object) -> HandshakeWelcome:
        """Verify the client's hello. Raises AuthFailed with the reason to log and report."""
        if not self._challenged or self.session is not None:
            raise LocalProtocolError("on_hello() out of order")
        if not isinstance(hello, HandshakeHello):
            raise AuthFailed(f"expected HandshakeHello, got {type(hello).__name__}")
        if hello.cluster_id != self._local.cluster_id:
            raise AuthFailed(f"wrong cluster id {hello.cluster_id!r} (this is {self._local.cluster_id!r})")
        if hello.role not in self._allowed_roles:
            raise AuthFailed(f"role {hello.role!r} not accepted here "
                             f"(accepts {', '.join(sorted(self._allowed_roles))})")
        if hello.nonce == self._nonce:
            raise AuthFailed("client echoed the server nonce (reflection attempt)")
        client = Identity(hello.cluster_id, hello.node_id, hello.role)
        transcript = _transcript(self._local.cluster_id, self._local, client, self._frame_auth.value,
                                 self._nonce, hello.nonce)
        if not hmac.compare_digest(_proof(self._secret, b"client", transcript), hello.proof):
            raise AuthFailed(f"bad proof from {client.node_id!r} (wrong cluster secret, or a replayed handshake)")
        self.session = _session(self._secret, transcript, self._nonce, hello.nonce, client,
                                self._frame_auth, we_are_client=False)
        return HandshakeWelcome(proof=_proof(self._secret, b"server", transcript))


class ClientHandshake:
    """The connecting side. ``on_challenge()`` then ``on_welcome()``; ``session`` after success.

    ``expected_role``: the role the server must have (None: any), so a client that dials an
    MDS address never talks to a chunkserver that took over the port, and vice versa.
    """

    def __init__(self, secret: bytes, local: Identity, nonce: bytes, *, expected_role: str | None,
                 frame_auth: FrameAuth = FrameAuth.HMAC) -> None:
        _check_secret(secret)
        _check_nonce(nonce)
        self._secret = secret
        self._local = local
        self._nonce = nonce
        self._expected_role = expected_role
        self._frame_auth = frame_auth
        self._pending: tuple[bytes, HandshakeChallenge] | None = None
        self.session: Session | None = None

    def on_challenge(self, challenge: object) -> HandshakeHello:
        if self._pending is not None or self.session is not None:
            raise LocalProtocolError("on_challenge() out of order")
        if not isinstance(challenge, HandshakeChallenge):
            raise AuthFailed(f"expected HandshakeChallenge, got {type(challenge).__name__}")
        if challenge.protocol_version != PROTOCOL_VERSION:
            raise AuthFailed(f"server speaks protocol {challenge.protocol_version}, we speak {PROTOCOL_VERSION}")
        if challenge.cluster_id != self._local.cluster_id:
            raise AuthFailed(f"server belongs to cluster {challenge.cluster_id!r}, "
                             f"we belong to {self._local.cluster_id!r}")
        if self._expected_role is not None and challenge.role != self._expected_role:
            raise AuthFailed(f"server {challenge.node_id!r} is a {challenge.role!r}, "
                             f"expected a {self._expected_role!r}")
        if challenge.frame_auth != self._frame_auth.value:
            raise AuthFailed(f"server uses frame_auth={challenge.frame_auth!r}, we use "
                             f"{self._frame_auth.value!r}: set [net] frame_auth alike on every node")
        if challenge.nonce == self._nonce:
            raise AuthFailed("server echoed the client nonce (reflection attempt)")
        server = Identity(challenge.cluster_id, challenge.node_id, challenge.role)
        transcript = _transcript(self._local.cluster_id, server, self._local, self._frame_auth.value,
                                 challenge.nonce, self._nonce)
        self._pending = (transcript, challenge)
        return HandshakeHello(cluster_id=self._local.cluster_id, node_id=self._local.node_id,
                              role=self._local.role, nonce=self._nonce,
                              proof=_proof(self._secret, b"client", transcript))

    def on_welcome(self, welcome: object) -> Session:
        """Verify the server's proof. Raises AuthFailed; RemoteProtocolError out of order."""
        if self._pending is None or self.session is not None:
            raise RemoteProtocolError("HandshakeWelcome out of order")
        if not isinstance(welcome, HandshakeWelcome):
            raise AuthFailed(f"expected HandshakeWelcome, got {type(welcome).__name__}")
        transcript, challenge = self._pending
        if not hmac.compare_digest(_proof(self._secret, b"server", transcript), welcome.proof):
            raise AuthFailed(f"server {challenge.node_id!r} failed to prove the cluster secret")
        server = Identity(challenge.cluster_id, challenge.node_id, challenge.role)
        self.session = _session(self._secret, transcript, challenge.nonce, self._nonce, server,
                                self._frame_auth, we_are_client=True)
        return self.session
