"""What the operator tools conclude from the cluster's numbers. Pure: no I/O, no clock.

``vstore status``, ``vstore top`` and the dashboard all classify with these functions, so
the exit code, the terminal and the page can never disagree.

* ``assess``: healthy / degraded / unavailable with the reasons (``vstore status``'s exit code);
* ``banner``: the dashboard's level, which adds *urgent* (data at risk: a chunk with one copy
  left, lost chunks, the storm brake) on top of degraded;
* ``chunk_health``: healthy / degraded / urgent / lost / rebuilding counts;
* ``rate`` and ``cs_rates``: MiB/s from two readings of byte counters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MIB = 1024 * 1024


def assess(mds: Mapping[str, Mapping[str, Any] | None], chunks: Mapping[str, int]) -> tuple[str, list[str]]:
    """(health, reasons) from each MDS's status (None: no answer) and the leader's chunk
    counters."""
    leaders = [a for a, s in mds.items() if s is not None and s.get("role") == "leader"]
    if not leaders:
        answering = sum(1 for s in mds.values() if s is not None)
        return "unavailable", [f"no MDS leader ({answering} of {len(mds)} MDS answer)"]
    reasons = [f"MDS {a} does not answer" for a, s in mds.items() if s is None]
    raft = mds[leaders[0]].get("raft") or {}  # type: ignore[union-attr]
    for learner in raft.get("learners") or ():
        reasons.append(f"MDS {learner} is a learner, not yet a voter (catching up, or not running)")
    total, online = chunks.get("cs_total", 0), chunks.get("cs_online", 0)
    if total == 0:
        reasons.append("no chunkservers registered")
    elif online < total:
        reasons.append(f"{total - online} of {total} chunkservers not online")
    if chunks.get("cs_full"):
        reasons.append(f"{chunks['cs_full']} chunkserver(s) full (90 % or more): no new replicas go there; "
                       "free space or add chunkservers")
    if chunks.get("cs_nearfull"):
        reasons.append(f"{chunks['cs_nearfull']} chunkserver(s) nearly full (85 % or more)")
    if chunks.get("lost"):
        reasons.append(f"{chunks['lost']} chunk(s) lost: no good replica")
    for key, what in (("backlog_last_copy", "with one copy left"), ("backlog_below_min", "below their minimum"),
                      ("backlog_below_target", "below their target")):
        if chunks.get(key):
            reasons.append(f"{chunks[key]} chunk(s) {what}")
    if chunks.get("storm_brake"):
        reasons.append("storm brake: too many chunkservers down at once, automatic rebuild stopped "
                       "(bring them back, or rm-node the dead ones)")
    if chunks.get("safe_mode"):
        reasons.append("the leader is in safe mode (waiting for chunkserver reports)")
    return ("degraded" if reasons else "healthy"), reasons


def members(mds: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """The member addresses of the configuration the leader applied (else the most advanced
    MDS's) among the status replies; empty when none names its members."""
    answers = sorted((s for s in mds.values() if s is not None),
                     key=lambda s: (s.get("role") == "leader", s.get("applied", 0)), reverse=True)
    return list((answers[0].get("members") or {}).values()) if answers else []


def banner(health: str, chunks: Mapping[str, int]) -> str:
    """The dashboard's level: ``assess``'s, made *urgent* when data is at risk."""
    if health == "degraded" and (chunks.get("lost") or chunks.get("backlog_last_copy") or chunks.get("storm_brake")):
        return "urgent"
    return health


def chunk_health(chunks: Mapping[str, int]) -> dict[str, int]:
    """Counts from the leader's repair summary: urgent = one copy left, degraded = below
    the target or the minimum, rebuilding = a copy in flight."""
    total = chunks.get("chunks_total", 0)
    urgent = chunks.get("backlog_last_copy", 0)
    degraded = chunks.get("backlog_below_min", 0) + chunks.get("backlog_below_target", 0)
    lost = chunks.get("lost", 0)
    return {"total": total, "healthy": max(0, total - urgent - degraded - lost), "degraded": degraded,
            "urgent": urgent, "lost": lost, "rebuilding": chunks.get("rebuilding", 0)}


def rate(new: int, old: int, seconds: float) -> float:
    """MiB/s of a byte counter read twice ``seconds`` apart (0 for a counter that restarted)."""
    return max(0, new - old) / MIB / seconds if seconds > 0 else 0.0


RATE_GAUGES = ("read_bytes", "written_bytes", "copied_bytes")


def cs_rates(now: Iterable[Any], before: Iterable[Any], seconds: float) -> dict[int, tuple[float, float, float]]:
    """Per chunkserver (read, write, copy) MiB/s between two chunkserver lists (CsInfo:
    ``cs_id`` and heartbeat ``gauges``); servers absent from ``before`` are left out."""
    old = {s.cs_id: s.gauges for s in before}
    out: dict[int, tuple[float, float, float]] = {}
    for server in now:
        previous = old.get(server.cs_id)
        if previous is not None:
            read, write, copy = (rate(server.gauges.get(k, 0), previous.get(k, 0), seconds) for k in RATE_GAUGES)
            out[server.cs_id] = (read, write, copy)
    return out
