"""The signed UDP channel over real sockets: authentic datagrams arrive; forged, foreign
and replayed ones are dropped, counted and logged, and never stop the receiver."""

from __future__ import annotations

import asyncio
import secrets
import socket

import pytest

from vstore.net.dgram import DatagramChannel
from vstore.wire import Heartbeat, datagram_key

SECRET = secrets.token_bytes(32)
KEY = datagram_key(SECRET, "cluster-a")


@pytest.fixture
async def pair():
    mds = await DatagramChannel.bind("127.0.0.1", 0, key=KEY, sender_id="mds-1")
    cs = await DatagramChannel.bind("127.0.0.1", 0, key=KEY, sender_id="cs-1")
    yield mds, cs
    mds.close()
    cs.close()


def _beat(n: int) -> Heartbeat:
    return Heartbeat(node_id="cs-1", role="cs", gauges={"seq": n})


async def test_heartbeats_arrive_in_order_with_their_sender(pair) -> None:
    mds, cs = pair
    for n in range(5):
        await cs.send(_beat(n), mds.address)
    got = [await asyncio.wait_for(mds.recv(), 5) for _ in range(5)]
    assert [d.message.gauges["seq"] for d, _ in got] == list(range(5))
    assert {d.sender for d, _ in got} == {"cs-1"} and got[0][1] == cs.address


async def test_forged_foreign_and_replayed_datagrams_are_dropped(pair, expect_log) -> None:
    expect_log("net.bad_datagram")
    expect_log("net.replayed_datagram")
    mds, cs = pair
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # capture a real packet by sending it to our raw socket first
    raw.bind(("127.0.0.1", 0))
    raw.setblocking(False)
    await cs.send(_beat(1), raw.getsockname())
    loop = asyncio.get_running_loop()
    captured = await asyncio.wait_for(loop.sock_recv(raw, 2048), 5)
    try:
        raw.sendto(b"junk" * 10, mds.address)
        foreign = await DatagramChannel.bind("127.0.0.1", 0, key=datagram_key(SECRET, "cluster-b"), sender_id="cs-1")
        await foreign.send(_beat(99), mds.address)
        foreign.close()
        raw.sendto(captured, mds.address)   # first delivery: fresh, accepted
        raw.sendto(captured, mds.address)   # replay: dropped
        await cs.send(_beat(2), mds.address)
        first, _ = await asyncio.wait_for(mds.recv(), 5)
        second, _ = await asyncio.wait_for(mds.recv(), 5)
        assert [first.message.gauges["seq"], second.message.gauges["seq"]] == [1, 2]
        assert mds.stats == {"sent": 0, "received": 2, "bad": 2, "replayed": 1}
    finally:
        raw.close()
