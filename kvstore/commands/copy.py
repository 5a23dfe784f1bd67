"""`kvstore copy SRC DST`: copy every namespace and record of a store into
another, of either engine (a local directory, an etcd:// URL): the move a
user makes when one machine is no longer enough, and back.

It goes through the public Store API on both sides: each value is read
(decoded, its checksum verified) and put again, so the destination encodes
it afresh with its own compression and dictionaries (a dictionary id of the
source means nothing there); a value keeps the moment it expires (the
destination's TTL is what is left of the source's, to the destination's
granularity: whole seconds on etcd), and a namespace its default TTL. The
puts are buffered (grouped by the destination's writer), then flushed
durably; then every record is read back from the destination and compared
with what was read from the source (the value's msgpack bytes, and its
expiry to within EXPIRY_SLACK seconds).

A destination that holds records is refused unless --backup DIR (a copy of
it first: a local store is copied as `kvstore backup` does, into DIR; a
store on etcd is dumped as jsonl into DIR/dump.jsonl, which `kvstore load`
reads back) or --force (records of the same key are overwritten, others
kept, nothing saved). --dry-run reads the source and says what it would
do, and writes nothing.
"""

from __future__ import annotations

import hashlib
import os
import time

import msgpack

from kvstore.errors import StoreNotFoundError

from ._common import CommandError, Progress, clock_of, human_size, is_url, open_readonly, open_writable, plural, quote_key, \
    write_json
from ._copy import check_dest, copy_store
from ._output import AtomicOutput
from ._portable import counts, dictionaries, dump_jsonl, handle_of, put_with_expiry, records

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvstore.store import Store

    from ._common import Args, Out, Parser, Subparsers

__all__ = ["add_parser", "run", "EXPIRY_SLACK"]

# How far a copied value's expiry may be from the source's, in seconds: etcd
# grants leases in whole seconds, and the TTL is taken at the put
EXPIRY_SLACK = 2.0
# (key, digest of the value's msgpack bytes, expires_at or None) of each record copied
Copied = list[tuple[bytes, bytes, float | None]]


def add_parser(subparsers: Subparsers) -> Parser:
    p = subparsers.add_parser(
        "copy", help="copy a store into another, of either engine (local directory, etcd URL)",
        description="Copy every namespace and record of SRC into DST, each a store directory or an "
                    "etcd://HOST:PORT[,...]/PREFIX URL: values with their expiry, namespaces with their "
                    "default TTL. Values are encoded afresh by DST (its compression and dictionaries). "
                    "Then every record is read back from DST and compared with the source's; exit "
                    "status 1 when one differs. A DST that holds records is refused unless --backup DIR "
                    "or --force. Prints namespaces, records, bytes, time and records/s.")
    p.add_argument("source", metavar="SRC", help="the store to copy (directory or etcd URL)")
    p.add_argument("dest", metavar="DST", help="the store to copy into (created if missing)")
    p.add_argument("--dry-run", action="store_true", help="say what would be copied; write nothing")
    p.add_argument("--backup", metavar="DIR",
                   help="first back DST up into DIR (new or empty): a local DST as `kvstore backup` copies it, "
                        "a DST on etcd as a jsonl dump, DIR/dump.jsonl, which `kvstore load` reads")
    p.add_argument("--force", action="store_true",
                   help="copy into a DST that holds records without a backup (same keys overwritten, others kept)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def _digest(value: Any) -> tuple[bytes, int]:
    """(a digest of the value's msgpack bytes, their size): what the check
    compares (bytes, so that a NaN equals itself)."""
    packed = msgpack.packb(value, use_bin_type=True)
    return hashlib.blake2b(packed, digest_size=16).digest(), len(packed)


def _same(source: str, dest: str) -> bool:
    if is_url(source) or is_url(dest):
        return source.rstrip("/") == dest.rstrip("/")
    return os.path.realpath(source) == os.path.realpath(dest)


def _dest_counts(args: Args) -> list[tuple[str, int]]:
    """[(namespace, entries)] of DST as it is; [] when there is no store there."""
    if not is_url(args.dest) and not os.path.exists(os.path.join(args.dest, "data.mdb")):
        return []
    try:
        with open_readonly(args.dest, clock=args.clock) as db:
            return counts(db)
    except StoreNotFoundError:
        return []


def _backup(args: Args, held: int) -> str:
    """Back DST up into args.backup; the line saying what was saved."""
    if not held:
        return f"{args.dest} holds no records: nothing to back up"
    with open_readonly(args.dest, clock=args.clock) as db:
        if is_url(args.dest):
            os.makedirs(args.backup, exist_ok=True)
            target = os.path.join(args.backup, "dump.jsonl")
            with AtomicOutput(target) as f, Progress("copy: backup", held) as progress:
                n = dump_jsonl(db, db.namespaces(), f.write, progress)
            return f"backed up {args.dest} ({plural(n, 'record')}) to {target} (jsonl; `kvstore load` restores it)"
        size = copy_store(db, args.backup, compact=False, label="copy: backup")
    return f"backed up {args.dest} to {args.backup} ({human_size(size)}; a store directory as it was)"


def _survey(src: Store[Any]) -> list[tuple[str, int, int]]:
    """[(namespace, records, bytes)] of the source: what a dry run reports."""
    found = []
    with Progress("copy: reading") as progress:
        for name in src.namespaces():
            n = nbytes = 0
            for _, value, _ in records(handle_of(src, name)):
                n += 1
                nbytes += _digest(value)[1]
                progress.update()
            found.append((name, n, nbytes))
    return found


def _copy(src: Store[Any], dst: Store[Any], total: int) -> tuple[dict[str, Copied], dict[str, int], int, int]:
    """Put every record of src into dst, buffered, then flush: ({namespace:
    copied}, {namespace: bytes}, values expired meanwhile, default TTLs set)."""
    copied: dict[str, Copied] = {}
    sizes: dict[str, int] = {}
    expired = defaults = 0
    with Progress("copy", total) as progress:
        for name in src.namespaces():
            source, dest = handle_of(src, name), handle_of(dst, name)
            default = source.default_ttl
            if default and dest.default_ttl != default:
                dest.set_default_ttl(default)
                defaults += 1
            has_default = bool(dest.default_ttl)
            done: Copied = []
            copied[name] = done
            sizes[name] = 0
            for key, value, expiry in records(source):
                digest, size = _digest(value)
                expires_at = None if expiry is None else expiry[0]
                if put_with_expiry(dest, key, value, expires_at, has_default, durable=False):
                    done.append((key, digest, expires_at))
                    sizes[name] += size
                else:
                    expired += 1
                progress.update()
        dst.flush()
    return copied, sizes, expired, defaults


def _verify(dst: Store[Any], copied: dict[str, Copied]) -> tuple[list[tuple[str, bytes, str]], int]:
    """Read every copied record back from dst, by a scan of each namespace
    (on etcd, pages of keys read at one revision, then each record's lease):
    ([(namespace, key, what differs)], values that expired since)."""
    bad = []
    expired = 0
    with Progress("copy: checking", sum(len(c) for c in copied.values())) as progress:
        for name, done in copied.items():
            dest = handle_of(dst, name)
            wanted = {key: (digest, expires_at) for key, digest, expires_at in done}
            for key, value, expiry in records(dest):
                if key not in wanted:
                    continue  # a key DST held before the copy
                digest, expires_at = wanted.pop(key)
                problem = _compare(digest, expires_at, value, expiry)
                if problem is not None:
                    bad.append((name, key, problem))
                progress.update()
            now = clock_of(dest)()
            for key, (_, expires_at) in sorted(wanted.items()):  # not found by the scan
                if expires_at is not None and expires_at <= now + EXPIRY_SLACK:
                    expired += 1
                else:
                    bad.append((name, key, "missing"))
                progress.update()
    return bad, expired


def _compare(digest: bytes, expires_at: float | None, value: Any, expiry: tuple[float, float] | None) -> str | None:
    """What differs between a record read back and the source's (None: nothing)."""
    if _digest(value)[0] != digest:
        return "its value differs from the source's"
    if expires_at is None and expiry is not None:
        return "it expires, and the source's does not"
    if expires_at is not None:
        if expiry is None:
            return "it never expires, and the source's does"
        if abs(expiry[0] - expires_at) > EXPIRY_SLACK:
            return f"it expires {expiry[0] - expires_at:+.3f} s from the source's"
    return None


def run(args: Args, out: Out) -> int:
    if _same(args.source, args.dest):
        raise CommandError(f"SRC and DST are the same store ({args.source!r}); give another DST")
    held_by = _dest_counts(args)
    held = sum(n for _, n in held_by)
    if held and not (args.backup or args.force or args.dry_run):
        raise CommandError(f"{args.dest!r} holds {plural(held, 'record')} in "
                           f"{plural(sum(1 for _, n in held_by if n), 'namespace')}; give --backup DIR to save "
                           f"them first, or --force to copy over them unsaved (same keys overwritten)")
    if args.backup is not None:
        check_dest(args.backup)
    with open_readonly(args.source, clock=args.clock) as src:
        if args.dry_run:
            return _dry_run(args, out, _survey(src), held)
        backup = _backup(args, held) if args.backup is not None else None
        total = sum(n for _, n in counts(src))
        trained = sorted({(d["namespace"], d["id"]) for d in dictionaries(src)[0] if d.get("current")})
        dst = open_writable(args.dest, create=True, clock=args.clock)
        try:
            started = time.perf_counter()
            copied, sizes, expired, defaults = _copy(src, dst, total)
            copy_s = time.perf_counter() - started
            bad, expired_since = _verify(dst, copied)
            seconds = time.perf_counter() - started
        finally:
            dst.close()
    n = sum(len(c) for c in copied.values())
    doc = {"source": args.source, "dest": args.dest, "namespaces": {name: {"records": len(c), "bytes": sizes[name]}
                                                                    for name, c in copied.items()},
           "records": n, "bytes": sum(sizes.values()), "seconds": seconds, "copy_seconds": copy_s,
           "records_per_s": n / seconds if seconds else None, "expired_left_out": expired,
           "expired_since": expired_since, "default_ttls_set": defaults, "backup": backup,
           "dictionaries_not_copied": [{"namespace": ns, "id": did} for ns, did in trained],
           "mismatches": [{"namespace": ns, "key": quote_key(key), "problem": p} for ns, key, p in bad]}
    if args.json:
        write_json(out, doc)
        return 1 if bad else 0
    if backup is not None:
        out.write(backup + "\n")
    for name, c in copied.items():
        out.write(f"  namespace {name!r}: {plural(len(c), 'record')}, {human_size(sizes[name])}\n")
    rate = f"{n / seconds:,.0f} records/s" if seconds else "-"
    out.write(f"copied {plural(len(copied), 'namespace')}, {plural(n, 'record')} "
              f"({human_size(doc['bytes'])} of values) from {args.source} to {args.dest} in {seconds:.2f} s "
              f"({rate}; writing {copy_s:.2f} s, checking {seconds - copy_s:.2f} s)\n")
    if expired:
        out.write(f"left out {plural(expired, 'value')} that expired before it was copied\n")
    for ns, did in trained:
        hint = ("a store on etcd takes none" if is_url(args.dest) else
                f"`kvstore train-dict {args.dest} -n {ns}` trains one there")
        out.write(f"namespace {ns!r} was compressed with dictionary {did} at {args.source}; dictionaries are not "
                  f"copied, so {args.dest} compresses its values without one ({hint})\n")
    for ns, key, problem in bad:
        out.write(f"DIFFERS  namespace {ns!r}  key {quote_key(key)}: {problem}\n")
    checked = n - expired_since
    verdict = "all match" if not bad else f"{plural(len(bad), 'record')} differ"
    out.write(f"read back {plural(checked, 'record')} from {args.dest} and compared with the source: {verdict}"
              + (f" ({expired_since:,} expired meanwhile)" if expired_since else "") + "\n")
    return 1 if bad else 0


def _dry_run(args: Args, out: Out, found: list[tuple[str, int, int]], held: int) -> int:
    n, nbytes = sum(r for _, r, _ in found), sum(b for _, _, b in found)
    if args.json:
        write_json(out, {"source": args.source, "dest": args.dest, "dry_run": True,
                         "namespaces": {name: {"records": r, "bytes": b} for name, r, b in found},
                         "records": n, "bytes": nbytes, "dest_records": held,
                         "refused": bool(held and not (args.backup or args.force))})
        return 0
    for name, r, b in found:
        out.write(f"  namespace {name!r}: {plural(r, 'record')}, {human_size(b)}\n")
    out.write(f"would copy {plural(len(found), 'namespace')}, {plural(n, 'record')} ({human_size(nbytes)} of "
              f"values) from {args.source} to {args.dest}\n")
    if not held:
        out.write(f"{args.dest} holds no records\n")
    elif args.backup:
        out.write(f"would first back up {args.dest} ({plural(held, 'record')}) into {args.backup}\n")
    elif args.force:
        out.write(f"would copy over the {plural(held, 'record')} {args.dest} holds (--force: no backup)\n")
    else:
        out.write(f"would refuse: {args.dest} holds {plural(held, 'record')}; give --backup DIR or --force\n")
    out.write("(dry run: nothing written)\n")
    return 0
