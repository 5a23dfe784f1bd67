"""The `kvstore` command (also `python -m kvstore`).

`main()` only parses the arguments and dispatches: each subcommand lives in
its own module of `kvstore.commands`, with `run(args, out)` writing to an
injected stream, so tests run it in-process. docs/cli.md describes them.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__, commands

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvstore", description="kvstore: embedded key-value store on LMDB. "
                                     "Inspection commands open the store read-only; see docs/cli.md.")
    parser.add_argument("--version", action="version", version=f"kvstore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parsers(sub)
    return parser


def main(argv=None, out=None) -> int:
    args = build_parser().parse_args(argv)
    return commands.dispatch(args, out if out is not None else sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
