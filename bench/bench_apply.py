"""How often the write-ahead log is applied to LMDB: a sweep for the defaults.

    python bench/bench_apply.py                      # about two minutes
    python bench/bench_apply.py --records 20000 --rounds 3

Options.apply_interval (how often a writable process applies the log) and
Options.apply_bytes (apply at once when this much waits) trade the size of
LMDB's transactions against how much of the log other processes read into
their overlay. For each setting, on a fresh store, one thread puts the
records (buffered, in random key order, the corpus's records or generated
ones when the corpus is missing) and closes the store (which applies the
rest). Printed per setting, medians of the rounds (settings alternate in a
shuffled order each round, the machine may be shared):

    fill ops/s     puts and the close, wall clock
    applies        LMDB transactions the fill took
    data.mdb B/rec the data file's size per record after the close (live
                   pages, the free pages the applies' copy-on-write left,
                   preallocated room); the log file is not counted
    overlay peak   the most records another process's overlay held (a
                   reader process polling every 5 ms)
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvstore  # noqa: E402
from data import distinct, load  # noqa: E402

SETTINGS = [  # (apply_interval s, apply_bytes)
    (0.01, 8 << 20),
    (0.05, 8 << 20),  # the defaults
    (0.2, 8 << 20),
    (1.0, 8 << 20),
    (0.05, 1 << 20),
    (0.05, 32 << 20),
]

_READER = """
import sys, time, kvstore
db = kvstore.open(sys.argv[1], readonly=True)
peak = 0
stop = sys.argv[2]
import os
while not os.path.exists(stop):
    db.get("probe")  # a read: catches up on the log's tail
    peak = max(peak, sum(len(v) for v in db._live_engine().overlay.values()))
    time.sleep(0.005)
print(peak)
db.close()
"""


def one(path: str, records: list, interval: float, nbytes: int) -> tuple[float, int, float, int]:
    db = kvstore.open(path, apply_interval=interval, apply_bytes=nbytes)
    db.put("probe", 0, durable=True)
    stop = path + ".stop"
    reader = subprocess.Popen([sys.executable, "-c", _READER, path, stop], stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)  # the reader's open
    start = time.perf_counter()
    for key, value in records:
        db.put(key, value)
    applies = db.stats()["log"]["applies"]
    db.close()
    elapsed = time.perf_counter() - start
    open(stop, "w").close()
    peak = int(reader.communicate(timeout=60)[0].strip() or 0)
    size = os.path.getsize(os.path.join(path, "data.mdb"))
    return len(records) / elapsed, applies, size / len(records), peak


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--corpus", default=None, help="a JSON-lines file of records (default: the shared corpus)")
    args = ap.parse_args(argv)
    base, source = load(args.corpus)
    records = distinct(base, args.records)
    random.Random(3).shuffle(records)
    rng = random.Random(5)
    results: dict = {s: [] for s in SETTINGS}
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(SETTINGS)
            rng.shuffle(order)
            for interval, nbytes in order:
                path = os.path.join(tmp, f"s{r}-{interval}-{nbytes}")
                results[(interval, nbytes)].append(one(path, records, interval, nbytes))
    print(f"bench_apply: {len(records)} records ({source}), {args.rounds} rounds, "
          f"load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(f"{'apply_interval':>14} {'apply_bytes':>12} {'fill ops/s':>11} {'applies':>8} "
          f"{'data.mdb B/rec':>15} {'overlay peak':>13}")
    for (interval, nbytes), runs in results.items():
        med = [statistics.median(x[i] for x in runs) for i in range(4)]
        print(f"{interval:>14} {nbytes >> 20:>9} MiB {med[0]:>11,.0f} {med[1]:>8,.0f} "
              f"{med[2]:>15,.0f} {med[3]:>13,.0f}")


if __name__ == "__main__":
    main()
