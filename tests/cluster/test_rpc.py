"""RPC over real sockets on 127.0.0.1: authentication failures are refused and logged with
their reason while the server keeps serving; pipelining, deadlines, reconnects, limits,
slow and malformed peers (RELIABILITY.md F21-F23)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from tests.harness.wait import wait_for
from vstore.errors import (AuthFailed, Busy, ConnectionLost, DeadlineExceeded, InternalError, NotFound,
                           NotPermitted, Unavailable, UnknownMessage)
from vstore.net import Auth, Limits, Reply, RequestContext, Router, RpcClient, RpcServer
from vstore.wire import (ClientHandshake, ErrorReply, FrameAuth, FrameDecoder, Identity, Message, PingReply,
                         PingRequest, encode_frame_bytes)
from vstore.wire.frames import HEADER, MAGIC, PROTOCOL_VERSION
from vstore.wire.messages import MsgType

SECRET = secrets.token_bytes(32)
CLUSTER = "11111111-2222-3333-4444-555555555555"
SERVER_ID = Identity(CLUSTER, "mds-1", "mds")
LIMITS = Limits(handshake_timeout_s=1.0, frame_read_timeout_s=1.0, idle_timeout_s=30.0, max_inflight_requests=64)


class Harness:
    def __init__(self, server: RpcServer, address: tuple[str, int]) -> None:
        self.server = server
        self.address = address
        self.clients: list[RpcClient] = []

    def client(self, *, secret: bytes = SECRET, cluster: str = CLUSTER, node: str = "cli-1", role: str = "client",
               expected_role: str | None = "mds", frame_auth: FrameAuth = FrameAuth.HMAC, **kw) -> RpcClient:
        client = RpcClient(self.address, Auth(secret, Identity(cluster, node, role), frame_auth),
                           expected_role=expected_role, limits=LIMITS, **kw)
        self.clients.append(client)
        return client

    async def ping(self) -> Reply:
        client = self.client(node="probe")
        return await client.call(PingRequest(), b"alive", deadline_s=5)


def _router() -> Router:
    router = Router()

    async def ping(ctx: RequestContext, msg: Message, payload: bytes) -> Reply:
        # A payload starting with "sleep:N" makes the reply wait N ms (out-of-order replies).
        if payload.startswith(b"sleep:"):
            await asyncio.sleep(int(payload[6:].split(b";")[0]) / 1000)
        if payload == b"crash":
            raise ZeroDivisionError("handler bug on purpose")
        if payload == b"notfound":
            raise NotFound("no such thing", details={"inode": 42})
        return Reply(PingReply(node_id="mds-1", role=ctx.peer.role), payload)

    router.add(PingRequest, ping)
    return router


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    server = RpcServer(_router(), Auth(SECRET, SERVER_ID), allowed_roles=frozenset({"client", "mds", "cs"}),
                       limits=LIMITS, max_connections=64, max_connections_per_ip=16)
    address = await server.start("127.0.0.1", 0)
    h = Harness(server, address)
    yield h
    for client in h.clients:
        await client.close()
    await server.close()


async def test_an_authenticated_client_calls_and_gets_the_payload_back(harness: Harness) -> None:
    client = harness.client()
    reply = await client.call(PingRequest(), b"hello")
    assert reply.message == PingReply(node_id="mds-1", role="client") and reply.payload == b"hello"
    assert client.peer == SERVER_ID


@pytest.mark.parametrize("frame_auth", [FrameAuth.HMAC, FrameAuth.NONE])
async def test_one_mebibyte_payloads_round_trip_intact(frame_auth: FrameAuth) -> None:
    server = RpcServer(_router(), Auth(SECRET, SERVER_ID, frame_auth), allowed_roles=frozenset({"client"}))
    address = await server.start("127.0.0.1", 0)
    client = RpcClient(address, Auth(SECRET, Identity(CLUSTER, "c", "client"), frame_auth), expected_role="mds")
    try:
        data = secrets.token_bytes(1 << 20)
        replies = await asyncio.gather(*(client.call(PingRequest(), data[i:] + data[:i]) for i in range(8)))
        assert [r.payload for r in replies] == [data[i:] + data[:i] for i in range(8)]
    finally:
        await client.close()
        await server.close()


async def test_a_client_with_the_wrong_secret_is_refused_logged_and_others_are_served(harness, expect_log) -> None:
    expect_log("net.connection_refused")
    expect_log("net.auth_failed")
    good = harness.client()
    await good.call(PingRequest())
    bad = harness.client(secret=secrets.token_bytes(32), node="intruder")
    with pytest.raises(AuthFailed, match="bad proof from 'intruder'"):
        await bad.call(PingRequest())
    assert harness.server.stats["refused_auth"] == 1
    assert (await good.call(PingRequest(), b"still")).payload == b"still"  # same connection still works
    assert (await harness.ping()).payload == b"alive"                       # and new ones too


async def test_a_client_of_another_cluster_is_refused_with_the_reason(harness, expect_log, caplog) -> None:
    expect_log("net.auth_failed")
    bad = harness.client(cluster="99999999-0000-0000-0000-000000000000")
    with pytest.raises(AuthFailed, match="server belongs to cluster"):
        await bad.call(PingRequest())
    assert (await harness.ping()).payload == b"alive"


async def test_the_server_logs_a_wrong_cluster_id_it_receives(harness, expect_log, caplog) -> None:
    expect_log("net.connection_refused")
    reader, writer = await asyncio.open_connection(*harness.address)
    try:
        decoder = FrameDecoder(pre_auth=True)
        challenge = await _read_frame(reader, decoder)
        hs = ClientHandshake(SECRET, Identity(CLUSTER, "x", "client"), secrets.token_bytes(32), expected_role=None)
        hello = hs.on_challenge(challenge.message)
        forged = type(hello)(cluster_id="other-cluster", node_id="x", role="client", nonce=hello.nonce,
                             proof=hello.proof)
        writer.write(encode_frame_bytes(forged, 1))
        reply = await _read_frame(reader, decoder)
        assert isinstance(reply.message, ErrorReply) and "wrong cluster id 'other-cluster'" in reply.message.message
        assert await reader.read() == b""  # and the server closed the connection
    finally:
        writer.close()
    assert any("wrong cluster id" in getattr(r, "reason", "") for r in caplog.records)
    assert (await harness.ping()).payload == b"alive"


async def _read_frame(reader: asyncio.StreamReader, decoder: FrameDecoder):
    while (frame := decoder.next_frame()) is None:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, "connection closed"
        decoder.feed(data)
    return frame


async def test_a_replayed_handshake_transcript_is_refused(harness, expect_log, caplog) -> None:
    expect_log("net.connection_refused")
    # Record a legitimate client's handshake bytes on one connection...
    reader, writer = await asyncio.open_connection(*harness.address)
    decoder = FrameDecoder(pre_auth=True)
    hs = ClientHandshake(SECRET, Identity(CLUSTER, "cli-9", "client"), secrets.token_bytes(32), expected_role="mds")
    hello_bytes = encode_frame_bytes(hs.on_challenge((await _read_frame(reader, decoder)).message), 1)
    writer.write(hello_bytes)
    hs.on_welcome((await _read_frame(reader, decoder)).message)  # that one succeeded
    writer.close()
    # ...and replay them on a new one, as an eavesdropper without the secret would.
    reader, writer = await asyncio.open_connection(*harness.address)
    try:
        decoder = FrameDecoder(pre_auth=True)
        await _read_frame(reader, decoder)  # a fresh challenge, ignored by the replayer
        writer.write(hello_bytes)
        reply = await _read_frame(reader, decoder)
        assert isinstance(reply.message, ErrorReply) and "bad proof" in reply.message.message
        assert await reader.read() == b""
    finally:
        writer.close()
    assert any("replayed" in getattr(r, "reason", "") for r in caplog.records)
    assert (await harness.ping()).payload == b"alive"


async def test_a_request_without_a_handshake_is_refused_and_closed(harness, expect_log, caplog) -> None:
    expect_log("net.connection_closed")
    reader, writer = await asyncio.open_connection(*harness.address)
    try:
        writer.write(encode_frame_bytes(PingRequest(), 1))
        while await asyncio.wait_for(reader.read(65536), 5):
            pass  # the challenge, then EOF
    finally:
        writer.close()
    assert any("PingRequest before the handshake completed" in getattr(r, "reason", "") for r in caplog.records)
    assert (await harness.ping()).payload == b"alive"


async def test_a_silent_peer_is_dropped_at_the_handshake_deadline(harness, expect_log, caplog) -> None:
    expect_log("net.connection_closed")
    reader, writer = await asyncio.open_connection(*harness.address)
    try:
        data = b""
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            data += chunk
        assert data.startswith(MAGIC)  # it got the challenge, said nothing, and was cut off
    finally:
        writer.close()
    assert any("no handshake within 1 s" in getattr(r, "reason", "") for r in caplog.records)


async def test_garbage_bytes_close_only_that_connection(harness, expect_log, caplog) -> None:
    expect_log("net.connection_closed")
    client = harness.client()
    await client.call(PingRequest())
    reader, writer = await asyncio.open_connection(*harness.address)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while await asyncio.wait_for(reader.read(65536), 5):
            pass
    finally:
        writer.close()
    assert any("bad magic" in getattr(r, "reason", "") for r in caplog.records)
    assert (await client.call(PingRequest(), b"ok")).payload == b"ok"


async def test_an_oversized_frame_header_is_refused_at_once(harness, expect_log, caplog) -> None:
    expect_log("net.connection_closed", count=2)
    # before authentication: anything over 256 bytes
    reader, writer = await asyncio.open_connection(*harness.address)
    try:
        writer.write(HEADER.pack(MAGIC, PROTOCOL_VERSION, 0, int(MsgType.HANDSHAKE_HELLO), 1, 2**32 - 1, 0))
        while await asyncio.wait_for(reader.read(65536), 5):
            pass
    finally:
        writer.close()
    assert any("before the handshake completed (limit 256)" in getattr(r, "reason", "") for r in caplog.records)
    # after authentication: a header claiming a 4 GiB payload, with nothing behind it
    client = harness.client()
    await client.call(PingRequest())
    assert client._conn is not None and client._conn.transport is not None
    client._conn.transport.write(HEADER.pack(MAGIC, PROTOCOL_VERSION, 0, int(MsgType.PING_REQUEST), 5, 0,
                                             2**32 - 1))
    await wait_for(lambda: not client.connected, timeout_s=5, what="server to close the connection")
    assert any("payload of 4294967295 bytes exceeds the limit" in getattr(r, "reason", "") for r in caplog.records)
    assert (await harness.ping()).payload == b"alive"


async def test_a_frame_dripped_too_slowly_is_cut_off(harness, expect_log, caplog) -> None:
    expect_log("net.connection_closed")
    client = harness.client()
    await client.call(PingRequest())  # an authenticated connection...
    conn = client._conn
    assert conn is not None and conn.transport is not None
    frame = encode_frame_bytes(PingRequest(), 99)
    conn.transport.write(frame[:10])  # ...that starts a frame and never finishes it

    await wait_for(lambda: any("not completed within 1 s" in getattr(r, "reason", "") for r in caplog.records),
                   timeout_s=10, what="slow frame to be cut off")
    await wait_for(lambda: not client.connected, timeout_s=5, what="client to see the close")


async def test_pipelined_calls_are_matched_by_request_id_when_replies_come_out_of_order(harness) -> None:
    client = harness.client()
    delays = [50, 0, 30, 10, 40, 0, 20, 5] * 4
    payloads = [f"sleep:{d};{i}".encode() for i, d in enumerate(delays)]
    replies = await asyncio.gather(*(client.call(PingRequest(), p) for p in payloads))
    assert [r.payload for r in replies] == payloads
    assert harness.server.stats["authenticated"] == 1  # all on one connection


async def test_a_call_past_its_deadline_fails_and_the_connection_stays_usable(harness) -> None:
    client = harness.client()
    with pytest.raises(DeadlineExceeded, match="no reply within 0.1 s"):
        await client.call(PingRequest(), b"sleep:2000", deadline_s=0.1)
    assert (await client.call(PingRequest(), b"next")).payload == b"next"


async def test_handler_errors_come_back_typed_and_a_crashing_handler_does_not_stop_the_server(harness,
                                                                                            expect_log) -> None:
    expect_log("net.handler_crashed")
    client = harness.client()
    with pytest.raises(NotFound) as info:
        await client.call(PingRequest(), b"notfound")
    assert info.value.details == {"inode": 42} and not info.value.retryable
    with pytest.raises(InternalError, match="ZeroDivisionError"):
        await client.call(PingRequest(), b"crash")
    assert (await client.call(PingRequest(), b"ok")).payload == b"ok"


async def test_a_message_without_a_handler_is_an_unknown_message_error(harness) -> None:
    client = harness.client()
    with pytest.raises(UnknownMessage, match="PingReply is not served"):
        await client.call(PingReply(node_id="a", role="b"))


async def test_routes_restricted_to_roles_refuse_other_roles() -> None:
    router = Router()

    async def ping(ctx, msg, payload):
        return PingReply(node_id="mds-1", role="mds")

    router.add(PingRequest, ping, roles=frozenset({"mds"}))
    server = RpcServer(router, Auth(SECRET, SERVER_ID), allowed_roles=frozenset({"client", "mds"}))
    address = await server.start("127.0.0.1", 0)
    peer = RpcClient(address, Auth(SECRET, Identity(CLUSTER, "mds-2", "mds")), expected_role="mds")
    client = RpcClient(address, Auth(SECRET, Identity(CLUSTER, "c", "client")), expected_role="mds")
    try:
        assert (await peer.call(PingRequest())).message.node_id == "mds-1"
        with pytest.raises(NotPermitted, match="may not be sent by a 'client'"):
            await client.call(PingRequest())
    finally:
        await peer.close()
        await client.close()
        await server.close()


async def test_calls_in_flight_fail_with_connection_lost_and_the_client_reconnects(expect_log) -> None:
    expect_log("net.connection_closed", count=0)
    server = RpcServer(_router(), Auth(SECRET, SERVER_ID), allowed_roles=frozenset({"client"}), limits=LIMITS)
    host, port = await server.start("127.0.0.1", 0)
    client = RpcClient((host, port), Auth(SECRET, Identity(CLUSTER, "c", "client")), expected_role="mds",
                       limits=LIMITS)
    try:
        pending = asyncio.ensure_future(client.call(PingRequest(), b"sleep:5000"))
        await wait_for(lambda: server.stats["requests"] == 1, timeout_s=5, what="request to arrive")
        await server.close()
        with pytest.raises(ConnectionLost) as info:
            await pending
        assert info.value.retryable
        with pytest.raises(Unavailable):
            await client.call(PingRequest(), deadline_s=2)
        server = RpcServer(_router(), Auth(SECRET, SERVER_ID), allowed_roles=frozenset({"client"}), limits=LIMITS)
        await server.start(host, port)
        reply = await wait_for(lambda: _try_call(client), timeout_s=10, what="reconnect after server restart")
        assert reply.payload == b"back"
    finally:
        await client.close()
        await server.close()


async def _try_call(client: RpcClient) -> Reply | None:
    try:
        return await client.call(PingRequest(), b"back", deadline_s=2)
    except (Unavailable, ConnectionLost):
        return None


async def test_connections_beyond_the_per_ip_cap_are_refused_with_busy(expect_log) -> None:
    expect_log("net.connection_closed")
    server = RpcServer(_router(), Auth(SECRET, SERVER_ID), allowed_roles=frozenset({"client"}),
                       max_connections=100, max_connections_per_ip=3)
    address = await server.start("127.0.0.1", 0)
    clients = [RpcClient(address, Auth(SECRET, Identity(CLUSTER, f"c{i}", "client")), expected_role="mds")
               for i in range(4)]
    try:
        for client in clients[:3]:
            await client.call(PingRequest())
        with pytest.raises(Busy, match="too many connections from 127.0.0.1"):
            await clients[3].call(PingRequest())
        assert server.connection_count == 3 and server.stats["refused_limit"] == 1
        await clients[0].close()
        await wait_for(lambda: server.connection_count == 2, timeout_s=5, what="slot to free up")
        assert (await clients[3].call(PingRequest(), b"in")).payload == b"in"
    finally:
        for client in clients:
            await client.close()
        await server.close()


async def test_the_client_refuses_a_server_of_the_wrong_role(harness, expect_log) -> None:
    expect_log("net.auth_failed")
    expect_log("net.connection_closed", count=0)
    client = harness.client(expected_role="cs")
    with pytest.raises(AuthFailed, match="expected a 'cs'"):
        await client.call(PingRequest())


async def test_a_frame_auth_mismatch_is_refused_with_the_fix(harness, expect_log) -> None:
    expect_log("net.auth_failed")
    expect_log("net.connection_closed", count=0)
    client = harness.client(frame_auth=FrameAuth.NONE)
    with pytest.raises(AuthFailed, match="frame_auth alike"):
        await client.call(PingRequest())


# ---- the liveness probe -------------------------------------------------------------------------------------


def _slow_getattr_router() -> Router:
    """No Ping route (the server's built-in answers it); GetattrRequest takes 1.5 s."""
    from vstore.wire import mds as w
    router = Router()

    async def slow(ctx: RequestContext, msg: Message, payload: bytes) -> Reply:
        await asyncio.sleep(1.5)
        return Reply(PingReply(node_id="mds-1", role="mds"), b"slow but alive")

    router.add(w.GetattrRequest, slow)
    return router


async def test_the_liveness_probe_keeps_a_slow_peer_and_leaves_a_silent_one_before_the_deadline() -> None:
    """RpcClient(probe_after_s=...): a handler slower than ``dead_after_s`` is fine (the
    server answers the probe's Ping from its loop); a peer that answers nothing at all (a
    stopped process, a cut-off host: here its connections drop every frame) is declared dead
    and the call fails with ConnectionLost, which callers retry elsewhere, well before the
    call's own deadline (DeadlineExceeded would mean the probe did nothing)."""
    from vstore.wire import mds as w
    server = RpcServer(_slow_getattr_router(), Auth(SECRET, SERVER_ID), allowed_roles=frozenset({"client"}),
                       limits=LIMITS)
    host, port = await server.start("127.0.0.1", 0)
    client = RpcClient((host, port), Auth(SECRET, Identity(CLUSTER, "c", "client")), expected_role="mds",
                       limits=LIMITS, probe_after_s=0.2, dead_after_s=0.8)
    try:
        assert (await client.call(PingRequest(), b"echo", deadline_s=5)).payload == b"echo", "the built-in Ping"
        reply = await client.call(w.GetattrRequest(uid=0, gid=0, inode=1), deadline_s=10)
        assert reply.payload == b"slow but alive"
        assert client.stats["probes"] >= 1 and client.stats["declared_dead"] == 0
        for conn in list(server._connections):   # the peer goes silent: frames in, nothing out
            conn.on_frame = lambda frame: None
        with pytest.raises(ConnectionLost) as info:
            await client.call(w.GetattrRequest(uid=0, gid=0, inode=1), deadline_s=30)
        assert "probe went unanswered" in info.value.message and client.stats["declared_dead"] == 1
        reply = await client.call(w.GetattrRequest(uid=0, gid=0, inode=1), deadline_s=10)
        assert reply.payload == b"slow but alive", "a new connection to the same server works"
    finally:
        await client.close()
        await server.close()
    with pytest.raises(ValueError):
        RpcClient((host, port), Auth(SECRET, Identity(CLUSTER, "c", "client")), expected_role="mds",
                  probe_after_s=3.0, dead_after_s=3.0)


async def test_a_leader_caller_tries_a_stopped_mds_once_even_when_a_follower_still_names_it(expect_log) -> None:
    """F3 from the caller's side: a stopped MDS accepts TCP connections (the kernel does) and
    answers nothing, so each attempt on it costs a handshake timeout; a follower that has not
    noticed yet still names it as the leader. After one failed attempt the caller tries it
    last and disregards that hint, and reaches the new leader instead of bouncing."""
    from vstore.errors import NotLeader
    from vstore.net.leader import LeaderCaller
    expect_log("net.connection_closed")   # "no handshake within 1 s": the one attempt on it
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)   # kept open, never answered: a SIGSTOPped process

    stopped = await asyncio.start_server(silent, "127.0.0.1", 0)
    stopped_address = "127.0.0.1:%d" % stopped.sockets[0].getsockname()[1]
    follower_router = Router()

    async def not_leader(ctx: RequestContext, msg: Message, payload: bytes) -> Reply:
        raise NotLeader("not the leader", details={"leader": stopped_address})

    follower_router.add(PingRequest, not_leader)
    limits = Limits(handshake_timeout_s=1.0)
    servers = [RpcServer(follower_router, Auth(SECRET, Identity(CLUSTER, "mds-2", "mds")),
                         allowed_roles=frozenset({"client"}), limits=limits),
               RpcServer(Router(), Auth(SECRET, Identity(CLUSTER, "mds-3", "mds")), allowed_roles=frozenset({"client"}),
                         limits=limits)]
    addresses = [await server.start("127.0.0.1", 0) for server in servers]
    caller = LeaderCaller([tuple(int(x) if i else x for i, x in enumerate(stopped_address.split(":"))),  # type: ignore[misc]
                           *addresses], Auth(SECRET, Identity(CLUSTER, "c", "client")), deadline_s=20.0,
                          attempt_deadline_s=5.0, limits=limits)
    try:
        for _ in range(5):
            reply = await caller.call(PingRequest())
            assert isinstance(reply, PingReply) and reply.node_id == "mds-3"
        assert len(accepted) == 1, f"the stopped MDS was tried {len(accepted)} times"
    finally:
        await caller.close_connections()
        for server in servers:
            await server.close()
        stopped.close()
        for writer in accepted:
            writer.close()
