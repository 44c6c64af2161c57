"""The client's write-back buffer (vstore/client/files.py OpenFile): any sequence of writes and
truncates laid into it leaves dirty extents that are sorted, disjoint and, laid over what the
file held, give exactly the bytes a plain file would (compared with a bytearray model)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vstore.client.chunk_io import ChunkIo
from vstore.client.files import OpenFile
from vstore.wire import mds as w

ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 70_000), st.binary(min_size=1, max_size=9000)),
    st.tuples(st.just("cut"), st.integers(0, 80_000), st.just(b"")),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops=ops)
def test_dirty_extents_hold_the_newest_bytes_and_stay_disjoint(ops) -> None:
    state = OpenFile(1, 0)
    model = bytearray()
    written = bytearray()  # 1 where the model's byte came from a write still in the buffer
    for op, offset, data in ops:
        if op == "write":
            state.add(offset, data)
            end = offset + len(data)
            if len(model) < end:
                model.extend(bytes(end - len(model)))
                written.extend(bytes(end - len(written)))
            model[offset:end] = data
            written[offset:end] = b"\x01" * len(data)
        else:
            state.cut(offset)
            del model[offset:]
            del written[offset:]
        extents = state.extents
        assert all(a.end < b.offset for a, b in zip(extents, extents[1:])), "extents must be disjoint and apart"
        assert state.dirty_bytes == sum(len(e.data) for e in extents)
        for e in extents:
            assert bytes(e.data) == bytes(model[e.offset:e.end])
        covered = bytearray(len(model))
        for e in extents:
            covered[e.offset:e.end] = b"\x01" * len(e.data)
        for i, flag in enumerate(written):
            if flag:
                assert covered[i], f"byte {i} was written but is not in the buffer"


def test_sequential_writes_grow_one_extent() -> None:
    state = OpenFile(1, 0)
    for i in range(100):
        state.add(i * 4096, bytes([i % 256]) * 4096)
    assert len(state.extents) == 1 and len(state.extents[0].data) == 100 * 4096
    assert state.overlaps_dirty(4096 * 50, 1) and not state.overlaps_dirty(4096 * 100, 10)


def _replica(cs_id: int, host: str) -> w.ReplicaAddress:
    return w.ReplicaAddress(cs_id=cs_id, address=f"127.0.0.1:{9000 + cs_id}", host=host)


def test_reads_go_to_a_replica_on_the_clients_own_host_first() -> None:
    io = ChunkIo(None, host="h2")  # type: ignore[arg-type]  # no connection is made
    order = io.read_order([_replica(1, "h1"), _replica(2, "h2"), _replica(3, "h3")])
    assert [r.cs_id for r in order] == [2, 1, 3]
    io.host = ""
    assert [r.cs_id for r in io.read_order([_replica(1, "h1"), _replica(2, "h2")])] == [1, 2]
