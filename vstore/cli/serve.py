"""``vstore serve -c CONFIG``: run one node (an MDS or a chunkserver) in the foreground.

Logs go where the config's ``[log]`` section says. An MDS also serves the dashboard at
``[mds] admin_listen`` (vstore/admin) once it runs, unless ``admin_enabled = false``. Exit codes: 0 after a clean stop
(SIGTERM or Ctrl-C), 1 when the node stopped on a fatal error (a failed fsync, a full
metadata map: its log says which), 2 for a bad config, secret or data dir (also for
VSTORE_FAILPOINTS set on a node whose config does not allow failpoints), 86 when a
failpoint's ``panic`` ended it (tests only: vstore/failpoints.py).
"""

from __future__ import annotations

import argparse
import asyncio

from vstore.config import load_config


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("serve", help="run a node (MDS or chunkserver) from its config file",
                                 description="Run one vstore node in the foreground until SIGTERM or Ctrl-C.")
    parser.add_argument("-c", "--config", required=True, metavar="FILE", help="the node's TOML config")
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from vstore.logs import setup_logging
    setup_logging(level=config.log.level, fmt=config.log.format, file=config.log.file or None, node=config.node.id,
                  role=config.node.role)
    return asyncio.run(_run(config))


async def _run(config) -> int:  # type: ignore[no-untyped-def]
    if config.node.role == "cs":
        from vstore.chunkserver.server import CsServer
        return await CsServer(config).run()
    from vstore.metadata.server import MdsServer
    server = MdsServer(config)
    if not config.mds.admin_enabled:
        return await server.run()
    from vstore.admin.server import AdminServer
    from vstore.metadata.passwords import verify_password
    admin = AdminServer(config, password_hash=server.sm.admin_password_hash, verify=verify_password,
                        node_status=server.node.status)
    started = asyncio.Event()
    server.on_started = started.set
    mds = asyncio.ensure_future(server.run())
    waiting = asyncio.ensure_future(started.wait())
    await asyncio.wait([mds, waiting], return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if mds.done():  # it could not start: its exit code says why
        return await mds
    running = await admin.start()
    try:
        return await mds
    finally:
        if running:
            await admin.stop()
