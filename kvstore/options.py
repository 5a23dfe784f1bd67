"""Every option `kvstore.open()` takes, with its default, unit and trade-off.

`kvstore.open(path, **options)` builds an `Options` from its keyword
arguments; an unknown name or a bad value is a `ValueError`/`TypeError` at
open, before any file is touched.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, fields
from typing import Any, Callable, Literal, Mapping, TypedDict

from .clock import check_clock

__all__ = ["Options", "OptionsDict"]

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Options:
    # ---------------------------------------------------- behaviour

    # Default durability of put/delete/put_many/batch when durable=None.
    # True: the call returns once its write is fsynced (survives power loss).
    # False: with the write-ahead log, the call returns once the write is in
    # the log in the kernel (survives a process crash; synced within
    # flush_interval); without it, at once, committed within flush_interval
    # (a crash may lose it).
    durable: bool = False

    # Open the store read-only: every write raises ReadOnlyError. Works on
    # files this process may not write; never creates a store.
    readonly: bool = False

    # Most namespaces (LMDB named databases) the store can hold, besides the
    # default one. LMDB scans its table of open databases linearly, so keep it
    # modest.
    max_namespaces: int = 64

    # Most threads and processes reading the same store at once (LMDB's reader
    # table, shared by every process; fixed by the first process to open it).
    max_readers: int = 126

    # The clock every expiry of this store is judged by, in this process: a
    # callable returning wall-clock seconds since the Unix epoch, like
    # time.time (the default). For tests and simulations: pass a fake clock
    # to move time without sleeping (tests/test_ttl.py). Expiries are stored
    # as wall-clock times, so every process using the store must agree on
    # the time: another clock is only meaningful within one process. One
    # clock per store path in a process: opening a path already open here
    # with another clock is a ValueError.
    clock: Callable[[], float] = time.time

    # ---------------------------------------------------- size of the store

    # Initial size of the memory map, bytes. Grown automatically (doubling)
    # when full, so small is fine; a bigger start saves a few remaps.
    map_size: int = 64 * MiB

    # The map never grows past this, bytes. A commit that needs more fails
    # with MapFullError. Only address space: nothing is allocated up front.
    max_map_size: int = 1024 * GiB

    # ---------------------------------------------------- batching (performance)

    # Buffered writes are synced (with the log) or committed (without it) at
    # most this long after they were accepted, seconds. Longer: fewer syncs
    # or commits per write; shorter: less to lose in a power loss (without
    # the log, in any crash). Durable writes never wait for it.
    flush_interval: float = 0.1

    # A commit holds at most this many operations (a single put_many or batch
    # is never split). Measured on the bench (`python bench/run.py --only
    # batchsize`): throughput is flat from ~1,000 up; bigger only delays
    # durable writers queued behind a large buffered group.
    max_batch_ops: int = 2000

    # A commit holds at most this many bytes of encoded values (a single
    # put_many or batch is never split).
    max_batch_bytes: int = 16 * MiB

    # Writers block (and help commit) once this many buffered operations wait
    # uncommitted: bounds the memory a fast producer can pin.
    max_pending_ops: int = 20000

    # Keep zero-filled disk space ready after the last page LMDB uses (an
    # eighth of the used size, between 1 MiB and 32 MiB), filled by the
    # background writer thread. A commit that extends data.mdb makes ext4
    # commit its journal on top of the data sync: a durable put of 9 KB
    # that extends the file costs 1.3x one that reuses space. False: the
    # file grows page by page, as LMDB does alone (no slack on disk).
    preallocate: bool = True

    # ---------------------------------------------------- write-ahead log

    # Give a store a write-ahead log (kvstore/wal.py) when this process opens
    # it for writing: every acknowledged write, buffered ones too, is then in
    # the log when the call returns (survives a process crash), a durable
    # write costs one sequential sync of the log, and LMDB is the state the
    # log is applied to. The store's format becomes 3, which kvstore versions
    # without the log refuse. A store that has a log always uses it, whatever
    # this says; no log is added while another process uses the store
    # without one. False: writes are committed to LMDB in groups, buffered
    # ones within flush_interval (a process crash may lose those), and the
    # store stays readable by kvstore versions before the log.
    wal: bool = True

    # The log never grows past this, bytes: when the unapplied records fill
    # it, the next write applies them to LMDB first (and waits for that).
    # A put_many or batch larger than half of it skips the log: it is written
    # into LMDB directly, after the log, in one transaction (appender.py).
    log_size: int = 64 * MiB

    # The log's size when it is created, bytes (zero-filled, so that a sync
    # writes data and no file metadata); it doubles as needed up to log_size.
    log_initial_size: int = 1 * MiB

    # With a log: how often a writable process applies the log's records to
    # LMDB (one synced LMDB transaction for all of them), seconds. Longer:
    # fewer, larger LMDB commits; shorter: a smaller unapplied tail for
    # other processes to read. Writes never wait for it.
    apply_interval: float = 0.05

    # With a log: apply at once when this many bytes of records wait.
    apply_bytes: int = 8 * MiB

    # With a log: who applies it. "auto": this process's apply thread, until
    # its applies take a noticeable share of the process's time (a busy
    # writer); then a worker process it starts applies instead, on the other
    # core, with a GIL of its own (kvstore/applyworker.py). "always": start
    # the worker at open. "never": always the apply thread. The worker
    # exits when the store is closed or this process dies.
    apply_worker: str = "auto"

    # ---------------------------------------------------- values (performance)

    # "zstd" or "none". Compression happens in the caller's thread.
    compression: str = "zstd"

    # zstd level, 1 (fastest) .. 22 (smallest). 3 is zstd's default.
    compression_level: int = 3

    # Values whose serialized form is shorter than this many bytes are stored
    # uncompressed (zstd's frame overhead outweighs the gain on tiny values).
    compress_min_size: int = 128

    # Largest value accepted, bytes (serialized). Also the limit a stored
    # record's declared length is checked against before any allocation.
    max_value_size: int = 256 * MiB

    # ---------------------------------------------------- TTL sweep (performance)

    # Expired values are invisible at once; a background thread of each
    # writable process deletes them (kvstore/ttl.py), one pass every this many
    # seconds. A pass reads at most ttl_sweep_batch records of the namespaces
    # that hold TTL values, picking up where the last one stopped, and
    # deletes the expired ones in one buffered commit. Shorter: disk space
    # comes back sooner, for more background reads. 0 turns the sweep off:
    # expired values stay on disk (still invisible) until overwritten or
    # `kvstore compact` drops them. A namespace default TTL set by another
    # process is also picked up this often (0: when this process opens the
    # store, or calls namespace(name, ttl=...)).
    ttl_sweep_interval: float = 0.5

    # Most records one sweep pass reads (and deletes). With the interval, it
    # bounds the sweep's work: 2,000 records a second by default, about 1 ms
    # of CPU per pass; a pass never holds a read transaction longer than that.
    ttl_sweep_batch: int = 1000

    # ---------------------------------------------------- read cache (performance)

    # Most decoded values the read cache keeps (an LRU shared by every handle
    # and namespace of the store in this process). 0 turns the cache off.
    # A hit costs about a third of an uncached get; a key enters the cache on
    # its second miss, so keys read once never evict hot ones.
    cache_entries: int = 10_000

    # Most bytes the read cache accounts for, estimated from each value's
    # serialized size (decoded Python objects take ~5x it). 0 turns the cache
    # off. Entries are evicted, least recently used first, past either limit.
    cache_bytes: int = 64 * MiB

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            expected = f.type
            if expected == "bool":
                if not isinstance(value, bool):
                    raise TypeError(f"option {f.name} must be True or False, not {value!r}")
            elif expected == "int":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError(f"option {f.name} must be an int, not {value!r}")
            elif expected == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise TypeError(f"option {f.name} must be a number of seconds, not {value!r}")
        check_clock(self.clock)
        _positive = ("max_namespaces", "max_readers", "map_size", "max_map_size", "max_batch_ops",
                     "max_batch_bytes", "max_pending_ops", "max_value_size", "ttl_sweep_batch",
                     "log_size", "log_initial_size", "apply_bytes")
        for name in _positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"option {name} must be positive, not {getattr(self, name)!r}")
        if self.map_size > self.max_map_size:
            raise ValueError(f"map_size ({self.map_size}) is larger than max_map_size ({self.max_map_size})")
        if not 0 <= self.ttl_sweep_interval <= 3600:
            raise ValueError(f"ttl_sweep_interval must be in [0, 3600] seconds (0 turns the sweep off), "
                             f"not {self.ttl_sweep_interval!r}")
        if not 0 < self.flush_interval <= 3600:
            raise ValueError(f"flush_interval must be in (0, 3600] seconds, not {self.flush_interval!r}")
        if not 0 < self.apply_interval <= 3600:
            raise ValueError(f"apply_interval must be in (0, 3600] seconds, not {self.apply_interval!r}")
        if self.log_initial_size > self.log_size or self.log_size < 64 * 1024:
            raise ValueError(f"log_size ({self.log_size}) must be at least 64 KiB and at least "
                             f"log_initial_size ({self.log_initial_size})")
        if self.apply_worker not in ("auto", "always", "never"):
            raise ValueError(f"apply_worker must be 'auto', 'always' or 'never', not {self.apply_worker!r}")
        if self.compression not in ("zstd", "none"):
            raise ValueError(f"compression must be 'zstd' or 'none', not {self.compression!r}")
        if not 1 <= self.compression_level <= 22:
            raise ValueError(f"compression_level must be 1..22, not {self.compression_level!r}")
        for name in ("cache_entries", "cache_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"option {name} must be >= 0 (0 turns the read cache off), "
                                 f"not {getattr(self, name)!r}")
        if self.compress_min_size < 0:
            raise ValueError(f"compress_min_size must be >= 0, not {self.compress_min_size!r}")
        if self.max_value_size > 0xFFFFFFFF:
            raise ValueError("max_value_size cannot exceed 4 GiB - 1 (the format's length field)")
        if self.max_pending_ops < self.max_batch_ops:
            raise ValueError("max_pending_ops must be at least max_batch_ops")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Options:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"unknown option(s) {', '.join(unknown)}; known options: {', '.join(sorted(known))}"
            )
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Options:
        return dataclasses.replace(self, **changes)



class OptionsDict(TypedDict, total=False):
    """The keyword arguments of `kvstore.open()` (and `kvstore.aio.open()`),
    for type checkers: the fields of `Options`, each optional
    (tests/test_typing.py checks that the two agree)."""

    durable: bool
    readonly: bool
    max_namespaces: int
    max_readers: int
    clock: Callable[[], float]
    map_size: int
    max_map_size: int
    flush_interval: float
    max_batch_ops: int
    max_batch_bytes: int
    max_pending_ops: int
    preallocate: bool
    wal: bool
    log_size: int
    log_initial_size: int
    apply_interval: float
    apply_bytes: int
    apply_worker: Literal["auto", "always", "never"]
    compression: Literal["zstd", "none"]
    compression_level: int
    compress_min_size: int
    max_value_size: int
    ttl_sweep_interval: float
    ttl_sweep_batch: int
    cache_entries: int
    cache_bytes: int


# ---------------------------------------------------------------- internal tunables
# Not options: fixed by measurement (each comment says what it trades), changed
# by editing them here. The modules that use them import them from here.

# writer.py: group commit. A durable writer counts as active for this many
# commits after its last one; a leader waits at most MAX_GATHER seconds (and
# at most half a commit's time) for the other active durable writers to queue;
# overlay entries of a commit are dropped this many per hold of the lock, so a
# writer submitting meanwhile (an event loop) waits a slice, not a commit.
ACTIVE_WINDOW = 16
MAX_GATHER = 0.002
OVERLAY_SLICE = 256

# overlay.py: a range snapshot of a namespace with fewer pending writes
# filters them all; from this many on it keeps their keys in order.
ORDER_FROM = 128

# wal.py: the log is read back (applies, other processes' records) this many
# bytes per system call rather than two calls per record: each call is a
# point where the reading thread hands the GIL to the appenders.
READ_AHEAD = 1 * MiB

# reads.py: keys read per read transaction in a scan (so a scan never pins old
# pages for long), starting smaller: a scan stopped early (the agent's last 20
# messages) reads little.
SCAN_CHUNK = 256
SCAN_FIRST_CHUNK = 32

# environment.py: preallocation keeps an eighth of the used size as zeroed
# room past LMDB's pages, between these bounds, filled at most FILL_STEP per
# write transaction (each step holds LMDB's write lock).
PREALLOCATE_MIN = 1 * MiB
PREALLOCATE_MAX = 32 * MiB
FILL_STEP = 2 * MiB

# cache.py: what one cached entry counts besides its value's objects and its
# key (measured with tracemalloc over 20,000 fills: the entry list, the
# (namespace, key) tuple, the key and tag bytes, the LRU's dict slots and
# OrderedDict node); decoded objects per serialized byte (3.7x to 6.3x on the
# corpus); values nested deeper are not cached (copying them recurses).
ENTRY_OVERHEAD = 400
OBJECT_FACTOR = 5
MAX_DEPTH = 100

# cachestats.py: how often a process publishes its read cache's counters to
# cache.stats for `kvstore stat --watch`, seconds (a thread of its own wakes
# this often and writes only when a counter moved: a pwrite of 64 bytes).
CACHE_STATS_INTERVAL = 0.1

# aio.py: aget_many of at most this many keys runs inline (about 3.5 us a key:
# 128 keys hold the loop under half a millisecond), more in a worker thread;
# completions are settled this many per turn of the loop (100 tasks writing
# durably: loop lag p99 6-9 ms instead of 10-19 ms; 8 and 32 did no better).
INLINE_GET_MANY = 128
SETTLE_SLICE = 16

# dictionaries.py: how often a process looks for dictionaries other processes
# trained, seconds (a record naming an unknown id reloads at once anyway).
DICT_RECHECK_SECONDS = 5.0

# commands/load.py: records and bytes per write transaction of `kvstore load`.
LOAD_BATCH_RECORDS = 1000
LOAD_BATCH_BYTES = 8 << 20
