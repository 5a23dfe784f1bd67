"""The benchmark harness: workload registry, targets, timing helpers, results.

A workload is a function `fn(ctx) -> Result | list[Result]` registered with
`@workload(name, doc, ...)`. It gets a `Context` (the records, the op counts,
the thread count, fresh temporary directories) and returns what it measured.
A target is a `Target(numerator, denominator, min_ratio, why)` over workload
names. Names may contain `{T}`, replaced by the thread count (--threads).

Adding a workload: write the function, decorate it, and add a line to the
docstring of bench/run.py. Adding a target: append to `TARGETS` in run.py.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gc
import importlib.util
import math
import os
import resource
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

# ---------------------------------------------------------------- results


@dataclass
class Result:
    """What one run of one workload measured."""

    name: str
    system: str  # kvstore, lmdb, sqlite3, diskcache
    ops: int = 0  # operations timed (calls of put/get/put_many, or puts in one txn)
    seconds: float = 0.0  # wall time of the timed section
    threads: int = 1
    latencies: list | None = None  # seconds per call, when meaningful
    note: str = ""
    extra: dict = field(default_factory=dict)  # anything else worth keeping (stats...)
    skipped: str = ""  # reason, when the workload could not run
    peak_rss_mb: float | None = None
    start_rss_mb: float | None = None  # resident memory when the workload began
    runs: list = field(default_factory=list)  # ops/s of every repetition
    order: int = 0  # position in the registry, for printing

    @property
    def ops_per_sec(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, p: float) -> float | None:
        lat = self.latencies
        if not lat:
            return None
        s = sorted(lat)
        rank = math.ceil(p / 100.0 * len(s))  # nearest rank
        return s[min(len(s), max(1, rank)) - 1]

    def summary(self) -> dict:
        out = {
            "name": self.name,
            "system": self.system,
            "ops": self.ops,
            "threads": self.threads,
            "seconds": self.seconds,
            "ops_per_sec": self.ops_per_sec,
            "runs_ops_per_sec": self.runs,
            "note": self.note,
            "skipped": self.skipped or None,
            "peak_rss_mb": self.peak_rss_mb,
            "start_rss_mb": self.start_rss_mb,
            "extra": self.extra,
        }
        if self.latencies:
            lat = self.latencies
            out["latency_us"] = {
                "mean": sum(lat) / len(lat) * 1e6,
                "p50": self.percentile(50) * 1e6,
                "p90": self.percentile(90) * 1e6,
                "p99": self.percentile(99) * 1e6,
                "p99.9": self.percentile(99.9) * 1e6,
                "max": max(lat) * 1e6,
                "calls": len(lat),
            }
        return out


# ---------------------------------------------------------------- registry


@dataclass
class Workload:
    name: str  # may contain {T}
    fn: Callable
    doc: str
    system: str
    requires: tuple = ()  # importable modules needed; skipped with a note if missing
    order: int = 0
    once: bool = False  # run in the first repetition only (long, or a measurement that does not vary)


WORKLOADS: dict[str, Workload] = {}


def workload(name: str, doc: str, system: str = "kvstore", requires: tuple = (), once: bool = False):
    """Register `fn(ctx)` as workload `name` ({T} = thread count)."""

    def deco(fn):
        if name in WORKLOADS:
            raise ValueError(f"workload {name!r} registered twice")
        WORKLOADS[name] = Workload(name, fn, doc, system, tuple(requires), len(WORKLOADS), once)
        return fn

    return deco


class Unavailable(Exception):
    """Raised by a workload that cannot run here (an API this kvstore lacks,
    data without the keys it needs). The runner prints the message as the
    reason, without a traceback, and does not retry it."""


@dataclass
class Target:
    numerator: str  # workload name ({T} allowed)
    denominator: str
    min_ratio: float | None  # None: a ratio printed for information, no threshold
    why: str
    source: str = ""  # the issue that set the threshold


def expand(name: str, threads: int) -> str:
    return name.replace("{T}", str(threads))


def missing_requirements(w: Workload) -> list[str]:
    return [m for m in w.requires if importlib.util.find_spec(m) is None]


# Families of workloads, for the order of the table and the plots: kvstore's
# rows sit among those of its peers that do the same thing.
FAMILIES = (
    ("write", ("fill*", "overwrite", "*txn-per-put*", "*-one-txn", "*commit-per-put", "*-set")),
    ("read", ("read*", "hotset-*", "*-readrandom", "*-get", "*-readhot")),
    ("scan", ("scan", "*-scan")),
    ("agent turn", ("mixed*", "*-mixed-*")),
    ("codec", ("codec-*",)),
)


def family(name: str) -> int:
    for i, (_, patterns) in enumerate(FAMILIES):
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            return i
    return len(FAMILIES)


# ---------------------------------------------------------------- context


@dataclass
class Context:
    records: list  # [(key str, value)] with distinct keys, file order
    random_order: list  # the same records, shuffled once (seeded)
    sorted_order: list  # the same records, sorted by key
    sync_records: list  # the first sync_n of random_order: for per-put fsync workloads
    group_records: list  # for kvstore's multi-thread durable fill
    threads: int
    seed: int
    tmp_root: str | None = None
    quick: bool = False
    base: list = field(default_factory=list)  # the data as loaded, before distinct keys (for the scale sweep)
    reads: int = 0  # reads of the Zipf workloads
    turns: int = 0  # agent turns of the mixed workloads that do not fsync each write
    sync_turns: int = 0  # agent turns of those that do
    scans: int = 0  # prefix scans of the scan workloads
    scale_sizes: tuple = ()  # record counts of the scale sweep
    scale_reads: int = 0  # reads at each point of the scale sweep
    memo: dict = field(default_factory=dict)  # data derived once and shared by workloads (Zipf stream, turns)

    def shared(self, name: str, make: Callable):
        """make(), computed once per run and shared by every workload that asks for `name`."""
        if name not in self.memo:
            self.memo[name] = make()
        return self.memo[name]

    @property
    def n(self) -> int:
        return len(self.records)

    @contextlib.contextmanager
    def tmpdir(self):
        """A fresh empty directory, removed afterwards."""
        d = tempfile.mkdtemp(prefix="kvbench-", dir=self.tmp_root)
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- helpers


def split(items: list, parts: int) -> list[list]:
    """Round-robin split: thread i gets items[i::parts]."""
    return [items[i::parts] for i in range(parts)]


def time_puts(put: Callable, records) -> tuple[float, list]:
    """put(key, value) for each record, each call timed: (seconds, latencies)."""
    pc = time.perf_counter
    lat: list = []
    t0 = pc()
    for key, value in records:
        t = pc()
        put(key, value)
        lat.append(pc() - t)
    return pc() - t0, lat


def time_gets(get: Callable, keys) -> tuple[float, list, int]:
    """get(key) for each key, each call timed: (seconds, latencies, results not None)."""
    pc = time.perf_counter
    lat: list = []
    found = 0
    t0 = pc()
    for key in keys:
        t = pc()
        value = get(key)
        lat.append(pc() - t)
        found += value is not None
    return pc() - t0, lat, found


class GCTime:
    """Seconds the garbage collector ran, and its full (generation 2)
    collections, while the block runs (gc.callbacks): `with GCTime() as g:`.
    A long run holds a large heap (records, every run's latency lists), so
    a full collection inside a short timed loop can cost more than the loop."""

    def __init__(self):
        self.seconds = 0.0
        self.full = 0
        self._start = 0.0

    def _callback(self, phase, info):
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.full += info["generation"] == 2

    def __enter__(self):
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self._callback)


STALL = 0.010  # a call slower than this (s) counts towards stall_seconds


def stall_seconds(lat: list) -> float:
    """Time spent in calls slower than STALL: what a stall of the machine, a
    full GC, or a put waiting for a commit while the queue is full, adds to a
    loop whose median call takes microseconds."""
    return sum(x for x in lat if x > STALL)


def found_note(found: int, expected: int) -> str:
    return "" if found == expected else f"{found:,} of {expected:,} found!"


def run_threads(parts: list, worker: Callable) -> tuple[float, list]:
    """Run worker(part, latencies) in one thread per part, all released at once.

    Returns (seconds from the release to the last thread's end, all latencies).
    A worker's exception is re-raised here.
    """
    n = len(parts)
    barrier = threading.Barrier(n + 1)
    lats = [[] for _ in range(n)]
    errors: list = []

    def body(i):
        try:
            barrier.wait()
            worker(parts[i], lats[i])
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    ts = [threading.Thread(target=body, args=(i,), name=f"bench-{i}") for i in range(n)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return elapsed, [x for lat in lats for x in lat]


# ---------------------------------------------------------------- memory

_CLEAR_REFS = "/proc/self/clear_refs"


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux); False when not possible."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _proc_status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status ("VmHWM", "VmRSS", "RssAnon"), MiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process, MiB (since the last reset on Linux)."""
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / (1024.0 * 1024.0) if os.uname().sysname == "Darwin" else ru / 1024.0


def rss_mb() -> float | None:
    """Resident set size of this process now, MiB (Linux)."""
    return _proc_status_mb("VmRSS")


def anon_rss_mb() -> float | None:
    """Anonymous resident memory now, MiB (Linux): the heap, without the pages
    of mapped files such as LMDB's data.mdb."""
    return _proc_status_mb("RssAnon")


def dir_bytes(path: str) -> int:
    """Disk space allocated to the files under path (st_blocks), bytes."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def run_once(w: Workload, ctx: Context) -> list[Result]:
    """One run of a workload: a list of results, with peak RSS filled in.

    The kernel's peak mark is reset first (Linux), so the peak is this
    workload's, over the memory the process already held when it began.
    """
    gc.collect()
    reset_peak_rss()
    start = rss_mb()
    out = w.fn(ctx)
    rss = peak_rss_mb()
    results = out if isinstance(out, list) else [out]
    for r in results:
        r.peak_rss_mb = rss
        r.start_rss_mb = start
        r.order = w.order
    return results


def median_result(results: list[Result]) -> Result:
    """The run with the median ops/s, carrying every run's ops/s."""
    runs = [r.ops_per_sec for r in results]
    chosen = sorted(results, key=lambda r: r.ops_per_sec)[(len(results) - 1) // 2]
    chosen.runs = runs
    return chosen


# ---------------------------------------------------------------- alternated rounds of peers


def alternated_rounds(runs: dict, rounds: int, after_round: Callable | None = None) -> tuple[dict, dict]:
    """Run every contender once per round, in alternating order (drift on a
    shared machine hits both sides of a ratio): ({name: [ops/s per round]},
    {name: its last note}). runs: name -> fn(round, name) -> (ops/s, note);
    after_round(round), if given, runs at the end of each round."""
    names = list(runs)
    rates: dict = {n: [] for n in names}
    notes: dict = {}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            value, note = runs[name](r, name)
            rates[name].append(value)
            if note:
                notes[name] = note
        if after_round is not None:
            after_round(r)
    return rates, notes


def ratio_line(rates: dict, a: str, b: str, target: float, digits: int = 3) -> str:
    """`a / b: RATIO x (target >= T x: meets|MISSES)`, the ratio the median of
    the per-round ratios."""
    import statistics

    ratio = statistics.median(x / y for x, y in zip(rates[a], rates[b]))
    verdict = "meets" if ratio >= target else "MISSES"
    return f"{a} / {b}: {ratio:.{digits}f}x (target >= {target:g}x: {verdict})"
