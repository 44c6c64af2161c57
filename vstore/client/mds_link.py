"""The client's link to the metadata servers: leader following, sessions, exactly-once lanes.

Leader discovery, redirects and jittered retries up to the deadline (default 60 s, then
``DeadlineExceeded``, which the FUSE edge turns into EIO) come from vstore/net/leader.py
``LeaderCaller``; this module adds what a client needs on top.

Exactly once. Mutations (vstore/wire/mds.py ``MdsMutation``) run on *lanes*: a session has
up to ``lanes`` request streams, each with its own sequence number; a mutation takes a free
lane, gets the lane's next number, and keeps that same (lane, seq) through every retry, so
the MDS applies it once however many attempts reach it. The lane is handed back when the
outcome is known, or when the deadline passes (the next use takes the next number: an
old attempt that surfaces later is then refused as stale, never applied).

The session is kept alive by a keepalive every third of the MDS's expiry period; when the
client dies the session expires and the MDS releases its open files.

Fencing. A client cut off for longer than the expiry period comes back to a session the MDS
has expired: its lanes are refused (except the retry of a lane's last command, answered from
its record). From the first such refusal the link is *fenced*: every later call fails here
with the same StaleHandle (ESTALE) until the file system is mounted again, reads included.
Without that, the kernel's one retry of a path operation that failed with ESTALE
(``LOOKUP_REVAL``) would look the name up again and answer from what it finds: a create
whose mknod was applied but whose open was refused would come back as EEXIST, a wrong
answer where ESTALE is an honest one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from vstore.errors import StaleHandle, VStoreError
from vstore.net import Auth, Limits
from vstore.net.leader import RETRYABLE, LeaderCaller
from vstore.net.rpc import Reply
from vstore.wire import Message
from vstore.wire import mds as w

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

__all__ = ["RETRYABLE", "MdsLink", "client_node_id", "expect_attr"]


class _Lane:
    __slots__ = ("name", "seq")

    def __init__(self, name: str) -> None:
        self.name = name
        self.seq = 0


class MdsLink(LeaderCaller):
    def __init__(self, addresses: Sequence[tuple[str, int]], auth: Auth, *, deadline_s: float = 60.0,
                 attempt_deadline_s: float = 10.0, lanes: int = 64, limits: Limits = Limits(),
                 host: str | None = None, mountpoint: str = "", rng: random.Random | None = None,
                 backoff_s_max: float = 1.0) -> None:
        super().__init__(addresses, auth, deadline_s=deadline_s, attempt_deadline_s=attempt_deadline_s,
                         limits=limits, rng=rng, backoff_s_max=backoff_s_max)
        if not 1 <= lanes <= w.LANES_MAX:
            raise ValueError(f"lanes must be 1..{w.LANES_MAX}")
        self.host = host if host is not None else socket.gethostname()
        self.mountpoint = mountpoint
        self.session = secrets.token_bytes(16)
        self._free: asyncio.Queue[_Lane] = asyncio.Queue()
        for n in range(lanes):
            self._free.put_nowait(_Lane(f"{self.session.hex()}/{n}"))
        self._keepalive_task: asyncio.Task[None] | None = None
        self.expire_after_s: float = 30.0
        #: the refusal that fenced this link (module docstring), None while the session lives
        self.fenced: StaleHandle | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Announce the session (so the leader knows it before its first mutation) and keep it alive."""
        await self._keepalive_once()
        self._keepalive_task = asyncio.create_task(self._keepalive_loop(), name="mds-keepalive")

    async def close(self, *, expire_session: bool = True) -> None:
        """Stop the keepalives; with ``expire_session`` tell the leader the session is over
        (its open files are released now rather than after the expiry period)."""
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            await asyncio.gather(self._keepalive_task, return_exceptions=True)
            self._keepalive_task = None
        if expire_session and self.fenced is None:
            try:
                await self.call(w.SessionCloseRequest(session=self.session), deadline_s=5.0)
            except VStoreError as exc:
                log.info("client.session_close_failed", extra={"error": exc.message})
        await self.close_connections()

    async def _keepalive_once(self) -> None:
        reply = await self.call(w.SessionKeepaliveRequest(session=self.session, host=self.host[:253],
                                                          mountpoint=self.mountpoint[:4096]))
        assert isinstance(reply, w.SessionReply)
        self.expire_after_s = float(reply.expire_after_s)
        self.learn(reply.mds.values())

    async def _keepalive_loop(self) -> None:
        while self.fenced is None:
            await asyncio.sleep(max(0.2, self.expire_after_s / 3))
            try:
                await self._keepalive_once()
            except VStoreError as exc:
                if self.fenced is None:
                    log.warning("client.keepalive_failed", extra={"error": exc.message})

    # ---- fencing ---------------------------------------------------------------------------------

    async def call_reply(self, msg: Message, payload: bytes = b"", *, deadline_s: float | None = None) -> Reply:
        if self.fenced is not None:
            raise StaleHandle(self.fenced.message, details=dict(self.fenced.details))
        try:
            return await super().call_reply(msg, payload, deadline_s=deadline_s)
        except StaleHandle as exc:
            if f"client session {self.session.hex()} " in exc.message and self.fenced is None:
                self.fenced = exc
                log.warning("client.session_fenced", extra={"session": self.session.hex(), "error": exc.message})
            raise

    # ---- calls -----------------------------------------------------------------------------------

    async def mutate(self, make: Callable[[str, int], M], *, deadline_s: float | None = None) -> Message:
        """Run one mutation exactly once: ``make(lane, seq)`` builds the request (called once;
        the same request is resent on every retry)."""
        lane = await self._free.get()
        lane.seq += 1
        try:
            request = make(lane.name, lane.seq)
            return await self.call(request, deadline_s=deadline_s)
        finally:
            self._free.put_nowait(lane)

    # ---- conveniences used by tests, tools and the FUSE layer -----------------------------------------

    async def lookup(self, parent: int, name: bytes, *, uid: int = 0, gid: int = 0) -> w.Attr:
        reply = await self.call(w.LookupRequest(uid=uid, gid=gid, parent=parent, name=name))
        return expect_attr(reply)

    async def getattr(self, inode: int, *, uid: int = 0, gid: int = 0) -> w.Attr:
        return expect_attr(await self.call(w.GetattrRequest(uid=uid, gid=gid, inode=inode)))

    async def create(self, parent: int, name: bytes, mode: int = 0o644, *, kind: int = 1, uid: int = 0,
                     gid: int = 0, rdev: int = 0) -> w.Attr:
        return expect_attr(await self.mutate(lambda lane, seq: w.MknodRequest(
            uid=uid, gid=gid, lane=lane, seq=seq, parent=parent, name=name, kind=kind, mode=mode, rdev=rdev)))

    async def mkdir(self, parent: int, name: bytes, mode: int = 0o755, *, uid: int = 0, gid: int = 0) -> w.Attr:
        return expect_attr(await self.mutate(lambda lane, seq: w.MkdirRequest(
            uid=uid, gid=gid, lane=lane, seq=seq, parent=parent, name=name, mode=mode)))

    async def unlink(self, parent: int, name: bytes, *, uid: int = 0, gid: int = 0) -> None:
        await self.mutate(lambda lane, seq: w.UnlinkRequest(uid=uid, gid=gid, lane=lane, seq=seq, parent=parent,
                                                            name=name))

    async def rmdir(self, parent: int, name: bytes, *, uid: int = 0, gid: int = 0) -> None:
        await self.mutate(lambda lane, seq: w.RmdirRequest(uid=uid, gid=gid, lane=lane, seq=seq, parent=parent,
                                                           name=name))

    async def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int = 0, *,
                     uid: int = 0, gid: int = 0) -> None:
        await self.mutate(lambda lane, seq: w.RenameRequest(uid=uid, gid=gid, lane=lane, seq=seq, parent=parent,
                                                            name=name, new_parent=new_parent, new_name=new_name,
                                                            flags=flags))

    async def readdir(self, inode: int, *, uid: int = 0, gid: int = 0, page: int = w.READDIR_PAGE_MAX
                      ) -> list[w.DirEntry]:
        """Every entry of a directory, page by page."""
        out: list[w.DirEntry] = []
        after = b""
        while True:
            reply = await self.call(w.ReaddirRequest(uid=uid, gid=gid, inode=inode, after=after, limit=page))
            assert isinstance(reply, w.ReaddirReply)
            out.extend(reply.entries)
            if not reply.more or not reply.entries:
                return out
            after = reply.entries[-1].name

    async def symlink(self, parent: int, name: bytes, target: bytes, *, uid: int = 0, gid: int = 0) -> w.Attr:
        return expect_attr(await self.mutate(lambda lane, seq: w.SymlinkRequest(
            uid=uid, gid=gid, lane=lane, seq=seq, parent=parent, name=name, target=target)))

    async def link(self, inode: int, parent: int, name: bytes, *, uid: int = 0, gid: int = 0) -> w.Attr:
        return expect_attr(await self.mutate(lambda lane, seq: w.LinkRequest(
            uid=uid, gid=gid, lane=lane, seq=seq, inode=inode, parent=parent, name=name)))

    async def readlink(self, inode: int, *, uid: int = 0, gid: int = 0) -> bytes:
        return _expect(await self.call(w.ReadlinkRequest(uid=uid, gid=gid, inode=inode)), w.ReadlinkReply).target

    async def statfs(self, *, uid: int = 0, gid: int = 0) -> w.StatfsReply:
        return _expect(await self.call(w.StatfsRequest(uid=uid, gid=gid)), w.StatfsReply)

    async def getxattr(self, inode: int, name: bytes, *, uid: int = 0, gid: int = 0) -> bytes:
        return _expect(await self.call(w.GetxattrRequest(uid=uid, gid=gid, inode=inode, name=name)),
                       w.XattrReply).value

    async def setxattr(self, inode: int, name: bytes, value: bytes, *, uid: int = 0, gid: int = 0) -> None:
        await self.mutate(lambda lane, seq: w.SetxattrRequest(uid=uid, gid=gid, lane=lane, seq=seq, inode=inode,
                                                              name=name, value=value))

    async def listxattr(self, inode: int, *, uid: int = 0, gid: int = 0) -> list[bytes]:
        return list(_expect(await self.call(w.ListxattrRequest(uid=uid, gid=gid, inode=inode)),
                            w.XattrListReply).names)

    async def removexattr(self, inode: int, name: bytes, *, uid: int = 0, gid: int = 0) -> None:
        await self.mutate(lambda lane, seq: w.RemovexattrRequest(uid=uid, gid=gid, lane=lane, seq=seq, inode=inode,
                                                                 name=name))

    async def set_policy(self, inode: int, *, policy: str | None = None, exclusive_write: bool | None = None,
                         uid: int = 0, gid: int = 0) -> w.PolicyReply:
        return _expect(await self.mutate(lambda lane, seq: w.SetPolicyRequest(
            uid=uid, gid=gid, lane=lane, seq=seq, inode=inode, policy=policy, exclusive_write=exclusive_write)),
            w.PolicyReply)

    async def status(self, address: str) -> w.MdsStatusReply:
        """The status of one particular MDS (no leader following, one attempt)."""
        reply = await self._client(address).call(w.MdsStatusRequest(), deadline_s=self.attempt_deadline_s)
        assert isinstance(reply.message, w.MdsStatusReply)
        return reply.message


R = TypeVar("R")


def _expect(reply: Any, cls: type[R]) -> R:
    if not isinstance(reply, cls):
        raise VStoreError(f"expected {cls.__name__}, got {type(reply).__name__}")
    return reply


def expect_attr(reply: Any) -> w.Attr:
    if not isinstance(reply, w.AttrReply):
        raise VStoreError(f"expected AttrReply, got {type(reply).__name__}")
    return reply.attr


def client_node_id(host: str | None = None) -> str:
    """A node id for a client's handshake identity: host and pid, in the id alphabet."""
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in (host or socket.gethostname()))[:40] or "host"
    return f"client-{name.lstrip('._-') or 'host'}-{os.getpid()}"
