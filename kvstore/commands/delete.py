"""`kvstore del PATH KEY [KEY...]`: delete keys, named or matched by
--match/--prefix, durably and in one commit (module named delete: del is a
keyword)."""

from __future__ import annotations

import sys

from ._common import NotFound, namespace_handle, open_writable, plural, quote_key
from ._encoding import escape_key
from ._patterns import add_pattern_arguments, patterns_of, selected_keys
from ._portable import is_local
from .get import parse_key_arg

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._common import Args, Out, Parser, Subparsers


def add_parser(subparsers: Subparsers) -> Parser:
    p = subparsers.add_parser(
        "del", help="delete keys, named or by pattern (durable)",
        description="Delete KEY (escaped form), or every key named and matched by --match/--prefix, "
                    "in one commit (on etcd: in transactions of at most max_txn_ops keys), and return "
                    "once it is synced to disk. One KEY: silent, exit status "
                    "1 when it is missing. Several keys or a pattern: prints how many were deleted; a "
                    "named key that is missing is reported on stderr (exit status 1), the others are "
                    "deleted. --dry-run lists the keys that would be deleted and deletes nothing.")
    p.add_argument("path", help="store directory, or etcd://HOST:PORT[,...]/PREFIX")
    p.add_argument("key", nargs="*", help="the key (several: all in one commit)")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    add_pattern_arguments(p, "delete")
    p.set_defaults(keys_dest="key")  # KEYs may follow the options (cli._parse)
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    return p


def run(args: Args, out: Out) -> int:
    globs = patterns_of(args)
    keys = [parse_key_arg(k) for k in args.key]
    one = len(keys) == 1 and not globs
    db = open_writable(args.path, create=False, clock=args.clock)
    try:
        handle = namespace_handle(db, args.namespace)
        present = [k for k in dict.fromkeys(keys) if k in handle]
        missing = [k for k in keys if k not in present]
        if one and missing:
            raise NotFound(f"key {quote_key(keys[0])} not found in namespace {args.namespace!r}")
        named = set(present)
        doomed = present + [k for k in selected_keys(handle, globs) if k not in named]
        where = f"namespace {args.namespace!r}"
        if args.dry_run:
            for key in doomed:
                out.write(escape_key(key) + "\n")
            out.write(f"would delete {plural(len(doomed), 'key')} from {where} (dry run: nothing deleted)\n")
        else:
            # one commit; on etcd one transaction holds at most max_txn_ops keys
            size = len(doomed) if is_local(db) else db.options.max_txn_ops  # type: ignore[attr-defined]
            for at in range(0, len(doomed), max(1, size)):
                with handle.batch(durable=True) as batch:
                    for key in doomed[at:at + size]:
                        batch.delete(key)
            if not one:
                parts = -(-len(doomed) // max(1, size))
                split = f" in {parts} etcd transactions (max_txn_ops={size})" if parts > 1 else ""
                out.write(f"deleted {plural(len(doomed), 'key')} from {where}{split}\n")
    finally:
        db.close()
    for key in missing:
        print(f"kvstore: key {quote_key(key)} not found in namespace {args.namespace!r}", file=sys.stderr)
    return 1 if missing else 0
