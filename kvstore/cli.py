"""The `kvstore` command (also `python -m kvstore`).

`main()` only parses arguments and dispatches; each command is a function
taking the parsed arguments and an output stream, so tests capture output.
"""

from __future__ import annotations

import argparse
import sys

from .errors import KVStoreError

__all__ = ["main"]


def cmd_demo(args, out) -> int:
    from . import demo

    ok = demo.run(args.path, threads=args.threads, sessions=args.sessions, turns=args.turns,
                  out=lambda line: print(line, file=out))
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvstore", description="kvstore: embedded key-value store on LMDB")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("demo", help="write an agent-memory workload from several threads, read it back, report")
    p.add_argument("path", help="store directory (created if missing)")
    p.add_argument("--threads", type=int, default=4, help="writer threads (default 4)")
    p.add_argument("--sessions", type=int, default=8, help="agent sessions per thread (default 8)")
    p.add_argument("--turns", type=int, default=12, help="turns per session (default 12)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None, out=None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, out)
    except KVStoreError as exc:
        print(f"kvstore: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
