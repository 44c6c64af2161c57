"""Calls to "whichever metadata server leads": leader discovery, redirects, jittered retries.

``LeaderCaller`` is given any MDS addresses (one reachable MDS is enough: every MDS names the
leader in its NotLeader reply) and keeps calling until a request succeeds, fails for good,
or the overall deadline passes (then ``DeadlineExceeded``). Retryable failures
(vstore/wire/codes.py RETRYABLE_CODES: not the leader, unavailable, connection lost, busy,
one attempt's deadline) are retried with jittered exponential backoff, logged louder as the
wait grows; everything else is the answer and is raised as it is (s3ql's ``@retry``). A
leader that stops answering altogether (SIGSTOP, a partition, a dead host: TCP notices none
of them soon) is detected by the connections' liveness probe and left within DEAD_AFTER_S.

Used by clients (vstore/client/mds_link.py adds sessions and exactly-once lanes) and by
chunkservers (vstore/chunkserver/mds_link.py), which must not import each other.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable, Sequence

from vstore.errors import Busy, ConnectionLost, DeadlineExceeded, NotLeader, Unavailable, VStoreError
from vstore.net.connection import Auth, Limits
from vstore.net.rpc import Reply, RpcClient, RpcClients
from vstore.wire import Message

log = logging.getLogger(__name__)

RETRYABLE = (NotLeader, Unavailable, ConnectionLost, Busy, DeadlineExceeded)
#: An MDS that has calls in flight and sends nothing for PROBE_AFTER_S is pinged; one silent
#: for DEAD_AFTER_S is left (RpcClient's liveness probe): a stopped or cut-off leader costs
#: the callers 3 s, not their attempt deadline (10 s for clients). The election itself takes
#: about as long, so the callers come back about when the new leader can serve.
PROBE_AFTER_S = 1.0
DEAD_AFTER_S = 3.0
#: An MDS that just answered nothing (no connection, no handshake, no reply, a silent
#: connection) is tried last among the seeds, and hints naming it are disregarded, for this
#: long: about an election's length, after which followers name the new leader. Short, so a
#: restarted MDS that wins the next election is not shunned for long.
SUSPECT_S = 3.0


def _unanswering(exc: VStoreError) -> bool:
    """The MDS gave no sign of life (``peer_silent``, set by the transport: no connection, no
    handshake, no reply in time, a connection the liveness probe found silent). A reset
    connection or an error it answered with is not that: the peer is there, and a reset
    from a flaky network must not turn a live leader away."""
    return bool(exc.details.get("peer_silent"))
#: Retrying longer than this is worth a WARNING (someone should look): a leader election
#: with the default timing takes 1-3 s.
WARN_AFTER_S = 10.0


class LeaderCaller:
    def __init__(self, addresses: Sequence[tuple[str, int]], auth: Auth, *, deadline_s: float = 60.0,
                 attempt_deadline_s: float = 10.0, limits: Limits = Limits(), rng: random.Random | None = None,
                 backoff_s_max: float = 1.0) -> None:
        if not addresses:
            raise ValueError("at least one MDS address is needed")
        self.auth = auth
        self.deadline_s = deadline_s
        self.attempt_deadline_s = attempt_deadline_s
        self.limits = limits
        self.backoff_s_max = backoff_s_max
        self._rng = rng or random.Random()
        self._seeds = [f"{h}:{p}" for h, p in addresses]
        self._clients = RpcClients(auth, expected_role="mds", limits=limits, default_deadline_s=attempt_deadline_s,
                                   probe_after_s=PROBE_AFTER_S, dead_after_s=DEAD_AFTER_S)
        self._leader: str | None = None
        #: address -> until when (monotonic) it is tried last: it just failed (not NotLeader)
        self._suspect: dict[str, float] = {}
        self._turn = 0
        self.stats = {"calls": 0, "retries": 0, "redirects": 0}

    async def close_connections(self) -> None:
        await self._clients.close()

    def learn(self, addresses: Iterable[str]) -> None:
        """The MDS group's current addresses (from a leader's reply): they become the seeds
        tried when no leader is known, so losing the addresses this link was given first
        does not lose the cluster. A removed MDS stops being tried."""
        fresh = [a for a in dict.fromkeys(addresses) if a]
        if fresh and fresh != self._seeds:
            self._seeds = fresh

    @property
    def leader(self) -> str | None:
        return self._leader

    def _client(self, address: str) -> RpcClient:
        return self._clients.get(address)

    def _target(self) -> str:
        """The known leader; else the next seed in turn that has not just failed (while any
        has not: a stopped MDS accepts TCP connections and then answers nothing, so each
        attempt on it costs a handshake timeout, for every caller that tries it)."""
        if self._leader is not None:
            return self._leader
        now = time.monotonic()
        for address in self._suspect.copy():
            if self._suspect[address] <= now:
                del self._suspect[address]
        n = len(self._seeds)
        for k in range(n):
            address = self._seeds[(self._turn + k) % n]
            if address not in self._suspect:
                self._turn += k + 1
                return address
        address = min(self._seeds, key=lambda a: self._suspect.get(a, 0.0))   # all failed lately
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
                self._suspect.pop(target, None)
                self._leader = target
                return reply
            except NotLeader as exc:
                hint = exc.leader
                if hint and self._suspect.get(hint, 0.0) > time.monotonic():
                    hint = ""   # a follower that has not noticed yet: the one named just failed us
                self._leader = hint if hint and hint != target else None
                if hint and hint not in self._seeds:
                    self._seeds.append(hint)
                self.stats["redirects"] += 1
                if self._leader is not None:
                    continue  # straight to the named leader, no backoff
            except RETRYABLE as exc:
                self._leader = None
                if _unanswering(exc):
                    self._suspect[target] = time.monotonic() + SUSPECT_S
                last = exc
                # an election takes a second or two: quiet until the wait is longer than that
                waited = budget - (deadline - loop.time())
                loud = waited > WARN_AFTER_S
                if attempt == 3 or (loud and not warned) or attempt % 100 == 0:
                    warned = warned or loud
                    log.log(logging.WARNING if loud else logging.INFO, "net.mds_retrying",
                            extra={"request": type(msg).__name__, "attempt": attempt, "target": target,
                                   "waited_s": round(waited, 1), "error": f"{type(last).__name__}: {last.message}"})
            self.stats["retries"] += 1
            if loop.time() + backoff > deadline:
                raise DeadlineExceeded(f"{type(msg).__name__}: no MDS leader answered within {budget:g} s "
                                       f"({attempt} attempts)")
            await asyncio.sleep(backoff * (0.5 + self._rng.random()))
            backoff = min(self.backoff_s_max, backoff * 2)

