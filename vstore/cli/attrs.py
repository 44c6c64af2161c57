"""``vstore get-attr -c CONFIG PATH`` and ``vstore set-attr -c CONFIG PATH ATTR...``: a file's or
directory's replication policy and exclusive-writer flag, by its path in the cluster's
namespace (``/`` is the root, as seen from any mount).

Attributes: ``replicas=N`` or ``replicas=N:MIN`` (copies kept, and the fewest a write may
continue with), ``exclusive_write=1|0`` (container images: one writing host at a time; new
entries of a directory inherit both). Exit codes: 0 done, 1 the cluster refused or cannot be
reached, 2 bad arguments, a path that does not exist, or a value the cluster rejects.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from typing import Any

from vstore.cli.tools import mds_link, quiet_transport
from vstore.config import load_client_config
from vstore.errors import UsageError

ROOT_INODE = 1


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    g = commands.add_parser("get-attr", help="show a path's replication policy and exclusive-writer flag",
                            description="Show a path's replication policy and exclusive-writer flag.")
    g.add_argument("-c", "--config", required=True, metavar="FILE", help="any node's or a client's config")
    g.add_argument("path", help="a path in the cluster, e.g. /vm-disks")
    g.add_argument("--json", action="store_true")
    g.set_defaults(handler=_get)
    s = commands.add_parser("set-attr", help="set a path's replication policy, e.g. replicas=3:2",
                            description="Set a path's replication policy (replicas=N[:MIN]) or exclusive-writer "
                                        "flag (exclusive_write=1|0); new entries of a directory inherit them.")
    s.add_argument("-c", "--config", required=True, metavar="FILE", help="any node's or a client's config")
    s.add_argument("path", help="a path in the cluster, e.g. /vm-disks")
    s.add_argument("attributes", nargs="+", metavar="replicas=N:MIN|exclusive_write=1")
    s.set_defaults(handler=_set)


def parse_attributes(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"{item!r}: expected NAME=VALUE (replicas=3:2 or exclusive_write=1)")
        if key == "replicas":
            if not re.fullmatch(r"[0-9]{1,2}(:[0-9]{1,2})?", value):
                raise UsageError(f"replicas={value!r}: expected N or N:MIN, e.g. replicas=3:2")
            out["policy"] = value
        elif key == "exclusive_write":
            if value not in ("0", "1"):
                raise UsageError(f"exclusive_write={value!r}: expected 1 or 0")
            out["exclusive_write"] = value == "1"
        else:
            raise UsageError(f"unknown attribute {key!r} (known: replicas, exclusive_write)")
    return out


async def _with_link(config: Any, path: str, action: Any) -> Any:
    from vstore.errors import NotFound
    if not path.startswith("/"):
        raise UsageError(f"{path!r}: give a path from the cluster's root, e.g. /vm-disks")
    link = mds_link(config, "attrs", role="client", deadline_s=15.0)
    try:
        inode = ROOT_INODE
        for part in [p for p in path.split("/") if p]:
            try:
                inode = (await link.lookup(inode, part.encode())).inode
            except NotFound:
                raise UsageError(f"{path}: no such file or directory in cluster {config.cluster.name!r}") from None
        return await action(link, inode)
    finally:
        await link.close_connections()


def _get(args: argparse.Namespace) -> int:
    from vstore.wire import mds as w
    config = load_client_config(args.config)
    quiet_transport()

    async def get(link: Any, inode: int) -> Any:
        reply = await link.call(w.GetPolicyRequest(uid=0, gid=0, inode=inode))
        assert isinstance(reply, w.PolicyReply)
        return reply
    reply = asyncio.run(_with_link(config, args.path, get))
    if args.json:
        print(json.dumps({"path": args.path, "replicas": reply.policy, "inherited": reply.inherited,
                          "exclusive_write": reply.exclusive_write}))
    else:
        print(f"{args.path}: replicas={reply.policy}{' (default)' if reply.inherited else ''} "
              f"exclusive_write={int(reply.exclusive_write)}")
    return 0


def _set(args: argparse.Namespace) -> int:
    from vstore.errors import InvalidArgument
    config = load_client_config(args.config)
    changes = parse_attributes(args.attributes)
    quiet_transport()

    async def put(link: Any, inode: int) -> Any:
        try:
            return await link.set_policy(inode, **changes)
        except InvalidArgument as exc:
            raise UsageError(f"{args.path}: {exc.message}") from None
    reply = asyncio.run(_with_link(config, args.path, put))
    print(f"{args.path}: replicas={reply.policy} exclusive_write={int(reply.exclusive_write)}")
    return 0
