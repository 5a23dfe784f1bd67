"""`kvstore del PATH KEY`: delete a key, durably (module named delete: del is a keyword)."""

from __future__ import annotations

from ._common import NotFound, namespace_handle, open_writable, quote_key
from .get import parse_key_arg


def add_parser(subparsers):
    p = subparsers.add_parser(
        "del", help="delete a key (durable)",
        description="Delete KEY (escaped form) and return once the deletion is synced to disk. "
                    "Exit status 1 when the key is missing.")
    p.add_argument("path", help="store directory")
    p.add_argument("key", help="the key")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    return p


def run(args, out) -> int:
    key = parse_key_arg(args.key)
    db = open_writable(args.path, create=False, clock=args.clock)
    try:
        handle = namespace_handle(db, args.namespace)
        if key not in handle:
            raise NotFound(f"key {quote_key(key)} not found in namespace {args.namespace!r}")
        handle.delete(key, durable=True)
    finally:
        db.close()
    return 0
