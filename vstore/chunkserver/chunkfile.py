"""The layout of one chunk replica file: the one reference for its bytes. Pure, no I/O.

A chunkserver keeps each replica in one file under its data dir, named from the chunk id
alone (``chunk_file_name``), never from a path taken from the wire (DESIGN.md §5, RELIABILITY.md
F24). This module owns that file's format and all the block arithmetic on it. It takes and
returns bytes and integers. vstore/chunkserver/store.py does the pread, pwrite and fsync, always
through these functions, and nothing else in vstore parses a chunk file.

File layout (every integer big-endian, like every other vstore format; ``B`` = block_bytes)::

    offset               bytes                 what
    -------------------  --------------------  -----------------------------------------------
    0                    64 (HEADER_BYTES)     header, below
    64 (TABLE_OFFSET)    8 * capacity_blocks   checksum table: slot i (u64) belongs to block i
    data_offset          B * capacity_blocks   data area: block i sits at data_offset + i * B

    data_offset = round_up(64 + 8 * capacity_blocks, B)

Every block has a fixed slot, so a write rewrites only its own blocks and their own slots,
in place. The data area is block-aligned, so a block never straddles two pages of the
backing file system. Example: a 64 MiB chunk with 4 KiB blocks has 16384 slots (a 131072-byte
table), and its data starts at 135168 (block 33 of the file). The file is at most
135168 + 64 MiB bytes long, and shorter while it is sparse. Reads past EOF return zeros.

Header (HEADER_BYTES = 64)::

    offset  size  field            value
    ------  ----  ---------------  ---------------------------------------------------------
     0      4     magic            b"VSCK" (MAGIC)
     4      2     format_version   1 (FORMAT_VERSION)
     6      2     reserved         0: aligns block_bytes
     8      4     block_bytes      B: a power of two in [512, 1 MiB], fixed at mkfs
    12      4     flags            ChunkFlag bits (INCOMPLETE = 1); any other bit is refused
    16      8     chunk_id         1 .. 2**63-1 (0 is never an id; the wire caps ids at 2**63-1)
    24      8     version          1 .. 2**63-1: the replica's chunk version
    32      8     capacity_blocks  chunk_bytes / B, at least 1; the table has this many slots
    40      8     length_bytes     the valid length: bytes [0, length_bytes) are the content
    48      8     reserved         0: pads the header to 64 bytes for a later format version
    56      8     header_checksum  xxh3_64 of bytes 0..55

capacity_blocks * B is at most CHUNK_BYTES_MAX (1 GiB, the cluster's largest chunk size).
The header is rewritten in place (one 64-byte pwrite) when the length, the version or the
flags change. A torn header fails its checksum, so the replica is bad and is rebuilt
from a peer. It is never misread.

Checksum slots. Slot i holds HOLE or the checksum of block i as stored:

* ``HOLE`` (0): block i reads as B zero bytes, whatever the data area holds there, so
  nothing needs to be stored (the store may punch the block out). A new file is its
  header extended (ftruncate) to data_offset, so its table reads as zeros and every block
  starts as a hole.
* any other value is ``block_checksum(block)``: xxh3_64 over the block's full B bytes as
  stored. A short block at EOF (pread stops early in a sparse file) is padded with zeros.
  An xxh3 of 0 would read as HOLE, so it is stored as ``ZERO_CHECKSUM`` (b"VSCKZERO" as
  a u64) instead, and verification maps the same way. A block that hashes to 0 is still
  checked, and the only cost is that the two values alias (2**-64).

  Blocks are checksummed as full blocks, not over their valid length, so a block's checksum
  never depends on the length field: raising or lowering the length never re-checksums a
  block that the same operation does not write. An all-zero block may be stored either way.
  Both verify.

The valid length. Bytes at or past length_bytes are not content. A read stops there, and
``verified_content`` returns them as zeros. Their stored bytes, and the slots of blocks
wholly past the length, do not matter. A shrink (``plan_resize``) writes only the header,
and a crash can leave a write's blocks on disk while losing its header update. So every plan
that raises the length first clears the region it raises over, ``[old length, new length)``:
the old last block is read, cut at the old length and rewritten (unless the write itself
covers that block), and every block wholly inside the gap gets a HOLE slot. Otherwise old
bytes would resurface after truncate-down-then-up, or after a crash. Clearing at shrink time
was rejected because it misses the crash case. Blocks wholly past the length are not
verified (nothing there is content). The block holding the length is verified as stored,
including its bytes past the length.

Writes. ``plan_write`` says which blocks a write touches and which must be read first:
only a partial block with old content outside the written range. So a block-aligned write
reads nothing when the length is block-aligned, as it always is for a disk image written
in 4 KiB blocks. When the write leaves a gap past an unaligned length, it reads at most
the old last block. ``assemble_write`` turns the plan, the new bytes and the verified old
blocks into pwrites, in this order: data blocks, then the slots, then the header if the
length changed. The store issues them, then fsyncs before it acks (RELIABILITY.md §4.1).

The page cache may persist any subset of these writes before a crash. Each block is then
either wholly old (old data, old slot), wholly new, or mismatched, and a mismatch fails its
checksum and is repaired from a peer (F18). No torn block is ever returned. One case
remains open. Suppose a crash keeps a length-raising header but loses the HOLE slots that
cleared the gap, and the gap held blocks left by an even earlier crash. Then those earlier
unacknowledged bytes show up inside the new length. Both writes were unacknowledged, so
this is the usual after-crash contract for unsynced data. Closing it would need a barrier
fsync before every length-raising header write, which was rejected: it doubles the fsyncs of
every append.

Flags. ``INCOMPLETE``: the replica is being copied from a peer or created by its first
write, and may hold only part of the chunk. It never counts as a good replica (DESIGN.md
§5), so the store serves no client read from it and copies nothing from it. The store
clears the flag with a header write once the copy is verified or the first write is
fsynced. A file found with the flag still set after a restart was never finished.

Checks. ``check_header`` (decode, then ``expect``) runs on every open and every read. It
checks the magic, the format version, the header checksum and the field values, then the
chunk id (a misdirected write, a swapped or renamed file) and the version (a stale replica:
every request names the version it expects, RELIABILITY.md §4.3). ``verified_content``
checks each block against its slot and never returns bytes that failed (§4.4, F11).

Errors (each a VStoreError, so the store can send it as is with ``errors.to_wire``)::

    ChunkFileError                   details: reason (below), chunk when known
    ├── ChunkFormatError             CHECKSUM_MISMATCH: the header is unusable, the replica is bad
    │   ├── TruncatedHeader          truncated_header: fewer than HEADER_BYTES bytes
    │   ├── BadMagic                 bad_magic: not a chunk file
    │   ├── UnknownFormatVersion     unknown_format: written by another format version
    │   ├── HeaderChecksumMismatch   header_checksum: a flipped or torn header
    │   └── ImpossibleHeader         impossible_value: authentic, but a field out of range (field)
    ├── WrongChunk                   CHECKSUM_MISMATCH, wrong_chunk: the header names another chunk
    ├── WrongVersion                 STALE_VERSION, wrong_version: details chunk, have, want
    ├── BlockChecksumMismatch        CHECKSUM_MISMATCH, block_checksum: details chunk, version, block
    ├── ChunkRangeError              INVALID_ARGUMENT, out_of_range: a request outside the chunk
    └── ChunkIdError                 INVALID_ARGUMENT, bad_chunk_id: not an id, or not a chunk file name

Arguments that only a bug on our side can get wrong, such as a block index outside the
table, an impossible ChunkHeader or a data buffer of the wrong size, raise LocalProtocolError.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from xxhash import xxh3_64_intdigest

from vstore.wire.codes import ErrorCode
from vstore.wire.errors import LocalProtocolError, VStoreError

MAGIC = b"VSCK"
FORMAT_VERSION = 1
#: Everything the header checksum covers: magic, format, reserved, block_bytes, flags,
#: chunk_id, version, capacity_blocks, length_bytes, reserved.
_HEADER_BODY = struct.Struct(">4sHHIIQQQQQ")
_U64 = struct.Struct(">Q")
HEADER_BYTES = _HEADER_BODY.size + _U64.size  # 64
TABLE_OFFSET = HEADER_BYTES
SLOT_BYTES = _U64.size

#: The checksum block unless mkfs says otherwise. 4 KiB is the page size and the block size
#: of ext4 on a disk image, so a guest's random 4 KiB write never reads more than it writes.
BLOCK_BYTES_DEFAULT = 4096
#: 512 bytes, one sector, is the smallest unit a disk writes. 1 MiB is the largest because a
#: partial write reads and rewrites a whole block, and beyond that size the write amplification
#: outweighs a table that is smaller by 8 bytes per block.
BLOCK_BYTES_MIN = 512
BLOCK_BYTES_MAX = 1 << 20
#: The largest chunk. This is vstore.metadata.fsm.schema.CHUNK_BYTES_MAX, repeated here
#: because chunkserver may not import metadata (a test checks that the two agree).
CHUNK_BYTES_MAX = 1 << 30
#: Chunk ids and versions stay below 2**63, the wire schema's integer limit
#: (vstore/wire/messages.py U64).
CHUNK_ID_MAX = 2**63 - 1
VERSION_MAX = 2**63 - 1

#: A slot holding HOLE means "never written: reads as zeros, nothing stored".
HOLE = 0
#: Stored in place of a real checksum of 0, which would otherwise read as HOLE.
ZERO_CHECKSUM = int.from_bytes(b"VSCKZERO", "big")


class ChunkFlag(enum.IntFlag):
    INCOMPLETE = 1  # being copied or written for the first time; not a good replica yet


_KNOWN_FLAGS = int(ChunkFlag.INCOMPLETE)

# ---- errors -----------------------------------------------------------------------------------


class ChunkFileError(VStoreError):
    """A chunk file or a request against one failed a check. ``reason`` names the check."""

    default_code = ErrorCode.CHECKSUM_MISMATCH
    reason = "chunk_file"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, details={"reason": self.reason,
                                           **{k: v for k, v in details.items() if v is not None}})


class ChunkFormatError(ChunkFileError):
    """The header cannot be used, so this replica is damaged and must be rebuilt from a peer."""

    reason = "bad_header"


class TruncatedHeader(ChunkFormatError):
    reason = "truncated_header"


class BadMagic(ChunkFormatError):
    reason = "bad_magic"


class UnknownFormatVersion(ChunkFormatError):
    reason = "unknown_format"


class HeaderChecksumMismatch(ChunkFormatError):
    reason = "header_checksum"


class ImpossibleHeader(ChunkFormatError):
    """The header passed its checksum but a field is out of range: a writer's bug, or a newer
    writer's flag. ``field`` names the field."""

    reason = "impossible_value"

    def __init__(self, message: str, *, field: str, **details: Any) -> None:
        super().__init__(message, field=field, **details)
        self.field = field


class WrongChunk(ChunkFileError):
    """The file is a sound chunk file of another chunk: a misdirected write or a swapped file."""

    reason = "wrong_chunk"


class WrongVersion(ChunkFileError):
    """The replica is at another version than the request names (RELIABILITY.md §4.3)."""

    default_code = ErrorCode.STALE_VERSION
    reason = "wrong_version"


class BlockChecksumMismatch(ChunkFileError):
    """Blocks failed their checksum. ``blocks`` lists them, and details name the first."""

    reason = "block_checksum"

    def __init__(self, message: str, *, blocks: Sequence[int], **details: Any) -> None:
        super().__init__(message, block=blocks[0], bad_blocks=len(blocks), **details)
        self.blocks = tuple(blocks)


class ChunkRangeError(ChunkFileError):
    default_code = ErrorCode.INVALID_ARGUMENT
    reason = "out_of_range"


class ChunkIdError(ChunkFileError):
    default_code = ErrorCode.INVALID_ARGUMENT
    reason = "bad_chunk_id"


# ---- header ------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _block_bytes_ok(block_bytes: object) -> bool:
    return (isinstance(block_bytes, int) and not isinstance(block_bytes, bool)
            and BLOCK_BYTES_MIN <= block_bytes <= BLOCK_BYTES_MAX and block_bytes & (block_bytes - 1) == 0)


def _header_problem(*, chunk_id: object, version: object, block_bytes: object, capacity_blocks: object,
                    length_bytes: object, flags: object) -> tuple[str, str] | None:
    """(field, what is wrong) for the first impossible field, or None. Shared by ChunkHeader
    (our bug: LocalProtocolError) and decode_header (a bad file: ImpossibleHeader)."""
    for name, value in (("chunk_id", chunk_id), ("version", version), ("block_bytes", block_bytes),
                        ("capacity_blocks", capacity_blocks), ("length_bytes", length_bytes), ("flags", flags)):
        if not _is_int(value):
            return name, f"{type(value).__name__} is not an integer"
    assert isinstance(chunk_id, int) and isinstance(version, int) and isinstance(capacity_blocks, int)
    assert isinstance(block_bytes, int) and isinstance(length_bytes, int) and isinstance(flags, int)
    if not 1 <= chunk_id <= CHUNK_ID_MAX:
        return "chunk_id", f"{chunk_id} is outside 1..2**63-1"
    if not 1 <= version <= VERSION_MAX:
        return "version", f"{version} is outside 1..2**63-1"
    if not _block_bytes_ok(block_bytes):
        return "block_bytes", f"{block_bytes} is not a power of two in [{BLOCK_BYTES_MIN}, {BLOCK_BYTES_MAX}]"
    if not 1 <= capacity_blocks <= CHUNK_BYTES_MAX // block_bytes:
        return "capacity_blocks", (f"{capacity_blocks} blocks of {block_bytes} bytes is not a chunk size in "
                                   f"[{block_bytes}, {CHUNK_BYTES_MAX}] bytes")
    if not 0 <= length_bytes <= capacity_blocks * block_bytes:
        return "length_bytes", f"{length_bytes} is outside the chunk's [0, {capacity_blocks * block_bytes}]"
    if flags < 0 or flags & ~_KNOWN_FLAGS:
        return "flags", f"{flags:#x} has bits this version does not know (known: {_KNOWN_FLAGS:#x})"
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChunkHeader:
    """The decoded header of one replica file. It always describes a possible file: the
    constructor raises LocalProtocolError for any field out of range (see the module
    docstring). Keyword-only, so that two of its six integers cannot be swapped silently."""

    chunk_id: int
    version: int
    block_bytes: int
    capacity_blocks: int
    length_bytes: int = 0
    flags: ChunkFlag = ChunkFlag(0)

    def __post_init__(self) -> None:
        problem = _header_problem(chunk_id=self.chunk_id, version=self.version, block_bytes=self.block_bytes,
                                  capacity_blocks=self.capacity_blocks, length_bytes=self.length_bytes,
                                  flags=self.flags)
        if problem is not None:
            raise LocalProtocolError(f"chunk header {problem[0]}: {problem[1]}")
        object.__setattr__(self, "flags", ChunkFlag(self.flags))

    @property
    def chunk_bytes(self) -> int:
        return self.capacity_blocks * self.block_bytes

    @property
    def table_bytes(self) -> int:
        return self.capacity_blocks * SLOT_BYTES

    @property
    def data_offset(self) -> int:
        """Where block 0 starts in the file: past the header and the table, block-aligned."""
        return -(-(TABLE_OFFSET + self.table_bytes) // self.block_bytes) * self.block_bytes

    @property
    def file_bytes_max(self) -> int:
        """The file's size when every block is stored (a sparse file is shorter)."""
        return self.data_offset + self.chunk_bytes

    @property
    def used_blocks(self) -> int:
        """Blocks holding content: those that start below the valid length."""
        return -(-self.length_bytes // self.block_bytes)

    @property
    def incomplete(self) -> bool:
        return bool(self.flags & ChunkFlag.INCOMPLETE)


def new_header(chunk_id: int, version: int, *, chunk_bytes: int, block_bytes: int = BLOCK_BYTES_DEFAULT,
               flags: ChunkFlag = ChunkFlag.INCOMPLETE) -> ChunkHeader:
    """The header of a new, empty replica file: length 0 and, by default, INCOMPLETE (a new
    file is a copy target or a first write until the store says otherwise). Raises
    LocalProtocolError when chunk_bytes is not a multiple of block_bytes, or any field is
    out of range."""
    if not _block_bytes_ok(block_bytes) or not _is_int(chunk_bytes) or chunk_bytes % block_bytes:
        raise LocalProtocolError(f"chunk of {chunk_bytes!r} bytes is not a whole number of "
                                 f"{block_bytes!r}-byte blocks")
    return ChunkHeader(chunk_id=chunk_id, version=version, block_bytes=block_bytes,
                       capacity_blocks=chunk_bytes // block_bytes, flags=flags)


def encode_header(header: ChunkHeader) -> bytes:
    """The HEADER_BYTES bytes that go at offset 0 of the replica's file. Deterministic."""
    body = _HEADER_BODY.pack(MAGIC, FORMAT_VERSION, 0, header.block_bytes, int(header.flags), header.chunk_id,
                             header.version, header.capacity_blocks, header.length_bytes, 0)
    return body + _U64.pack(xxh3_64_intdigest(body))


def _decode(raw: bytes, chunk: int | None) -> ChunkHeader:
    if len(raw) > HEADER_BYTES:
        raise LocalProtocolError(f"decode_header takes the {HEADER_BYTES}-byte header, not {len(raw)} bytes")
    if len(raw) < HEADER_BYTES:
        raise TruncatedHeader(f"chunk file holds {len(raw)} of its {HEADER_BYTES} header bytes", chunk=chunk)
    raw = bytes(raw)
    # The checks run in this order. The magic comes first, so that a file which is not a
    # chunk file is named as such. The format version comes before the checksum, because
    # another version may checksum differently. The checksum comes before any field is
    # judged, so a random flip reports as a checksum mismatch and "impossible value" means
    # the bytes are authentic but wrong, i.e. a writer's bug.
    if raw[:4] != MAGIC:
        raise BadMagic(f"not a chunk file: magic {raw[:4]!r}, expected {MAGIC!r}", chunk=chunk)
    (_, fmt, reserved16, block_bytes, flags, chunk_id, version, capacity_blocks, length_bytes,
     reserved64) = _HEADER_BODY.unpack_from(raw)
    if fmt != FORMAT_VERSION:
        raise UnknownFormatVersion(f"chunk file format {fmt}; this version reads only {FORMAT_VERSION}",
                                   chunk=chunk)
    (stored,) = _U64.unpack_from(raw, _HEADER_BODY.size)
    computed = xxh3_64_intdigest(raw[:_HEADER_BODY.size])
    if stored != computed:
        raise HeaderChecksumMismatch(f"chunk header checksum {stored:016x}, computed {computed:016x}", chunk=chunk)
    if reserved16 or reserved64:
        raise ImpossibleHeader("chunk header reserved bytes are not zero", field="reserved", chunk=chunk)
    problem = _header_problem(chunk_id=chunk_id, version=version, block_bytes=block_bytes,
                              capacity_blocks=capacity_blocks, length_bytes=length_bytes, flags=flags)
    if problem is not None:
        raise ImpossibleHeader(f"chunk header {problem[0]}: {problem[1]}", field=problem[0], chunk=chunk)
    return ChunkHeader(chunk_id=chunk_id, version=version, block_bytes=block_bytes,
                       capacity_blocks=capacity_blocks, length_bytes=length_bytes, flags=ChunkFlag(flags))


def decode_header(raw: bytes) -> ChunkHeader:
    """Decode and check the HEADER_BYTES bytes read from offset 0 of a replica file.

    Raises a ChunkFormatError subclass: TruncatedHeader (fewer bytes: the file is shorter than
    its header), BadMagic, UnknownFormatVersion, HeaderChecksumMismatch or ImpossibleHeader.
    Every single-bit flip in the header raises one of them. More bytes than HEADER_BYTES is
    the caller's bug and raises LocalProtocolError. Does not check the chunk id or version:
    ``check_header`` does both.
    """
    return _decode(raw, None)


def expect(header: ChunkHeader, chunk_id: int, version: int) -> None:
    """Check that ``header`` is that of ``chunk_id`` at ``version``, the replica a request names.

    Raises WrongChunk when the file belongs to another chunk, which means a misdirected write,
    or a file that was swapped, renamed or restored to the wrong place. Raises WrongVersion
    (code STALE_VERSION, details chunk, have, want) when the replica is at another version.
    A CS serves a request only at its own version, never older and never newer.
    """
    if header.chunk_id != chunk_id:
        raise WrongChunk(f"chunk file of chunk {chunk_id:016x} holds chunk {header.chunk_id:016x}",
                         chunk=chunk_id, found=header.chunk_id)
    if header.version != version:
        raise WrongVersion(f"chunk {chunk_id:016x} replica is at version {header.version}, request names {version}",
                           chunk=chunk_id, have=header.version, want=version)


def check_header(raw: bytes, chunk_id: int, version: int) -> ChunkHeader:
    """``decode_header`` then ``expect``: what the store runs on every open and every read.
    Errors from the decode name ``chunk_id`` in their details."""
    header = _decode(raw, chunk_id)
    expect(header, chunk_id, version)
    return header


# ---- offsets and block arithmetic --------------------------------------------------------------


def data_offset(header: ChunkHeader) -> int:
    """Where block 0 starts in the file (block i starts at data_offset + i * block_bytes)."""
    return header.data_offset


def _check_block(header: ChunkHeader, block: int) -> None:
    if not _is_int(block) or not 0 <= block < header.capacity_blocks:
        raise LocalProtocolError(f"block {block!r} outside the chunk's {header.capacity_blocks} blocks")


def slot_offset(header: ChunkHeader, block: int) -> int:
    """Where block ``block``'s checksum slot sits in the file. Takes the header so that an
    index past the table raises LocalProtocolError instead of pointing into the data area."""
    _check_block(header, block)
    return TABLE_OFFSET + block * SLOT_BYTES


def block_offset(header: ChunkHeader, block: int) -> int:
    """Where block ``block``'s bytes sit in the file (LocalProtocolError outside the chunk)."""
    _check_block(header, block)
    return header.data_offset + block * header.block_bytes


def block_range(offset: int, length: int, block_bytes: int) -> tuple[int, int]:
    """(first block, last block inclusive) of the byte range [offset, offset + length).

    A range of length 0 touches no block and is the caller's to handle: asking raises
    LocalProtocolError, as do a negative offset and an invalid block size.
    """
    if not _block_bytes_ok(block_bytes):
        raise LocalProtocolError(f"block_bytes {block_bytes!r} is not a power of two in "
                                 f"[{BLOCK_BYTES_MIN}, {BLOCK_BYTES_MAX}]")
    if not (_is_int(offset) and _is_int(length)) or offset < 0 or length < 1:
        raise LocalProtocolError(f"byte range ({offset!r}, {length!r}) is not offset >= 0, length >= 1")
    return offset // block_bytes, (offset + length - 1) // block_bytes


def _check_request(header: ChunkHeader, offset: object, length: object) -> None:
    if not (_is_int(offset) and _is_int(length)):
        raise ChunkRangeError(f"offset and length must be integers, not {type(offset).__name__} and "
                              f"{type(length).__name__}", chunk=header.chunk_id)
    assert isinstance(offset, int) and isinstance(length, int)
    if offset < 0 or length < 0 or offset + length > header.chunk_bytes:
        raise ChunkRangeError(f"range [{offset}, {offset + length}) is outside chunk {header.chunk_id:016x} "
                              f"of {header.chunk_bytes} bytes", chunk=header.chunk_id, offset=offset, length=length)


# ---- checksums ---------------------------------------------------------------------------------


def block_checksum(block: bytes | bytearray | memoryview) -> int:
    """The slot value for a block of ``block``'s bytes: xxh3_64 of exactly those bytes, with a
    result of 0 mapped to ZERO_CHECKSUM so that it never reads as HOLE. Callers pass full
    blocks (a short block at EOF padded with zeros, as ``verify_blocks`` and ``assemble_write``
    do). Deterministic and the same on every replica."""
    value = xxh3_64_intdigest(block)
    return value if value != HOLE else ZERO_CHECKSUM


def encode_slots(slots: Sequence[int]) -> bytes:
    """The table bytes for consecutive slots (8 bytes each, big-endian)."""
    return struct.pack(f">{len(slots)}Q", *slots)


def decode_slots(raw: bytes | bytearray | memoryview) -> list[int]:
    """The slot values in ``raw``, which must be a whole number of slots (LocalProtocolError
    otherwise; a short pread of the table is the store's to report as a damaged replica)."""
    if len(raw) % SLOT_BYTES:
        raise LocalProtocolError(f"{len(raw)} bytes is not a whole number of {SLOT_BYTES}-byte slots")
    return list(struct.unpack(f">{len(raw) // SLOT_BYTES}Q", raw))


def _check_extent(header: ChunkHeader, first_block: int, data: bytes | bytearray | memoryview,
                  slots: Sequence[int]) -> None:
    if not _is_int(first_block) or first_block < 0 or first_block + len(slots) > header.capacity_blocks:
        raise LocalProtocolError(f"blocks {first_block!r}+{len(slots)} outside the chunk's "
                                 f"{header.capacity_blocks} blocks")
    if len(data) > len(slots) * header.block_bytes:
        raise LocalProtocolError(f"{len(data)} data bytes for {len(slots)} blocks of {header.block_bytes}")


def verify_blocks(header: ChunkHeader, first_block: int, data: bytes | bytearray | memoryview,
                  slots: Sequence[int]) -> list[int]:
    """The blocks among ``first_block .. first_block + len(slots) - 1`` that fail their
    checksum, in ascending order. An empty list means that all of them pass. Pure.

    ``data`` is what was read from ``block_offset(header, first_block)`` for those blocks.
    It may be short (pread stops at EOF in a sparse file), and the missing bytes count as
    zeros. ``slots`` are their table entries (``decode_slots``). A block with a HOLE slot
    passes, because it reads as zeros whatever is stored. A block wholly past the valid
    length passes, because nothing there is content. Any other block passes only if its
    stored bytes, padded with zeros to a full block, have the slot's checksum. A flip in a
    slot, or in a stored byte of a block that has a checksum, therefore names exactly that
    block. (A flip in the stored bytes of a HOLE block changes nothing that is read.) The
    scrubber calls this and reports the blocks; a read calls ``verified_content``.
    """
    _check_extent(header, first_block, data, slots)
    size = header.block_bytes
    used = header.used_blocks
    view = memoryview(data)
    bad = []
    for k, slot in enumerate(slots):
        block = first_block + k
        if slot == HOLE or block >= used:
            continue
        stored = view[k * size:(k + 1) * size]
        if len(stored) < size:
            stored = memoryview(bytes(stored) + bytes(size - len(stored)))
        if block_checksum(stored) != slot:
            bad.append(block)
    return bad


def verified_content(header: ChunkHeader, first_block: int, data: bytes | bytearray | memoryview,
                     slots: Sequence[int]) -> bytes:
    """The content of ``len(slots)`` blocks from ``first_block``, ``len(slots) * block_bytes``
    bytes, after checking each block as ``verify_blocks`` does. HOLE blocks and bytes at or
    past the valid length come back as zeros.

    Raises BlockChecksumMismatch (code CHECKSUM_MISMATCH, details chunk, version, block) if
    any block fails. No byte is returned then, not even the bytes of the blocks that passed
    (DESIGN.md §5: a mismatch returns an error, never the bytes).
    """
    bad = verify_blocks(header, first_block, data, slots)
    if bad:
        listed = ", ".join(str(b) for b in bad[:8]) + (", ..." if len(bad) > 8 else "")
        raise BlockChecksumMismatch(f"chunk {header.chunk_id:016x} version {header.version}: "
                                    f"{len(bad)} block(s) failed their checksum: {listed}",
                                    blocks=bad, chunk=header.chunk_id, version=header.version)
    size = header.block_bytes
    total = len(slots) * size
    content_end = header.length_bytes - first_block * size
    if len(data) == total and content_end >= total and HOLE not in slots:
        return data if isinstance(data, bytes) else bytes(data)  # the common case: all stored content
    out = bytearray(total)
    out[:len(data)] = data
    for k, slot in enumerate(slots):
        if slot == HOLE:
            out[k * size:(k + 1) * size] = bytes(size)
    if content_end < len(out):
        out[max(content_end, 0):] = bytes(len(out) - max(content_end, 0))
    return bytes(out)


# ---- reads -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReadPlan:
    """What to pread for a read of a replica. The result is
    ``verified_content(header, first_block, data, slots)[skip_bytes:skip_bytes + length_bytes]``."""

    first_block: int
    block_count: int         # 0: nothing to read (the range starts at or past the valid length)
    data_file_offset: int    # pread(block_count * block_bytes) here ...
    data_read_bytes: int
    slot_file_offset: int    # ... and pread(block_count * SLOT_BYTES) here
    slot_read_bytes: int
    skip_bytes: int          # the range starts this far into the first block
    length_bytes: int        # bytes returned: the range cut at the valid length


def plan_read(header: ChunkHeader, offset: int, length: int) -> ReadPlan:
    """Plan a read of ``length`` bytes from ``offset`` in the chunk. Pure.

    The range is cut at the valid length, like a pread at EOF. The client knows the file
    size and fills any shortfall with zeros. Raises ChunkRangeError for a range outside the
    chunk's capacity.
    """
    _check_request(header, offset, length)
    end = min(offset + length, header.length_bytes)
    if end <= offset:
        return ReadPlan(first_block=0, block_count=0, data_file_offset=header.data_offset, data_read_bytes=0,
                        slot_file_offset=TABLE_OFFSET, slot_read_bytes=0, skip_bytes=0, length_bytes=0)
    first, last = block_range(offset, end - offset, header.block_bytes)
    count = last - first + 1
    return ReadPlan(first_block=first, block_count=count, data_file_offset=block_offset(header, first),
                    data_read_bytes=count * header.block_bytes, slot_file_offset=slot_offset(header, first),
                    slot_read_bytes=count * SLOT_BYTES, skip_bytes=offset - first * header.block_bytes,
                    length_bytes=end - offset)


# ---- writes ------------------------------------------------------------------------------------


class BlockWrite(NamedTuple):
    """One block that a write or resize rewrites. (A NamedTuple: a 1 MiB write plans 256 of
    them, and a frozen dataclass costs several times more to build.)

    The block's new content is its old bytes ``[0, keep_bytes)``, then zeros to the end of
    the block, with ``data[data_start:data_end]`` of the write laid over it at
    ``offset_in_block``. ``keep_bytes`` is 0 when no old byte survives (the block is wholly
    overwritten, or its old bytes are not content), and then the block is not read. A block
    with nothing kept and nothing written (``hole``) gets a HOLE slot and no data write.
    """

    block: int
    keep_bytes: int
    offset_in_block: int
    data_start: int
    data_end: int

    @property
    def read(self) -> bool:
        """The old block must be read (and verified) before the write."""
        return self.keep_bytes > 0

    @property
    def hole(self) -> bool:
        return self.keep_bytes == 0 and self.data_start == self.data_end


@dataclasses.dataclass(frozen=True)
class WritePlan:
    """The blocks a write or resize touches, in ascending order and contiguous, and the
    header after it. ``assemble_write`` turns the plan into pwrites."""

    header: ChunkHeader              # after the operation (the length may have changed)
    length_before_bytes: int
    blocks: tuple[BlockWrite, ...]
    data_bytes: int                  # the length of the buffer that assemble_write takes

    @property
    def header_changed(self) -> bool:
        return self.header.length_bytes != self.length_before_bytes

    @property
    def reads(self) -> tuple[int, ...]:
        """Blocks to read and verify (``verified_content``) before assembling: at most the two
        partial ends of the written range, plus the old last block when a gap is cleared."""
        return tuple(b.block for b in self.blocks if b.read)


def _plan(header: ChunkHeader, offset: int, data_bytes: int, length_after: int) -> WritePlan:
    size = header.block_bytes
    length_before = header.length_bytes
    after = dataclasses.replace(header, length_bytes=length_after)
    # The region to rewrite is the written range plus the region that the length rises
    # over, [length_before, length_after), whose old bytes and slots are stale and must read
    # as zeros. The two regions always touch (a write past the length raises the length
    # exactly to its end), so one contiguous block range covers both.
    regions = []
    if data_bytes:
        regions.append((offset, offset + data_bytes))
    if length_after > length_before:
        regions.append((length_before, length_after))
    if not regions:
        return WritePlan(header=after, length_before_bytes=length_before, blocks=(), data_bytes=data_bytes)
    start, end = min(r[0] for r in regions), max(r[1] for r in regions)
    assert all(r[0] <= min(rr[1] for rr in regions) for r in regions), "regions must touch"
    first, last = block_range(start, end - start, size)
    blocks = []
    for block in range(first, last + 1):
        base = block * size
        keep = min(size, max(0, length_before - base))
        lo, hi = max(offset, base), min(offset + data_bytes, base + size)
        if data_bytes and lo < hi:
            if lo == base and hi - base >= keep:
                keep = 0  # the write covers every old byte that is content: nothing to read
            blocks.append(BlockWrite(block=block, keep_bytes=keep, offset_in_block=lo - base,
                                     data_start=lo - offset, data_end=hi - offset))
        else:
            assert keep < size, "an unwritten block in the plan lies at least partly in the cleared region"
            blocks.append(BlockWrite(block=block, keep_bytes=keep, offset_in_block=0, data_start=0, data_end=0))
    return WritePlan(header=after, length_before_bytes=length_before, blocks=tuple(blocks), data_bytes=data_bytes)


def plan_write(header: ChunkHeader, offset: int, length: int) -> WritePlan:
    """Plan a write of ``length`` bytes at ``offset`` into the replica described by
    ``header``. Pure and deterministic.

    Every block of the range is rewritten whole. A block is read first only when old content
    survives in it, i.e. when it is only partly written and holds content below the valid
    length outside the written part. A block-aligned write therefore reads nothing, and an
    unaligned one reads at most its head and tail blocks. A write past the valid length also
    clears the gap between the old length and ``offset``: the old last block is cut at the old
    length (one read, when that length is not block-aligned), and the blocks wholly inside
    the gap get HOLE slots (see "The valid length" in the module docstring). The header's
    length rises to ``offset + length`` when that is larger. A zero-length write changes
    nothing. Raises ChunkRangeError for a range outside the chunk's capacity.
    """
    _check_request(header, offset, length)
    return _plan(header, offset, length, max(header.length_bytes, offset + length) if length else header.length_bytes)


def plan_resize(header: ChunkHeader, length_bytes: int) -> WritePlan:
    """Plan setting the replica's valid length to ``length_bytes`` (a truncate into this
    chunk). Pure.

    A shrink writes only the header. The bytes past the new length stay on disk and are no
    longer content. The store may punch out the blocks wholly past it to free their space.
    A growth clears ``[old length, new length)`` exactly as a write past the length does,
    so the new range reads as zeros. Raises ChunkRangeError past the chunk's capacity.
    """
    _check_request(header, length_bytes, 0)
    return _plan(header, 0, 0, length_bytes)


def merge_block(old_block: bytes | bytearray | memoryview, offset_in_block: int,
                new_bytes: bytes | bytearray | memoryview) -> bytes:
    """``old_block`` with ``new_bytes`` laid over it at ``offset_in_block``, of the same
    length. LocalProtocolError if the new bytes do not fit inside the block."""
    if not _is_int(offset_in_block) or offset_in_block < 0 or offset_in_block + len(new_bytes) > len(old_block):
        raise LocalProtocolError(f"{len(new_bytes)} bytes at {offset_in_block!r} do not fit a "
                                 f"{len(old_block)}-byte block")
    merged = bytearray(old_block)
    merged[offset_in_block:offset_in_block + len(new_bytes)] = new_bytes
    return bytes(merged)


def assemble_write(plan: WritePlan, data: bytes | bytearray | memoryview,
                   old_blocks: Mapping[int, bytes]) -> list[tuple[int, bytes | memoryview]]:
    """The pwrites that carry out ``plan``, as (file offset, bytes), in the order to issue
    them: the data blocks (one pwrite per contiguous run), then one pwrite of the slots of
    every planned block, then the header if the length changed. Pure.

    ``data`` is the write's buffer (``plan.data_bytes`` long). ``old_blocks`` maps each of
    ``plan.reads`` to that block's content, one full block from ``verified_content``. Only
    its first ``keep_bytes`` are used, so old bytes past the valid length never survive.
    Blocks never verified must not be passed. Raises LocalProtocolError for a buffer of the
    wrong length, or a missing or extra old block. The store fsyncs after the last pwrite
    and acks only then (module docstring, "Writes").
    """
    header = plan.header
    size = header.block_bytes
    if len(data) != plan.data_bytes:
        raise LocalProtocolError(f"write plan is for {plan.data_bytes} bytes, got {len(data)}")
    if set(old_blocks) != set(plan.reads):
        raise LocalProtocolError(f"write plan reads blocks {sorted(plan.reads)}, got {sorted(old_blocks)}")
    view = memoryview(data)
    pwrites: list[tuple[int, bytes | memoryview]] = []
    slots: list[int] = []
    # The current run of contiguous data blocks: its first block and its pieces. A block the
    # write covers whole is a slice of ``data`` (no copy); consecutive slices are written
    # as the one slice of ``data`` they make up.
    run_first, run = -1, []
    direct_from = direct_to = -1  # the run as one slice of data, while it is one

    def flush() -> None:
        nonlocal run
        if run:
            if direct_from >= 0:
                pwrites.append((block_offset(header, run_first), view[direct_from:direct_to]))
            else:
                pwrites.append((block_offset(header, run_first), b"".join(run)))
            run = []

    for bw in plan.blocks:
        if bw.hole:
            slots.append(HOLE)
            flush()
            continue
        if not bw.keep_bytes and not bw.offset_in_block and bw.data_end - bw.data_start == size:
            content: bytes | memoryview = view[bw.data_start:bw.data_end]
            whole = True
        else:
            whole = False
            base = bytearray(size)
            if bw.read:
                old = old_blocks[bw.block]
                if len(old) != size:
                    raise LocalProtocolError(f"old block {bw.block} is {len(old)} bytes, not {size}")
                base[:bw.keep_bytes] = old[:bw.keep_bytes]
            content = merge_block(base, bw.offset_in_block, view[bw.data_start:bw.data_end])
        slots.append(block_checksum(content))
        if not run:
            run_first = bw.block
            direct_from, direct_to = (bw.data_start, bw.data_end) if whole else (-1, -1)
        elif direct_from >= 0 and whole and bw.data_start == direct_to:
            direct_to = bw.data_end
        else:
            direct_from = -1
        run.append(content)
    flush()
    if plan.blocks:
        pwrites.append((slot_offset(header, plan.blocks[0].block), encode_slots(slots)))
    if plan.header_changed:
        pwrites.append((0, encode_header(header)))
    return pwrites


# ---- file names --------------------------------------------------------------------------------

CHUNK_FILE_SUFFIX = ".chunk"
#: The 256 shard directories under a data dir. A chunk's file goes into the one named by
#: its id's low byte, so that no directory grows past a few thousand entries even with a
#: million replicas. The low byte is used because ids are handed out in sequence, which
#: spreads new chunks evenly; the high byte would put them all in "00".
SHARD_DIRS = tuple(f"{i:02x}" for i in range(256))
#: Exactly what chunk_file_name produces: a lower-case hex shard, "/", 16 lower-case hex
#: digits of an id below 2**63, ".chunk". Nothing else in a data dir is a chunk file.
CHUNK_FILE_NAME_RE = re.compile(r"\A([0-9a-f]{2})/([0-7][0-9a-f]{15})\.chunk\Z")


def parse_chunk_id(value: object) -> int:
    """``value`` as a chunk id, if it is exactly a Python int in 1 .. 2**63-1.

    Anything else raises ChunkIdError (code INVALID_ARGUMENT), and does so before any path
    is built from it (RELIABILITY.md F24): bool, an int subclass (its formatting could be
    overridden), float, str, bytes, None, containers, 0, negatives and anything of 2**63 or
    more. The store builds paths only as ``chunk_file_name(parse_chunk_id(x))``.
    """
    if type(value) is not int:
        raise ChunkIdError(f"chunk id must be an int, not {type(value).__name__}", type=type(value).__name__)
    if not 1 <= value <= CHUNK_ID_MAX:
        # str() of a huge int is refused by Python (and costly), so name its size instead.
        shown = str(value) if value.bit_length() <= 64 else f"a {value.bit_length()}-bit integer"
        raise ChunkIdError(f"chunk id {shown} is outside 1..2**63-1")
    return value


def chunk_file_name(chunk_id: int) -> str:
    """The replica file's path relative to the data dir: ``"ab/00000000000001ab.chunk"``
    (shard = the id's low byte). Validates the id with ``parse_chunk_id`` itself, so the
    result always matches CHUNK_FILE_NAME_RE and holds no "..", no NUL and no absolute path.
    Deterministic."""
    cid = parse_chunk_id(chunk_id)
    name = f"{cid & 0xFF:02x}/{cid:016x}{CHUNK_FILE_SUFFIX}"
    assert CHUNK_FILE_NAME_RE.match(name), name
    return name


def parse_chunk_file_name(name: object) -> int:
    """The chunk id that the relative path ``name`` (``"ab/00000000000001ab.chunk"``) stores,
    for the store's start-up scan of its data dir. Raises ChunkIdError for anything that
    ``chunk_file_name`` would not produce: another form or case, a wrong shard, or id 0.
    The store reports stray files and never opens them as replicas."""
    if type(name) is not str:
        raise ChunkIdError(f"chunk file name must be a str, not {type(name).__name__}", type=type(name).__name__)
    match = CHUNK_FILE_NAME_RE.match(name)
    if match is None:
        raise ChunkIdError(f"{name[:80]!r} is not a chunk file name (expected like 'ab/00000000000001ab.chunk')")
    cid = int(match.group(2), 16)
    if cid == 0 or int(match.group(1), 16) != cid & 0xFF:
        raise ChunkIdError(f"{name!r} is not a chunk file name (id 0, or not in its shard {cid & 0xFF:02x})")
    return cid
