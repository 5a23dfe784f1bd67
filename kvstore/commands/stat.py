"""`kvstore stat PATH`: the environment, each namespace, the codec."""

from __future__ import annotations

import os
from collections import Counter

from kvstore import codec, engine
from kvstore.codec.format import HEADER, HEADER_SIZE, TTL_HEADER_SIZE, TTL_VERSION, parse_ttl
from kvstore.errors import CorruptionError

from ._common import human_size, now_of, open_readonly, plural, write_json
from ._encoding import escape_key
from ._records import namespaces, snapshot_meta


def add_parser(subparsers):
    p = subparsers.add_parser(
        "stat", help="statistics of a store: map, pages, sizes, compression",
        description="Statistics of the store at PATH, from one consistent snapshot: the LMDB "
                    "environment (map size and use, page size, last transaction, readers), each "
                    "namespace (entries, B-tree depth and pages, stored and decoded bytes, "
                    "compression ratio, dictionaries in use, values with a TTL and how many of them "
                    "have expired, the default TTL) and the codec backend.")
    p.add_argument("path", help="store directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def _namespace_stats(txn, dbi, now: int) -> dict:
    st = txn.stat(dbi) if dbi is not None else {"entries": 0, "depth": 0, "branch_pages": 0,
                                                "leaf_pages": 0, "overflow_pages": 0}
    stored = decoded = bad = with_ttl = expired = 0
    dicts: Counter = Counter()
    if dbi is not None:
        unpack = HEADER.unpack_from
        for _key, record in txn.cursor(db=dbi):
            stored += len(record)
            at = 0
            if len(record) and record[0] == TTL_VERSION:
                with_ttl += 1
                try:
                    expired += parse_ttl(record)[0] <= now
                except CorruptionError:
                    bad += 1
                    continue
                at = TTL_HEADER_SIZE
            if len(record) < at + HEADER_SIZE:
                bad += 1
                continue
            version, _flags, raw_len, dict_id, _ = unpack(record, at)
            if version != 1:
                bad += 1
                continue
            decoded += raw_len
            if dict_id:
                dicts[dict_id] += 1
    return {
        "entries": st["entries"],
        "depth": st["depth"],
        "pages": {"branch": st["branch_pages"], "leaf": st["leaf_pages"], "overflow": st["overflow_pages"]},
        "stored_bytes": stored,
        "decoded_bytes": decoded,
        "compression_ratio": stored / decoded if decoded else None,
        "dictionaries_in_use": {str(k): v for k, v in sorted(dicts.items())},
        "unreadable_headers": bad,
        "ttl_values": with_ttl,
        "expired_values": expired,
    }


def collect(db) -> dict:
    env = engine.of(db)
    handles = namespaces(db)

    def read(txn):
        meta = snapshot_meta(txn, env)
        now = now_of(db)
        per_ns = {name: _namespace_stats(txn, dbi, now) for name, dbi in handles}
        for name, ns in per_ns.items():
            default = meta.ttl_defaults.get(name, 0)
            ns["default_ttl"] = default / 1000 if default else None
        return meta, per_ns, txn.id()

    meta, per_ns, txnid = env.read(read)
    info = env.info()
    data_file = os.path.join(env.path, "data.mdb")
    return {
        "path": env.path,
        "codec": codec.backend,
        "environment": {
            "map_size": info["map_size"],
            "map_used": info["map_used"],
            "file_size": os.path.getsize(data_file),
            "page_size": info["psize"],
            "last_txnid": info["last_txnid"],
            "snapshot_txnid": txnid,
            "readers": info["num_readers"],
            "max_readers": info["max_readers"],
            "format_version": meta.format_version.decode("ascii", "replace") if meta.format_version else None,
            "commit_seq": meta.commit_seq,
        },
        "namespaces": per_ns,
        "dictionaries": [{"id": did, **doc, "current_for": sorted(ns for ns, cur in meta.current.items()
                                                                  if cur == did)}
                         for did, doc in sorted(meta.docs.items())],
    }


def _table(out, header, rows, align) -> None:
    """Columns padded to their widest cell; align: one "l" or "r" per column."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    for r in [header] + rows:
        cells = [str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(r, widths, align)]
        out.write("  ".join(cells).rstrip() + "\n")


def run(args, out) -> int:
    with open_readonly(args.path, clock=args.clock) as db:
        report = collect(db)
    if args.json:
        write_json(out, report)
        return 0
    e = report["environment"]
    pct = 100.0 * e["map_used"] / e["map_size"] if e["map_size"] else 0.0
    lines = [
        ("store", report["path"]),
        ("codec", report["codec"]),
        ("format", str(e["format_version"])),
        ("map", f"{human_size(e['map_size'])}, {human_size(e['map_used'])} used ({pct:.1f}%); "
                f"data.mdb is {human_size(e['file_size'])}"),
        ("page size", f"{e['page_size']} bytes"),
        ("last txn", f"{e['last_txnid']} ({plural(e['commit_seq'] or 0, 'group commit')} by kvstore)"),
        ("readers", f"{e['readers']} of {e['max_readers']} reader slots in use"),
    ]
    for label, text in lines:
        out.write(f"{label:<10}  {text}\n")
    out.write("\n")
    rows = []
    for name, ns in report["namespaces"].items():
        ratio = ns["compression_ratio"]
        p = ns["pages"]
        rows.append([escape_key(name.encode("utf-8")), f"{ns['entries']:,}", ns["depth"],
                     f"{p['branch']}/{p['leaf']}/{p['overflow']}", human_size(ns["stored_bytes"]),
                     human_size(ns["decoded_bytes"]), "-" if ratio is None else f"{ratio:.3f}",
                     ",".join(ns["dictionaries_in_use"]) or "-",
                     f"{ns['ttl_values']:,}/{ns['expired_values']:,}" if ns["ttl_values"] else "-",
                     "-" if ns["default_ttl"] is None else f"{ns['default_ttl']:g} s"])
    _table(out, ["namespace", "entries", "depth", "pages b/l/o", "stored", "decoded", "ratio", "dicts",
                 "ttl/expired", "default ttl"], rows, "lrrrrrrlrr")
    out.write("\n(stored: record bytes with their headers; decoded: the values' serialized size; ratio: "
              "stored / decoded;\n ttl/expired: values with a TTL, and those of them expired but not yet "
              "swept, counted in entries)\n")
    bad = sum(ns["unreadable_headers"] for ns in report["namespaces"].values())
    if bad:
        out.write(f"{bad} records have unreadable headers: run `kvstore check`\n")
    if report["dictionaries"]:
        out.write("\ndictionaries:\n")
        drows = [[str(d["id"]), escape_key(str(d["namespace"]).encode("utf-8")), human_size(d["size"]),
                  str(d["samples"]), ",".join(d["current_for"]) or "-"] for d in report["dictionaries"]]
        _table(out, ["id", "namespace", "size", "samples", "current for"], drows, "rlrrl")
    return 0
