"""``vstore top -c CONFIG``: a live terminal view of the cluster, refreshed every second.

One screen: the health line (``vstore status``'s classification), each MDS (role, term,
commit and applied index, lag behind the leader), each chunkserver (state and liveness,
space, chunks, read / write / rebuild rates from its heartbeats, time since its last
heartbeat, and for a draining one what it still has to move), the chunk health counters,
and the rebuild: chunks waiting by urgency, copies in flight, bytes copied and the rate.

Rates are differences between looks, averaged over the last 10 s (a copy completes a whole
chunk at a time), so the first frame shows none. ``--once`` prints
one frame (two looks ``--interval-s`` apart, so it has rates) and exits, for scripts and
logs; ``--iterations N`` stops after N frames. Ctrl-C ends it. On a terminal each frame
replaces the last; otherwise frames follow one another.

The frame is a pure function of two snapshots (``render``).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from vstore.admin.model import assess, cs_rates, rate
from vstore.cli.status import DEADLINE_S, collect
from vstore.cli.tools import mds_link, quiet_transport
from vstore.config import load_client_config
from vstore.errors import UsageError, VStoreError

MIB = 1024 * 1024
#: rates shown are averages over this long (or since the first look)
RATE_WINDOW_S = 10.0
GIB = 1024 * MIB


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("top", help="live terminal view of MDS, chunkservers, chunk health and rebuilds",
                            description="A live view of the cluster: MDS roles and lag, chunkserver space and I/O, "
                                        "chunk health, rebuild progress and rate.")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="any node's or a client's config")
    p.add_argument("--interval-s", type=float, default=1.0, help="seconds between frames (default 1)")
    p.add_argument("--once", action="store_true", help="print one frame (with rates) and exit")
    p.add_argument("--iterations", type=int, default=0, help="stop after this many frames (default: run until ^C)")
    p.set_defaults(handler=_top)


@dataclass
class Snapshot:
    """One look at the cluster."""

    taken_s: float
    cluster: str
    mds: dict[str, dict[str, Any] | None]
    chunks: dict[str, int]
    servers: list[Any] = field(default_factory=list)
    #: the leader's clock (ms) when it listed the chunkservers; 0 when it could not
    leader_ms: int = 0
    error: str = ""


def rates(now: Snapshot, before: Snapshot | None) -> tuple[dict[int, tuple[float, float, float]], float | None]:
    """Per chunkserver (read, write, copy) MiB/s and the cluster's rebuild MiB/s between two
    looks (None without an earlier one). Pure."""
    if before is None or not now.leader_ms or not before.leader_ms or now.leader_ms <= before.leader_ms:
        return {}, None
    seconds = (now.leader_ms - before.leader_ms) / 1000
    return (cs_rates(now.servers, before.servers, seconds),
            rate(now.chunks.get("copied_bytes", 0), before.chunks.get("copied_bytes", 0), seconds))


def _size(n: int) -> str:
    return f"{n / GIB:.1f}G" if n >= GIB else f"{n / MIB:.0f}M"


def render(now: Snapshot, before: Snapshot | None = None, *, width: int = 160) -> str:
    """The frame for ``now`` (rates against ``before``). Pure."""
    health, reasons = assess(now.mds, now.chunks)
    clock = time.strftime("%H:%M:%S", time.localtime(now.taken_s))
    lines = [f"vstore top - cluster {now.cluster}: {health.upper()}  {clock}"]
    lines += [f"  ! {r}" for r in reasons]
    if now.error:
        lines.append(f"  ! {now.error}")
    leader_commit = max((s.get("commit", 0) for s in now.mds.values() if s and s.get("role") == "leader"), default=0)
    lines += ["", f"{'MDS':<22} {'NODE':<12} {'ROLE':<9} {'TERM':>5} {'COMMIT':>9} {'APPLIED':>9} {'LAG':>6}"]
    for address, s in now.mds.items():
        if s is None:
            lines.append(f"{address:<22} {'?':<12} {'DOWN':<9}")
        else:
            lines.append(f"{address:<22} {s['node_id']:<12} {s['role']:<9} {s['term']:>5} {s['commit']:>9} "
                         f"{s['applied']:>9} {max(0, leader_commit - s['applied']):>6}")
    per, rebuild = rates(now, before)
    lines += ["", f"{'CS':>3} {'NODE':<16} {'HOST':<12} {'STATE':<9} {'STATUS':<8} {'USED':>7} {'SIZE':>7} "
                  f"{'USE%':>5} {'CHUNKS':>7} {'RD/s':>6} {'WR/s':>6} {'CP/s':>6} {'BEAT':>6}"]
    for cs in now.servers:
        if cs.state == "removed":
            continue
        rd, wr, cp = (f"{x:.1f}" for x in per[cs.cs_id]) if cs.cs_id in per else ("-", "-", "-")
        used = f"{100 * cs.used_bytes / cs.capacity_bytes:.0f}" if cs.capacity_bytes else "-"
        beat = "never" if cs.last_heartbeat_ms < 0 else f"{cs.last_heartbeat_ms / 1000:.1f}s"
        lines.append(f"{cs.cs_id:>3} {cs.node_id[:16]:<16} {cs.host[:12]:<12} {cs.state:<9} {cs.status:<8} "
                     f"{_size(cs.used_bytes):>7} {_size(cs.capacity_bytes):>7} {used:>5} {cs.chunks:>7} "
                     f"{rd:>6} {wr:>6} {cp:>6} {beat:>6}")
        if cs.state == "draining":
            lines.append(f"    draining: {cs.drain_left} chunk(s) still need copies elsewhere, {cs.sole} have no "
                         f"other copy")
    c = now.chunks
    if c:
        backlog = {k.removeprefix("backlog_"): v for k, v in sorted(c.items()) if k.startswith("backlog_") and v}
        waiting = sum(backlog.values())
        lines += ["", f"chunks: lost {c.get('lost', 0)}; waiting for repair {waiting}"
                      + (f" ({', '.join(f'{k} {v}' for k, v in backlog.items())})" if backlog else "")
                      + (" [safe mode]" if c.get("safe_mode") else "")
                      + (" [storm brake: automatic rebuild stopped]" if c.get("storm_brake") else "")]
        rate = f"{rebuild:.1f} MiB/s" if rebuild is not None else "-"
        lines.append(f"rebuild: now {rate}; {c.get('orders_in_flight', 0)} order(s) in flight; this leader made "
                     f"{c.get('copies_committed', 0)} copies, {c.get('copied_bytes', 0) / MIB:.1f} MiB")
    return "\n".join(line[:width] for line in lines) + "\n"


async def look(config: Any, link: Any) -> Snapshot:
    from vstore.wire import admin as a
    mds, chunks = await collect(config)
    snap = Snapshot(taken_s=time.time(), cluster=config.cluster.name, mds=mds, chunks=chunks)
    try:
        reply = await link.call(a.CsListRequest(), deadline_s=DEADLINE_S * 2)
        assert isinstance(reply, a.CsListReply)
        snap.servers, snap.leader_ms, snap.chunks = list(reply.servers), reply.now_ms, dict(reply.summary)
    except VStoreError as exc:
        snap.error = f"no chunkserver list from the leader: {exc.message}"
    return snap


async def _run(config: Any, args: argparse.Namespace) -> int:
    import shutil
    link = mds_link(config, "top", attempt_deadline_s=DEADLINE_S)
    tty = sys.stdout.isatty() and not args.once
    frames = 1 if args.once else args.iterations
    # rates are averages over the last RATE_WINDOW_S: copies complete a whole chunk at a time
    history: deque[Snapshot] = deque(maxlen=max(2, math.ceil(RATE_WINDOW_S / args.interval_s) + 1))
    shown = 0
    try:
        if args.once:
            history.append(await look(config, link))
            await asyncio.sleep(args.interval_s)
        while True:
            now = await look(config, link)
            before = history[0] if history else None
            frame = render(now, before, width=shutil.get_terminal_size((120, 40)).columns if tty else 200)
            sys.stdout.write(("\033[H\033[2J" + frame) if tty else frame + ("\n" if frames != 1 else ""))
            sys.stdout.flush()
            history.append(now)
            shown += 1
            if frames and shown >= frames:
                return 0
            await asyncio.sleep(args.interval_s)
    finally:
        await link.close_connections()


def _top(args: argparse.Namespace) -> int:
    if args.interval_s <= 0 or args.iterations < 0:
        raise UsageError("--interval-s must be positive and --iterations not negative")
    config = load_client_config(args.config)
    quiet_transport()
    try:
        return asyncio.run(_run(config, args))
    except KeyboardInterrupt:
        return 0
