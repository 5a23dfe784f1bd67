"""`kvstore put PATH KEY VALUE`: store a value, durably."""

from __future__ import annotations

import json

from ._common import CommandError, namespace_handle, open_writable
from ._encoding import TagError, from_json
from .get import parse_key_arg

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._common import Args, Out, Parser, Subparsers


def add_parser(subparsers: Subparsers) -> Parser:
    p = subparsers.add_parser(
        "put", help="store a value under a key (durable)",
        description="Store VALUE under KEY (escaped form) and return once it is synced to disk. "
                    "Creates the store and the namespace if missing. Without --ttl, the value gets "
                    "the namespace's default TTL, if it has one.")
    p.add_argument("path", help="store directory (created if missing), or etcd://HOST:PORT[,...]/PREFIX")
    p.add_argument("key", help="the key")
    p.add_argument("value", help="the value: a string, or JSON with --json")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default; created if missing)")
    p.add_argument("--json", action="store_true",
                   help='parse VALUE as JSON, with the tagged encoding for bytes ({"$bytes": BASE64}), '
                        'maps with non-string keys ({"$map": [[k, v], ...]}) and nan/inf ({"$float": "nan"})')
    p.add_argument("--ttl", type=float, metavar="SECONDS",
                   help="the value expires SECONDS from now (inf: never, even in a namespace with a default TTL)")
    return p


def run(args: Args, out: Out) -> int:
    key = parse_key_arg(args.key)
    value = args.value
    if args.json:
        try:
            value = from_json(json.loads(value))
        except json.JSONDecodeError as exc:
            raise CommandError(f"VALUE is not valid JSON ({exc}); drop --json to store it as a string") from None
        except TagError as exc:
            raise CommandError(f"VALUE: {exc}") from None
    db = open_writable(args.path, create=True, clock=args.clock)
    try:
        namespace_handle(db, args.namespace, create=True).put(key, value, durable=True, ttl=args.ttl)
    finally:
        db.close()
    return 0
