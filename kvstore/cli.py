"""The `kvstore` command (also `python -m kvstore`).

`main()` only parses the arguments and dispatches: each subcommand lives in
its own module of `kvstore.commands`, with `run(args, out)` writing to an
injected stream, so tests run it in-process. `kvstore --help` and each
`kvstore COMMAND --help` say all a user needs (the installed package has no
docs/ directory); docs/cli.md, in the source tree, adds examples.
`main(..., clock=fake)` opens every store with that clock (Options.clock),
so a test can move time under the commands that judge expiry.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Callable, Sequence, TextIO

from . import __version__, commands

__all__ = ["main", "build_parser"]


EPILOG = """\
`kvstore COMMAND --help` describes each command and its options.

Stores: PATH is a store directory. Commands that only read (stat, ls, keys,
get, inspect, dump, check, compact, backup) open it read-only: they work
while other processes write and never create a store. put, load and demo
create one; del, expire, persist and train-dict never do. Writes are
durable: a command returns once its writes are synced to disk. stat, ls,
keys, get, put, del, dump, load, check and copy also take the URL of a store
on an etcd cluster, etcd://HOST:PORT[,HOST:PORT...]/PREFIX, and work on it
through the Store API (`kvstore copy` moves a store between the two).

Keys on the command line are bytes in one escaped form: a printable
character stands for itself, a backslash is \\\\, any other byte \\xNN. Every
line `kvstore keys` prints can be given back as a KEY. Quote keys for the
shell; put -- before a key that starts with -.

Values in JSON (get, inspect, dump, put --json, load) use a tagged
encoding where JSON falls short: {"$bytes": BASE64} for bytes,
{"$map": [[k, v], ...]} for a map with keys that are not strings,
{"$float": "nan"|"inf"|"-inf"} for those floats.

Exit status: 0 success; 1 a key or namespace not found, or check/inspect
found damage; 2 an error (bad arguments, no store at PATH, a file that
cannot be read or written, any kvstore error), printed on stderr as
`kvstore: error: MESSAGE`.

Progress: long commands draw a progress bar with rate and ETA on stderr
when it is a terminal, and nothing otherwise.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvstore", description="kvstore: embedded key-value store on LMDB.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"kvstore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parsers(sub)
    parser.set_defaults(clock=None)  # not an argument: main's keyword (None: the store's default)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """parse_args, letting a command's list of KEYs continue after its
    options (`get PATH -n NS k1 k2`): argparse takes a positional list in
    one run, so the run after the options would be left over. A command
    that takes such a list names it in its defaults (`keys_dest`)."""
    args, extra = parser.parse_known_args(argv)
    dest = getattr(args, "keys_dest", None)
    if extra and dest is not None and not any(a.startswith("-") for a in extra):
        getattr(args, dest).extend(extra)
    elif extra:
        parser.parse_args(argv)  # argparse's own message and exit status 2
    if dest is not None and not getattr(args, dest) and not (args.match or args.prefix):
        parser.error(f"{args.command}: give a KEY, or keys by --match GLOB or --prefix P")
    return args


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, *,
         clock: Callable[[], float] | None = None) -> int:
    """Run the command argv (default: sys.argv[1:]), writing its report to
    out (default: stdout). clock: a callable returning wall-clock seconds,
    the clock of every store the command opens (for tests and
    simulations; default: time.time)."""
    args = _parse(build_parser(), argv)
    args.clock = clock
    return commands.dispatch(args, out if out is not None else sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
