"""`kvstore compact PATH -o DEST`: a compacted copy of a store, without the
values whose TTL has run out, its pages as full as LMDB fills them.

LMDB's own compacting copy (mdb_env_copy2 with MDB_CP_COMPACT) drops the
free pages but copies every page as it is: a store built by random inserts
keeps its leaf pages about two thirds full. So the copy is then rewritten
database by database in key order with MDB_APPEND, which fills each page
before starting the next (bench/README.md, "Issue 17", measures both)."""

from __future__ import annotations

import os
import shutil
import tempfile

import lmdb

from kvstore import engine, lmdbwalk
from kvstore import ttl
from kvstore.layout import META_DB, TTL_PREFIX
from kvstore.errors import CorruptionError, translate

from ._common import CommandError, human_size, now_of, open_readonly, plural, write_json
from ._copy import check_dest, copy_store

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._common import Args, Out, Parser, Subparsers


def add_parser(subparsers: Subparsers) -> Parser:
    p = subparsers.add_parser(
        "compact", help="write a compacted copy of a store (free pages dropped, pages filled)",
        description="Write a compacted copy of the store at PATH into DEST (new, or an empty "
                    "directory): free pages and expired values are left out and every "
                    "database is rewritten in key order, so that its pages are full. The copy "
                    "is one consistent snapshot; writers may keep running. Prints the size "
                    "saved and the expired values dropped.")
    p.add_argument("path", help="store directory")
    p.add_argument("-o", "--output", metavar="DEST", required=True, help="directory of the copy")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


# One write transaction holds its dirty pages in memory, up to LMDB's limit
# of 131,072 pages (512 MiB of 4 KiB pages): the rebuild commits after this
# many bytes of keys and values, which leaves a few pages of the rightmost
# path of the tree free at each commit (about 4 per 96 MiB).
_REBUILD_TXN_BYTES = 96 << 20


def _rebuild(directory: str, now: int) -> int:
    """Rewrite the private copy in directory with every page as full as LMDB
    fills it: each database's records put in key order with MDB_APPEND (a
    full page then starts a new one instead of splitting in two, so no page
    is left half empty by the random inserts that built the store), without
    the values expired at now (ms) in namespaces that hold TTL values.
    Returns how many expired values were left out. A value whose TTL prefix
    is damaged is kept, as the sweep keeps it."""
    source_path = os.path.join(directory, "data.mdb")
    names = [name for name in lmdbwalk.walk(directory).dbs if name not in (lmdbwalk.FREE_DB, lmdbwalk.MAIN_DB)]
    tmp = tempfile.mkdtemp(prefix=".compact.", dir=directory)
    dropped = 0
    try:
        src = lmdb.open(directory, readonly=True, max_dbs=len(names) + 2, lock=False, readahead=False)
        try:
            dst = lmdb.open(tmp, max_dbs=len(names) + 2, map_size=2 * os.path.getsize(source_path) + (1 << 20),
                            sync=False, metasync=False, readahead=False, lock=False)
            try:
                with src.begin() as rtxn:
                    timed = _ttl_namespaces(src, rtxn)
                    main_plain = _main_records(src, rtxn, set(names))
                    for name in names:
                        dropped += _append_db(src, rtxn, dst, name, now if name.encode() in timed else None)
                    if main_plain:  # keys of other tools beside the named databases: in key order too
                        with dst.begin(write=True) as wtxn:
                            for key, value in main_plain:
                                wtxn.put(key, value)
                dst.sync(True)
            finally:
                dst.close()
        finally:
            src.close()
        os.replace(os.path.join(tmp, "data.mdb"), source_path)
    except lmdb.Error as exc:
        raise translate(exc, "rewriting the copy in key order") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dropped


def _ttl_namespaces(env: lmdb.Environment, txn: lmdb.Transaction) -> set[bytes]:
    """Names (bytes) of the namespaces that have held TTL values."""
    try:
        meta = env.open_db(META_DB, txn=txn, create=False)
    except lmdb.NotFoundError:
        return set()
    return {bytes(k)[len(TTL_PREFIX):] for k, _ in txn.cursor(db=meta) if bytes(k).startswith(TTL_PREFIX)}


def _main_records(env: lmdb.Environment, txn: lmdb.Transaction, names: set[str]) -> list[tuple[bytes, bytes]]:
    """(key, value) of the main database that are not named databases."""
    return [(bytes(k), bytes(v)) for k, v in txn.cursor()
            if bytes(k).decode("utf-8", "backslashreplace") not in names]


def _append_db(src: lmdb.Environment, rtxn: lmdb.Transaction, dst: lmdb.Environment, name: str,
               now: int | None) -> int:
    """Copy database `name` from src (read in rtxn) into dst in key order
    with MDB_APPEND, committing every _REBUILD_TXN_BYTES; without the values
    expired at now (None: keep all). Returns how many were left out."""
    dbi: Any = src.open_db(name.encode(), txn=rtxn, create=False)  # (flags(txn): the stub lacks txn)
    flags = dbi.flags(rtxn)
    if flags.get("dupsort"):
        raise CommandError(f"database {name!r} holds duplicate keys (DUPSORT), which kvstore never writes: "
                           f"this is not a kvstore store; copy it with mdb_copy -c")
    options: Any = {k: flags[k] for k in ("reverse_key", "integerkey") if flags.get(k)}
    out = dst.open_db(name.encode(), create=True, **options)
    dropped = 0
    cursor = rtxn.cursor(db=dbi)
    more = cursor.first()
    while more:
        with dst.begin(write=True) as wtxn:
            put = wtxn.cursor(db=out).put
            size = 0
            while more and size < _REBUILD_TXN_BYTES:
                key, value = cursor.item()
                if now is not None and _expired(value, now):
                    dropped += 1
                else:
                    put(key, value, append=True)
                    size += len(key) + len(value)
                more = cursor.next()
    return dropped


def _expired(record: bytes | memoryview, now: int) -> bool:
    try:
        expires = ttl.expiry_ms(record)
    except CorruptionError:
        return False
    return 0 < expires <= now


def run(args: Args, out: Out) -> int:
    check_dest(args.output)
    dropped = 0

    def rewrite(directory: str) -> None:
        nonlocal dropped
        dropped = _rebuild(directory, now)

    with open_readonly(args.path, clock=args.clock) as db:
        now = now_of(db)  # values expired at the start of the copy are dropped
        before = os.path.getsize(os.path.join(engine.of(db).path, "data.mdb"))
        after = copy_store(db, args.output, compact=True, label="compact", rewrite=rewrite)
    saved = before - after
    doc = {"source": args.path, "dest": args.output, "source_bytes": before, "dest_bytes": after,
           "saved_bytes": saved, "saved_fraction": saved / before if before else 0.0,
           "expired_dropped": dropped}
    if args.json:
        write_json(out, doc)
    else:
        out.write(f"compacted {args.path} ({human_size(before)}) into {args.output} ({human_size(after)}): "
                  f"saved {human_size(saved)} ({100 * doc['saved_fraction']:.1f}%)"
                  + (f", dropped {plural(dropped, 'expired value')}" if dropped else "") + "\n")
    return 0
