"""``vstore mkfs --cluster NAME --data DIR --listen HOST:PORT``: create a cluster.

Writes, into DIR (which must be empty or absent): the first MDS's Raft log founding the
cluster (its one voter, the root directory, the chunk size and the admin password's scrypt
hash, all in the replicated state), ``cluster.secret`` (32 random bytes, mode 0600; every
node and client of the cluster needs a copy) and the node's config ``mds.toml``. Prints the
cluster id, what to run next, and the admin password, once: only its hash is kept.

Refuses, changing nothing: a data dir that is not empty (or already holds a cluster), a bad
cluster name, listen address, node id or chunk size, and a secret file that exists already
(it never overwrites one). On a failure half way, what it made is removed again.
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
import uuid
from pathlib import Path

from vstore.cli.tools import restore_dir
from vstore.config import Address, load_config
from vstore.errors import UsageError

MIB = 1024 * 1024


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("mkfs", help="create a cluster: its first MDS, cluster id, secret and admin password",
                            description="Create a cluster: the first MDS's data dir and config, the cluster id, the "
                                        "cluster secret and the dashboard's admin password.")
    p.add_argument("--cluster", required=True, metavar="NAME", help="cluster name")
    p.add_argument("--data", required=True, metavar="DIR", help="data directory of the first MDS (must be empty)")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="address the first MDS serves on")
    p.add_argument("--node-id", default="mds-1", help="this MDS's node id (default mds-1)")
    p.add_argument("--host", default="", help="failure-domain label of this machine (default: its hostname)")
    p.add_argument("--rack", default="", help="rack label (default: none)")
    p.add_argument("--chunk-mib", type=int, default=64, help="chunk size in MiB, a power of two 1-1024 (default 64)")
    p.add_argument("--secret-file", metavar="FILE",
                   help="where to write the cluster secret (default DIR/cluster.secret); must not exist")
    p.set_defaults(handler=_mkfs)


def _mkfs(args: argparse.Namespace) -> int:
    from vstore.config import _is_label, _is_name
    from vstore.metadata.bootstrap import init_founding_member
    from vstore.metadata.passwords import hash_password, new_password

    problem = _is_name(args.cluster)
    if problem:
        raise UsageError(f"--cluster {args.cluster!r}: {problem}")
    problem = _is_name(args.node_id)
    if problem:
        raise UsageError(f"--node-id {args.node_id!r}: {problem}")
    for flag, value in (("--host", args.host), ("--rack", args.rack)):
        problem = _is_label(value)
        if problem:
            raise UsageError(f"{flag} {value!r}: {problem}")
    try:
        listen = Address.parse(args.listen)
    except ValueError as exc:
        raise UsageError(f"--listen {args.listen!r} {exc}") from None
    chunk = args.chunk_mib
    if chunk < 1 or chunk > 1024 or chunk & (chunk - 1):
        raise UsageError(f"--chunk-mib {chunk}: must be a power of two from 1 to 1024")
    data = Path(os.path.abspath(args.data))
    if data.exists():
        if not data.is_dir():
            raise UsageError(f"--data {data} is not a directory")
        if (data / "raft").exists():
            raise UsageError(f"--data {data} already holds a cluster's MDS; refusing to create another over it")
        if any(data.iterdir()):
            raise UsageError(f"--data {data} is not empty; mkfs needs an empty or new directory")
    secret_file = Path(os.path.abspath(args.secret_file)) if args.secret_file else data / "cluster.secret"
    if secret_file.exists():
        raise UsageError(f"--secret-file {secret_file} exists already; mkfs never overwrites a cluster secret")
    if not secret_file.parent.is_dir() and secret_file.parent != data:
        raise UsageError(f"--secret-file {secret_file}: directory {secret_file.parent} does not exist")

    created = not data.exists()
    data.mkdir(parents=True, exist_ok=True)
    try:
        cluster_id = str(uuid.uuid4())
        password = new_password()
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(32))
        finally:
            os.close(fd)
        init_founding_member(data, node_id=args.node_id, cluster_id=cluster_id, members=[(args.node_id, str(listen))],
                             root_now_ns=time.time_ns(), chunk_bytes=chunk * MIB,
                             admin_password_hash=hash_password(password))
        config = data / "mds.toml"
        config.write_text(f"""# vstore MDS {args.node_id} of cluster {args.cluster} (written by vstore mkfs)
[node]
id = "{args.node_id}"
role = "mds"
listen = "{listen}"
host = "{args.host}"
rack = "{args.rack}"
data_dir = "{data}"

[cluster]
name = "{args.cluster}"
id = "{cluster_id}"
mds = ["{listen}"]
secret_file = "{secret_file}"
""")
        load_config(config)  # what we wrote must be what serve accepts
    except BaseException:
        # leave nothing half made: the directory as it was (empty or absent), no secret
        if secret_file.exists() and secret_file.parent != data:
            secret_file.unlink()
        restore_dir(data, created)
        raise
    print(f"created cluster {args.cluster!r} (id {cluster_id}), chunk size {chunk} MiB\n"
          f"  first MDS:      {args.node_id} on {listen}, data {data}\n"
          f"  config:         {config}\n"
          f"  cluster secret: {secret_file} (mode 0600; copy it to every node and client)\n"
          f"  admin password: {password}   (shown only now; the cluster keeps its hash)\n"
          f"start it with:  vstore serve -c {config}")
    return 0
