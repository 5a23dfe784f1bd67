"""`kvstore compact PATH -o DEST`: a compacted copy of a store."""

from __future__ import annotations

import os

from ._common import human_size, open_readonly, write_json
from ._copy import check_dest, copy_store


def add_parser(subparsers):
    p = subparsers.add_parser(
        "compact", help="write a compacted copy of a store (free pages dropped)",
        description="Write a compacted copy of the store at PATH into DEST (new, or an empty "
                    "directory): free pages are left out and the pages renumbered. The copy is "
                    "one consistent snapshot; writers may keep running. Prints the size saved.")
    p.add_argument("path", help="store directory")
    p.add_argument("-o", "--output", metavar="DEST", required=True, help="directory of the copy")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def run(args, out) -> int:
    check_dest(args.output)
    with open_readonly(args.path) as db:
        before = os.path.getsize(os.path.join(db._env.path, "data.mdb"))
        after = copy_store(db, args.output, compact=True, label="compact")
    saved = before - after
    doc = {"source": args.path, "dest": args.output, "source_bytes": before, "dest_bytes": after,
           "saved_bytes": saved, "saved_fraction": saved / before if before else 0.0}
    if args.json:
        write_json(out, doc)
    else:
        out.write(f"compacted {args.path} ({human_size(before)}) into {args.output} ({human_size(after)}): "
                  f"saved {human_size(saved)} ({100 * doc['saved_fraction']:.1f}%)\n")
    return 0
