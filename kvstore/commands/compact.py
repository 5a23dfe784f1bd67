"""`kvstore compact PATH -o DEST`: a compacted copy of a store, without the
values whose TTL has run out."""

from __future__ import annotations

import os
import shutil
import tempfile

import lmdb

from kvstore import engine
from kvstore import ttl
from kvstore.layout import META_DB, TTL_PREFIX
from kvstore.errors import CorruptionError, translate

from ._common import CLI_MAX_NAMESPACES, human_size, now_of, open_readonly, plural, write_json
from ._copy import check_dest, copy_store


def add_parser(subparsers):
    p = subparsers.add_parser(
        "compact", help="write a compacted copy of a store (free pages dropped)",
        description="Write a compacted copy of the store at PATH into DEST (new, or an empty "
                    "directory): free pages and expired values are left out and the pages "
                    "renumbered. The copy is one consistent snapshot; writers may keep running. "
                    "Prints the size saved and the expired values dropped.")
    p.add_argument("path", help="store directory")
    p.add_argument("-o", "--output", metavar="DEST", required=True, help="directory of the copy")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def _drop_expired(directory: str, now: int) -> int:
    """Delete the values expired at now (ms) from the private copy in
    directory, then compact it again (the deletions freed pages); return how
    many were deleted. A value whose TTL prefix is damaged is kept, as the
    sweep keeps it."""
    path = os.path.join(directory, "data.mdb")
    again = None
    try:
        env = lmdb.open(directory, max_dbs=CLI_MAX_NAMESPACES + 2, map_size=2 * os.path.getsize(path) + (1 << 20),
                        sync=False, metasync=False, readahead=False, lock=False)
        try:
            with env.begin(write=True) as txn:
                meta = env.open_db(META_DB, txn=txn, create=False)
                names = [bytes(k)[len(TTL_PREFIX):] for k, _ in txn.cursor(db=meta)
                         if bytes(k).startswith(TTL_PREFIX)]
                dropped = 0
                for name in names:
                    try:
                        dbi = env.open_db(name, txn=txn, create=False)
                    except lmdb.NotFoundError:
                        continue
                    expired = [bytes(key) for key, record in txn.cursor(db=dbi) if _expired(record, now)]
                    for key in expired:
                        txn.delete(key, db=dbi)
                    dropped += len(expired)
            if dropped:
                again = tempfile.mkdtemp(prefix=".compact.", dir=directory)
                env.copy(again, compact=True)
        finally:
            env.close()
    except lmdb.Error as exc:
        raise translate(exc, "dropping expired values from the copy") from None
    if again is not None:
        os.replace(os.path.join(again, "data.mdb"), path)
        shutil.rmtree(again)
    return dropped


def _expired(record, now: int) -> bool:
    try:
        expires = ttl.expiry_ms(record)
    except CorruptionError:
        return False
    return 0 < expires <= now


def run(args, out) -> int:
    check_dest(args.output)
    dropped = 0

    def rewrite(directory):
        nonlocal dropped
        dropped = _drop_expired(directory, now)

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
