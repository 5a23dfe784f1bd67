"""Peer workloads: what kvstore is measured against, on the same records.

- raw py-lmdb, msgpack values: a write transaction + fsync per put (1 and
  {T} threads), all puts in one transaction, and reads;
- the hand loop: msgpack + zstd (one reused ZstdCompressor, level 3) + XXH64
  + kvstore's 18-byte header, put into one raw LMDB transaction: the cost of
  kvstore's encoding with no batching layer around it;
- sqlite3 (WAL): a commit per put, one transaction, reads, prefix scans and
  the agent turn;
- diskcache, dbm (the best module this Python has), sqlitedict and lmdbm,
  each skipped with a note when it is not installed.

The LMDB peers open their environment as kvstore does (sync=True,
metasync=True), so a commit costs the same fsyncs.
"""

from __future__ import annotations

import os
import struct
import time

import data as bench_data
import graph_turns
import sessions
from harness import Result, dir_bytes, found_note, run_threads, split, time_gets, time_puts, workload

LMDB_MAP_SIZE = 1 << 30
HEADER = struct.Struct("<BBIIQ")  # version, flags, raw_len, dict_id, xxh64 (kvstore value format v1)
FLAG_MSGPACK, FLAG_ZSTD = 0x01, 0x02
COMPRESS_MIN = 128  # kvstore's default compress_min_size


def _lmdb_env(path):
    import lmdb

    return lmdb.open(path, map_size=LMDB_MAP_SIZE, sync=True, metasync=True, max_dbs=0)


def _lmdb_fill(path, records, pack):
    env = _lmdb_env(path)
    with env.begin(write=True) as txn:
        for key, value in records:
            txn.put(key.encode(), pack(value))
    env.close()


# ---------------------------------------------------------------- raw LMDB writes


@workload("lmdb-txn-per-put-sync",
          "raw py-lmdb: one write txn + commit (fsync) per put, msgpack values, 1 thread",
          system="lmdb")
def lmdb_txn_per_put(ctx):
    import msgpack

    records = ctx.sync_records
    with ctx.tmpdir() as d:
        env = _lmdb_env(d)
        begin, packb, pc = env.begin, msgpack.packb, time.perf_counter
        lat = []
        t0 = pc()
        for key, value in records:
            t = pc()
            with begin(write=True) as txn:
                txn.put(key.encode(), packb(value))
            lat.append(pc() - t)
        seconds = pc() - t0
        env.close()
    return Result("lmdb-txn-per-put-sync", "lmdb", len(records), seconds, 1, lat,
                  note="fsync per put; fewer ops")


@workload("lmdb-txn-per-put-sync-{T}t",
          "raw py-lmdb: one write txn + commit (fsync) per put from {T} threads (LMDB serialises them)",
          system="lmdb")
def lmdb_txn_per_put_mt(ctx):
    import msgpack

    records = ctx.sync_records
    with ctx.tmpdir() as d:
        env = _lmdb_env(d)
        packb = msgpack.packb

        def worker(part, lat):
            begin, pc = env.begin, time.perf_counter
            for key, value in part:
                t = pc()
                with begin(write=True) as txn:
                    txn.put(key.encode(), packb(value))
                lat.append(pc() - t)

        seconds, lat = run_threads(split(records, ctx.threads), worker)
        env.close()
    return Result(f"lmdb-txn-per-put-sync-{ctx.threads}t", "lmdb", len(records), seconds, ctx.threads,
                  lat, note="fsync per put; fewer ops")


@workload("lmdb-one-txn", "raw py-lmdb: every put in one write transaction, msgpack values, random order",
          system="lmdb")
def lmdb_one_txn(ctx):
    import msgpack

    records = ctx.random_order
    with ctx.tmpdir() as d:
        env = _lmdb_env(d)
        packb, pc = msgpack.packb, time.perf_counter
        lat = []
        t0 = pc()
        with env.begin(write=True) as txn:
            put = txn.put
            for key, value in records:
                t = pc()
                put(key.encode(), packb(value))
                lat.append(pc() - t)
        seconds = pc() - t0
        env.close()
        disk = dir_bytes(d) / len(records)
    return Result("lmdb-one-txn", "lmdb", len(records), seconds, 1, lat,
                  note="timed to commit; latency = put in txn", extra={"disk_bytes_per_record": disk})


def _hand_encoder():
    """kvstore's value encoding written out by hand: msgpack, zstd >= 128 B, XXH64, header."""
    import msgpack
    import xxhash
    import zstandard

    packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    pack = packer.pack
    compress = zstandard.ZstdCompressor(level=3, write_content_size=True, write_checksum=False).compress
    h64 = xxhash.xxh64_intdigest
    hpack = HEADER.pack

    def encode(value):
        raw = pack(value)
        n = len(raw)
        flags, payload = FLAG_MSGPACK, raw
        if n >= COMPRESS_MIN:
            z = compress(raw)
            if len(z) < n:
                flags, payload = FLAG_MSGPACK | FLAG_ZSTD, z
        return hpack(1, flags, n, 0, h64(payload)) + payload

    return encode


def _hand_decoder():
    import msgpack
    import xxhash
    import zstandard

    decompress = zstandard.ZstdDecompressor().decompress
    h64 = xxhash.xxh64_intdigest
    unpack = HEADER.unpack_from
    unpackb = msgpack.unpackb

    def decode(record):
        _v, flags, _n, _d, checksum = unpack(record)
        payload = record[18:]
        if h64(payload) != checksum:
            raise ValueError("checksum mismatch")
        if flags & FLAG_ZSTD:
            payload = decompress(payload)
        return unpackb(payload, raw=False)

    return decode


@workload("handloop-one-txn",
          "hand loop: msgpack + zstd + xxh64 + header per record, all in one raw LMDB txn (no batching layer)",
          system="lmdb")
def handloop_one_txn(ctx):
    records = ctx.random_order
    encode = _hand_encoder()
    with ctx.tmpdir() as d:
        env = _lmdb_env(d)
        pc = time.perf_counter
        lat = []
        t0 = pc()
        with env.begin(write=True) as txn:
            put = txn.put
            for key, value in records:
                t = pc()
                put(key.encode(), encode(value))
                lat.append(pc() - t)
        seconds = pc() - t0
        env.close()
    return Result("handloop-one-txn", "lmdb", len(records), seconds, 1, lat,
                  note="timed to commit; latency = encode+put")


# ---------------------------------------------------------------- raw LMDB reads


def _lmdb_read(ctx, name, pack, unpack, note):
    records = ctx.records
    keys = [k for k, _ in ctx.random_order]
    with ctx.tmpdir() as d:
        _lmdb_fill(d, records, pack)
        env = _lmdb_env(d)
        begin, pc = env.begin, time.perf_counter
        lat = []
        found = 0
        t0 = pc()
        for key in keys:
            t = pc()
            with begin(buffers=True) as txn:
                raw = txn.get(key.encode())
                value = unpack(raw) if raw is not None else None
            lat.append(pc() - t)
            found += value is not None
        seconds = pc() - t0
        env.close()
    return Result(name, "lmdb", len(keys), seconds, 1, lat,
                  note=note + ("" if found == len(keys) else f"; only {found} found!"),
                  extra={"found": found})


@workload("lmdb-readrandom", "raw py-lmdb: get + msgpack unpack of random existing keys, a read txn per get",
          system="lmdb")
def lmdb_readrandom(ctx):
    import msgpack

    return _lmdb_read(ctx, "lmdb-readrandom", msgpack.packb,
                      lambda raw: msgpack.unpackb(raw, raw=False), "txn per get")


@workload("handloop-readrandom",
          "hand loop: raw LMDB get + xxh64 check + zstd decompress + msgpack unpack, a read txn per get",
          system="lmdb")
def handloop_readrandom(ctx):
    return _lmdb_read(ctx, "handloop-readrandom", _hand_encoder(), _hand_decoder(), "txn per get")


# ---------------------------------------------------------------- sqlite3

_SQLITE_SCHEMA = "CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID"


def _sqlite(path, synchronous):
    import sqlite3

    con = sqlite3.connect(os.path.join(path, "kv.sqlite"), isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={synchronous}")
    con.execute(_SQLITE_SCHEMA.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))
    return con


def _sqlite_commit_per_put(ctx, name, synchronous, records, note):
    import msgpack

    with ctx.tmpdir() as d:
        con = _sqlite(d, synchronous)
        ex, packb, pc = con.execute, msgpack.packb, time.perf_counter
        sql = "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)"
        lat = []
        t0 = pc()
        for key, value in records:
            t = pc()
            ex(sql, (key, packb(value)))  # autocommit: one transaction per statement
            lat.append(pc() - t)
        seconds = pc() - t0
        con.close()
    return Result(name, "sqlite3", len(records), seconds, 1, lat, note=note)


@workload("sqlite-wal-normal-commit-per-put",
          "sqlite3 WAL, synchronous=NORMAL, a transaction per put (NOT fsynced per commit)",
          system="sqlite3", requires=("sqlite3",))
def sqlite_normal_per_put(ctx):
    return _sqlite_commit_per_put(ctx, "sqlite-wal-normal-commit-per-put", "NORMAL", ctx.random_order,
                                  "WAL+NORMAL: no fsync per commit")


@workload("sqlite-wal-full-commit-per-put",
          "sqlite3 WAL, synchronous=FULL, a transaction + fsync per put",
          system="sqlite3", requires=("sqlite3",))
def sqlite_full_per_put(ctx):
    return _sqlite_commit_per_put(ctx, "sqlite-wal-full-commit-per-put", "FULL", ctx.sync_records,
                                  "fsync per put; fewer ops")


@workload("sqlite-one-txn", "sqlite3 WAL, synchronous=FULL, every put in one transaction",
          system="sqlite3", requires=("sqlite3",))
def sqlite_one_txn(ctx):
    import msgpack

    records = ctx.random_order
    with ctx.tmpdir() as d:
        con = _sqlite(d, "FULL")
        ex, packb, pc = con.execute, msgpack.packb, time.perf_counter
        sql = "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)"
        lat = []
        t0 = pc()
        ex("BEGIN")
        for key, value in records:
            t = pc()
            ex(sql, (key, packb(value)))
            lat.append(pc() - t)
        ex("COMMIT")
        seconds = pc() - t0
        con.close()
        disk = dir_bytes(d) / len(records)
    return Result("sqlite-one-txn", "sqlite3", len(records), seconds, 1, lat,
                  note="timed to commit; latency = insert in txn", extra={"disk_bytes_per_record": disk})


def _sqlite_filled(ctx, d, synchronous):
    """A fresh connection to a sqlite3 WAL database at d holding ctx.records (msgpack values)."""
    import msgpack

    con = _sqlite(d, synchronous)
    con.execute("BEGIN")
    con.executemany("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)",
                    ((k, msgpack.packb(v)) for k, v in ctx.records))
    con.execute("COMMIT")
    con.close()
    return _sqlite(d, synchronous)


@workload("sqlite-readrandom", "sqlite3 WAL: SELECT + msgpack unpack of random existing keys",
          system="sqlite3", requires=("sqlite3",))
def sqlite_readrandom(ctx):
    import msgpack

    keys = [k for k, _ in ctx.random_order]
    with ctx.tmpdir() as d:
        con = _sqlite_filled(ctx, d, "NORMAL")
        ex, unpackb = con.execute, msgpack.unpackb
        sql = "SELECT v FROM kv WHERE k = ?"

        def get(key):
            row = ex(sql, (key,)).fetchone()
            return unpackb(row[0], raw=False) if row is not None else None

        seconds, lat, found = time_gets(get, keys)
        con.close()
    return Result("sqlite-readrandom", "sqlite3", len(keys), seconds, 1, lat,
                  note=found_note(found, len(keys)))


_LAST_SQL = "SELECT k, v FROM kv WHERE k >= ? AND k < ? ORDER BY k DESC LIMIT ?"
_RANGE_SQL = "SELECT k, v FROM kv WHERE k >= ? AND k < ? ORDER BY k"


@workload("sqlite-scan", "sqlite3 WAL: SELECT of one session's messages by key range + msgpack unpack",
          system="sqlite3", requires=("sqlite3",))
def sqlite_scan(ctx):
    import msgpack

    prefixes = sessions.scan_prefixes(ctx)
    with ctx.tmpdir() as d:
        con = _sqlite_filled(ctx, d, "NORMAL")
        ex, unpackb, end = con.execute, msgpack.unpackb, sessions.prefix_end

        def scan(p):
            return sum(1 for _k, v in ex(_RANGE_SQL, (p, end(p))) if unpackb(v, raw=False) is not None)

        seconds, lat, rows = sessions.time_scans(scan, prefixes)
        con.close()
    return sessions.scan_result("sqlite-scan", "sqlite3", prefixes, seconds, lat, rows)


@workload("lmdb-scan", "raw py-lmdb: cursor over one session's messages + msgpack unpack, a read txn per scan",
          system="lmdb")
def lmdb_scan(ctx):
    import msgpack

    prefixes = sessions.scan_prefixes(ctx)
    with ctx.tmpdir() as d:
        _lmdb_fill(d, ctx.records, msgpack.packb)
        env = _lmdb_env(d)
        unpackb = msgpack.unpackb

        def scan(p):
            lo, hi = p.encode(), sessions.prefix_end(p).encode()
            n = 0
            with env.begin(buffers=True) as txn:
                cur = txn.cursor()
                ok = cur.set_range(lo)
                while ok and bytes(cur.key()) < hi:
                    n += unpackb(cur.value(), raw=False) is not None
                    ok = cur.next()
            return n

        seconds, lat, rows = sessions.time_scans(scan, prefixes)
        env.close()
    return sessions.scan_result("lmdb-scan", "lmdb", prefixes, seconds, lat, rows, "txn per scan")


def _sqlite_turn(con, turn, txn_per_turn: bool, packb, unpackb) -> int:
    ex = con.execute
    row = ex("SELECT v FROM kv WHERE k = ?", (turn.meta_key,)).fetchone()
    meta = unpackb(row[0], raw=False) if row is not None else None
    last = [(k, unpackb(v, raw=False)) for k, v in
            ex(_LAST_SQL, (turn.prefix, sessions.prefix_end(turn.prefix), sessions.LAST_MESSAGES))]
    put = "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)"
    if txn_per_turn:
        ex("BEGIN")
    for key, value in turn.messages:
        ex(put, (key, packb(value)))  # outside BEGIN: autocommit, a transaction per statement
    ex(put, (turn.episode[0], packb(turn.episode[1])))
    ex(put, (turn.meta_key, packb(sessions.updated_meta(meta, turn))))
    if txn_per_turn:
        ex("COMMIT")
    return len(last)


def _sqlite_mixed(ctx, name, synchronous, count, txn_per_turn, note):
    import msgpack

    plan = sessions.turns(ctx)[:count]
    with ctx.tmpdir() as d:
        con = _sqlite_filled(ctx, d, synchronous)
        packb, unpackb = msgpack.packb, msgpack.unpackb
        seconds, lat, _ = time_gets(lambda t: _sqlite_turn(con, t, txn_per_turn, packb, unpackb), plan)
        con.close()
    return Result(name, "sqlite3", len(plan), seconds, 1, lat, note=note)


@workload("sqlite-mixed-commit-per-write",
          "the agent turn on sqlite3 WAL (synchronous=FULL, its default): SELECTs, then a commit per write",
          system="sqlite3", requires=("sqlite3",))
def sqlite_mixed_full(ctx):
    return _sqlite_mixed(ctx, "sqlite-mixed-commit-per-write", "FULL", ctx.sync_turns, False,
                         "ops = turns; 5 commits + fsyncs a turn; fewer turns")


@workload("sqlite-mixed-normal-commit-per-write",
          "the same with synchronous=NORMAL: a commit per write, no fsync per commit",
          system="sqlite3", requires=("sqlite3",))
def sqlite_mixed_normal(ctx):
    return _sqlite_mixed(ctx, "sqlite-mixed-normal-commit-per-write", "NORMAL", ctx.turns, False,
                         "ops = turns; WAL+NORMAL: no fsync per commit")


@workload("sqlite-mixed-txn-per-turn",
          "the same turn, its 5 writes in one transaction (FULL): the peer of mixed-durable",
          system="sqlite3", requires=("sqlite3",))
def sqlite_mixed_txn(ctx):
    return _sqlite_mixed(ctx, "sqlite-mixed-txn-per-turn", "FULL", ctx.sync_turns, True,
                         "ops = turns; 1 commit + fsync a turn; fewer turns")


@workload("langgraph-sqlite-mixed",
          "the same checkpointer turn as langgraph-mixed through LangGraph's SqliteSaver (WAL, FULL)",
          system="langgraph-sqlite", requires=graph_turns.REQUIRES)
def langgraph_sqlite_mixed(ctx):
    return graph_turns.play(ctx, "langgraph-sqlite-mixed", "langgraph-sqlite", graph_turns.open_sqlite)


# ---------------------------------------------------------------- diskcache


@workload("diskcache-set", "diskcache.Cache.set per record (its defaults: sqlite WAL, synchronous=NORMAL)",
          system="diskcache", requires=("diskcache",))
def diskcache_set(ctx):
    import diskcache

    records = ctx.random_order
    with ctx.tmpdir() as d:
        cache = diskcache.Cache(d)
        seconds, lat = time_puts(cache.set, records)
        cache.close()
        disk = dir_bytes(d) / len(records)
    return Result("diskcache-set", "diskcache", len(records), seconds, 1, lat,
                  note="pickled values; no fsync per set", extra={"disk_bytes_per_record": disk})


def _diskcache_filled(ctx, d):
    import diskcache

    cache = diskcache.Cache(d)
    with cache.transact():
        for key, value in ctx.records:
            cache.set(key, value)
    cache.close()
    return diskcache.Cache(d)


def _diskcache_get(ctx, name, keys, warm=()):
    with ctx.tmpdir() as d:
        cache = _diskcache_filled(ctx, d)
        for key in warm:
            cache.get(key)
        seconds, lat, found = time_gets(cache.get, keys)
        cache.close()
    return Result(name, "diskcache", len(keys), seconds, 1, lat, note=found_note(found, len(keys)))


@workload("diskcache-get", "diskcache.Cache.get of random existing keys (fresh Cache after the fill)",
          system="diskcache", requires=("diskcache",))
def diskcache_get(ctx):
    return _diskcache_get(ctx, "diskcache-get", [k for k, _ in ctx.random_order])


@workload("diskcache-readhot", "diskcache.Cache.get of readhot's Zipf keys, after the same warm-up reads",
          system="diskcache", requires=("diskcache",))
def diskcache_readhot(ctx):
    warm, keys = bench_data.hot_keys(ctx)
    return _diskcache_get(ctx, "diskcache-readhot", keys, warm)


# ---------------------------------------------------------------- dbm, sqlitedict, lmdbm


def best_dbm():
    """The best dbm module this Python has: dbm.gnu, else dbm.ndbm, else dbm.dumb."""
    import importlib

    for name in ("dbm.gnu", "dbm.ndbm"):
        try:
            return importlib.import_module(name)
        except ImportError:
            pass
    import dbm.dumb

    return dbm.dumb


def _unpacking(dget):
    """get(key) -> the msgpack-unpacked value of dget(key), or None."""
    import msgpack

    unpackb = msgpack.unpackb

    def get(key):
        raw = dget(key)
        return unpackb(raw, raw=False) if raw is not None else None

    return get


def _dbm_note(mod) -> str:
    return f"{mod.__name__}; msgpack values; no fsync"


@workload("dbm-set", "the best dbm module (gnu, else ndbm, else dumb): store[key] = msgpack, timed to close()",
          system="dbm")
def dbm_set(ctx):
    import msgpack

    mod, records = best_dbm(), ctx.random_order
    with ctx.tmpdir() as d:
        db = mod.open(os.path.join(d, "db"), "c")
        packb = msgpack.packb
        t0 = time.perf_counter()
        _, lat = time_puts(lambda k, v: db.__setitem__(k, packb(v)), records)
        db.close()
        seconds = time.perf_counter() - t0
        disk = dir_bytes(d) / len(records)
    return Result("dbm-set", "dbm", len(records), seconds, 1, lat, note=_dbm_note(mod),
                  extra={"module": mod.__name__, "disk_bytes_per_record": disk})


@workload("dbm-get", "the best dbm module: store.get(key) + msgpack unpack of random existing keys",
          system="dbm")
def dbm_get(ctx):
    import msgpack

    mod, keys = best_dbm(), [k for k, _ in ctx.random_order]
    with ctx.tmpdir() as d:
        path = os.path.join(d, "db")
        db = mod.open(path, "c")
        for key, value in ctx.records:
            db[key] = msgpack.packb(value)
        db.close()
        db = mod.open(path, "r")
        seconds, lat, found = time_gets(_unpacking(db.get), keys)
        db.close()
    return Result("dbm-get", "dbm", len(keys), seconds, 1, lat,
                  note="; ".join(x for x in (mod.__name__, found_note(found, len(keys))) if x),
                  extra={"module": mod.__name__})


@workload("sqlitedict-set", "sqlitedict.SqliteDict[key] = value (its defaults: pickle, journal DELETE, "
                            "autocommit off), timed to commit()", system="sqlitedict", requires=("sqlitedict",))
def sqlitedict_set(ctx):
    from sqlitedict import SqliteDict

    records = ctx.random_order
    with ctx.tmpdir() as d:
        db = SqliteDict(os.path.join(d, "kv.sqlite"))
        t0 = time.perf_counter()
        _, lat = time_puts(db.__setitem__, records)
        db.commit()
        seconds = time.perf_counter() - t0
        db.close()
        disk = dir_bytes(d) / len(records)
    return Result("sqlitedict-set", "sqlitedict", len(records), seconds, 1, lat,
                  note="pickled values; one commit at the end", extra={"disk_bytes_per_record": disk})


@workload("sqlitedict-get", "sqlitedict.SqliteDict.get of random existing keys (fresh SqliteDict after the fill)",
          system="sqlitedict", requires=("sqlitedict",))
def sqlitedict_get(ctx):
    from sqlitedict import SqliteDict

    keys = [k for k, _ in ctx.random_order]
    with ctx.tmpdir() as d:
        path = os.path.join(d, "kv.sqlite")
        db = SqliteDict(path)
        db.update(ctx.records)
        db.commit()
        db.close()
        db = SqliteDict(path, flag="r")
        seconds, lat, found = time_gets(db.get, keys)
        db.close()
    return Result("sqlitedict-get", "sqlitedict", len(keys), seconds, 1, lat, note=found_note(found, len(keys)))


@workload("lmdbm-set", "lmdbm.Lmdb[key] = msgpack (its defaults: a write txn + fsync per set)",
          system="lmdbm", requires=("lmdbm",))
def lmdbm_set(ctx):
    import lmdbm
    import msgpack

    records = ctx.sync_records
    with ctx.tmpdir() as d:
        db = lmdbm.open(os.path.join(d, "db"), "c")
        packb = msgpack.packb
        seconds, lat = time_puts(lambda k, v: db.__setitem__(k, packb(v)), records)
        db.close()
    return Result("lmdbm-set", "lmdbm", len(records), seconds, 1, lat, note="fsync per set; fewer ops")


@workload("lmdbm-get", "lmdbm.Lmdb.get + msgpack unpack of random existing keys", system="lmdbm",
          requires=("lmdbm",))
def lmdbm_get(ctx):
    import lmdbm
    import msgpack

    keys = [k for k, _ in ctx.random_order]
    with ctx.tmpdir() as d:
        path = os.path.join(d, "db")
        db = lmdbm.open(path, "c")
        db.update((k, msgpack.packb(v)) for k, v in ctx.records)
        db.close()
        db = lmdbm.open(path, "r")
        seconds, lat, found = time_gets(_unpacking(db.get), keys)
        db.close()
    return Result("lmdbm-get", "lmdbm", len(keys), seconds, 1, lat, note=found_note(found, len(keys)))
