"""Model-based crash test: no acknowledged write is lost, in any sequence of
operations, crashes and reopens.

The model holds the *durable* state (what the store must hold after any
crash) and the ordered list of buffered groups not yet known committed.
Reads must always see durable + every pending group (read-your-writes). A
durable write, flush() or a clean close commits everything before it:
the pending groups fold into the durable state.

A crash is simulated in-process: the writer's queue and overlay are dropped
without committing (as SIGKILL would drop them), then the store is closed
(which then has nothing left to commit) and reopened. Two machines:

- `QuietCrashModel`: flush_interval 3600 s and batch limits far above the
  test's sizes, so nothing commits behind the test's back. After a crash
  the store holds exactly the durable state.
- `BusyCrashModel`: a flush interval of a few milliseconds and small batch
  limits, so the flusher commits concurrently. After a crash the store
  holds durable + some prefix pending[:i] of the buffered groups, where i is
  at least the number of groups seen committed (Group.done) before the
  crash, and the commits since the last sync point (commit_seq) fit in i
  groups. Checked twice: that such an i exists (the property), and that it
  is exactly the groups the crash did not drop (the in-process crash is
  exact).

In the quiet machine another process also commits writes (durably, one key
at a time) under this one's pending writes; they join the durable state.

Reads (get, get_many, scan, len, and every key through get_many after each
step) must always agree with the model, with the read cache off, on and
tiny (CACHE_VARIANTS), also after a caller mutates a value get returned and
after another process's commits.

A failing example prints the steps and a @reproduce_failure line (the
hypothesis profiles of tests/support/profiles.py set print_blob).
"""

import atexit
import os
import shutil
import tempfile

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import kvstore
from support import crash_report
from support.crash_driver import OtherWriter

NAMESPACES = ["default", "episodes", "meta"]
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=200) | st.binary(max_size=300),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=6,
)
NS = st.sampled_from(NAMESPACES)
DURABLE = st.sampled_from([False, None, False, True])  # None: the store's default (buffered)
DELETED = object()

# The read cache: every machine runs with it off, on (the defaults) and tiny
# (a few entries, so evictions happen within an example).
CACHE_VARIANTS = {"cache_off": {"cache_entries": 0}, "cache_on": {}, "cache_tiny": {"cache_entries": 3}}
ALL_KEYS = [b"a", b"ab", b"abc", b"b", "c", "c\u00e9", b"\xff", b"\x00", b"m" * 40, "z" * 127]
KEYS = st.sampled_from(ALL_KEYS)

# The stores of the machines live in memory where the machine has a tmpfs:
# their crashes are simulated in process, so fsync buys nothing here (on disk
# the six machines took 167 s with the ci profile, on /dev/shm 100 s, on this
# shared 2-core machine). The SIGKILL tests keep their stores on disk.
MODEL_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

_other_writer = None


def other_writer() -> OtherWriter:
    """One helper process for the whole run (started on first use)."""
    global _other_writer
    if _other_writer is None:
        _other_writer = OtherWriter()
        atexit.register(_other_writer.close)
    return _other_writer


def raw(key) -> bytes:
    return key.encode() if isinstance(key, str) else key


def lists(value):
    """msgpack has no tuple: sequences read back as lists."""
    if isinstance(value, dict):
        return {k: lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [lists(v) for v in value]
    return value


def check_reads(handle, vis: dict) -> None:
    """scan, len and get_many of every namespace (handle(ns)) agree with vis."""
    for ns in NAMESPACES:
        h = handle(ns)
        assert dict(h.scan()) == vis[ns], f"namespace {ns}"
        assert len(h) == len(vis[ns])
        assert h.get_many(ALL_KEYS) == [vis[ns].get(raw(k)) for k in ALL_KEYS], f"namespace {ns}"


def apply(state: dict, writes) -> dict:
    out = {ns: dict(kv) for ns, kv in state.items()}
    for ns, key, value in writes:
        if value is DELETED:
            out[ns].pop(key, None)
        else:
            out[ns][key] = lists(value)
    return out


class CrashModel(RuleBasedStateMachine):
    # LMDB commits without the write-ahead log: this model knows that
    # writer's queue and commit_seq. The log's rule is test_wal_crash_model's.
    BASE_OPTIONS: dict = {"wal": False}
    BUSY = False

    def __init__(self):
        super().__init__()
        self.db = None
        self.dir = None

    # ------------------------------------------------------------ set-up

    def _open_with(self, options):
        self.dir = tempfile.mkdtemp(prefix="kvstore-crash-", dir=MODEL_DIR)
        self.opts = options
        self.db = kvstore.open(self.dir, **self.opts)
        self.durable = {ns: {} for ns in NAMESPACES}
        self.pending = []  # [(Group, [(ns, key, value or DELETED)])], in submission order
        self.seq_floor = self.db.stats()["commit_seq"]  # commit_seq when durable was last exact
        self.last_seq = self.seq_floor
        self.crashes = 0
        self.acked_unchecked = 0  # writes acknowledged (durable, flushed, closed) since the last check
        self.acked_checked = 0

    def handle(self, ns):
        return self.db if ns == "default" else self.db.namespace(ns)

    @property
    def writer(self):
        return self.db._engine.writer

    def visible(self) -> dict:
        state = self.durable
        for _g, writes in self.pending:
            state = apply(state, writes)
        return state

    def synced(self) -> None:
        """Everything submitted so far is committed: fold pending into durable."""
        for g, _ in self.pending:
            assert g.done and g.error is None, f"group {g.seq} not committed at a sync point"
        self.acked_unchecked += sum(len(w) for _g, w in self.pending)
        self.durable = self.visible()
        self.pending = []
        self.seq_floor = self.db.stats()["commit_seq"]

    def submit(self, call, writes, durable) -> None:
        """Run a write call; record the group it submitted (if any)."""
        before = self.writer._last
        call()
        group = self.writer._last
        if not writes:
            assert group is before, "a write with nothing in it submitted a group"
            return
        assert group is not before, "the write submitted no group"
        assert len(group.ops) == len(writes)
        self.pending.append((group, writes))
        if durable:
            assert group.done and group.error is None
            self.synced()  # a durable group commits everything queued before it

    # ------------------------------------------------------------ writes

    @rule(ns=NS, key=KEYS, value=VALUES, durable=DURABLE)
    def put(self, ns, key, value, durable):
        self.submit(lambda: self.handle(ns).put(key, value, durable=durable), [(ns, raw(key), value)], durable)

    @rule(ns=NS, key=KEYS, durable=DURABLE)
    def delete(self, ns, key, durable):
        self.submit(lambda: self.handle(ns).delete(key, durable=durable), [(ns, raw(key), DELETED)], durable)

    @rule(ns=NS, items=st.lists(st.tuples(KEYS, VALUES), max_size=6), durable=DURABLE)
    def put_many(self, ns, items, durable):
        self.submit(lambda: self.handle(ns).put_many(items, durable=durable),
                    [(ns, raw(k), v) for k, v in items], durable)

    @rule(ops=st.lists(st.tuples(NS, KEYS, st.just(DELETED) | VALUES), max_size=6), durable=DURABLE,
          via=NS)
    def batch(self, ops, durable, via):
        def run():
            with self.handle(via).batch(durable=durable) as b:
                for ns, k, v in ops:
                    if v is DELETED:
                        b.delete(k, namespace=ns)
                    else:
                        b.put(k, v, namespace=ns)

        self.submit(run, [(ns, raw(k), v) for ns, k, v in ops], durable)

    @rule(ops=st.lists(st.tuples(NS, KEYS, VALUES), max_size=4), durable=DURABLE)
    def aborted_batch(self, ops, durable):
        before = self.writer._last

        class Abort(Exception):
            pass

        with pytest.raises(Abort):
            with self.db.batch(durable=durable) as b:
                for ns, k, v in ops:
                    b.put(k, v, namespace=ns)
                raise Abort()
        assert self.writer._last is before, "an aborted batch submitted a group"

    @precondition(lambda self: not self.BUSY)  # commits here and there in a known order
    @rule(ns=NS, key=KEYS, value=st.just(DELETED) | VALUES)
    def other_process_writes(self, ns, key, value):
        """Another process commits a write under this one's pending writes:
        reads see it (through the read cache, if on) where no pending write
        of this process to the key hides it; a crash keeps it."""
        seq = other_writer().write(self.dir, ns, key, None if value is DELETED else value,
                                   delete=value is DELETED)
        assert seq == self.seq_floor + 1, "the other process's commit was not the only one"
        self.durable = apply(self.durable, [(ns, raw(key), value)])
        self.seq_floor = self.last_seq = seq
        self.acked_unchecked += 1

    @rule()
    def flush(self):
        self.db.flush()
        self.synced()

    # ------------------------------------------------------------ crashes

    @precondition(lambda self: self.pending)  # a crash with nothing pending is a close
    @rule()
    def crash_and_reopen(self):
        w = self.writer
        with w._lock:
            done_before = 0  # groups seen committed before the crash
            for g, _ in self.pending:
                if not g.done:
                    break
                done_before += 1
            dropped = list(w._queue)
            w._queue.clear()
            w.overlay.clear()
            w._queued_ops = w._queued_bytes = w._queued_durable = 0
            for g in dropped:
                g.done = True  # nobody waits: the test thread is the only writer
        # close() commits nothing (the queue is empty); it waits for a commit
        # the flusher had already taken, which is what a crash after that
        # commit's fsync would leave.
        self.db.close()
        self.db = kvstore.open(self.dir, **self.opts)
        self.crashes += 1
        seq = self.db.stats()["commit_seq"]
        assert seq >= self.last_seq, f"commit_seq went back: {seq} < {self.last_seq}"
        n = len(self.pending)
        dropped_ids = {id(g) for g in dropped}
        pending_ids = [id(g) for g, _ in self.pending]
        assert dropped_ids <= set(pending_ids), "dropped a group the model did not know"
        kept = n - len(dropped)
        assert set(pending_ids[kept:]) == dropped_ids, "the crash dropped groups that are not a suffix"
        if not self.BUSY:
            assert kept == 0 and seq == self.seq_floor, "something committed without a durable write or flush"
        # The property: durable + some prefix of the pending groups, keeping
        # every group seen committed, with the commits since the last sync
        # point fitting in the groups kept.
        actual = self.read_all()
        commits = seq - self.seq_floor
        lo = max(done_before, commits)
        states, state = [], self.durable
        for i in range(n + 1):
            if i:
                state = apply(state, self.pending[i - 1][1])
            states.append(state)
        fits = [i for i in range(lo, n + 1) if states[i] == actual and (i > 0) == (commits > 0)]
        assert fits, (f"after a crash the store is not durable + a prefix of the {n} pending groups "
                      f"(>= {done_before} seen committed, {commits} commits since the last sync): "
                      f"{actual} vs durable {self.durable}")
        assert states[kept] == actual, f"expected exactly the {kept} groups the crash did not drop"
        self.checked()
        self.durable = actual
        self.pending = []
        self.seq_floor = self.last_seq = seq

    @rule()
    def close_and_reopen(self):
        self.db.close()
        self.db = kvstore.open(self.dir, **self.opts)
        # close() committed everything: the groups are done, their writes on disk
        self.synced()
        assert self.read_all() == self.durable
        self.checked()

    def checked(self) -> None:
        """The store was reopened and found to hold the durable state."""
        self.acked_checked += self.acked_unchecked
        self.acked_unchecked = 0

    # ------------------------------------------------------------ reads

    @rule(ns=NS, key=KEYS)
    def get(self, ns, key):
        want = self.visible()[ns].get(raw(key), "<missing>")
        h = self.handle(ns)
        assert h.get(key, "<missing>") == want
        assert (key in h) == (want != "<missing>")

    @rule(ns=NS, key=KEYS)
    def get_and_mutate(self, ns, key):
        """A caller may change what get returns; the store's copy must not change."""
        value = self.handle(ns).get(key)
        if isinstance(value, dict):
            value.clear()
            value["mutated"] = True
        elif isinstance(value, list):
            value.append("mutated")
            if value and isinstance(value[0], (dict, list)):
                value[0].clear()

    @rule(ns=NS, keys=st.lists(KEYS, max_size=5))
    def get_many(self, ns, keys):
        vis = self.visible()[ns]
        assert self.handle(ns).get_many(keys) == [vis.get(raw(k)) for k in keys]

    @rule(ns=NS, prefix=st.sampled_from([None, b"a", b"c", b"\xff", b"m"]),
          start=st.sampled_from([None, b"ab", b"c"]), stop=st.sampled_from([None, b"b", b"z"]),
          reverse=st.booleans(), keys_only=st.booleans())
    def scan(self, ns, prefix, start, stop, reverse, keys_only):
        got = list(self.handle(ns).scan(prefix, start=start, stop=stop, reverse=reverse, keys_only=keys_only))
        items = sorted(self.visible()[ns].items(), reverse=reverse)
        want = [(k, v) for k, v in items
                if (prefix is None or k.startswith(prefix)) and (start is None or k >= start)
                and (stop is None or k < stop)]
        assert got == ([k for k, _ in want] if keys_only else want)

    def read_all(self) -> dict:
        return {ns: dict(self.handle(ns).scan()) for ns in NAMESPACES}

    # ------------------------------------------------------------ invariants

    @precondition(lambda self: self.db is not None)
    @invariant()
    def reads_match_the_model(self):
        check_reads(self.handle, self.visible())

    @precondition(lambda self: self.db is not None)
    @invariant()
    def commits_in_submission_order(self):
        # groups commit in FIFO order: the done ones are a prefix of pending
        flags = [g.done for g, _ in self.pending]
        assert flags == sorted(flags, reverse=True), f"a later group committed before an earlier one: {flags}"
        assert all(g.error is None for g, _ in self.pending)
        seq = self.db.stats()["commit_seq"]
        assert seq >= self.last_seq
        self.last_seq = seq

    @precondition(lambda self: self.db is not None and not self.BUSY)
    @invariant()
    def nothing_commits_behind_our_back(self):
        st_ = self.db.stats()
        assert st_["pending"] == sum(len(w) for _g, w in self.pending)
        assert st_["commit_seq"] == self.seq_floor

    def teardown(self):
        crash_report.record(simulated_crashes=self.crashes, acked_writes_checked=self.acked_checked)
        if self.db is not None:
            try:
                self.db.close()
            finally:
                shutil.rmtree(self.dir, ignore_errors=True)


class QuietCrashModel(CrashModel):
    @initialize()
    def open_store(self):
        self._open_with(dict(self.BASE_OPTIONS, flush_interval=3600, max_batch_ops=100_000,
                             max_pending_ops=100_000, map_size=1 << 20))


class BusyCrashModel(CrashModel):
    BUSY = True

    @initialize(flush_interval=st.sampled_from([0.0005, 0.002, 0.01]),
                max_batch_ops=st.sampled_from([1, 2, 5, 2000]),
                max_pending_ops=st.sampled_from([5, 20000]))
    def open_store(self, flush_interval, max_batch_ops, max_pending_ops):
        self._open_with(dict(self.BASE_OPTIONS, flush_interval=flush_interval, max_batch_ops=max_batch_ops,
                             max_pending_ops=max(max_pending_ops, max_batch_ops), map_size=1 << 20))


# One test case per machine and cache variant: TestQuietCrashModel_cache_off, ...
# Runtime with the "ci" profile (100 examples of up to 50 steps) on this shared
# 2-core machine: 12 to 23 s each, 100 s for the six.
for _variant, _extra in CACHE_VARIANTS.items():
    for _base in (QuietCrashModel, BusyCrashModel):
        _cls = type(f"{_base.__name__}_{_variant}", (_base,), {"BASE_OPTIONS": dict(_extra, wal=False)})
        _case = _cls.TestCase
        _name = f"Test{_base.__name__}_{_variant}"
        _case.__name__ = _case.__qualname__ = _name
        globals()[_name] = _case
del _variant, _extra, _base, _cls, _case, _name
