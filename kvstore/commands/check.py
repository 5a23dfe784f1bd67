"""`kvstore check PATH`: verify every page of the file, the write-ahead log's
unapplied records, then every record of every namespace."""

from __future__ import annotations

import os

from kvstore import engine, lmdbwalk, wal
from kvstore.errors import KVStoreError
from kvstore.layout import TTL_STORE_FORMAT

from .checkpoint import unapplied_bytes
from ._common import Progress, is_url, now_of, open_readonly, plural, quote_key, write_json
from ._portable import check_records, counts, dictionaries
from ._encoding import key_to_json
from ._records import examine, namespaces, snapshot_meta

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lmdb

    from ._common import Args, Out, Parser, Subparsers


# What `check` of an etcd URL leaves to etcd, said in its report
NOT_CHECKED = ("pages, log and metadata database (an etcd store has no LMDB file; etcd checks its own "
               "data: compare the members with `etcdctl endpoint hashkv --cluster`)")


def add_parser(subparsers: Subparsers) -> Parser:
    p = subparsers.add_parser(
        "check", help="verify every value: header, checksum, dictionary, decode",
        description="Walk every page of the data file first, without LMDB (page numbers, kinds, "
                    "bounds, key order, depth, the page and entry counts LMDB records, the free "
                    "list); damaged pages are listed with their position and the records are not "
                    "read (LMDB would crash on them). Then read every record of every namespace "
                    "from one snapshot and check it the way a reader does (the write-ahead log's "
                    "records LMDB does not hold yet first: their chain of checksums, then the same "
                    "checks of their values; a damaged log is reported and the store not opened, "
                    "as opening it would stop there): TTL prefix, header, checksum, the dictionary it names, a full "
                    "decode, and that each namespace yields as many records as LMDB counts; also the "
                    "store's metadata and dictionaries. Prints each damaged key "
                    "with the reason and a summary. Expired values not yet swept are good values. "
                    "Exit status 0 when everything is good, 1 otherwise.")
    p.add_argument("path", help="store directory, or etcd://HOST:PORT[,...]/PREFIX")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def _walk_pages(args: Args, out: Out) -> tuple[int | None, lmdbwalk.Walk | None]:
    """The page walk, before LMDB touches the trees: (exit status if the
    pages are damaged, the walk)."""
    if not os.path.isfile(os.path.join(args.path, "data.mdb")):
        return None, None  # open_readonly says what is missing
    pages = lmdbwalk.walk(args.path)
    if pages.ok:
        return None, pages
    note = (" (the store was written to during every attempt: run check again when writes "
            "pause)" if pages.changing else "")
    if args.json:
        write_json(out, {"ok": False, "records_checked": False, "pages": _pages_doc(pages),
                         "page_problems": [p.to_json() for p in pages.problems], "changing": pages.changing})
        return 1, pages
    for p in pages.problems:
        out.write(f"BAD  {p}\n")
    out.write(f"walked {plural(pages.pages_read, 'page')} of {plural(pages.last_pg + 1, 'page')}: "
              f"{plural(len(pages.problems), 'problem')} in the pages{note}; the records were not read "
              f"(LMDB would crash or silently skip records on these pages): restore the store from a "
              f"backup\n")
    return 1, pages


class _LogRead:
    """The write-ahead log's unapplied part, read back without the engine."""

    def __init__(self) -> None:
        self.records = 0
        self.bytes = 0
        self.ops: list[tuple[str, bytes, bytes | None]] = []  # (namespace, key, stored or None)
        self.problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"records": self.records, "bytes": self.bytes, "ok": self.problem is None,
                "problem": self.problem}


def _read_log(path: str) -> _LogRead | None:
    """The records between the index's applied and end positions, each
    checked against the chain of checksums; None when the store has no log,
    or its index is not current (from another boot: the next writable open
    rebuilds it from the log's intact records, which is the recovery)."""
    if not os.path.exists(os.path.join(path, wal.LOG_FILE)):
        return None
    out = _LogRead()
    try:
        log = wal.Log(path, readonly=True, create=False, initial_size=0, max_size=0)
    except (KVStoreError, OSError) as exc:
        out.problem = str(exc)
        return out
    try:
        st = log.state()
        if st is None or not log.index_valid():
            return None
        out.bytes = st.end - st.applied
        try:
            for _end, _sum, payload in log.records(st.gen, st.applied, st.applied_sum, st.end):
                out.records += 1
                out.ops.extend(wal.decode_ops(payload))
        except KVStoreError as exc:
            out.problem = str(exc)
        except ValueError as exc:  # a record whose checksum holds but whose ops do not parse
            out.problem = (f"the write-ahead log's record {out.records + 1} after the applied part "
                           f"does not parse ({exc}); restore the store from a backup")
    finally:
        log.close()
    return out


def _log_damaged(args: Args, out: Out, log: _LogRead, pages: lmdbwalk.Walk | None) -> int:
    if args.json:
        write_json(out, {"ok": False, "records_checked": False, "log": log.to_json(),
                         "pages": None if pages is None else _pages_doc(pages), "page_problems": []})
        return 1
    out.write(f"BAD  write-ahead log: {log.problem}\n")
    out.write(f"the log's first {plural(log.records, 'unapplied record')} are intact; the store was not "
              f"opened (opening it applies the log and stops at the damage), so the records of "
              f"data.mdb were not read{'' if pages is None else ' (its pages are sound)'}\n")
    return 1


def _pages_doc(pages: lmdbwalk.Walk) -> dict[str, Any]:
    return {"total": pages.last_pg + 1, "read": pages.pages_read, "free": pages.free_pages,
            "page_size": pages.psize, "txnid": pages.txnid}


def _run_portable(args: Args, out: Out) -> int:
    """check of a store reached through the API (an etcd URL): every record
    read and decoded (the read verifies its checksum and dictionary); there
    are no pages, log or metadata database of kvstore's own to check."""
    with open_readonly(args.path, clock=args.clock) as db:
        found, why = dictionaries(db)
        with Progress("check", sum(n for _, n in counts(db))) as progress:
            per_ns, bad = check_records(db, progress)
    checked = sum(ns["values"] for ns in per_ns.values())
    with_ttl = sum(ns["ttl_values"] for ns in per_ns.values())
    ok = not bad
    if args.json:
        write_json(out, {
            "ok": ok, "values": checked, "bad_values": len(bad), "ttl_values": with_ttl, "expired_values": 0,
            "namespaces": per_ns,
            "bad": [{"namespace": ns, "key": key_to_json(key), "reason": reason} for ns, key, reason in bad],
            "metadata_problems": [], "dictionaries": sorted(d["id"] for d in found), "records_checked": True,
            "pages": None, "page_problems": [], "log": None, "not_checked": NOT_CHECKED})
        return 0 if ok else 1
    for ns, key, reason in bad:
        out.write(f"BAD  namespace {ns!r}  key {quote_key(key)}: {reason}\n")
    out.write(f"not checked: {NOT_CHECKED}\n")
    ttl_note = f" ({with_ttl:,} with a TTL)" if with_ttl else ""
    summary = f"checked {plural(checked, 'value')}{ttl_note} in {plural(len(per_ns), 'namespace')}: "
    out.write(summary + ("all good" if ok else plural(len(bad), "bad value")) + "\n")
    return 0 if ok else 1


def run(args: Args, out: Out) -> int:
    if is_url(args.path):
        return _run_portable(args, out)
    status, pages = _walk_pages(args, out)
    if status is not None:
        return status
    log = _read_log(args.path)
    if log is not None and log.problem is not None:
        return _log_damaged(args, out, log, pages)
    with open_readonly(args.path, clock=args.clock) as db:
        if log is not None and not unapplied_bytes(args.path):
            log.ops = []  # applied by the open: checked below as LMDB's records
        env = engine.of(db)
        codec = engine.codec_of(db)
        handles = namespaces(db)

        def snapshot(txn: lmdb.Transaction) -> Any:
            meta = snapshot_meta(txn, env)
            now = now_of(db)
            per_ns: dict[str, Any] = {}
            bad: list[Any] = []
            referenced: dict[Any, Any] = {}
            total = sum(txn.stat(dbi)["entries"] for _, dbi in handles if dbi is not None)
            with Progress("check", total) as progress:
                for name, dbi in handles:
                    n = nbad = with_ttl = expired = 0
                    if dbi is not None:
                        for key, record in txn.cursor(db=dbi):
                            ex = examine(record, codec, meta.dictionaries, key=bytes(key))
                            n += 1
                            with_ttl += ex.prefix_size > 0
                            expired += ex.expired(now)
                            if ex.dict_id:
                                referenced[ex.dict_id] = referenced.get(ex.dict_id, 0) + 1
                            if not ex.ok:
                                nbad += 1
                                bad.append((name, bytes(key), ex.problem))
                            progress.update()
                        counted = txn.stat(dbi)["entries"]
                        if n != counted:
                            meta.problems.append((f"namespace {name!r}", f"{n:,} records read, but LMDB "
                                                  f"counts {counted:,}: damaged pages hide records; restore "
                                                  f"the store from a backup"))
                    per_ns[name] = {"values": n, "bad": nbad, "ttl_values": with_ttl, "expired": expired}
                    if with_ttl and name not in meta.ttl_namespaces:
                        meta.problems.append((f"namespace {name!r}", "holds TTL values but has no ttl: key in "
                                              "the metadata, so len() miscounts it"))
            # the log's records LMDB does not hold yet (a user who may not apply them)
            for ns, logged_key, logged in [] if log is None else log.ops:
                if logged is None:
                    continue
                ex = examine(logged, codec, meta.dictionaries, key=logged_key)
                if ex.dict_id:
                    referenced[ex.dict_id] = referenced.get(ex.dict_id, 0) + 1
                if not ex.ok:
                    bad.append((ns, logged_key, f"{ex.problem} (in the write-ahead log)"))
            if meta.ttl_namespaces and meta.format_version is not None \
                    and meta.format_version.isdigit() and int(meta.format_version) < TTL_STORE_FORMAT:
                meta.problems.append(("metadata", f"TTL namespaces in a store of format "
                                      f"{meta.format_version.decode()}, not {TTL_STORE_FORMAT}"))
            return meta, per_ns, bad, referenced

        meta, per_ns, bad, referenced = env.read(snapshot)
    missing = sorted(did for did in referenced if did not in meta.dictionaries)
    problems = list(meta.problems)
    checked = sum(ns["values"] for ns in per_ns.values())
    ok = not bad and not problems
    if args.json:
        write_json(out, {
            "ok": ok,
            "values": checked,
            "bad_values": len(bad),
            "ttl_values": sum(ns["ttl_values"] for ns in per_ns.values()),
            "expired_values": sum(ns["expired"] for ns in per_ns.values()),
            "namespaces": per_ns,
            "bad": [{"namespace": ns, "key": key_to_json(key), "reason": reason} for ns, key, reason in bad],
            "metadata_problems": [{"what": what, "reason": reason} for what, reason in problems],
            "dictionaries": sorted(meta.dictionaries),
            "dictionaries_referenced": {str(k): v for k, v in sorted(referenced.items())},
            "dictionaries_missing": missing,
            "records_checked": True,
            "pages": None if pages is None else _pages_doc(pages),
            "page_problems": [],
            "log": None if log is None else log.to_json(),
        })
        return 0 if ok else 1
    for ns, key, reason in bad:
        out.write(f"BAD  namespace {ns!r}  key {quote_key(key)}: {reason}\n")
    for what, reason in problems:
        out.write(f"BAD  {what}: {reason}\n")
    if missing:
        out.write(f"records name dictionaries {missing}, which the store does not hold\n")
    with_ttl = sum(ns["ttl_values"] for ns in per_ns.values())
    expired = sum(ns["expired"] for ns in per_ns.values())
    ttl_note = f" ({with_ttl:,} with a TTL, {expired:,} of them expired)" if with_ttl else ""
    summary = (f"checked {plural(checked, 'value')}{ttl_note} in {plural(len(per_ns), 'namespace')}, "
               f"{plural(len(meta.dictionaries), 'dictionary')}: ").replace("dictionarys", "dictionaries")
    if ok:
        summary += "all good"
    else:
        summary += f"{plural(len(bad), 'bad value')}"
        if problems:
            summary += f", {plural(len(problems), 'metadata problem')}"
    out.write(summary + "\n")
    return 0 if ok else 1
