"""TCP frames: header layout, encoder, incremental decoder and per-frame MAC. Pure, sans-I/O.

A frame is::

    header (24 bytes, big-endian)  meta (msgpack)  payload (raw bytes)  [tag (16 bytes)]

    offset size field
         0    4 magic         b"VSTR"
         4    1 version       protocol version, 1
         5    1 flags         FLAG_REPLY | FLAG_ONEWAY; other bits must be zero
         6    2 msg_type      MsgType
         8    8 request_id    chosen by the requester, echoed in the reply
        16    4 meta_len      bytes of msgpack meta
        20    4 payload_len   bytes of raw payload

The tag is present once the handshake has negotiated ``frame_auth = "hmac"``: a truncated
HMAC-SHA256, under a per-direction session key, of (frame sequence number ‖ header ‖ meta ‖
BLAKE3-256(payload)), the digest left out when there is no payload. The implicit sequence
number makes a replayed, dropped or reordered frame fail the check, so nothing can be
injected into an authenticated connection.

Why the payload goes in as its digest (hash-then-MAC; sound because BLAKE3 is collision
resistant): a chunkserver forwards the payload it received down the chain, and the digest
it computed to check the incoming frame also serves the outgoing one, so each hop hashes
the bytes once (BLAKE3 runs at twice the speed of SHA-256 with SHA-NI here) instead of
running HMAC over them twice. A receiver always computes the digest itself; a sender that
passes a wrong one only gets its frame refused.

The decoder is fed whatever bytes arrived and hands out whole frames. It checks magic,
version, flags, the type and both declared lengths against that type's limits as soon as
the 24 header bytes are in, before it buffers a byte of the body, so a header that claims
4 GiB costs nothing. Buffered bytes never exceed one frame plus what the caller fed at once.
Every violation raises ``RemoteProtocolError`` and leaves the decoder failed for good.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from blake3 import blake3

from vstore.wire.errors import LocalProtocolError, RemoteProtocolError
from vstore.wire.messages import PRE_AUTH_META_BYTES, Message, decode_meta, encode_meta, message_class

MAGIC = b"VSTR"
PROTOCOL_VERSION = 1
HEADER = struct.Struct(">4sBBHQII")
HEADER_BYTES = HEADER.size  # 24

FLAG_REPLY = 0x01   # this frame answers the request with the same request_id
FLAG_ONEWAY = 0x02  # a request that wants no reply (Raft messages, notifications)
_KNOWN_FLAGS = FLAG_REPLY | FLAG_ONEWAY

TAG_BYTES = 16  # 128-bit truncated HMAC-SHA256 (NIST SP 800-107 allows truncation to >= 64 bits)
MAX_REQUEST_ID = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame. ``message`` is validated; ``payload`` is the raw body."""

    msg_type: int
    flags: int
    request_id: int
    message: Message
    #: ``bytes``, or for a big payload the ``bytearray`` it was received into
    payload: bytes | bytearray
    #: the payload's digest as the frame MAC checked it (None on an unauthenticated connection)
    payload_digest: bytes | None = None

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & FLAG_REPLY)

    @property
    def is_oneway(self) -> bool:
        return bool(self.flags & FLAG_ONEWAY)


class FrameMac:
    """Per-frame authentication for one direction of one connection.

    Holds the session key and the implicit sequence number. Not thread-safe, like everything
    in ``wire``: one connection, one task.
    """

    __slots__ = ("_base", "_seq")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise LocalProtocolError("frame MAC key must be 32 bytes")
        self._base = hmac.new(key, digestmod=hashlib.sha256)
        self._seq = 0

    def tag(self, head: bytes | memoryview, payload: bytes | bytearray | memoryview,
            payload_digest: bytes | None = None) -> bytes:
        """Compute the tag of the next frame in sequence and advance the sequence.
        ``payload_digest``: ``payload_digest(payload)`` when the caller has it already."""
        mac = self._base.copy()
        mac.update(self._seq.to_bytes(8, "big"))
        mac.update(head)
        if payload:
            mac.update(payload_digest if payload_digest is not None else _digest(payload))
        self._seq += 1
        return mac.digest()[:TAG_BYTES]

    def verify(self, head: bytes | memoryview, payload: bytes | bytearray | memoryview,
               tag: bytes | memoryview) -> bytes | None:
        """Check the tag of the next frame in sequence (constant time); advance the sequence.
        Returns the payload's digest (b"" for no payload) when the tag is right, else None."""
        digest = _digest(payload) if payload else b""
        ok = hmac.compare_digest(self.tag(head, payload, digest or None), bytes(tag))
        return digest if ok else None


def _digest(payload: bytes | bytearray | memoryview) -> bytes:
    return blake3(payload).digest()


def payload_digest(payload: bytes | bytearray | memoryview) -> bytes:
    """The digest the frame MAC covers for ``payload`` (BLAKE3-256)."""
    return _digest(payload)


def encode_frame(msg: Message, request_id: int, *, flags: int = 0, payload: bytes | bytearray | memoryview = b"",
                 mac: FrameMac | None = None, payload_digest: bytes | None = None) -> list[bytes | bytearray | memoryview]:
    """Encode one frame as a list of buffers to write in order (the payload is not copied).
    ``payload_digest``: the payload's digest if known (``Frame.payload_digest`` of the frame
    it came in on), saving the MAC a pass over the bytes.

    Raises LocalProtocolError when the message would break its own limits: a bug here.
    """
    if flags & ~_KNOWN_FLAGS:
        raise LocalProtocolError(f"unknown frame flags {flags:#x}")
    if not 0 <= request_id <= MAX_REQUEST_ID:
        raise LocalProtocolError(f"request id {request_id} out of range")
    if len(payload) > msg.MAX_PAYLOAD_BYTES:
        raise LocalProtocolError(f"{type(msg).__name__} payload is {len(payload)} bytes, "
                                 f"limit {msg.MAX_PAYLOAD_BYTES}")
    meta = encode_meta(msg)
    head = HEADER.pack(MAGIC, PROTOCOL_VERSION, flags, int(msg.TYPE), request_id, len(meta), len(payload)) + meta
    parts: list[bytes | bytearray | memoryview] = [head]
    if payload:
        parts.append(payload)
    if mac is not None:
        parts.append(mac.tag(head, payload, payload_digest))
    return parts


def encode_frame_bytes(msg: Message, request_id: int, **kwargs: object) -> bytes:
    """encode_frame joined into one bytes object (tests, datagram-sized frames)."""
    return b"".join(encode_frame(msg, request_id, **kwargs))  # type: ignore[arg-type]


class FrameDecoder:
    """Incremental decoder: ``feed()`` bytes as they arrive, take frames with ``next_frame()``.

    ``pre_auth=True`` admits only handshake messages (and ErrorReply) with their tight size
    limits; the connection calls ``authenticated()`` once the handshake has succeeded.

    Receive-into (``get_buffer`` / ``buffer_updated``, for ``asyncio.BufferedProtocol``): once
    a validated header announces a payload of at least ``DIRECT_PAYLOAD_BYTES``, the decoder
    allocates that frame's payload buffer and hands the transport views of it, so the socket
    writes the payload where the frame will keep it: no copy through a staging buffer, and the
    frame's ``payload`` is that ``bytearray``. Smaller frames go through one fixed scratch
    buffer. The allocation happens only after the header passed the type's limits, and only
    authenticated connections carry payloads at all.
    """

    #: payloads at least this big are received straight into their own buffer
    DIRECT_PAYLOAD_BYTES = 64 * 1024
    SCRATCH_BYTES = 256 * 1024

    def __init__(self, *, pre_auth: bool = False) -> None:
        self._buf = bytearray()
        self._pre_auth = pre_auth
        self._mac: FrameMac | None = None
        self._failed: RemoteProtocolError | None = None
        # Header of the frame being assembled, once validated: (type, flags, id, meta, payload).
        self._pending: tuple[int, int, int, int, int] | None = None
        # Direct mode (a big payload): header + meta of the frame, its payload and tag buffers
        # and how much of each has arrived. Both buffers keep their size for good (the
        # transport may still hold a view of them), so the payload is handed out as it is.
        self._head: bytes | None = None
        self._body: bytearray | None = None
        self._body_fill = 0
        self._tag = bytearray(TAG_BYTES)
        self._tag_fill = 0
        self._scratch: bytearray | None = None
        self.frames_decoded = 0

    def authenticated(self, mac: FrameMac | None) -> None:
        """Leave the pre-auth state; from the next frame on, require a tag under ``mac``."""
        self._pre_auth = False
        self._mac = mac

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf) + (self._body_fill + self._tag_fill + len(self._head or b"")
                                 if self._body is not None else 0)

    @property
    def in_frame(self) -> bool:
        """True while part of a frame has arrived (the caller's per-frame read deadline runs)."""
        return bool(self._buf) or self._body is not None

    # ---- receiving ------------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._failed is not None:
            raise self._failed
        if self._body is not None:
            data = self._fill_direct(memoryview(data))
        self._buf += data

    def get_buffer(self) -> memoryview:
        """Where the next received bytes should go (never empty): the rest of a big frame's
        payload or tag, else the scratch buffer. Follow with ``buffer_updated``."""
        if self._failed is not None:
            raise self._failed
        if self._body is not None:
            if self._body_fill < len(self._body):
                return memoryview(self._body)[self._body_fill:]
            if self._tag_fill < self._tag_len():
                return memoryview(self._tag)[self._tag_fill:self._tag_len()]
        if self._scratch is None:
            self._scratch = bytearray(self.SCRATCH_BYTES)
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written into the view ``get_buffer`` returned."""
        if self._failed is not None:
            raise self._failed
        if self._body is not None and self._body_fill < len(self._body):
            self._body_fill += nbytes
        elif self._body is not None and self._tag_fill < self._tag_len():
            self._tag_fill += nbytes
        else:
            assert self._scratch is not None
            with memoryview(self._scratch) as view:
                self.feed(view[:nbytes])

    def _tag_len(self) -> int:
        return TAG_BYTES if self._mac is not None else 0

    def _fill_direct(self, data: memoryview) -> memoryview:
        """Copy what belongs to the big frame in progress into its buffers; return the rest."""
        assert self._body is not None
        n = min(len(self._body) - self._body_fill, len(data))
        if n:
            self._body[self._body_fill:self._body_fill + n] = data[:n]
            self._body_fill += n
            data = data[n:]
        n = min(self._tag_len() - self._tag_fill, len(data))
        if n:
            self._tag[self._tag_fill:self._tag_fill + n] = data[:n]
            self._tag_fill += n
            data = data[n:]
        return data

    # ---- decoding -------------------------------------------------------------------------------

    def next_frame(self) -> Frame | None:
        """The next whole frame, or None until more bytes arrive. Raises RemoteProtocolError."""
        if self._failed is not None:
            raise self._failed
        try:
            return self._next_frame()
        except RemoteProtocolError as exc:
            self._failed = exc
            self._buf.clear()
            self._body = self._head = None
            raise

    def _next_frame(self) -> Frame | None:
        if self._body is not None:
            return self._finish_direct()
        buf = self._buf
        if self._pending is None:
            if len(buf) < HEADER_BYTES:
                return None
            self._pending = self._check_header(buf)
        msg_type, flags, request_id, meta_len, payload_len = self._pending
        tag_len = self._tag_len()
        head_end = HEADER_BYTES + meta_len
        if payload_len >= self.DIRECT_PAYLOAD_BYTES:
            if len(buf) < head_end:
                return None
            self._head = bytes(buf[:head_end])
            self._body = bytearray(payload_len)
            self._body_fill = self._tag_fill = 0
            rest = bytes(buf[head_end:])
            buf.clear()
            buf += self._fill_direct(memoryview(rest))
            return self._finish_direct()
        body_end = head_end + payload_len
        if len(buf) < body_end + tag_len:
            return None
        view = memoryview(buf)
        digest = None
        try:
            if self._mac is not None:
                digest = self._mac.verify(view[:head_end], view[head_end:body_end], view[body_end:body_end + tag_len])
                if digest is None:
                    raise RemoteProtocolError(f"frame {self.frames_decoded} failed its MAC "
                                              "(tampered, replayed or reordered)")
            # Copies, not views: a view kept alive by an exception's traceback would pin the
            # buffer (BufferError on the next resize). The meta is small; the payload copy
            # is the one the caller keeps.
            meta = bytes(view[HEADER_BYTES:head_end])
            payload = bytes(view[head_end:body_end])
        finally:
            view.release()
        message = decode_meta(msg_type, meta)
        del buf[:body_end + tag_len]
        self._pending = None
        self.frames_decoded += 1
        return Frame(msg_type, flags, request_id, message, payload, digest or None)

    def _finish_direct(self) -> Frame | None:
        assert self._body is not None and self._head is not None and self._pending is not None
        tag_len = self._tag_len()
        if self._body_fill < len(self._body) or self._tag_fill < tag_len:
            return None
        msg_type, flags, request_id, _, _ = self._pending
        head, payload = self._head, self._body
        digest = None
        if self._mac is not None:
            digest = self._mac.verify(head, payload, memoryview(self._tag)[:tag_len])
            if digest is None:
                raise RemoteProtocolError(f"frame {self.frames_decoded} failed its MAC "
                                          "(tampered, replayed or reordered)")
        message = decode_meta(msg_type, head[HEADER_BYTES:])
        self._head = self._body = None
        self._body_fill = self._tag_fill = 0
        self._pending = None
        self.frames_decoded += 1
        return Frame(msg_type, flags, request_id, message, payload, digest or None)

    def _check_header(self, buf: bytearray) -> tuple[int, int, int, int, int]:
        magic, version, flags, msg_type, request_id, meta_len, payload_len = HEADER.unpack_from(buf, 0)
        if magic != MAGIC:
            raise RemoteProtocolError(f"bad magic {bytes(magic)!r} (not a vstore peer?)")
        if version != PROTOCOL_VERSION:
            raise RemoteProtocolError(f"unsupported protocol version {version} "
                                      f"(this node speaks {PROTOCOL_VERSION})")
        if flags & ~_KNOWN_FLAGS:
            raise RemoteProtocolError(f"unknown frame flags {flags:#x}")
        cls = message_class(msg_type)
        if cls is None:
            raise RemoteProtocolError(f"unknown message type {msg_type}")
        if self._pre_auth and not cls.PRE_AUTH:
            raise RemoteProtocolError(f"{cls.__name__} before the handshake completed")
        if self._pre_auth and (meta_len > PRE_AUTH_META_BYTES or payload_len):
            raise RemoteProtocolError(f"{cls.__name__} of {meta_len}+{payload_len} bytes before the "
                                      f"handshake completed (limit {PRE_AUTH_META_BYTES})")
        if meta_len > cls.MAX_META_BYTES:
            raise RemoteProtocolError(f"{cls.__name__} meta of {meta_len} bytes exceeds "
                                      f"the limit of {cls.MAX_META_BYTES}")
        if payload_len > cls.MAX_PAYLOAD_BYTES:
            raise RemoteProtocolError(f"{cls.__name__} payload of {payload_len} bytes exceeds "
                                      f"the limit of {cls.MAX_PAYLOAD_BYTES}")
        return msg_type, flags, request_id, meta_len, payload_len
