"""Model-based crash test of the write-ahead log: what each write survives.

The rule (README, "What each write mode survives"): with the log, every
write whose call returned survives a process crash; a durable one (and
everything before a flush) survives a power loss too, and a power loss
keeps a prefix of the writes in call order, never a write without the ones
before it.

The model is the list of acknowledged groups, in call order, with the
index of the last one known on disk (a durable write, a flush, a clean
close). Two kinds of crash, simulated in process:

- process crash: the engine is dropped without its close (no sync, no
  apply, the writer's thread stopped), as SIGKILL would leave it, and the
  store reopened: it must hold every acknowledged group (and those not
  synced yet stay exposed to a power loss).
- power loss: the same, then the log is cut back to its last sync (garbage
  after it, or zeros) and the index made to look like it is from another
  boot: the store must hold a prefix of the groups that reaches at least
  the last one known on disk.

Reads (get, get_many, scan, len) agree with the model after every step,
with the read cache off, on and tiny. A failing example prints its steps
and a @reproduce_failure line.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import tempfile

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import kvstore
from kvstore import engine as _engine
from kvstore import wal
from support import crash_report
from test_crash_model import (CACHE_VARIANTS, DELETED, KEYS, MODEL_DIR, NAMESPACES, NS, VALUES, apply,
                              check_reads, lists, raw)

DURABLE = st.sampled_from([False, False, True])


def drop_engine(db) -> None:
    """What a SIGKILL leaves of this process's use of the store: nothing
    synced or applied on the way out, the log and LMDB as they are."""
    eng = _engine.of(db)
    if eng.sweeper is not None:
        eng.sweeper.stop()
    w = eng.writer
    with w._lock:
        w._closing = True  # the flusher stops without its close work
        w._wake.notify()
    w._apply_thread.stop()  # and the apply thread after the apply it is in, if any
    w._thread.join()
    _engine.release(eng)
    eng.close()
    db._closed = True


def lose_power(path: str, rng: random.Random) -> None:
    """The log past its last sync replaced (garbage, zeros or a torn
    record), and an index from before the reboot."""
    index = os.path.join(path, wal.INDEX_FILE)
    with open(index, "rb") as f:
        raw_index = f.read(4096)
    gen, _z, end, _s, synced, _a, _as = struct.unpack_from("<IIQQQQQ", raw_index, 40)
    log = os.path.join(path, wal.LOG_FILE)
    with open(log, "r+b") as f:
        f.seek(synced)
        kind = rng.randrange(3)
        if kind == 0:
            f.write(bytes(rng.randrange(256) for _ in range(max(end - synced, 64))))
        elif kind == 1:
            f.write(bytes(max(end - synced, 0)))
        else:
            f.write(struct.pack("<IIQ", 300, gen, rng.getrandbits(64)) + b"\x07" * 40)
    with open(index, "r+b") as f:
        f.seek(16)
        f.write(bytes(rng.randrange(256) for _ in range(16)))


def _index_fields(path: str) -> dict:
    with open(os.path.join(path, wal.INDEX_FILE), "rb") as f:
        raw_index = f.read(96)
    names = ("gen", "zero", "end", "end_sum", "synced", "applied", "applied_sum")
    return dict(zip(names, struct.unpack_from("<IIQQQQQ", raw_index, 40)))


def _diff(actual: dict, want: dict) -> dict:
    """{namespace: {key: (in the store, in the model)}} where they differ."""
    out = {}
    for ns in set(actual) | set(want):
        a, w = actual.get(ns, {}), want.get(ns, {})
        keys = {k for k in set(a) | set(w) if a.get(k, "<absent>") != w.get(k, "<absent>")}
        if keys:
            out[ns] = {k: (a.get(k, "<absent>"), w.get(k, "<absent>")) for k in sorted(keys)}
    return out


class WalCrashModel(RuleBasedStateMachine):
    BASE_OPTIONS: dict = {}

    def __init__(self):
        super().__init__()
        self.db = None
        self.dir = None

    @initialize(apply_interval=st.sampled_from([0.001, 0.01, 3600]))
    def open_store(self, apply_interval):
        self.dir = tempfile.mkdtemp(prefix="kvstore-walcrash-", dir=MODEL_DIR)
        self.opts = dict(self.BASE_OPTIONS, wal=True, apply_interval=apply_interval,
                         flush_interval=3600, map_size=1 << 20, log_initial_size=64 * 1024)
        self.db = kvstore.open(self.dir, **self.opts)
        self.base = {ns: {} for ns in NAMESPACES}  # what the store held at the last reopen
        self.groups = []  # acknowledged since: [writes]
        self.on_disk = 0  # groups[:on_disk] survive a power loss
        self.rng = random.Random(0)
        self.crashes = 0
        self.acked = 0

    def handle(self, ns):
        return self.db if ns == "default" else self.db.namespace(ns)

    def visible(self, upto=None) -> dict:
        state = self.base
        for writes in self.groups[:upto]:
            state = apply(state, writes)
        return state

    def acknowledged(self, writes, durable) -> None:
        self.groups.append(writes)
        self.acked += len(writes)
        if durable:
            self.on_disk = len(self.groups)

    # ------------------------------------------------------------ writes

    @rule(ns=NS, key=KEYS, value=VALUES, durable=DURABLE)
    def put(self, ns, key, value, durable):
        self.handle(ns).put(key, value, durable=durable)
        self.acknowledged([(ns, raw(key), lists(value))], durable)

    @rule(ns=NS, key=KEYS, durable=DURABLE)
    def delete(self, ns, key, durable):
        self.handle(ns).delete(key, durable=durable)
        self.acknowledged([(ns, raw(key), DELETED)], durable)

    @rule(ns=NS, items=st.dictionaries(KEYS, VALUES, min_size=1, max_size=5), durable=DURABLE)
    def put_many(self, ns, items, durable):
        self.handle(ns).put_many(items, durable=durable)
        self.acknowledged([(ns, raw(k), lists(v)) for k, v in items.items()], durable)

    @rule(ops=st.lists(st.tuples(NS, KEYS, st.none() | VALUES), min_size=1, max_size=5),
          durable=DURABLE)
    def batch(self, ops, durable):
        with self.db.batch(durable=durable) as b:
            for ns, key, value in ops:
                if value is None:
                    b.delete(key, namespace=ns)
                else:
                    b.put(key, value, namespace=ns)
        self.acknowledged([(ns, raw(k), DELETED if v is None else lists(v)) for ns, k, v in ops],
                          durable)

    # read-modify-write: incr and compare_and_set are computed under the
    # log's append lock (rmw.py), a transaction is validated there (txn.py)

    @rule(ns=NS, key=KEYS, delta=st.integers(-3, 3), durable=DURABLE)
    def incr(self, ns, key, delta, durable):
        current = self.visible()[ns].get(raw(key), 0)
        if isinstance(current, bool) or not isinstance(current, int) \
                or not -(2**63) <= current + delta <= 2**64 - 1:
            with pytest.raises(kvstore.KVStoreError):  # not an int, or msgpack cannot carry the sum
                self.handle(ns).incr(key, delta, durable=durable)
            return
        assert self.handle(ns).incr(key, delta, durable=durable) == current + delta
        self.acknowledged([(ns, raw(key), current + delta)], durable)

    @rule(ns=NS, key=KEYS, new=VALUES, matches=st.booleans(), durable=DURABLE)
    def compare_and_set(self, ns, key, new, matches, durable):
        current = self.visible()[ns].get(raw(key), kvstore.MISSING)
        expected = current if matches else ["no value of the model is this", 7]
        done = self.handle(ns).compare_and_set(key, expected, new, durable=durable)
        assert done == matches
        if done:
            self.acknowledged([(ns, raw(key), lists(new))], durable)

    @rule(ns=NS, key=KEYS, other=KEYS, durable=DURABLE)
    def transaction(self, ns, key, other, durable):
        current = self.visible()[ns].get(raw(key))
        with self.db.transaction(durable=durable) as tx:
            seen = tx.get(key, namespace=ns)
            tx.put(other, [seen, "after"], namespace=ns)
        assert seen == current
        self.acknowledged([(ns, raw(other), [current, "after"])], durable)

    @rule()
    def flush(self):
        self.db.flush()
        self.on_disk = len(self.groups)

    # ------------------------------------------------------------ crashes

    def _reopened(self) -> dict:
        self.db = kvstore.open(self.dir, **self.opts)
        self.crashes += 1
        return {ns: dict(self.handle(ns).scan()) for ns in NAMESPACES}

    @rule()
    def process_crash(self):
        drop_engine(self.db)
        actual = self._reopened()
        assert actual == self.visible(), "a process crash lost an acknowledged write"
        # nothing became more durable: the dead process's buffered writes
        # are still only in the kernel (a power loss may take them)

    @rule()
    def power_loss(self):
        drop_engine(self.db)
        before = _index_fields(self.dir)
        lose_power(self.dir, self.rng)
        actual = self._reopened()
        fits = [i for i in range(self.on_disk, len(self.groups) + 1) if self.visible(i) == actual]
        assert fits, (f"after a power loss the store is not a prefix of the {len(self.groups)} "
                      f"acknowledged groups reaching the {self.on_disk} known on disk; index before the "
                      f"loss {before}; groups {self.groups!r}; store minus the model at {self.on_disk}: "
                      f"{_diff(actual, self.visible(self.on_disk))}")
        self.base, self.groups, self.on_disk = actual, [], 0

    @rule()
    def close_and_reopen(self):
        self.db.close()
        self.db = kvstore.open(self.dir, **self.opts)
        assert {ns: dict(self.handle(ns).scan()) for ns in NAMESPACES} == self.visible()
        self.base, self.groups, self.on_disk = self.visible(), [], 0

    # ------------------------------------------------------------ reads

    @rule(ns=NS, key=KEYS)
    def get(self, ns, key):
        want = self.visible()[ns].get(raw(key), "<missing>")
        assert self.handle(ns).get(key, "<missing>") == want

    @precondition(lambda self: self.db is not None)
    @invariant()
    def reads_match_the_model(self):
        check_reads(self.handle, self.visible())

    def teardown(self):
        crash_report.record(simulated_crashes=self.crashes, acked_writes_checked=self.acked)
        if self.db is not None:
            try:
                self.db.close()
            finally:
                shutil.rmtree(self.dir, ignore_errors=True)


for _variant, _extra in CACHE_VARIANTS.items():
    _cls = type(f"WalCrashModel_{_variant}", (WalCrashModel,), {"BASE_OPTIONS": _extra})
    _case = _cls.TestCase
    _name = f"TestWalCrashModel_{_variant}"
    _case.__name__ = _case.__qualname__ = _name
    globals()[_name] = _case
del _variant, _extra, _cls, _case, _name
