"""The subcommands of the `kvstore` command, one module each.

Each module has `add_parser(subparsers)`, which adds its subparser and
returns it, and `run(args, out) -> int`, which does the work, writes its
report to `out` and returns the exit status. `dispatch` runs the chosen one
and turns errors into messages on stderr and exit statuses:

    0  success
    1  a key or namespace not found; `check` found damage
    2  bad arguments (argparse), or an error (a KVStoreError, a file that
       cannot be read or written, input that is not a dump)
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    from typing import TextIO

from kvstore.errors import KVStoreError

from . import (backup, check, checkpoint, compact, copy, delete, demo, dump, expire, get, inspect, keys, load,
               ls, persist, put, stat, train_dict)
from ._common import CommandError, is_url

__all__ = ["COMMANDS", "add_parsers", "dispatch", "CommandError"]

COMMANDS = (stat, ls, keys, get, put, delete, expire, persist, inspect, dump, load, check, compact, backup, copy,
            checkpoint, train_dict, demo)


# The commands that take an etcd:// URL where they take a store PATH (through
# the public Store API; the others read or write LMDB's files themselves)
URL_COMMANDS = frozenset(("stat", "ls", "keys", "get", "put", "del", "dump", "load", "check", "copy"))


def add_parsers(subparsers: Any) -> None:
    for module in COMMANDS:
        module.add_parser(subparsers).set_defaults(run=module.run)


def _check_url(args: argparse.Namespace) -> None:
    if args.command not in URL_COMMANDS and is_url(getattr(args, "path", None) or ""):
        raise CommandError(f"kvstore {args.command} works on a local store directory (it reads or writes "
                           f"LMDB's files), not on {args.path!r}; the commands that take an etcd URL are "
                           f"{', '.join(sorted(URL_COMMANDS))}")


def _error(message: str, status: int, err: TextIO) -> int:
    print(f"kvstore: error: {message}", file=err)
    return status


def dispatch(args: argparse.Namespace, out: TextIO, err: TextIO | None = None) -> int:
    err = err if err is not None else sys.stderr
    try:
        _check_url(args)
        status: int = args.run(args, out)
        return status
    except CommandError as exc:
        return _error(str(exc), exc.status, err)
    except KVStoreError as exc:
        return _error(str(exc), 2, err)
    except BrokenPipeError:
        # The reader went away (`kvstore keys DB | head`): stop quietly, and
        # keep the interpreter from complaining when it flushes stdout.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    except OSError as exc:  # a file named on the command line
        where = f"{exc.filename}: " if exc.filename else ""
        return _error(f"{where}{exc.strerror or exc}", 2, err)
    except KeyboardInterrupt:
        print("kvstore: interrupted", file=err)
        return 130
