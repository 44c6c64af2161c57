"""Namespace operations against the metadata state machine directly (through the same
apply path Raft uses), with a consistency check of the whole namespace after each test."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from tests.harness.namespace import NS, ROOT
from vstore.metadata.fsm.namespace import NamespaceStateMachine
from vstore.errors import Exists, FsError, InvalidArgument, IsDir, NameTooLong, NotDir, NotEmpty, NotFound, NotPermitted
from vstore.metadata.fsm.namespace import (RENAME_EXCHANGE, RENAME_NOREPLACE, Link, Mknod, Rename, Rmdir, SetAttr,
                                           Symlink, Unlink)
from vstore.metadata.fsm.schema import S_ISGID, S_ISVTX, U64, Kind


@pytest.fixture
def ns(tmp_path: Path):
    namespace = NS(tmp_path / "state")
    yield namespace
    namespace.check()
    namespace.sm.close()


def test_create_lookup_and_readdir_in_name_order(ns: NS) -> None:
    d = ns.mkdir(ROOT, b"d")
    for name in (b"c", b"a", b"b"):
        ns.create(d, name)
    assert ns.names(d) == [b"a", b"b", b"c"]
    inode, attrs = ns.sm.lookup(d, b"b")
    assert attrs.kind == Kind.FILE and attrs.nlink == 1
    assert ns.sm.getattr(d).nlink == 2 and ns.sm.getattr(ROOT).nlink == 3


def test_readdir_pages_through_a_large_directory(ns: NS) -> None:
    d = ns.mkdir(ROOT, b"big")
    names = sorted(f"f{i:05d}".encode() for i in range(1200))
    for name in names:
        ns.create(d, name)
    seen, after = [], b""
    while page := ns.sm.readdir(d, after=after, limit=500):
        seen.extend(n for n, _ in page)
        after = page[-1][0]
    assert seen == names


@pytest.mark.parametrize("name,error", [(b"", InvalidArgument), (b".", InvalidArgument), (b"..", InvalidArgument),
                                        (b"a/b", InvalidArgument), (b"a\0b", InvalidArgument),
                                        (b"x" * 256, NameTooLong)])
def test_bad_names_are_refused(ns: NS, name: bytes, error: type[FsError]) -> None:
    with pytest.raises(error):
        ns.create(ROOT, name)
    ns.create(ROOT, b"x" * 255)  # the longest legal name


def test_creating_an_existing_name_is_eexist_and_changes_nothing(ns: NS) -> None:
    ns.create(ROOT, b"f")
    with pytest.raises(Exists):
        ns.create(ROOT, b"f")
    with pytest.raises(Exists):
        ns.mkdir(ROOT, b"f")
    assert ns.names(ROOT) == [b"f"]


def test_creating_in_a_missing_or_non_directory_parent_fails(ns: NS) -> None:
    f = ns.create(ROOT, b"file")
    with pytest.raises(NotDir):
        ns.create(f, b"child")
    with pytest.raises(NotFound):
        ns.create(99999, b"child")


def test_a_reused_inode_id_is_refused(ns: NS) -> None:
    used = ns.create(ROOT, b"a")
    with pytest.raises(InvalidArgument, match="already handed out"):
        ns.do(Mknod, parent=ROOT, name=b"b", kind=Kind.FILE, mode=0o644, inode=used)


def test_rmdir_of_a_non_empty_directory_is_enotempty(ns: NS) -> None:
    d = ns.mkdir(ROOT, b"d")
    ns.create(d, b"f")
    with pytest.raises(NotEmpty):
        ns.do(Rmdir, parent=ROOT, name=b"d")
    ns.do(Unlink, parent=d, name=b"f")
    ns.do(Rmdir, parent=ROOT, name=b"d")
    assert ns.names(ROOT) == [] and ns.sm.getattr(ROOT).nlink == 2


def test_unlink_of_a_directory_is_eisdir_and_rmdir_of_a_file_enotdir(ns: NS) -> None:
    ns.mkdir(ROOT, b"d")
    ns.create(ROOT, b"f")
    with pytest.raises(IsDir):
        ns.do(Unlink, parent=ROOT, name=b"d")
    with pytest.raises(NotDir):
        ns.do(Rmdir, parent=ROOT, name=b"f")
    with pytest.raises(NotFound):
        ns.do(Unlink, parent=ROOT, name=b"nope")


def test_hard_links_count_and_the_inode_lives_until_the_last_name_goes(ns: NS) -> None:
    f = ns.create(ROOT, b"a")
    d = ns.mkdir(ROOT, b"d")
    ns.do(Link, inode=f, parent=d, name=b"b")
    assert ns.sm.getattr(f).nlink == 2
    ns.do(Unlink, parent=ROOT, name=b"a")
    assert ns.sm.getattr(f).nlink == 1 and ns.sm.lookup(d, b"b")[0] == f
    ns.do(Unlink, parent=d, name=b"b")
    with pytest.raises(NotFound):
        ns.sm.getattr(f)


def test_hard_links_to_directories_are_refused(ns: NS) -> None:
    d = ns.mkdir(ROOT, b"d")
    with pytest.raises(NotPermitted):
        ns.do(Link, inode=d, parent=ROOT, name=b"d2")


def test_symlinks_keep_their_target(ns: NS) -> None:
    s = ns.do(Symlink, parent=ROOT, name=b"l", target=b"../some/where", inode=next(ns.ids))[0]
    assert ns.sm.readlink(s) == b"../some/where" and ns.sm.getattr(s).size == 13
    with pytest.raises(NameTooLong):
        ns.do(Symlink, parent=ROOT, name=b"l2", target=b"x" * 4096, inode=next(ns.ids))


def test_rename_within_and_across_directories(ns: NS) -> None:
    a, b = ns.mkdir(ROOT, b"a"), ns.mkdir(ROOT, b"b")
    f = ns.create(a, b"f")
    ns.do(Rename, parent=a, name=b"f", new_parent=a, new_name=b"g")
    assert ns.names(a) == [b"g"]
    ns.do(Rename, parent=a, name=b"g", new_parent=b, new_name=b"h")
    assert ns.names(a) == [] and ns.sm.lookup(b, b"h")[0] == f
    sub = ns.mkdir(a, b"sub")
    ns.do(Rename, parent=a, name=b"sub", new_parent=b, new_name=b"sub")
    assert ns.sm.getattr(a).nlink == 2 and ns.sm.getattr(b).nlink == 3 and ns.sm.getattr(sub).parent == b


def test_rename_over_an_existing_file_replaces_it(ns: NS) -> None:
    src = ns.create(ROOT, b"src")
    dst = ns.create(ROOT, b"dst")
    ns.do(Rename, parent=ROOT, name=b"src", new_parent=ROOT, new_name=b"dst")
    assert ns.names(ROOT) == [b"dst"] and ns.sm.lookup(ROOT, b"dst")[0] == src
    with pytest.raises(NotFound):
        ns.sm.getattr(dst)


def test_rename_over_an_existing_directory_needs_it_empty_and_of_the_same_kind(ns: NS) -> None:
    d1, d2 = ns.mkdir(ROOT, b"d1"), ns.mkdir(ROOT, b"d2")
    f = ns.create(ROOT, b"f")
    ns.create(d2, b"inside")
    with pytest.raises(NotEmpty):
        ns.do(Rename, parent=ROOT, name=b"d1", new_parent=ROOT, new_name=b"d2")
    with pytest.raises(IsDir):
        ns.do(Rename, parent=ROOT, name=b"f", new_parent=ROOT, new_name=b"d1")
    with pytest.raises(NotDir):
        ns.do(Rename, parent=ROOT, name=b"d1", new_parent=ROOT, new_name=b"f")
    d3 = ns.mkdir(ROOT, b"d3")
    ns.do(Rename, parent=ROOT, name=b"d1", new_parent=ROOT, new_name=b"d3")
    assert ns.sm.lookup(ROOT, b"d3")[0] == d1 and ns.sm.getattr(ROOT).nlink == 2 + 2
    with pytest.raises(NotFound):
        ns.sm.getattr(d3)
    assert f


def test_a_directory_cannot_move_into_its_own_subtree(ns: NS) -> None:
    a = ns.mkdir(ROOT, b"a")
    b = ns.mkdir(a, b"b")
    c = ns.mkdir(b, b"c")
    for target in (a, b, c):
        with pytest.raises(InvalidArgument, match="own subtree"):
            ns.do(Rename, parent=ROOT, name=b"a", new_parent=target, new_name=b"x")


def test_rename_noreplace_and_exchange(ns: NS) -> None:
    a, b = ns.create(ROOT, b"a"), ns.mkdir(ROOT, b"b")
    with pytest.raises(Exists):
        ns.do(Rename, parent=ROOT, name=b"a", new_parent=ROOT, new_name=b"b", flags=RENAME_NOREPLACE)
    ns.do(Rename, parent=ROOT, name=b"a", new_parent=ROOT, new_name=b"c", flags=RENAME_NOREPLACE)
    sub = ns.mkdir(b, b"sub")
    ns.do(Rename, parent=ROOT, name=b"c", new_parent=b, new_name=b"sub", flags=RENAME_EXCHANGE)
    assert ns.sm.lookup(ROOT, b"c")[0] == sub and ns.sm.lookup(b, b"sub")[0] == a
    assert ns.sm.getattr(sub).parent == ROOT
    with pytest.raises(NotFound):
        ns.do(Rename, parent=ROOT, name=b"c", new_parent=ROOT, new_name=b"zz", flags=RENAME_EXCHANGE)
    with pytest.raises(InvalidArgument):
        ns.do(Rename, parent=ROOT, name=b"c", new_parent=ROOT, new_name=b"b", flags=3)


def test_renaming_a_hard_link_onto_itself_does_nothing(ns: NS) -> None:
    f = ns.create(ROOT, b"a")
    ns.do(Link, inode=f, parent=ROOT, name=b"b")
    ns.do(Rename, parent=ROOT, name=b"a", new_parent=ROOT, new_name=b"b")
    assert ns.names(ROOT) == [b"a", b"b"] and ns.sm.getattr(f).nlink == 2


def test_the_sticky_bit_lets_only_owners_delete_or_rename(ns: NS) -> None:
    tmp = ns.mkdir(ROOT, b"tmp", mode=0o777 | S_ISVTX)
    ns.create(tmp, b"alices", uid=1000, gid=1000)
    with pytest.raises(NotPermitted, match="sticky"):
        ns.do(Unlink, parent=tmp, name=b"alices", uid=2000, gid=2000)
    with pytest.raises(NotPermitted, match="sticky"):
        ns.do(Rename, parent=tmp, name=b"alices", new_parent=tmp, new_name=b"mine", uid=2000, gid=2000)
    ns.do(Rename, parent=tmp, name=b"alices", new_parent=tmp, new_name=b"hers", uid=1000, gid=1000)
    ns.do(Unlink, parent=tmp, name=b"hers", uid=0, gid=0)


def test_setgid_directories_pass_their_group_on(ns: NS) -> None:
    shared = ns.mkdir(ROOT, b"shared", mode=0o2775, uid=0, gid=50)
    f = ns.create(shared, b"f", uid=1000, gid=1000)
    sub = ns.mkdir(shared, b"sub", uid=1000, gid=1000)
    assert ns.sm.getattr(f).gid == 50 and ns.sm.getattr(sub).gid == 50 and ns.sm.getattr(sub).mode & S_ISGID


def test_setattr_ownership_rules_and_truncate(ns: NS) -> None:
    f = ns.create(ROOT, b"f", mode=0o4755, uid=1000, gid=1000)
    with pytest.raises(NotPermitted):
        ns.do(SetAttr, inode=f, mode=0o600, uid=2000, gid=2000)
    with pytest.raises(NotPermitted):
        ns.do(SetAttr, inode=f, new_uid=2000, uid=1000, gid=1000)
    ns.do(SetAttr, inode=f, new_uid=2000, uid=0, gid=0)
    node = ns.sm.getattr(f)
    assert node.uid == 2000 and not node.mode & 0o4000, "chown clears setuid"
    ns.do(SetAttr, inode=f, size=5 << 30, uid=0, gid=0)
    assert ns.sm.getattr(f).size == 5 << 30
    d = ns.mkdir(ROOT, b"d")
    with pytest.raises(IsDir):
        ns.do(SetAttr, inode=d, size=0)


def test_a_failed_command_leaves_no_trace(ns: NS) -> None:
    before = msgspec.msgpack.encode(sorted(ns.names(ROOT)))
    with pytest.raises(Exists):
        ns.mkdir(ROOT, b"x") and ns.mkdir(ROOT, b"x")
    ns.do(Rmdir, parent=ROOT, name=b"x")
    assert msgspec.msgpack.encode(sorted(ns.names(ROOT))) == before
    # the failed mkdir's inode id was not consumed either: the counter moved once
    with ns.sm.env.begin() as txn:
        assert U64.unpack(txn.get(b"next_inode", db=ns.sm.tables[b"counters"]))[0] == next(ns.ids) - 1


def test_extended_attributes_set_replace_list_and_remove(ns: NS) -> None:
    from vstore.errors import NoAttribute, RangeError
    from vstore.metadata.fsm.namespace import XATTR_CREATE, XATTR_REPLACE, RemoveXattr, SetXattr
    f = ns.create(ROOT, b"f")
    ns.do(SetXattr, inode=f, name=b"user.b", value=b"2")
    ns.do(SetXattr, inode=f, name=b"user.a", value=b"1", flags=XATTR_CREATE)
    with pytest.raises(Exists):
        ns.do(SetXattr, inode=f, name=b"user.a", value=b"x", flags=XATTR_CREATE)
    with pytest.raises(NoAttribute):
        ns.do(SetXattr, inode=f, name=b"user.c", value=b"x", flags=XATTR_REPLACE)
    ns.do(SetXattr, inode=f, name=b"user.a", value=b"one", flags=XATTR_REPLACE)
    assert ns.sm.listxattr(f) == [b"user.a", b"user.b"] and ns.sm.getxattr(f, b"user.a") == b"one"
    with pytest.raises(RangeError):
        ns.do(SetXattr, inode=f, name=b"user.big", value=b"x" * 65537)
    ns.do(RemoveXattr, inode=f, name=b"user.a")
    with pytest.raises(NoAttribute):
        ns.sm.getxattr(f, b"user.a")
    with pytest.raises(NoAttribute):
        ns.do(RemoveXattr, inode=f, name=b"user.a")
    ns.do(Unlink, parent=ROOT, name=b"f")  # attributes go with the inode
    with ns.sm.env.begin() as txn:
        assert txn.cursor(db=ns.sm.tables[b"xattrs"]).first() is False


def test_replicas_applying_the_same_log_have_equal_state_hashes_and_a_divergence_shows(tmp_path: Path) -> None:
    from vstore.metadata.fsm.namespace import Mkdir
    a, b = NS(tmp_path / "a"), NS(tmp_path / "b")
    try:
        for ns_ in (a, b):
            d = ns_.mkdir(ROOT, b"d")
            ns_.create(d, b"f")
            with pytest.raises(Exists):  # a failed command changes nothing, hash included
                ns_.create(d, b"f")
        assert a.sm.state_hash() == b.sm.state_hash() != (0, 0)
        a.do(Mkdir, parent=ROOT, name=b"only-a", mode=0o755, inode=900)
        b.do(Mkdir, parent=ROOT, name=b"only-b", mode=0o755, inode=900)
        assert a.sm.state_hash()[0] == b.sm.state_hash()[0] and a.sm.state_hash() != b.sm.state_hash()
        expected = a.sm.state_hash()
        a.sm.close()
        a.sm = NamespaceStateMachine(tmp_path / "a", map_size_bytes=1 << 26)
        assert a.sm.state_hash() == expected  # durable with the applied index
    finally:
        a.sm.close()
        b.sm.close()


def test_an_open_file_outlives_its_last_name_until_the_last_release(ns: NS) -> None:
    from vstore.metadata.fsm.namespace import Open, Release
    f = ns.create(ROOT, b"img")
    ns.do(Open, inode=f, session=b"host-a")
    ns.do(Open, inode=f, session=b"host-a")
    ns.do(Open, inode=f, session=b"host-b")
    ns.do(Unlink, parent=ROOT, name=b"img")
    assert ns.names(ROOT) == [] and ns.sm.getattr(f).nlink == 0  # still readable through the handles
    ns.do(Release, inode=f, session=b"host-a")
    ns.do(Release, inode=f, session=b"host-b")
    assert ns.sm.getattr(f).nlink == 0  # host-a still holds one handle
    ns.do(Release, inode=f, session=b"host-a")
    with pytest.raises(NotFound):
        ns.sm.getattr(f)
    with pytest.raises(InvalidArgument):
        ns.do(Release, inode=f, session=b"host-a")


def test_a_file_created_open_is_held_by_its_session_like_an_open(ns: NS) -> None:
    """Mknod ``open``: open(O_CREAT) in one command; the file outlives its name until released."""
    from vstore.metadata.fsm.namespace import Release
    f = ns.create(ROOT, b"ckpt", open=2, session=b"host-a")
    ns.do(Unlink, parent=ROOT, name=b"ckpt")
    assert ns.sm.getattr(f).nlink == 0, "held open by host-a"
    ns.do(Release, inode=f, session=b"host-a", write=True)
    with pytest.raises(NotFound):
        ns.sm.getattr(f)
    with pytest.raises(InvalidArgument):
        ns.create(ROOT, b"nobody", open=1)   # no session
    with pytest.raises(InvalidArgument):
        ns.do(Mknod, parent=ROOT, name=b"fifo", kind=Kind.FIFO, mode=0o644, inode=9999, open=1, session=b"h")
    assert ns.names(ROOT) == []


def test_an_expired_session_releases_its_files_and_orphans_are_collected(ns: NS) -> None:
    from vstore.metadata.fsm.namespace import ExpireSession, Open
    kept, orphan = ns.create(ROOT, b"kept"), ns.create(ROOT, b"orphan")
    target = ns.create(ROOT, b"target")
    for inode in (kept, orphan, target):
        ns.do(Open, inode=inode, session=b"dead-host")
    ns.do(Unlink, parent=ROOT, name=b"orphan")
    ns.do(Rename, parent=ROOT, name=b"kept", new_parent=ROOT, new_name=b"target")  # replaces an open file
    assert ns.sm.getattr(target).nlink == 0
    assert ns.do(ExpireSession, session=b"dead-host") == 3
    for gone in (orphan, target):
        with pytest.raises(NotFound):
            ns.sm.getattr(gone)
    assert ns.sm.lookup(ROOT, b"target")[0] == kept and ns.sm.getattr(kept).nlink == 1
    with ns.sm.env.begin() as txn:
        assert txn.cursor(db=ns.sm.tables[b"orphans"]).first() is False
        assert txn.cursor(db=ns.sm.tables[b"opens"]).first() is False


def test_replication_policies_default_to_3_2_and_are_inherited_at_creation(ns: NS) -> None:
    from vstore.metadata.fsm.namespace import SetPolicy
    d = ns.mkdir(ROOT, b"vm-disks")
    assert ns.sm.getattr(d).policy == "3:2"
    assert list(ns.do(SetPolicy, inode=d, policy="2")) == ["2:1", False]
    f = ns.create(d, b"disk.img")
    sub = ns.mkdir(d, b"sub")
    assert ns.sm.getattr(f).policy == "2:1" and ns.sm.getattr(sub).policy == "2:1"
    ns.do(Rename, parent=d, name=b"disk.img", new_parent=ROOT, new_name=b"disk.img")
    assert ns.sm.getattr(f).policy == "2:1"  # moving keeps the file's own policy
    with pytest.raises(InvalidArgument, match="replicas="):
        ns.do(SetPolicy, inode=d, policy="3:5")
    with pytest.raises(NotPermitted):
        ns.do(SetPolicy, inode=d, policy="3:2", uid=1234, gid=1234)


def test_the_exclusive_writer_lease_admits_one_writing_session_and_moves_on_release_or_expiry(ns: NS) -> None:
    from vstore.errors import FileBusy
    from vstore.metadata.fsm.namespace import ExpireSession, Open, Release, SetPolicy
    images = ns.mkdir(ROOT, b"images")
    assert list(ns.do(SetPolicy, inode=images, exclusive_write=True)) == ["3:2", True]
    disk = ns.create(images, b"ct1.img")
    plain = ns.create(ROOT, b"plain")
    assert ns.sm.getattr(disk).flags and not ns.sm.getattr(plain).flags  # inherited at creation only

    ns.do(Open, inode=disk, session=b"host-a", write=True)
    ns.do(Open, inode=disk, session=b"host-a", write=True)  # the same client may open it again
    ns.do(Open, inode=disk, session=b"host-b")              # readers are welcome
    with pytest.raises(FileBusy, match="exclusive-writer lease"):
        ns.do(Open, inode=disk, session=b"host-b", write=True)
    ns.do(Open, inode=plain, session=b"host-a", write=True)
    ns.do(Open, inode=plain, session=b"host-b", write=True)  # no lease on an unmarked file

    ns.do(Release, inode=disk, session=b"host-a", write=True)
    with pytest.raises(FileBusy):  # one write handle left on host a
        ns.do(Open, inode=disk, session=b"host-b", write=True)
    ns.do(Release, inode=disk, session=b"host-a", write=True)
    ns.do(Open, inode=disk, session=b"host-b", write=True)  # the lease moved: live migration
    with pytest.raises(FileBusy):
        ns.do(Open, inode=disk, session=b"host-a", write=True)
    ns.do(ExpireSession, session=b"host-b")                  # host b died
    ns.do(Open, inode=disk, session=b"host-a", write=True)
    ns.do(SetPolicy, inode=disk, exclusive_write=False)
    ns.do(Open, inode=disk, session=b"host-c", write=True)


def test_readdir_pages_through_100k_entries_of_one_directory_in_name_order(ns: NS) -> None:
    from vstore.metadata.fsm.namespace import Mkdir, encode_command
    from vstore.metadata.raft.statemachine import encode_proposal
    from vstore.wire.raft import Entry
    ns.do(Mkdir, parent=ROOT, name=b"big", mode=0o755, inode=next(ns.ids))
    big = ns.sm.lookup(ROOT, b"big")[0]
    names = [f"{i:06d}".encode() for i in range(100_000)]
    for start in range(0, len(names), 10_000):  # one transaction per 10k creates, as Raft batches them
        entries = []
        for name in names[start:start + 10_000]:
            ns.index += 1
            op = Mknod(uid=0, gid=0, now_ns=next(ns.clock), parent=big, name=name, kind=Kind.FILE, mode=0o644,
                       inode=next(ns.ids))
            entries.append(Entry.make(ns.index, 1, encode_proposal("", 0, encode_command(op))))
        assert all(r[0] == "ok" for r in ns.sm.apply(entries, {}))
    seen, after = [], b""
    while True:
        page = ns.sm.readdir(big, after, 1000)
        if not page:
            break
        seen.extend(name for name, _ in page)
        after = page[-1][0]
    assert seen == names
    assert ns.sm.getattr(big).mtime_ns > 0
