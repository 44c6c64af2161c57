"""The Raft log of one node: the durable part (a LogStorage) plus the unstable tail that
has been accepted but not yet persisted. Pure. After etcd-io/raft's raftLog/unstable.

Invariants (asserted):
* ``applied <= committed <= last_index()``;
* entries are truncated only on a real term conflict, never below ``committed``;
* ``committed`` never goes back.
"""

from __future__ import annotations

from vstore.metadata.raft.types import LogCompacted, LogStorage, LogUnavailable
from vstore.wire.raft import Entry, SnapshotMeta


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix of ``entries`` within ``max_bytes`` -- but never empty when
    ``entries`` is not: one oversized entry must still be sent, or replication stalls."""
    if max_bytes is None:
        return entries
    size = 0
    for i, entry in enumerate(entries):
        size += entry.size_bytes
        if size > max_bytes and i > 0:
            return entries[:i]
    return entries


class Unstable:
    """Entries (and possibly an incoming snapshot) not yet written to the LogStorage.

    ``offset`` is the index of ``entries[0]``; with a snapshot, ``offset == snapshot.index + 1``.
    """

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.entries: list[Entry] = []
        self.snapshot: SnapshotMeta | None = None

    def maybe_first_index(self) -> int | None:
        return self.snapshot.index + 1 if self.snapshot is not None else None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.index
        return None

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.index == index:
                return self.snapshot.term
            return None
        last = self.maybe_last_index()
        if last is None or index > last:
            return None
        return self.entries[index - self.offset].term

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``index`` (of ``term``) are now durable."""
        got = self.maybe_term(index)
        if got is None or got != term or index < self.offset:
            return  # superseded meanwhile (a newer append truncated them): nothing to drop
        del self.entries[:index + 1 - self.offset]
        self.offset = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.index == index:
            self.snapshot = None

    def restore(self, snapshot: SnapshotMeta) -> None:
        self.offset = snapshot.index + 1
        self.entries = []
        self.snapshot = snapshot

    def truncate_and_append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        if first == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif first <= self.offset:
            # replace everything unstable (and shadow the stable entries from `first` on)
            self.offset = first
            self.entries = list(entries)
        else:
            del self.entries[first - self.offset:]
            self.entries.extend(entries)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        assert self.offset <= lo <= hi <= self.offset + len(self.entries), (lo, hi, self.offset, len(self.entries))
        return self.entries[lo - self.offset:hi - self.offset]


class RaftLog:
    def __init__(self, storage: LogStorage, committed: int, applied: int) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        # A snapshot installed into the state machine may be ahead of the hard state's
        # commit (crash between the two writes): it was committed cluster-wide all the same.
        # So may the applied index, because the shell does not fsync a hard state whose only
        # change is the commit index (etcd's MustSync rule): whatever was applied had been
        # committed.
        self.committed = max(committed, first - 1, min(applied, last))
        assert self.committed <= last, f"commit {self.committed} beyond the last stored index {last}"
        assert applied <= self.committed, f"applied {applied} beyond commit {self.committed}"
        self.applied = max(applied, first - 1)

    # ---- indexes and terms ---------------------------------------------------------------

    def first_index(self) -> int:
        first = self.unstable.maybe_first_index()
        return first if first is not None else self.storage.first_index()

    def last_index(self) -> int:
        last = self.unstable.maybe_last_index()
        return last if last is not None else self.storage.last_index()

    def last_stable_index(self) -> int:
        """Highest index known durable and still part of this log (the leader counts only
        these for itself). Unstable entries may shadow stored ones from ``offset`` on."""
        if self.unstable.snapshot is not None:
            return 0  # the stored log is being replaced; nothing in it counts until installed
        return min(self.unstable.offset - 1, self.storage.last_index())

    def term(self, index: int) -> int:
        """Term of the entry at ``index``. Raises LogCompacted / LogUnavailable."""
        got = self.unstable.maybe_term(index)
        if got is not None:
            return got
        if index < self.first_index() - 1:
            raise LogCompacted(index)
        if index > self.last_index():
            raise LogUnavailable(index)
        return self.storage.term(index)

    def term_or_zero(self, index: int) -> int:
        try:
            return self.term(index)
        except (LogCompacted, LogUnavailable):
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (LogCompacted, LogUnavailable):
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Is a log ending at (last_index, term) at least as up to date as ours? (§5.4.1)"""
        our_term = self.last_term()
        return term > our_term or (term == our_term and last_index >= self.last_index())

    # ---- appending ---------------------------------------------------------------------------

    def maybe_append(self, index: int, log_term: int, committed: int, entries: tuple[Entry, ...]) -> int | None:
        """Follower side of AppendEntries. None if our log does not contain (index, log_term);
        otherwise append what is new, truncating only a real conflict, and return the last
        index this message proves we match."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            assert conflict > self.committed, \
                f"entry {conflict} conflicts with a committed entry (commit {self.committed})"
            self.append(list(entries[conflict - index - 1:]))
        self.commit_to(min(committed, last_new))
        return last_new

    def find_conflict(self, entries: tuple[Entry, ...] | list[Entry]) -> int:
        """Index of the first entry whose term differs from ours, or of the first new entry;
        0 if we already hold all of them (a duplicate or reordered message)."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= ``index`` whose term is <= ``term`` (and that term), so a
        rejected leader can skip a whole term of mismatching entries per round trip."""
        while index > 0:
            try:
                our_term = self.term(index)
            except LogCompacted:
                return index, 0
            except LogUnavailable:
                index = self.last_index()
                continue
            if our_term <= term:
                return index, our_term
            index -= 1
        return 0, 0

    def append(self, entries: list[Entry]) -> int:
        if not entries:
            return self.last_index()
        assert entries[0].index - 1 >= self.committed, \
            f"appending after {entries[0].index - 1} would overwrite committed entries (commit {self.committed})"
        self.unstable.truncate_and_append(entries)
        return self.last_index()

    # ---- reading -------------------------------------------------------------------------------

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi), at least one if lo < hi, at most max_bytes after the first."""
        if lo >= hi:
            return []
        first = self.first_index()
        if lo < first:
            raise LogCompacted(lo)
        if hi > self.last_index() + 1:
            raise LogUnavailable(hi - 1)
        out: list[Entry] = []
        if lo < self.unstable.offset:
            out = list(self.storage.entries(lo, min(hi, self.unstable.offset), max_bytes))
            if len(out) < min(hi, self.unstable.offset) - lo:
                return out  # the byte limit cut it short
        if hi > self.unstable.offset:
            tail = self.unstable.slice(max(lo, self.unstable.offset), hi)
            out.extend(tail)
        return limit_size(out, max_bytes)

    def entries_from(self, index: int, max_bytes: int | None) -> list[Entry]:
        if index > self.last_index():
            return []
        return self.slice(index, self.last_index() + 1, max_bytes)

    def unstable_entries(self) -> list[Entry]:
        return list(self.unstable.entries)

    def has_next_committed_entries(self) -> bool:
        return self.committed > self.applied and self.unstable.snapshot is None

    def next_committed_entries(self, max_bytes: int) -> list[Entry]:
        if not self.has_next_committed_entries():
            return []
        return self.slice(self.applied + 1, self.committed + 1, max_bytes)

    def snapshot_meta(self) -> SnapshotMeta:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot_meta()

    # ---- moving the marks --------------------------------------------------------------------

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            assert index <= self.last_index(), f"commit {index} beyond last index {self.last_index()}"
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Leader: commit ``index`` if it is of ``term`` (only current-term entries are
        committed by counting replicas, paper §5.4.2 / Figure 8)."""
        if index > self.committed and self.term_or_zero(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        if index == 0:
            return
        assert self.applied <= index <= self.committed, (self.applied, index, self.committed)
        self.applied = index

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snapshot_to(self, index: int) -> None:
        self.unstable.stable_snapshot_to(index)

    def restore(self, snapshot: SnapshotMeta) -> None:
        self.committed = max(self.committed, snapshot.index)
        self.unstable.restore(snapshot)
