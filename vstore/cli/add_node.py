"""``vstore add-node --role mds|cs --join HOST:PORT --data DIR --listen HOST:PORT``: join a node.

Asks any MDS of the cluster (``--join``) who the cluster is (its id comes in the first,
unauthenticated frame of every connection; everything after that is authenticated with
the cluster secret), then:

* ``--role cs``: registers the chunkserver with the leader (it gets its cs id, kept in
  ``DIR/cs-id``) and writes ``DIR/cs.toml``;
* ``--role mds``: claims DIR for the new MDS (an empty Raft log that belongs to this node
  id and cluster), adds it to the Raft configuration as a learner and writes ``DIR/mds.toml``.
  Once it runs it receives the log (or a snapshot) from the leader, and the leader
  promotes it to voter by itself as soon as it has caught up (vstore/metadata/membership.py).

Either way ``vstore serve -c DIR/<role>.toml`` then runs it. The config lists every MDS of
the configuration the leader reported (the new one included), so the node knows them all.

The secret comes from ``--secret-file`` (copied from the first MDS) or, without one, is asked
for (64 hex digits: ``xxd -p -c 64 cluster.secret`` on a node that has it) and written to
``DIR/cluster.secret`` (0600). Refused with one line and nothing changed: a data dir that is
not empty (one that holds a node names it), a wrong secret, an unreachable MDS, a node id
or an MDS address the cluster knows already (joining twice), bad addresses or labels.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import socket
from pathlib import Path
from typing import Any

from vstore.cli.tools import quiet_transport, restore_dir
from vstore.config import Address, load_config
from vstore.errors import UsageError, UserError, VStoreError

CONNECT_TIMEOUT_S = 10.0


class JoinFailed(UserError):
    exit_code = 1


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("add-node", help="join an MDS or a chunkserver to an existing cluster",
                            description="Join an MDS (a learner, promoted to voter once caught up) or a "
                                        "chunkserver to a running cluster.")
    p.add_argument("--role", required=True, choices=["mds", "cs"])
    p.add_argument("--join", required=True, metavar="HOST:PORT", help="any MDS of the cluster")
    p.add_argument("--data", required=True, metavar="DIR", help="the new node's data directory (empty)")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="address the new node serves on")
    p.add_argument("--host", default="", metavar="H", help="failure-domain label (default: this machine's hostname)")
    p.add_argument("--rack", default="", metavar="R", help="rack label (default: none)")
    p.add_argument("--node-id", help="the node's id (default: <role>-<host>-<port>)")
    p.add_argument("--secret-file", metavar="F", help="the cluster secret (asked for when absent)")
    p.set_defaults(handler=_add_node)


def _parse(flag: str, text: str) -> Address:
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise UsageError(f"{flag} {text!r} {exc}") from None


def _read_secret(args: argparse.Namespace, data: Path) -> tuple[bytes, Path]:
    from vstore.net import read_secret_file
    if args.secret_file:
        path = Path(os.path.abspath(args.secret_file))
        return read_secret_file(str(path)), path
    text = getpass.getpass("cluster secret (64 hex digits): ").strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise UsageError("the cluster secret must be 64 hex digits (xxd -p -c 64 cluster.secret)") from None
    if len(secret) != 32:
        raise UsageError(f"the cluster secret must be 32 bytes (64 hex digits), got {len(secret)}")
    return secret, data / "cluster.secret"


async def _cluster_id(join: Address) -> str:
    """The cluster id the MDS at ``join`` announces in its handshake challenge."""
    from vstore.wire import FrameDecoder, HandshakeChallenge
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_TIMEOUT_S
    while True:  # an MDS started just before us may not listen yet
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(join.host, join.port), CONNECT_TIMEOUT_S)
            break
        except (OSError, TimeoutError) as exc:
            if loop.time() + 0.5 > deadline:
                raise JoinFailed(f"cannot reach the MDS at {join} within {CONNECT_TIMEOUT_S:g} s: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None
            await asyncio.sleep(0.5)
    try:
        decoder = FrameDecoder(pre_auth=True)
        while True:
            data = await asyncio.wait_for(reader.read(4096), CONNECT_TIMEOUT_S)
            if not data:
                raise JoinFailed(f"{join} closed the connection before saying who it is")
            decoder.feed(data)
            frame = decoder.next_frame()
            if frame is not None:
                break
    except TimeoutError:
        raise JoinFailed(f"{join} did not say who it is within {CONNECT_TIMEOUT_S:g} s") from None
    except VStoreError as exc:
        raise JoinFailed(f"{join} is not a vstore MDS: {exc.message}") from None
    finally:
        writer.close()
    if not isinstance(frame.message, HandshakeChallenge) or frame.message.role != "mds":
        raise JoinFailed(f"{join} is not a vstore MDS (it is a {getattr(frame.message, 'role', '?')})")
    return frame.message.cluster_id


async def _cluster_status(join: Address, auth_for: Any) -> tuple[str, Any, Any]:
    """(cluster id, the MDS's status reply, Auth) asking the MDS at ``join``; ``auth_for``
    builds the Auth from the cluster id."""
    from vstore.errors import AuthFailed
    from vstore.net.leader import LeaderCaller
    from vstore.wire import mds as w
    cluster_id = await _cluster_id(join)
    auth = auth_for(cluster_id)
    link = LeaderCaller([(join.host, join.port)], auth, deadline_s=CONNECT_TIMEOUT_S, attempt_deadline_s=5.0)
    try:
        status = await link._client(str(join)).call(w.MdsStatusRequest(), deadline_s=CONNECT_TIMEOUT_S)
        reply = status.message
        assert isinstance(reply, w.MdsStatusReply)
        # the configuration as the leader has it: the MDS asked may still be catching up (a
        # learner just added, not yet told who leads) and know fewer members
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_TIMEOUT_S / 2
        while reply.role != "leader" and loop.time() < deadline:
            with contextlib.suppress(VStoreError):
                if reply.leader_address:
                    led = await link._client(reply.leader_address).call(w.MdsStatusRequest(),
                                                                        deadline_s=CONNECT_TIMEOUT_S)
                    if isinstance(led.message, w.MdsStatusReply) and led.message.role == "leader":
                        reply = led.message
                        break
                await asyncio.sleep(0.3)
                again = await link._client(str(join)).call(w.MdsStatusRequest(), deadline_s=CONNECT_TIMEOUT_S)
                if isinstance(again.message, w.MdsStatusReply):
                    reply = again.message
    except AuthFailed as exc:
        raise JoinFailed(f"the MDS at {join} refused us: {exc.message} (is this the cluster's secret?)") from None
    finally:
        await link.close_connections()
    return cluster_id, reply, auth


def _mds_addresses(join: Address, reply: Any, extra: str = "") -> list[str]:
    """Every MDS the status names (its configuration, else the one asked and its leader)."""
    found = list(reply.members.values()) or [str(join), reply.leader_address]
    return [a for a in dict.fromkeys([*found, extra]) if a]


async def _join_cs(args: argparse.Namespace, data: Path, secret: bytes, listen: Address, join: Address,
                   node_id: str, host: str) -> tuple[str, int, str, list[str]]:
    from vstore.chunkserver.mds_link import register
    from vstore.net import Auth, parse_address
    from vstore.wire import Identity
    cluster_id, reply, auth = await _cluster_status(join, lambda cid: Auth(secret, Identity(cid, node_id, "cs")))
    mds = _mds_addresses(join, reply)
    probe = os.statvfs(data)
    try:
        joined = await register([parse_address(a) for a in mds], auth,
                                host=host, rack=args.rack, address=str(listen),
                                capacity_bytes=probe.f_blocks * probe.f_frsize, join=True,
                                deadline_s=CONNECT_TIMEOUT_S * 2)
    except VStoreError as exc:
        raise JoinFailed(f"the cluster refused chunkserver {node_id!r}: {exc.message}") from None
    return cluster_id, joined.cs_id, reply.cluster_name or "vstore", mds


async def _join_mds(data: Path, secret: bytes, listen: Address, join: Address,
                    node_id: str) -> tuple[str, str, list[str], Any]:
    from vstore.metadata.bootstrap import init_joining_member
    from vstore.net import Auth, parse_address
    from vstore.net.leader import LeaderCaller
    from vstore.wire import Identity
    from vstore.wire import admin as a
    cluster_id, reply, auth = await _cluster_status(
        join, lambda cid: Auth(secret, Identity(cid, f"admin-add-{node_id}"[:64], "admin")))
    if node_id in reply.members:
        raise JoinFailed(f"{node_id} is an MDS of cluster {reply.cluster_name!r} already (at "
                         f"{reply.members[node_id]}); it cannot join twice")
    taken = next((n for n, address in reply.members.items() if address == str(listen)), None)
    if taken is not None:
        raise JoinFailed(f"--listen {listen} is the address of MDS {taken} already")
    init_joining_member(data, node_id=node_id, cluster_id=cluster_id, peers=reply.members)
    link = LeaderCaller([parse_address(x) for x in _mds_addresses(join, reply)], auth, deadline_s=CONNECT_TIMEOUT_S * 3,
                        attempt_deadline_s=CONNECT_TIMEOUT_S)
    try:
        added = await link.call(a.AddMdsRequest(node_id=node_id, address=str(listen)))
    except VStoreError as exc:
        raise JoinFailed(f"the cluster refused MDS {node_id!r}: {exc.message}") from None
    finally:
        await link.close_connections()
    assert isinstance(added, a.MembershipReply)
    mds = [m.address for m in added.members if m.address] or _mds_addresses(join, reply, str(listen))
    return cluster_id, reply.cluster_name or "vstore", mds, added


def _check_data_dir(data: Path) -> None:
    from vstore.chunkserver.server import CS_ID_MARKER
    if not data.exists():
        return
    if not data.is_dir():
        raise UsageError(f"--data {data} is not a directory")
    marker = data / CS_ID_MARKER
    if marker.exists():
        raise UsageError(f"--data {data} belongs to chunkserver cs {marker.read_text().strip()} already; "
                         f"start it with vstore serve, or use an empty directory")
    if (data / "raft").exists():
        from vstore.metadata.raft.storage import RaftLogStore
        try:
            store = RaftLogStore(data / "raft")
            owner = (store.identity() or {}).get("node_id", "?")
            store.close()
        except Exception:  # noqa: BLE001 - a damaged log is still somebody's
            owner = "?"
        raise UsageError(f"--data {data} holds the Raft log of MDS {owner!r} already; start it with vstore serve, "
                         f"or use an empty directory")
    if any(data.iterdir()):
        raise UsageError(f"--data {data} is not empty; a new node needs an empty or new directory")


def _add_node(args: argparse.Namespace) -> int:
    from vstore.chunkserver.server import CS_ID_MARKER
    from vstore.config import _is_label, _is_name
    quiet_transport()
    listen, join = _parse("--listen", args.listen), _parse("--join", args.join)
    for flag, value in (("--host", args.host), ("--rack", args.rack)):
        problem = _is_label(value)
        if problem:
            raise UsageError(f"{flag} {value!r}: {problem}")
    host = args.host or socket.gethostname().split(".")[0]
    node_id = args.node_id or f"{args.role}-{host}-{listen.port}"
    problem = _is_name(node_id)
    if problem:
        raise UsageError(f"--node-id {node_id!r}: {problem}")
    data = Path(os.path.abspath(args.data))
    _check_data_dir(data)
    secret, secret_file = _read_secret(args, data)
    created = not data.exists()
    data.mkdir(parents=True, exist_ok=True)
    try:
        if args.role == "cs":
            cluster_id, cs_id, name, mds = asyncio.run(_join_cs(args, data, secret, listen, join, node_id, host))
        else:
            cluster_id, name, mds, added = asyncio.run(_join_mds(data, secret, listen, join, node_id))
    except BaseException:
        restore_dir(data, created)  # nothing left behind
        raise
    if not args.secret_file:
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secret)
    mds_list = ", ".join(f'"{a}"' for a in mds)
    what = f"chunkserver {node_id} (cs {cs_id})" if args.role == "cs" else f"MDS {node_id}"
    config = data / f"{args.role}.toml"
    config.write_text(f"""# vstore {what} of cluster {name} (written by vstore add-node)
[node]
id = "{node_id}"
role = "{args.role}"
listen = "{listen}"
host = "{host}"
rack = "{args.rack}"
data_dir = "{data}"

[cluster]
name = "{name}"
id = "{cluster_id}"
mds = [{mds_list}]
secret_file = "{secret_file}"
""")
    load_config(config)
    if args.role == "cs":
        (data / CS_ID_MARKER).write_text(f"{cs_id}\n")
        print(f"chunkserver {node_id} joined cluster {name!r} as cs {cs_id}\n"
              f"  config: {config}\n"
              f"start it with:  vstore serve -c {config}")
    else:
        voters = sum(1 for m in added.members if m.voter)
        print(f"MDS {node_id} joined cluster {name!r} as a learner ({voters} voters now)\n"
              f"  config: {config}\n"
              f"start it with:  vstore serve -c {config}\n"
              f"it becomes a voter by itself once it has caught up with the leader; vstore status shows it")
    return 0
