"""The write-ahead log against LMDB commits and sqlite3, side by side.

    python bench/bench_wal.py                 # about a minute: 3 rounds, alternated
    python bench/bench_wal.py --rounds 5 --ops 2000

Each round runs every workload once, in a shuffled order, on fresh stores
in one temporary directory; the table shows medians and the ratios the
write-ahead-log issue asks for, all from this one run:

    fillsync-wal / fillsync-lmdb    1 thread, durable put per call
    fillsync-8t-*                   8 threads, durable puts (syncs shared)
    fillrandom-*                    1 thread, buffered puts (with the log:
                                    each in the kernel when put returns)
    *-worker                        the same with apply_worker="always": the
                                    log applied by a worker process from the
                                    start (its start is not timed); the
                                    others run with the default, "auto"
    sqlite-full / sqlite-normal     sqlite3 WAL mode, a commit per put,
                                    synchronous=FULL / NORMAL
    lmdb-txn-per-put-sync           raw py-lmdb, a synced txn per put
    lmdb-txn-per-put-sync-8t/-32t   the same from 8 / 32 threads (they queue
                                    on LMDB's write lock: no shared syncs)
    fdatasync                       the disk's limit: 4 KiB pwrite+fdatasync
                                    of a preallocated file, one thread

Then the latency of a cross-process read: another process puts a key
(buffered) every 1-3 ms; this one reads it in a loop; the time from the
put's return in the writer to the first read here that returns the new
value, p50 and p99 (CLOCK_MONOTONIC is one clock for every process).
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time

import lmdb

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kvstore  # noqa: E402

VALUE = {"role": "assistant", "content": "x" * 400, "turn": 7, "tags": ["a", "b"]}


def _timed_threads(work, threads: int) -> float:
    """Seconds for work(t) to run in threads t = 0 .. threads-1, started together."""
    start = time.perf_counter()
    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - start


def _kv(path, ops, durable, threads, wal, worker="auto"):
    db = kvstore.open(path, wal=wal, apply_worker=worker)
    if worker == "always":  # its start is part of open: not timed
        end = time.monotonic() + 30
        while db.stats()["log"]["apply_worker"] is None and time.monotonic() < end:
            time.sleep(0.005)
    per = ops // threads

    def work(t):
        for i in range(per):
            db.put(f"t{t}:{i:07d}", VALUE, durable=durable)

    elapsed = _timed_threads(work, threads)
    db.close()
    return per * threads / elapsed


def _sqlite(path, ops, sync):
    import msgpack
    con = sqlite3.connect(os.path.join(path + ".sqlite"), isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={sync}")
    con.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB)")
    start = time.perf_counter()
    for i in range(ops):
        con.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (f"k{i:07d}", msgpack.packb(VALUE)))
    elapsed = time.perf_counter() - start
    con.close()
    return ops / elapsed


def _lmdb(path, ops):
    import msgpack
    env = lmdb.open(path + ".lmdb", map_size=1 << 30)
    start = time.perf_counter()
    for i in range(ops):
        with env.begin(write=True) as txn:
            txn.put(f"k{i:07d}".encode(), msgpack.packb(VALUE))
    elapsed = time.perf_counter() - start
    env.close()
    return ops / elapsed


def _lmdb_threads(path, ops, threads):
    import msgpack
    env = lmdb.open(path + ".lmdb", map_size=1 << 30, max_spare_txns=threads)
    per = ops // threads
    value = msgpack.packb(VALUE)

    def work(t):
        for i in range(per):
            with env.begin(write=True) as txn:
                txn.put(f"t{t}:{i:07d}".encode(), value)

    elapsed = _timed_threads(work, threads)
    env.close()
    return per * threads / elapsed


_LATENCY_WRITER = """
import random, sys, time, kvstore
db = kvstore.open(sys.argv[1])
rng = random.Random(1)
for i in range(1, int(sys.argv[2]) + 1):
    time.sleep(rng.uniform(0.001, 0.003))
    db.put("x", i)
    print(i, time.monotonic(), flush=True)
db.close()
"""


def _cross_process_latency(path, n):
    """(p50, p99) in us: another process's put returned -> a read here sees it."""
    import subprocess

    kvstore.open(path).close()
    db = kvstore.open(path)
    db.put("x", 0, durable=True)
    child = subprocess.Popen([sys.executable, "-c", _LATENCY_WRITER, path, str(n)],
                             stdout=subprocess.PIPE, text=True)
    seen = {}
    last = 0
    while last < n and child.poll() is None or last < n and db.get("x") != last:
        value = db.get("x")
        if value != last:
            seen[value] = time.monotonic()
            last = value
    acked = {}
    for line in child.stdout:
        i, t = line.split()
        acked[int(i)] = float(t)
    child.wait()
    db.close()
    lat = sorted(max(0.0, seen[i] - acked[i]) * 1e6 for i in seen if i in acked)
    if not lat:
        return 0.0, 0.0
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def _fdatasync(path, ops):
    fd = os.open(path + ".raw", os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, bytes(ops * 4096 + 4096), 0)
    os.fsync(fd)
    block = os.urandom(4096)
    start = time.perf_counter()
    for i in range(ops):
        os.pwrite(fd, block, i * 4096)
        os.fdatasync(fd)
    elapsed = time.perf_counter() - start
    os.close(fd)
    return ops / elapsed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ops", type=int, default=1000, help="durable ops per workload")
    ap.add_argument("--buffered-ops", type=int, default=20000)
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument("--latency-writes", type=int, default=500)
    args = ap.parse_args(argv)
    n, nb = args.ops, args.buffered_ops
    workloads = {
        "fillsync-wal": lambda p: _kv(p, n, True, 1, True),
        "fillsync-lmdb": lambda p: _kv(p, n, True, 1, False),
        "fillsync-8t-wal": lambda p: _kv(p, 4 * n, True, 8, True),
        "fillsync-8t-lmdb": lambda p: _kv(p, 4 * n, True, 8, False),
        "fillsync-32t-wal": lambda p: _kv(p, 8 * n, True, 32, True),
        "fillrandom-wal": lambda p: _kv(p, nb, False, 1, True),
        "fillrandom-wal-worker": lambda p: _kv(p, nb, False, 1, True, "always"),
        "fillsync-8t-wal-worker": lambda p: _kv(p, 4 * n, True, 8, True, "always"),
        "fillrandom-lmdb": lambda p: _kv(p, nb, False, 1, False),
        "sqlite-full": lambda p: _sqlite(p, n, "FULL"),
        "sqlite-normal": lambda p: _sqlite(p, nb // 4, "NORMAL"),
        "lmdb-txn-per-put-sync": lambda p: _lmdb(p, n),
        "lmdb-txn-per-put-sync-8t": lambda p: _lmdb_threads(p, 4 * n, 8),
        "lmdb-txn-per-put-sync-32t": lambda p: _lmdb_threads(p, 8 * n, 32),
        "fdatasync": lambda p: _fdatasync(p, n),
    }
    results = {name: [] for name in workloads}
    rng = random.Random(42)
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        for r in range(args.rounds):
            order = list(workloads)
            rng.shuffle(order)
            for name in order:
                path = os.path.join(tmp, f"{name}-{r}")
                results[name].append(workloads[name](path))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"{'workload':26} {'ops/s (median)':>15}  runs")
    for name, v in results.items():
        print(f"{name:26} {med[name]:15,.0f}  {', '.join(f'{x:,.0f}' for x in v)}")
    ratios = [
        ("fillsync-wal / sqlite-full", "fillsync-wal", "sqlite-full", 1.0),
        ("fillsync-wal / lmdb-txn-per-put-sync", "fillsync-wal", "lmdb-txn-per-put-sync", 1.3),
        ("fillsync-wal / fillsync-lmdb", "fillsync-wal", "fillsync-lmdb", None),
        ("fillsync-8t-wal / lmdb-txn-per-put-sync-8t", "fillsync-8t-wal", "lmdb-txn-per-put-sync-8t", 5.0),
        ("fillsync-32t-wal / lmdb-txn-per-put-sync-32t", "fillsync-32t-wal", "lmdb-txn-per-put-sync-32t",
         None),
        ("fillsync-32t-wal / sqlite-full", "fillsync-32t-wal", "sqlite-full", None),
        ("fillsync-8t-wal / sqlite-full", "fillsync-8t-wal", "sqlite-full", 3.0),
        ("fillsync-8t-wal / fillsync-8t-lmdb", "fillsync-8t-wal", "fillsync-8t-lmdb", None),
        ("fillrandom-wal / sqlite-full", "fillrandom-wal", "sqlite-full", 10.0),
        ("fillrandom-wal / sqlite-normal", "fillrandom-wal", "sqlite-normal", 1.5),
        ("fillrandom-wal / fillrandom-lmdb", "fillrandom-wal", "fillrandom-lmdb", 0.9),
        ("fillrandom-wal-worker / sqlite-normal", "fillrandom-wal-worker", "sqlite-normal", 1.5),
        ("fillrandom-wal-worker / fillrandom-lmdb", "fillrandom-wal-worker", "fillrandom-lmdb", 0.9),
        ("fillrandom-wal-worker / fillrandom-wal", "fillrandom-wal-worker", "fillrandom-wal", None),
        ("fillsync-8t-wal-worker / lmdb-txn-per-put-sync-8t", "fillsync-8t-wal-worker",
         "lmdb-txn-per-put-sync-8t", 5.0),
        ("fillsync-wal / fdatasync (the limit)", "fillsync-wal", "fdatasync", None),
    ]
    print()
    for label, a, b, target in ratios:
        ratio = med[a] / med[b]
        verdict = "" if target is None else ("  ok" if ratio >= target else f"  below {target}x")
        print(f"{label:46} {ratio:6.2f}x{verdict}")
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        p50, p99 = _cross_process_latency(os.path.join(tmp, "latency"), args.latency_writes)
    print(f"\ncross-process read of an acknowledged buffered put ({args.latency_writes} writes): "
          f"p50 {p50:,.0f} us, p99 {p99:,.0f} us")


if __name__ == "__main__":
    main()
