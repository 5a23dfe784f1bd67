"""`kvstore backup PATH DEST`: a hot, consistent copy of a store."""

from __future__ import annotations

from ._common import human_size, open_readonly, write_json
from ._copy import check_dest, copy_store

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._common import Args, Out, Parser, Subparsers


def add_parser(subparsers: Subparsers) -> Parser:
    p = subparsers.add_parser(
        "backup", help="copy a live store (consistent snapshot) into a new directory",
        description="Copy the store at PATH into DEST (new, or an empty directory) while writers "
                    "keep running: the copy is the store as of one committed transaction. DEST "
                    "opens as a store as it is.")
    p.add_argument("path", help="store directory")
    p.add_argument("dest", help="directory of the copy")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def run(args: Args, out: Out) -> int:
    check_dest(args.dest)
    with open_readonly(args.path, clock=args.clock) as db:
        size = copy_store(db, args.dest, compact=False, label="backup")
    if args.json:
        write_json(out, {"source": args.path, "dest": args.dest, "bytes": size})
    else:
        out.write(f"backed up {args.path} to {args.dest} ({human_size(size)})\n")
    return 0
