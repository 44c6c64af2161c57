"""The chunk replica file layout (vstore/chunkserver/chunkfile.py; DESIGN.md §5, RELIABILITY.md
§4.4 and rows F11, F18, F24).

The layout is checked against naive references on random inputs: a byte array written
through the module's plans must read back exactly like a byte array overwritten directly,
and every bit flip in a header, a data block or a checksum slot must be caught, naming the
exact block where a block is hit.
"""

from __future__ import annotations

import decimal
import fractions
import random
import struct

import pytest
import xxhash
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vstore import errors
from vstore.chunkserver import chunkfile as cf
from vstore.metadata.fsm import schema
from vstore.wire import ErrorCode, LocalProtocolError

BLOCK_SIZES = [cf.BLOCK_BYTES_MIN << i for i in range(12)]  # 512 .. 1 MiB
IDS = st.integers(1, cf.CHUNK_ID_MAX)
FAST = settings(max_examples=100, deadline=None)
#: For the tests that replay a whole history of writes: each example costs ~15 ms.
HISTORY = settings(max_examples=60, deadline=None)


@st.composite
def headers(draw: st.DrawFn, block_sizes: list[int] = BLOCK_SIZES) -> cf.ChunkHeader:
    block_bytes = draw(st.sampled_from(block_sizes))
    capacity = draw(st.integers(1, cf.CHUNK_BYTES_MAX // block_bytes))
    return cf.ChunkHeader(chunk_id=draw(IDS), version=draw(st.integers(1, cf.VERSION_MAX)), block_bytes=block_bytes,
                          capacity_blocks=capacity, length_bytes=draw(st.integers(0, capacity * block_bytes)),
                          flags=draw(st.sampled_from([cf.ChunkFlag(0), cf.ChunkFlag.INCOMPLETE])))


def _signed(body: bytes) -> bytes:
    """A header body with a correct checksum: authentic bytes, whatever the fields say."""
    return body + struct.pack(">Q", xxhash.xxh3_64_intdigest(body))


def _body(*, fmt: int = 1, reserved16: int = 0, block_bytes: int = 4096, flags: int = 0, chunk_id: int = 5,
          version: int = 1, capacity: int = 16, length: int = 0, reserved64: int = 0) -> bytes:
    return struct.pack(">4sHHIIQQQQQ", b"VSCK", fmt, reserved16, block_bytes, flags, chunk_id, version, capacity,
                       length, reserved64)


# ---- a replica file as a byte array, written only through the module's plans ---------------


class Replica:
    """What store.py will do, minus the system calls: the file is a byte array, pread stops
    at its end, pwrite past the end extends it with zeros (like a sparse file)."""

    def __init__(self, header: cf.ChunkHeader) -> None:
        # A new file: the header, extended to data_offset so that the table reads as zeros.
        self.file = bytearray(cf.encode_header(header)) + bytearray(header.data_offset - cf.HEADER_BYTES)

    def pread(self, offset: int, count: int) -> bytes:
        return bytes(self.file[offset:offset + count])

    def pwrite(self, offset: int, data: bytes) -> None:
        if len(self.file) < offset:
            self.file.extend(bytes(offset - len(self.file)))
        self.file[offset:offset + len(data)] = data

    def header(self) -> cf.ChunkHeader:
        return cf.decode_header(self.pread(0, cf.HEADER_BYTES))

    def stored(self, header: cf.ChunkHeader, first: int, count: int) -> tuple[bytes, list[int]]:
        data = self.pread(cf.block_offset(header, first), count * header.block_bytes)
        return data, cf.decode_slots(self.pread(cf.slot_offset(header, first), count * cf.SLOT_BYTES))

    def apply(self, plan: cf.WritePlan, data: bytes) -> None:
        header = self.header()
        old = {b: cf.verified_content(header, b, *self.stored(header, b, 1)) for b in plan.reads}
        for offset, buf in cf.assemble_write(plan, data, old):
            self.pwrite(offset, buf)

    def write(self, offset: int, data: bytes) -> cf.WritePlan:
        plan = cf.plan_write(self.header(), offset, len(data))
        self.apply(plan, data)
        return plan

    def resize(self, length_bytes: int) -> None:
        self.apply(cf.plan_resize(self.header(), length_bytes), b"")

    def read(self, offset: int, length: int) -> bytes:
        header = self.header()
        plan = cf.plan_read(header, offset, length)
        if not plan.block_count:
            return b""
        data = self.pread(plan.data_file_offset, plan.data_read_bytes)
        slots = cf.decode_slots(self.pread(plan.slot_file_offset, plan.slot_read_bytes))
        content = cf.verified_content(header, plan.first_block, data, slots)
        return content[plan.skip_bytes:plan.skip_bytes + plan.length_bytes]

    def leave_crash_debris(self, rng: random.Random) -> None:
        """What a crash can leave past the valid length, from a write whose header update was
        lost: blocks (and the tail of the last block) written with their slots, and blocks
        wholly past the length whose slot update was lost too."""
        header = self.header()
        size, length = header.block_bytes, header.length_bytes
        for block in range(length // size, header.capacity_blocks):
            if rng.random() < 0.5:
                continue
            keep = max(0, length - block * size)
            content = cf.verified_content(header, block, *self.stored(header, block, 1))
            debris = content[:keep] + rng.randbytes(size - keep)
            self.pwrite(cf.block_offset(header, block), debris)
            if keep or rng.random() < 0.5:
                self.pwrite(cf.slot_offset(header, block), cf.encode_slots([cf.block_checksum(debris)]))

    def verify_all(self) -> list[int]:
        header = self.header()
        return cf.verify_blocks(header, 0, *self.stored(header, 0, header.capacity_blocks))


def _offsets(size: int, capacity: int) -> st.SearchStrategy[int]:
    """Offsets in a chunk, biased to block edges, where the off-by-ones live."""
    edges = st.builds(lambda b, d: min(max(b * size + d, 0), capacity * size), st.integers(0, capacity),
                      st.sampled_from([-1, 0, 1, size // 2, size - 1]))
    return st.one_of(st.integers(0, capacity * size), edges)


@st.composite
def histories(draw: st.DrawFn) -> tuple[int, int, list[tuple[str, int, int]]]:
    """(block_bytes, capacity_blocks, operations): writes, resizes and crash debris."""
    size = draw(st.sampled_from([512, 1024]))
    capacity = draw(st.integers(1, 10))
    chunk = size * capacity
    ops = []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["write", "write", "write", "resize", "debris"]))
        if kind == "write":
            offset = draw(_offsets(size, capacity))
            end = draw(st.one_of(_offsets(size, capacity), st.integers(offset, min(chunk, offset + 3))))
            offset, end = min(offset, end), max(offset, end)
            ops.append(("write", offset, end - offset))
        elif kind == "resize":
            ops.append(("resize", draw(_offsets(size, capacity)), 0))
        else:
            ops.append(("debris", draw(st.integers(0, 2**32)), 0))
    return size, capacity, ops


def _run(size: int, capacity: int, ops: list[tuple[str, int, int]], seed: int = 0,
         check: bool = True) -> tuple[Replica, bytearray]:
    """Apply ``ops`` to a Replica and to a naive byte array; check they agree after each."""
    rng = random.Random(seed)
    replica = Replica(cf.new_header(77, 3, chunk_bytes=size * capacity, block_bytes=size))
    model, length = bytearray(size * capacity), 0
    for kind, a, b in ops:
        if kind == "write":
            data = rng.randbytes(b)
            replica.write(a, data)
            model[a:a + b] = data
            length = max(length, a + b) if b else length
        elif kind == "resize":
            replica.resize(a)
            model[a:] = bytes(len(model) - a)  # truncated bytes are gone; growth reads zeros
            length = a
        else:
            replica.leave_crash_debris(random.Random(a))
        if not check:
            continue
        assert replica.header().length_bytes == length
        assert replica.read(0, size * capacity) == bytes(model[:length])
        assert replica.verify_all() == []
    return replica, model


# ---- header ----------------------------------------------------------------------------------


@FAST
@given(header=headers())
def test_a_header_survives_encode_and_decode_with_any_fields(header: cf.ChunkHeader) -> None:
    raw = cf.encode_header(header)
    assert len(raw) == cf.HEADER_BYTES == 64
    assert cf.decode_header(raw) == header
    assert cf.check_header(raw, header.chunk_id, header.version) == header


def test_the_header_layout_is_pinned_byte_for_byte() -> None:
    header = cf.new_header(0x1AB, 7, chunk_bytes=64 * 2**20)
    assert cf.encode_header(header).hex() == (
        "5653434b" "0001" "0000" "00001000" "00000001" "00000000000001ab" "0000000000000007"
        "0000000000004000" "0000000000000000" "0000000000000000" "28e518fd98f731ec")
    assert header.incomplete and header.capacity_blocks == 16384 and header.table_bytes == 131072
    assert cf.data_offset(header) == 135168 == 33 * 4096
    assert header.file_bytes_max == 135168 + 64 * 2**20
    assert cf.slot_offset(header, 0) == cf.TABLE_OFFSET == 64 and cf.slot_offset(header, 16383) == 64 + 8 * 16383
    assert cf.block_offset(header, 2) == 135168 + 2 * 4096


@settings(max_examples=25, deadline=None)
@given(header=headers())
def test_every_single_bit_flip_anywhere_in_a_header_is_detected(header: cf.ChunkHeader) -> None:
    raw = cf.encode_header(header)
    for bit in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(cf.ChunkFormatError):
            cf.decode_header(bytes(flipped))


@pytest.mark.parametrize(("raw", "error", "field"), [
    (b"", cf.TruncatedHeader, None),
    (_signed(_body())[:63], cf.TruncatedHeader, None),
    (b"VSCX" + _signed(_body())[4:], cf.BadMagic, None),
    (b"\0" * 64, cf.BadMagic, None),
    (_signed(_body(fmt=2)), cf.UnknownFormatVersion, None),
    (_signed(_body())[:-1] + b"\0", cf.HeaderChecksumMismatch, None),
    (_signed(_body(reserved16=1)), cf.ImpossibleHeader, "reserved"),
    (_signed(_body(reserved64=1)), cf.ImpossibleHeader, "reserved"),
    (_signed(_body(block_bytes=4000)), cf.ImpossibleHeader, "block_bytes"),
    (_signed(_body(block_bytes=256)), cf.ImpossibleHeader, "block_bytes"),
    (_signed(_body(block_bytes=2 << 20)), cf.ImpossibleHeader, "block_bytes"),
    (_signed(_body(chunk_id=0)), cf.ImpossibleHeader, "chunk_id"),
    (_signed(_body(chunk_id=2**63)), cf.ImpossibleHeader, "chunk_id"),
    (_signed(_body(version=0)), cf.ImpossibleHeader, "version"),
    (_signed(_body(capacity=0)), cf.ImpossibleHeader, "capacity_blocks"),
    (_signed(_body(capacity=2**18 + 1)), cf.ImpossibleHeader, "capacity_blocks"),  # > 1 GiB of 4 KiB blocks
    (_signed(_body(length=16 * 4096 + 1)), cf.ImpossibleHeader, "length_bytes"),
    (_signed(_body(flags=2)), cf.ImpossibleHeader, "flags"),
])
def test_each_kind_of_bad_header_raises_its_own_error(raw: bytes, error: type[cf.ChunkFormatError],
                                                     field: str | None) -> None:
    with pytest.raises(error) as info:
        cf.check_header(raw, 5, 1)
    assert type(info.value) is error
    assert info.value.code is ErrorCode.CHECKSUM_MISMATCH  # the replica is bad: read another one
    assert info.value.details["reason"] == error.reason and info.value.details["chunk"] == 5
    if field is not None:
        assert info.value.field == field and info.value.details["field"] == field


def test_a_header_longer_than_the_header_is_the_callers_bug() -> None:
    with pytest.raises(LocalProtocolError):
        cf.decode_header(_signed(_body()) + b"\0")


@pytest.mark.parametrize("fields", [
    {"chunk_id": 0}, {"chunk_id": 2**63}, {"chunk_id": True}, {"version": 0}, {"block_bytes": 3000},
    {"capacity_blocks": 0}, {"capacity_blocks": 2**18 + 1}, {"length_bytes": -1}, {"length_bytes": 16 * 4096 + 1},
    {"flags": 4}, {"chunk_id": 1.0},
])
def test_an_impossible_header_cannot_even_be_built(fields: dict[str, object]) -> None:
    base: dict[str, object] = {"chunk_id": 5, "version": 1, "block_bytes": 4096, "capacity_blocks": 16}
    with pytest.raises(LocalProtocolError):
        cf.ChunkHeader(**{**base, **fields})  # type: ignore[arg-type]


def test_a_new_header_is_empty_incomplete_and_a_whole_number_of_blocks() -> None:
    header = cf.new_header(5, 1, chunk_bytes=1 << 20)
    assert (header.length_bytes, header.incomplete, header.block_bytes, header.capacity_blocks) == (0, True, 4096, 256)
    with pytest.raises(LocalProtocolError):
        cf.new_header(5, 1, chunk_bytes=4096 * 16 + 512, block_bytes=4096)


def test_swapped_files_and_stale_replicas_are_refused_by_expect() -> None:
    mine = cf.new_header(1, 3, chunk_bytes=1 << 20)
    other = cf.new_header(2, 3, chunk_bytes=1 << 20)
    cf.expect(mine, 1, 3)
    with pytest.raises(cf.WrongChunk) as wrong_chunk:
        cf.check_header(cf.encode_header(other), 1, 3)  # chunk 2's file where chunk 1's should be
    with pytest.raises(cf.WrongVersion) as older:
        cf.expect(mine, 1, 4)
    with pytest.raises(cf.WrongVersion):
        cf.expect(mine, 1, 2)  # a newer replica is refused too: versions must be equal
    assert wrong_chunk.value.details == {"reason": "wrong_chunk", "chunk": 1, "found": 2}
    assert older.value.details == {"reason": "wrong_version", "chunk": 1, "have": 3, "want": 4}
    # Across the wire the codes decide the class: the client reads another replica on a
    # checksum mismatch, and refreshes its chunk map on a stale version.
    assert type(errors.from_wire(errors.to_wire(wrong_chunk.value))) is errors.ChecksumMismatch
    assert type(errors.from_wire(errors.to_wire(older.value))) is errors.StaleVersion


# ---- offsets and block arithmetic ---------------------------------------------------------------


@FAST
@given(header=headers())
def test_the_table_follows_the_header_and_the_data_starts_block_aligned_after_it(header: cf.ChunkHeader) -> None:
    table_end = cf.TABLE_OFFSET + header.capacity_blocks * cf.SLOT_BYTES
    assert cf.data_offset(header) % header.block_bytes == 0
    assert table_end <= cf.data_offset(header) < table_end + header.block_bytes
    last = header.capacity_blocks - 1
    assert cf.slot_offset(header, last) + cf.SLOT_BYTES == table_end
    assert cf.block_offset(header, last) + header.block_bytes == header.file_bytes_max
    for bad in (-1, header.capacity_blocks, True):
        with pytest.raises(LocalProtocolError):
            cf.slot_offset(header, bad)
        with pytest.raises(LocalProtocolError):
            cf.block_offset(header, bad)


@FAST
@given(size=st.sampled_from(BLOCK_SIZES), offset=st.integers(0, 2**31), length=st.integers(1, 2**22))
def test_block_range_names_the_first_and_last_block_a_byte_range_touches(size: int, offset: int,
                                                                        length: int) -> None:
    first, last = cf.block_range(offset, length, size)
    assert first * size <= offset < (first + 1) * size
    assert last * size <= offset + length - 1 < (last + 1) * size


@pytest.mark.parametrize(("offset", "length", "size"), [(0, 0, 4096), (-1, 1, 4096), (0, 1, 4000), (0, 1, 0)])
def test_block_range_refuses_an_empty_or_negative_range_and_a_bad_block_size(offset: int, length: int,
                                                                            size: int) -> None:
    with pytest.raises(LocalProtocolError):
        cf.block_range(offset, length, size)


def test_no_block_gets_the_hole_checksum_not_even_one_whose_xxh3_is_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    assert all(cf.block_checksum(bytes(size)) != cf.HOLE for size in BLOCK_SIZES)
    header = cf.ChunkHeader(chunk_id=9, version=1, block_bytes=512, capacity_blocks=2, length_bytes=1024)
    monkeypatch.setattr(cf, "xxh3_64_intdigest", lambda data: 0)
    assert cf.block_checksum(b"x" * 512) == cf.ZERO_CHECKSUM == int.from_bytes(b"VSCKZERO", "big")
    # The stand-in verifies in both directions; a HOLE slot over the same bytes reads as zeros.
    assert cf.verify_blocks(header, 0, b"x" * 1024, [cf.ZERO_CHECKSUM, cf.HOLE]) == []
    assert cf.verified_content(header, 0, b"x" * 1024, [cf.ZERO_CHECKSUM, cf.HOLE]) == b"x" * 512 + bytes(512)
    assert cf.verify_blocks(header, 0, b"x" * 1024, [1, cf.HOLE]) == [0]


def test_the_slot_table_round_trips_and_refuses_a_partial_slot() -> None:
    slots = [cf.HOLE, 1, 2**64 - 1, cf.ZERO_CHECKSUM]
    assert cf.decode_slots(cf.encode_slots(slots)) == slots
    assert cf.encode_slots([1]) == b"\0" * 7 + b"\1"  # big-endian
    with pytest.raises(LocalProtocolError):
        cf.decode_slots(b"\0" * 9)


def test_a_short_block_at_the_end_of_a_sparse_file_is_checked_as_if_padded_with_zeros() -> None:
    header = cf.ChunkHeader(chunk_id=9, version=1, block_bytes=512, capacity_blocks=2, length_bytes=1024)
    block = b"abc" + bytes(509)
    slots = [cf.block_checksum(block)] * 2
    assert cf.verify_blocks(header, 0, block + b"abc", slots) == []   # pread stopped 509 bytes early
    assert cf.verify_blocks(header, 0, block + b"abd", slots) == [1]
    # Bytes at or past the valid length are verified as stored but come back as zeros.
    cut = cf.ChunkHeader(chunk_id=9, version=1, block_bytes=512, capacity_blocks=2, length_bytes=2)
    assert cf.verified_content(cut, 0, block + b"abd", [slots[0], 12345]) == b"ab" + bytes(1022)
    assert cf.verify_blocks(cut, 0, b"abd" + bytes(509), slots) == [0]
    with pytest.raises(LocalProtocolError):
        cf.verify_blocks(header, 0, bytes(1025), slots)
    with pytest.raises(LocalProtocolError):
        cf.verify_blocks(header, 1, b"", slots)  # block 2 is past the table


# ---- bit flips in blocks and slots (F11) ---------------------------------------------------------


@HISTORY
@given(history=histories(), pick=st.integers(0, 2**32))
def test_a_bit_flip_in_a_data_block_is_detected_and_names_exactly_that_block(
        history: tuple[int, int, list[tuple[str, int, int]]], pick: int) -> None:
    replica, _ = _run(*history, check=False)
    header = replica.header()
    data, slots = replica.stored(header, 0, header.capacity_blocks)
    candidates = [b for b in range(header.used_blocks) if slots[b] != cf.HOLE]
    assume(candidates)
    block = candidates[pick % len(candidates)]
    bit = (pick // len(candidates)) % (header.block_bytes * 8)
    replica.file[cf.block_offset(header, block) + bit // 8] ^= 1 << (bit % 8)
    assert replica.verify_all() == [block]
    with pytest.raises(cf.BlockChecksumMismatch) as info:
        replica.read(0, header.length_bytes)
    assert info.value.blocks == (block,)
    assert info.value.details["block"] == block and info.value.details["chunk"] == 77
    assert type(errors.from_wire(errors.to_wire(info.value))) is errors.ChecksumMismatch


@HISTORY
@given(history=histories(), pick=st.integers(0, 2**32))
def test_a_bit_flip_in_a_checksum_slot_is_detected_and_names_exactly_that_block(
        history: tuple[int, int, list[tuple[str, int, int]]], pick: int) -> None:
    replica, _ = _run(*history, check=False)
    header = replica.header()
    assume(header.used_blocks)
    block = pick % header.used_blocks
    bit = (pick // header.used_blocks) % 64
    (slot,) = replica.stored(header, block, 1)[1]
    assume(slot != 1 << bit)  # a slot with one bit set flipping to HOLE: a 2**-58 case, reads as zeros
    replica.file[cf.slot_offset(header, block) + 7 - bit // 8] ^= 1 << (bit % 8)
    assert replica.verify_all() == [block]
    with pytest.raises(cf.BlockChecksumMismatch):
        replica.read(block * header.block_bytes, 1)


# ---- writes: plans against a naive byte array ------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(size=st.sampled_from([512, 4096, 1 << 20]), capacity=st.integers(1, 12), data=st.data())
def test_plan_write_touches_exactly_the_written_blocks_and_reads_only_partial_ends(
        size: int, capacity: int, data: st.DataObject) -> None:
    chunk = size * capacity
    length_before = data.draw(_offsets(size, capacity))
    offset = data.draw(_offsets(size, capacity))
    length = data.draw(st.integers(0, chunk - offset))
    header = cf.ChunkHeader(chunk_id=3, version=1, block_bytes=size, capacity_blocks=capacity,
                            length_bytes=length_before)
    plan = cf.plan_write(header, offset, length)
    if length == 0:
        assert plan.blocks == () and not plan.header_changed
        return
    assert plan.header.length_bytes == max(length_before, offset + length)
    assert plan.header_changed == (offset + length > length_before)
    first, last = cf.block_range(offset, length, size)
    written = [bw for bw in plan.blocks if bw.data_end > bw.data_start]
    assert [bw.block for bw in written] == list(range(first, last + 1))
    # Together the written blocks carry the whole buffer, in order, each piece at its place.
    assert [(bw.data_start, bw.data_end) for bw in written] == [
        (max(offset, b * size) - offset, min(offset + length, (b + 1) * size) - offset) for b in range(first, last + 1)]
    assert all(bw.block * size + bw.offset_in_block == offset + bw.data_start for bw in written)
    # A block is read only when old content survives outside the written part of it.
    for bw in written:
        content_end = min((bw.block + 1) * size, length_before)
        survives = any(not offset <= x < offset + length for x in (bw.block * size, content_end - 1)
                       if bw.block * size <= x < content_end)
        assert bw.read == survives
    # The only other blocks clear the gap [length_before, offset): the old last block is cut
    # (read) at the old length, and blocks wholly inside the gap become holes.
    gap = [bw for bw in plan.blocks if bw.data_end == bw.data_start]
    expected = set(range(length_before // size, (offset - 1) // size + 1)) - set(range(first, last + 1)) \
        if offset > length_before else set()
    assert {bw.block for bw in gap} == expected
    assert all(bw.read == (bw.block * size < length_before) and bw.hole != bw.read for bw in gap)
    assert [bw.block for bw in plan.blocks] == list(range(plan.blocks[0].block, plan.blocks[-1].block + 1))
    assert set(plan.reads) <= {first, last, length_before // size}


@FAST
@given(size=st.sampled_from([512, 4096]), capacity=st.integers(1, 64), data=st.data())
def test_a_block_aligned_write_reads_nothing_when_the_length_is_block_aligned(size: int, capacity: int,
                                                                             data: st.DataObject) -> None:
    length_before = data.draw(st.integers(0, capacity)) * size
    first = data.draw(st.integers(0, capacity - 1))
    count = data.draw(st.integers(1, capacity - first))
    header = cf.ChunkHeader(chunk_id=3, version=1, block_bytes=size, capacity_blocks=capacity,
                            length_bytes=length_before)
    plan = cf.plan_write(header, first * size, count * size)
    assert plan.reads == ()
    # With an unaligned length, the only extra read is the old last block, to cut it.
    header = cf.ChunkHeader(chunk_id=3, version=1, block_bytes=size, capacity_blocks=capacity,
                            length_bytes=max(0, length_before - 1))
    assert set(cf.plan_write(header, first * size, count * size).reads) <= {header.length_bytes // size}


@HISTORY
@given(history=histories(), seed=st.integers(0, 2**32))
def test_writes_and_resizes_through_the_plans_read_back_like_a_naive_byte_array(
        history: tuple[int, int, list[tuple[str, int, int]]], seed: int) -> None:
    """Method: each operation goes to a Replica (a byte-array file written only with
    assemble_write's pwrites) and to a plain byte array; after each, the replica's valid
    length and content equal the array's, and every block verifies. Crash debris (blocks
    written past the length whose header update was lost) is mixed in and must never show."""
    _run(*history, seed=seed)


def test_bytes_past_the_length_never_resurface_after_truncate_down_then_up() -> None:
    replica = Replica(cf.new_header(5, 1, chunk_bytes=4 * 512, block_bytes=512))
    replica.write(0, b"\xff" * 1536)
    replica.resize(100)
    assert replica.read(0, 2048) == b"\xff" * 100
    replica.resize(2048)  # grows: [100, 2048) must read as zeros
    assert replica.read(0, 2048) == b"\xff" * 100 + bytes(1948)
    replica.resize(10)
    replica.write(1800, b"z")  # a write past the length clears the gap the same way
    assert replica.read(0, 2048) == b"\xff" * 10 + bytes(1790) + b"z"
    assert replica.verify_all() == []


def test_a_sparse_write_leaves_holes_that_store_nothing_and_read_as_zeros() -> None:
    header = cf.new_header(5, 1, chunk_bytes=8 * 512, block_bytes=512)
    replica = Replica(header)
    plan = replica.write(6 * 512, b"q" * 512)
    assert plan.reads == () and [bw.hole for bw in plan.blocks] == [True] * 6 + [False]
    _, slots = replica.stored(replica.header(), 0, 8)
    assert slots[:6] == [cf.HOLE] * 6 and slots[7] == cf.HOLE and slots[6] == cf.block_checksum(b"q" * 512)
    assert replica.read(0, 4096) == bytes(3072) + b"q" * 512


def test_reads_stop_at_the_valid_length_and_requests_outside_the_chunk_are_refused() -> None:
    header = cf.ChunkHeader(chunk_id=5, version=1, block_bytes=512, capacity_blocks=4, length_bytes=700)
    plan = cf.plan_read(header, 600, 1000)
    assert (plan.first_block, plan.block_count, plan.skip_bytes, plan.length_bytes) == (1, 1, 88, 100)
    assert plan.data_file_offset == cf.block_offset(header, 1) and plan.slot_file_offset == cf.slot_offset(header, 1)
    assert cf.plan_read(header, 700, 10).block_count == 0 and cf.plan_read(header, 0, 0).length_bytes == 0
    for offset, length in ((-1, 1), (0, -1), (0, 2049), (2048, 1), (True, 1), (0, 1.0)):
        for planner in (cf.plan_read, cf.plan_write):
            with pytest.raises(cf.ChunkRangeError) as info:
                planner(header, offset, length)  # type: ignore[operator]
            assert info.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(cf.ChunkRangeError):
        cf.plan_resize(header, 2049)


def test_assemble_write_takes_exactly_the_verified_blocks_the_plan_reads() -> None:
    header = cf.ChunkHeader(chunk_id=5, version=1, block_bytes=512, capacity_blocks=4, length_bytes=2048)
    plan = cf.plan_write(header, 100, 600)
    assert plan.reads == (0, 1)
    old = {0: bytes(512), 1: bytes(512)}
    with pytest.raises(LocalProtocolError):
        cf.assemble_write(plan, bytes(600), {0: bytes(512)})             # a read block missing
    with pytest.raises(LocalProtocolError):
        cf.assemble_write(plan, bytes(600), {**old, 2: bytes(512)})      # a block it does not read
    with pytest.raises(LocalProtocolError):
        cf.assemble_write(plan, bytes(599), old)                         # the wrong buffer
    with pytest.raises(LocalProtocolError):
        cf.assemble_write(plan, bytes(600), {0: bytes(512), 1: bytes(511)})
    pwrites = cf.assemble_write(plan, b"n" * 600, old)
    # Data first, then the slots, and no header: the length did not change.
    assert [(offset, len(buf)) for offset, buf in pwrites] == [(cf.block_offset(header, 0), 1024),
                                                              (cf.slot_offset(header, 0), 16)]
    # Only the first keep_bytes of an old block survive: bytes past the old length never do.
    short = cf.ChunkHeader(chunk_id=5, version=1, block_bytes=512, capacity_blocks=4, length_bytes=10)
    plan = cf.plan_write(short, 20, 5)
    assert plan.reads == (0,) and plan.blocks[0].keep_bytes == 10
    (_, block), (_, slots), (_, raw) = cf.assemble_write(plan, b"12345", {0: b"k" * 512})
    assert block == b"k" * 10 + bytes(10) + b"12345" + bytes(487)
    assert cf.decode_slots(slots) == [cf.block_checksum(block)] and cf.decode_header(raw).length_bytes == 25


def test_merge_block_lays_new_bytes_over_the_old_block() -> None:
    assert cf.merge_block(b"abcdef", 2, b"XY") == b"abXYef"
    assert cf.merge_block(b"abc", 0, b"") == b"abc"
    for offset, new in ((5, b"XY"), (-1, b"X")):
        with pytest.raises(LocalProtocolError):
            cf.merge_block(b"abcdef", offset, new)


# ---- chunk ids and file names (F24) ----------------------------------------------------------------


class _LyingInt(int):
    def __format__(self, spec: str) -> str:
        return "../../etc/passwd"


JUNK_IDS = ["../x", "..%2f", "../../etc/x", b"\x00", "\x00", "1", b"1", "", -1, 0, 2**63, 2**64, 2**100_000, 1.5,
            float("nan"), float("inf"), 1.0, 1 + 0j, decimal.Decimal(1), fractions.Fraction(1), [1], (1,), {1: 1},
            {1}, True, False, None, object(), _LyingInt(5), bytearray(b"\x01")]


@pytest.mark.parametrize("junk", JUNK_IDS, ids=lambda v: type(v).__name__)
def test_a_junk_chunk_id_is_refused_before_any_path_is_built(junk: object) -> None:
    for parse in (cf.parse_chunk_id, cf.chunk_file_name):
        with pytest.raises(cf.ChunkIdError) as info:
            parse(junk)  # type: ignore[operator]
        assert info.value.code is ErrorCode.INVALID_ARGUMENT
        assert info.value.details["reason"] == "bad_chunk_id"
        assert "/" not in str(info.value)  # the message never echoes a junk id


@FAST
@given(chunk_id=st.one_of(IDS, st.sampled_from([1, 255, 256, 0x1AB, cf.CHUNK_ID_MAX])))
def test_a_chunk_file_name_always_matches_the_strict_pattern_and_names_its_id_back(chunk_id: int) -> None:
    name = cf.chunk_file_name(chunk_id)
    assert cf.CHUNK_FILE_NAME_RE.match(name)
    assert "/.." not in name and ".." not in name and "\x00" not in name and not name.startswith("/")
    assert name[:2] in cf.SHARD_DIRS and name[:2] == f"{chunk_id & 0xFF:02x}" and len(name) == 25
    assert cf.parse_chunk_file_name(name) == cf.parse_chunk_id(chunk_id) == chunk_id


def test_the_file_name_of_chunk_0x1ab_is_sharded_by_its_low_byte() -> None:
    assert cf.chunk_file_name(0x1AB) == "ab/00000000000001ab.chunk"
    assert cf.chunk_file_name(cf.CHUNK_ID_MAX) == "ff/7fffffffffffffff.chunk"


@pytest.mark.parametrize("name", [
    "ab/00000000000001AB.chunk", "ac/00000000000001ab.chunk", "00/0000000000000000.chunk",
    "ab/00000000000001ab.chunk\n", "/ab/00000000000001ab.chunk", "ab/../00000000000001ab.chunk",
    "ab/80000000000001ab.chunk", "ab/00000000000001ab.chunk.tmp", "ab\\00000000000001ab.chunk",
    "ab/0000000000001ab.chunk", "ab/00000000000001ab", "ab/00000000000001ab.chunk\x00", "../00000000000001ab.chunk",
    "ab/0000000000000１ab.chunk", b"ab/00000000000001ab.chunk", None, 0x1AB,
])
def test_a_name_that_chunk_file_name_would_not_produce_is_not_a_chunk_file(name: object) -> None:
    with pytest.raises(cf.ChunkIdError):
        cf.parse_chunk_file_name(name)


def test_the_limits_agree_with_the_metadata_schema() -> None:
    assert cf.CHUNK_BYTES_MAX == schema.CHUNK_BYTES_MAX and cf.CHUNK_ID_MAX == schema.CHUNK_ID_MAX
    # Every chunk size mkfs allows is a whole number of blocks of every block size.
    assert all(schema.CHUNK_BYTES_MIN % size == 0 for size in BLOCK_SIZES)
