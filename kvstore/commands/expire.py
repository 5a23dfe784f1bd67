"""`kvstore expire PATH KEY SECONDS` and `kvstore persist PATH KEY`: give a
value a new expiry, or take its expiry away, without rewriting the value.

A value with a TTL is stored as its v1 record behind a 22-byte TTL prefix
(kvstore/codec/format.py). Both commands change that prefix only: the
record behind it (header, checksum, compressed payload) is copied as it is,
never decoded or encoded again. `expire` puts (or replaces) the prefix,
expiry now + SECONDS; `persist` drops it. The change is one durable
write of the writer (Writer.run), which reads the key's record inside the
commit's own transaction: no write of another process can slip between the
read and the write.
"""

from __future__ import annotations

from kvstore import engine
from kvstore import ttl as _ttl
from kvstore.codec.format import inner_record, is_ttl, parse_ttl, wrap_ttl
from kvstore.errors import CorruptionError, Refused

from ._common import CommandError, NotFound, namespace_dbi, now_of, open_writable, quote_key, utc_text
from .get import parse_key_arg

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lmdb

    from kvstore.store import Store

    from ._common import Args, Out, Parser, Subparsers

__all__ = ["add_parser", "run", "set_expiry"]


def add_parser(subparsers: Subparsers) -> Parser:
    p = subparsers.add_parser(
        "expire", help="set a key's TTL without rewriting its value (durable)",
        description="Make the value of KEY expire SECONDS from now (its TTL becomes SECONDS), as "
                    "redis-cli's EXPIRE; SECONDS=inf takes the expiry away (as persist). Only the "
                    "value's TTL prefix is written: the stored value itself is copied as it is. Exit "
                    "status 1 when the key is missing (or has expired).")
    p.add_argument("path", help="store directory")
    p.add_argument("key", help="the key (escaped form)")
    p.add_argument("seconds", type=float, help="seconds from now (> 0; inf: never expires)")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    return p


def run(args: Args, out: Out) -> int:
    try:
        ms = _ttl.to_ms(args.seconds)
    except ValueError as exc:
        raise CommandError(f"SECONDS: {str(exc).replace('math.inf', 'inf')}") from None
    return _change(args, out, ms)


def _change(args: Args, out: Out, ttl_ms: int) -> int:
    key = parse_key_arg(args.key)
    db = open_writable(args.path, create=False, clock=args.clock)
    try:
        result = set_expiry(db, args.namespace, key, ttl_ms)
    finally:
        db.close()
    if result is None:
        raise NotFound(f"key {quote_key(key)} not found in namespace {args.namespace!r}")
    if result:
        out.write(f"{quote_key(key)} expires at {utc_text(result)}; ttl {ttl_ms / 1000:g} s\n")
    else:
        out.write(f"{quote_key(key)} never expires\n")
    return 0


def set_expiry(db: Store[Any], namespace: str, key: bytes, ttl_ms: int) -> int | None:
    """Give key's value in namespace the expiry now + ttl_ms (0: none),
    durably, rewriting its TTL prefix only. Returns the new expiry (ms since
    the epoch), 0 for none, or None when the key is missing or expired."""
    env = engine.of(db)
    dbi = namespace_dbi(db, namespace)
    if dbi is None:
        return None
    now = now_of(db)
    step = env.ttl.step_for(namespace) if ttl_ms else None

    def write(txn: lmdb.Transaction) -> int | None:  # repeatable: the writer replays it after growing the map
        stored = txn.get(key, db=dbi)
        if stored is None:
            return None
        if is_ttl(stored):
            try:
                if parse_ttl(stored)[0] <= now:
                    return None  # expired: missing, as for every read
            except CorruptionError as exc:
                raise Refused(CorruptionError(f"its TTL prefix is damaged ({exc.reason}); "
                                              f"`kvstore inspect` shows the record",
                                              key=key, namespace=namespace)) from None
        record = bytes(inner_record(stored))  # the v1 record, copied as it is
        if ttl_ms:
            if step is not None:
                step(txn)  # the namespace's ttl: key and store format 2, as a first TTL value gives
            txn.put(key, wrap_ttl(record, now + ttl_ms, ttl_ms), db=dbi)
            return now + ttl_ms
        if is_ttl(stored):
            txn.put(key, record, db=dbi)
        return 0

    result: int | None = env.writer.run(write, count=True)  # type: ignore[union-attr]  # open_writable's
    if step is not None and result:
        env.ttl.reload()  # it has its ttl: key now
    return result
