"""``vstore serve -c CONFIG``: run one node (an MDS now; a chunkserver with issue #5) in the foreground.

Logs go where the config's ``[log]`` section says. Exit codes: 0 after a clean stop
(SIGTERM or Ctrl-C), 1 when the node stopped on a fatal error (a failed fsync, a full
metadata map: its log says which), 2 for a bad config, secret or data dir.
"""

from __future__ import annotations

import argparse
import asyncio

from vstore.config import load_config
from vstore.errors import NotAvailable


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
    if config.node.role != "mds":
        raise NotAvailable("'vstore serve' for a chunkserver arrives with issue #5 (chunkserver)")
    return asyncio.run(_run_mds(config))


async def _run_mds(config) -> int:  # type: ignore[no-untyped-def]
    from vstore.metadata.server import MdsServer
    server = MdsServer(config)
    return await server.run()
