"""The chunk layer of the metadata state machine: each file's chunks, their versions and
replica chains, the chunkserver registry and the garbage-collection queue (the tables are
drawn in schema.py's docstring, with their invariants).

Two parts, both used by namespace.py, which owns the Command union and the dispatch:

* ``ChunkTables``: typed access to the chunk tables inside one transaction. Reads work on
  any LMDB transaction; writes only on the EffectTxn of an apply, so that the state hash
  covers every one of them.
* ``ChunkCommands``: the apply functions of the chunk and chunkserver commands, mixed into
  namespace's ``_Apply``.

The rules of every apply hold here too: deterministic (chunk ids, cs ids, versions and
times come in the command, chosen by the leader; nothing reads a clock or does I/O besides
the transaction), and a refusal is a VStoreError: the command's nested transaction is
dropped with whatever it had written, and the refusal becomes the ``("err", code, message)``
result, the same on every replica.

What this module must not do: decide anything (placement, which replica to drop, when to
repair are the leader's pure planners' job, vstore/metadata/placement.py and repair.py) or
talk to a chunkserver (the service does, after the command is applied).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lmdb
import msgspec

from vstore.errors import Exists, FileTooBig, InvalidArgument, IsDir, NotEmpty, NotFound, StaleVersion
from vstore.metadata.fsm.schema import (ADDRESS_BYTES_MAX, CHUNK_BYTES_DEFAULT, CHUNK_BYTES_MAX, CHUNK_BYTES_MIN,
                                        CHUNK_ID_MAX, CS_ID_MAX, FILE_BYTES_MAX, HOST_LABEL_BYTES_MAX,
                                        NODE_ID_BYTES_MAX, REPLICAS_MAX, U32, U64, Chunk, CsAdminState, CsRecord,
                                        DoomedChunk, Inode, Kind, chunk_decoder, chunk_key, cs_decoder, cs_key,
                                        doomed_decoder, encoder, file_chunk_key)
from vstore.metadata.placement import ChunkId, CsId
from vstore.metadata.raft.statemachine import EffectTxn

#: A chunk index is a u32 in the keys (at 1 MiB chunks, FILE_BYTES_MAX needs 2**28 of them).
INDEX_MAX = 2**32 - 1

if TYPE_CHECKING:
    from vstore.metadata.fsm.namespace import (AddReplica, AllocChunk, ChunkDeleted, DropReplica, RegisterCs,
                                               RepairChain, SetCsState, UpdateCs, WriteDone)


def check_chunk_bytes(chunk_bytes: int) -> None:
    """Refuse a chunk size that is not a power of two in [CHUNK_BYTES_MIN, CHUNK_BYTES_MAX]."""
    if not CHUNK_BYTES_MIN <= chunk_bytes <= CHUNK_BYTES_MAX or chunk_bytes & (chunk_bytes - 1):
        raise InvalidArgument(f"chunk size {chunk_bytes} bytes: must be a power of two from {CHUNK_BYTES_MIN} "
                              f"(1 MiB) to {CHUNK_BYTES_MAX} (1 GiB)")


def need_regular_file(node: Inode, inode: int) -> None:
    if node.kind == Kind.DIR:
        raise IsDir(f"inode {inode} is a directory, it has no chunks")
    if node.kind != Kind.FILE:
        raise InvalidArgument(f"inode {inode} is not a regular file, it has no chunks")


def _check_label(what: str, text: str, limit_bytes: int, *, required: bool) -> None:
    size = len(text.encode())
    if required and not size:
        raise InvalidArgument(f"empty chunkserver {what}")
    if size > limit_bytes:
        raise InvalidArgument(f"chunkserver {what} of {size} bytes exceeds {limit_bytes}")


def _check_address(address: str) -> None:
    _check_label("address", address, ADDRESS_BYTES_MAX, required=True)
    host, colon, port = address.rpartition(":")
    if not colon or not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise InvalidArgument(f"chunkserver address {address!r}: expected host:port")


def _check_capacity(capacity_bytes: int) -> None:
    if not 0 <= capacity_bytes < 2**63:
        raise InvalidArgument(f"chunkserver capacity {capacity_bytes} bytes is out of range")


class ChunkTables:
    """The chunk tables seen through one transaction (an LMDB read transaction, or the
    EffectTxn of an apply). Write methods assert the EffectTxn: a write around it would
    escape the state hash."""

    __slots__ = ("txn", "t")

    def __init__(self, txn: lmdb.Transaction | EffectTxn, tables: dict[bytes, Any]) -> None:
        self.txn = txn
        self.t = tables

    def _writer(self) -> EffectTxn:
        assert isinstance(self.txn, EffectTxn), "chunk tables are written only through the apply's EffectTxn"
        return self.txn

    # ---- reads -------------------------------------------------------------------------------

    def chunk_bytes(self) -> int:
        raw = self.txn.get(b"chunk_bytes", db=self.t[b"cluster"])
        # absent only before InitRoot: the default is what mkfs would have chosen
        return U64.unpack(raw)[0] if raw else CHUNK_BYTES_DEFAULT

    def get_chunk(self, chunk_id: int) -> Chunk | None:
        if not 0 <= chunk_id <= CHUNK_ID_MAX:
            return None  # no such key can exist (and a command's bad id must not crash the apply)
        raw = self.txn.get(chunk_key(chunk_id), db=self.t[b"chunks"])
        return chunk_decoder.decode(raw) if raw is not None else None

    def need_chunk(self, chunk_id: int) -> Chunk:
        chunk = self.get_chunk(chunk_id)
        if chunk is None:
            raise NotFound(f"chunk {chunk_id} does not exist")
        return chunk

    def chunk_at(self, inode: int, index: int) -> ChunkId | None:
        if not 0 <= index <= INDEX_MAX:
            return None
        raw = self.txn.get(file_chunk_key(inode, index), db=self.t[b"file_chunks"])
        return ChunkId(U64.unpack(raw)[0]) if raw is not None else None

    def file_chunks(self, inode: int, first_index: int = 0, end_index: int | None = None) -> list[tuple[int, ChunkId]]:
        """(index, chunk_id) of the file's chunks at indexes [first_index, end_index), in order."""
        prefix = U64.pack(inode)
        out: list[tuple[int, ChunkId]] = []
        if first_index > INDEX_MAX:
            return out
        cursor = self.txn.cursor(db=self.t[b"file_chunks"])
        if not cursor.set_range(file_chunk_key(inode, max(0, first_index))):
            return out
        for key, value in cursor:
            if not key.startswith(prefix):
                break
            index = U32.unpack(key[8:])[0]
            if end_index is not None and index >= end_index:
                break
            out.append((index, ChunkId(U64.unpack(value)[0])))
        return out

    def get_doomed(self, chunk_id: int) -> DoomedChunk | None:
        if not 0 <= chunk_id <= CHUNK_ID_MAX:
            return None
        raw = self.txn.get(chunk_key(chunk_id), db=self.t[b"doomed"])
        return doomed_decoder.decode(raw) if raw is not None else None

    def get_cs(self, cs_id: int) -> CsRecord | None:
        raw = self.txn.get(cs_key(cs_id), db=self.t[b"chunkservers"]) if 0 <= cs_id <= CS_ID_MAX else None
        return cs_decoder.decode(raw) if raw is not None else None

    def need_cs(self, cs_id: int) -> CsRecord:
        record = self.get_cs(cs_id)
        if record is None:
            raise NotFound(f"chunkserver {cs_id} is not registered")
        return record

    def cs_of_node(self, node_id: str) -> CsId | None:
        raw = self.txn.get(node_id.encode(), db=self.t[b"cs_by_node"]) if node_id else None
        return CsId(U32.unpack(raw)[0]) if raw is not None else None

    def chunks_holding(self, cs_id: int) -> list[ChunkId]:
        """Every chunk listing ``cs_id`` among its replicas: a full scan of ``chunks``, O(chunks).
        Only removing a chunkserver needs it (rare, an operator's act); an index by cs would cost
        a write per replica on every allocation and repair."""
        cursor = self.txn.cursor(db=self.t[b"chunks"])
        return [ChunkId(U64.unpack(key)[0]) for key, raw in cursor if cs_id in chunk_decoder.decode(raw).replicas]

    # ---- writes (apply only) -----------------------------------------------------------------

    def claim(self, counter: bytes, new_id: int, id_max: int, what: str) -> None:
        """Hand out ``new_id``: refused when it is 0, past ``id_max`` or below the counter (a
        replayed or confused leader must never reuse an id); the counter moves past it."""
        raw = self.txn.get(counter, db=self.t[b"counters"])
        next_id = U64.unpack(raw)[0] if raw else 1
        if not 1 <= new_id <= id_max:
            raise InvalidArgument(f"{what} {new_id} is out of range (1 to {id_max})")
        if new_id < next_id:
            raise InvalidArgument(f"{what} {new_id} was already handed out (next is {next_id})")
        self._writer().put(counter, U64.pack(new_id + 1), db=self.t[b"counters"])

    def put_chunk(self, chunk_id: int, chunk: Chunk) -> None:
        self._writer().put(chunk_key(chunk_id), encoder.encode(chunk), db=self.t[b"chunks"])

    def put_file_chunk(self, inode: int, index: int, chunk_id: int) -> None:
        self._writer().put(file_chunk_key(inode, index), U64.pack(chunk_id), db=self.t[b"file_chunks"])

    def put_cs(self, cs_id: int, record: CsRecord) -> None:
        self._writer().put(cs_key(cs_id), encoder.encode(record), db=self.t[b"chunkservers"])

    def put_node(self, node_id: str, cs_id: int) -> None:
        self._writer().put(node_id.encode(), U32.pack(cs_id), db=self.t[b"cs_by_node"])

    def doom(self, chunk_id: int, version: int, replicas: tuple[CsId, ...]) -> None:
        """Queue replicas of a chunk for deletion, merged with what is already queued for it
        (the highest version wins: every copy at or below it is garbage)."""
        if not replicas:
            return
        entry = self.get_doomed(chunk_id)
        if entry is not None:
            replicas = entry.replicas + tuple(r for r in replicas if r not in entry.replicas)
            version = max(version, entry.version)
        self._writer().put(chunk_key(chunk_id), encoder.encode(DoomedChunk(version, replicas)), db=self.t[b"doomed"])

    def forget_doomed(self, chunk_id: int, cs_id: int) -> int:
        """``cs_id`` no longer holds a doomed copy of the chunk; returns how many remain."""
        entry = self.get_doomed(chunk_id)
        if entry is None or cs_id not in entry.replicas:
            return len(entry.replicas) if entry is not None else 0
        left = tuple(r for r in entry.replicas if r != cs_id)
        txn = self._writer()
        if left:
            txn.put(chunk_key(chunk_id), encoder.encode(DoomedChunk(entry.version, left)), db=self.t[b"doomed"])
        else:
            txn.delete(chunk_key(chunk_id), db=self.t[b"doomed"])
        return len(left)

    def delete_chunk(self, chunk_id: int, chunk: Chunk) -> None:
        """The chunk leaves its file: out of ``file_chunks`` and ``chunks``, its replicas into
        ``doomed`` (a lost chunk, with no replica, leaves nothing to delete)."""
        txn = self._writer()
        txn.delete(file_chunk_key(chunk.inode, chunk.index), db=self.t[b"file_chunks"])
        txn.delete(chunk_key(chunk_id), db=self.t[b"chunks"])
        self.doom(chunk_id, chunk.version, chunk.replicas)

    def doom_file(self, inode: int) -> None:
        """The inode is gone: every chunk of it is deleted (one cursor seek when it has none)."""
        for _index, chunk_id in self.file_chunks(inode):
            self.delete_chunk(chunk_id, self.need_chunk(chunk_id))

    def truncate_file(self, inode: int, size: int) -> None:
        """The file shrank to ``size`` bytes: chunks wholly past it are deleted, and the chunk
        holding the new end is cut to it with a new version.

        The version changes even when the recorded length already fits: a replica may hold
        bytes past the new end (a write in flight, not reported yet), and those must never be
        read back as the file's. The chunkservers learn the new version and length later, when
        the service tells them to cut their copies (a replica still at the old version is
        refused as stale meanwhile, and a writer racing the truncate gets StaleVersion and
        reloads the chunk map)."""
        chunk_bytes = self.chunk_bytes()
        first_gone = -(-size // chunk_bytes)  # ceil: the first index holding no byte below size
        for _index, chunk_id in self.file_chunks(inode, first_gone):
            self.delete_chunk(chunk_id, self.need_chunk(chunk_id))
        if size % chunk_bytes:
            index = size // chunk_bytes
            chunk_id = self.chunk_at(inode, index)
            if chunk_id is not None:
                chunk = self.need_chunk(chunk_id)
                self.put_chunk(chunk_id, msgspec.structs.replace(
                    chunk, length_bytes=min(chunk.length_bytes, size - index * chunk_bytes),
                    version=chunk.version + 1))

    # ---- validation shared by the commands ------------------------------------------------------

    def check_new_replicas(self, chunk_id: int, new: tuple[CsId, ...], existing: tuple[CsId, ...]) -> None:
        """``new`` may join the chunk's chain beside ``existing``: distinct, not there yet,
        registered and active, no doomed copy of this chunk pending on it (the pending delete
        would destroy the new copy), and the chain no longer than REPLICAS_MAX."""
        if len(set(new)) != len(new):
            raise InvalidArgument(f"chunk {chunk_id}: replica list {list(new)} names a chunkserver twice")
        doomed = self.get_doomed(chunk_id)
        for cs_id in new:
            if cs_id in existing:
                raise InvalidArgument(f"chunk {chunk_id} already has a replica on chunkserver {cs_id}")
            record = self.get_cs(cs_id)
            if record is None:
                raise InvalidArgument(f"chunk {chunk_id}: chunkserver {cs_id} is not registered")
            if record.state != CsAdminState.ACTIVE:
                raise InvalidArgument(f"chunk {chunk_id}: chunkserver {cs_id} is {record.state}, "
                                      f"it takes no new replicas")
            if doomed is not None and cs_id in doomed.replicas:
                raise InvalidArgument(f"chunk {chunk_id}: chunkserver {cs_id} has not yet deleted its old copy")
        if len(existing) + len(new) > REPLICAS_MAX:
            raise InvalidArgument(f"chunk {chunk_id}: more than {REPLICAS_MAX} replicas")


class ChunkCommands:
    """The chunk and chunkserver commands; a mixin of namespace._Apply, which provides the
    transaction, the inode accessors and the dispatch by command name."""

    if TYPE_CHECKING:
        chunks: ChunkTables
        op: Any

        def get(self, inode: int) -> Inode: ...
        def put(self, inode: int, node: Inode) -> None: ...

    def _allocchunk(self, op: AllocChunk) -> Any:
        node = self.get(op.inode)
        need_regular_file(node, op.inode)
        chunk_bytes = self.chunks.chunk_bytes()
        if op.index < 0:
            raise InvalidArgument(f"negative chunk index {op.index}")
        if op.index * chunk_bytes >= FILE_BYTES_MAX:
            raise FileTooBig(f"chunk {op.index} would start at byte {op.index * chunk_bytes}, past the largest "
                             f"file ({FILE_BYTES_MAX} bytes)")
        existing = self.chunks.chunk_at(op.inode, op.index)
        if existing is not None:
            raise Exists(f"inode {op.inode} already has chunk {existing} at index {op.index}")
        if not op.replicas:
            raise InvalidArgument(f"a new chunk needs at least one replica (inode {op.inode} index {op.index})")
        self.chunks.claim(b"next_chunk", op.chunk_id, CHUNK_ID_MAX, "chunk id")
        self.chunks.check_new_replicas(op.chunk_id, op.replicas, ())
        chunk = Chunk(op.inode, op.index, 1, 0, tuple(op.replicas))
        self.chunks.put_chunk(op.chunk_id, chunk)
        self.chunks.put_file_chunk(op.inode, op.index, op.chunk_id)
        return (op.chunk_id, encoder.encode(chunk))

    def _writedone(self, op: WriteDone) -> Any:
        node = self.get(op.inode)
        need_regular_file(node, op.inode)
        if op.size < 0:
            raise InvalidArgument(f"negative file size {op.size}")
        if op.size > FILE_BYTES_MAX:
            raise FileTooBig(f"file size {op.size} exceeds the largest file ({FILE_BYTES_MAX} bytes)")
        chunk_bytes = self.chunks.chunk_bytes()
        for index, length_bytes in op.chunks:
            if index < 0 or not 0 <= length_bytes <= chunk_bytes:
                raise InvalidArgument(f"chunk {index} of inode {op.inode}: length {length_bytes} is not within "
                                      f"the chunk size {chunk_bytes}")
        for index, length_bytes in op.chunks:
            chunk_id = self.chunks.chunk_at(op.inode, index)
            if chunk_id is None:
                continue  # truncated away (or the file replaced) since the write: nothing to bring back
            chunk = self.chunks.need_chunk(chunk_id)
            if length_bytes > chunk.length_bytes:
                self.chunks.put_chunk(chunk_id, msgspec.structs.replace(chunk, length_bytes=length_bytes))
        # The size only grows: two writers report in any order, and the larger end wins. A
        # report that arrives after a truncate can grow the file back; the gap then reads as
        # zeros, never as old data, because the truncate deleted or re-versioned every chunk
        # past the cut (POSIX leaves unordered writes and truncates of two clients in any order).
        # ctime is the leader's clock, like every other command's; mtime is the writer's.
        node = msgspec.structs.replace(node, size=max(node.size, op.size), mtime_ns=op.mtime_ns, ctime_ns=op.now_ns)
        self.put(op.inode, node)
        return (op.inode, encoder.encode(node))

    def _repairchain(self, op: RepairChain) -> Any:
        chunk = self.chunks.need_chunk(op.chunk_id)
        if chunk.version != op.version:
            raise StaleVersion(f"chunk {op.chunk_id} is at version {chunk.version}, not {op.version}",
                               details={"chunk": op.chunk_id, "have": chunk.version, "want": op.version})
        if op.new_version <= op.version:
            raise InvalidArgument(f"chunk {op.chunk_id}: new version {op.new_version} must exceed {op.version}")
        for cs_id in op.drop:
            if cs_id not in chunk.replicas:
                raise InvalidArgument(f"chunk {op.chunk_id} has no replica on chunkserver {cs_id} to drop")
        if set(op.drop) & set(op.add):
            raise InvalidArgument(f"chunk {op.chunk_id}: a chunkserver cannot be both dropped and added")
        remaining = tuple(r for r in chunk.replicas if r not in op.drop)
        self.chunks.check_new_replicas(op.chunk_id, op.add, remaining)
        replicas = remaining + tuple(op.add)
        if not replicas:
            raise InvalidArgument(f"chunk {op.chunk_id}: dropping {list(op.drop)} leaves no replica")
        # The dropped replicas are not queued for deletion: their servers just failed a write
        # and are probably unreachable. Their copies are at the old version now; when such a
        # server comes back, its chunk report shows the stale version and the repair planner
        # deletes it (DESIGN.md §4), which also covers servers that never come back.
        chunk = msgspec.structs.replace(chunk, version=op.new_version, replicas=replicas)
        self.chunks.put_chunk(op.chunk_id, chunk)
        return (op.chunk_id, encoder.encode(chunk))

    def _addreplica(self, op: AddReplica) -> Any:
        chunk = self.chunks.need_chunk(op.chunk_id)
        if chunk.version != op.version:
            raise StaleVersion(f"chunk {op.chunk_id} is at version {chunk.version}, the copy on chunkserver "
                               f"{op.cs_id} is of version {op.version}",
                               details={"chunk": op.chunk_id, "have": chunk.version, "want": op.version})
        if op.cs_id in chunk.replicas:
            raise Exists(f"chunk {op.chunk_id} already has a replica on chunkserver {op.cs_id}")
        self.chunks.check_new_replicas(op.chunk_id, (op.cs_id,), chunk.replicas)
        chunk = msgspec.structs.replace(chunk, replicas=chunk.replicas + (op.cs_id,))
        self.chunks.put_chunk(op.chunk_id, chunk)
        return (op.chunk_id, encoder.encode(chunk))

    def _dropreplica(self, op: DropReplica) -> Any:
        chunk = self.chunks.need_chunk(op.chunk_id)
        if op.cs_id not in chunk.replicas:
            raise NotFound(f"chunk {op.chunk_id} has no replica on chunkserver {op.cs_id}")
        # Dropping the last replica keeps the chunk, with no replicas: the chunk is lost, and a
        # read must say so (ChunkLost) rather than find a hole and return zeros.
        chunk = msgspec.structs.replace(chunk, replicas=tuple(r for r in chunk.replicas if r != op.cs_id))
        self.chunks.put_chunk(op.chunk_id, chunk)
        self.chunks.doom(op.chunk_id, chunk.version, (op.cs_id,))
        return (op.chunk_id, encoder.encode(chunk))

    def _chunkdeleted(self, op: ChunkDeleted) -> Any:
        # idempotent: a repeated or late confirmation (the entry is gone) changes nothing
        return self.chunks.forget_doomed(op.chunk_id, op.cs_id)

    def _registercs(self, op: RegisterCs) -> Any:
        _check_label("node id", op.node_id, NODE_ID_BYTES_MAX, required=True)
        _check_label("host", op.host, HOST_LABEL_BYTES_MAX, required=True)
        _check_label("rack", op.rack, HOST_LABEL_BYTES_MAX, required=False)
        _check_address(op.address)
        _check_capacity(op.capacity_bytes)
        registered = self.chunks.cs_of_node(op.node_id)
        if registered is not None:
            raise Exists(f"chunkserver node {op.node_id!r} is already registered as cs {registered}")
        self.chunks.claim(b"next_cs", op.cs_id, CS_ID_MAX, "chunkserver id")
        self.chunks.put_cs(op.cs_id, CsRecord(op.node_id, op.host, op.rack, op.address, op.capacity_bytes,
                                              str(CsAdminState.ACTIVE), op.now_ns))
        self.chunks.put_node(op.node_id, op.cs_id)
        return op.cs_id

    def _setcsstate(self, op: SetCsState) -> Any:
        record = self.chunks.need_cs(op.cs_id)
        try:
            state = CsAdminState(op.state)
        except ValueError:
            raise InvalidArgument(f"chunkserver state {op.state!r}: expected one of "
                                  f"{', '.join(s.value for s in CsAdminState)}") from None
        if record.state == CsAdminState.REMOVED and state != CsAdminState.REMOVED:
            raise InvalidArgument(f"chunkserver {op.cs_id} was removed for good; register the node anew "
                                  f"under a new node id")
        if state == CsAdminState.REMOVED and record.state != CsAdminState.REMOVED:
            holding = self.chunks.chunks_holding(op.cs_id)
            if holding:
                raise NotEmpty(f"chunkserver {op.cs_id} still holds replicas of {len(holding)} chunks "
                               f"(chunk {holding[0]} first); drain it before removing it")
            # A removed server is never contacted again: its doomed copies die with its disk.
            # A full scan of the queue, on an operator's rare act.
            cursor = self.chunks.txn.cursor(db=self.chunks.t[b"doomed"])
            pending = [U64.unpack(key)[0] for key, raw in cursor if op.cs_id in doomed_decoder.decode(raw).replicas]
            for chunk_id in pending:
                self.chunks.forget_doomed(chunk_id, op.cs_id)
        self.chunks.put_cs(op.cs_id, msgspec.structs.replace(record, state=str(state)))
        return op.cs_id

    def _updatecs(self, op: UpdateCs) -> Any:
        record = self.chunks.need_cs(op.cs_id)
        if record.state == CsAdminState.REMOVED:
            raise InvalidArgument(f"chunkserver {op.cs_id} was removed for good")
        _check_address(op.address)
        _check_capacity(op.capacity_bytes)
        self.chunks.put_cs(op.cs_id, msgspec.structs.replace(record, address=op.address,
                                                             capacity_bytes=op.capacity_bytes))
        return op.cs_id


__all__ = ["ChunkCommands", "ChunkTables", "check_chunk_bytes", "need_regular_file"]
