"""``vstore status -c CONFIG [--json]``: the cluster's health in one look.

Asks every MDS the config lists for its status (one attempt each, a short deadline) and reads
the chunk health from the leader. Exit codes: 0 healthy, 1 degraded, 2 unavailable.

* unavailable: no MDS answers as the leader (no quorum, or none reachable);
* degraded: an MDS is down, a chunkserver is not online, chunks are below their replication
  target or lost, a rebuild is under way, or the leader is still in safe mode;
* healthy: none of that.

The text view lists each MDS (role, term, commit, applied, lag behind the leader) and the
chunk counters; ``--json`` prints the same as one object (``health``, ``reasons``, ``mds``,
``chunks``). The classification is the pure ``vstore.admin.model.assess``, shared with ``top``
and the dashboard.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from vstore.admin.model import assess
from vstore.admin.model import members as member_addresses
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


async def collect(config: Any) -> tuple[dict[str, dict[str, Any] | None], dict[str, int]]:
    import msgspec
    addresses = [str(a) for a in config.cluster.mds]
    link = mds_link(config, "status", attempt_deadline_s=DEADLINE_S)
    mds: dict[str, dict[str, Any] | None] = {}
    try:
        async def one(address: str) -> dict[str, Any] | None:
            try:
                reply = await link.status(address)
                return {f: msgspec.to_builtins(getattr(reply, f)) for f in reply.__struct_fields__}
            except Exception:  # noqa: BLE001 - an MDS that does not answer is what we report
                return None
        while addresses:
            mds.update(zip(addresses, await asyncio.gather(*(one(a) for a in addresses))))
            # the configuration the MDS applied names every member, also those the config
            # file does not list (added later): ask them too; members removed since the
            # config was written are not asked again
            members = member_addresses(mds)
            addresses = [a for a in members if a not in mds]
        if members:
            mds = {a: s for a, s in mds.items() if a in members}
    finally:
        await link.close_connections()
    leader = next((s for s in mds.values() if s is not None and s.get("role") == "leader"), None)
    return mds, dict(leader.get("chunks") or {}) if leader else {}


def _status(args: argparse.Namespace) -> int:
    config = load_client_config(args.config)
    quiet_transport()  # an MDS that does not answer is in the report itself
    mds, chunks = asyncio.run(collect(config))
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
        if backlog or chunks.get("orders_in_flight"):
            print(f"  rebuild: {chunks.get('orders_in_flight', 0)} order(s) in flight; "
                  f"{chunks.get('copies_committed', 0)} copies ({chunks.get('copied_bytes', 0) / (1 << 20):.1f} MiB) "
                  f"made by this leader; vstore top shows the rate")
    return EXIT[health]
