"""``vstore status -c CONFIG [--json]``: the cluster's health in one look.

Asks every MDS the config lists for its status (one attempt each, a short deadline) and reads
the chunk health from the leader. Exit codes: 0 healthy, 1 degraded, 2 unavailable.

* unavailable: no MDS answers as the leader (no quorum, or none reachable);
* degraded: an MDS is down, a chunkserver is not online, chunks are below their replication
  target or lost, a rebuild is under way, or the leader is still in safe mode;
* healthy: none of that.

The text view lists each MDS (role, term, commit, applied, lag behind the leader) and the
chunk counters; ``--json`` prints the same as one object (``health``, ``reasons``, ``mds``,
``chunks``). The classification is a pure function (``assess``), shared with the dashboard.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from vstore.cli.tools import mds_link, quiet_transport
from vstore.config import load_client_config

EXIT = {"healthy": 0, "degraded": 1, "unavailable": 2}
DEADLINE_S = 3.0


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("status", help="cluster health summary (exit 0 healthy, 1 degraded, 2 unavailable)",
                            description="Cluster health: exit 0 healthy, 1 degraded, 2 unavailable.")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="any node's or a client's config")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_status)


def assess(mds: dict[str, dict[str, Any] | None], chunks: dict[str, int]) -> tuple[str, list[str]]:
    """(health, reasons) from each MDS's status (None: no answer) and the leader's chunk
    counters. Pure."""
    leaders = [a for a, s in mds.items() if s is not None and s.get("role") == "leader"]
    if not leaders:
        answering = sum(1 for s in mds.values() if s is not None)
        return "unavailable", [f"no MDS leader ({answering} of {len(mds)} MDS answer)"]
    reasons = [f"MDS {a} does not answer" for a, s in mds.items() if s is None]
    total, online = chunks.get("cs_total", 0), chunks.get("cs_online", 0)
    if total == 0:
        reasons.append("no chunkservers registered")
    elif online < total:
        reasons.append(f"{total - online} of {total} chunkservers not online")
    if chunks.get("lost"):
        reasons.append(f"{chunks['lost']} chunk(s) lost: no good replica")
    for key, what in (("backlog_last_copy", "with one copy left"), ("backlog_below_min", "below their minimum"),
                      ("backlog_below_target", "below their target")):
        if chunks.get(key):
            reasons.append(f"{chunks[key]} chunk(s) {what}")
    if chunks.get("safe_mode"):
        reasons.append("the leader is in safe mode (waiting for chunkserver reports)")
    return ("degraded" if reasons else "healthy"), reasons


async def _collect(config: Any) -> tuple[dict[str, dict[str, Any] | None], dict[str, int]]:
    import msgspec
    addresses = [str(a) for a in config.cluster.mds]
    link = mds_link(config, "status", attempt_deadline_s=DEADLINE_S)
    try:
        async def one(address: str) -> dict[str, Any] | None:
            try:
                reply = await link.status(address)
                return {f: msgspec.to_builtins(getattr(reply, f)) for f in reply.__struct_fields__}
            except Exception:  # noqa: BLE001 - an MDS that does not answer is what we report
                return None
        answers = await asyncio.gather(*(one(a) for a in addresses))
    finally:
        await link.close_connections()
    mds = dict(zip(addresses, answers))
    leader = next((s for s in answers if s is not None and s.get("role") == "leader"), None)
    return mds, dict(leader.get("chunks") or {}) if leader else {}


def _status(args: argparse.Namespace) -> int:
    config = load_client_config(args.config)
    quiet_transport()  # an MDS that does not answer is in the report itself
    mds, chunks = asyncio.run(_collect(config))
    health, reasons = assess(mds, chunks)
    if args.json:
        print(json.dumps({"cluster": config.cluster.name, "health": health, "reasons": reasons, "mds": mds,
                          "chunks": chunks}, indent=2))
        return EXIT[health]
    leader_commit = max((s.get("commit", 0) for s in mds.values() if s and s.get("role") == "leader"), default=0)
    print(f"cluster {config.cluster.name}: {health.upper()}" + (f" ({'; '.join(reasons)})" if reasons else ""))
    for address, s in mds.items():
        if s is None:
            print(f"  mds {address:<22} DOWN")
        else:
            print(f"  mds {address:<22} {s['node_id']:<10} {s['role']:<9} term {s['term']:<4} commit {s['commit']:<8} "
                  f"applied {s['applied']:<8} lag {max(0, leader_commit - s['applied'])}")
    if chunks:
        backlog = ", ".join(f"{k.removeprefix('backlog_')} {v}" for k, v in sorted(chunks.items())
                            if k.startswith("backlog_") and v)
        print(f"  chunkservers {chunks.get('cs_online', 0)}/{chunks.get('cs_total', 0)} online; lost chunks "
              f"{chunks.get('lost', 0)}; repair backlog {backlog or 'none'}")
    return EXIT[health]
