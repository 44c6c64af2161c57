"""One framed, authenticated TCP connection: the asyncio shell around ``vstore.wire``.

Owns: the transport, the frame decoder, the handshake exchange, per-frame MACs, write
back-pressure, the per-frame read deadline (slowloris) and the idle deadline. It does not
know what the frames mean: ``vstore.net.rpc`` (requests, replies, dispatch) sits on top.

Concurrency: everything here runs on the event loop thread. ``send()`` is synchronous: it
computes the frame's MAC and hands the bytes to the transport in one go, so frames leave in
exactly the order their sequence numbers were assigned, whichever task sends them.
Callers that send bulk data ``await drain()`` to respect the peer's pace.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vstore.errors import (AuthFailed, ConnectionLost, DeadlineExceeded, RemoteProtocolError, UsageError, VStoreError,
                           from_wire, to_wire)
from vstore.wire import (ClientHandshake, ErrorReply, Frame, FrameAuth, FrameDecoder, FrameMac, Identity, Message,
                         ServerHandshake, Session, encode_frame)
from vstore.wire.frames import FLAG_REPLY
from vstore.wire.handshake import SECRET_BYTES

log = logging.getLogger(__name__)

#: Below this size a frame's pieces are joined and written with one send(); above it the
#: payload is handed over separately so a 16 MiB payload is not copied to prepend 24 bytes.
_JOIN_BELOW_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Deadlines and bounds of one connection (from the node's [net] config)."""

    handshake_timeout_s: float = 5.0
    frame_read_timeout_s: float = 30.0
    idle_timeout_s: float = 900.0
    #: Requests one connection may have in progress before we stop reading from it.
    max_inflight_requests: int = 256


def limits_of(net: object) -> Limits:
    """The Limits of a config's [net] section (``vstore.config.NetSection``)."""
    return Limits(handshake_timeout_s=getattr(net, "handshake_timeout_ms") / 1000,
                  frame_read_timeout_s=getattr(net, "frame_read_timeout_ms") / 1000,
                  idle_timeout_s=float(getattr(net, "idle_timeout_s")))


@dataclass(frozen=True, slots=True)
class Auth:
    """What a node needs to authenticate connections: the secret and who it is."""

    secret: bytes
    identity: Identity
    frame_auth: FrameAuth = FrameAuth.HMAC


def read_secret_file(path: str) -> bytes:
    """The cluster secret: exactly SECRET_BYTES bytes in a file only its owner may read.
    Raises UsageError (one line: the file and what is wrong) otherwise."""
    try:
        st = os.stat(path)
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the cluster secret {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"cluster secret {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                         f"chmod 600 it")
    if len(data) != SECRET_BYTES:
        raise UsageError(f"cluster secret {path} holds {len(data)} bytes, expected {SECRET_BYTES}")
    return data


class Connection(asyncio.BufferedProtocol):
    """A framed connection. Create with ``connect()`` (client) or via RpcServer (server)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.transport: asyncio.Transport | None = None
        self.peer_address: str = "?"
        self.session: Session | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.close_reason: str | None = None
        self.on_frame: Callable[[Frame], None] | None = None
        self._decoder = FrameDecoder(pre_auth=True)
        self._send_mac: FrameMac | None = None
        self._handshake_frames: asyncio.Queue[Frame] = asyncio.Queue(maxsize=4)
        self._write_ready = asyncio.Event()
        self._write_ready.set()
        self._loop = asyncio.get_running_loop()
        self._frame_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_activity = self._loop.time()
        #: when bytes last arrived from the peer (RpcClient's liveness probe reads it)
        self.last_received = self._last_activity
        self._reading_paused = False

    # ---- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer_address = f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
        self._arm_idle_timer()

    def get_buffer(self, sizehint: int) -> memoryview:
        # A failed decoder raises here; the connection was aborted already, so the transport
        # gets a buffer to drop and the next callback is connection_lost.
        try:
            return self._decoder.get_buffer()
        except RemoteProtocolError:
            return memoryview(bytearray(4096))

    def buffer_updated(self, nbytes: int) -> None:
        self._received(lambda: self._decoder.buffer_updated(nbytes))

    def data_received(self, data: bytes) -> None:
        """The plain-Protocol entry (transports that do not receive into buffers)."""
        self._received(lambda: self._decoder.feed(data))

    def _received(self, take: Callable[[], None]) -> None:
        self._last_activity = self.last_received = self._loop.time()
        completed_before = self._decoder.frames_decoded
        try:
            take()
            while (frame := self._decoder.next_frame()) is not None:
                if self.session is None:
                    if self._handshake_frames.full():
                        raise RemoteProtocolError("too many frames during the handshake")
                    self._handshake_frames.put_nowait(frame)
                elif self.on_frame is not None:
                    self.on_frame(frame)
                if self.transport is None or self.transport.is_closing():
                    return
        except RemoteProtocolError as exc:
            self.abort(f"protocol error: {exc.message}", level=logging.WARNING)
            return
        self._update_frame_timer(restart=self._decoder.frames_decoded != completed_before)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_reason is None:
            self.close_reason = f"connection lost: {exc}" if exc else "closed by peer"
        for timer in (self._frame_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._write_ready.set()
        if not self.closed.done():
            self.closed.set_result(self.close_reason)

    def pause_writing(self) -> None:
        self._write_ready.clear()

    def resume_writing(self) -> None:
        self._write_ready.set()

    # ---- sending ------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and not self.closed.done()

    def send(self, msg: Message, request_id: int, *, flags: int = 0, payload: bytes | bytearray | memoryview = b"",
             payload_digest: bytes | None = None) -> None:
        """Queue one frame for sending. Raises ConnectionLost if the connection is closed.
        ``payload_digest``: see ``encode_frame``."""
        if not self.is_open:
            raise ConnectionLost(f"connection to {self.peer_address} is closed ({self.close_reason})")
        assert self.transport is not None
        parts = encode_frame(msg, request_id, flags=flags, payload=payload, mac=self._send_mac,
                             payload_digest=payload_digest)
        if len(parts) == 1:
            self.transport.write(parts[0])
        elif sum(len(p) for p in parts) < _JOIN_BELOW_BYTES:
            self.transport.write(b"".join(parts))
        else:
            for part in parts:
                self.transport.write(part)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        await self._write_ready.wait()
        if not self.is_open:
            raise ConnectionLost(f"connection to {self.peer_address} is closed ({self.close_reason})")

    # ---- closing ------------------------------------------------------------------------

    def abort(self, reason: str, *, level: int = logging.INFO) -> None:
        """Close now, dropping unsent data, and log why (once)."""
        if self.close_reason is None:
            self.close_reason = reason
            log.log(level, "net.connection_closed", extra={"peer": self.peer_address, "reason": reason,
                                                           "peer_node": self.session.peer.node_id if self.session else None})
        if self.transport is not None:
            self.transport.abort()

    async def close(self, reason: str = "closed by us") -> None:
        """Close after flushing what is queued."""
        if self.close_reason is None:
            self.close_reason = reason
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        try:
            async with asyncio.timeout(self.limits.handshake_timeout_s):
                await asyncio.shield(self.closed)
        except TimeoutError:
            if self.transport is not None:
                self.transport.abort()

    # ---- flow control for servers ------------------------------------------------------

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.transport.is_closing():
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.transport.is_closing():
            self._reading_paused = False
            self.transport.resume_reading()

    # ---- handshake ----------------------------------------------------------------------

    async def _next_handshake_frame(self) -> Frame:
        getter = asyncio.ensure_future(self._handshake_frames.get())
        try:
            done, _ = await asyncio.wait({getter, self.closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter in done:
            frame = getter.result()
            if isinstance(frame.message, ErrorReply):
                raise from_wire(frame.message)
            return frame
        raise ConnectionLost(f"{self.peer_address} closed the connection during the handshake "
                             f"({self.close_reason})")

    def _authenticated(self, session: Session) -> None:
        self.session = session
        self._send_mac = session.send_mac()
        self._decoder.authenticated(session.recv_mac())

    async def handshake_as_server(self, auth: Auth, allowed_roles: frozenset[str]) -> Session:
        """Run the server side of the handshake within the handshake deadline.

        On failure the peer gets an ErrorReply with the reason, the connection is closed,
        the reason is logged, and AuthFailed / ConnectionLost / DeadlineExceeded is raised.
        """
        hs = ServerHandshake(auth.secret, auth.identity, secrets.token_bytes(32),
                             allowed_roles=allowed_roles, frame_auth=auth.frame_auth)
        try:
            async with asyncio.timeout(self.limits.handshake_timeout_s):
                self.send(hs.challenge(), 0)
                frame = await self._next_handshake_frame()
                welcome = hs.on_hello(frame.message)
                self.send(welcome, frame.request_id, flags=FLAG_REPLY)
        except TimeoutError:
            self._refuse(f"no handshake within {self.limits.handshake_timeout_s:g} s", None)
            raise DeadlineExceeded(f"handshake with {self.peer_address} timed out",
                                   details={"peer_silent": 1}) from None
        except AuthFailed as exc:
            self._refuse(f"authentication failed: {exc.message}", exc)
            raise
        except VStoreError as exc:
            self._refuse(f"handshake failed: {exc.message}", None)
            raise
        assert hs.session is not None
        self._authenticated(hs.session)
        log.debug("net.peer_authenticated", extra={"peer": self.peer_address, "peer_node": hs.session.peer.node_id,
                                                   "peer_role": hs.session.peer.role})
        return hs.session

    def _refuse(self, reason: str, exc: AuthFailed | None) -> None:
        if exc is not None and self.is_open:
            # Tell the peer why (an operator with a wrong secret deserves a clear message);
            # the pre-auth frame limit is 256 bytes, so the reason is cut to fit.
            reply = to_wire(exc)
            self.send(ErrorReply(code=reply.code, message=reply.message[:160]), 0, flags=FLAG_REPLY)
            if self.transport is not None:
                self.transport.close()
            if self.close_reason is None:
                self.close_reason = reason
                log.warning("net.connection_refused", extra={"peer": self.peer_address, "reason": reason})
        else:
            self.abort(reason, level=logging.WARNING)

    async def handshake_as_client(self, auth: Auth, expected_role: str | None) -> Session:
        hs = ClientHandshake(auth.secret, auth.identity, secrets.token_bytes(32),
                             expected_role=expected_role, frame_auth=auth.frame_auth)
        try:
            async with asyncio.timeout(self.limits.handshake_timeout_s):
                challenge = await self._next_handshake_frame()
                hello = hs.on_challenge(challenge.message)
                self.send(hello, 1)
                welcome = await self._next_handshake_frame()
                session = hs.on_welcome(welcome.message)
        except TimeoutError:
            self.abort(f"no handshake within {self.limits.handshake_timeout_s:g} s", level=logging.WARNING)
            raise DeadlineExceeded(f"handshake with {self.peer_address} timed out",
                                   details={"peer_silent": 1}) from None
        except VStoreError as exc:
            # The caller (RpcClient) raises this to whoever asked for the connection and
            # logs authentication failures once; no second warning here.
            self.abort(f"handshake failed: {exc.message}", level=logging.DEBUG)
            raise
        self._authenticated(session)
        return session

    # ---- deadlines ----------------------------------------------------------------------

    def _update_frame_timer(self, *, restart: bool) -> None:
        """Arm the read deadline when a frame has started; a completed frame restarts it."""
        if restart and self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None
        if self._decoder.in_frame:
            if self._frame_timer is None:
                self._frame_timer = self._loop.call_later(self.limits.frame_read_timeout_s, self._frame_timeout)
        elif self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None

    def _frame_timeout(self) -> None:
        self._frame_timer = None
        if self._decoder.in_frame:
            self.abort(f"frame not completed within {self.limits.frame_read_timeout_s:g} s "
                       f"({self._decoder.buffered_bytes} bytes buffered)", level=logging.WARNING)

    def _arm_idle_timer(self, delay_s: float | None = None) -> None:
        self._idle_timer = self._loop.call_later(delay_s or self.limits.idle_timeout_s, self._idle_check)

    def _idle_check(self) -> None:
        idle_s = self._loop.time() - self._last_activity
        if idle_s >= self.limits.idle_timeout_s:
            self._idle_timer = None
            self.abort(f"idle for {idle_s:.0f} s")
        else:
            self._arm_idle_timer(self.limits.idle_timeout_s - idle_s)

    def touch(self) -> None:
        """Count outgoing activity (a request in progress keeps the connection alive)."""
        self._last_activity = self._loop.time()
