"""kvstore's own workloads (the peers are in peers.py): fills, reads, the
agent-memory turn, batch sizes, the codec, stored sizes and the scale sweep.

Each is a function `fn(ctx) -> Result | list[Result]` registered with
`@workload`; bench/run.py's docstring says what each one times.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import itertools
import os
import random
import time

import kvstore

import data as bench_data
import graph_turns
import sessions
from harness import (
    GCTime,
    Result,
    Unavailable,
    anon_rss_mb,
    dir_bytes,
    found_note,
    median_result,
    run_threads,
    split,
    stall_seconds,
    time_gets,
    time_puts,
    workload,
)

BATCH_SIZES = (50, 100, 500, 1000, 2000, 5000, 10000)
PUT_MANY_SIZE = 100
PREFILL_CHUNK = 1000
MiB = 1 << 20

# ---------------------------------------------------------------- kvstore workloads


def _open(d, **options):
    db = kvstore.open(os.path.join(d, "store"), **options)
    if options.get("apply_worker") == "always":  # its start is part of open: wait for it, untimed
        end = time.monotonic() + 30
        while db.stats()["log"]["apply_worker"] is None and time.monotonic() < end:
            time.sleep(0.005)
    return db


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


def _puts_until_flushed(db, records) -> tuple[float, list]:
    """Buffered puts of records, then flush(): (seconds until flush() returned, put latencies)."""
    t0 = time.perf_counter()
    _, lat = time_puts(db.put, records)
    db.flush()
    return time.perf_counter() - t0, lat


def _buffered_fill(ctx, name, records, note="", disk=False, **options) -> Result:
    with ctx.tmpdir() as d:
        db = _open(d, **options)
        seconds, lat = _puts_until_flushed(db, records)
        extra = _commit_stats(db)
        db.close()
        if disk:  # the store's files after close, for the SIZE section
            extra["disk_bytes_per_record"] = dir_bytes(d) / len(records)
            extra.update(_footprint(os.path.join(d, "store"), os.path.join(d, "compacted"), len(records)))
    extra.update(options)
    return Result(name, "kvstore", len(records), seconds, 1, lat,
                  note="; ".join(x for x in (note, _commit_note(extra)) if x), extra=extra)


def _footprint(path: str, compacted: str, n: int) -> dict:
    """Where a closed store's bytes go (`kvstore stat`'s page walk), and its
    size after `kvstore compact` (untimed)."""
    import io
    import json

    from kvstore.cli import main

    def stat(p):
        out = io.StringIO()
        main(["stat", p, "--json"], out=out)
        doc = json.loads(out.getvalue())
        log = doc.get("log")
        return {"pages": doc["pages"], "page_size": doc["environment"]["page_size"],
                "preallocated_bytes": doc["environment"]["preallocated_bytes"],
                "log_file_bytes": log["file_size"] if log else 0, "files_bytes": dir_bytes(p)}

    main(["compact", path, "-o", compacted], out=io.StringIO())
    return {"footprint": stat(path), "compacted_footprint": stat(compacted),
            "compact_disk_bytes_per_record": dir_bytes(compacted) / n}


@workload("fillseq", "buffered puts, 1 thread, keys in sorted order, timed until flush() returns")
def fillseq(ctx):
    return _buffered_fill(ctx, "fillseq", ctx.sorted_order)


@workload("fillrandom", "buffered puts, 1 thread, keys in random order, timed until flush() returns")
def fillrandom(ctx):
    return _buffered_fill(ctx, "fillrandom", ctx.random_order, disk=True)


@workload("fillrandom-worker", "fillrandom with apply_worker='always': the log applied by a worker process "
                               "from the start")
def fillrandom_worker(ctx):
    return _buffered_fill(ctx, "fillrandom-worker", ctx.random_order, note="apply worker from open",
                          apply_worker="always")


@workload("fillsync", "durable puts (durable=True), 1 thread")
def fillsync(ctx):
    records = ctx.sync_records
    with ctx.tmpdir() as d:
        db = _open(d)
        seconds, lat = time_puts(functools.partial(db.put, durable=True), records)
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
        seconds, lat = _puts_until_flushed(db, rewrites)
        extra = _commit_stats(db)
        db.close()
    extra["commits"] -= before
    extra["ops_per_commit_mean"] = len(rewrites) / extra["commits"] if extra["commits"] else 0.0
    return Result("overwrite", "kvstore", len(rewrites), seconds, 1, lat, note=_commit_note(extra),
                  extra=extra)


# ---------------------------------------------------------------- reads


def _has_option(name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(kvstore.Options)}


# The uncached workloads turn the read cache off once kvstore has one (issue 4).
UNCACHED = {"cache_entries": 0} if _has_option("cache_entries") else {}


def _reader(ctx, d, records=None, **options):
    """A fresh handle (with `options`) on a store holding records
    (ctx.records by default), and a note when it is not fresh.

    The store is filled and closed, then opened again, so nothing is pending
    or cached in this process. If the reopened store cannot be read (a kvstore
    bug), the reads run on a store filled through the handle that reads it,
    after flush() (nothing pending either), and the note says so.
    """
    records = ctx.records if records is None else records
    db = _open(d)
    _prefill(db, records)
    db.close()
    db = _open(d, **options)
    try:
        db.get(records[0][0])
        return db, ""
    except kvstore.KVStoreError as exc:
        problem = str(exc)
        try:
            db.close()
        except kvstore.KVStoreError:
            pass
    fallback = os.path.join(d, "again")
    os.makedirs(fallback)
    db = _open(fallback, **options)
    _prefill(db, records)
    return db, f"SAME handle as the fill (reopened store unreadable: {problem})"


def _read(ctx, name, keys, expect_found: bool) -> Result:
    with ctx.tmpdir() as d:
        db, note = _reader(ctx, d, **UNCACHED)
        seconds, lat, found = time_gets(db.get, keys)
        db.close()
    note = "; ".join(x for x in (found_note(found, len(keys) if expect_found else 0), note) if x)
    return Result(name, "kvstore", len(keys), seconds, 1, lat, extra={"found": found}, note=note)


@workload("readrandom", "get of random existing keys, each once, on a fresh handle after the fill (cache off)")
def readrandom(ctx):
    return _read(ctx, "readrandom", [k for k, _ in ctx.random_order], True)


GET_MANY_KEYS = 20  # keys per get_many call (an agent's batch of reads)


@workload("get_many", f"get_many of {GET_MANY_KEYS} random existing keys a call, every key once, on a fresh "
                      f"handle after the fill (cache off)")
def get_many(ctx):
    keys = [k for k, _ in ctx.random_order]
    calls = [keys[i:i + GET_MANY_KEYS] for i in range(0, len(keys), GET_MANY_KEYS)]
    with ctx.tmpdir() as d:
        db, note = _reader(ctx, d, **UNCACHED)
        seconds, lat, _ = time_gets(db.get_many, calls)
        found = sum(v is not None for v in db.get_many(keys[:GET_MANY_KEYS]))
        db.close()
    note = "; ".join(x for x in (f"ops = calls of {GET_MANY_KEYS} keys; {len(keys) / seconds:,.0f} keys/s", note)
                     if x)
    return Result("get_many", "kvstore", len(calls), seconds, 1, lat,
                  extra={"keys_per_call": GET_MANY_KEYS, "found_first_call": found}, note=note)


@workload("readmissing", "get of keys that do not exist, on a fresh handle after the fill (cache off)")
def readmissing(ctx):
    return _read(ctx, "readmissing", [k + "#missing" for k, _ in ctx.random_order], False)


HOT_CACHE = {"cache_entries": 10_000, "cache_bytes": 64 * MiB}  # kvstore's defaults
TIGHT_CACHE = {"cache_entries": 10_000, "cache_bytes": 2 * MiB}  # the byte limit binds


def _cache_options(options: dict) -> dict:
    missing = [name for name in options if not _has_option(name)]
    if missing:
        raise Unavailable(f"this kvstore has no read cache: kvstore.open() takes no {', '.join(missing)} "
                          f"(issue 4); the hot reads are not run uncached in its place")
    return options


def _cache_delta(before: dict, after: dict) -> dict:
    d = {k: after[k] - before[k] for k in ("hits", "misses", "revalidations", "evictions")}
    served = d["hits"] + d["revalidations"]
    d["hit_ratio"] = served / (served + d["misses"]) if served + d["misses"] else None
    return d


def _admit_on_first_miss(db) -> None:
    """Give db's store a read cache of the same limits that caches a key on
    its first miss (no doorkeeper): what admission on the second miss is
    measured against. Reaches into the engine, as bench_cache.py does."""
    from kvstore import engine
    from kvstore.cache import ReadCache

    eng = engine.of(db)
    old = eng.cache
    eng.cache = ReadCache(old.max_entries, old.max_bytes, admit_on_first_miss=True, clock=db.options.clock)


def _readhot(ctx, name, options, doc, admit_all: bool = False) -> Result:
    """Zipf reads through a handle opened with `options`, after a warm-up
    stream of the same law; with the cache's counters and memory.
    admit_all: the cache admits a key on its first miss."""
    warm, keys = bench_data.hot_keys(ctx)
    cached = bool(options.get("cache_entries") and options.get("cache_bytes"))
    with ctx.tmpdir() as d:
        db, note = _reader(ctx, d, **options)
        if admit_all:
            _admit_on_first_miss(db)
        heap0 = anon_rss_mb()
        for key in warm:  # a key enters the cache on its second miss
            db.get(key)
        before = db.stats().get("cache") if cached else None
        if cached and before is None:
            db.close()
            raise Unavailable("db.stats() has no 'cache' entry although the cache options were accepted")
        seconds, lat, found = time_gets(db.get, keys)
        heap1 = anon_rss_mb()
        after = db.stats()["cache"] if cached else None
        db.close()
    extra = {"options": options, "found": found, "zipf_s": bench_data.ZIPF_S}
    notes = [found_note(found, len(keys)), note]
    if cached:
        delta = _cache_delta(before, after)
        limit = options["cache_bytes"]
        within = after["bytes"] <= limit and after["entries"] <= options["cache_entries"]
        extra.update(cache=after, timed=delta, cache_bytes_limit=limit, within_limit=within)
        notes.insert(0, f"hit ratio {delta['hit_ratio']:.1%}; cache {after['bytes'] / MiB:.1f} of "
                        f"{limit / MiB:.0f} MiB, {after['entries']:,} entries: "
                        f"{'within' if within else 'OVER the limit'}")
    if heap0 is not None and heap1 is not None:
        extra["heap_growth_mb"] = heap1 - heap0
        notes.append(f"heap +{heap1 - heap0:.1f} MB")
    return Result(name, "kvstore", len(keys), seconds, 1, lat, extra=extra,
                  note="; ".join(x for x in notes if x))


@workload("readhot", "Zipf reads (s=1.1) of existing keys, read cache on: 10,000 entries, 64 MiB")
def readhot(ctx):
    return _readhot(ctx, "readhot", _cache_options(HOT_CACHE), "")


@workload("readhot-admit-all", "readhot with a cache that admits a key on its first miss (no doorkeeper)")
def readhot_admit_all(ctx):
    return _readhot(ctx, "readhot-admit-all", _cache_options(HOT_CACHE), "", admit_all=True)


@workload("readhot-tight", "the same Zipf reads with cache_bytes=2 MiB: the byte limit binds")
def readhot_tight(ctx):
    return _readhot(ctx, "readhot-tight", _cache_options(TIGHT_CACHE), "")


@workload("readhot-uncached", "the same Zipf reads, read cache off: what the cache saves")
def readhot_uncached(ctx):
    return _readhot(ctx, "readhot-uncached", UNCACHED, "")


HOT_SET = 256  # keys of the small hot set (hotset-*): every one cached after the warm-up
HOT_BLOCK = 1000  # reads per block; cached and uncached blocks alternate


def _hotset_records(ctx, name: str) -> list:
    """ctx.records for the corpus; the same number of generate_shapes() records for "shapes"."""
    if name == "corpus":
        return ctx.records
    return ctx.shared("shapes-records", lambda: bench_data.distinct(
        bench_data.generate_shapes(min(ctx.n, bench_data.SHAPES_COUNT)), ctx.n))


def _hotset(ctx, name: str) -> list:
    """Cache hits against uncached gets of the same small hot set, in
    alternating blocks of HOT_BLOCK reads: two stores holding the same
    records, one read with the cache on (every hot key cached by the
    warm-up), one with it off. Two Results: hotset-hit-NAME, hotset-uncached-NAME."""
    records = _hotset_records(ctx, name)
    rng = random.Random(ctx.seed + 5)
    hot = [k for k, _ in rng.sample(records, min(HOT_SET, len(records)))]
    keys = [rng.choice(hot) for _ in range(ctx.reads)]
    blocks = [keys[i:i + HOT_BLOCK] for i in range(0, len(keys), HOT_BLOCK)]
    with ctx.tmpdir() as d:
        on, note_on = _reader(ctx, os.path.join(d, "cached"), records, **HOT_CACHE)
        off, note_off = _reader(ctx, os.path.join(d, "uncached"), records, **UNCACHED)
        for _ in range(3):  # a key is cached on its second miss
            for k in hot:
                on.get(k)
        before = on.stats()["cache"]
        times = {"hit": [0.0, [], 0], "uncached": [0.0, [], 0]}
        for b, block in enumerate(blocks):  # alternate which side goes first
            for side, db in (("hit", on), ("uncached", off))[::1 if b % 2 else -1]:
                seconds, lat, found = time_gets(db.get, block)
                t = times[side]
                t[0] += seconds
                t[1] += lat
                t[2] += found
        delta = _cache_delta(before, on.stats()["cache"])
        on.close()
        off.close()
    out = []
    for side in ("hit", "uncached"):
        seconds, lat, found = times[side]
        notes = [f"{len(hot)} hot keys of {len(records):,} {name} records, blocks of {HOT_BLOCK} alternated",
                 found_note(found, len(keys)), note_on if side == "hit" else note_off]
        extra = {"data_set": name, "hot_keys": len(hot), "found": found}
        if side == "hit":
            notes.insert(0, f"hit ratio {delta['hit_ratio']:.1%}")
            extra.update(timed=delta)
        out.append(Result(f"hotset-{side}-{name}", "kvstore", len(keys), seconds, 1, lat, extra=extra,
                          note="; ".join(x for x in notes if x)))
    return out


@workload("hotset", f"cache hits vs uncached gets of a small hot set ({HOT_SET} keys), alternated in "
                    f"blocks, on the corpus and on generate_shapes() records (deeper nesting, longer lists)")
def hotset(ctx):
    _cache_options(HOT_CACHE)
    return _hotset(ctx, "corpus") + _hotset(ctx, "shapes")


# ---------------------------------------------------------------- agent memory


@workload("scan", "prefix scan of one session's messages (keys and decoded values), sessions at random")
def scan(ctx):
    prefixes = sessions.scan_prefixes(ctx)
    with ctx.tmpdir() as d:
        db, note = _reader(ctx, d)
        s = db.scan
        seconds, lat, rows = sessions.time_scans(lambda p: sum(1 for _ in s(prefix=p)), prefixes)
        db.close()
    return sessions.scan_result("scan", "kvstore", prefixes, seconds, lat, rows, note)


def _kv_turn(db, turn, durable: bool) -> int:
    meta = db.get(turn.meta_key)
    last = list(itertools.islice(db.scan(prefix=turn.prefix, reverse=True), sessions.LAST_MESSAGES))
    if durable:
        with db.batch(durable=True) as b:
            for key, value in turn.messages:
                b.put(key, value)
            b.put(*turn.episode)
            b.put(turn.meta_key, sessions.updated_meta(meta, turn))
    else:
        for key, value in turn.messages:
            db.put(key, value)
        db.put(*turn.episode)
        db.put(turn.meta_key, sessions.updated_meta(meta, turn))
    return len(last)


def _mixed(ctx, name, count, durable: bool, note: str, admit_all: bool = False) -> Result:
    plan = sessions.turns(ctx)[:count]
    with ctx.tmpdir() as d:
        db, fresh = _reader(ctx, d)
        if admit_all:
            _admit_on_first_miss(db)
        t0 = time.perf_counter()
        _, lat, _ = time_gets(lambda t: _kv_turn(db, t, durable), plan)
        db.flush()
        seconds = time.perf_counter() - t0
        extra = _commit_stats(db)
        extra["cache"] = db.stats().get("cache")
        db.close()
    return Result(name, "kvstore", len(plan), seconds, 1, lat, extra=extra,
                  note="; ".join(x for x in (note, _commit_note(extra), fresh) if x))


@workload("mixed", "agent turn: get meta, last 20 messages (reverse scan), put 3 messages + an episode, "
                   "rewrite meta; buffered puts, timed until flush()")
def mixed(ctx):
    return _mixed(ctx, "mixed", ctx.turns, False, "ops = turns of 2 reads + 5 writes")


@workload("mixed-admit-all", "the mixed turn with a cache that admits a key on its first miss")
def mixed_admit_all(ctx):
    return _mixed(ctx, "mixed-admit-all", ctx.turns, False, "ops = turns; cache admits on the first miss",
                  admit_all=True)


@workload("mixed-durable", "the same turn, its 5 writes in one batch(durable=True): atomic, one fsync per turn")
def mixed_durable(ctx):
    return _mixed(ctx, "mixed-durable", ctx.sync_turns, True, "ops = turns; fewer turns")


@workload("langgraph-mixed", "the agent turn through kvstore's LangGraph checkpointer (KVStoreSaver, "
                             "durable): get_tuple, then put of the session's new state (bench/graph_turns.py)",
          requires=graph_turns.REQUIRES)
def langgraph_mixed(ctx):
    return graph_turns.play(ctx, "langgraph-mixed", "kvstore", graph_turns.open_kvstore)


@workload("batchsize", "buffered fill with max_batch_ops in " + ", ".join(map(str, BATCH_SIZES))
          + " (flush_interval 60 s): ops/s and mean ops per commit")
def batchsize(ctx):
    out = []
    for m in BATCH_SIZES:
        r = _buffered_fill(ctx, f"batchsize-{m}", ctx.random_order, max_batch_ops=m, flush_interval=60.0)
        out.append(r)
    return out


# ---------------------------------------------------------------- codec


def _codec_results(backend: str, system: str, encode, decode, values) -> list[Result]:
    records = [encode(v) for v in values]  # a warm-up, and the records to decode
    enc_s, enc_lat, _ = time_gets(encode, values)
    dec_s, dec_lat, _ = time_gets(decode, records)
    raw = sum(map(len, records))
    out = []
    for op, seconds, lat in (("encode", enc_s, enc_lat), ("decode", dec_s, dec_lat)):
        out.append(Result(f"codec-{backend}-{op}", system, len(values), seconds, 1, lat,
                          extra={"backend": backend, "op": op, "record_bytes": raw},
                          note=f"ops = values; {raw / len(values):,.0f} B a record"))
    return out


@workload("codec", "encode and decode of every value, one call each: kvstore.codec.use('native'), "
                   "use('python'), and msgpack + the zstandard package alone")
def codec(ctx):
    import msgpack
    import zstandard

    values = [v for _, v in ctx.records]
    out = []
    active = kvstore.codec.backend
    try:
        for backend in ("native", "python"):
            try:
                kvstore.codec.use(backend)
            except ImportError as exc:
                for op in ("encode", "decode"):
                    out.append(Result(f"codec-{backend}-{op}", "kvstore",
                                      skipped=f"backend not available: {exc}"))
                continue
            out += _codec_results(backend, "kvstore", kvstore.codec.encode, kvstore.codec.decode, values)
    finally:
        kvstore.codec.use(active)
    # the work both backends do, through the Python packages: msgpack, then zstd level 3
    # (no header, no checksum, values under 128 bytes compressed too)
    pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
    compress = zstandard.ZstdCompressor(level=3, write_content_size=True).compress
    decompress = zstandard.ZstdDecompressor().decompress
    out += _codec_results("zstandard", "zstandard", lambda v: compress(pack(v)),
                          lambda r: msgpack.unpackb(decompress(r), raw=False, strict_map_key=False), values)
    return out


# ---------------------------------------------------------------- codec groups

GROUP_VALUES = 1000  # values of each data set
GROUP_SIZE = 100  # values per group call (a put_many of the fillbatch workload)
GROUP_PASSES = 5  # each figure is the best of this many passes, backends alternated

# op -> (what it times, whether it works on groups): the per-value loops
# and the group calls of both backends, with msgpack (encode, decode) and
# without (frame: zstd + XXH64 + header of serialized bytes; unframe: the
# header checks, XXH64 and zstd of a record, giving the serialized bytes)
GROUP_OPS = ("encode", "encode_many", "decode", "decode_many", "frame", "frame_many", "unframe", "unframe_many")


def _group_calls(c, values: list) -> dict:
    """op -> a function doing op over `values` with codec c (untimed setup here)."""
    records = c.encode_many(values)
    pairs = [c.serialize(v) for v in values]

    def groups(seq: list) -> list:
        return [seq[i:i + GROUP_SIZE] for i in range(0, len(seq), GROUP_SIZE)]

    value_groups, record_groups, pair_groups = groups(values), groups(records), groups(pairs)
    encode, decode, encode_many, decode_many = c.encode, c.decode, c.encode_many, c.decode_many
    frame, frame_many, unframe_many = c.frame, c.frame_many, c.unframe_many
    return {
        "encode": lambda: [encode(v) for v in values],
        "encode_many": lambda: [encode_many(g) for g in value_groups],
        "decode": lambda: [decode(r) for r in records],
        "decode_many": lambda: [decode_many(g) for g in record_groups],
        "frame": lambda: [frame(f, raw) for f, raw in pairs],
        "frame_many": lambda: [frame_many(g) for g in pair_groups],
        "unframe": lambda: [unframe_many((r,)) for r in records],
        "unframe_many": lambda: [unframe_many(g) for g in record_groups],
    }


def _best_alternated(calls: dict) -> dict:
    """key -> best seconds over GROUP_PASSES passes, every call once per pass."""
    best = {k: float("inf") for k in calls}
    for _ in range(GROUP_PASSES):
        for k, fn in calls.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


@workload("codec-group", f"per-value loops vs group calls ({GROUP_SIZE} values a call) of both codec "
                         f"backends, on {GROUP_VALUES:,} values of the data and of generate_shapes()",
          once=True)  # its own best of GROUP_PASSES passes
def codec_group(ctx):
    import kvstore.codec as kc

    sets = {"corpus": [v for _, v in ctx.records[:GROUP_VALUES]],
            "shapes": [v for _, v in bench_data.generate_shapes(GROUP_VALUES)]}
    backends = {}
    skipped = {}
    for backend in ("native", "python"):
        try:
            backends[backend] = kc.get_backend(backend).Codec()
        except ImportError as exc:
            skipped[backend] = skipped["native-split"] = f"backend not available: {exc}"
    if "native" in backends:
        # every group of two or more values shared with the native worker thread
        backends["native-split"] = kc.get_backend("native").Codec()
        backends["native-split"].split = (1, 1)
    out = []
    for data, values in sets.items():
        calls = {(b, op): fn for b, c in backends.items() for op, fn in _group_calls(c, values).items()
                 if b != "native-split" or op.endswith("_many")}
        best = _best_alternated(calls)
        raw = sum(map(len, kc.get_backend("python").Codec().encode_many(values)))
        for backend in ("native", "python", "native-split"):
            for op in GROUP_OPS:
                if backend == "native-split" and not op.endswith("_many"):
                    continue
                name = f"codecgroup-{data}-{backend}-{op}"
                if backend in skipped:
                    out.append(Result(name, "kvstore", skipped=skipped[backend]))
                    continue
                out.append(Result(name, "kvstore", len(values), best[backend, op], 1, None,
                                  extra={"data": data, "backend": backend, "op": op, "record_bytes": raw,
                                         "group": GROUP_SIZE},
                                  note=f"ops = values; best of {GROUP_PASSES} passes"))
    return out


# ---------------------------------------------------------------- stored size


def _stored(ctx, d, name, records, **options) -> tuple[Result, object]:
    """Fill a store at d with records; the Result has bytes per record. Returns the open handle."""
    db = _open(d, **options)
    t0 = time.perf_counter()
    _prefill(db, records)
    seconds = time.perf_counter() - t0
    st = db.stats()
    n = len(records)
    extra = {"options": options, "msgpack_bytes_per_record": st["bytes_in"] / n,
             "stored_bytes_per_record": st["bytes_stored"] / n,
             "lmdb_bytes_per_record": st["map_used"] / n}
    return Result(name, "kvstore", n, seconds, 1, None, extra=extra), db


def _ratio_note(extra: dict) -> str:
    return (f"{extra['stored_bytes_per_record']:,.0f} B stored a record "
            f"({extra['stored_bytes_per_record'] / extra['msgpack_bytes_per_record']:.2f} of msgpack)")


@workload("ratio", "bytes stored per record (value records, 18-byte header included; and LMDB pages): "
                   "compression none, zstd, zstd with a trained dictionary", once=True)
def ratio(ctx):
    records = ctx.records
    out = []
    with ctx.tmpdir() as d:
        for name, options in (("ratio-none", {"compression": "none"}), ("ratio-zstd", {})):
            r, db = _stored(ctx, os.path.join(d, name), name, records, **options)
            db.close()
            r.note = _ratio_note(r.extra) + "; ops/s = put_many fill"
            out.append(r)
        # the zstd store, trained, then every record written again with the dictionary
        db = _open(os.path.join(d, "ratio-zstd"))
        try:
            db.train_dictionary()
        except Exception as exc:  # noqa: BLE001 - too little data to train on, for one
            db.close()
            out.append(Result("ratio-zstd-dict", "kvstore", skipped=f"train_dictionary failed: {exc!r}"))
            return out
        info = db.dictionaries()[-1]
        st0 = db.stats()
        t0 = time.perf_counter()
        _prefill(db, records)
        seconds = time.perf_counter() - t0
        st1 = db.stats()
        db.close()
    n = len(records)
    extra = {"msgpack_bytes_per_record": (st1["bytes_in"] - st0["bytes_in"]) / n,
             "stored_bytes_per_record": (st1["bytes_stored"] - st0["bytes_stored"]) / n,
             "dictionary": {k: info[k] for k in ("id", "size", "samples") if k in info}}
    out.append(Result("ratio-zstd-dict", "kvstore", n, seconds, 1, None, extra=extra,
                      note=_ratio_note(extra) + f"; dictionary of {info.get('size', 0):,} B"))
    return out


# ---------------------------------------------------------------- scale


def count_label(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


SCALE_ROUNDS = 3  # runs of each size up to SCALE_ROUNDS_UP_TO records, in rounds; the median is shown
SCALE_ROUNDS_UP_TO = 100_000


@workload("scale", "fillrandom and readrandom (cache off) at each size of --scale: "
                   "throughput as the store grows", once=True)
def scale(ctx):
    """Each size up to SCALE_ROUNDS_UP_TO runs SCALE_ROUNDS times, the sizes
    alternated in rounds (a stall of the shared machine, or a full garbage
    collection of the bench's own heap, then hits one run of one size, not
    the figure); bigger sizes run once, in the last round."""
    rounds = [[size for size in ctx.scale_sizes if size <= SCALE_ROUNDS_UP_TO or r == SCALE_ROUNDS - 1]
              for r in range(SCALE_ROUNDS)]
    runs: dict = {}
    for sizes in rounds:
        for size in sizes:
            for res in _scale_once(ctx, size, random.Random(ctx.seed + 3 + size)):
                runs.setdefault(res.name, []).append(res)
    out = []
    for rs in runs.values():
        chosen = median_result(rs)
        chosen.extra["runs"] = [r.ops_per_sec for r in rs]
        out.append(chosen)
    return out


@contextlib.contextmanager
def _frozen_heap():
    """The bench's own objects (the records, every earlier run's results)
    out of the garbage collector's way while a loop is timed (gc.freeze):
    at 1M records four full collections of that heap took 6 of a fill's
    54 s, a cost of the bench holding a million records, not of the store."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _scale_once(ctx, size: int, rng) -> list:
    """One fill of size records, then the reads: two Results."""
    out = []
    records = bench_data.distinct(ctx.base, size)
    rng.shuffle(records)
    keys = [k for k, _ in rng.sample(records, min(size, ctx.scale_reads))]
    label = count_label(size)
    with ctx.tmpdir() as d:
        db = _open(d)
        with _frozen_heap(), GCTime() as gct:
            seconds, lat = _puts_until_flushed(db, records)
        extra = _commit_stats(db)
        extra.update(records=size, map_used=db.stats()["map_used"], gc_seconds=gct.seconds,
                     gc_full=gct.full, stall_seconds=stall_seconds(lat))
        db.close()
        out.append(Result(f"scale-fillrandom-{label}", "kvstore", size, seconds, 1, lat,
                          extra=extra, note=_commit_note(extra)))
        del records, lat
        db = _open(d, **UNCACHED)
        with _frozen_heap(), GCTime() as gct:
            seconds, lat, found = time_gets(db.get, keys)
        db.close()
        out.append(Result(f"scale-readrandom-{label}", "kvstore", len(keys), seconds, 1, lat,
                          extra={"records": size, "found": found, "gc_seconds": gct.seconds,
                                 "gc_full": gct.full, "stall_seconds": stall_seconds(lat)},
                          note="; ".join(x for x in (f"{len(keys):,} gets of {size:,} records",
                                                     found_note(found, len(keys))) if x)))
    return out
