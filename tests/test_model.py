"""Model-based test: any sequence of operations gives the same reads as a dict.

Every operation goes to two stores, one with the read cache on (large, or
so small that it evicts all the time) and one with it off, and to a dict;
every read of either store must agree with the dict. Another process (a
real one, `OtherProcess`) also writes to both stores now and then, so the
cache must notice commits it did not make.

Values may have a TTL: the dict keeps each value's expiry, a fake clock
(the machine's, passed to kvstore.open(..., clock=)) moves only when the
`advance_clock` rule says, and a read must not see a value whose expiry
has passed, pending, committed or cached; `refresh` and `sweep` rules exercise get(refresh_ttl=True) and the
sweep. The other process writes values without TTL, with its sweep off
(its clock is the real one).

A failing example prints the steps and a @reproduce_failure line (see the
hypothesis profiles in conftest.py).
"""

import math
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import kvstore
import kvstore.ttl
from kvstore.clock import now_ms

KEYS = st.sampled_from([b"a", b"ab", b"abc", b"b", b"ba", "c", "cé", b"\xff", b"\x00", b"m" * 40])
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=300) | st.binary(max_size=300),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
NAMESPACES = st.sampled_from(["default", "episodes", "meta"])
# None: no TTL (the namespace's default, and none has one); seconds otherwise
TTLS = st.none() | st.sampled_from([0.001, 0.5, 1, 2.5, 30, math.inf])


def raw(key) -> bytes:
    return key.encode() if isinstance(key, str) else key


class OtherProcess:
    """A second writer process: applies (op, path, namespace, args) with durable=True."""

    CODE = textwrap.dedent("""
        import pickle, struct, sys
        import kvstore
        stores = {}
        inp, out = sys.stdin.buffer, sys.stdout.buffer
        while True:
            head = inp.read(4)
            if len(head) < 4:
                break
            op, path, ns, args = pickle.loads(inp.read(struct.unpack("<I", head)[0]))
            if op == "close":
                stores.pop(path).close()
            else:
                db = stores.get(path) or stores.setdefault(path, kvstore.open(path, ttl_sweep_interval=0))
                target = db if ns == "default" else db.namespace(ns)
                getattr(target, op)(*args, durable=True)
            out.write(b"k")
            out.flush()
    """)

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        self.opened = set()

    def do(self, op, path, ns="default", *args):
        data = pickle.dumps((op, path, ns, args))
        self.proc.stdin.write(struct.pack("<I", len(data)) + data)
        self.proc.stdin.flush()
        if self.proc.stdout.read(1) != b"k":
            raise AssertionError(f"the other writer process died doing {op} (exit {self.proc.wait()})")
        if op == "close":
            self.opened.discard(path)
        else:
            self.opened.add(path)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


OTHER: OtherProcess | None = None  # set by the test function while the machine runs


class FakeClock:
    """The clock of a machine's stores (Options.clock): moved by advance_clock only."""

    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


class StoreMatchesDict(RuleBasedStateMachine):
    @initialize(flush_interval=st.sampled_from([0.001, 0.05, 3600]), max_batch_ops=st.sampled_from([1, 3, 2000]),
                cache_entries=st.sampled_from([2, 10_000]))
    def open_store(self, flush_interval, max_batch_ops, cache_entries):
        self.dirs = [tempfile.mkdtemp(prefix="kvstore-model-cached-"),
                     tempfile.mkdtemp(prefix="kvstore-model-uncached-")]
        self.clock = FakeClock()
        common = dict(clock=self.clock, flush_interval=flush_interval, max_batch_ops=max_batch_ops,
                      max_pending_ops=max(max_batch_ops, 50), map_size=1 << 20, ttl_sweep_interval=0)
        self.opts = [dict(common, cache_entries=cache_entries), dict(common, cache_entries=0)]
        self.dbs = [kvstore.open(d, **o) for d, o in zip(self.dirs, self.opts)]
        # namespace -> key -> (value, expires ms or None, ttl ms)
        self.model = {"default": {}, "episodes": {}, "meta": {}}

    def each(self, name):
        return [db if name == "default" else db.namespace(name) for db in self.dbs]

    def record(self, ns, key, value, ttl):
        ms = kvstore.ttl.to_ms(ttl) if ttl is not None else 0
        self.model[ns][raw(key)] = (value, now_ms(self.clock) + ms if ms else None, ms)

    def live(self, ns) -> dict:
        """What reads of namespace ns must see: key -> value."""
        now = now_ms(self.clock)
        return {k: v for k, (v, expires, _) in self.model[ns].items() if expires is None or expires > now}

    @rule(ns=NAMESPACES, key=KEYS, value=VALUES, durable=st.booleans(), ttl=TTLS)
    def put(self, ns, key, value, durable, ttl):
        for target in self.each(ns):
            target.put(key, value, durable=durable, ttl=ttl)
        self.record(ns, key, value, ttl)

    @rule(ns=NAMESPACES, key=KEYS, durable=st.booleans())
    def delete(self, ns, key, durable):
        for target in self.each(ns):
            target.delete(key, durable=durable)
        self.model[ns].pop(raw(key), None)

    @rule(ns=NAMESPACES, items=st.lists(st.tuples(KEYS, VALUES), max_size=6), durable=st.booleans(),
          ttl=TTLS)
    def put_many(self, ns, items, durable, ttl):
        for target in self.each(ns):
            target.put_many(items, durable=durable, ttl=ttl)
        for k, v in items:
            self.record(ns, k, v, ttl)

    @rule(ops=st.lists(st.tuples(NAMESPACES, KEYS, st.none() | VALUES, TTLS), max_size=6),
          abort=st.booleans(), durable=st.booleans())
    def batch(self, ops, abort, durable):
        class Abort(Exception):
            pass

        for db in self.dbs:
            try:
                with db.batch(durable=durable) as b:
                    for ns, k, v, ttl in ops:
                        if v is None:
                            b.delete(k, namespace=ns)
                        else:
                            b.put(k, v, namespace=ns, ttl=ttl)
                    if abort:
                        raise Abort()
            except Abort:
                pass
        if abort:
            return
        for ns, k, v, ttl in ops:
            if v is None:
                self.model[ns].pop(raw(k), None)
            else:
                self.record(ns, k, v, ttl)

    @rule(seconds=st.sampled_from([0.001, 0.3, 0.5, 1, 2.5, 40]))
    def advance_clock(self, seconds):
        self.clock.now += seconds

    @rule(ns=NAMESPACES, key=KEYS)
    def refresh(self, ns, key):
        expected = _lists(self.live(ns).get(raw(key), "missing"))
        for target in self.each(ns):
            assert target.get(key, "missing", refresh_ttl=True) == expected
        entry = self.model[ns].get(raw(key))
        if expected != "missing" and entry[1] is not None:
            now = now_ms(self.clock)
            value, expires, ms = entry
            if now + ms - expires >= max(1, ms // 100):  # Store.get's rule
                self.model[ns][raw(key)] = (value, now + ms, ms)

    @rule()
    def sweep(self):
        for db in self.dbs:
            for _ in range(len(self.model)):  # one pass per TTL namespace at most
                db._engine.sweeper.sweep_once()
                db.flush()

    @rule(ns=NAMESPACES, items=st.lists(st.tuples(KEYS, st.none() | VALUES), min_size=1, max_size=4))
    def other_process_writes(self, ns, items):
        # This process's pending writes first: their commit order against the
        # other process's would otherwise be up to the flush timer.
        self.flush()
        for path in self.dirs:
            if len(items) == 1:
                k, v = items[0]
                if v is None:
                    OTHER.do("delete", path, ns, k)
                else:
                    OTHER.do("put", path, ns, k, v)
            else:
                OTHER.do("put_many", path, ns, [(k, v) for k, v in items])
        for k, v in items:
            if len(items) == 1 and v is None:
                self.model[ns].pop(raw(k), None)
            else:
                self.record(ns, k, v, None)

    @rule(ns=NAMESPACES, key=KEYS, value=st.none() | VALUES)
    def cached_then_changed_by_other_process(self, ns, key, value):
        self.get(ns, key, 2)  # now cached by the store with the cache on
        self.other_process_writes(ns, [(key, value)])
        self.get(ns, key, 1)

    @rule()
    def flush(self):
        for db in self.dbs:
            db.flush()
            assert db.stats()["pending"] == 0

    @rule()
    def reopen(self):
        for i, db in enumerate(self.dbs):
            db.close()
            self.dbs[i] = kvstore.open(self.dirs[i], **self.opts[i])

    @rule(ns=NAMESPACES, key=KEYS, times=st.integers(1, 3))
    def get(self, ns, key, times):
        live = self.live(ns)
        expected = _lists(live.get(raw(key), "missing"))
        for target in self.each(ns):
            for _ in range(times):  # a second read fills the cache, a third hits
                got = target.get(key, "missing")
                assert got == expected
                if isinstance(got, (dict, list)):
                    got.clear()  # mutating what a read returned changes nothing
            assert (key in target) == (raw(key) in live)

    @rule(ns=NAMESPACES, keys=st.lists(KEYS, max_size=5))
    def get_many(self, ns, keys):
        live = self.live(ns)
        for target in self.each(ns):
            assert target.get_many(keys) == [_lists(live.get(raw(k))) for k in keys]

    @rule(ns=NAMESPACES, prefix=st.sampled_from([None, b"a", b"b", b"c", b"\xff"]), reverse=st.booleans())
    def scan(self, ns, prefix, reverse):
        want = sorted(((k, _lists(v)) for k, v in self.live(ns).items()
                       if prefix is None or k.startswith(prefix)), reverse=reverse, key=lambda kv: kv[0])
        for target in self.each(ns):
            assert list(target.scan(prefix, reverse=reverse)) == want

    @precondition(lambda self: hasattr(self, "dbs"))
    @invariant()
    def lengths_agree(self):
        for ns in self.model:
            live = self.live(ns)
            for target in self.each(ns):
                assert len(target) == len(live)

    def teardown(self):
        if hasattr(self, "dbs"):
            for db, path in zip(self.dbs, self.dirs):
                db.close()
                if path in OTHER.opened:
                    OTHER.do("close", path)
                shutil.rmtree(path, ignore_errors=True)


def _lists(value):
    # msgpack has no tuple: sequences come back as lists
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def test_store_matches_dict(codec_backend):
    global OTHER
    OTHER = OtherProcess()  # started here: it inherits the backend's KVSTORE_CODEC
    try:
        run_state_machine_as_test(StoreMatchesDict)
    finally:
        OTHER.close()
        OTHER = None
