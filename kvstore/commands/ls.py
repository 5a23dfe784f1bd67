"""`kvstore ls PATH`: the namespaces of a store and their entry counts."""

from __future__ import annotations

from kvstore import engine

from ._common import open_readonly, write_json
from ._encoding import escape_key
from ._portable import counts, is_local
from ._records import namespaces

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._common import Args, Out, Parser, Subparsers


def add_parser(subparsers: Subparsers) -> Parser:
    p = subparsers.add_parser("ls", help="list the namespaces of a store",
                              description="List the namespaces of the store at PATH with their entry counts.")
    p.add_argument("path", help="store directory, or etcd://HOST:PORT[,...]/PREFIX")
    p.add_argument("--json", action="store_true", help="print JSON: [{namespace, entries}]")
    return p


def run(args: Args, out: Out) -> int:
    with open_readonly(args.path, clock=args.clock) as db:
        if is_local(db):
            handles = namespaces(db)
            entries = engine.of(db).read(lambda txn: [txn.stat(dbi)["entries"] if dbi is not None else 0
                                                for _, dbi in handles])
            found = [(name, n) for (name, _), n in zip(handles, entries)]
        else:
            found = counts(db)
    rows: list[dict[str, Any]] = [{"namespace": name, "entries": n} for name, n in found]
    if args.json:
        write_json(out, rows)
        return 0
    shown = [escape_key(r["namespace"].encode("utf-8")) for r in rows]
    width = max(len(s) for s in shown)
    for name, row in zip(shown, rows):
        out.write(f"{name:<{width}}  {row['entries']:>10,}\n")
    return 0
