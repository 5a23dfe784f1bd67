"""`kvstore keys PATH`: the keys of a namespace, in key order."""

from __future__ import annotations

from ._common import CommandError, namespace_handle, open_readonly
from ._encoding import dumps, escape_key, key_to_json, parse_key
from ._patterns import compile_glob

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._common import Args, Out, Parser, Subparsers


def add_parser(subparsers: Subparsers) -> Parser:
    p = subparsers.add_parser(
        "keys", help="list keys (escaped), optionally by prefix or range",
        description="List the keys of a namespace in key order, one per line, escaped: a backslash "
                    "is \\\\ and a non-printable byte \\xNN, the form KEY arguments take. PATTERN "
                    "selects keys as redis-cli's KEYS does: * any bytes, ? one byte, [a-z] one byte of "
                    "a set ([!a-z] any other); a literal *, ? or [ is \\x2a, \\x3f, \\x5b.")
    p.add_argument("path", help="store directory, or etcd://HOST:PORT[,...]/PREFIX")
    p.add_argument("pattern", nargs="?", help="only keys matching this glob (escaped form)")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument("--prefix", help="only keys starting with P (escaped form)")
    p.add_argument("--start", help="only keys >= A (escaped form)")
    p.add_argument("--stop", help="only keys < B (escaped form)")
    p.add_argument("--limit", type=int, help="at most N keys")
    p.add_argument("--reverse", action="store_true", help="descending order")
    p.add_argument("--count", action="store_true", help="print only how many keys there are")
    p.add_argument("--json", action="store_true",
                   help='print a JSON array: a key is a string, or {"$bytes": BASE64} when not UTF-8')
    return p


def _bound(text: str | None, what: str) -> bytes | None:
    if text is None:
        return None
    try:
        return parse_key(text, what)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def run(args: Args, out: Out) -> int:
    if args.limit is not None and args.limit < 0:
        raise CommandError("--limit must be 0 or more")
    prefix, start, stop = (_bound(args.prefix, "--prefix"), _bound(args.start, "--start"),
                           _bound(args.stop, "--stop"))
    glob = compile_glob(args.pattern, "PATTERN") if args.pattern is not None else None
    if glob is not None and prefix is None:
        prefix = glob.prefix  # read only the keys the pattern can match
    with open_readonly(args.path, clock=args.clock) as db:
        handle = namespace_handle(db, args.namespace)
        it = handle.scan(prefix=prefix or None, start=start, stop=stop, reverse=args.reverse,
                         keys_only=True)
        n = 0
        if args.json and not args.count:
            out.write("[")
        for key in it:
            if glob is not None and not glob.matches(key):
                continue
            if args.limit is not None and n >= args.limit:
                break
            if args.count:
                pass
            elif args.json:
                out.write(("\n  " if n == 0 else ",\n  ") + dumps(key_to_json(key)))
            else:
                out.write(escape_key(key) + "\n")
            n += 1
        if args.count:
            out.write(f"{n}\n")
        elif args.json:
            out.write("\n]\n" if n else "]\n")
    return 0
