"""Benchmark of transactions (kvstore/txn.py): what read-modify-write costs.

Run from the repository root (a few minutes on a shared 2-core VM):

    python bench/bench_txn.py [--ops N] [--rounds N] [--wal both|on|off]

Each round runs every contender once, in alternating order (the machine may
be shared: the load average is printed with the figures), on fresh stores
with default options; each figure is the median round's ops/s (wall clock:
incr waits for commits, so CPU time would hide its cost), each ratio the
median of the per-round ratios. Rows, for the store without the
write-ahead log (wal=False) and with it (wal=True):

  put (buffered)           put(k, i) of one key, timed until flush(): the blind write
  incr (buffered)          incr(k) of one key from one thread, durable=False
                           target: >= 0.7x put (buffered)
  diskcache incr           diskcache 5.6 Cache.incr of one key (an sqlite
                           transaction each); target: kvstore incr >= 5x
  incr 8 threads, 8 keys   each thread its own key: no conflicts expected
  incr 8 threads, 1 key    one shared key: ops/s and conflicting runs per call
  turn as transaction      an agent turn, durable: read meta, append an event
                           to it, write meta + 3 messages, in one transaction
  turn as durable batch    the same writes in one batch(durable=True) after a
                           plain get of meta (what `mixed-durable` does)
                           target: transaction >= 1.0x batch
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kvstore  # noqa: E402
from harness import alternated_rounds, ratio_line  # noqa: E402


def per_second(fn, n: int) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def threaded(n_threads: int, work) -> None:
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


MESSAGE = {"role": "assistant", "content": "x" * 400, "tokens": 120}


def contenders(ops: int):
    """name -> fn(tmpdir, wal) returning (ops/s, note)."""

    def put_buffered(d, wal):
        with kvstore.open(d, wal=wal) as db:
            def run():
                for i in range(ops):
                    db.put("k", i, durable=False)
                db.flush()
            return per_second(run, ops), ""

    def incr_buffered(d, wal):
        with kvstore.open(d, wal=wal) as db:
            return per_second(lambda: [db.incr("k", durable=False) for _ in range(ops)], ops), ""

    def diskcache_incr(d, wal):
        import diskcache

        with diskcache.Cache(d) as cache:
            return per_second(lambda: [cache.incr("k") for _ in range(ops)], ops), ""

    def incr_threads(shared: bool):
        def run(d, wal):
            with kvstore.open(d, wal=wal) as db:
                per = max(1, ops // 8)
                rate = per_second(lambda: threaded(8, lambda i: [db.incr("k" if shared else f"k{i}")
                                                                 for _ in range(per)]), 8 * per)
                st = db.stats()["transactions"]
                return rate, f"{st['conflicts'] / st['calls']:.2f} conflicting runs per incr"
        return run

    def turn(as_transaction: bool):
        def run(d, wal):
            with kvstore.open(d, wal=wal) as db:
                db.put("meta:1", {"events": [], "turn": 0}, durable=True)
                n = max(1, ops // 4)

                def one(t):
                    if as_transaction:
                        with db.transaction(durable=True) as tx:
                            meta = tx.get("meta:1")
                            meta["events"] = (meta["events"] + [t])[-20:]
                            meta["turn"] = t
                            tx.put("meta:1", meta)
                            for j in range(3):
                                tx.put(f"msg:1:{t}:{j}", MESSAGE)
                    else:
                        meta = db.get("meta:1")
                        meta["events"] = (meta["events"] + [t])[-20:]
                        meta["turn"] = t
                        with db.batch(durable=True) as b:
                            b.put("meta:1", meta)
                            for j in range(3):
                                b.put(f"msg:1:{t}:{j}", MESSAGE)

                return per_second(lambda: [one(t) for t in range(n)], n), ""
        return run

    return {
        "put (buffered)": put_buffered,
        "incr (buffered)": incr_buffered,
        "diskcache incr": diskcache_incr,
        "incr 8 threads, 8 keys": incr_threads(False),
        "incr 8 threads, 1 key": incr_threads(True),
        "turn as transaction": turn(True),
        "turn as durable batch": turn(False),
    }


RATIOS = [("incr (buffered)", "put (buffered)", 0.7), ("incr (buffered)", "diskcache incr", 5.0),
          ("turn as transaction", "turn as durable batch", 1.0)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=400, help="operations per contender per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--wal", choices=["both", "on", "off"], default="both")
    args = ap.parse_args(argv)
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.wal]
    runs = contenders(args.ops)
    names = list(runs)
    print(f"bench_txn: {args.ops} ops per contender, {args.rounds} rounds, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start")
    for wal in modes:
        def one(d_round, name, wal=wal):
            d = tempfile.mkdtemp(prefix="kvstore-bench-txn-")
            try:
                return runs[name](d, wal)
            finally:
                shutil.rmtree(d, ignore_errors=True)

        rates, notes = alternated_rounds({name: one for name in names}, args.rounds)
        print(f"\nwal={wal} (load average now {os.getloadavg()[0]:.1f})")
        for name in names:
            print(f"  {name:<26} {statistics.median(rates[name]):>10,.0f} ops/s  {notes.get(name, '')}")
        for a, b, target in RATIOS:
            print("  " + ratio_line(rates, a, b, target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
