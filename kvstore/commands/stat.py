"""`kvstore stat PATH`: the environment, where the file's bytes go, each
namespace, the codec.

The map size shown is the one recorded in data.mdb's meta page by the
store's last writer (a read-only open gets a map of its own, of at least the
used size, which says nothing of the store). Readers are the read
transactions active now in LMDB's reader table; a slot kept by a process
with no transaction open is not one (the table's high-water mark is shown
apart). The pages come from a walk of every page of the newest snapshot
(kvstore/lmdbwalk.py, as `kvstore check` does): by kind, how full the
branch and leaf pages are, the bytes left in the last page of each
overflow run, the free pages LMDB will reuse, and the zero-filled room
kvstore keeps past the last page (preallocation). A store with a
write-ahead log (format 3 or 4) shows the log too: its file size, its
generation, the records LMDB does not hold yet (other processes' writes
since this command applied the log: it opens the store as `dump` does) and
how far an fdatasync has covered it.

`--watch SECONDS` samples the store instead, every SECONDS, one line each,
until Ctrl-C (or `--count N` lines): what the store's files say of every
process using it. Commits: LMDB commits of writes (the store's commit
counter). With a write-ahead log, groups and ops: the write groups (a put,
a put_many, a batch, a transaction) and their operations appended to the
log, read back from it (a log reset between two samples loses the records
appended just before it: then they count low); the log's size in use and
its part not yet applied to data.mdb. Map: its use against the map size its
last writer recorded. The read cache: each writable process with a cache
publishes its counters to cache.stats (kvstore/cachestats.py); the hit
ratio of the interval sums what the processes alive at both samples (and
those that opened between them) counted in it, and the ratio since open
sums every live process's counters since it opened (what each one's
`Store.stats()["cache"]["hit_ratio"]` says of itself)."""

from __future__ import annotations

import os
import time
from collections import Counter

from kvstore import cachestats, codec, engine, lmdbwalk
from kvstore.codec.format import HEADER, HEADER_SIZE, TTL_HEADER_SIZE, TTL_VERSION, VERSIONS, parse_ttl
from kvstore.errors import CorruptionError
from kvstore.wal import HEADER_SIZE as LOG_HEADER_SIZE, decode_ops, seed as log_seed
from kvstore.lmdbfile import newest_meta

from ._common import CommandError, human_size, is_url, now_of, open_readonly, plural, write_json
from ._portable import is_local, stat_doc
from ._encoding import escape_key
from ._records import namespaces, snapshot_meta

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lmdb

    from kvstore.engine import Engine
    from kvstore.store import Store

    from ._common import Args, Out, Parser, Subparsers


def add_parser(subparsers: Subparsers) -> Parser:
    p = subparsers.add_parser(
        "stat", help="statistics of a store: map, pages, sizes, compression",
        description="Statistics of the store at PATH, from one consistent snapshot: the LMDB "
                    "environment (map size and use, page size, last transaction, readers), each "
                    "namespace (entries, B-tree depth and pages, stored and decoded bytes, "
                    "compression ratio, dictionaries in use, values with a TTL and how many of them "
                    "have expired, the default TTL), the write-ahead log (its size, the records not yet "
                    "applied to LMDB, how far it is synced) and the codec backend.")
    p.add_argument("path", help="store directory, or etcd://HOST:PORT[,...]/PREFIX")
    p.add_argument("--json", action="store_true", help="print JSON (with --watch: one object per line)")
    p.add_argument("--watch", metavar="SECONDS", type=float,
                   help="live: every SECONDS, a line of commits, write groups and ops per second, the "
                        "read cache's hit ratio in the processes using the store, log and map use, until "
                        "Ctrl-C")
    p.add_argument("--count", metavar="N", type=int, help="with --watch: stop after N lines")
    return p


def _namespace_stats(txn: lmdb.Transaction, dbi: Any, now: int) -> dict[str, Any]:
    st: Any = txn.stat(dbi) if dbi is not None else {"entries": 0, "depth": 0, "branch_pages": 0,
                                                "leaf_pages": 0, "overflow_pages": 0}
    stored = decoded = bad = with_ttl = expired = 0
    dicts: Counter[int] = Counter()
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
            if version not in VERSIONS:
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


def collect(db: Store) -> dict[str, Any]:
    env = engine.of(db)
    handles = namespaces(db)

    def read(txn: lmdb.Transaction) -> tuple[Any, dict[str, dict[str, Any]], int]:
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
    file_size = os.path.getsize(data_file)
    walked = lmdbwalk.walk(env.path)
    for name, ns in per_ns.items():
        tree = walked.dbs.get(name)
        ns["fill"] = _fill(tree.unused_bytes, tree.branch_pages + tree.leaf_pages, info["psize"]) if tree else None
    return {
        "path": env.path,
        "codec": codec.backend,
        "environment": {
            # a writer in this process has the live map; else the one its last writer recorded
            "map_size": info["map_size"] if not env.readonly else _recorded_map_size(data_file) or info["map_size"],
            "map_used": info["map_used"],
            "file_size": file_size,
            "preallocated_bytes": max(0, file_size - info["map_used"]),
            "page_size": info["psize"],
            "last_txnid": info["last_txnid"],
            "snapshot_txnid": txnid,
            "readers": _active_readers(env),
            "reader_slots_used": info["num_readers"],
            "max_readers": info["max_readers"],
            "format_version": meta.format_version.decode("ascii", "replace") if meta.format_version else None,
            "commit_seq": meta.commit_seq,
        },
        "pages": _pages(walked, info["psize"], sum(ns["entries"] for ns in per_ns.values())),
        "namespaces": per_ns,
        "log": _log_stats(env),
        "dictionaries": [{"id": did, **doc, "current_for": sorted(ns for ns, cur in meta.current.items()
                                                                  if cur == did)}
                         for did, doc in sorted(meta.docs.items())],
    }


def _log_stats(env: Engine) -> dict[str, Any] | None:
    """The write-ahead log as its index says now (None: the store has none).
    unapplied_records is None when the log cannot be read that far (damage:
    `kvstore check` names it)."""
    if env.tail is None:
        return None
    log: Any = env.log  # with the tail
    st = log.state()
    if st is None:  # a writer died inside a change of the index: the next writable open rebuilds it
        return {"file_size": os.path.getsize(log.log_path), "generation": None, "end": None,
                "used_bytes": None, "unapplied_bytes": None, "unapplied_records": None,
                "synced_to": None, "unsynced_bytes": None}
    try:
        records = sum(1 for _ in log.records(st.gen, st.applied, st.applied_sum, st.end))
    except CorruptionError:
        records = None
    return {
        "file_size": os.path.getsize(log.log_path),
        "generation": st.gen,
        "end": st.end,
        "used_bytes": st.end - LOG_HEADER_SIZE,
        "unapplied_bytes": st.end - st.applied,
        "unapplied_records": records,
        "synced_to": st.synced,
        "unsynced_bytes": st.end - st.synced,
    }


def _log_line(log: dict[str, Any]) -> str:
    if log["generation"] is None:
        return (f"{human_size(log['file_size'])} file; its index was left half changed by a writer that "
                f"died (the next writable open rebuilds it)")
    records = "?" if log["unapplied_records"] is None else f"{log['unapplied_records']:,}"
    synced = ("all of it synced" if not log["unsynced_bytes"]
              else f"synced to byte {log['synced_to']:,}, {human_size(log['unsynced_bytes'])} not yet synced")
    return (f"{human_size(log['file_size'])} file, generation {log['generation']}, "
            f"{human_size(log['used_bytes'])} in use; {records} records ({human_size(log['unapplied_bytes'])}) "
            f"not yet applied to data.mdb; {synced}")


def _recorded_map_size(data_file: str) -> int:
    """The map size in the newest meta page of data_file (0 if none)."""
    fd = os.open(data_file, os.O_RDONLY)
    try:
        meta = newest_meta(data_file, fd)
    finally:
        os.close(fd)
    return meta.mapsize if meta is not None else 0


def _active_readers(env: Engine) -> int:
    """Read transactions open now, in any process (LMDB's reader table:
    a slot whose txnid is "-" is kept by its process, not reading)."""
    env.map_lock.acquire_shared()
    try:
        table = env.lmdb.readers()
    finally:
        env.map_lock.release_shared()
    rows = [line.split() for line in table.splitlines()]
    return sum(1 for r in rows if len(r) == 3 and r[0].isdigit() and r[2] != "-")


def _fill(unused: int, pages: int, psize: int) -> float | None:
    """The share of the bytes of `pages` pages that hold something."""
    return 1 - unused / (pages * psize) if pages else None


def _pages(walked: lmdbwalk.Walk, psize: int, entries: int) -> dict[str, Any]:
    """Where data.mdb's used pages go, from a walk of every page."""
    trees = walked.dbs.values()
    branch = sum(t.branch_pages for t in trees)
    leaf = sum(t.leaf_pages for t in trees)
    overflow = sum(t.overflow_pages for t in trees)
    total = walked.last_pg + 1 if walked.psize else 0
    return {
        "total": total,
        "meta": min(2, total),
        "branch": branch,
        "leaf": leaf,
        "overflow": overflow,
        "free": walked.free_pages,
        "fill": _fill(sum(t.unused_bytes for t in trees), branch + leaf, psize),
        "overflow_fill": _fill(sum(t.overflow_unused_bytes for t in trees), overflow, psize),
        "bytes_per_entry": total * psize / entries if entries else None,
        "problems": len(walked.problems),
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _table(out: Out, header: list[str], rows: list[list[Any]], align: str) -> None:
    """Columns padded to their widest cell; align: one "l" or "r" per column."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    for r in [header] + rows:
        cells = [str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(r, widths, align)]
        out.write("  ".join(cells).rstrip() + "\n")


# ---------------------------------------------------------------- --watch


class _Sample:
    """What the store's files say at one moment (see the module docstring)."""

    def __init__(self, env: Engine, data_file: str) -> None:
        self.at = time.monotonic()
        self.commits = env.commit_seq()
        info = env.info()
        self.map_used: int = info["map_used"]
        self.map_size: int = (info["map_size"] if not env.readonly
                              else _recorded_map_size(data_file) or info["map_size"])
        log: Any = env.log if env.tail is not None else None
        self.log = log
        self.state = log.state() if log is not None else None
        # (slot, pid, opened) -> (served: hits + revalidations, misses) of
        # each process publishing its read cache's counters; None: unreadable
        slots = cachestats.read_slots(env.path)
        self.caches = None if slots is None else {
            (c.slot, c.pid, c.opened_ns): (c.hits + c.revalidations, c.misses) for c in slots}


def _cache_use(before: _Sample, now: _Sample) -> tuple[int, int, int, int] | None:
    """(served, missed) reads of the read caches between two samples, and
    since each live process opened; None when cache.stats is unreadable. A
    process that opened since the last sample counts from zero; one that
    closed meanwhile is left out."""
    if now.caches is None:
        return None
    old = before.caches or {}
    served = missed = 0
    for key, (s, m) in now.caches.items():
        s0, m0 = old.get(key, (0, 0))
        served += s - s0
        missed += m - m0
    return (served, missed, sum(s for s, _ in now.caches.values()),
            sum(m for _, m in now.caches.values()))


def _ratio(served: int, missed: int) -> float | None:
    return served / (served + missed) if served + missed else None


def _log_ops(before: _Sample, now: _Sample) -> tuple[int, int] | None:
    """(groups, ops) appended to the log between two samples; None without
    a log, or when it cannot be read (a change under way, damage)."""
    old, new = before.state, now.state
    if new is None or now.log is None:
        return None
    if old is not None and old.gen == new.gen:
        at, chain = old.end, old.end_sum
    else:  # reset since (or the first sample): the new generation from its start
        at, chain = LOG_HEADER_SIZE, log_seed(new.gen)
    groups = ops = 0
    try:
        for _end, _sum, payload in now.log.records(new.gen, at, chain, new.end):
            groups += 1
            ops += len(decode_ops(payload))
    except (CorruptionError, ValueError):
        return None
    return groups, ops


def _watch_doc(before: _Sample, now: _Sample) -> dict[str, Any]:
    dt = max(now.at - before.at, 1e-9)
    appended = _log_ops(before, now)
    cache = _cache_use(before, now)
    st = now.state
    return {
        "time": time.time(),
        "seconds": dt,
        "commits_per_second": (now.commits - before.commits) / dt,
        "groups_per_second": appended[0] / dt if appended is not None else None,
        "ops_per_second": appended[1] / dt if appended is not None else None,
        "cache_processes": len(now.caches) if now.caches is not None else None,
        "cache_reads_per_second": (cache[0] + cache[1]) / dt if cache is not None else None,
        "cache_hit_ratio": _ratio(cache[0], cache[1]) if cache is not None else None,
        "cache_hit_ratio_since_open": _ratio(cache[2], cache[3]) if cache is not None else None,
        "log_used_bytes": st.end - LOG_HEADER_SIZE if st is not None else None,
        "log_unapplied_bytes": st.end - st.applied if st is not None else None,
        "map_used": now.map_used,
        "map_size": now.map_size,
    }


def _watch_line(doc: dict[str, Any]) -> list[str]:
    def rate(x: float | None) -> str:
        return "-" if x is None else f"{x:,.1f}"

    pct = 100.0 * doc["map_used"] / doc["map_size"] if doc["map_size"] else 0.0
    return [time.strftime("%H:%M:%S", time.localtime(doc["time"])), rate(doc["commits_per_second"]),
            rate(doc["groups_per_second"]), rate(doc["ops_per_second"]),
            "-" if doc["cache_processes"] is None else str(doc["cache_processes"]),
            _pct(doc["cache_hit_ratio"]), _pct(doc["cache_hit_ratio_since_open"]),
            "-" if doc["log_used_bytes"] is None else human_size(doc["log_used_bytes"]),
            "-" if doc["log_unapplied_bytes"] is None else human_size(doc["log_unapplied_bytes"]),
            f"{human_size(doc['map_used'])} of {human_size(doc['map_size'])} ({pct:.1f}%)"]


_WATCH_HEADER = ["time", "commits/s", "groups/s", "ops/s", "caches", "hit ratio", "since open", "log used",
                 "unapplied", "map"]
_WATCH_WIDTHS = [8, 10, 9, 10, 6, 9, 10, 10, 10, 0]


def _run_portable(db: Store[Any], args: Args, out: Out) -> int:
    """stat of a store reached through the API (an etcd URL): its namespaces
    and the engine's counters; it has no pages or files to show."""
    doc = stat_doc(db)
    if args.json:
        write_json(out, doc)
        return 0
    total = sum(ns["entries"] for ns in doc["namespaces"].values())
    out.write(f"{'store':<10}  {doc['path']}\n{'engine':<10}  {doc['engine']} (read through the Store API: "
              f"no pages, files or log of its own to show)\n{'entries':<10}  {total:,} in "
              f"{plural(len(doc['namespaces']), 'namespace')}\n\n")
    rows = [[escape_key(name.encode("utf-8")), f"{ns['entries']:,}",
             "-" if ns["default_ttl"] is None else f"{ns['default_ttl']:g} s"]
            for name, ns in doc["namespaces"].items()]
    _table(out, ["namespace", "entries", "default ttl"], rows, "lrr")
    if doc["dictionaries_unavailable"]:
        out.write(f"\ndictionaries: not listed ({doc['dictionaries_unavailable']})\n")
    elif doc["dictionaries"]:
        out.write("\ndictionaries:\n")
        drows = [[str(d["id"]), escape_key(str(d["namespace"]).encode("utf-8")), human_size(d["size"])]
                 for d in doc["dictionaries"]]
        _table(out, ["id", "namespace", "size"], drows, "rlr")
    return 0


def _watch(args: Args, out: Out) -> int:
    if not args.watch > 0:
        raise CommandError(f"--watch takes a number of seconds > 0, not {args.watch!r}")
    if args.count is not None and args.count < 1:
        raise CommandError(f"--count takes a number of lines >= 1, not {args.count!r}")

    def write(cells: list[str]) -> None:
        out.write("  ".join(c.rjust(w) for c, w in zip(cells, _WATCH_WIDTHS)).rstrip() + "\n")
        out.flush()

    if is_url(args.path):
        raise CommandError("stat --watch samples the LMDB engine's counters and files; an etcd store has "
                           "none: watch the cluster with `etcdctl endpoint status` instead")
    with open_readonly(args.path, clock=args.clock) as db:
        env = engine.of(db)
        data_file = os.path.join(env.path, "data.mdb")
        if not args.json:
            write(_WATCH_HEADER)
        before = _Sample(env, data_file)
        lines = 0
        try:
            while args.count is None or lines < args.count:
                time.sleep(args.watch)
                now = _Sample(env, data_file)
                doc = _watch_doc(before, now)
                if args.json:
                    write_json(out, doc, indent=None)
                    out.flush()
                else:
                    write(_watch_line(doc))
                before = now
                lines += 1
        except KeyboardInterrupt:  # Ctrl-C: the way a watch ends
            pass
    return 0


def run(args: Args, out: Out) -> int:
    if args.watch is not None:
        return _watch(args, out)
    if args.count is not None:
        raise CommandError("--count goes with --watch SECONDS")
    with open_readonly(args.path, clock=args.clock) as db:
        if not is_local(db):
            return _run_portable(db, args, out)
        report = collect(db)
    if args.json:
        write_json(out, report)
        return 0
    e, pg = report["environment"], report["pages"]
    pct = 100.0 * e["map_used"] / e["map_size"] if e["map_size"] else 0.0
    per_entry = "" if pg["bytes_per_entry"] is None else f"; {pg['bytes_per_entry']:,.0f} bytes per entry"
    lines = [
        ("store", report["path"]),
        ("codec", report["codec"]),
        ("format", str(e["format_version"])),
        ("map", f"{human_size(e['map_size'])}, {human_size(e['map_used'])} used ({pct:.1f}%); "
                f"data.mdb is {human_size(e['file_size'])}, {human_size(e['preallocated_bytes'])} of it "
                f"zero-filled past the last page"),
        ("pages", f"{pg['total']:,}: {pg['branch']:,} branch + {pg['leaf']:,} leaf ({_pct(pg['fill'])} full), "
                  f"{pg['overflow']:,} overflow ({_pct(pg['overflow_fill'])} full), {pg['free']:,} free, "
                  f"{pg['meta']} meta{per_entry}"),
        ("page size", f"{e['page_size']} bytes"),
        ("last txn", f"{e['last_txnid']} ({plural(e['commit_seq'] or 0, 'group commit')} by kvstore)"),
        ("readers", f"{plural(e['readers'], 'read transaction')} open; {e['reader_slots_used']} of "
                    f"{e['max_readers']} reader slots used since the lock file was made"),
    ]
    lines.append(("log", "none (format below 3: writes go to data.mdb directly)" if report["log"] is None
                  else _log_line(report["log"])))
    for label, text in lines:
        out.write(f"{label:<10}  {text}\n")
    out.write("\n")
    rows = []
    for name, ns in report["namespaces"].items():
        ratio = ns["compression_ratio"]
        p = ns["pages"]
        rows.append([escape_key(name.encode("utf-8")), f"{ns['entries']:,}", ns["depth"],
                     f"{p['branch']}/{p['leaf']}/{p['overflow']}", _pct(ns["fill"]), human_size(ns["stored_bytes"]),
                     human_size(ns["decoded_bytes"]), "-" if ratio is None else f"{ratio:.3f}",
                     ",".join(ns["dictionaries_in_use"]) or "-",
                     f"{ns['ttl_values']:,}/{ns['expired_values']:,}" if ns["ttl_values"] else "-",
                     "-" if ns["default_ttl"] is None else f"{ns['default_ttl']:g} s"])
    _table(out, ["namespace", "entries", "depth", "pages b/l/o", "fill", "stored", "decoded", "ratio", "dicts",
                 "ttl/expired", "default ttl"], rows, "lrrrrrrrlrr")
    out.write("\n(fill: share of the branch and leaf pages' bytes in use; stored: record bytes with their "
              "headers;\n decoded: the values' serialized size; ratio: stored / decoded;\n ttl/expired: "
              "values with a TTL, and those of them expired but not yet swept, counted in entries)\n")
    if pg["problems"]:
        out.write(f"the page walk found {plural(pg['problems'], 'problem')}: run `kvstore check`\n")
    bad = sum(ns["unreadable_headers"] for ns in report["namespaces"].values())
    if bad:
        out.write(f"{bad} records have unreadable headers: run `kvstore check`\n")
    if report["dictionaries"]:
        out.write("\ndictionaries:\n")
        drows = [[str(d["id"]), escape_key(str(d["namespace"]).encode("utf-8")), human_size(d["size"]),
                  str(d["samples"]), ",".join(d["current_for"]) or "-"] for d in report["dictionaries"]]
        _table(out, ["id", "namespace", "size", "samples", "current for"], drows, "rlrrl")
    return 0
