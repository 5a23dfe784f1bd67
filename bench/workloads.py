"""kvstore's own workloads (the peers are in peers.py): fills, reads, batch sizes.

Each is a function `fn(ctx) -> Result | list[Result]` registered with
`@workload`; bench/run.py's docstring says what each one times.
"""

from __future__ import annotations

import os
import time

import kvstore

from harness import Result, run_threads, split, workload

BATCH_SIZES = (50, 100, 500, 1000, 2000, 5000, 10000)
PUT_MANY_SIZE = 100
PREFILL_CHUNK = 1000

# ---------------------------------------------------------------- kvstore workloads


def _open(d, **options):
    return kvstore.open(os.path.join(d, "store"), **options)


def _commit_stats(db) -> dict:
    st = db.stats()
    return {
        "commits": st["commits"],
        "ops_committed": st["ops_committed"],
        "ops_per_commit_mean": st["ops_per_commit"]["mean"],
        "ops_per_commit_max": st["ops_per_commit"]["max"],
        "commit_seconds_p50": st["commit_seconds"]["p50"],
        "commit_seconds_p99": st["commit_seconds"]["p99"],
        "durable_groups": st["durable_groups"],
        "buffered_groups": st["buffered_groups"],
        "compression_ratio": st["compression_ratio"],
        "codec": st["codec"],
    }


def _commit_note(extra: dict) -> str:
    return f"{extra['commits']} commits, {extra['ops_per_commit_mean']:.1f} ops/commit"


def _prefill(db, records) -> None:
    for i in range(0, len(records), PREFILL_CHUNK):
        db.put_many(records[i:i + PREFILL_CHUNK])
    db.flush()


def _buffered_fill(ctx, name, records, note="", **options) -> Result:
    with ctx.tmpdir() as d:
        db = _open(d, **options)
        put, pc = db.put, time.perf_counter
        lat = []
        t0 = pc()
        for key, value in records:
            t = pc()
            put(key, value)
            lat.append(pc() - t)
        db.flush()
        seconds = pc() - t0
        extra = _commit_stats(db)
        db.close()
    extra.update(options)
    return Result(name, "kvstore", len(records), seconds, 1, lat,
                  note="; ".join(x for x in (note, _commit_note(extra)) if x), extra=extra)


@workload("fillseq", "buffered puts, 1 thread, keys in sorted order, timed until flush() returns")
def fillseq(ctx):
    return _buffered_fill(ctx, "fillseq", ctx.sorted_order)


@workload("fillrandom", "buffered puts, 1 thread, keys in random order, timed until flush() returns")
def fillrandom(ctx):
    return _buffered_fill(ctx, "fillrandom", ctx.random_order)


@workload("fillsync", "durable puts (durable=True), 1 thread")
def fillsync(ctx):
    records = ctx.sync_records
    with ctx.tmpdir() as d:
        db = _open(d)
        put, pc = db.put, time.perf_counter
        lat = []
        t0 = pc()
        for key, value in records:
            t = pc()
            put(key, value, durable=True)
            lat.append(pc() - t)
        seconds = pc() - t0
        extra = _commit_stats(db)
        db.close()
    return Result("fillsync", "kvstore", len(records), seconds, 1, lat,
                  note="fewer ops; " + _commit_note(extra), extra=extra)


@workload("fillsync-{T}t", "durable puts from {T} threads sharing one handle (group commit)")
def fillsync_mt(ctx):
    records = ctx.group_records
    with ctx.tmpdir() as d:
        db = _open(d)

        def worker(part, lat):
            put, pc = db.put, time.perf_counter
            for key, value in part:
                t = pc()
                put(key, value, durable=True)
                lat.append(pc() - t)

        seconds, lat = run_threads(split(records, ctx.threads), worker)
        extra = _commit_stats(db)
        db.close()
    return Result(f"fillsync-{ctx.threads}t", "kvstore", len(records), seconds, ctx.threads, lat,
                  note=_commit_note(extra), extra=extra)


@workload("fillbatch", f"put_many of {PUT_MANY_SIZE} records per call, buffered, timed until flush() returns")
def fillbatch(ctx):
    records = ctx.random_order
    chunks = [records[i:i + PUT_MANY_SIZE] for i in range(0, len(records), PUT_MANY_SIZE)]
    with ctx.tmpdir() as d:
        db = _open(d)
        put_many, pc = db.put_many, time.perf_counter
        lat = []
        t0 = pc()
        for chunk in chunks:
            t = pc()
            put_many(chunk)
            lat.append(pc() - t)
        db.flush()
        seconds = pc() - t0
        extra = _commit_stats(db)
        db.close()
    return Result("fillbatch", "kvstore", len(records), seconds, 1, lat,
                  note=f"ops = records; latency per call of {PUT_MANY_SIZE}; " + _commit_note(extra),
                  extra=extra)


@workload("overwrite", "buffered puts over existing keys (random order, new values), timed until flush()")
def overwrite(ctx):
    records = ctx.random_order
    # every key gets the value of the next record: a real rewrite, same sizes overall
    rewrites = [(records[i][0], records[(i + 1) % len(records)][1]) for i in range(len(records))]
    with ctx.tmpdir() as d:
        db = _open(d)
        _prefill(db, ctx.records)
        before = db.stats()["commits"]
        put, pc = db.put, time.perf_counter
        lat = []
        t0 = pc()
        for key, value in rewrites:
            t = pc()
            put(key, value)
            lat.append(pc() - t)
        db.flush()
        seconds = pc() - t0
        extra = _commit_stats(db)
        db.close()
    extra["commits"] -= before
    extra["ops_per_commit_mean"] = len(rewrites) / extra["commits"] if extra["commits"] else 0.0
    return Result("overwrite", "kvstore", len(rewrites), seconds, 1, lat, note=_commit_note(extra),
                  extra=extra)


def _reader(ctx, d):
    """A fresh handle on a store holding ctx.records, and a note when it is not fresh.

    The store is filled and closed, then opened again, so nothing is pending
    or cached in this process. If the reopened store cannot be read (a kvstore
    bug), the reads run on a store filled through the handle that reads it,
    after flush() (nothing pending either), and the note says so.
    """
    db = _open(d)
    _prefill(db, ctx.records)
    db.close()
    db = _open(d)
    try:
        db.get(ctx.records[0][0])
        return db, ""
    except kvstore.KVStoreError as exc:
        problem = str(exc)
        try:
            db.close()
        except kvstore.KVStoreError:
            pass
    fallback = os.path.join(d, "again")
    os.makedirs(fallback)
    db = _open(fallback)
    _prefill(db, ctx.records)
    return db, f"SAME handle as the fill (reopened store unreadable: {problem})"


def _read(ctx, name, keys, expect_found: bool) -> Result:
    with ctx.tmpdir() as d:
        db, note = _reader(ctx, d)
        get, pc = db.get, time.perf_counter
        lat = []
        found = 0
        t0 = pc()
        for key in keys:
            t = pc()
            value = get(key)
            lat.append(pc() - t)
            found += value is not None
        seconds = pc() - t0
        db.close()
    if found != (len(keys) if expect_found else 0):
        note = "; ".join(x for x in (f"{found} found!", note) if x)
    return Result(name, "kvstore", len(keys), seconds, 1, lat, extra={"found": found}, note=note)


@workload("readrandom", "get of random existing keys, each once, on a fresh handle after the fill")
def readrandom(ctx):
    return _read(ctx, "readrandom", [k for k, _ in ctx.random_order], True)


@workload("readmissing", "get of keys that do not exist, on a fresh handle after the fill")
def readmissing(ctx):
    return _read(ctx, "readmissing", [k + "#missing" for k, _ in ctx.random_order], False)


@workload("batchsize", "buffered fill with max_batch_ops in " + ", ".join(map(str, BATCH_SIZES))
          + " (flush_interval 60 s): ops/s and mean ops per commit")
def batchsize(ctx):
    out = []
    for m in BATCH_SIZES:
        r = _buffered_fill(ctx, f"batchsize-{m}", ctx.random_order, max_batch_ops=m, flush_interval=60.0)
        out.append(r)
    return out
