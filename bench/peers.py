"""Peer workloads: what kvstore is measured against, on the same records.

- raw py-lmdb, msgpack values: a write transaction + fsync per put (1 and
  {T} threads), all puts in one transaction, and reads;
- the hand loop: msgpack + zstd (one reused ZstdCompressor, level 3) + XXH64
  + kvstore's 18-byte header, put into one raw LMDB transaction: the cost of
  kvstore's encoding with no batching layer around it;
- sqlite3 (WAL) and diskcache, when importable.

The LMDB peers open their environment as kvstore does (sync=True,
metasync=True), so a commit costs the same fsyncs.
"""

from __future__ import annotations

import os
import struct
import time

from harness import Result, run_threads, split, workload

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
    return Result("lmdb-one-txn", "lmdb", len(records), seconds, 1, lat,
                  note="timed to commit; latency = put in txn")


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
    return Result("sqlite-one-txn", "sqlite3", len(records), seconds, 1, lat,
                  note="timed to commit; latency = insert in txn")


@workload("sqlite-readrandom", "sqlite3 WAL: SELECT + msgpack unpack of random existing keys",
          system="sqlite3", requires=("sqlite3",))
def sqlite_readrandom(ctx):
    import msgpack

    keys = [k for k, _ in ctx.random_order]
    with ctx.tmpdir() as d:
        con = _sqlite(d, "NORMAL")
        con.execute("BEGIN")
        con.executemany("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)",
                        ((k, msgpack.packb(v)) for k, v in ctx.records))
        con.execute("COMMIT")
        con.close()
        con = _sqlite(d, "NORMAL")
        ex, unpackb, pc = con.execute, msgpack.unpackb, time.perf_counter
        sql = "SELECT v FROM kv WHERE k = ?"
        lat = []
        found = 0
        t0 = pc()
        for key in keys:
            t = pc()
            row = ex(sql, (key,)).fetchone()
            value = unpackb(row[0], raw=False) if row is not None else None
            lat.append(pc() - t)
            found += value is not None
        seconds = pc() - t0
        con.close()
    return Result("sqlite-readrandom", "sqlite3", len(keys), seconds, 1, lat,
                  note="" if found == len(keys) else f"only {found} found!")


# ---------------------------------------------------------------- diskcache


@workload("diskcache-set", "diskcache.Cache.set per record (its defaults: sqlite WAL, synchronous=NORMAL)",
          system="diskcache", requires=("diskcache",))
def diskcache_set(ctx):
    import diskcache

    records = ctx.random_order
    with ctx.tmpdir() as d:
        cache = diskcache.Cache(d)
        put, pc = cache.set, time.perf_counter
        lat = []
        t0 = pc()
        for key, value in records:
            t = pc()
            put(key, value)
            lat.append(pc() - t)
        seconds = pc() - t0
        cache.close()
    return Result("diskcache-set", "diskcache", len(records), seconds, 1, lat,
                  note="pickled values; no fsync per set")


@workload("diskcache-get", "diskcache.Cache.get of random existing keys (fresh Cache after the fill)",
          system="diskcache", requires=("diskcache",))
def diskcache_get(ctx):
    import diskcache

    keys = [k for k, _ in ctx.random_order]
    with ctx.tmpdir() as d:
        cache = diskcache.Cache(d)
        with cache.transact():
            for key, value in ctx.records:
                cache.set(key, value)
        cache.close()
        cache = diskcache.Cache(d)
        get, pc = cache.get, time.perf_counter
        lat = []
        found = 0
        t0 = pc()
        for key in keys:
            t = pc()
            value = get(key)
            lat.append(pc() - t)
            found += value is not None
        seconds = pc() - t0
        cache.close()
    return Result("diskcache-get", "diskcache", len(keys), seconds, 1, lat,
                  note="" if found == len(keys) else f"only {found} found!")
