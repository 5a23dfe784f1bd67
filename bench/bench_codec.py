"""Codec benchmark: the native backend against the Python one.

Run from anywhere, with the kvstore package installed (pip install -e .)::

    python bench/bench_codec.py [--corpus PATH] [--limit N] [--rounds N] [--batch N]

Data: the records of ../shared/corpus/agent_memory.jsonl.zst relative to the
repository root (20,000 agent-memory values, one JSON object per line,
{"key": ..., "value": ...}); --corpus names another file of that shape.

Measures, per value and as throughput of serialized (msgpack) bytes:

* encode and decode, one value a call and in batches (encode_many,
  decode_many), native against python, with the default store settings
  (zstd level 3, values under 128 bytes stored as they are), then the same
  with compression off and with a trained dictionary (for information);
* XXH64 of 1 MiB buffers: native `hash64` against the `xxhash` package;
* the raw `zstandard` package and msgpack on the same values: work both
  backends must do, so python time / this floor bounds the possible ratio.

Each measurement is the best of --rounds runs; the two backends run in
alternation so that both see the same machine load. The table ends with the
targets: native encode/decode >= 2x python, XXH64 1 MiB >= 0.7x xxhash.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import msgpack
import xxhash
import zstandard

import kvstore.codec as codec
from kvstore.codec import Dictionary

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "agent_memory.jsonl.zst"

ENCODE_TARGET = 2.0
DECODE_TARGET = 2.0
HASH_TARGET = 0.7


def load(path: Path, limit: int | None) -> list:
    values = []
    with zstandard.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                values.append(json.loads(line)["value"])
                if limit and len(values) >= limit:
                    break
    return values


def best_of(rounds: int, fns: dict) -> dict:
    """{name: best seconds}, running the functions in turn each round."""
    best = {name: float("inf") for name in fns}
    enabled = gc.isenabled()
    try:
        for _ in range(rounds):
            for name, fn in fns.items():
                gc.collect()
                gc.disable()
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                if enabled:
                    gc.enable()
                best[name] = min(best[name], dt)
    finally:
        if enabled:
            gc.enable()
    return best


def chunks(seq: list, size: int) -> list:
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--limit", type=int, default=None, help="use the first N records only")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=256, help="values per encode_many/decode_many")
    args = ap.parse_args(argv)

    if "native" not in codec.backends():
        try:
            codec.get_backend("native")
        except ImportError as exc:
            print(f"native codec not available: {exc}", file=sys.stderr)
        return 1
    native_mod, python_mod = codec.get_backend("native"), codec.get_backend("python")
    if not args.corpus.exists():
        print(f"corpus not found: {args.corpus}", file=sys.stderr)
        return 1

    values = load(args.corpus, args.limit)
    serialized = [msgpack.packb(v, use_bin_type=True) for v in values]
    total = sum(map(len, serialized))
    n = len(values)
    print(f"data: {n} records of {args.corpus.resolve()}")
    print(f"      {total / 1e6:.1f} MB serialized, {total / n:.0f} bytes a value on average; "
          f"best of {args.rounds} rounds, batches of {args.batch}")
    print(f"native zstd: {'.'.join(map(str, native_mod.zstd_version))} from {native_mod.zstd_library}; "
          f"zstandard {zstandard.__version__} (zstd {zstandard.ZSTD_VERSION[0]}.{zstandard.ZSTD_VERSION[1]}."
          f"{zstandard.ZSTD_VERSION[2]}, {zstandard.backend} backend); python {sys.version.split()[0]}; "
          f"{os.cpu_count()} CPUs")

    rows = []  # (label, python s, native s, target or None)

    def compare(label, make_py, make_nat, workload, target=None):
        py, nat = make_py(), make_nat()
        best = best_of(args.rounds, {"py": lambda: workload(py), "nat": lambda: workload(nat)})
        rows.append((label, best["py"], best["nat"], target))

    def suite(tag, kwargs, dictionary=None, targets=False):
        dicts = {dictionary.id: dictionary} if dictionary is not None else None
        mk_py = lambda: python_mod.Codec(**kwargs)  # noqa: E731
        mk_nat = lambda: native_mod.Codec(**kwargs)  # noqa: E731
        records = python_mod.Codec(**kwargs).encode_many(values, dictionary=dictionary)
        assert native_mod.Codec(**kwargs).decode_many(records, dictionaries=dicts) == values
        value_batches, record_batches = chunks(values, args.batch), chunks(records, args.batch)
        compare(f"encode{tag}", mk_py, mk_nat,
                lambda c: [c.encode(v, dictionary=dictionary) for v in values],
                ENCODE_TARGET if targets else None)
        compare(f"encode_many{tag}", mk_py, mk_nat,
                lambda c: [c.encode_many(b, dictionary=dictionary) for b in value_batches],
                ENCODE_TARGET if targets else None)
        compare(f"decode{tag}", mk_py, mk_nat,
                lambda c: [c.decode(r, dictionaries=dicts) for r in records],
                DECODE_TARGET if targets else None)
        if not tag:
            views = [memoryview(r) for r in records]  # as a store reads them from LMDB
            compare("decode (memoryview)", mk_py, mk_nat,
                    lambda c: [c.decode(r, dictionaries=dicts) for r in views])
        compare(f"decode_many{tag}", mk_py, mk_nat,
                lambda c: [c.decode_many(b, dictionaries=dicts) for b in record_batches],
                DECODE_TARGET if targets else None)

    suite("", {}, targets=True)
    suite(" (no zstd)", {"compression": "none"})
    trained = Dictionary(1, zstandard.train_dictionary(64 << 10, serialized[: min(5000, n)]).as_bytes())
    suite(" (dictionary)", {}, dictionary=trained)

    # Work both backends share: msgpack and zstd through the zstandard package.
    zc = zstandard.ZstdCompressor(level=3, write_content_size=True, write_checksum=False)
    zd = zstandard.ZstdDecompressor()
    frames = [zc.compress(s) for s in serialized]
    pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
    floor = best_of(args.rounds, {
        "pack": lambda: [pack(v) for v in values],
        "compress": lambda: [zc.compress(s) for s in serialized],
        "decompress": lambda: [zd.decompress(f) for f in frames],
        "unpack": lambda: [msgpack.unpackb(s, raw=False, strict_map_key=False) for s in serialized],
    })

    # XXH64 on 1 MiB buffers.
    buf = os.urandom(1 << 20)
    reps = 100
    assert native_mod.hash64(buf) == xxhash.xxh64_intdigest(buf)
    hashes = best_of(args.rounds, {
        "xxhash": lambda: [xxhash.xxh64_intdigest(buf) for _ in range(reps)],
        "native": lambda: [native_mod.hash64(buf) for _ in range(reps)],
    })

    us = lambda s: s / n * 1e6  # noqa: E731
    mbs = lambda s: total / s / 1e6  # noqa: E731
    print()
    print(f"{'operation':26s} {'python':>9s} {'native':>9s} {'python':>8s} {'native':>8s} "
          f"{'ratio':>6s}  target")
    print(f"{'':26s} {'us/value':>9s} {'us/value':>9s} {'MB/s':>8s} {'MB/s':>8s} {'':>6s}")
    met_all = True
    for label, py, nat, target in rows:
        ratio = py / nat
        verdict = ""
        if target is not None:
            ok = ratio >= target
            met_all &= ok
            verdict = f">= {target:.1f}x  {'met' if ok else 'NOT met'}"
        print(f"{label:26s} {us(py):9.2f} {us(nat):9.2f} {mbs(py):8.1f} {mbs(nat):8.1f} "
              f"{ratio:5.2f}x  {verdict}")
    print()
    print("shared work (zstandard package and msgpack alone, same values):")
    for label, key in [("msgpack pack", "pack"), ("zstd compress, level 3", "compress"),
                       ("zstd decompress", "decompress"), ("msgpack unpackb", "unpack")]:
        print(f"  {label:24s} {us(floor[key]):9.2f} us/value {mbs(floor[key]):8.1f} MB/s")
    enc_floor = floor["pack"] + floor["compress"]
    dec_floor = floor["decompress"] + floor["unpack"]
    enc_py = rows[0][1]
    dec_py = rows[2][1]  # decode, bytes records
    print(f"  => best possible ratio if a backend added nothing to that work: "
          f"encode {enc_py / enc_floor:.2f}x, decode {dec_py / dec_floor:.2f}x")
    print()
    gbs = lambda s: reps * len(buf) / s / 1e9  # noqa: E731
    hratio = hashes["xxhash"] / hashes["native"]
    hok = hratio >= HASH_TARGET
    met_all &= hok
    print(f"XXH64, 1 MiB buffers: xxhash package {gbs(hashes['xxhash']):.2f} GB/s, "
          f"native {gbs(hashes['native']):.2f} GB/s, ratio {hratio:.2f}x  "
          f">= {HASH_TARGET:.1f}x  {'met' if hok else 'NOT met'}")
    print()
    print(f"targets: {'all met' if met_all else 'not all met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
