"""Signed UDP datagrams over ``asyncio-dgram``: the channel heartbeats travel on.

Sending stamps each message with this process's random boot id and a counter; receiving
verifies the MAC (vstore.wire.datagram), drops replays with a ReplayGuard, and hands back
only authentic, fresh datagrams. Bad packets are counted and logged (rate-limited per
source address), never raised: a UDP port is open to anyone on the network, and one
junk packet must not cost more than a MAC check.

About asyncio-dgram's receive queue, which has no maxsize: asyncio's datagram transport
reads one packet per readiness callback, and ``recv()`` runs in the same loop, so the queue
holds no more than the packets read between two turns of the consumer; the kernel socket
buffer (not our memory) absorbs a flood, and drops its excess.
"""

from __future__ import annotations

import logging
import secrets
import time

import asyncio_dgram

from vstore.wire import Datagram, Message, ReplayGuard, RemoteProtocolError, decode_datagram, encode_datagram

log = logging.getLogger(__name__)

#: Log at most one bad-datagram warning per source address per this many seconds.
_BAD_PACKET_LOG_INTERVAL_S = 60.0


class DatagramChannel:
    """One bound UDP socket that sends and receives signed datagrams of one cluster."""

    def __init__(self, stream: asyncio_dgram.aio.DatagramServer, key: bytes, sender_id: str) -> None:
        self._stream = stream
        self._key = key
        self.sender_id = sender_id
        self.boot_id = secrets.token_bytes(16)
        self._counter = 0
        self._guard = ReplayGuard()
        self._last_warning_s: dict[tuple[str, str], float] = {}
        self.stats = {"sent": 0, "received": 0, "bad": 0, "replayed": 0}

    @classmethod
    async def bind(cls, host: str, port: int, *, key: bytes, sender_id: str) -> DatagramChannel:
        """Bind host:port (0: any free port). ``key`` from vstore.wire.datagram_key()."""
        stream = await asyncio_dgram.bind((host, port))
        return cls(stream, key, sender_id)

    @property
    def address(self) -> tuple[str, int]:
        sockname = self._stream.sockname
        return str(sockname[0]), int(sockname[1])

    async def send(self, msg: Message, address: tuple[str, int]) -> None:
        self._counter += 1
        packet = encode_datagram(self._key, self.sender_id, self.boot_id, self._counter, msg)
        await self._stream.send(packet, address)
        self.stats["sent"] += 1

    async def recv(self) -> tuple[Datagram, tuple[str, int]]:
        """The next authentic, fresh datagram and the address it came from."""
        while True:
            try:
                packet, address = await self._stream.recv()
            except (ConnectionRefusedError, ConnectionResetError):
                # ICMP "port unreachable" for an earlier send: the peer is down, nothing to read
                continue
            try:
                datagram = decode_datagram(self._key, packet)
            except RemoteProtocolError as exc:
                self.stats["bad"] += 1
                self._warn(address, "net.bad_datagram", exc.message)
                continue
            if not self._guard.accept(datagram.sender, datagram.boot_id, datagram.counter):
                self.stats["replayed"] += 1
                self._warn(address, "net.replayed_datagram",
                           f"replayed or stale datagram from {datagram.sender!r} (counter {datagram.counter})")
                continue
            self.stats["received"] += 1
            return datagram, (str(address[0]), int(address[1]))

    def _warn(self, address: tuple[str, int], event: str, reason: str) -> None:
        now = time.monotonic()
        key = (event, str(address[0]))
        if now - self._last_warning_s.get(key, -_BAD_PACKET_LOG_INTERVAL_S) >= _BAD_PACKET_LOG_INTERVAL_S:
            if len(self._last_warning_s) > 10_000:
                self._last_warning_s.clear()
            self._last_warning_s[key] = now
            log.warning(event, extra={"peer": f"{address[0]}:{address[1]}", "reason": reason})

    def close(self) -> None:
        self._stream.close()
