"""``vstore config``: print a commented config template, or check a config file."""

from __future__ import annotations

import argparse

from vstore.config import load_config, render_template


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("config", help="print a config template or check a config file",
                                 description="Node configuration files (one TOML file per node).")
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    template = actions.add_parser("template", help="print a commented template with every key and default")
    template.add_argument("--role", required=True, choices=["mds", "cs"], help="the node's role")
    template.set_defaults(handler=_template)
    check = actions.add_parser("check", help="validate a config file; prints the problem or 'ok'")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(handler=_check)


def _template(args: argparse.Namespace) -> int:
    print(render_template(args.role), end="")
    return 0


def _check(args: argparse.Namespace) -> int:
    config = load_config(args.file)  # raises ConfigError: one line, exit 2
    print(f"{args.file}: ok ({config.node.role} node {config.node.id} of cluster {config.cluster.name})")
    return 0
