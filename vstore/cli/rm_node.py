"""``vstore rm-node -c CONFIG ID [--force]``: take a chunkserver or an MDS out of the cluster.

``ID`` is a node id (``cs-host3-9402``, ``mds-2``) or a chunkserver's number (``cs 3``: ``3``).

* A chunkserver is drained first: marked ``draining`` (it gets no new chunks), the leader
  copies each of its chunks to other servers until every chunk has its target copies
  elsewhere, then drops the drained copies; only when none is left is it marked removed.
  Progress is printed as it goes. If the drain cannot finish (no other server may take a
  copy: too few hosts for the policy, or the only copy is on a dead server), it stops after
  ``--stall-s`` without progress, says why, and leaves the server draining (``--cancel``
  takes it back). ``--no-wait`` starts the drain and returns.
* ``--force`` removes a chunkserver at once: its replicas are dropped from every chunk, and
  chunks whose only copy it held are lost (the command says how many before it acts).
* An MDS is removed through a Raft configuration change. Refused when the voters left that
  answer the leader would not be a majority of the new configuration (unless ``--force``),
  and always for the last voter. Stop its process afterwards.

Exit codes: 0 removed (or, with ``--no-wait``/``--cancel``, done as asked), 1 refused or
stalled, 2 usage errors (an unknown ID among them).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from vstore.cli.tools import mds_link, quiet_transport
from vstore.config import load_client_config
from vstore.errors import UsageError, UserError, VStoreError

MIB = 1024 * 1024
POLL_S = 1.0


class Refused(UserError):
    exit_code = 1


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("rm-node", help="drain and remove a chunkserver, or remove an MDS",
                            description="Drain and remove a chunkserver (its chunks copied elsewhere first), or "
                                        "remove an MDS from the Raft configuration.")
    p.add_argument("node_id", metavar="ID", help="node id (or a chunkserver's number)")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="any node's or a client's config")
    p.add_argument("--force", action="store_true",
                   help="remove at once: a chunkserver's sole copies are lost; an MDS even if quorum breaks")
    p.add_argument("--no-wait", action="store_true", help="start the drain and return")
    p.add_argument("--cancel", action="store_true", help="stop draining a chunkserver: it takes chunks again")
    p.add_argument("--stall-s", type=float, default=60.0,
                   help="give up a drain after this long without progress (default 60)")
    p.set_defaults(handler=_rm_node)


def resolve(node_id: str, mds: dict[str, str], servers: list[Any]) -> tuple[str, Any]:
    """("mds", node id) or ("cs", CsInfo) for what the operator named. Pure."""
    if node_id in mds:
        return "mds", node_id
    for cs in servers:
        if cs.node_id == node_id or (node_id.isdigit() and cs.cs_id == int(node_id)):
            if cs.state == "removed":
                raise UsageError(f"chunkserver {cs.node_id} (cs {cs.cs_id}) was removed already")
            return "cs", cs
    known = sorted(mds) + [cs.node_id for cs in servers if cs.state != "removed"]
    raise UsageError(f"no MDS or chunkserver {node_id!r} in this cluster (nodes: {', '.join(known) or 'none'})")


def drain_line(cs: Any, copied_mib: float, rate_mib_s: float) -> str:
    """One progress line of a drain. Pure."""
    return (f"draining cs {cs.cs_id} ({cs.node_id}, {cs.status}): {cs.chunks} chunk(s) left on it, "
            f"{cs.drain_left} still need copies elsewhere; copied {copied_mib:.1f} MiB ({rate_mib_s:.1f} MiB/s)")


def stall_reason(cs: Any, servers: list[Any]) -> str:
    """Why a drain makes no progress, as well as the leader's counts tell. Pure."""
    if cs.sole:
        where = "a server that is down" if cs.status in ("offline", "failed") else "it"
        return (f"{cs.sole} chunk(s) have their only good copy on {where}: bring it back so they can be copied, "
                f"or accept losing them with --force")
    others = [s for s in servers if s.cs_id != cs.cs_id and s.state == "active" and s.status == "online"]
    hosts = {s.host for s in others}
    return (f"{cs.drain_left} chunk(s) cannot get their target copies without it: {len(others)} other online "
            f"chunkserver(s) on {len(hosts)} host(s) remain. Add a chunkserver, lower the replication "
            f"(vstore set-attr PATH replicas=N:min), or --force to remove it anyway (those chunks keep the copies "
            f"they have elsewhere)")


async def _cs_list(link: Any) -> Any:
    from vstore.wire import admin as a
    reply = await link.call(a.CsListRequest())
    assert isinstance(reply, a.CsListReply)
    return reply


async def _remove_mds(link: Any, node_id: str, force: bool) -> int:
    from vstore.errors import InvalidArgument, NotFound
    from vstore.wire import admin as a
    try:
        reply = await link.call(a.RemoveMdsRequest(node_id=node_id, force=force))
    except (InvalidArgument, NotFound) as exc:
        raise Refused(f"MDS {node_id} not removed: {exc.message}") from None
    assert isinstance(reply, a.MembershipReply)
    voters = [m.node_id for m in reply.members if m.voter]
    print(f"MDS {node_id} removed; voters now: {', '.join(voters)}")
    if len(voters) % 2 == 0:
        print(f"note: {len(voters)} voters tolerate no more failures than {len(voters) - 1}; add one "
              f"(vstore add-node --role mds) to get an odd number")
    print(f"stop its process now (e.g. systemctl stop vstore-mds@{node_id})")
    return 0


async def _set_state(link: Any, cs: Any, state: str, *, force: bool = False) -> None:
    from vstore.wire import mds as w
    await link.call(w.SetCsStateRequest(cs_id=cs.cs_id, state=state, force=force))


async def _remove_cs(link: Any, cs: Any, args: argparse.Namespace) -> int:
    if args.cancel:
        await _set_state(link, cs, "active")
        print(f"chunkserver {cs.node_id} (cs {cs.cs_id}) is active again")
        return 0
    if args.force:
        lost = f"; {cs.sole} chunk(s) whose only copy it holds are lost" if cs.sole else ""
        await _set_state(link, cs, "removed", force=True)
        print(f"chunkserver {cs.node_id} (cs {cs.cs_id}) removed at once: its {cs.chunks} replica(s) dropped{lost}")
        return 0
    if cs.state != "draining":
        await _set_state(link, cs, "draining")
    if args.no_wait:
        print(f"chunkserver {cs.node_id} (cs {cs.cs_id}) is draining: {cs.chunks} chunk(s) on it; run vstore "
              f"rm-node {cs.node_id} again to wait for it and remove it")
        return 0
    loop = asyncio.get_running_loop()
    first = await _cs_list(link)
    start_rounds = first.summary.get("rounds", 0)
    start_bytes, start_t = first.summary.get("copied_bytes", 0), loop.time()
    best, last_progress = None, loop.time()
    tty = sys.stderr.isatty()
    while True:
        reply = await _cs_list(link)
        current = next((s for s in reply.servers if s.cs_id == cs.cs_id), None)
        if current is None:
            raise Refused(f"chunkserver {cs.cs_id} disappeared from the cluster's list")
        # a tally counted after the drain began: two repair rounds later at the latest
        fresh = reply.summary.get("rounds", 0) >= start_rounds + 2
        copied = (reply.summary.get("copied_bytes", 0) - start_bytes) / MIB
        rate = copied / max(1e-3, loop.time() - start_t)
        line = drain_line(current, copied, rate)
        print(("\r" + line + "\033[K") if tty else line, file=sys.stderr, end="" if tty else "\n", flush=True)
        if fresh and current.chunks == 0:
            break
        key = (current.chunks, current.drain_left)
        if key != best:
            best, last_progress = key, loop.time()
        elif fresh and loop.time() - last_progress > args.stall_s and not reply.summary.get("orders_in_flight"):
            if tty:
                print(file=sys.stderr)
            raise Refused(f"the drain of {cs.node_id} made no progress for {args.stall_s:g} s: "
                          f"{stall_reason(current, list(reply.servers))}. It stays draining "
                          f"(vstore rm-node --cancel {cs.node_id} takes it back)")
        await asyncio.sleep(POLL_S)
    if tty:
        print(file=sys.stderr)
    await _set_state(link, cs, "removed")
    print(f"chunkserver {cs.node_id} (cs {cs.cs_id}) drained and removed; copied {copied:.1f} MiB in "
          f"{loop.time() - start_t:.1f} s. Stop its process now (e.g. systemctl stop vstore-cs@{cs.node_id})")
    return 0


async def _run(config: Any, args: argparse.Namespace) -> int:
    from vstore.wire import admin as a
    link = mds_link(config, "rm-node", deadline_s=30.0)
    try:
        try:
            membership = await link.call(a.MembershipRequest())
            servers = await _cs_list(link)
        except VStoreError as exc:
            raise Refused(f"cannot reach the cluster's leader: {exc.message}") from None
        assert isinstance(membership, a.MembershipReply)
        kind, target = resolve(args.node_id, {m.node_id: m.address for m in membership.members},
                               list(servers.servers))
        if kind == "mds":
            if args.cancel or args.no_wait:
                raise UsageError("--cancel and --no-wait are for chunkservers")
            return await _remove_mds(link, target, args.force)
        return await _remove_cs(link, target, args)
    finally:
        await link.close_connections()


def _rm_node(args: argparse.Namespace) -> int:
    if args.force and args.cancel:
        raise UsageError("--force and --cancel contradict each other")
    if args.stall_s <= 0:
        raise UsageError(f"--stall-s {args.stall_s:g}: must be positive")
    config = load_client_config(args.config)
    quiet_transport()
    return asyncio.run(_run(config, args))
