"""Where the dashboard's numbers come from: the cluster's own admin RPCs, asked of the leader.

A dashboard runs inside every MDS, but it reads the cluster as a client does (an admin
link that follows the leader, and a client link for the namespace): so a follower's page
shows the leader's data by the same path as the leader's own page, the page never reads an
MDS's internals, and ``vstore status`` / ``vstore top`` ask the same questions.

``ClusterSource.look()`` takes one look (membership, each member's status, the chunkserver
list, new events), at most once a second however many browsers poll; a sampler keeps one
look every ``history_interval_s`` for an hour, which the charts draw. Rates are averages
over ``RATE_WINDOW_S`` of the byte counters (a copy completes a whole chunk at a time).
Events: the leader's ring, renumbered here, so the page's ``after`` keeps working when the
leader changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgspec

from vstore.admin.model import assess, banner, chunk_health, cs_rates, rate
from vstore.admin.model import members as member_addresses
from vstore.errors import VStoreError
from vstore.wire import admin as a
from vstore.wire import mds as w

log = logging.getLogger(__name__)

RATE_WINDOW_S = 10.0
STATUS_DEADLINE_S = 2.0
ROOT_INODE = 1


@dataclass
class Look:
    at: float                     # time.time()
    mds: dict[str, dict[str, Any] | None]
    members: list[a.MdsMember] = field(default_factory=list)
    servers: list[a.CsInfo] = field(default_factory=list)
    summary: dict[str, int] = field(default_factory=dict)
    leader_ms: int = 0
    error: str = ""


class ClusterSource:
    def __init__(self, *, name: str, cluster_id: str, node_id: str, admin_link: Any, client_link: Any,
                 mds_addresses: list[str], history_interval_s: float = 5.0, history_s: float = 3600.0) -> None:
        self.name = name
        self.cluster_id = cluster_id
        self.node_id = node_id
        self.admin = admin_link
        self.client = client_link
        self.addresses = list(mds_addresses)
        self.history_interval_s = history_interval_s
        self._history: deque[dict[str, Any]] = deque(maxlen=max(2, int(history_s / history_interval_s)))
        self._looks: deque[Look] = deque(maxlen=max(2, int(RATE_WINDOW_S) + 2))
        self._last: Look | None = None
        self._look_lock = asyncio.Lock()
        self._events: deque[dict[str, Any]] = deque(maxlen=2000)
        self._event_seq = 0
        self._event_source = ""
        self._event_after = 0
        self._task: asyncio.Task[None] | None = None
        self._client_started = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._sampler(), name="admin-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.admin.close_connections()
        if self._client_started:
            await self.client.close()
        else:
            await self.client.close_connections()

    # ---- looking ----------------------------------------------------------------------------------

    async def look(self, max_age_s: float = 1.0) -> Look:
        async with self._look_lock:
            if self._last is not None and time.time() - self._last.at < max_age_s:
                return self._last
            look = await self._look()
            self._last = look
            self._looks.append(look)
            return look

    async def _status(self, address: str) -> dict[str, Any] | None:
        try:
            msg = await self.admin.status(address)
        except Exception:  # noqa: BLE001 - an MDS that does not answer is what the page shows
            return None
        return {f: msgspec.to_builtins(getattr(msg, f)) for f in msg.__struct_fields__}

    async def _look(self) -> Look:
        look = Look(at=time.time(), mds={})
        addresses = list(self.addresses)
        while addresses:  # the configured MDS, then every member their configuration names
            look.mds.update(zip(addresses, await asyncio.gather(*(self._status(x) for x in addresses))))
            members = member_addresses(look.mds)
            if members:
                self.addresses = members
            addresses = [x for x in members if x not in look.mds]
        if self.addresses and len(self.addresses) < len(look.mds):
            look.mds = {k: v for k, v in look.mds.items() if k in self.addresses}
        try:
            membership = await self.admin.call(a.MembershipRequest(), deadline_s=STATUS_DEADLINE_S * 2)
            listed = await self.admin.call(a.CsListRequest(), deadline_s=STATUS_DEADLINE_S * 2)
            assert isinstance(membership, a.MembershipReply) and isinstance(listed, a.CsListReply)
            look.members = list(membership.members)
            look.servers, look.summary, look.leader_ms = list(listed.servers), dict(listed.summary), listed.now_ms
            await self._fetch_events()
        except VStoreError as exc:
            look.error = f"the leader did not answer: {exc.message}"
        return look

    async def _fetch_events(self) -> None:
        reply = await self.admin.call(a.EventsRequest(after=self._event_after), deadline_s=STATUS_DEADLINE_S * 2)
        assert isinstance(reply, a.EventsReply)
        if reply.source != self._event_source:  # another leader, or the same one restarted
            self._event_source, self._event_after = reply.source, 0
            reply = await self.admin.call(a.EventsRequest(after=0), deadline_s=STATUS_DEADLINE_S * 2)
            assert isinstance(reply, a.EventsReply)
            known = {(e["time_ms"], e["event"], e["text"]) for e in self._events}
        else:
            known = set()
        for event in reply.events:
            self._event_after = max(self._event_after, event.seq)
            if (event.time_ms, event.event, event.text) in known:
                continue  # seen from this leader while it was a follower's ring... or before a restart
            self._event_seq += 1
            self._events.append({"seq": self._event_seq, "time": event.time_ms / 1000, "time_ms": event.time_ms,
                                 "level": event.level, "event": event.event, "text": event.text})

    async def _sampler(self) -> None:
        while True:
            try:
                look = await self.look(max_age_s=self.history_interval_s / 2)
                if not look.error:
                    self._history.append(self._point(look))
            except Exception:  # the sampler must outlive one bad look
                log.exception("admin.sample_failed")
            await asyncio.sleep(self.history_interval_s)

    # ---- rates ------------------------------------------------------------------------------------

    def _window(self, look: Look) -> tuple[Look | None, float]:
        for old in self._looks:
            if old is not look and old.leader_ms and look.leader_ms > old.leader_ms:
                return old, (look.leader_ms - old.leader_ms) / 1000
        return None, 0.0

    def _rates(self, look: Look) -> tuple[dict[int, tuple[float, float, float]], float]:
        old, seconds = self._window(look)
        if old is None:
            return {}, 0.0
        return (cs_rates(look.servers, old.servers, seconds),
                rate(look.summary.get("copied_bytes", 0), old.summary.get("copied_bytes", 0), seconds))

    def _point(self, look: Look) -> dict[str, Any]:
        per, rebuild = self._rates(look)
        live = [s for s in look.servers if s.state != "removed"]
        return {"t": look.at, "read_mib_s": round(sum(r for r, _, _ in per.values()), 3),
                "write_mib_s": round(sum(wr for _, wr, _ in per.values()), 3), "rebuild_mib_s": round(rebuild, 3),
                "used_bytes": sum(s.used_bytes for s in live), "capacity_bytes": sum(s.capacity_bytes for s in live)}

    # ---- the API's answers --------------------------------------------------------------------------

    async def cluster(self) -> dict[str, Any]:
        look = await self.look()
        health, reasons = assess(look.mds, look.summary)
        if look.error and health != "unavailable":
            health, reasons = "unavailable", [look.error, *reasons]
        leader = next(({"node_id": s["node_id"], "address": addr} for addr, s in look.mds.items()
                       if s and s.get("role") == "leader"), None)
        mine = next((s for s in look.mds.values() if s and s.get("node_id") == self.node_id), None)
        point = self._point(look)
        c = look.summary
        waiting = sum(v for k, v in c.items() if k.startswith("backlog_"))
        return {"name": self.name, "id": self.cluster_id, "health": banner(health, c), "reasons": reasons,
                "served_by": {"node_id": self.node_id, "role": mine["role"] if mine else "unknown"},
                "leader": leader, "chunks": chunk_health(c),
                "rebuild": {"waiting": waiting, "in_flight": c.get("orders_in_flight", 0),
                            "copied_bytes": c.get("copied_bytes", 0), "mib_s": point["rebuild_mib_s"]},
                "space": {"capacity_bytes": point["capacity_bytes"], "used_bytes": point["used_bytes"]},
                "io": {"read_mib_s": point["read_mib_s"], "write_mib_s": point["write_mib_s"]},
                "safe_mode": bool(c.get("safe_mode")), "storm_brake": bool(c.get("storm_brake")),
                "time": look.at}

    async def mds(self) -> dict[str, Any]:
        look = await self.look()
        members = {m.node_id: m for m in look.members}
        leader_commit = max((s.get("commit", 0) for s in look.mds.values() if s and s.get("role") == "leader"),
                            default=0)
        out = []
        for address, s in look.mds.items():
            if s is None:
                node = next((m for m in look.members if m.address == address), None)
                out.append({"node_id": node.node_id if node else "?", "address": address, "role": "down",
                            "voter": bool(node and node.voter), "term": 0, "commit": 0, "applied": 0, "lag": 0,
                            "active": False})
                continue
            member = members.get(s["node_id"])
            role = s["role"] if member is None or member.voter else "learner"
            out.append({"node_id": s["node_id"], "address": address, "role": role,
                        "voter": bool(member.voter) if member else False, "term": s["term"], "commit": s["commit"],
                        "applied": s["applied"], "lag": max(0, leader_commit - s["applied"]),
                        "active": bool(member.active) if member else False})
        return {"members": out}

    async def chunkservers(self) -> dict[str, Any]:
        look = await self.look()
        per, _ = self._rates(look)
        out = []
        for cs in look.servers:
            if cs.state == "removed":
                continue
            read, write, _copy = per.get(cs.cs_id, (0.0, 0.0, 0.0))
            out.append({"cs_id": cs.cs_id, "node_id": cs.node_id, "address": cs.address, "host": cs.host,
                        "rack": cs.rack, "state": cs.state, "status": cs.status, "capacity_bytes": cs.capacity_bytes,
                        "used_bytes": cs.used_bytes, "chunks": cs.chunks, "read_mib_s": round(read, 3),
                        "write_mib_s": round(write, 3),
                        "last_heartbeat_s": -1 if cs.last_heartbeat_ms < 0 else cs.last_heartbeat_ms / 1000,
                        "drain_left": cs.drain_left, "sole": cs.sole})
        return {"chunkservers": out}

    async def events(self, after: int) -> dict[str, Any]:
        await self.look()
        events = [e for e in self._events if e["seq"] > after]
        return {"events": events[-a.EVENTS_MAX:], "last_seq": self._event_seq}

    def history(self) -> dict[str, Any]:
        return {"interval_s": self.history_interval_s, "points": list(self._history)}

    # ---- actions -------------------------------------------------------------------------------------

    async def _inode(self, path: str) -> int:
        from vstore.errors import NotFound, UsageError
        if not path.startswith("/"):
            raise UsageError(f"{path!r}: a path from the cluster's root, e.g. /vm-disks")
        inode = ROOT_INODE
        for part in [p for p in path.split("/") if p]:
            try:
                inode = (await self.client.lookup(inode, part.encode())).inode
            except NotFound:
                raise NotFound(f"no such file or directory in the cluster: {path}") from None
        return inode

    async def get_policy(self, path: str) -> dict[str, Any]:
        reply = await self.client.call(w.GetPolicyRequest(uid=0, gid=0, inode=await self._inode(path)))
        assert isinstance(reply, w.PolicyReply)
        return {"path": path, "replicas": reply.policy, "inherited": reply.inherited,
                "exclusive_write": reply.exclusive_write}

    async def set_policy(self, path: str, replicas: str | None, exclusive_write: bool | None) -> dict[str, Any]:
        inode = await self._inode(path)
        await self._ensure_client()
        await self.client.set_policy(inode, policy=replicas, exclusive_write=exclusive_write)
        return await self.get_policy(path)

    async def set_cs_state(self, cs_id: int, state: str) -> dict[str, Any]:
        await self.admin.call(w.SetCsStateRequest(cs_id=cs_id, state=state))
        self._last = None  # the next look shows it
        return {"cs_id": cs_id, "state": state}

    async def _ensure_client(self) -> None:
        """Mutations need a client session (exactly-once lanes): opened at the first action."""
        if not self._client_started:
            await self.client.start()
            self._client_started = True
