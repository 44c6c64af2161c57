"""A metadata state machine driven directly, with a stand-in leader that picks inode ids,
chunk ids, cs ids and times, and a full consistency check of the namespace and the chunk
layer (tests of vstore/metadata/fsm)."""

from __future__ import annotations

import itertools
from pathlib import Path

from vstore.errors import error_class
from vstore.metadata.fsm.namespace import (AllocChunk, InitRoot, Mkdir, Mknod, NamespaceStateMachine, RegisterCs,
                                           encode_command)
from vstore.metadata.fsm.schema import (ROOT_INODE, U32, U64, Chunk, CsAdminState, Kind, chunk_decoder, cs_decoder,
                                        doomed_decoder, inode_decoder)
from vstore.metadata.raft.statemachine import encode_proposal
from vstore.wire.codes import ErrorCode
from vstore.wire.raft import Entry

ROOT = ROOT_INODE


class NS:
    """The state machine plus a leader stand-in that picks inode, chunk and cs ids, and times."""

    def __init__(self, path: Path, **init) -> None:  # type: ignore[no-untyped-def]
        self.sm = NamespaceStateMachine(path, map_size_bytes=1 << 26)
        self.index = 0
        self.ids = itertools.count(100)
        self.chunk_ids = itertools.count(1)
        self.cs_ids = itertools.count(1)
        self.clock = itertools.count(1_000_000_000, 1000)
        self.uid, self.gid = 0, 0
        self.do(InitRoot, mode=0o777, **init)

    def do(self, cls, **fields):  # type: ignore[no-untyped-def]
        return self.do_on_lane("", 0, cls, **fields)

    def do_on_lane(self, lane: str, seq: int, cls, **fields):  # type: ignore[no-untyped-def]
        """Apply one command as a client's request on ``lane`` (its exactly-once record is kept
        in the sessions table), or, with lane "", as the leader's own proposal."""
        now_ns = fields.pop("now_ns", None) or next(self.clock)
        op = cls(uid=fields.pop("uid", self.uid), gid=fields.pop("gid", self.gid), now_ns=now_ns, **fields)
        self.index += 1
        entry = Entry.make(self.index, 1, encode_proposal(lane, seq, encode_command(op)))
        (result,) = self.sm.apply([entry], {})
        status, *rest = result
        if status == "err":
            code, message = rest
            raise error_class(ErrorCode(code))(message)
        return rest[0]

    def mkdir(self, parent: int, name: bytes, mode: int = 0o755, **kw) -> int:  # type: ignore[no-untyped-def]
        return self.do(Mkdir, parent=parent, name=name, mode=mode, inode=next(self.ids), **kw)[0]

    def create(self, parent: int, name: bytes, mode: int = 0o644, **kw) -> int:  # type: ignore[no-untyped-def]
        return self.do(Mknod, parent=parent, name=name, kind=Kind.FILE, mode=mode, inode=next(self.ids), **kw)[0]

    def names(self, directory: int) -> list[bytes]:
        return [name for name, _ in self.sm.readdir(directory)]

    def register_cs(self, node_id: str, *, host: str = "", rack: str = "", capacity_bytes: int = 1 << 40) -> int:
        """A chunkserver on its own host (``host`` defaults to the node id), as the leader registers it."""
        return self.do(RegisterCs, cs_id=next(self.cs_ids), node_id=node_id, host=host or node_id, rack=rack,
                       address=f"{host or node_id}:9402", capacity_bytes=capacity_bytes)

    def alloc(self, inode: int, index: int, replicas: tuple[int, ...]) -> tuple[int, Chunk]:
        """AllocChunk with the next chunk id; returns (chunk_id, chunk)."""
        chunk_id, raw = self.do(AllocChunk, inode=inode, index=index, chunk_id=next(self.chunk_ids),
                                replicas=replicas)
        return chunk_id, chunk_decoder.decode(raw)

    def chunk_indexes(self, inode: int) -> list[int]:
        return [index for index, _, _ in self.sm.chunk_map(inode, 0, 1 << 20)]

    def check(self) -> None:
        """Every dentry resolves; nlink equals the references; one parent per directory."""
        refs: dict[int, int] = {ROOT: 0}
        parents: dict[int, list[int]] = {}
        inodes = {}
        with self.sm.env.begin() as txn:
            for key, raw in txn.cursor(db=self.sm.tables[b"inodes"]):
                inodes[U64.unpack(key)[0]] = inode_decoder.decode(raw)
            orphans = {U64.unpack(key)[0] for key, _ in txn.cursor(db=self.sm.tables[b"orphans"])}
            opened = {U64.unpack(key[:8])[0] for key, _ in txn.cursor(db=self.sm.tables[b"opens"])}
            for key, raw in txn.cursor(db=self.sm.tables[b"dentries"]):
                parent, child = U64.unpack(key[:8])[0], U64.unpack(raw)[0]
                assert child in inodes, f"dentry {key[8:]!r} in {parent} points to missing inode {child}"
                refs[child] = refs.get(child, 0) + 1
                parents.setdefault(child, []).append(parent)
        for inode, node in inodes.items():
            if node.kind == Kind.DIR:
                subdirs = sum(1 for i, n in inodes.items() if n.kind == Kind.DIR and n.parent == inode and i != inode)
                expected = 2 + subdirs
                assert node.nlink == expected, f"dir {inode} nlink {node.nlink} != {expected}"
                if inode != ROOT:
                    assert parents.get(inode) == [node.parent], f"dir {inode} parents {parents.get(inode)}"
            else:
                assert node.nlink == refs.get(inode, 0), f"inode {inode} nlink {node.nlink} != {refs.get(inode)}"
                if node.nlink == 0:
                    assert inode in orphans and inode in opened, f"inode {inode} has no name and is not held open"
        for inode in orphans:
            assert inode in inodes and inodes[inode].nlink == 0, f"orphan {inode} still has a name or is gone"
        self.check_chunks(inodes)

    def check_chunks(self, inodes: dict) -> None:  # type: ignore[type-arg]
        """The chunk-layer invariants of schema.py: file_chunks and chunks are one bijection
        onto regular files; replicas distinct, registered and not removed; the deletion queue
        never names a live replica; ids below their counters; cs_by_node inverts the registry."""
        t = self.sm.tables
        with self.sm.env.begin() as txn:
            chunks = {U64.unpack(k)[0]: chunk_decoder.decode(v) for k, v in txn.cursor(db=t[b"chunks"])}
            entries = {(U64.unpack(k[:8])[0], U32.unpack(k[8:])[0]): U64.unpack(v)[0]
                       for k, v in txn.cursor(db=t[b"file_chunks"])}
            servers = {U32.unpack(k)[0]: cs_decoder.decode(v) for k, v in txn.cursor(db=t[b"chunkservers"])}
            by_node = {bytes(k).decode(): U32.unpack(v)[0] for k, v in txn.cursor(db=t[b"cs_by_node"])}
            doomed = {U64.unpack(k)[0]: doomed_decoder.decode(v) for k, v in txn.cursor(db=t[b"doomed"])}
            counters = {bytes(k): U64.unpack(v)[0] for k, v in txn.cursor(db=t[b"counters"])}
        chunk_bytes = self.sm.chunk_bytes()
        for (inode, index), chunk_id in entries.items():
            assert chunk_id in chunks, f"file_chunks ({inode}, {index}) names missing chunk {chunk_id}"
            chunk = chunks[chunk_id]
            assert (chunk.inode, chunk.index) == (inode, index), f"chunk {chunk_id} is {chunk}, filed at {index}"
            assert inode in inodes and inodes[inode].kind == Kind.FILE, f"chunk {chunk_id} of non-file {inode}"
        assert len(set(entries.values())) == len(entries), "a chunk is filed twice"
        for chunk_id, chunk in chunks.items():
            assert entries.get((chunk.inode, chunk.index)) == chunk_id, f"chunk {chunk_id} is in no file"
            assert chunk.version >= 1 and 0 <= chunk.length_bytes <= chunk_bytes, f"chunk {chunk_id}: {chunk}"
            assert len(set(chunk.replicas)) == len(chunk.replicas), f"chunk {chunk_id} replicas {chunk.replicas}"
            for cs_id in chunk.replicas:
                assert cs_id in servers and servers[cs_id].state != CsAdminState.REMOVED, \
                    f"chunk {chunk_id} has a replica on unregistered or removed cs {cs_id}"
            assert chunk_id < counters.get(b"next_chunk", 1), f"chunk {chunk_id} above the counter"
        for chunk_id, entry in doomed.items():
            assert entry.replicas and len(set(entry.replicas)) == len(entry.replicas), f"doomed {chunk_id}: {entry}"
            live = set(chunks[chunk_id].replicas) if chunk_id in chunks else set()
            assert not live & set(entry.replicas), f"doomed {chunk_id} lists live replicas {live & set(entry.replicas)}"
            assert chunk_id < counters.get(b"next_chunk", 1), f"doomed chunk {chunk_id} was never handed out"
        assert by_node == {cs.node_id: cs_id for cs_id, cs in servers.items()}, "cs_by_node != the registry"
        for cs_id in servers:
            assert 1 <= cs_id < counters.get(b"next_cs", 1), f"cs {cs_id} above the counter"
