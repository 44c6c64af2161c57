"""``vstore serve -c CONFIG``: run one node (an MDS or a chunkserver) in the foreground.

Logs go where the config's ``[log]`` section says. Exit codes: 0 after a clean stop
(SIGTERM or Ctrl-C), 1 when the node stopped on a fatal error (a failed fsync, a full
metadata map: its log says which), 2 for a bad config, secret or data dir.
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
    return await MdsServer(config).run()
