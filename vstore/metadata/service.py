"""The metadata service: client RPCs on top of the Raft node and the namespace state machine.

What it owns: turning client requests (vstore/wire/mds.py) into state machine commands,
choosing everything that must be deterministic (inode and chunk ids, timestamps) on the
leader, proposing them through Raft, and answering reads linearizably; client sessions and
their expiry. What it must not do: apply anything itself (only the state machine changes
state, from the log) or touch the Raft core (only through RaftNode's API).

Leadership. Only the leader serves; any other MDS answers NotLeader with the leader's
address, and the client goes there. A node that has just won an election serves only once
its first read barrier has completed: the barrier waits for the term's no-op to commit and
be applied, so every entry of earlier terms is in the state machine before the leader
reads the id counters from it. From then on the leader allocates ids from memory, strictly
above the counters and above everything it has proposed in this term; proposals enter the
log in the order they were built (no ``await`` between building a command and handing it
to the node), so each id applies above the previous one.

Exactly once. A mutation travels with its lane and sequence number; the state machine's
session table answers a retry with the stored reply (vstore/metadata/raft/statemachine.py).
A retry may reach a new leader, which builds a new command with new ids: if the first
attempt was applied, the stored reply (with the first ids) wins and the new command is not
applied; if it was lost, the new one applies. Either way the client sees one outcome.

Reads. ``lookup``, ``getattr``, ``readdir`` and the other reads run a read barrier first
(read-index: the leader confirms with a quorum that it still leads, then waits until its
state machine has applied everything committed before the read arrived), then read the
local LMDB. Concurrent reads share barriers (``_Barriers``): a read joins the next round to
start, never one that started before it arrived, so each read is still linearizable.

Sessions. A client keeps its session alive with SessionKeepalive; the leader keeps the
last time it heard each session in memory, and proposes ExpireSession for one it has not
heard from within ``session_expire_s``: the session's open files are released (orphans
collected) and the session is fenced off by a tombstone. A mutation of a fenced session is
answered from its lane's record if it is the retry of the lane's last command (it was
applied: the truth, however late the retry), and refused with STALE_HANDLE otherwise (it
was not applied and never will be: the state machine refuses it too, so one that raced the
expiry into the log is refused there). A new leader grants every session it knows of from the
state a full expiry period from the moment it took over (it cannot know when the old
leader last heard them).

Concurrency: every handler runs on the event loop; the only ``await``s are the barrier and
the proposal, and the allocator state is touched only between them, synchronously.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from vstore.errors import Exists, NoChunkservers, NoSpace, NotFound, StaleHandle, VStoreError, error_class
from vstore.metadata.fsm import namespace as ns
from vstore.metadata.fsm.schema import FLAG_EXCLUSIVE_WRITE, ROOT_INODE, U64, Chunk, Inode, chunk_decoder, inode_decoder
from vstore.metadata.placement import CsStatus, ReplicaPolicy, place_replicas
from vstore.metadata.raft.node import RaftNode
from vstore.metadata.raft.statemachine import encode_proposal
from vstore.net import Router
from vstore.net.rpc import RequestContext
from vstore.wire import ErrorCode, Message
from vstore.wire import mds as w
from vstore.wire.capability import issue_capability

if TYPE_CHECKING:
    from vstore.metadata.chunkservers import ChunkserverManager

log = logging.getLogger(__name__)

_CLIENT = frozenset({"client", "mds"})

#: Above this fill of the state machine's LMDB map, mutations that can grow the state are
#: refused with NO_SPACE (etcd's NOSPACE alarm): a committed entry that cannot be applied
#: would stop every replica, so the check must come before the proposal. The rest of the
#: map is headroom for entries already in flight and for the removals that are still
#: allowed (unlink, rmdir, release, removexattr, session expiry).
STATE_FULL_RATIO = 0.90


def attr_of(inode: int, node: Inode) -> w.Attr:
    return w.Attr(inode=inode, mode=node.st_mode, uid=node.uid, gid=node.gid, nlink=node.nlink, size=node.size,
                  atime_ns=node.atime_ns, mtime_ns=node.mtime_ns, ctime_ns=node.ctime_ns, rdev=node.rdev,
                  policy=node.policy, exclusive_write=bool(node.flags & FLAG_EXCLUSIVE_WRITE))


def unwrap(result: Any) -> Any:
    """A state machine reply: ``("ok", value)`` gives the value, ``("err", code, message)``
    raises the typed error. (A reply replayed from the session table arrives as a list.)"""
    if isinstance(result, (tuple, list)) and result and result[0] == "ok":
        return result[1]
    if isinstance(result, (tuple, list)) and len(result) == 3 and result[0] == "err":
        raise error_class(ErrorCode(result[1]))(str(result[2]))
    raise VStoreError(f"unexpected state machine reply {result!r:.200}")


def _attr_result(value: Any) -> w.AttrReply:
    inode, raw = value
    return w.AttrReply(attr=attr_of(int(inode), inode_decoder.decode(raw)))


def session_of_lane(lane: str) -> bytes:
    return bytes.fromhex(lane.split("/", 1)[0])


class _Barriers:
    """Read barriers shared by concurrent reads. At most one round is in flight; reads that
    arrive while it runs wait for the next round, which starts when it ends (a round that
    started before a read arrived cannot serve it: it might predate a write the reader saw)."""

    def __init__(self, node: RaftNode) -> None:
        self.node = node
        self._running: asyncio.Future[int] | None = None
        self._next: asyncio.Future[int] | None = None

    async def wait(self) -> int:
        if self._running is None:
            self._running = self._start()
            return await asyncio.shield(self._running)
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            self._next.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(self._next)

    def _start(self) -> asyncio.Future[int]:
        task = asyncio.ensure_future(self.node.read_barrier())
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Future[int]) -> None:
        self._running = None
        waiting, self._next = self._next, None
        if waiting is None:
            return
        if not self.node.is_leader:
            # the round ended because the leadership did: a new round here would be a read
            # index forwarded to another leader, which may never answer it
            if not waiting.done():
                waiting.set_exception(self.node.not_leader_error())
            return
        self._running = self._start()

        def relay(done: asyncio.Future[int]) -> None:
            if waiting.done():
                return
            if done.cancelled():
                waiting.cancel()
            elif done.exception() is not None:
                waiting.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                waiting.set_result(done.result())

        self._running.add_done_callback(relay)


class MetadataService:
    """The client-facing half of one MDS. ``register(router)``, ``start()``, ``stop()``."""

    def __init__(self, node: RaftNode, sm: ns.NamespaceStateMachine, *, session_expire_s: float = 60.0,
                 capability_key: bytes = b"", capability_ttl_s: int = 600,
                 wall_ns: Callable[[], int] = time.time_ns, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.sm = sm
        self.capability_key = capability_key
        self.capability_ttl_s = capability_ttl_s
        #: set by the process assembly (vstore/metadata/server.py): the chunkserver side
        self.chunkservers: ChunkserverManager | None = None
        self._next_chunk = 1
        self._next_cs = 1
        self.session_expire_s = session_expire_s
        self._wall_ns = wall_ns
        self._monotonic = monotonic
        self._barriers = _Barriers(node)
        self._ready_term = -1
        self._next_inode = 0
        self._last_now_ns = 0
        #: session id -> (monotonic time last heard, host, mount point); leader only
        self.sessions: dict[bytes, tuple[float, str, str]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.stats = {"mutations": 0, "reads": 0, "barriers": 0, "sessions_expired": 0,
                      "fenced_retries_answered": 0}
        self.cluster_name = ""  # the [cluster] name, shown in status replies (set by the server)

    # ---- lifecycle --------------------------------------------------------------------------------

    def register(self, router: Router) -> None:
        routes: dict[type[Message], Callable[..., Any]] = {
            w.LookupRequest: self._lookup, w.GetattrRequest: self._getattr, w.SetattrRequest: self._setattr,
            w.MknodRequest: self._mknod, w.MkdirRequest: self._mkdir, w.SymlinkRequest: self._symlink,
            w.LinkRequest: self._link, w.UnlinkRequest: self._unlink, w.RmdirRequest: self._rmdir,
            w.RenameRequest: self._rename, w.ReadlinkRequest: self._readlink, w.ReaddirRequest: self._readdir,
            w.StatfsRequest: self._statfs, w.GetxattrRequest: self._getxattr, w.SetxattrRequest: self._setxattr,
            w.ListxattrRequest: self._listxattr, w.RemovexattrRequest: self._removexattr,
            w.OpenRequest: self._open, w.ReleaseRequest: self._release, w.GetPolicyRequest: self._get_policy,
            w.SetPolicyRequest: self._set_policy, w.SessionKeepaliveRequest: self._keepalive,
            w.SessionCloseRequest: self._session_close, w.ChunkMapRequest: self._chunk_map,
            w.AllocChunkRequest: self._alloc_chunk, w.WriteDoneRequest: self._write_done,
            w.RepairChainRequest: self._repair_chain,
        }
        for cls, handler in routes.items():
            router.add(cls, handler, roles=_CLIENT)
        router.add(w.MdsStatusRequest, self._status)

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._session_reaper(), name=f"mds-sessions-{self.node.id}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    # ---- leadership and allocation ---------------------------------------------------------------

    async def leader(self) -> None:
        """Return once this node is the leader and has applied every earlier term's entries;
        raise NotLeader (naming the leader) otherwise."""
        node = self.node
        if not node.is_leader:
            raise node.not_leader_error()
        term = node.term
        if self._ready_term == term:
            return
        await self._barrier()
        if not node.is_leader or node.term != term:
            raise node.not_leader_error()
        if self._ready_term != term:
            self._take_over(term)

    @property
    def serving(self) -> bool:
        """Leader, with every earlier term's entries applied (ids may be allocated)."""
        return self.node.is_leader and self._ready_term == self.node.term

    def _take_over(self, term: int) -> None:
        """First request served in a new term: reload the allocators, grant known sessions."""
        self._ready_term = term
        self._next_inode = self._counter(b"next_inode", ROOT_INODE + 1)
        self._next_chunk = self._counter(b"next_chunk", 1)
        self._next_cs = self._counter(b"next_cs", 1)
        now = self._monotonic()
        known = self.sm.session_ids()
        self.sessions = {s: (now, "", "") for s in known}
        log.info("mds.serving", extra={"node": self.node.id, "term": term, "next_inode": self._next_inode,
                                       "sessions": len(known)})

    def _counter(self, name: bytes, default: int) -> int:
        # short read-only LMDB transaction, on the loop on purpose (STYLE.md §9)
        with self.sm.env.begin() as txn:
            raw = txn.get(name, db=self.sm.tables[b"counters"])
        return max(default, U64.unpack(raw)[0]) if raw else default

    def _alloc_inode(self) -> int:
        inode = self._next_inode
        self._next_inode += 1
        return inode

    def alloc_chunk_id(self) -> int:
        chunk_id = self._next_chunk
        self._next_chunk += 1
        return chunk_id

    def alloc_cs_id(self) -> int:
        cs_id = self._next_cs
        self._next_cs += 1
        return cs_id

    async def propose_op(self, build: Callable[[int], ns.Command]) -> Any:
        """Propose a command of the leader's own (no client lane: it must be safe to repeat,
        or be refused harmlessly when repeated). Call after ``leader()``."""
        if not self.serving:
            raise self.node.not_leader_error()
        op = build(self._now_ns())
        return unwrap(await self.node.propose(encode_proposal("", 0, ns.encode_command(op))))

    def _now_ns(self) -> int:
        # never backwards within one leader's term, even if the wall clock steps back
        now = max(self._wall_ns(), self._last_now_ns + 1)
        self._last_now_ns = now
        return now

    async def _barrier(self) -> int:
        self.stats["barriers"] += 1
        return await self._barriers.wait()

    async def _read(self) -> None:
        await self.leader()
        await self._barrier()
        self.stats["reads"] += 1

    def state_fill(self) -> float:
        """How full the state machine's LMDB map is (pages ever used / pages in the map;
        LMDB reuses freed pages but never shrinks its high-water mark, so this only grows
        until the map is enlarged: ``[mds] lmdb_map_bytes`` and a restart)."""
        info = self.sm.env.info()
        return (info["last_pgno"] + 1) * self.sm.env.stat()["psize"] / info["map_size"]

    async def _mutate(self, req: w.MdsMutation, build: Callable[[int], ns.Command], *, grows: bool = True) -> Any:
        """Build the command (``build(now_ns)``, which may allocate ids) and propose it under
        the request's lane and sequence number; returns the state machine's value or raises
        its typed error. ``grows``: the command may need new space (refused when full)."""
        await self.leader()
        if grows and self.state_fill() > STATE_FULL_RATIO:
            raise NoSpace(f"the metadata store of {self.node.id} is {self.state_fill():.0%} full (limit "
                          f"{STATE_FULL_RATIO:.0%}); remove files or raise [mds] lmdb_map_bytes and restart",
                          details={"fill_permille": int(self.state_fill() * 1000)})
        if not self._check_session(session_of_lane(req.lane), refuse=False):
            return await self._fenced_retry(req)
        op = build(self._now_ns())
        # no await between building (allocating) and proposing: log order = allocation order
        result = await self.node.propose(encode_proposal(req.lane, req.seq, ns.encode_command(op)))
        self.stats["mutations"] += 1
        return unwrap(result)

    # ---- sessions ------------------------------------------------------------------------------------

    def _check_session(self, session: bytes, host: str = "", mountpoint: str = "", *, refuse: bool = True) -> bool:
        """Note a live session as heard from now and return True. An expired one is never
        revived: raise StaleHandle (``refuse``) or return False."""
        if self.sm.session_expired(session):  # a request that raced the expiry may have noted it again
            self.sessions.pop(session, None)
            if refuse:
                raise self._expired_error(session)
            return False
        self._note_session(session, host, mountpoint)
        return True

    def _expired_error(self, session: bytes) -> StaleHandle:
        return StaleHandle(f"client session {session.hex()} was expired (silent for more than "
                           f"{self.session_expire_s:g} s, or closed); remount", details={"session_expired": 1})

    async def _fenced_retry(self, req: w.MdsMutation) -> Any:
        """A mutation of an expired session. If it is the retry of the lane's last command,
        that command was applied (before the expiry: the state machine refuses every later
        one), and its stored answer is the truth; anything else was never applied and never
        will be. After a read barrier the local state holds every entry committed before this
        request arrived, and the tombstone keeps the lane record from changing again."""
        await self._barrier()
        record = self.sm.lane_record(req.lane)
        if record is not None and record[0] == req.seq:
            self.stats["fenced_retries_answered"] += 1
            return unwrap(record[1])
        raise self._expired_error(session_of_lane(req.lane))

    def _note_session(self, session: bytes, host: str = "", mountpoint: str = "") -> None:
        old = self.sessions.get(session)
        if old is not None and not host:
            host, mountpoint = old[1], old[2]
        self.sessions[session] = (self._monotonic(), host, mountpoint)

    async def _keepalive(self, ctx: RequestContext, msg: w.SessionKeepaliveRequest, payload: bytes) -> Message:
        await self.leader()
        self._check_session(msg.session, msg.host, msg.mountpoint)
        return w.SessionReply(expire_after_s=int(self.session_expire_s), leader_id=self.node.id,
                              mds=self.node.members())

    async def _session_close(self, ctx: RequestContext, msg: w.SessionCloseRequest, payload: bytes) -> Message:
        await self.leader()
        await self._expire(msg.session, reason="closed", forget_lanes=True)
        return w.DoneReply()

    async def _expire(self, session: bytes, *, reason: str, forget_lanes: bool = False) -> None:
        self.sessions.pop(session, None)
        op = ns.ExpireSession(uid=0, gid=0, now_ns=self._now_ns(), session=session, forget_lanes=forget_lanes)
        released = unwrap(await self.node.propose(encode_proposal("", 0, ns.encode_command(op))))
        self.stats["sessions_expired"] += 1
        log.info("mds.session_expired", extra={"session": session.hex(), "reason": reason, "released": released})

    async def _session_reaper(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.session_expire_s / 4))
            if not self.node.is_leader or self._ready_term != self.node.term:
                continue
            now = self._monotonic()
            for session, (seen, _, _) in list(self.sessions.items()):
                if now - seen > self.session_expire_s:
                    try:
                        await self._expire(session, reason="silent")
                    except VStoreError as exc:  # lost leadership meanwhile: the next leader does it
                        log.info("mds.session_expiry_deferred", extra={"session": session.hex(),
                                                                       "error": exc.message})
                        break

    # ---- namespace mutations -------------------------------------------------------------------------

    async def _mknod(self, ctx: RequestContext, m: w.MknodRequest, payload: bytes) -> Message:
        session = session_of_lane(m.lane) if m.open else b""
        return _attr_result(await self._mutate(m, lambda now: ns.Mknod(
            uid=m.uid, gid=m.gid, now_ns=now, parent=m.parent, name=m.name, kind=m.kind, mode=m.mode,
            inode=self._alloc_inode(), rdev=m.rdev, open=m.open, session=session)))

    async def _mkdir(self, ctx: RequestContext, m: w.MkdirRequest, payload: bytes) -> Message:
        return _attr_result(await self._mutate(m, lambda now: ns.Mkdir(
            uid=m.uid, gid=m.gid, now_ns=now, parent=m.parent, name=m.name, mode=m.mode, inode=self._alloc_inode())))

    async def _symlink(self, ctx: RequestContext, m: w.SymlinkRequest, payload: bytes) -> Message:
        return _attr_result(await self._mutate(m, lambda now: ns.Symlink(
            uid=m.uid, gid=m.gid, now_ns=now, parent=m.parent, name=m.name, target=m.target,
            inode=self._alloc_inode())))

    async def _link(self, ctx: RequestContext, m: w.LinkRequest, payload: bytes) -> Message:
        return _attr_result(await self._mutate(m, lambda now: ns.Link(
            uid=m.uid, gid=m.gid, now_ns=now, inode=m.inode, parent=m.parent, name=m.name)))

    async def _unlink(self, ctx: RequestContext, m: w.UnlinkRequest, payload: bytes) -> Message:
        value = await self._mutate(m, lambda now: ns.Unlink(uid=m.uid, gid=m.gid, now_ns=now, parent=m.parent,
                                                            name=m.name), grows=False)
        return w.DoneReply(value=int(value))

    async def _rmdir(self, ctx: RequestContext, m: w.RmdirRequest, payload: bytes) -> Message:
        value = await self._mutate(m, lambda now: ns.Rmdir(uid=m.uid, gid=m.gid, now_ns=now, parent=m.parent,
                                                           name=m.name), grows=False)
        return w.DoneReply(value=int(value))

    async def _rename(self, ctx: RequestContext, m: w.RenameRequest, payload: bytes) -> Message:
        value = await self._mutate(m, lambda now: ns.Rename(
            uid=m.uid, gid=m.gid, now_ns=now, parent=m.parent, name=m.name, new_parent=m.new_parent,
            new_name=m.new_name, flags=m.flags))
        return w.DoneReply(value=int(value))

    async def _setattr(self, ctx: RequestContext, m: w.SetattrRequest, payload: bytes) -> Message:
        def build(now: int) -> ns.Command:
            return ns.SetAttr(uid=m.uid, gid=m.gid, now_ns=now, inode=m.inode, mode=m.mode, new_uid=m.new_uid,
                              new_gid=m.new_gid, size=m.size, atime_ns=now if m.atime_now else m.atime_ns,
                              mtime_ns=now if m.mtime_now else m.mtime_ns)
        old_size = self.sm.getattr(m.inode).size if m.size is not None else 0
        reply = _attr_result(await self._mutate(m, build))
        if m.size is not None and m.size < old_size and self.chunkservers is not None:
            await self._truncate_chunk(m.inode, m.size)
        return reply

    async def _truncate_chunk(self, inode: int, size: int) -> None:
        """The chunk that holds the new end of a shrunk file got a new version and length in
        the state: cut its replicas to that length and bump them (MooseFS truncates the
        same way, before answering). Chunks wholly past the end went to the doomed queue."""
        chunk_bytes = self.sm.chunk_bytes()
        if size % chunk_bytes == 0:
            return
        found = self.sm.chunk_map(inode, size // chunk_bytes, 1)
        if not found:
            return
        _, chunk_id, chunk = found[0]
        manager = self._manager()
        await manager.carry_bump(chunk_id, chunk.replicas, chunk.version - 1, chunk.version,
                                 truncate_to=chunk.length_bytes, reason="missed the truncate")

    async def _setxattr(self, ctx: RequestContext, m: w.SetxattrRequest, payload: bytes) -> Message:
        await self._mutate(m, lambda now: ns.SetXattr(uid=m.uid, gid=m.gid, now_ns=now, inode=m.inode, name=m.name,
                                                      value=m.value, flags=m.flags))
        return w.DoneReply()

    async def _removexattr(self, ctx: RequestContext, m: w.RemovexattrRequest, payload: bytes) -> Message:
        await self._mutate(m, lambda now: ns.RemoveXattr(uid=m.uid, gid=m.gid, now_ns=now, inode=m.inode,
                                                         name=m.name), grows=False)
        return w.DoneReply()

    async def _open(self, ctx: RequestContext, m: w.OpenRequest, payload: bytes) -> Message:
        session = session_of_lane(m.lane)
        return _attr_result(await self._mutate(m, lambda now: ns.Open(uid=m.uid, gid=m.gid, now_ns=now,
                                                                      inode=m.inode, session=session,
                                                                      write=m.write)))

    async def _release(self, ctx: RequestContext, m: w.ReleaseRequest, payload: bytes) -> Message:
        session = session_of_lane(m.lane)
        await self._mutate(m, lambda now: ns.Release(uid=m.uid, gid=m.gid, now_ns=now, inode=m.inode,
                                                     session=session, write=m.write), grows=False)
        if m.write and self.chunkservers is not None and not self.sm.write_opens(m.inode):
            # the last writer closed (after its flush and WriteDone): its chunks may be
            # repaired now, not only when the write leases run out
            self.chunkservers.release_leases_of(m.inode)
        return w.DoneReply()

    async def _set_policy(self, ctx: RequestContext, m: w.SetPolicyRequest, payload: bytes) -> Message:
        policy, exclusive = await self._mutate(m, lambda now: ns.SetPolicy(
            uid=m.uid, gid=m.gid, now_ns=now, inode=m.inode, policy=m.policy, exclusive_write=m.exclusive_write))
        return w.PolicyReply(policy=str(policy), exclusive_write=bool(exclusive))

    # ---- reads ---------------------------------------------------------------------------------------

    async def _lookup(self, ctx: RequestContext, m: w.LookupRequest, payload: bytes) -> Message:
        await self._read()
        child, node = self.sm.lookup(m.parent, m.name)
        return w.AttrReply(attr=attr_of(child, node))

    async def _getattr(self, ctx: RequestContext, m: w.GetattrRequest, payload: bytes) -> Message:
        await self._read()
        return w.AttrReply(attr=attr_of(m.inode, self.sm.getattr(m.inode)))

    async def _readlink(self, ctx: RequestContext, m: w.ReadlinkRequest, payload: bytes) -> Message:
        await self._read()
        return w.ReadlinkReply(target=self.sm.readlink(m.inode))

    async def _readdir(self, ctx: RequestContext, m: w.ReaddirRequest, payload: bytes) -> Message:
        await self._read()
        names = self.sm.readdir(m.inode, m.after, m.limit + 1)
        entries = []
        for name, child in names[:m.limit]:
            try:
                entries.append(w.DirEntry(name=name, attr=attr_of(child, self.sm.getattr(child))))
            except NotFound:
                continue  # removed by an apply between the two reads: it is gone, skip it
        return w.ReaddirReply(entries=tuple(entries), more=len(names) > m.limit)

    async def _getxattr(self, ctx: RequestContext, m: w.GetxattrRequest, payload: bytes) -> Message:
        await self._read()
        return w.XattrReply(value=self.sm.getxattr(m.inode, m.name))

    async def _listxattr(self, ctx: RequestContext, m: w.ListxattrRequest, payload: bytes) -> Message:
        await self._read()
        return w.XattrListReply(names=tuple(self.sm.listxattr(m.inode)))

    async def _get_policy(self, ctx: RequestContext, m: w.GetPolicyRequest, payload: bytes) -> Message:
        await self._read()
        node = self.sm.getattr(m.inode)
        return w.PolicyReply(policy=node.policy or ns.DEFAULT_POLICY, inherited=not node.policy,
                             exclusive_write=bool(node.flags & FLAG_EXCLUSIVE_WRITE))

    async def _statfs(self, ctx: RequestContext, m: w.StatfsRequest, payload: bytes) -> Message:
        await self._read()
        total = free = 0
        if self.chunkservers is not None:
            for cs in self.chunkservers.view():
                if cs.status is not CsStatus.FAILED:
                    total += cs.capacity_bytes
                if cs.accepts_new_replicas():
                    free += cs.free_bytes
        # every byte is stored ``replicas`` times: report the space in units of the default
        # policy's copies, as users think of their files (MooseFS shows raw space instead)
        copies = ReplicaPolicy.parse(ns.DEFAULT_POLICY).replicas
        files = self._counter(b"next_inode", ROOT_INODE + 1) - 1
        return w.StatfsReply(block_bytes=4096, total_bytes=total // copies, free_bytes=free // copies, files=files)

    # ---- chunks --------------------------------------------------------------------------------------

    def _manager(self) -> ChunkserverManager:
        if self.chunkservers is None:
            raise NoChunkservers("this MDS serves no chunkservers")
        return self.chunkservers

    def _chunk_infos(self, chunks: list[tuple[int, int, Chunk]], mode: str) -> tuple[w.ChunkInfo, ...]:
        """(index, chunk id, chunk) -> what a client needs to read or write each: the replicas'
        addresses (damaged ones left out; for reads, online ones first) and a capability. The
        registry and the liveness view are read once for the whole list."""
        manager = self._manager()
        records = manager.records()
        status = {cs.cs_id: cs.status for cs in manager.view()}
        ttl = self.capability_ttl_s if mode == "r" else int(manager.write_lease_s)
        expires = int(self._wall_ns() // 10**9) + ttl
        out = []
        for index, chunk_id, chunk in chunks:
            usable = [c for c in chunk.replicas if (chunk_id, c) not in manager.damaged]
            # writes go down the chain in its order; reads may pick any: online ones first
            if mode == "r":
                usable.sort(key=lambda c: (status.get(c) is not CsStatus.ONLINE, chunk.replicas.index(c)))
            token = issue_capability(self.capability_key, chunk_id, chunk.version, mode, expires) \
                if self.capability_key else b""
            out.append(w.ChunkInfo(index=index, chunk_id=chunk_id, version=chunk.version,
                                   length_bytes=chunk.length_bytes,
                                   replicas=tuple(manager.address(c, records) for c in usable), token=token,
                                   token_expires_s=expires if token else 0))
        return tuple(out)

    def _chunk_reply(self, index: int, chunk_id: int, chunk: Chunk) -> w.ChunkReply:
        """The reply to a writer: one chunk with a write capability."""
        (info,) = self._chunk_infos([(index, chunk_id, chunk)], "rw")
        return w.ChunkReply(chunk_bytes=self.sm.chunk_bytes(), chunk=info)

    async def _chunk_map(self, ctx: RequestContext, m: w.ChunkMapRequest, payload: bytes) -> Message:
        await self._read()
        node = self.sm.getattr(m.inode)
        chunks = self.sm.chunk_map(m.inode, m.first_index, m.count)
        return w.ChunkMapReply(chunk_bytes=self.sm.chunk_bytes(), size=node.size,
                               chunks=self._chunk_infos(chunks, "r"))

    def _existing_chunk(self, inode: int, index: int) -> w.ChunkReply | None:
        found = self.sm.chunk_map(inode, index, 1)
        if not found:
            return None
        i, chunk_id, chunk = found[0]
        self._manager().grant_lease(chunk_id)
        return self._chunk_reply(i, chunk_id, chunk)

    async def _alloc_chunk(self, ctx: RequestContext, m: w.AllocChunkRequest, payload: bytes) -> Message:
        """The chunk at ``index`` for writing: the existing one, or a new one placed now."""
        await self.leader()
        manager = self._manager()
        existing = self._existing_chunk(m.inode, m.index)
        if existing is not None:
            return existing
        node = self.sm.getattr(m.inode)
        policy = ReplicaPolicy.parse(node.policy or ns.DEFAULT_POLICY)
        servers = manager.view()
        placement = place_replicas(servers, policy.replicas, writer_host=m.writer_host or None,
                                   salt=m.inode * 1_000_003 + m.index)
        if len(placement.servers) < policy.min:
            usable = sum(1 for cs in servers if cs.accepts_new_replicas())
            states = ", ".join(f"cs {cs.cs_id} {cs.status.value} {cs.used_ratio:.0%} full on {cs.host or '?'}"
                               for cs in servers[:16])
            raise NoChunkservers(f"policy {policy} needs {policy.min} chunkservers on distinct hosts; "
                                 f"{usable} can take new chunks now ({states or 'none registered'})")
        try:
            value = await self._mutate(m, lambda now: ns.AllocChunk(
                uid=m.uid, gid=m.gid, now_ns=now, inode=m.inode, index=m.index, chunk_id=self.alloc_chunk_id(),
                replicas=tuple(placement.servers)))
        except Exists:
            existing = self._existing_chunk(m.inode, m.index)  # another writer allocated it first
            if existing is None:
                raise
            return existing
        chunk_id, raw = value
        manager.grant_lease(int(chunk_id))
        return self._chunk_reply(m.index, int(chunk_id), chunk_decoder.decode(raw))

    async def _write_done(self, ctx: RequestContext, m: w.WriteDoneRequest, payload: bytes) -> Message:
        value = await self._mutate(m, lambda now: ns.WriteDone(
            uid=m.uid, gid=m.gid, now_ns=now, inode=m.inode, size=m.size, mtime_ns=m.mtime_ns,
            chunks=tuple((c.index, c.length_bytes) for c in m.chunks)))
        if m.release and self.chunkservers is not None:
            for c in m.chunks:
                for _, chunk_id, _chunk in self.sm.chunk_map(m.inode, c.index, 1):
                    self.chunkservers.release_lease(chunk_id)
        return _attr_result(value)

    async def _repair_chain(self, ctx: RequestContext, m: w.RepairChainRequest, payload: bytes) -> Message:
        """Drop the chunkservers a write failed on and bump the version, so their copies are
        stale from now on; the survivors continue the chain (the planner adds new replicas
        in the background). When fewer than the policy's minimum would remain, the chunk is
        first copied to more servers (``refill_for_writer``); refused if that cannot be
        done: an acknowledged write must survive the loss of one more server."""
        await self.leader()
        chunk = self.sm.chunk(m.chunk_id)
        node = self.sm.getattr(chunk.inode)
        policy = ReplicaPolicy.parse(node.policy or ns.DEFAULT_POLICY)
        drop = tuple(c for c in chunk.replicas if c in m.failed)
        remaining = [c for c in chunk.replicas if c not in drop]
        needed = policy.min
        if (chunk.version == m.version and len(remaining) < needed and remaining and chunk.length_bytes
                and self.sm.write_sessions(chunk.inode) <= {session_of_lane(m.lane)}):
            # too few would remain: copy the chunk to more servers first, while its only
            # writer waits (another writer's writes could slip past the copy)
            await self._manager().refill_for_writer(m.chunk_id, remaining, list(drop), needed - len(remaining))
            chunk = self.sm.chunk(m.chunk_id)
            drop = tuple(c for c in chunk.replicas if c in m.failed)
            remaining = [c for c in chunk.replicas if c not in drop]
        if chunk.version == m.version and len(remaining) < needed:
            raise NoChunkservers(f"chunk {m.chunk_id}: only {len(remaining)} replica(s) would remain, policy {policy} "
                                 f"needs {policy.min}; writes wait until chunkservers are back")
        value = await self._mutate(m, lambda now: ns.RepairChain(
            uid=m.uid, gid=m.gid, now_ns=now, chunk_id=m.chunk_id, version=m.version, drop=drop, add=(),
            new_version=m.version + 1))
        chunk_id, raw = value
        repaired = chunk_decoder.decode(raw)
        manager = self._manager()
        # the survivors move to the new version before the writer resends (idempotent, so a
        # retry answered from the session table bumps again, harmlessly; unless the chunk has
        # moved on since: a survivor that missed the bump was fenced off by one more, and the
        # writer gets the chunk as it is now)
        if self.sm.chunk(int(chunk_id)).version == repaired.version:
            await manager.carry_bump(int(chunk_id), repaired.replicas, m.version, repaired.version,
                                     missing_ok=chunk.length_bytes == 0,
                                     reason="missed the chain repair's version bump")
        repaired = self.sm.chunk(int(chunk_id))
        manager.grant_lease(int(chunk_id))
        log.info("chunk.chain_repaired", extra={"chunk": m.chunk_id, "version": repaired.version,
                                                "dropped": list(drop), "chain": list(repaired.replicas)})
        return self._chunk_reply(repaired.index, int(chunk_id), repaired)

    async def _status(self, ctx: RequestContext, m: w.MdsStatusRequest, payload: bytes) -> Message:
        st = self.node.status()
        index, state_hash = self.sm.state_hash()
        raft = {k: v for k, v in st.items() if isinstance(v, (int, str, list, dict)) and not isinstance(v, bool)}
        raft = msgspec.to_builtins(raft)
        return w.MdsStatusReply(node_id=self.node.id, role=str(st["role"]), term=int(st["term"]),
                                leader_id=st["leader"] or "", leader_address=self.node.leader_address() or "",
                                commit=int(st["commit"]), applied=index, state_hash=state_hash, raft=raft,
                                chunks=self.chunkservers.summary() if self.chunkservers and self.serving else {},
                                cluster_name=self.cluster_name, members=self.node.members())


__all__ = ["MetadataService", "attr_of", "unwrap"]
