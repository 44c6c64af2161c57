"""``vstore add-node --role cs --join HOST:PORT --data DIR --listen HOST:PORT``: join a chunkserver.

Asks any MDS of the cluster (``--join``) who the cluster is (its id comes in the first,
unauthenticated frame of every connection; everything after that is authenticated with
the cluster secret), registers the chunkserver with the leader (it gets its cs id, kept in
``DIR/cs-id``), and writes ``DIR/cs.toml``; ``vstore serve -c DIR/cs.toml`` then runs it.

The secret comes from ``--secret-file`` (copied from the first MDS) or, without one, is asked
for (64 hex digits: ``xxd -p -c 64 cluster.secret`` on a node that has it) and written to
``DIR/cluster.secret`` (0600). Refused with one line and nothing changed: a data dir that is
not empty (one that holds a chunkserver names its cs id), a wrong secret, an unreachable
MDS, a node id the cluster knows already (joining twice), bad addresses or labels.

``--role mds`` (a learner, then promoted) is not in this version yet: it says so and exits 3.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import socket
from pathlib import Path

from vstore.cli.tools import quiet_transport
from vstore.config import Address, load_config
from vstore.errors import NotAvailable, UsageError, UserError, VStoreError

CONNECT_TIMEOUT_S = 10.0


class JoinFailed(UserError):
    exit_code = 1


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("add-node", help="join an MDS or a chunkserver to an existing cluster",
                            description="Join a chunkserver (or, later, an MDS) to a running cluster.")
    p.add_argument("--role", required=True, choices=["mds", "cs"])
    p.add_argument("--join", required=True, metavar="HOST:PORT", help="any MDS of the cluster")
    p.add_argument("--data", required=True, metavar="DIR", help="the new node's data directory (empty)")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="address the new node serves on")
    p.add_argument("--host", default="", metavar="H", help="failure-domain label (default: this machine's hostname)")
    p.add_argument("--rack", default="", metavar="R", help="rack label (default: none)")
    p.add_argument("--node-id", help="the node's id (default: cs-<host>-<port>)")
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


async def _join_cs(args: argparse.Namespace, data: Path, secret: bytes, listen: Address, join: Address,
                   node_id: str, host: str) -> tuple[str, int, str, list[str]]:
    from vstore.chunkserver.mds_link import register
    from vstore.errors import AuthFailed
    from vstore.net import Auth, parse_address
    from vstore.net.leader import LeaderCaller
    from vstore.wire import Identity
    from vstore.wire import mds as w
    cluster_id = await _cluster_id(join)
    auth = Auth(secret, Identity(cluster_id, node_id, "cs"))
    link = LeaderCaller([(join.host, join.port)], auth, deadline_s=CONNECT_TIMEOUT_S, attempt_deadline_s=5.0)
    try:
        try:
            status = await link._client(str(join)).call(w.MdsStatusRequest(), deadline_s=CONNECT_TIMEOUT_S)
        except AuthFailed as exc:
            raise JoinFailed(f"the MDS at {join} refused us: {exc.message} (is this the cluster's secret?)") from None
        reply = status.message
        assert isinstance(reply, w.MdsStatusReply)
        mds = [str(join)] + ([reply.leader_address] if reply.leader_address and reply.leader_address != str(join)
                             else [])
        probe = os.statvfs(data)
        try:
            joined = await register([parse_address(a) for a in mds], auth,
                                    host=host, rack=args.rack, address=str(listen),
                                    capacity_bytes=probe.f_blocks * probe.f_frsize, join=True,
                                    deadline_s=CONNECT_TIMEOUT_S * 2)
        except VStoreError as exc:
            raise JoinFailed(f"the cluster refused chunkserver {node_id!r}: {exc.message}") from None
    finally:
        await link.close_connections()
    return cluster_id, joined.cs_id, reply.cluster_name or "vstore", mds


def _add_node(args: argparse.Namespace) -> int:
    from vstore.chunkserver.server import CS_ID_MARKER
    from vstore.config import _is_label, _is_name
    quiet_transport()
    if args.role == "mds":
        raise NotAvailable("'vstore add-node --role mds' is not available in this version yet; it arrives with "
                           "issue #7 (operating a cluster)")
    listen, join = _parse("--listen", args.listen), _parse("--join", args.join)
    for flag, value in (("--host", args.host), ("--rack", args.rack)):
        problem = _is_label(value)
        if problem:
            raise UsageError(f"{flag} {value!r}: {problem}")
    host = args.host or socket.gethostname().split(".")[0]
    node_id = args.node_id or f"cs-{host}-{listen.port}"
    problem = _is_name(node_id)
    if problem:
        raise UsageError(f"--node-id {node_id!r}: {problem}")
    data = Path(os.path.abspath(args.data))
    if data.exists():
        if not data.is_dir():
            raise UsageError(f"--data {data} is not a directory")
        marker = data / CS_ID_MARKER
        if marker.exists():
            raise UsageError(f"--data {data} belongs to chunkserver cs {marker.read_text().strip()} already; "
                             f"start it with vstore serve, or use an empty directory")
        if any(data.iterdir()):
            raise UsageError(f"--data {data} is not empty; a new chunkserver needs an empty or new directory")
    secret, secret_file = _read_secret(args, data)
    created = not data.exists()
    data.mkdir(parents=True, exist_ok=True)
    try:
        cluster_id, cs_id, name, mds = asyncio.run(_join_cs(args, data, secret, listen, join, node_id, host))
    except BaseException:
        if created:
            data.rmdir()
        raise
    if not args.secret_file:
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secret)
    (data / CS_ID_MARKER).write_text(f"{cs_id}\n")
    config = data / "cs.toml"
    mds_list = ", ".join(f'"{a}"' for a in mds)
    config.write_text(f"""# vstore chunkserver {node_id} (cs {cs_id}) of cluster {name} (written by vstore add-node)
[node]
id = "{node_id}"
role = "cs"
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
    print(f"chunkserver {node_id} joined cluster {name!r} as cs {cs_id}\n"
          f"  config: {config}\n"
          f"start it with:  vstore serve -c {config}")
    return 0
