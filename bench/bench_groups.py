"""Codec group calls (issue 16): what one C call per group gives, and where.

Run from the repository root, with kvstore installed (pip install -e .)::

    python bench/bench_groups.py [--records N] [--rounds N]

Data: the first --records distinct keys of the corpus (bench/data.py; the
records kvstore.demo generates when the corpus is missing) and as many of
bench/data.py's generate_shapes(). Every figure is the best of --rounds,
the variants alternated in each round, the garbage collector off while
one runs. It prints:

1. the bare native group calls (kvc_encode_many, kvc_decode_many on
   prepared buffers, no Python around them) alone and split with the worker
   thread (Codec.split), groups of 20 and 100, back to back and with 0.4 ms
   of other work between calls (the worker then sleeps between them);
2. reads with the split off and on: the store's get_many of 20 keys (one
   decode_many a call), and the stored records decoded in chunks of 256
   with decode_many (what a long scan would do) against one at a time;
3. the floor of a read: get_many of 20 keys and a session's prefix scan
   against decoding their records alone (decode_many / decode, outside the
   store), so the best ratio any change around the codec could give;
4. zstd's own multi-threaded compression of large values, through the
   zstandard package: time and whether the bytes stay those of one thread.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import sys
import tempfile
import time
from typing import Any, Callable

import msgpack
import zstandard

import kvstore
import kvstore.codec as kc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as bench_data  # noqa: E402
from bench_codec import best_of  # noqa: E402

SPLIT_ALL = (1, 1)  # every group of two or more shared with the worker


def best(rounds: int, fns: dict[Any, Callable[[], object]]) -> dict[Any, float]:
    """key -> best seconds over rounds, every function once per round, the
    garbage collector off while one runs (bench_codec.best_of)."""
    return best_of(rounds, fns)


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def bare_calls(values: list, rounds: int) -> None:
    from kvstore._native import ffi, lib

    native = kc.get_backend("native")
    py = kc.get_backend("python").Codec()
    pairs = [py.serialize(v) for v in values]
    records = [py.frame(f, raw) for f, raw in pairs]
    n = len(values)
    for size in (20, 100):
        codec = native.Codec()
        t = codec._thread()
        groups = []
        for i in range(0, n, size):
            raw = pairs[i:i + size]
            recs = records[i:i + size]
            k = len(raw)
            blob = b"".join(r for _, r in raw)
            cap = len(blob) + (len(blob) >> 8) + 82 * k
            rblob = b"".join(recs)
            groups.append((k, bytes(f for f, _ in raw), blob, ffi.new("size_t[]", [len(r) for _, r in raw]),
                           ffi.new("char[]", cap), cap, ffi.new("size_t[]", k), rblob,
                           ffi.new("size_t[]", [len(r) for r in recs]), ffi.new("char[]", len(blob)), len(blob),
                           ffi.new("uint64_t[]", k)))

        def encode(gap: float) -> None:
            for k, flags, blob, lens, out, cap, olens, *_ in groups:
                busy(gap)
                assert lib.kvc_encode_many(t.ctx, k, flags, blob, lens, ffi.NULL, 0, ffi.NULL, ffi.NULL,
                                           out, cap, olens) > 0

        def decode(gap: float) -> None:
            for k, *_, rblob, rlens, dout, dcap, info in groups:
                busy(gap)
                assert lib.kvc_decode_many(t.ctx, k, rblob, rlens, 0, ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL,
                                           dout, dcap, info) > 0

        fns: dict[Any, Callable[[], object]] = {}
        for split in (False, True):
            for gap in (0.0, 0.0004):
                def switch(split: bool = split) -> None:
                    lib.kvc_ctx_set_split(t.ctx, *(SPLIT_ALL if split else (0, 0)))
                fns["encode", split, gap] = lambda s=switch, g=gap: (s(), encode(g))
                fns["decode", split, gap] = lambda s=switch, g=gap: (s(), decode(g))
        res = best(rounds, fns)
        for op in ("encode", "decode"):
            for gap in (0.0, 0.0004):
                alone = (res[op, False, gap] - (gap * len(groups))) / n * 1e6
                split = (res[op, True, gap] - (gap * len(groups))) / n * 1e6
                print(f"  kvc_{op}_many, groups of {size:>3}, {'back to back' if not gap else '0.4 ms between':<15}"
                      f" alone {alone:6.2f} us/value, split {split:6.2f} us/value ({alone / split:.2f}x)")


def _store(records: list, d: str) -> str:
    path = os.path.join(d, "store")
    db = kvstore.open(path)
    db.put_many(records)
    db.flush()
    db.close()
    return path


def store_flows(records: list, rounds: int) -> None:
    d = tempfile.mkdtemp(prefix="bench-groups-")
    try:
        path = _store(records, d)
        keys = [k for k, _ in records]
        random.Random(1).shuffle(keys)
        calls = [keys[i:i + 20] for i in range(0, len(keys), 20)]
        db = kvstore.open(path, cache_entries=0, cache_bytes=0)
        codec = db._root._codec
        stored = [codec.encode(v) for _, v in sorted(records, key=lambda kv: kv[0])]  # the bytes LMDB holds
        chunks = [stored[i:i + 256] for i in range(0, len(stored), 256)]  # as a long scan reads them
        n = len(records)
        variants = (("off", (0, 0)), ("large", kc.get_backend("native").SPLIT_LARGE), ("all", SPLIT_ALL))

        def with_split(split: tuple[int, int], fn: Callable[[], object]) -> Callable[[], object]:
            def run() -> object:
                codec.split = split
                return fn()
            return run

        fns: dict[Any, Callable[[], object]] = {}
        for name, split in variants:
            fns["get_many", name] = with_split(split, lambda: [db.get_many(c) for c in calls])
            fns["chunks", name] = with_split(split, lambda: [codec.decode_many(c) for c in chunks])
        fns["chunks", "loop"] = lambda: [[codec.decode(r) for r in c] for c in chunks]
        res = best(rounds, fns)
        db.close()
        for name, split in variants:
            print(f"  split {name:<5} {str(split):<16} get_many of 20: {res['get_many', name] / n * 1e6:5.2f} us/key"
                  f"   chunks of 256 stored records, decode_many: {res['chunks', name] / n * 1e6:5.2f} us/record")
        print(f"  (the same chunks decoded one record at a time, as scan does: "
              f"{res['chunks', 'loop'] / n * 1e6:5.2f} us/record)")
    finally:
        shutil.rmtree(d)


def read_floor(records: list, rounds: int) -> None:
    d = tempfile.mkdtemp(prefix="bench-groups-")
    try:
        db = kvstore.open(_store(records, d), cache_entries=0, cache_bytes=0)
        codec = db._root._codec
        stored = {k: codec.encode(v) for k, v in records}
        keys = [k for k, _ in records]
        random.Random(1).shuffle(keys)
        calls = [keys[i:i + 20] for i in range(0, len(keys), 20)]
        call_records = [[stored[k] for k in c] for c in calls]
        prefixes = sorted({m.group(1) for k in keys for m in [re.match(r"(session:\d+:msg:)", k)] if m})
        random.Random(2).shuffle(prefixes)
        prefixes = prefixes[:300]
        in_order = sorted(keys)
        scan_records = [[stored[k] for k in in_order if k.startswith(p)] for p in prefixes]
        res = best(rounds, {
            "get_many": lambda: [db.get_many(c) for c in calls],
            "get_many decode": lambda: [codec.decode_many(r) for r in call_records],
            "scan": lambda: [sum(1 for _ in db.scan(prefix=p)) for p in prefixes],
            "scan decode": lambda: [[codec.decode(r) for r in rs] for rs in scan_records],
        })
        db.close()
        per = len(scan_records) and sum(map(len, scan_records)) / len(scan_records)
        for name, ops, what in (("get_many", len(calls), "get_many of 20 random keys"),
                                ("scan", len(prefixes), f"scan of a session ({per:.1f} records)")):
            whole, dec = res[name] / ops * 1e6, res[name + " decode"] / ops * 1e6
            print(f"  {what:<36} {whole:7.1f} us; decoding its records alone {dec:7.1f} us ({dec / whole:.0%});"
                  f" best possible with the rest free: {whole / dec:.2f}x")
    finally:
        shutil.rmtree(d)


def zstd_threads(values: list, rounds: int) -> None:
    blob = msgpack.packb(values, use_bin_type=True)
    for size in (256 << 10, 1 << 20, 4 << 20):
        data = (blob * (size // len(blob) + 1))[:size]
        one = zstandard.ZstdCompressor(level=3, write_content_size=True, write_checksum=False)
        two = zstandard.ZstdCompressor(level=3, threads=2, write_content_size=True, write_checksum=False)
        res = best(rounds, {1: lambda: one.compress(data), 2: lambda: two.compress(data)})
        same = one.compress(data) == two.compress(data)
        print(f"  {size >> 10:>5} KiB: 1 thread {res[1] * 1e3:6.2f} ms, 2 workers "
              f"{res[2] * 1e3:6.2f} ms ({res[1] / res[2]:.2f}x); same bytes as 1 thread: {same}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    if "native" not in kc.backends():
        print("the native codec is not available", file=sys.stderr)
        return 1
    base, about = bench_data.load(None)
    seen: set[str] = set()
    records = [(k, v) for k, v in base if not (k in seen or seen.add(k))][:args.records]
    shapes = [v for _, v in bench_data.generate_shapes(min(args.records, 1000))]
    print(f"data: {len(records):,} records of {about}; {len(shapes):,} generate_shapes() values; "
          f"best of {args.rounds}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    # The worker thread starts on the first split call, next to the caller;
    # until the scheduler moves it to the other CPU, splitting only costs.
    warm = kc.get_backend("native").Codec()
    warm.split = SPLIT_ALL
    warm_values = [v for _, v in records[:200]]
    end = time.perf_counter() + 1.0
    while time.perf_counter() < end:
        warm.encode_many(warm_values)
    print("\n1. bare native group calls (1,000 values), alone and split with the worker thread "
          "(after 1 s of split calls)")
    for name, values in (("corpus", [v for _, v in records[:1000]]), ("shapes", shapes)):
        print(f" {name}:")
        bare_calls(values, args.rounds)
    print("\n2. reads, Codec.split off / SPLIT_LARGE / every group (cache off)")
    store_flows(records, max(2, args.rounds - 2))
    print("\n3. the floor of a read: decoding alone, outside the store")
    read_floor(records, args.rounds)
    print("\n4. zstd multi-threaded compression of large values (zstandard package, level 3)")
    zstd_threads([v for _, v in records], args.rounds)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
