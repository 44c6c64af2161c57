"""The client's link to the metadata servers: leader discovery, redirects, retries, sessions.

``MdsLink`` is given any MDS addresses (one reachable MDS is enough: every MDS names the
leader in its NotLeader reply) and keeps calling until a request succeeds, fails for good,
or the overall deadline passes (default 60 s, then ``DeadlineExceeded``, which the FUSE
edge turns into EIO). Retryable failures (vstore/wire/codes.py RETRYABLE_CODES: not the
leader, unavailable, connection lost, busy, deadline of one attempt) are retried with
jittered exponential backoff, logged louder as attempts grow; everything else is the
answer and is raised as it is (s3ql's ``@retry`` is the model).

Exactly once. Mutations (vstore/wire/mds.py ``MdsMutation``) run on *lanes*: a session has
up to ``lanes`` request streams, each with its own sequence number; a mutation takes a free
lane, gets the lane's next number, and keeps that same (lane, seq) through every retry, so
the MDS applies it once however many attempts reach it. The lane is handed back when the
outcome is known, or when the deadline passes (the next use takes the next number: an
old attempt that surfaces later is then refused as stale, never applied).

The session is kept alive by a keepalive every third of the MDS's expiry period; when the
client dies the session expires and the MDS releases its open files.
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

from vstore.errors import (Busy, ConnectionLost, DeadlineExceeded, NotLeader, Unavailable, VStoreError)
from vstore.net import Auth, Limits, Reply, RpcClient
from vstore.wire import Message
from vstore.wire import mds as w

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

RETRYABLE = (NotLeader, Unavailable, ConnectionLost, Busy, DeadlineExceeded)
#: Retrying longer than this is worth a WARNING (someone should look): a leader election
#: with the default timing takes 1-3 s.
WARN_AFTER_S = 10.0


class _Lane:
    __slots__ = ("name", "seq")

    def __init__(self, name: str) -> None:
        self.name = name
        self.seq = 0


class MdsLink:
    def __init__(self, addresses: Sequence[tuple[str, int]], auth: Auth, *, deadline_s: float = 60.0,
                 attempt_deadline_s: float = 10.0, lanes: int = 64, limits: Limits = Limits(),
                 host: str | None = None, mountpoint: str = "", rng: random.Random | None = None,
                 backoff_s_max: float = 1.0) -> None:
        if not addresses:
            raise ValueError("MdsLink needs at least one MDS address")
        if not 1 <= lanes <= w.LANES_MAX:
            raise ValueError(f"lanes must be 1..{w.LANES_MAX}")
        self.auth = auth
        self.deadline_s = deadline_s
        self.attempt_deadline_s = attempt_deadline_s
        self.limits = limits
        self.host = host if host is not None else socket.gethostname()
        self.mountpoint = mountpoint
        self.backoff_s_max = backoff_s_max
        self._rng = rng or random.Random()
        self.session = secrets.token_bytes(16)
        self._seeds = [f"{h}:{p}" for h, p in addresses]
        self._clients: dict[str, RpcClient] = {}
        self._leader: str | None = None
        self._turn = 0
        self._free: asyncio.Queue[_Lane] = asyncio.Queue()
        for n in range(lanes):
            self._free.put_nowait(_Lane(f"{self.session.hex()}/{n}"))
        self._keepalive_task: asyncio.Task[None] | None = None
        self.expire_after_s: float = 30.0
        self.stats = {"calls": 0, "retries": 0, "redirects": 0}

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
        if expire_session:
            try:
                await self.call(w.SessionCloseRequest(session=self.session), deadline_s=5.0)
            except VStoreError as exc:
                log.info("client.session_close_failed", extra={"error": exc.message})
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    async def _keepalive_once(self) -> None:
        reply = await self.call(w.SessionKeepaliveRequest(session=self.session, host=self.host[:253],
                                                          mountpoint=self.mountpoint[:4096]))
        assert isinstance(reply, w.SessionReply)
        self.expire_after_s = float(reply.expire_after_s)

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.2, self.expire_after_s / 3))
            try:
                await self._keepalive_once()
            except VStoreError as exc:
                log.warning("client.keepalive_failed", extra={"error": exc.message})

    # ---- calls -----------------------------------------------------------------------------------

    @property
    def leader(self) -> str | None:
        return self._leader

    def _client(self, address: str) -> RpcClient:
        client = self._clients.get(address)
        if client is None:
            host, _, port = address.rpartition(":")
            client = RpcClient((host.strip("[]"), int(port)), self.auth, expected_role="mds", limits=self.limits,
                               default_deadline_s=self.attempt_deadline_s, reconnect_backoff_s_max=0.5)
            self._clients[address] = client
        return client

    def _target(self) -> str:
        if self._leader is not None:
            return self._leader
        address = self._seeds[self._turn % len(self._seeds)]
        self._turn += 1
        return address

    async def call(self, msg: Message, *, deadline_s: float | None = None) -> Message:
        """Send ``msg`` to the leader, following redirects and retrying retryable errors
        until ``deadline_s`` (default: the link's); returns the reply message."""
        return (await self.call_reply(msg, deadline_s=deadline_s)).message

    async def call_reply(self, msg: Message, payload: bytes = b"", *, deadline_s: float | None = None) -> Reply:
        loop = asyncio.get_running_loop()
        budget = self.deadline_s if deadline_s is None else deadline_s
        deadline = loop.time() + budget
        backoff = 0.02
        attempt = 0
        warned = False
        self.stats["calls"] += 1
        while True:
            target = self._target()
            attempt += 1
            left = deadline - loop.time()
            try:
                reply = await self._client(target).call(msg, payload, deadline_s=max(0.05, min(
                    self.attempt_deadline_s, left)))
                self._leader = target
                return reply
            except NotLeader as exc:
                hint = exc.leader
                self._leader = hint if hint and hint != target else None
                if hint and hint not in self._seeds:
                    self._seeds.append(hint)
                self.stats["redirects"] += 1
                if self._leader is not None:
                    continue  # straight to the named leader, no backoff
            except RETRYABLE as exc:
                self._leader = None
                last = exc
                # an election takes a second or two: quiet until the wait is longer than that
                waited = budget - (deadline - loop.time())
                loud = waited > WARN_AFTER_S
                if attempt == 3 or (loud and not warned) or attempt % 100 == 0:
                    warned = warned or loud
                    log.log(logging.WARNING if loud else logging.INFO, "client.mds_retrying",
                            extra={"request": type(msg).__name__, "attempt": attempt, "target": target,
                                   "waited_s": round(waited, 1), "error": f"{type(last).__name__}: {last.message}"})
            self.stats["retries"] += 1
            if loop.time() + backoff > deadline:
                raise DeadlineExceeded(f"{type(msg).__name__}: no MDS leader answered within {budget:g} s "
                                       f"({attempt} attempts)")
            await asyncio.sleep(backoff * (0.5 + self._rng.random()))
            backoff = min(self.backoff_s_max, backoff * 2)

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
        return _attr(reply)

    async def getattr(self, inode: int, *, uid: int = 0, gid: int = 0) -> w.Attr:
        return _attr(await self.call(w.GetattrRequest(uid=uid, gid=gid, inode=inode)))

    async def create(self, parent: int, name: bytes, mode: int = 0o644, *, kind: int = 1, uid: int = 0,
                     gid: int = 0, rdev: int = 0) -> w.Attr:
        return _attr(await self.mutate(lambda lane, seq: w.MknodRequest(
            uid=uid, gid=gid, lane=lane, seq=seq, parent=parent, name=name, kind=kind, mode=mode, rdev=rdev)))

    async def mkdir(self, parent: int, name: bytes, mode: int = 0o755, *, uid: int = 0, gid: int = 0) -> w.Attr:
        return _attr(await self.mutate(lambda lane, seq: w.MkdirRequest(
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

    async def status(self, address: str) -> w.MdsStatusReply:
        """The status of one particular MDS (no leader following, one attempt)."""
        reply = await self._client(address).call(w.MdsStatusRequest(), deadline_s=self.attempt_deadline_s)
        assert isinstance(reply.message, w.MdsStatusReply)
        return reply.message


def _attr(reply: Any) -> w.Attr:
    if not isinstance(reply, w.AttrReply):
        raise VStoreError(f"expected AttrReply, got {type(reply).__name__}")
    return reply.attr


def client_node_id(host: str | None = None) -> str:
    """A node id for a client's handshake identity: host and pid, in the id alphabet."""
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in (host or socket.gethostname()))[:40] or "host"
    return f"client-{name.lstrip('._-') or 'host'}-{os.getpid()}"
