"""The `kvstore` command (also `python -m kvstore`).

`main()` only parses the arguments and dispatches: each subcommand lives in
its own module of `kvstore.commands`, with `run(args, out)` writing to an
injected stream, so tests run it in-process. docs/cli.md describes them.
`main(..., clock=fake)` opens every store with that clock (Options.clock),
so a test can move time under the commands that judge expiry.
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
    parser.set_defaults(clock=None)  # not an argument: main's keyword (None: the store's default)
    return parser


def main(argv=None, out=None, *, clock=None) -> int:
    """Run the command argv (default: sys.argv[1:]), writing its report to
    out (default: stdout). clock: a callable returning wall-clock seconds,
    the clock of every store the command opens (for tests and
    simulations; default: time.time)."""
    args = build_parser().parse_args(argv)
    args.clock = clock
    return commands.dispatch(args, out if out is not None else sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
