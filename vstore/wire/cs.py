"""Chunk data messages (MsgType range 200-299): client -> chunkserver and down a replica chain.
Pure.

Bytes travel as the frame's raw payload, never in the meta. Every request names the chunk,
the version the sender believes current (a replica at another version refuses: STALE_VERSION,
RELIABILITY.md §4.3) and the capability the MDS issued for that chunk and version
(vstore/wire/capability.py; BAD_CAPABILITY otherwise).

Writes are chain-replicated: the client sends to the first replica with ``chain`` = the
others in order; each replica writes locally and forwards the same request (minus itself)
to the next, and answers only after its own write and its successor's answer. A failure
anywhere comes back as an ErrorReply whose details name the chunkserver that failed
(``failed_cs``), so the writer can ask the MDS to repair the chain without that one.

End-to-end checksums: ``checksums`` holds the xxh3-64 of each piece of the payload cut at
the chunk's block boundaries (the first piece runs from ``offset`` to the next boundary),
computed by the client; every replica checks them before it writes anything.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import xxhash

from vstore.wire.messages import MIB, U8, U32, U64, Message, MsgType, register
from vstore.wire.raft import Hash64

#: Largest piece of chunk data in one request (wire limit of a frame's payload).
CHUNK_IO_BYTES_MAX = 16 * MIB
#: Checksums per write: 16 MiB of 4 KiB blocks, plus the partial pieces at both ends.
CHECKSUMS_MAX = CHUNK_IO_BYTES_MAX // 512 + 2

Token = Annotated[bytes, msgspec.Meta(max_length=128)]


def piece_checksums(offset: int, data: bytes | bytearray | memoryview, block_bytes: int) -> tuple[int, ...]:
    """The end-to-end checksums of a write: the xxh3-64 of each piece of ``data`` cut at the
    chunk's block boundaries, the first piece running from ``offset`` to the next boundary."""
    out = []
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        end = min(len(view), pos + block_bytes - (offset + pos) % block_bytes)
        out.append(xxhash.xxh3_64_intdigest(view[pos:end]))
        pos = end
    return tuple(out)
AddressText = Annotated[str, msgspec.Meta(min_length=3, max_length=300)]


class ChainHop(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    cs_id: U32
    address: AddressText


Chain = Annotated[tuple[ChainHop, ...], msgspec.Meta(max_length=16)]
#: The boot ids of a chain's chunkservers, head first: each chunkserver process draws one at
#: start. A write's reply names them; the writer's fsync carries them back, and a chunkserver
#: whose boot id is not the one given restarted since it acknowledged writes it may not have
#: made durable (a power loss keeps none of them): it fails the fsync and is dropped.
Boots = Annotated[tuple[U64, ...], msgspec.Meta(max_length=17)]


@register
class WriteChunkRequest(Message):
    """Write the payload at ``offset`` of the chunk; ``create`` makes the replica first if
    this chunkserver has none yet (a new chunk's first write)."""

    TYPE = MsgType.WRITE_CHUNK
    MAX_META_BYTES = 256 * 1024
    MAX_PAYLOAD_BYTES = CHUNK_IO_BYTES_MAX
    chunk_id: U64
    version: U64
    offset: U64
    checksums: Annotated[tuple[Hash64, ...], msgspec.Meta(max_length=CHECKSUMS_MAX)]
    token: Token
    chain: Chain = ()
    create: bool = False


@register
class WriteChunkReply(Message):
    """``replicas``: how many replicas of the chain (this one included) wrote the data."""

    TYPE = MsgType.WRITE_CHUNK_REPLY
    replicas: U8
    boots: Boots = ()


@register
class ReadChunkRequest(Message):
    TYPE = MsgType.READ_CHUNK
    chunk_id: U64
    version: U64
    offset: U64
    length: Annotated[int, msgspec.Meta(ge=0, le=CHUNK_IO_BYTES_MAX)]
    token: Token


@register
class ReadChunkReply(Message):
    """The verified bytes as the payload (shorter than asked at the chunk's valid length;
    ``length_bytes`` says where that is), with the xxh3-64 of the payload so the reader can
    check what crossed the network."""

    TYPE = MsgType.READ_CHUNK_REPLY
    MAX_PAYLOAD_BYTES = CHUNK_IO_BYTES_MAX
    length_bytes: U64
    checksum: Hash64


@register
class FsyncChunkRequest(Message):
    """Make every replica of the chain durable (file, and directory for a new replica)."""

    TYPE = MsgType.FSYNC_CHUNK
    chunk_id: U64
    version: U64
    token: Token
    chain: Chain = ()
    #: the boot ids the chain's writes were acknowledged under (``Boots``; empty: unchecked)
    boots: Boots = ()


@register
class FsyncChunkReply(Message):
    TYPE = MsgType.FSYNC_CHUNK_REPLY
    replicas: U8
    length_bytes: U64 = 0


@register
class VerifyChunkRequest(Message):
    """Read this chunkserver's whole replica of the chunk at ``version`` against its block
    checksums and say what was checked; no data comes back (``vstore scrub``). ``token`` is a
    read capability: verifying discloses nothing a read would not. A failed block is answered
    as a read's would be: an ErrorReply with CHECKSUM_MISMATCH (details: chunk, version,
    ``block``, the first failed block, and ``bad_blocks``, how many failed in the piece where
    the first was found), and the replica is marked bad and reported to the MDS."""

    TYPE = MsgType.VERIFY_CHUNK
    chunk_id: U64
    version: U64
    token: Token


@register
class VerifyChunkReply(Message):
    """The replica passed: every one of its ``blocks_checked`` blocks of ``block_bytes``,
    covering its valid length ``length_bytes``, was read and matched its checksum. There is
    no "bad" reply: a replica that fails is an ErrorReply, so no reply can be misread as good
    (the caller checks that ``blocks_checked`` covers ``length_bytes``)."""

    TYPE = MsgType.VERIFY_CHUNK_REPLY
    length_bytes: U64
    blocks_checked: U64
    block_bytes: U32


__all__ = ["piece_checksums", "ChainHop", "CHUNK_IO_BYTES_MAX", "FsyncChunkReply", "FsyncChunkRequest", "ReadChunkReply",
           "ReadChunkRequest", "VerifyChunkReply", "VerifyChunkRequest", "WriteChunkReply", "WriteChunkRequest"]
