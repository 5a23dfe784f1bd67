"""`kvstore persist PATH KEY`: take a value's expiry away without rewriting
the value (kvstore/commands/expire.py does the work)."""

from __future__ import annotations

from .expire import _change

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._common import Args, Out, Parser, Subparsers

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Subparsers) -> Parser:
    p = subparsers.add_parser(
        "persist", help="remove a key's TTL without rewriting its value (durable)",
        description="Make the value of KEY never expire, as redis-cli's PERSIST: its TTL prefix is "
                    "dropped, the stored value itself is copied as it is. A value without a TTL is left "
                    "alone. Exit status 1 when the key is missing (or has expired).")
    p.add_argument("path", help="store directory")
    p.add_argument("key", help="the key (escaped form)")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    return p


def run(args: Args, out: Out) -> int:
    return _change(args, out, 0)
