"""The LMDB Raft log: what persist() writes survives a reopen, conflicting suffixes are
truncated, compaction and snapshot markers move the first index, and a corrupt entry is
refused rather than served."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import lmdb
import msgspec
import pytest

from vstore.metadata.raft.codec import encode_conf_change
from vstore.metadata.raft.core import RaftCore
from vstore.metadata.raft.storage import CorruptLogError, IdentityMismatch, RaftLogStore
from vstore.metadata.raft.types import HardState, LogCompacted, LogUnavailable, RaftConfig, Ready, Role
from vstore.wire.raft import ConfChange, ConfChangeType, ConfState, Entry, EntryType, SnapshotMeta


def _entries(first: int, last: int, term: int) -> tuple[Entry, ...]:
    return tuple(Entry.make(i, term, f"cmd-{i}-{term}".encode()) for i in range(first, last + 1))


def test_entries_and_hard_state_survive_a_reopen(tmp_path: Path) -> None:
    store = RaftLogStore(tmp_path / "raft")
    store.persist(Ready(entries=_entries(1, 50, 1), hard_state=HardState(term=1, vote="a", commit=40)))
    store.close()
    store = RaftLogStore(tmp_path / "raft")
    assert (store.first_index(), store.last_index()) == (1, 50)
    assert store.initial_state()[0] == HardState(term=1, vote="a", commit=40)
    assert store.entries(10, 13) == list(_entries(10, 12, 1))
    assert store.term(50) == 1 and store.verify() == 50
    with pytest.raises(LogUnavailable):
        store.term(51)


def test_a_conflicting_suffix_is_replaced(tmp_path: Path) -> None:
    store = RaftLogStore(tmp_path / "raft")
    store.persist(Ready(entries=_entries(1, 10, 1)))
    store.persist(Ready(entries=_entries(6, 8, 2)))
    assert store.last_index() == 8 and [store.term(i) for i in range(1, 9)] == [1] * 5 + [2] * 3
    store.close()
    assert RaftLogStore(tmp_path / "raft").entries(1, 9) == list(_entries(1, 5, 1) + _entries(6, 8, 2))


def test_max_bytes_limits_a_read_but_always_returns_one_entry(tmp_path: Path) -> None:
    store = RaftLogStore(tmp_path / "raft")
    store.persist(Ready(entries=_entries(1, 20, 1)))
    assert len(store.entries(1, 21, max_bytes=1)) == 1
    one = _entries(1, 1, 1)[0].size_bytes
    assert len(store.entries(1, 21, max_bytes=3 * one)) == 3


def test_compaction_moves_the_first_index_and_keeps_the_boundary_term(tmp_path: Path) -> None:
    store = RaftLogStore(tmp_path / "raft")
    store.persist(Ready(entries=_entries(1, 10, 1) + _entries(11, 20, 2)))
    store.compact(12)
    store.close()
    store = RaftLogStore(tmp_path / "raft")
    assert store.first_index() == 13 and store.term(12) == 2
    with pytest.raises(LogCompacted):
        store.entries(12, 14)
    with pytest.raises(LogCompacted):
        store.term(11)
    assert store.entries(13, 21) == list(_entries(13, 20, 2))
    assert store.verify() == 8  # exactly 13..20 stored: nothing at or below the compaction point


def test_a_snapshot_marker_replaces_the_log_or_keeps_a_matching_suffix(tmp_path: Path) -> None:
    store = RaftLogStore(tmp_path / "raft")
    store.persist(Ready(entries=_entries(1, 10, 1)))
    store.persist(Ready(snapshot=SnapshotMeta(index=30, term=3, conf_state=ConfState())))
    assert (store.first_index(), store.last_index(), store.term(30)) == (31, 30, 3)
    store.persist(Ready(entries=_entries(31, 40, 3)))
    store.persist(Ready(snapshot=SnapshotMeta(index=35, term=3, conf_state=ConfState())))
    assert (store.first_index(), store.last_index()) == (36, 40)
    assert store.entries(36, 41) == list(_entries(36, 40, 3))
    assert store.verify() == 5


def test_a_corrupt_entry_is_refused(tmp_path: Path) -> None:
    store = RaftLogStore(tmp_path / "raft")
    store.persist(Ready(entries=_entries(1, 5, 1)))
    store.close()
    env = lmdb.open(str(tmp_path / "raft"), max_dbs=4)
    db = env.open_db(b"log")
    with env.begin(write=True) as txn:
        raw = bytearray(txn.get(struct.pack(">Q", 3), db=db))
        raw[-12] ^= 0x40
        txn.put(struct.pack(">Q", 3), bytes(raw), db=db)
    env.close()
    store = RaftLogStore(tmp_path / "raft")
    with pytest.raises(CorruptLogError, match="entry 3"):
        store.verify()
    with pytest.raises(CorruptLogError, match="entry 3"):
        store.entries(1, 6)


def test_a_data_dir_never_changes_owner(tmp_path: Path) -> None:
    store = RaftLogStore(tmp_path / "raft")
    store.claim("mds-1", "c1")
    store.claim("mds-1", "c1")
    with pytest.raises(IdentityMismatch, match="node 'mds-1' of cluster 'c1'"):
        store.claim("mds-2", "c1")


def test_a_single_node_core_commits_through_the_lmdb_log_and_restarts_from_it(tmp_path: Path) -> None:
    conf: dict[str, ConfState] = {"c": ConfState()}
    applied = {"index": 0, "values": []}

    def open_core() -> tuple[RaftCore, RaftLogStore]:
        store = RaftLogStore(tmp_path / "raft", conf_state_fn=lambda: conf["c"])
        if store.is_empty():
            store.bootstrap([Entry.make(1, 1, encode_conf_change(ConfChange(type=ConfChangeType.ADD_VOTER,
                                                                            node_id="m1", address="x:1")),
                                        EntryType.CONF_CHANGE)], HardState(term=1, commit=1))
        return RaftCore("m1", RaftConfig(applied=applied["index"]), store, random.Random(1)), store

    def run(core: RaftCore, store: RaftLogStore) -> None:
        while core.has_ready():
            rd = core.ready()
            store.persist(rd)
            for entry in rd.committed_entries:
                if entry.type == EntryType.CONF_CHANGE:
                    conf["c"] = core.apply_conf_change(msgspec.msgpack.decode(entry.data, type=ConfChange))
                elif entry.data:
                    applied["values"].append(entry.data)
                applied["index"] = entry.index
            core.advance(rd)

    core, store = open_core()
    run(core, store)
    core.campaign()
    run(core, store)
    assert core.role is Role.LEADER
    for i in range(5):
        core.propose(f"v{i}".encode())
    run(core, store)
    assert applied["values"] == [f"v{i}".encode() for i in range(5)]
    store.close()
    core, store = open_core()  # restart: nothing is applied twice, the log is intact
    run(core, store)
    core.campaign()
    run(core, store)
    core.propose(b"after")
    run(core, store)
    assert applied["values"] == [f"v{i}".encode() for i in range(5)] + [b"after"]
    assert store.verify() == store.last_index()
