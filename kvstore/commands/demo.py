"""`kvstore demo PATH`: write an agent-memory workload from several threads,
read it back, report (the workload itself is kvstore.demo)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._common import Args, Out, Parser, Subparsers


def add_parser(subparsers: Subparsers) -> Parser:
    p = subparsers.add_parser("demo", help="write an agent-memory workload from several threads, read it back, report")
    p.add_argument("path", help="store directory (created if missing)")
    p.add_argument("--threads", type=int, default=4, help="writer threads (default 4)")
    p.add_argument("--sessions", type=int, default=8, help="agent sessions per thread (default 8)")
    p.add_argument("--turns", type=int, default=12, help="turns per session (default 12)")
    return p


def run(args: Args, out: Out) -> int:
    from kvstore import demo

    ok = demo.run(args.path, threads=args.threads, sessions=args.sessions, turns=args.turns,
                  out=lambda line: print(line, file=out))
    return 0 if ok else 1
