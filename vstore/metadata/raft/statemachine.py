"""The replicated state machine's durable half, in its own LMDB environment.

``LmdbStateMachine`` owns what every state machine on Raft needs, and subclasses add the
tables and commands of their domain (the metadata service's namespace, a test key-value
store):

* **Exactly once.** Every command travels in a ``Proposal`` envelope with the client's id
  and sequence number. The ``sessions`` table keeps each client's last sequence number and
  reply; a retried proposal (the client did not hear the answer, the leader changed) gets
  the stored reply and is not applied again (Raft thesis §6.3).
* **Applied index in the same transaction as the effects**, with the configuration and
  the sessions: after a crash the state is exactly "everything up to applied", so a
  restart never re-applies an entry and never skips one.
* **A rolling state hash.** Every applied entry folds its effects (each put and delete, in
  order, with the table, key and value) into ``hash(index) = xxh3(hash(index-1) ‖ index ‖
  term ‖ effects)``, stored beside the applied index. Replicas that applied the same log
  deterministically have equal hashes at equal indexes; a divergence (a non-deterministic
  apply, a corrupted write) shows as a mismatch (LizardFS's metadata checksum idea).
  Subclasses write through the ``EffectTxn`` they are given, never around it.
* **Snapshots are the environment itself**: ``export_snapshot`` writes a compacted copy
  from one read transaction (a consistent point, taken while writes go on), and
  ``install_snapshot`` swaps a received copy in atomically (write, fsync, rename, fsync dir).

Layout (named databases; subclasses add their own):

    meta      b"applied"      16 bytes: index, term (big-endian)
              b"state_hash"   8 bytes: the rolling state hash at the applied index
              b"conf_state"   msgpack ConfState
    sessions  client id       msgpack (seq, reply)

All methods block; the Raft shell calls them from its writer thread.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import xxhash

from vstore.failpoints import failpoint
from vstore.metadata.raft.codec import decode_conf_state, encode_conf_state
from vstore.metadata.raft.storage import FatalStorageError
from vstore.wire.raft import ConfState, Entry, EntryType, SnapshotMeta, StateCheck

_APPLIED = struct.Struct(">QQ")
_HASH = struct.Struct(">Q")
_HASH_HEAD = struct.Struct(">QQQ")
_encoder = msgspec.msgpack.Encoder()


class EffectTxn:
    """A write transaction that records every put and delete it carries out, so the state
    hash covers exactly the effects that were committed. ``child()`` opens a nested
    transaction whose effects count only if it commits (LMDB nested transactions)."""

    __slots__ = ("raw", "_names", "effects", "_parent")

    def __init__(self, raw: lmdb.Transaction, names: dict[Any, bytes], parent: EffectTxn | None = None) -> None:
        self.raw = raw
        self._names = names
        self.effects: list[bytes] = []
        self._parent = parent

    def get(self, key: bytes, *, db: Any) -> bytes | None:
        return self.raw.get(key, db=db)

    def cursor(self, *, db: Any) -> lmdb.Cursor:
        """For reading only: deletions must go through ``delete`` to be counted."""
        return self.raw.cursor(db=db)

    def put(self, key: bytes, value: bytes, *, db: Any) -> None:
        self.raw.put(key, value, db=db)
        name = self._names[db]
        self.effects.append(b"P" + len(name).to_bytes(1, "big") + name + len(key).to_bytes(4, "big") + key + value)

    def delete(self, key: bytes, *, db: Any) -> bool:
        deleted = bool(self.raw.delete(key, db=db))
        if deleted:
            name = self._names[db]
            self.effects.append(b"D" + len(name).to_bytes(1, "big") + name + key)
        return deleted

    def child(self, env: lmdb.Environment) -> EffectTxn:
        return EffectTxn(env.begin(write=True, parent=self.raw), self._names, self)

    def commit(self) -> None:
        self.raw.commit()
        if self._parent is not None:
            self._parent.effects.extend(self.effects)

    def abort(self) -> None:
        self.raw.abort()
        self.effects.clear()


def fold_state_hash(previous: int, index: int, term: int, effects: list[bytes]) -> int:
    h = xxhash.xxh3_64()
    h.update(_HASH_HEAD.pack(previous, index, term))
    for effect in effects:
        h.update(len(effect).to_bytes(4, "big"))
        h.update(effect)
    return h.intdigest()


class Proposal(msgspec.Struct, array_like=True, frozen=True):
    """The envelope of every command in the log. ``client_id`` empty: no session (the
    command is idempotent by itself, e.g. issued by the leader)."""

    client_id: str
    seq: int
    body: bytes


_proposal_decoder = msgspec.msgpack.Decoder(Proposal)
_state_check_decoder = msgspec.msgpack.Decoder(StateCheck)
#: How many recent (index -> state hash) pairs a replica remembers to answer state checks.
#: A check names the proposer's applied index, which trails the check entry itself only by
#: the entries in flight when it was proposed: a few thousand is ample, and bounded.
_RECENT_HASHES = 4096


def encode_state_check(index: int, state_hash: int) -> bytes:
    return _encoder.encode(StateCheck(index=index, state_hash=state_hash))
_session_decoder = msgspec.msgpack.Decoder(tuple[int, bytes])


def encode_proposal(client_id: str, seq: int, body: bytes) -> bytes:
    return _encoder.encode(Proposal(client_id, seq, body))


class StaleProposal(Exception):
    """A proposal older than the client's last one: its answer is gone; the client has
    long moved on. Reported, never applied."""


class LmdbStateMachine:
    #: Named databases a subclass needs besides meta and sessions.
    TABLES: tuple[bytes, ...] = ()

    def __init__(self, path: str | Path, *, map_size_bytes: int = 1 << 30) -> None:
        self.path = Path(path)
        self.map_size_bytes = map_size_bytes
        self._open()

    def _open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        # metasync off: a commit flushes the data pages but not the meta page, so an OS
        # crash may undo the last transaction, never corrupt the file (LMDB's documented
        # MDB_NOMETASYNC guarantee). That is safe here because the Raft log, which stays
        # fully synced, still holds every entry after ``applied``: they are re-applied.
        # Log compaction and snapshot export call ``sync()`` first, so the log never drops
        # an entry whose effects are not yet durable here.
        self.env = lmdb.open(str(self.path), map_size=self.map_size_bytes, max_dbs=8 + len(self.TABLES), sync=True,
                             metasync=False, writemap=False, subdir=True, readahead=False)
        self._meta = self.env.open_db(b"meta")
        self._sessions = self.env.open_db(b"sessions")
        self.tables = {name: self.env.open_db(name) for name in self.TABLES}
        self._names = {db: name for name, db in self.tables.items()}
        self._names[self._sessions] = b"sessions"
        self._names[self._meta] = b"meta"
        with self.env.begin() as txn:
            raw = txn.get(b"applied", db=self._meta)
            self._applied = _APPLIED.unpack(raw) if raw else (0, 0)
            raw = txn.get(b"state_hash", db=self._meta)
            self._state_hash = _HASH.unpack(raw)[0] if raw else 0
            raw = txn.get(b"conf_state", db=self._meta)
            self._conf_state = decode_conf_state(raw) if raw else ConfState()
        self._recent_hashes: OrderedDict[int, int] = OrderedDict([(self._applied[0], self._state_hash)])
        #: (index, our hash, the proposer's hash) of the first state check that failed, if any
        self.divergence: tuple[int, int, int] | None = None

    # ---- what the Raft shell reads ------------------------------------------------------------

    def applied(self) -> tuple[int, int]:
        return self._applied

    def conf_state(self) -> ConfState:
        return self._conf_state

    def state_hash(self) -> tuple[int, int]:
        """(applied index, rolling state hash at that index)."""
        return self._applied[0], self._state_hash

    def snapshot_meta(self) -> SnapshotMeta:
        index, term = self._applied
        return SnapshotMeta(index=index, term=term, conf_state=self._conf_state)

    # ---- applying --------------------------------------------------------------------------------

    def apply(self, entries: list[Entry], conf_states: dict[int, ConfState]) -> list[Any]:
        """Apply committed entries in order, in ONE durable transaction with the applied
        index, the configuration and the sessions. Returns one result per entry (None for
        no-ops and configuration changes)."""
        results: list[Any] = []
        applied = self._applied
        conf_state = self._conf_state
        state_hash = self._state_hash
        batch_hashes: dict[int, int] = {}
        divergence = None
        try:
            with self.env.begin(write=True) as raw:
                for entry in entries:
                    assert entry.index == applied[0] + 1, f"apply out of order: {entry.index} after {applied[0]}"
                    txn = EffectTxn(raw, self._names)
                    if entry.type == EntryType.CONF_CHANGE:
                        conf_state = conf_states[entry.index]
                        txn.put(b"conf_state", encode_conf_state(conf_state), db=self._meta)
                        results.append(None)
                    elif entry.type == EntryType.STATE_CHECK:
                        check = _state_check_decoder.decode(entry.data)
                        mine = batch_hashes.get(check.index, self._recent_hashes.get(check.index))
                        if mine is not None and mine != check.state_hash and divergence is None:
                            divergence = (check.index, mine, check.state_hash)
                        results.append(None)
                    elif entry.data:
                        results.append(self._apply_proposal(txn, entry))
                    else:
                        results.append(None)  # a leader's no-op
                    applied = (entry.index, entry.term)
                    state_hash = fold_state_hash(state_hash, entry.index, entry.term, txn.effects)
                    batch_hashes[entry.index] = state_hash
                raw.put(b"applied", _APPLIED.pack(*applied), db=self._meta)
                raw.put(b"state_hash", _HASH.pack(state_hash), db=self._meta)
                # every effect, the applied index and the hash are in the transaction now;
                # a crash here must leave none of them (the commit is leaving this block)
                failpoint("apply.before_txn_commit")
        except lmdb.Error as exc:  # MapFullError included: the entry cannot be applied here
            raise FatalStorageError(f"cannot apply to the state machine in {self.path}: {exc}") from exc
        except OSError as exc:  # injected at the failpoint; the transaction was aborted
            raise FatalStorageError(f"cannot apply to the state machine in {self.path}: {exc}") from exc
        self._applied = applied
        self._conf_state = conf_state
        self._state_hash = state_hash
        self._recent_hashes.update(batch_hashes)
        while len(self._recent_hashes) > _RECENT_HASHES:
            self._recent_hashes.popitem(last=False)
        if divergence is not None and self.divergence is None:
            self.divergence = divergence
        return results

    def _apply_proposal(self, txn: EffectTxn, entry: Entry) -> Any:
        proposal = _proposal_decoder.decode(entry.data)
        if proposal.client_id:
            key = proposal.client_id.encode()
            raw = txn.get(key, db=self._sessions)
            if raw is not None:
                last_seq, last_reply = _session_decoder.decode(raw)
                if proposal.seq == last_seq:
                    return msgspec.msgpack.decode(last_reply)  # a retry: the stored answer, not a second apply
                if proposal.seq < last_seq:
                    return StaleProposal(f"client {proposal.client_id} seq {proposal.seq} < {last_seq}")
            refusal = self.refuse_client(txn, proposal.client_id)
            if refusal is not None:
                return refusal  # not applied and not recorded: the lane keeps its last answer
        result = self.apply_command(txn, proposal.body, entry.index, entry.term)
        if proposal.client_id:
            txn.put(proposal.client_id.encode(), _encoder.encode((proposal.seq, _encoder.encode(result))),
                    db=self._sessions)
        return result

    def refuse_client(self, txn: EffectTxn, client_id: str) -> Any:
        """A reply that refuses every new command of this client (one whose lane was fenced
        off, e.g. an expired session), or None to apply it. Asked after the retry check, so a
        retry of the lane's last command still gets its stored answer. Deterministic: it may
        read only the state in ``txn``."""
        return None

    def lane_record(self, client_id: str) -> tuple[int, Any] | None:
        """The lane's last sequence number and its stored reply, if it has one."""
        with self.env.begin() as txn:
            raw = txn.get(client_id.encode(), db=self._sessions)
        if raw is None:
            return None
        seq, reply = _session_decoder.decode(raw)
        return seq, msgspec.msgpack.decode(reply)

    def apply_command(self, txn: EffectTxn, body: bytes, index: int, term: int) -> Any:
        """Apply one command inside ``txn`` (write only through it); return its (msgpack-able)
        reply. Deterministic: everything it needs is in ``body`` (the leader chose ids and times)."""
        raise NotImplementedError

    def sync(self) -> None:
        """Make every applied transaction durable (before the log may forget its entries)."""
        try:
            self.env.sync(True)
        except lmdb.Error as exc:
            raise FatalStorageError(f"cannot sync the state machine in {self.path}: {exc}") from exc

    # ---- snapshots -------------------------------------------------------------------------------------

    def export_snapshot(self, directory: Path) -> tuple[Path, SnapshotMeta]:
        """Write a consistent compacted copy of the state into ``directory``; returns the file
        and the snapshot it holds (read from the same transaction as the copy)."""
        self.sync()
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"export-{os.getpid()}-{id(self)}"
        target.mkdir(exist_ok=True)
        with self.env.begin() as txn:
            raw = txn.get(b"applied", db=self._meta)
            index, term = _APPLIED.unpack(raw) if raw else (0, 0)
            raw = txn.get(b"conf_state", db=self._meta)
            conf_state = decode_conf_state(raw) if raw else ConfState()
            self.env.copy(str(target), compact=True, txn=txn)
        return target / "data.mdb", SnapshotMeta(index=index, term=term, conf_state=conf_state)

    def install_snapshot(self, file: Path, meta: SnapshotMeta) -> None:
        """Replace the whole state with a received snapshot file, atomically."""
        self.swap_in_snapshot(self.stage_snapshot(file, meta))

    def stage_snapshot(self, file: Path, meta: SnapshotMeta) -> Path:
        """The slow half of an install (may run on a worker thread while readers use the
        current state): move the file into a staging dir, fsync it, check what it holds."""
        staged = self.path.with_name(self.path.name + ".incoming")
        staged.mkdir(exist_ok=True)
        os.replace(file, staged / "data.mdb")
        _fsync_path(staged / "data.mdb")
        _fsync_path(staged)
        check = lmdb.open(str(staged), readonly=True, max_dbs=8 + len(self.TABLES), lock=False)
        try:
            with check.begin() as txn:
                raw = txn.get(b"applied", db=check.open_db(b"meta", txn=txn, create=False))
                got = _APPLIED.unpack(raw) if raw else (0, 0)
        finally:
            check.close()
        if got != (meta.index, meta.term):
            raise FatalStorageError(f"snapshot file holds applied {got}, expected {(meta.index, meta.term)}")
        return staged

    def swap_in_snapshot(self, staged: Path) -> None:
        """The fast half: close the environment, rename the staged one into place, reopen.
        Call it where no reader can run at the same time (the Raft shell calls it on the
        event loop, where the service's reads run): a read during the swap would find the
        environment closed."""
        self.env.close()
        retired = self.path.with_name(self.path.name + ".old")
        if retired.exists():
            _remove_tree(retired)
        os.replace(self.path, retired)
        os.replace(staged, self.path)
        _fsync_path(self.path.parent)
        _remove_tree(retired)
        self._open()

    def close(self) -> None:
        self.env.close()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    for child in path.iterdir():
        child.unlink()
    path.rmdir()
