"""The durable Raft log in LMDB: entries, hard state and the compaction point.

One environment, ``<data_dir>/raft`` (separate from the state machine's, so compaction
never bloats the state file), opened with ``sync=True, metasync=True`` and never
``writemap``: a committed LMDB transaction is on disk. Named databases:

    log   key: index as 8 bytes big-endian        value: msgpack Entry (with its xxh3 checksum)
    meta  b"hard_state"   msgpack HardState (term, vote, commit)
          b"compacted"    8+8 bytes: index and term of the last entry removed by compaction
                          (or covered by an installed snapshot); first_index = index + 1
          b"identity"     msgpack {"node_id", "cluster_id"}: whose log this is
          b"no_vote"      present once this log was found lost while the node was a member:
                          the node never votes again from this data dir (RELIABILITY.md §4.6)

``persist(ready)`` writes a Ready's snapshot marker, entries (truncating a conflicting
suffix first) and hard state in ONE write transaction: one fsync covers every entry that
arrived since the last one (group commit). It runs on the caller's thread; the shell calls
it from its single writer thread. An error there is fatal (``FatalStorageError``): after a
failed fsync the page cache may hold data the disk does not, so the node must stop rather
than carry on as if the write happened (PostgreSQL "fsyncgate"; RAFT.md §4.3 item 2).

Reads (``term``, ``entries``) check each entry's checksum and its index; a mismatch is
``CorruptLogError``: the node refuses to serve from a log it cannot trust (FAST'18
protocol-aware recovery: it must re-sync from its peers, not guess).
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import lmdb
import msgspec

from vstore.metadata.raft.types import HardState, LogCompacted, LogUnavailable, Ready
from vstore.wire.raft import ConfState, Entry, SnapshotMeta

_U64 = struct.Struct(">Q")
_COMPACTED = struct.Struct(">QQ")
_entry_decoder = msgspec.msgpack.Decoder(Entry)
_hard_state_decoder = msgspec.msgpack.Decoder(HardState)
_encoder = msgspec.msgpack.Encoder()

#: Entries kept decoded in memory, newest first out: the leader re-reads recent entries
#: for every follower's append, and they are almost always in this window.
_CACHE_ENTRIES = 4096


class FatalStorageError(Exception):
    """The log could not be made durable. The process must exit: never retry an fsync."""


class CorruptLogError(Exception):
    """A stored entry failed its checksum or sits at the wrong index."""


class IdentityMismatch(Exception):
    """The data directory belongs to another node or cluster."""


class RaftLogStore:
    """A LogStorage backed by LMDB. ``conf_state_fn`` and ``snapshot_fn`` come from the state
    machine store: the configuration and snapshot are the applied state's, not the log's."""

    def __init__(self, path: str | Path, *, map_size_bytes: int = 1 << 30,
                 conf_state_fn: Callable[[], ConfState] = ConfState,
                 snapshot_fn: Callable[[], SnapshotMeta] | None = None) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(self.path), map_size=map_size_bytes, max_dbs=4, sync=True, metasync=True,
                             writemap=False, subdir=True, lock=True, readahead=False)
        self._log = self.env.open_db(b"log")
        self._meta = self.env.open_db(b"meta")
        self._conf_state_fn = conf_state_fn
        self._snapshot_fn = snapshot_fn
        self._lock = threading.Lock()  # guards the cached marks below between writer and loop threads
        self._cache: OrderedDict[int, Entry] = OrderedDict()
        with self.env.begin() as txn:
            raw = txn.get(b"hard_state", db=self._meta)
            self._hard_state = _hard_state_decoder.decode(raw) if raw else HardState()
            raw = txn.get(b"compacted", db=self._meta)
            self._compacted_index, self._compacted_term = _COMPACTED.unpack(raw) if raw else (0, 0)
            cursor = txn.cursor(db=self._log)
            self._last_index = _U64.unpack(cursor.key())[0] if cursor.last() else self._compacted_index

    def attach(self, conf_state_fn: Callable[[], ConfState], snapshot_fn: Callable[[], SnapshotMeta]) -> None:
        """Connect the state machine whose configuration and snapshots this log reports."""
        self._conf_state_fn = conf_state_fn
        self._snapshot_fn = snapshot_fn

    # ---- identity ------------------------------------------------------------------------------

    def identity(self) -> dict[str, str] | None:
        with self.env.begin() as txn:
            raw = txn.get(b"identity", db=self._meta)
        return msgspec.msgpack.decode(raw) if raw else None

    def claim(self, node_id: str, cluster_id: str) -> None:
        """Record whose log this is, or check it: a data dir never changes owner."""
        current = self.identity()
        wanted = {"node_id": node_id, "cluster_id": cluster_id}
        if current is None:
            with self.env.begin(write=True) as txn:
                txn.put(b"identity", _encoder.encode(wanted), db=self._meta)
        elif current != wanted:
            raise IdentityMismatch(f"{self.path} holds the Raft log of node {current.get('node_id')!r} of cluster "
                                   f"{current.get('cluster_id')!r}, not of {node_id!r} of {cluster_id!r}")

    @property
    def voting_disabled(self) -> bool:
        with self.env.begin() as txn:
            return txn.get(b"no_vote", db=self._meta) is not None

    def disable_voting(self, reason: str) -> None:
        """Permanently: a node that lost its log may have voted in a term it no longer
        remembers; voting again could elect two leaders in that term."""
        try:
            with self.env.begin(write=True) as txn:
                txn.put(b"no_vote", reason.encode(), db=self._meta)
        except lmdb.Error as exc:
            raise FatalStorageError(f"cannot record the no-vote flag in {self.path}: {exc}") from exc

    def is_empty(self) -> bool:
        return self._last_index == 0 and self._hard_state == HardState()

    # ---- LogStorage ----------------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._conf_state_fn()

    def first_index(self) -> int:
        return self._compacted_index + 1

    def last_index(self) -> int:
        return self._last_index

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    @property
    def compacted(self) -> tuple[int, int]:
        return self._compacted_index, self._compacted_term

    def term(self, index: int) -> int:
        if index == self._compacted_index:
            return self._compacted_term
        if index < self._compacted_index:
            raise LogCompacted(index)
        if index > self._last_index:
            raise LogUnavailable(index)
        return self._entry(index).term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        if lo <= self._compacted_index:
            raise LogCompacted(lo)
        if hi > self._last_index + 1:
            raise LogUnavailable(hi - 1)
        out: list[Entry] = []
        size = 0
        index = lo
        # Short read transactions on the event loop are deliberate (STYLE.md §9): LMDB reads
        # are memory-mapped page lookups with no I/O wait in the common case.
        while index < hi:
            cached = self._cache.get(index)
            if cached is None:
                out.extend(self._read_range(index, hi, max_bytes, size, bool(out)))
                break
            size += cached.size_bytes
            if max_bytes is not None and out and size > max_bytes:
                break
            out.append(cached)
            index += 1
        return out

    def snapshot_meta(self) -> SnapshotMeta:
        if self._snapshot_fn is None:
            raise LogUnavailable("no state machine attached to produce a snapshot")
        return self._snapshot_fn()

    def _entry(self, index: int) -> Entry:
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        with self.env.begin() as txn:
            raw = txn.get(_U64.pack(index), db=self._log)
        if raw is None:
            raise CorruptLogError(f"entry {index} missing from {self.path} (log says {self.first_index()}.."
                                  f"{self._last_index})")
        return self._decode(index, raw)

    def _read_range(self, lo: int, hi: int, max_bytes: int | None, size: int, have_some: bool) -> list[Entry]:
        out: list[Entry] = []
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self._log)
            if not cursor.set_key(_U64.pack(lo)):
                raise CorruptLogError(f"entry {lo} missing from {self.path}")
            for key, raw in cursor:
                index = _U64.unpack(key)[0]
                if index >= hi:
                    break
                if index != lo + len(out):
                    raise CorruptLogError(f"gap in {self.path}: expected entry {lo + len(out)}, found {index}")
                entry = self._decode(index, raw)
                size += entry.size_bytes
                if max_bytes is not None and (out or have_some) and size > max_bytes:
                    break
                out.append(entry)
        return out

    def _decode(self, index: int, raw: bytes) -> Entry:
        try:
            entry = _entry_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise CorruptLogError(f"entry {index} in {self.path} does not decode: {exc}") from None
        if entry.index != index or not entry.verify():
            raise CorruptLogError(f"entry {index} in {self.path} fails its checksum (stored index {entry.index})")
        return entry

    # ---- writing (the shell's writer thread) -------------------------------------------------------

    def persist(self, rd: Ready) -> None:
        """Make the Ready's snapshot marker, entries and hard state durable in one transaction."""
        if rd.snapshot is None and not rd.entries and rd.hard_state is None:
            return
        compacted = (self._compacted_index, self._compacted_term)
        last = self._last_index
        try:
            with self.env.begin(write=True) as txn:
                if rd.snapshot is not None:
                    compacted, last = self._write_snapshot_marker(txn, rd.snapshot, last)
                if rd.entries:
                    last = self._write_entries(txn, rd.entries, last)
                if rd.hard_state is not None:
                    txn.put(b"hard_state", _encoder.encode(rd.hard_state), db=self._meta)
        except lmdb.Error as exc:
            raise FatalStorageError(f"cannot persist the Raft log in {self.path}: {exc}") from exc
        with self._lock:
            if rd.snapshot is not None:
                self._cache.clear()
            if rd.entries:
                # the cache holds a contiguous run of indexes in ascending order: drop the
                # overwritten suffix from the tail (a scan of the whole cache on every persist
                # was half of the writer thread's time under load)
                first = rd.entries[0].index
                while self._cache and next(reversed(self._cache)) >= first:
                    self._cache.popitem(last=True)
                for entry in rd.entries:
                    self._cache[entry.index] = entry
                while len(self._cache) > _CACHE_ENTRIES:
                    self._cache.popitem(last=False)
            self._compacted_index, self._compacted_term = compacted
            self._last_index = last
            if rd.hard_state is not None:
                self._hard_state = rd.hard_state

    def _write_snapshot_marker(self, txn: lmdb.Transaction, snap: SnapshotMeta, last: int) -> tuple[tuple[int, int], int]:
        # Keep a suffix that already matches the snapshot (etcd does the same); otherwise the
        # whole log is replaced by the snapshot.
        raw = txn.get(_U64.pack(snap.index), db=self._log) if snap.index <= last else None
        keep = raw is not None and _entry_decoder.decode(raw).term == snap.term
        self._delete_log_range(txn, 0, snap.index if keep else None)
        txn.put(b"compacted", _COMPACTED.pack(snap.index, snap.term), db=self._meta)
        return (snap.index, snap.term), (last if keep else snap.index)

    def _delete_log_range(self, txn: lmdb.Transaction, lo: int, hi: int | None) -> None:
        """Delete the stored entries with ``lo <= index`` (and ``index <= hi`` unless None)."""
        cursor = txn.cursor(db=self._log)
        if not cursor.set_range(_U64.pack(lo)):
            return
        while hi is None or _U64.unpack(cursor.key())[0] <= hi:
            # delete() moves to the next entry; an empty key means the table's end
            if not cursor.delete() or not cursor.key():
                return

    def _write_entries(self, txn: lmdb.Transaction, entries: tuple[Entry, ...], last: int) -> int:
        first = entries[0].index
        if first <= last:
            self._delete_log_range(txn, first, None)
        elif first != last + 1:
            raise FatalStorageError(f"gap: appending entry {first} after {last}")
        for entry in entries:
            txn.put(_U64.pack(entry.index), _encoder.encode(entry), db=self._log, append=True)
        return entries[-1].index

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` (already applied and covered by the state machine)."""
        if index <= self._compacted_index:
            return
        if index > self._last_index:
            raise ValueError(f"cannot compact to {index} beyond the last index {self._last_index}")
        term = self.term(index)
        try:
            with self.env.begin(write=True) as txn:
                self._delete_log_range(txn, 0, index)
                txn.put(b"compacted", _COMPACTED.pack(index, term), db=self._meta)
        except lmdb.Error as exc:
            raise FatalStorageError(f"cannot compact the Raft log in {self.path}: {exc}") from exc
        with self._lock:
            for cached in [i for i in self._cache if i <= index]:
                del self._cache[cached]
            self._compacted_index, self._compacted_term = index, term

    def bootstrap(self, entries: list[Entry], hard_state: HardState) -> None:
        """Write the initial configuration entries of a new cluster (mkfs / test clusters)."""
        if not self.is_empty():
            raise FatalStorageError(f"{self.path} already holds a Raft log; refusing to bootstrap over it")
        self.persist(Ready(entries=tuple(entries), hard_state=hard_state))

    def verify(self) -> int:
        """Read and check every stored entry (start-up check). Returns how many."""
        count = 0
        with self.env.begin() as txn:
            expected = self._compacted_index + 1
            for key, raw in txn.cursor(db=self._log):
                index = _U64.unpack(key)[0]
                if index != expected:
                    raise CorruptLogError(f"gap in {self.path}: expected entry {expected}, found {index}")
                self._decode(index, raw)
                expected += 1
                count += 1
        return count

    def close(self) -> None:
        self.env.close()
