"""Asyncio RPC over framed, authenticated connections: server, router and client.

* ``RpcServer`` accepts connections (with a total and a per-IP cap), authenticates each
  with the cluster handshake, and runs every request frame through a ``Router`` in its own
  task, so requests on one connection are served concurrently and replied to as they
  finish (pipelining). A connection with ``Limits.max_inflight_requests`` requests in
  progress is not read from until one finishes: back-pressure instead of unbounded tasks.
* ``RpcClient`` keeps one connection to one peer, reconnects with jittered backoff, and
  matches replies to requests by request id, so any number of calls may be in flight.
  Every call has a deadline. A broken connection fails the calls in flight with
  ``ConnectionLost`` (retryable: their outcome is unknown; exactly-once is the job of the
  metadata service's client sessions, not of the transport).
* Liveness probe (``probe_after_s``, off by default): while calls are in flight and nothing
  has arrived for ``probe_after_s``, the client sends a Ping (which every ``RpcServer``
  answers from its event loop, before any handler); when nothing at all has arrived for
  ``dead_after_s``, the peer is taken for dead (stopped, cut off, its host gone) and the
  connection is aborted, so the calls in flight fail with ConnectionLost in seconds instead
  of waiting out their deadlines. A slow handler does not trip it (the Ping is answered);
  a peer whose event loop is stopped or unreachable does. Used for the metadata servers,
  where a partitioned or stopped leader must be left quickly (vstore/net/leader.py).

Errors travel as ErrorReply frames and come back out of ``call()`` as the same typed
exception (vstore.errors.from_wire). A handler that crashes is a bug: it is logged with its
traceback and the caller gets ``InternalError``; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from vstore.errors import (ConnectionLost, DeadlineExceeded, NotPermitted, RemoteProtocolError, Unavailable,
                           UnknownMessage, VStoreError, from_wire, to_wire)
from vstore.net.connection import Auth, Connection, Limits
from vstore.wire import ErrorCode, ErrorReply, Frame, Identity, Message, PingReply, PingRequest
from vstore.wire.frames import FLAG_ONEWAY, FLAG_REPLY, MAX_REQUEST_ID

log = logging.getLogger(__name__)

#: how a connection closed by the liveness probe says so (ConnectionLost details: peer_silent)
SILENT_REASON = "nothing received"


@dataclass(frozen=True, slots=True)
class Reply:
    """What a handler returns, and what ``RpcClient.call`` gives back."""

    message: Message
    payload: bytes | memoryview = b""


@dataclass(frozen=True, slots=True)
class RequestContext:
    peer: Identity
    peer_address: str
    request_id: int
    connection: Connection
    #: the request payload's digest as its frame MAC checked it: pass it on with the same
    #: payload (``RpcClient.call(payload_digest=...)``) to spare the MAC a pass over it
    payload_digest: bytes | None = None


Handler = Callable[[RequestContext, Message, bytes], Awaitable["Reply | Message | None"]]


@dataclass(frozen=True, slots=True)
class _Route:
    handler: Handler
    roles: frozenset[str] | None


@dataclass
class Router:
    """Message type -> handler, with the peer roles allowed to send it (None: any)."""

    _routes: dict[int, _Route] = field(default_factory=dict)

    def add(self, request_cls: type[Message], handler: Handler, *, roles: frozenset[str] | None = None) -> None:
        key = int(request_cls.TYPE)
        if key in self._routes:
            raise ValueError(f"{request_cls.__name__} already has a handler")
        self._routes[key] = _Route(handler, roles)

    def route(self, msg_type: int) -> _Route | None:
        return self._routes.get(msg_type)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> tuple[str, int]:
    """(host, port) of an address as ``format_address`` writes it ("h:p" or "[v6]:p")."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class _ServerConnection(Connection):
    def __init__(self, server: RpcServer) -> None:
        super().__init__(server.limits)
        self.server = server
        self.inflight = 0
        self.peer_ip = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if isinstance(peer, tuple) else "?"
        self.server._accept(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.server._forget(self)


class RpcServer:
    """Serves a Router on one TCP address. ``start()``, then ``close()`` (closes everything)."""

    def __init__(self, router: Router, auth: Auth, *, allowed_roles: frozenset[str], limits: Limits = Limits(),
                 max_connections: int = 4096, max_connections_per_ip: int = 256,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.router = router
        self.auth = auth
        self.allowed_roles = allowed_roles
        self.limits = limits
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.ssl_context = ssl_context
        self._server: asyncio.Server | None = None
        self._connections: set[_ServerConnection] = set()
        self._per_ip: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] | None = None
        #: Counters an operator (and the tests) read: refused connections by reason.
        self.stats: dict[str, int] = {"accepted": 0, "authenticated": 0, "refused_auth": 0,
                                      "refused_limit": 0, "protocol_errors": 0, "requests": 0}

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port (port 0 picks a free one). Returns the bound address."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServerConnection(self), host, port,
                                                ssl=self.ssl_context, reuse_address=True,
                                                ssl_handshake_timeout=self.limits.handshake_timeout_s
                                                if self.ssl_context else None)
        sockname = self._server.sockets[0].getsockname()
        self.address = (str(sockname[0]), int(sockname[1]))
        log.info("net.listening", extra={"address": format_address(*self.address), "tls": self.ssl_context is not None})
        return self.address

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def close(self) -> None:
        """Stop listening, close every connection, wait for request tasks (reverse order of start)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort("server shutting down")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # ---- connection lifecycle -------------------------------------------------------------

    def _accept(self, conn: _ServerConnection) -> None:
        self.stats["accepted"] += 1
        count_ip = self._per_ip.get(conn.peer_ip, 0)
        if len(self._connections) >= self.max_connections or count_ip >= self.max_connections_per_ip:
            self.stats["refused_limit"] += 1
            which = "total" if len(self._connections) >= self.max_connections else f"from {conn.peer_ip}"
            conn.send(ErrorReply(code=int(ErrorCode.BUSY), message=f"too many connections {which}"),
                      0, flags=FLAG_REPLY)
            conn.abort(f"connection limit reached ({which})", level=logging.WARNING)
            return
        self._connections.add(conn)
        self._per_ip[conn.peer_ip] = count_ip + 1
        self._spawn(self._serve(conn))

    def _forget(self, conn: _ServerConnection) -> None:
        if conn in self._connections:
            self._connections.discard(conn)
            left = self._per_ip.get(conn.peer_ip, 1) - 1
            if left:
                self._per_ip[conn.peer_ip] = left
            else:
                self._per_ip.pop(conn.peer_ip, None)
        if conn.close_reason and conn.close_reason.startswith("protocol error"):
            self.stats["protocol_errors"] += 1

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: _ServerConnection) -> None:
        try:
            session = await conn.handshake_as_server(self.auth, self.allowed_roles)
        except VStoreError as exc:
            if exc.code == ErrorCode.AUTH_FAILED:
                self.stats["refused_auth"] += 1
            return
        self.stats["authenticated"] += 1
        conn.on_frame = lambda frame: self._on_frame(conn, session.peer, frame)

    def _on_frame(self, conn: _ServerConnection, peer: Identity, frame: Frame) -> None:
        if frame.is_reply:
            conn.abort(f"protocol error: unexpected reply frame (request id {frame.request_id})",
                       level=logging.WARNING)
            return
        self.stats["requests"] += 1
        conn.inflight += 1
        if conn.inflight >= self.limits.max_inflight_requests:
            conn.pause_reading()
        self._spawn(self._handle(conn, peer, frame))

    async def _handle(self, conn: _ServerConnection, peer: Identity, frame: Frame) -> None:
        reply: Reply | None
        try:
            reply = await self._call_handler(conn, peer, frame)
        except VStoreError as exc:
            if frame.is_oneway:
                log.info("net.oneway_failed", extra={"peer_node": peer.node_id, "message_type": type(frame.message).__name__,
                                                     "error": f"{exc.code.name}: {exc.message}"})
            reply = Reply(to_wire(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a handler bug: log it, answer INTERNAL, keep serving
            log.exception("net.handler_crashed", extra={"peer_node": peer.node_id,
                                                        "message_type": type(frame.message).__name__})
            reply = Reply(ErrorReply(code=int(ErrorCode.INTERNAL),
                                     message=f"{type(frame.message).__name__} handler failed: "
                                             f"{type(exc).__name__}: {exc}"[:4096]))
        finally:
            conn.inflight -= 1
            if conn.inflight < self.limits.max_inflight_requests:
                conn.resume_reading()
        if frame.is_oneway or reply is None or not conn.is_open:
            return
        conn.touch()
        try:
            conn.send(reply.message, frame.request_id, flags=FLAG_REPLY, payload=reply.payload)
            await conn.drain()
        except ConnectionLost:
            pass

    async def _call_handler(self, conn: _ServerConnection, peer: Identity, frame: Frame) -> Reply | None:
        route = self.router.route(frame.msg_type)
        name = type(frame.message).__name__
        if route is None and isinstance(frame.message, PingRequest):  # the liveness probe, on every server
            identity = self.auth.identity
            return Reply(PingReply(node_id=identity.node_id, role=identity.role), frame.payload)
        if route is None:
            raise UnknownMessage(f"{name} is not served by this {self.auth.identity.role}")
        if route.roles is not None and peer.role not in route.roles:
            raise NotPermitted(f"{name} may not be sent by a {peer.role!r} node")
        ctx = RequestContext(peer, conn.peer_address, frame.request_id, conn, frame.payload_digest)
        result = await route.handler(ctx, frame.message, frame.payload)
        if result is None or isinstance(result, Reply):
            return result
        return Reply(result)


class RpcClient:
    """Calls to one peer over one reconnecting, authenticated connection.

    ``expected_role``: the role the server must prove (None: any).
    """

    def __init__(self, address: tuple[str, int], auth: Auth, *, expected_role: str | None,
                 limits: Limits = Limits(), ssl_context: ssl.SSLContext | None = None,
                 default_deadline_s: float = 30.0, reconnect_backoff_s_max: float = 2.0,
                 rng: random.Random | None = None, probe_after_s: float | None = None,
                 dead_after_s: float = 3.0) -> None:
        self.address = address
        self.auth = auth
        self.expected_role = expected_role
        self.limits = limits
        self.ssl_context = ssl_context
        self.default_deadline_s = default_deadline_s
        self.reconnect_backoff_s_max = reconnect_backoff_s_max
        self._rng = rng or random.Random()
        self._conn: Connection | None = None
        self._connecting: asyncio.Future[Connection] | None = None
        # request id -> (connection it was sent on, its future)
        self._pending: dict[int, tuple[Connection, asyncio.Future[Reply]]] = {}
        self._next_request_id = 1
        self._backoff_s = 0.0
        self._next_attempt_at = 0.0
        self._closed = False
        self.peer: Identity | None = None
        self.name = format_address(*address)
        if probe_after_s is not None and not 0 < probe_after_s < dead_after_s:
            raise ValueError("probe_after_s must be > 0 and below dead_after_s")
        self.probe_after_s = probe_after_s
        self.dead_after_s = dead_after_s
        self._watchdog: asyncio.TimerHandle | None = None
        self._probe: asyncio.Future[Reply] | None = None
        self.stats = {"probes": 0, "declared_dead": 0}

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_open

    async def call(self, msg: Message, payload: bytes | bytearray | memoryview = b"", *,
                   deadline_s: float | None = None, payload_digest: bytes | None = None) -> Reply:
        """Send a request and wait for its reply. Raises the peer's typed error,
        DeadlineExceeded, ConnectionLost (in flight when the link broke), Unavailable
        (could not connect) or AuthFailed."""
        deadline = self.default_deadline_s if deadline_s is None else deadline_s
        request_id = self._take_request_id()
        try:
            async with asyncio.timeout(deadline):
                conn = await self._connection()
                future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
                self._pending[request_id] = (conn, future)
                if self.probe_after_s is not None and self._watchdog is None:
                    self._watch_from(conn)
                conn.send(msg, request_id, payload=payload, payload_digest=payload_digest)
                if len(payload) > 65536:
                    await conn.drain()
                return await future
        except TimeoutError:
            raise DeadlineExceeded(f"{type(msg).__name__} to {self.name}: no reply within {deadline:g} s",
                                   details={"peer_silent": 1}) from None
        finally:
            self._pending.pop(request_id, None)

    async def send_oneway(self, msg: Message, payload: bytes | memoryview = b"", *,
                          deadline_s: float | None = None) -> None:
        """Send a request that wants no reply (delivery is not confirmed)."""
        deadline = self.default_deadline_s if deadline_s is None else deadline_s
        try:
            async with asyncio.timeout(deadline):
                conn = await self._connection()
                conn.send(msg, self._take_request_id(), flags=FLAG_ONEWAY, payload=payload)
                await conn.drain()
        except TimeoutError:
            raise DeadlineExceeded(f"{type(msg).__name__} to {self.name}: not sent within {deadline:g} s") from None

    async def close(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._conn is not None:
            await self._conn.close("client closed")
        self._fail_pending(ConnectionLost(f"client to {self.name} closed"))

    # ---- internals --------------------------------------------------------------------------

    def _watch_from(self, conn: Connection) -> None:
        """Start watching ``conn`` for silence (calls just began to be in flight on it)."""
        loop = asyncio.get_running_loop()
        assert self.probe_after_s is not None
        self._watchdog = loop.call_later(self.probe_after_s / 2, self._watch, conn, loop.time())

    def _watch(self, conn: Connection, since: float) -> None:
        self._watchdog = None
        loop = asyncio.get_running_loop()
        if self._conn is not conn:  # reconnected meanwhile: watch the new connection afresh
            if self._conn is None:
                return
            conn, since = self._conn, loop.time()
        if not conn.is_open or not any(c is conn for c, _ in self._pending.values()):
            return  # nothing in flight there any more: the next call starts a new watch
        assert self.probe_after_s is not None
        quiet_s = loop.time() - max(conn.last_received, since)
        if quiet_s >= self.dead_after_s:
            self.stats["declared_dead"] += 1
            conn.abort(f"{SILENT_REASON} for {quiet_s:.1f} s with calls in flight (a probe went unanswered)",
                       level=logging.INFO)
            return
        if quiet_s >= self.probe_after_s and (self._probe is None or self._probe.done()):
            self.stats["probes"] += 1
            self._probe = asyncio.ensure_future(self.call(PingRequest(), deadline_s=self.dead_after_s))
            self._probe.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._watchdog = loop.call_later(self.probe_after_s / 2, self._watch, conn, since)

    def _take_request_id(self) -> int:
        request_id = self._next_request_id
        self._next_request_id = 1 if request_id >= MAX_REQUEST_ID else request_id + 1
        return request_id

    async def _connection(self) -> Connection:
        if self._closed:
            raise ConnectionLost(f"client to {self.name} is closed")
        if self._conn is not None and self._conn.is_open:
            return self._conn
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
            # Every waiter may have hit its deadline; retrieve the outcome so a failed connect
            # is not reported as "exception never retrieved".
            self._connecting.add_done_callback(lambda f: f.cancelled() or f.exception())
        # shield: one caller's deadline must not cancel the connect other callers share
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        wait_s = self._next_attempt_at - loop.time()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        host, port = self.address
        try:
            async with asyncio.timeout(self.limits.handshake_timeout_s):
                _, conn = await loop.create_connection(lambda: Connection(self.limits), host, port,
                                                       ssl=self.ssl_context,
                                                       server_hostname=host if self.ssl_context else None)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._note_failure(loop)
            raise Unavailable(f"cannot connect to {self.name}: {exc or type(exc).__name__}",
                              details={"peer_silent": 1}) from None
        try:
            session = await conn.handshake_as_client(self.auth, self.expected_role)
        except VStoreError as exc:
            self._note_failure(loop)
            if exc.code == ErrorCode.AUTH_FAILED:
                log.warning("net.auth_failed", extra={"peer": self.name, "reason": exc.message})
            raise
        self._backoff_s = 0.0
        self.peer = session.peer
        conn.on_frame = lambda frame: self._on_frame(conn, frame)
        conn.closed.add_done_callback(lambda _f: self._on_closed(conn))
        self._conn = conn
        return conn

    def _note_failure(self, loop: asyncio.AbstractEventLoop) -> None:
        self._backoff_s = min(self.reconnect_backoff_s_max, max(0.05, self._backoff_s * 2))
        self._next_attempt_at = loop.time() + self._backoff_s * (0.5 + self._rng.random() / 2)

    def _on_frame(self, conn: Connection, frame: Frame) -> None:
        if not frame.is_reply:
            conn.abort(f"protocol error: {type(frame.message).__name__} request from a server",
                       level=logging.WARNING)
            return
        entry = self._pending.pop(frame.request_id, None)
        if entry is None or entry[0] is not conn or entry[1].done():
            return  # the caller gave up (deadline) before the reply came
        future = entry[1]
        if isinstance(frame.message, ErrorReply):
            future.set_exception(from_wire(frame.message))
        else:
            future.set_result(Reply(frame.message, frame.payload))

    def _on_closed(self, conn: Connection) -> None:
        if self._conn is conn:
            self._conn = None
        silent = bool(conn.close_reason and conn.close_reason.startswith(SILENT_REASON))
        self._fail_pending(ConnectionLost(f"connection to {self.name} lost with the request in flight "
                                          f"({conn.close_reason})", details={"peer_silent": 1} if silent else {}),
                           conn)

    def _fail_pending(self, exc: VStoreError, conn: Connection | None = None) -> None:
        """Fail the calls in flight on ``conn`` (all of them when None)."""
        for request_id, (sent_on, future) in list(self._pending.items()):
            if conn is None or sent_on is conn:
                del self._pending[request_id]
                if not future.done():
                    future.set_exception(exc)


class RpcClients:
    """One ``RpcClient`` per peer address ("host:port"), made on first use with the same
    settings, all closed together: the connection cache every component that talks to many
    peers keeps. Peer links are probed for liveness by default (see ``RpcClient``): a peer
    that stops answering (SIGSTOP, a partition) is left in ``dead_after_s``, not at the end
    of each call's deadline."""

    def __init__(self, auth: Auth, *, expected_role: str | None, limits: Limits = Limits(),
                 default_deadline_s: float = 30.0, reconnect_backoff_s_max: float = 0.5,
                 probe_after_s: float | None = 1.0, dead_after_s: float = 3.0) -> None:
        self.auth = auth
        self._settings = dict(expected_role=expected_role, limits=limits, default_deadline_s=default_deadline_s,
                              reconnect_backoff_s_max=reconnect_backoff_s_max, probe_after_s=probe_after_s,
                              dead_after_s=dead_after_s)
        self._clients: dict[str, RpcClient] = {}

    def get(self, address: str) -> RpcClient:
        client = self._clients.get(address)
        if client is None:
            client = RpcClient(parse_address(address), self.auth, **self._settings)  # type: ignore[arg-type]
            self._clients[address] = client
        return client

    def __contains__(self, address: str) -> bool:
        return address in self._clients

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


__all__ = ["Auth", "Handler", "Limits", "Reply", "RequestContext", "Router", "RpcClient", "RpcClients", "RpcServer",
           "RemoteProtocolError", "format_address"]
