"""The MDS group's membership, as operators change it (``vstore add-node --role mds``,
``vstore rm-node``): the leader's side.

* Adding: the node joins the Raft configuration as a learner (it receives the log but does
  not vote, so a new node that is slow to start or to catch up never weakens the quorum).
  The leader promotes a learner to voter by itself once the learner's log has reached the
  commit index and it answers (``promotion``): the operator runs one command per node.
* Removing: a learner goes at once. A voter goes only if the voters left that answer the
  leader are a majority of the new configuration (``removal_problem``): removing a healthy
  node while another is down would otherwise leave a group that cannot commit. ``force``
  skips that check (never the "last voter" one, which the Raft core enforces).

The decisions are pure functions of the configuration and the leader's progress view; the
asyncio shell around them (``Membership``) proposes the configuration changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

from vstore.errors import Exists, InvalidArgument, NotFound
from vstore.wire import Message
from vstore.wire import admin as a
from vstore.wire.raft import ConfChange, ConfChangeType

if TYPE_CHECKING:
    from vstore.metadata.service import MetadataService
    from vstore.net import RequestContext, Router

log = logging.getLogger(__name__)

_ADMIN = frozenset({"admin"})
#: How long a removal waits for the remaining voters to show up as active (a leader elected
#: a moment ago has heard from nobody yet) before refusing.
ACTIVE_GRACE_S = 2.0


def removal_problem(voters: Collection[str], learners: Collection[str], active: Collection[str], node: str,
                    *, force: bool = False) -> str | None:
    """Why removing ``node`` is refused, or None. ``active``: the members the leader heard
    from recently (itself included)."""
    if node not in voters and node not in learners:
        return f"{node} is not an MDS of this cluster (members: {', '.join(sorted([*voters, *learners]))})"
    if node in learners:
        return None
    remaining = [v for v in voters if v != node]
    if not remaining:
        return f"{node} is the only voter; a cluster cannot remove its last MDS"
    if force:
        return None
    live = [v for v in remaining if v in active]
    need = len(remaining) // 2 + 1
    if len(live) < need:
        down = sorted(v for v in remaining if v not in active)
        return (f"removing {node} would leave {len(remaining)} voters of which only {len(live)} answer "
                f"({', '.join(down)} not); {need} are needed to commit anything. Bring them back first, "
                f"or use --force")
    return None


def promotion(learners: Collection[str], match: Mapping[str, int], active: Collection[str], commit: int) -> str | None:
    """The learner to promote now (caught up with the commit index and answering), or None."""
    for node in learners:
        if node in active and match.get(node, 0) >= commit:
            return node
    return None


class Membership:
    def __init__(self, service: MetadataService, *, interval_s: float = 0.5) -> None:
        self.service = service
        self.node = service.node
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.stats = {"added": 0, "promoted": 0, "removed": 0}

    def register(self, router: Router) -> None:
        router.add(a.AddMdsRequest, self._add, roles=_ADMIN)
        router.add(a.RemoveMdsRequest, self._remove, roles=_ADMIN)
        router.add(a.MembershipRequest, self._membership, roles=_ADMIN)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._promote_loop(), name=f"mds-membership-{self.node.id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # ---- the leader's view ----------------------------------------------------------------------------

    def reply(self) -> a.MembershipReply:
        core = self.node.core
        active = core.active_members()
        members = tuple(a.MdsMember(node_id=n, address=addr, voter=n in core.voters,
                                    match_index=core.progress[n].match_index if n in core.progress else 0,
                                    active=n in active)
                        for n, addr in self.node.members().items())
        return a.MembershipReply(leader_id=self.node.id, commit=core.log.committed, members=members)

    async def _change(self, change: ConfChange) -> None:
        # Busy (another change pending, no entry of this term yet) is retryable: the caller
        # sends the request again
        await self.node.propose_conf_change(change)
        await self.service._barrier()  # applied here before we answer

    # ---- handlers ---------------------------------------------------------------------------------------

    async def _membership(self, ctx: RequestContext, m: a.MembershipRequest, payload: bytes) -> Message:
        await self.service.leader()
        return self.reply()

    async def _add(self, ctx: RequestContext, m: a.AddMdsRequest, payload: bytes) -> Message:
        await self.service.leader()
        members = self.node.members()
        if m.node_id in members:
            role = "voter" if m.node_id in self.node.core.voters else "learner"
            raise Exists(f"{m.node_id} is already an MDS of this cluster ({role}, at {members[m.node_id]})")
        taken = next((n for n, addr in members.items() if addr == m.address), None)
        if taken is not None:
            raise Exists(f"{m.address} is the address of MDS {taken} already")
        if self.service.sm.cs_by_node(m.node_id) is not None:
            raise Exists(f"{m.node_id} is the node id of a chunkserver; pick another id for the MDS")
        await self._change(ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=m.node_id, address=m.address))
        self.stats["added"] += 1
        log.info("mds.member_added", extra={"node": m.node_id, "address": m.address, "as": "learner",
                                            "by": ctx.peer.node_id})
        return self.reply()

    async def _remove(self, ctx: RequestContext, m: a.RemoveMdsRequest, payload: bytes) -> Message:
        await self.service.leader()
        core = self.node.core
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACTIVE_GRACE_S
        while True:
            problem = removal_problem(core.voters, core.learners, core.active_members(), m.node_id, force=m.force)
            if problem is None or loop.time() >= deadline or m.node_id not in core.voters + core.learners:
                break
            await asyncio.sleep(0.2)
            await self.service.leader()
        if problem is not None:
            if m.node_id not in core.voters + core.learners:
                raise NotFound(problem)
            raise InvalidArgument(problem)
        was_leader = m.node_id == self.node.id
        await self._change(ConfChange(type=ConfChangeType.REMOVE, node_id=m.node_id))
        self.stats["removed"] += 1
        log.info("mds.member_removed", extra={"node": m.node_id, "by": ctx.peer.node_id, "forced": m.force,
                                              "was_leader": was_leader})
        return self.reply() if self.node.is_leader else a.MembershipReply(
            leader_id=self.node.leader_id or "", commit=core.log.committed, members=tuple(
                a.MdsMember(node_id=n, address=addr, voter=n in core.voters) for n, addr in self.node.members().items()))

    # ---- promotion ----------------------------------------------------------------------------------------

    async def _promote_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if not self.service.serving:
                continue
            core = self.node.core
            if not core.learners or core.pending_conf_index > core.log.applied:
                continue
            match = {n: pr.match_index for n, pr in core.progress.items()}
            node = promotion(core.learners, match, core.active_members(), core.log.committed)
            if node is None:
                continue
            try:
                await self._change(ConfChange(type=ConfChangeType.PROMOTE, node_id=node))
            except Exception as exc:  # noqa: BLE001 - not caught up after all, leadership lost: next round
                log.info("mds.promote_deferred", extra={"node": node, "error": str(exc)})
                continue
            self.stats["promoted"] += 1
            log.info("mds.member_promoted", extra={"node": node, "voters": list(core.voters)})


__all__ = ["Membership", "promotion", "removal_problem"]
