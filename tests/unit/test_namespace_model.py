"""The namespace state machine against a naive in-memory model, on random operation
sequences (Hypothesis stateful testing): same outcome (success or the same error) for
every operation, same tree and same chunk indexes per file afterwards, and a consistent
namespace and chunk layer at every step (removing or truncating a file hands its chunks to
the deletion queue: the check finds any chunk left behind)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.harness.namespace import NS
from vstore.errors import FsError
from vstore.metadata.fsm.namespace import (RENAME_EXCHANGE, RENAME_NOREPLACE, AllocChunk, Link, Mkdir, Mknod, Rename,
                                           Rmdir, SetAttr, Unlink, WriteDone)
from vstore.metadata.fsm.schema import ROOT_INODE, Kind

NAMES = st.sampled_from([b"a", b"b", b"c"])
CHUNK_BYTES = 1 << 20


class Model:
    """Directories as dicts; no permissions, no times: just the tree and the link counts."""

    def __init__(self) -> None:
        self.kind = {ROOT_INODE: Kind.DIR}
        self.entries: dict[int, dict[bytes, int]] = {ROOT_INODE: {}}
        self.parent = {ROOT_INODE: ROOT_INODE}
        self.chunks: dict[int, set[int]] = {}  # regular file -> indexes holding a chunk
        self.size: dict[int, int] = {}

    def forget(self, inode: int) -> None:
        del self.kind[inode]
        self.chunks.pop(inode, None)
        self.size.pop(inode, None)

    def alloc(self, inode: int, index: int) -> str:
        if index in self.chunks.setdefault(inode, set()):
            return "Exists"
        self.chunks[inode].add(index)
        return "ok"

    def resize(self, inode: int, size: int, *, grow_only: bool) -> str:
        old = self.size.get(inode, 0)
        if size < old and not grow_only:
            keep = -(-size // CHUNK_BYTES)
            self.chunks[inode] = {i for i in self.chunks.get(inode, set()) if i < keep}
        self.size[inode] = max(old, size) if grow_only else size
        return "ok"

    def dirs(self) -> list[int]:
        return sorted(i for i, k in self.kind.items() if k == Kind.DIR)

    def _ancestor(self, a: int, d: int) -> bool:
        while True:
            if d == a:
                return True
            if d == ROOT_INODE:
                return False
            d = self.parent[d]

    def _links(self, inode: int) -> int:
        return sum(1 for e in self.entries.values() for c in e.values() if c == inode)

    def create(self, parent: int, name: bytes, inode: int, kind: Kind) -> str:
        if name in self.entries[parent]:
            return "Exists"
        self.entries[parent][name] = inode
        self.kind[inode] = kind
        if kind == Kind.DIR:
            self.entries[inode] = {}
            self.parent[inode] = parent
        return "ok"

    def remove(self, parent: int, name: bytes, want_dir: bool) -> str:
        child = self.entries[parent].get(name)
        if child is None:
            return "NotFound"
        is_dir = self.kind[child] == Kind.DIR
        if want_dir and not is_dir:
            return "NotDir"
        if not want_dir and is_dir:
            return "IsDir"
        if is_dir and self.entries[child]:
            return "NotEmpty"
        del self.entries[parent][name]
        if is_dir:
            del self.entries[child], self.parent[child], self.kind[child]
        elif self._links(child) == 0:
            self.forget(child)
        return "ok"

    def link(self, inode: int, parent: int, name: bytes) -> str:
        if self.kind[inode] == Kind.DIR:
            return "NotPermitted"
        if name in self.entries[parent]:
            return "Exists"
        self.entries[parent][name] = inode
        return "ok"

    def rename(self, p: int, n: bytes, q: int, m: bytes, flags: int) -> str:
        src = self.entries[p].get(n)
        if src is None:
            return "NotFound"
        dst = self.entries[q].get(m)
        if flags == RENAME_EXCHANGE:
            if dst is None:
                return "NotFound"
            if src == dst:
                return "ok"
            if (self.kind[src] == Kind.DIR and self._ancestor(src, q)) or \
                    (self.kind[dst] == Kind.DIR and self._ancestor(dst, p)):
                return "InvalidArgument"
            self.entries[p][n], self.entries[q][m] = dst, src
            for inode, holder in ((src, q), (dst, p)):
                if self.kind[inode] == Kind.DIR:
                    self.parent[inode] = holder
            return "ok"
        if dst is not None and flags == RENAME_NOREPLACE:
            return "Exists"
        if dst == src:
            return "ok"
        if self.kind[src] == Kind.DIR and self._ancestor(src, q):
            return "InvalidArgument"
        if dst is not None:
            if self.kind[src] == Kind.DIR and self.kind[dst] != Kind.DIR:
                return "NotDir"
            if self.kind[src] != Kind.DIR and self.kind[dst] == Kind.DIR:
                return "IsDir"
            if self.kind[dst] == Kind.DIR and self.entries[dst]:
                return "NotEmpty"
            del self.entries[q][m]
            if self.kind[dst] == Kind.DIR:
                del self.entries[dst], self.parent[dst], self.kind[dst]
            elif self._links(dst) == 0:
                self.forget(dst)
        del self.entries[p][n]
        self.entries[q][m] = src
        if self.kind[src] == Kind.DIR:
            self.parent[src] = q
        return "ok"


class NamespaceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.ns = NS(Path(self.tmp.name) / "state", chunk_bytes=CHUNK_BYTES)
        self.model = Model()
        self.ns.register_cs("cs-a")
        self.ns.register_cs("cs-b")

    def teardown(self) -> None:
        self.ns.sm.close()
        self.tmp.cleanup()

    def _entry(self, data) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
        """Mostly an existing (directory, name), sometimes any: both success and error paths."""
        existing = sorted((d, n) for d, names in self.model.entries.items() for n in names)
        if existing and data.draw(st.integers(0, 3)):
            return data.draw(st.sampled_from(existing))
        return data.draw(st.sampled_from(self.model.dirs())), data.draw(NAMES)

    def _outcome(self, fn) -> str:  # type: ignore[no-untyped-def]
        try:
            fn()
            return "ok"
        except FsError as exc:
            return type(exc).__name__

    @rule(data=st.data(), name=NAMES, is_dir=st.booleans())
    def create(self, data, name: bytes, is_dir: bool) -> None:  # type: ignore[no-untyped-def]
        parent = data.draw(st.sampled_from(self.model.dirs()))
        inode = next(self.ns.ids)
        if is_dir:
            got = self._outcome(lambda: self.ns.do(Mkdir, parent=parent, name=name, mode=0o755, inode=inode))
        else:
            got = self._outcome(lambda: self.ns.do(Mknod, parent=parent, name=name, kind=Kind.FILE, mode=0o644,
                                                   inode=inode))
        assert got == self.model.create(parent, name, inode, Kind.DIR if is_dir else Kind.FILE)

    @rule(data=st.data(), want_dir=st.booleans())
    def remove(self, data, want_dir: bool) -> None:  # type: ignore[no-untyped-def]
        parent, name = self._entry(data)
        op = Rmdir if want_dir else Unlink
        got = self._outcome(lambda: self.ns.do(op, parent=parent, name=name))
        assert got == self.model.remove(parent, name, want_dir)

    @rule(data=st.data(), name=NAMES)
    def link(self, data, name: bytes) -> None:  # type: ignore[no-untyped-def]
        files = sorted(self.model.kind)
        inode = data.draw(st.sampled_from(files))
        if inode == ROOT_INODE:
            return
        parent = data.draw(st.sampled_from(self.model.dirs()))
        got = self._outcome(lambda: self.ns.do(Link, inode=inode, parent=parent, name=name))
        assert got == self.model.link(inode, parent, name)

    @rule(data=st.data(), m=NAMES, flags=st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]))
    def rename(self, data, m: bytes, flags: int) -> None:  # type: ignore[no-untyped-def]
        p, n = self._entry(data)
        q = data.draw(st.sampled_from(self.model.dirs()))
        got = self._outcome(lambda: self.ns.do(Rename, parent=p, name=n, new_parent=q, new_name=m, flags=flags))
        assert got == self.model.rename(p, n, q, m, flags), (p, n, q, m, flags)

    def _file(self, data):  # type: ignore[no-untyped-def]
        files = sorted(i for i, k in self.model.kind.items() if k == Kind.FILE)
        return data.draw(st.sampled_from(files)) if files else None

    @rule(data=st.data(), index=st.integers(0, 4))
    def alloc_chunk(self, data, index: int) -> None:  # type: ignore[no-untyped-def]
        inode = self._file(data)
        if inode is None:
            return
        got = self._outcome(lambda: self.ns.do(AllocChunk, inode=inode, index=index, chunk_id=next(self.ns.chunk_ids),
                                               replicas=(2, 1)))
        assert got == self.model.alloc(inode, index)

    @rule(data=st.data(), size=st.integers(0, 5 * CHUNK_BYTES), truncate=st.booleans())
    def resize(self, data, size: int, truncate: bool) -> None:  # type: ignore[no-untyped-def]
        inode = self._file(data)
        if inode is None:
            return
        if truncate:
            got = self._outcome(lambda: self.ns.do(SetAttr, inode=inode, size=size))
        else:
            got = self._outcome(lambda: self.ns.do(WriteDone, inode=inode, size=size, mtime_ns=1))
        assert got == self.model.resize(inode, size, grow_only=not truncate)

    @invariant()
    def same_tree_and_consistent(self) -> None:
        for d in self.model.dirs():
            assert dict(self.ns.sm.readdir(d)) == self.model.entries[d]
        for inode, kind in self.model.kind.items():
            if kind == Kind.FILE:
                assert self.ns.chunk_indexes(inode) == sorted(self.model.chunks.get(inode, ()))
                assert self.ns.sm.getattr(inode).size == self.model.size.get(inode, 0)
        self.ns.check()


NamespaceMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])
test_namespace_matches_the_model = NamespaceMachine.TestCase
