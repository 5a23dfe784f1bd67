"""`kvstore checkpoint PATH`: apply the write-ahead log to LMDB and sync
everything, leaving an empty log; after it, data.mdb alone holds every
acknowledged write (`mdb_dump`, `mdb_copy` and other LMDB tools see them)."""

from __future__ import annotations

import os
import struct

from kvstore import engine
from kvstore.wal import INDEX_FILE

from ._common import open_writable, write_json

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._common import Args, Out, Parser, Subparsers


def add_parser(subparsers: Subparsers) -> Parser:
    p = subparsers.add_parser(
        "checkpoint", help="apply the write-ahead log to data.mdb and empty the log",
        description="Apply every record of the store's write-ahead log to LMDB in one synced "
                    "transaction and start the log afresh: after it, data.mdb alone holds every "
                    "acknowledged write, for LMDB's own tools (mdb_dump, mdb_copy). Other "
                    "processes may keep writing meanwhile; their later writes go to the log again.")
    p.add_argument("path", help="store directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def unapplied_bytes(path: str) -> int:
    """Bytes of log records LMDB does not hold yet, from the index page as
    the last writer left it (0 when the store has no log)."""
    try:
        with open(os.path.join(os.fspath(path), INDEX_FILE), "rb") as f:
            raw = f.read(88)
    except OSError:
        return 0
    if len(raw) < 88:
        return 0
    _gen, _z, end, _sum, _synced, applied, _asum = struct.unpack_from("<IIQQQQQ", raw, 40)
    unapplied: int = max(end - applied, 0)
    return unapplied


def run(args: Args, out: Out) -> int:
    # wal=False: a store without a log stays without one (format 1 or 2);
    # a store with a log uses it whatever the option says
    db = open_writable(args.path, create=False, clock=args.clock, wal=False)
    try:
        eng = engine.of(db)
        before = unapplied_bytes(args.path)
        db.flush()
        report = {"path": db.path, "log": eng.tail is not None, "applied_bytes": before}
        if eng.tail is not None:
            st: Any = eng.log.state()  # type: ignore[union-attr]  # with the tail
            report["unapplied_bytes"] = st.end - st.applied
    finally:
        db.close()
    if getattr(args, "json", False):
        write_json(out, report)
    elif not report["log"]:
        out.write(f"{report['path']}: no write-ahead log (store format below 3); data.mdb holds "
                  f"everything\n")
    else:
        out.write(f"{report['path']}: applied {before} bytes of log records; the log is empty "
                  f"and data.mdb holds every acknowledged write\n")
    return 0
