"""A metadata state machine driven directly, with a stand-in leader that picks inode ids and
times, and a full consistency check of the namespace (tests of vstore/metadata/fsm)."""

from __future__ import annotations

import itertools
from pathlib import Path

from vstore.errors import error_class
from vstore.metadata.fsm.namespace import InitRoot, Mkdir, Mknod, NamespaceStateMachine, encode_command
from vstore.metadata.fsm.schema import ROOT_INODE, U64, Kind, inode_decoder
from vstore.metadata.raft.statemachine import encode_proposal
from vstore.wire.codes import ErrorCode
from vstore.wire.raft import Entry

ROOT = ROOT_INODE


class NS:
    """The state machine plus a leader stand-in that picks inode ids and times."""

    def __init__(self, path: Path) -> None:
        self.sm = NamespaceStateMachine(path, map_size_bytes=1 << 26)
        self.index = 0
        self.ids = itertools.count(100)
        self.clock = itertools.count(1_000_000_000, 1000)
        self.uid, self.gid = 0, 0
        self.do(InitRoot, mode=0o777)

    def do(self, cls, **fields):  # type: ignore[no-untyped-def]
        op = cls(uid=fields.pop("uid", self.uid), gid=fields.pop("gid", self.gid), now_ns=next(self.clock), **fields)
        self.index += 1
        entry = Entry.make(self.index, 1, encode_proposal("", 0, encode_command(op)))
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
