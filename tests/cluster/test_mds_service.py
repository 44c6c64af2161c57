"""The metadata service's client RPCs end to end: MdsLink -> real sockets -> MdsServer ->
Raft -> the namespace state machine, on in-process clusters (one MDS, or three).

Each test checks what a POSIX caller sees (typed errors, attributes, directory listings)
and, on the three-MDS cluster, that every replica ends with the same state hash.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.harness.mdsprocs import MdsInProcCluster
from tests.harness.wait import wait_for
from vstore.errors import (Exists, InvalidArgument, IsDir, NoSpace, NotEmpty, NotFound, NotLeader, NotPermitted,
                           StaleHandle)
from vstore.metadata.fsm.schema import ROOT_INODE
from vstore.wire import mds as w

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def one(tmp_path: Path):
    async with MdsInProcCluster(tmp_path, ("m1",), session_expire_s=2).serving() as cluster:
        yield cluster


@pytest.fixture
async def three(tmp_path: Path):
    async with MdsInProcCluster(tmp_path).serving() as cluster:
        yield cluster


async def test_files_directories_and_links_behave_as_posix_says(one: MdsInProcCluster) -> None:
    link = await one.link()
    d = await link.mkdir(ROOT_INODE, b"dir", 0o750, uid=1000, gid=1000)
    assert d.mode == 0o040750 and d.uid == 1000 and d.nlink == 2
    f = await link.create(d.inode, b"file", 0o640, uid=1000, gid=1000)
    assert f.mode == 0o100640 and f.size == 0 and f.policy == "3:2"
    assert (await link.lookup(d.inode, b"file")).inode == f.inode
    with pytest.raises(Exists):
        await link.create(d.inode, b"file")
    with pytest.raises(NotFound):
        await link.lookup(d.inode, b"nope")
    hard = await link.mutate(lambda lane, seq: w.LinkRequest(uid=0, gid=0, lane=lane, seq=seq, inode=f.inode,
                                                             parent=ROOT_INODE, name=b"hard"))
    assert isinstance(hard, w.AttrReply) and hard.attr.nlink == 2
    sym = await link.mutate(lambda lane, seq: w.SymlinkRequest(uid=0, gid=0, lane=lane, seq=seq, parent=ROOT_INODE,
                                                               name=b"sym", target=b"dir/file"))
    assert isinstance(sym, w.AttrReply)
    target = await link.call(w.ReadlinkRequest(uid=0, gid=0, inode=sym.attr.inode))
    assert isinstance(target, w.ReadlinkReply) and target.target == b"dir/file"
    with pytest.raises(NotEmpty):
        await link.rmdir(ROOT_INODE, b"dir")
    with pytest.raises(IsDir):
        await link.unlink(ROOT_INODE, b"dir")
    await link.unlink(d.inode, b"file")
    assert (await link.getattr(f.inode)).nlink == 1
    await link.rmdir(ROOT_INODE, b"dir")
    names = [e.name for e in await link.readdir(ROOT_INODE)]
    assert names == [b"hard", b"sym"]


async def test_setattr_changes_mode_owner_size_and_times(one: MdsInProcCluster) -> None:
    link = await one.link()
    f = await link.create(ROOT_INODE, b"f", 0o644, uid=1000, gid=1000)

    async def setattr(**kw: object) -> w.Attr:
        uid = int(kw.pop("as_uid", 0))  # type: ignore[call-overload]
        reply = await link.mutate(lambda lane, seq: w.SetattrRequest(uid=uid, gid=uid, lane=lane, seq=seq,
                                                                     inode=f.inode, **kw))  # type: ignore[arg-type]
        assert isinstance(reply, w.AttrReply)
        return reply.attr

    assert (await setattr(mode=0o600, as_uid=1000)).mode == 0o100600
    with pytest.raises(NotPermitted):
        await setattr(new_uid=0, as_uid=1000)
    assert (await setattr(size=12345)).size == 12345
    changed = await setattr(atime_ns=1_000_000_000, mtime_now=True)
    assert changed.atime_ns == 1_000_000_000 and changed.mtime_ns > f.mtime_ns
    assert (await link.getattr(f.inode)).size == 12345


async def test_rename_flags_exchange_and_noreplace(one: MdsInProcCluster) -> None:
    link = await one.link()
    a = await link.create(ROOT_INODE, b"a")
    b = await link.mkdir(ROOT_INODE, b"b")
    with pytest.raises(Exists):
        await link.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", flags=1)
    await link.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", flags=2)
    assert (await link.lookup(ROOT_INODE, b"b")).inode == a.inode
    assert (await link.lookup(ROOT_INODE, b"a")).inode == b.inode
    with pytest.raises(InvalidArgument):
        await link.rename(ROOT_INODE, b"a", b.inode, b"inside-itself")


async def test_readdir_pages_through_a_large_directory_in_name_order(one: MdsInProcCluster) -> None:
    link = await one.link()
    d = await link.mkdir(ROOT_INODE, b"big")
    names = [f"n{i:05d}".encode() for i in range(2500)]
    for chunk in range(0, len(names), 100):
        await asyncio.gather(*(link.create(d.inode, n) for n in names[chunk:chunk + 100]))
    entries = await link.readdir(d.inode, page=1000)
    assert [e.name for e in entries] == sorted(names)
    assert all(e.attr.mode & 0o170000 == 0o100000 for e in entries)


async def test_xattrs_and_replication_policies(one: MdsInProcCluster) -> None:
    link = await one.link()
    d = await link.mkdir(ROOT_INODE, b"images")
    await link.mutate(lambda lane, seq: w.SetxattrRequest(uid=0, gid=0, lane=lane, seq=seq, inode=d.inode,
                                                          name=b"user.k", value=b"v"))
    got = await link.call(w.GetxattrRequest(uid=0, gid=0, inode=d.inode, name=b"user.k"))
    assert isinstance(got, w.XattrReply) and got.value == b"v"
    listed = await link.call(w.ListxattrRequest(uid=0, gid=0, inode=d.inode))
    assert isinstance(listed, w.XattrListReply) and listed.names == (b"user.k",)
    policy = await link.mutate(lambda lane, seq: w.SetPolicyRequest(uid=0, gid=0, lane=lane, seq=seq,
                                                                    inode=d.inode, policy="2:1"))
    assert isinstance(policy, w.PolicyReply) and policy.policy == "2:1"
    f = await link.create(d.inode, b"disk.img")
    assert f.policy == "2:1"
    with pytest.raises(InvalidArgument):
        await link.mutate(lambda lane, seq: w.SetPolicyRequest(uid=0, gid=0, lane=lane, seq=seq, inode=d.inode,
                                                               policy="1:3"))


async def test_an_open_unlinked_file_lives_until_release_or_session_expiry(one: MdsInProcCluster) -> None:
    writer = await one.link()
    f = await writer.create(ROOT_INODE, b"f")
    await writer.mutate(lambda lane, seq: w.OpenRequest(uid=0, gid=0, lane=lane, seq=seq, inode=f.inode))
    await writer.unlink(ROOT_INODE, b"f")
    assert (await writer.getattr(f.inode)).nlink == 0
    await writer.mutate(lambda lane, seq: w.ReleaseRequest(uid=0, gid=0, lane=lane, seq=seq, inode=f.inode))
    with pytest.raises(NotFound):
        await writer.getattr(f.inode)
    # a client that dies: its session expires (2 s in this cluster) and its open file goes
    dying = await one.link()
    g = await dying.create(ROOT_INODE, b"g")
    await dying.mutate(lambda lane, seq: w.OpenRequest(uid=0, gid=0, lane=lane, seq=seq, inode=g.inode))
    await dying.unlink(ROOT_INODE, b"g")
    await dying.close(expire_session=False)
    one.links.remove(dying)

    async def gone() -> bool:
        try:
            await writer.getattr(g.inode)
        except NotFound:
            return True
        return False
    await wait_for(gone, timeout_s=20, what="the dead client's orphan collected")


async def test_a_retried_mutation_is_applied_once_and_answered_the_same(one: MdsInProcCluster) -> None:
    link = await one.link()
    request = w.MknodRequest(uid=0, gid=0, lane=f"{link.session.hex()}/999", seq=1, parent=ROOT_INODE, name=b"once",
                             kind=1, mode=0o644)
    first = await link.call(request)
    again = await link.call(request)
    assert first == again
    assert [e.name for e in await link.readdir(ROOT_INODE)] == [b"once"]


async def test_a_session_cut_off_past_its_expiry_learns_whether_its_last_mutations_were_applied(
        one: MdsInProcCluster) -> None:
    """A client cut off while a mutation was in flight (applied, reply lost) comes back after
    the MDS expired its session: the retry gets the stored answer, not a refusal that the
    kernel would retry into EEXIST (RELIABILITY F4); anything new is refused with ESTALE."""
    link = await one.link()
    cut_off = "5e551090cafe0001"   # a session nothing keeps alive: it expires 2 s after this call
    created = w.MknodRequest(uid=0, gid=0, lane=f"{cut_off}/1", seq=1, parent=ROOT_INODE, name=b"late", kind=1,
                             mode=0o644)
    first = await link.call(created)

    service = one.server("m1").service
    await wait_for(lambda: service.sm.session_expired(bytes.fromhex(cut_off)), timeout_s=20,
                   what="the silent session expired")
    with pytest.raises(StaleHandle):
        await link.call(w.SessionKeepaliveRequest(session=bytes.fromhex(cut_off)))
    assert await link.call(created) == first, "the retry after the expiry is answered from the lane's record"
    for lane, seq, name in ((f"{cut_off}/1", 2, b"next"), (f"{cut_off}/2", 1, b"other")):
        with pytest.raises(StaleHandle):
            await link.call(w.MknodRequest(uid=0, gid=0, lane=lane, seq=seq, parent=ROOT_INODE, name=name, kind=1,
                                           mode=0o644))
    assert [e.name for e in await link.readdir(ROOT_INODE)] == [b"late"]


async def test_a_link_whose_session_was_expired_is_fenced_reads_included_until_a_new_session(
        one: MdsInProcCluster, expect_log) -> None:
    """After the MDS refused this link's session as expired, every call fails with the same
    StaleHandle, a lookup of a name that exists included: the kernel's ESTALE retry of a
    create would otherwise find the file its refused create made and say EEXIST (F4)."""
    expect_log("client.session_fenced")
    link = await one.link()
    await link.create(ROOT_INODE, b"before")
    assert link._keepalive_task is not None
    link._keepalive_task.cancel()   # the link goes silent, as a client cut off from the MDS does
    service = one.server("m1").service
    await wait_for(lambda: service.sm.session_expired(link.session), timeout_s=20, what="the silent session expired")
    with pytest.raises(StaleHandle):
        await link.create(ROOT_INODE, b"after")
    assert link.fenced is not None
    reads = service.stats["reads"]
    with pytest.raises(StaleHandle) as info:
        await link.lookup(ROOT_INODE, b"before")
    assert link.session.hex() in info.value.message
    assert service.stats["reads"] == reads, "a fenced link does not ask the MDS"
    fresh = await one.link()
    assert (await fresh.lookup(ROOT_INODE, b"before")).inode > ROOT_INODE
    assert [e.name for e in await fresh.readdir(ROOT_INODE)] == [b"before"]
    await link.close()   # no SessionClose is sent for a fenced session


async def test_followers_redirect_to_the_leader_and_replicas_agree(three: MdsInProcCluster) -> None:
    leader = await three.leader()
    follower = next(n for n in three.ids if n != leader)
    link = await three.link()
    raw = link._client(three.address(follower))
    with pytest.raises(NotLeader) as info:
        await raw.call(w.GetattrRequest(uid=0, gid=0, inode=ROOT_INODE))
    assert info.value.leader == three.address(leader)
    for n in range(20):
        await link.create(ROOT_INODE, f"f{n}".encode())
    await three.converged()


async def test_a_new_leader_serves_after_the_old_one_stops(three: MdsInProcCluster) -> None:
    link = await three.link()
    await link.mkdir(ROOT_INODE, b"before")
    old = await three.leader()
    assert await three.stop(old) == 0
    await link.mkdir(ROOT_INODE, b"after")
    names = [e.name for e in await link.readdir(ROOT_INODE)]
    assert names == [b"after", b"before"]
    three.start(old)
    await three.converged()


async def test_a_full_metadata_store_refuses_growth_with_no_space_but_still_removes(tmp_path: Path) -> None:
    """RELIABILITY.md F10: a full LMDB map must not stop the replicas (an entry that cannot
    be applied would): mutations that grow the state are refused before they are proposed."""
    cluster = MdsInProcCluster(tmp_path, ("m1",), mds_extra={"lmdb_map_bytes": 16 << 20})
    cluster.start_all()
    try:
        link = await cluster.link()
        f = await link.create(ROOT_INODE, b"f")
        value = b"x" * 65536
        with pytest.raises(NoSpace):
            for n in range(1000):
                await link.mutate(lambda lane, seq, n=n: w.SetxattrRequest(
                    uid=0, gid=0, lane=lane, seq=seq, inode=f.inode, name=f"user.{n}".encode(), value=value))
        assert n > 100, "refused only when nearly full"
        with pytest.raises(NoSpace):
            await link.create(ROOT_INODE, b"g")
        await link.unlink(ROOT_INODE, b"f")  # removals still work
        assert [e.name for e in await link.readdir(ROOT_INODE)] == []  # reads too
        assert cluster.running() == ["m1"], "the MDS did not stop"
    finally:
        await cluster.close()
