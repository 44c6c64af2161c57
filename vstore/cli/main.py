"""The ``vstore`` command frame: subcommands, exit codes, and error reporting.

Exit codes (also in ``vstore --help`` and the README):
  0  success (``status``: healthy)
  1  failure (``status``: degraded)
  2  usage or configuration error (``status``: unavailable)

An operator never sees a traceback for bad input: every ``UserError`` becomes one line on
stderr. A traceback means a bug in vstore, and is printed in full with a request to report it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from vstore import __version__
from vstore.cli import add_node, attrs, config_cmd, demo, mkfs, mount_cmd, rm_node, scrub, serve, status, top
from vstore.errors import UsageError, UserError, VStoreError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

EPILOG = """\
exit codes:
  0  success (status: healthy)
  1  failure (status: degraded)
  2  usage or configuration error (status: unavailable)

Run 'vstore COMMAND --help' for a command's options."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vstore", description="vstore: replicated storage for container disks and checkpoints.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"vstore {__version__}")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                        help="log verbosity on stderr (default: warning)")
    parser.add_argument("--log-format", default="text", choices=["text", "json"], help="log line format")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    config_cmd.add_command(commands)
    serve.add_command(commands)
    mount_cmd.add_commands(commands)
    demo.add_command(commands)
    mkfs.add_command(commands)
    add_node.add_command(commands)
    rm_node.add_command(commands)
    top.add_command(commands)
    scrub.add_command(commands)
    status.add_command(commands)
    attrs.add_commands(commands)
    return parser


def _setup_logging(level: str, fmt: str) -> None:
    from vstore.logs import setup_logging
    setup_logging(level=level, fmt=fmt)


def run(argv: Sequence[str] | None = None) -> int:
    """Parse and run one command; returns the exit code. Raises nothing for expected errors."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _setup_logging(args.log_level, args.log_format)
        handler: Callable[[argparse.Namespace], int | None] = args.handler
        return handler(args) or EXIT_OK
    except UserError as exc:
        print(f"vstore: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except VStoreError as exc:
        print(f"vstore: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("vstore: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_FAILURE


def main() -> NoReturn:
    code = run()
    logging.shutdown()
    sys.exit(code)


if __name__ == "__main__":
    main()
