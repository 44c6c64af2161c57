"""``vstore mount -c CONFIG MOUNTPOINT`` and ``vstore umount MOUNTPOINT``.

The config is a client config ([cluster] plus optional [client], [net], [tls], [log]) or
any node's config of the cluster. Exit codes: 0 mounted (or, with --foreground, unmounted
cleanly), 1 the mount failed (unreachable cluster, FUSE refused), 2 bad arguments, config,
secret or mountpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from vstore.config import load_client_config


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("mount", help="mount the cluster's file system with FUSE",
                            description="Mount the cluster's file system (FUSE). Without --foreground the mount "
                                        "runs in the background and this command returns once it serves.")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="client (or node) config of the cluster")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing, empty directory")
    p.add_argument("--foreground", "-f", action="store_true", help="serve in this process until unmounted")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users (containers) use the mount; needs user_allow_other for non-root")
    p.add_argument("--log-file", metavar="FILE", help="where the background mount logs (default: a file in $TMPDIR)")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.set_defaults(handler=_mount)
    u = commands.add_parser("umount", help="unmount a vstore mount", description="Unmount a vstore mount.")
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.set_defaults(handler=_umount)


def _mount(args: argparse.Namespace) -> int:
    from vstore.fuse import mount
    config = load_client_config(args.config)
    mount.check_mountpoint(args.mountpoint)
    if not args.foreground:
        log_file = args.log_file or config.log.file or mount.default_log_file(args.mountpoint)
        print(mount.start_background(os.path.abspath(args.config), args.mountpoint, allow_other=args.allow_other,
                                     log_file=log_file))
        return 0
    from vstore.logs import setup_logging
    setup_logging(level=config.log.level, fmt=config.log.format, file=config.log.file or None,
                  node=config.client.id or "client", role="client")

    def ready() -> None:
        if args.ready_fd is not None:
            os.write(args.ready_fd, b"ready\n")
            os.close(args.ready_fd)

    return asyncio.run(mount.serve_mount(config, args.mountpoint, allow_other=args.allow_other, ready=ready))


def _umount(args: argparse.Namespace) -> int:
    from vstore.fuse import mount
    mount.umount(args.mountpoint)
    return 0
