"""Signed UDP datagrams (heartbeats) and their replay guard. Pure, sans-I/O.

Layout (big-endian)::

    magic b"VSDG" | version u8 | msg_type u16 | boot_id 16 bytes | counter u64
    | sender_len u8 | sender | meta (msgpack) | tag 16 bytes

``tag`` is a truncated HMAC-SHA256 over everything before it, under a key derived from the
cluster secret and the cluster id (so a datagram of another cluster with the same secret is
rejected too). ``boot_id`` is random per process start and ``counter`` strictly increases
within a boot: the receiver's ReplayGuard accepts each (sender, boot_id, counter) at most
once and never goes back to an older boot, so a captured heartbeat of a dead chunkserver
replayed later cannot keep it "alive" (RELIABILITY.md F23). Wall-clock time is not used:
a clock jump must not turn into a false "CS dead" (RELIABILITY.md §4.10).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from dataclasses import dataclass

from vstore.wire.errors import LocalProtocolError, RemoteProtocolError
from vstore.wire.frames import PROTOCOL_VERSION, TAG_BYTES
from vstore.wire.handshake import SECRET_BYTES, hkdf_sha256
from vstore.wire.messages import Message, decode_meta, encode_meta, message_class

DGRAM_MAGIC = b"VSDG"
_HEAD = struct.Struct(">4sBH16sQB")
BOOT_ID_BYTES = 16
#: Stay under a 1500-byte Ethernet MTU minus IP/UDP headers: no fragmentation, ever.
MAX_DATAGRAM_BYTES = 1400


@dataclass(frozen=True, slots=True)
class Datagram:
    sender: str
    boot_id: bytes
    counter: int
    message: Message


def datagram_key(secret: bytes, cluster_id: str) -> bytes:
    """The MAC key for datagrams of one cluster."""
    if len(secret) != SECRET_BYTES:
        raise LocalProtocolError(f"cluster secret must be {SECRET_BYTES} bytes")
    return hkdf_sha256(secret, b"vstore-dgram-v1", cluster_id.encode())


def encode_datagram(key: bytes, sender: str, boot_id: bytes, counter: int, msg: Message) -> bytes:
    if not msg.DATAGRAM:
        raise LocalProtocolError(f"{type(msg).__name__} may not travel as a datagram")
    if len(boot_id) != BOOT_ID_BYTES or not 0 <= counter < 2**64:
        raise LocalProtocolError("bad boot id or counter")
    raw_sender = sender.encode()
    if not 0 < len(raw_sender) < 256:
        raise LocalProtocolError("sender id must be 1-255 bytes")
    body = _HEAD.pack(DGRAM_MAGIC, PROTOCOL_VERSION, int(msg.TYPE), boot_id, counter, len(raw_sender)) \
        + raw_sender + encode_meta(msg)
    packet = body + hmac.new(key, body, hashlib.sha256).digest()[:TAG_BYTES]
    if len(packet) > MAX_DATAGRAM_BYTES:
        raise LocalProtocolError(f"datagram of {len(packet)} bytes exceeds {MAX_DATAGRAM_BYTES}")
    return packet


def decode_datagram(key: bytes, packet: bytes) -> Datagram:
    """Verify and decode one datagram. Raises RemoteProtocolError (bad tag, size, schema)."""
    if len(packet) > MAX_DATAGRAM_BYTES:
        raise RemoteProtocolError(f"datagram of {len(packet)} bytes exceeds {MAX_DATAGRAM_BYTES}")
    if len(packet) < _HEAD.size + 1 + TAG_BYTES:
        raise RemoteProtocolError(f"datagram of {len(packet)} bytes is too short")
    body, tag = packet[:-TAG_BYTES], packet[-TAG_BYTES:]
    # Verify before parsing anything else: an unauthenticated packet gets no further.
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest()[:TAG_BYTES], tag):
        raise RemoteProtocolError("datagram failed its MAC (wrong secret or cluster, or tampered)")
    magic, version, msg_type, boot_id, counter, sender_len = _HEAD.unpack_from(body, 0)
    if magic != DGRAM_MAGIC or version != PROTOCOL_VERSION:
        raise RemoteProtocolError(f"bad datagram magic/version {magic!r}/{version}")
    cls = message_class(msg_type)
    if cls is None or not cls.DATAGRAM:
        raise RemoteProtocolError(f"message type {msg_type} may not travel as a datagram")
    start = _HEAD.size
    if sender_len == 0 or len(body) < start + sender_len:
        raise RemoteProtocolError("datagram sender field truncated")
    try:
        sender = body[start:start + sender_len].decode()
    except UnicodeDecodeError:
        raise RemoteProtocolError("datagram sender is not UTF-8") from None
    meta = body[start + sender_len:]
    if len(meta) > cls.MAX_META_BYTES:
        raise RemoteProtocolError(f"{cls.__name__} meta of {len(meta)} bytes exceeds {cls.MAX_META_BYTES}")
    return Datagram(sender, boot_id, counter, decode_meta(msg_type, meta))


class ReplayGuard:
    """Accepts each (sender, boot_id, counter) at most once, in increasing counter order.

    Per sender it keeps the current boot id and its highest counter, plus the last
    ``remembered_boots`` boot ids it has seen retired, so a replay from an earlier boot of
    the same sender is refused. A boot id never seen before is taken as a restart. (A
    receiver that itself restarted has forgotten everything; the metadata service closes
    that gap by accepting heartbeats only for the boot id a chunkserver registered over an
    authenticated TCP connection.) Bounded: at most ``max_senders`` senders are tracked,
    least recently heard evicted first.
    """

    def __init__(self, *, max_senders: int = 100_000, remembered_boots: int = 16) -> None:
        self._senders: OrderedDict[str, tuple[bytes, int, tuple[bytes, ...]]] = OrderedDict()
        self._max_senders = max_senders
        self._remembered_boots = remembered_boots

    def accept(self, sender: str, boot_id: bytes, counter: int) -> bool:
        """True if this datagram is fresh (and record it); False for a replay or an old boot."""
        entry = self._senders.get(sender)
        if entry is None:
            self._senders[sender] = (boot_id, counter, ())
        else:
            current_boot, last_counter, old_boots = entry
            if boot_id == current_boot:
                if counter <= last_counter:
                    return False
                self._senders[sender] = (boot_id, counter, old_boots)
            elif boot_id in old_boots:
                return False
            else:
                retired = (old_boots + (current_boot,))[-self._remembered_boots:]
                self._senders[sender] = (boot_id, counter, retired)
            self._senders.move_to_end(sender)
        while len(self._senders) > self._max_senders:
            self._senders.popitem(last=False)
        return True

    def forget(self, sender: str) -> None:
        self._senders.pop(sender, None)
