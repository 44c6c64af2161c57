"""Commands whose arguments are fixed but whose implementation lands with a later issue.

Each has its full argument list (so ``--help`` documents the interface operators will get)
and, when run, says plainly that this version does not provide it yet, naming the work
item, and exits 3. Nothing here pretends to succeed. When a command is built, it moves to
its own module (``vstore/cli/mkfs.py`` ...) and leaves this table.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from vstore.errors import NotAvailable

#: command -> (one-line help, the issue that delivers it, function adding its arguments)
_PLANNED: dict[str, tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = {}


def _planned(name: str, help_text: str, issue: str) -> Callable[[Callable[[argparse.ArgumentParser], None]],
                                                               Callable[[argparse.ArgumentParser], None]]:
    def register(add_arguments: Callable[[argparse.ArgumentParser], None]) -> Callable[[argparse.ArgumentParser], None]:
        _PLANNED[name] = (help_text, issue, add_arguments)
        return add_arguments
    return register


_OPS = "issue #7 (operating a cluster)"


@_planned("rm-node", "drain and remove a chunkserver, or remove an MDS", _OPS)
def _rm_node(p: argparse.ArgumentParser) -> None:
    p.add_argument("node_id", metavar="ID")
    p.add_argument("--force", action="store_true", help="allow losing the last copy or quorum")


@_planned("top", "live terminal view of MDS, chunkservers, chunk health and rebuilds", _OPS)
def _top(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval-s", type=float, default=1.0)


@_planned("scrub", "verify every replica's checksums under a path, with a report", _OPS)
def _scrub(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", default="/")


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, (help_text, issue, add_arguments) in _PLANNED.items():
        parser = commands.add_parser(name, help=f"{help_text} [not available yet]", description=help_text)
        add_arguments(parser)
        parser.set_defaults(handler=_not_available(name, issue))


def _not_available(name: str, issue: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        raise NotAvailable(f"'vstore {name}' is not available in this version yet; it arrives with {issue}")
    return handler
