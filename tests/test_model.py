"""Model-based test: any sequence of operations gives the same reads as a dict.

A failing example prints the steps and a @reproduce_failure line (see the
hypothesis profiles in conftest.py).
"""

import shutil
import tempfile

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

KEYS = st.sampled_from([b"a", b"ab", b"abc", b"b", b"ba", "c", "cé", b"\xff", b"\x00", b"m" * 40])
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=300) | st.binary(max_size=300),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
NAMESPACES = st.sampled_from(["default", "episodes", "meta"])


def raw(key) -> bytes:
    return key.encode() if isinstance(key, str) else key


class StoreMatchesDict(RuleBasedStateMachine):
    @initialize(flush_interval=st.sampled_from([0.001, 0.05, 3600]), max_batch_ops=st.sampled_from([1, 3, 2000]))
    def open_store(self, flush_interval, max_batch_ops):
        self.dir = tempfile.mkdtemp(prefix="kvstore-model-")
        self.opts = dict(flush_interval=flush_interval, max_batch_ops=max_batch_ops,
                         max_pending_ops=max(max_batch_ops, 50), map_size=1 << 20)
        self.db = kvstore.open(self.dir, **self.opts)
        self.model = {"default": {}, "episodes": {}, "meta": {}}

    def ns(self, name):
        return self.db if name == "default" else self.db.namespace(name)

    @rule(ns=NAMESPACES, key=KEYS, value=VALUES, durable=st.booleans())
    def put(self, ns, key, value, durable):
        self.ns(ns).put(key, value, durable=durable)
        self.model[ns][raw(key)] = value

    @rule(ns=NAMESPACES, key=KEYS, durable=st.booleans())
    def delete(self, ns, key, durable):
        self.ns(ns).delete(key, durable=durable)
        self.model[ns].pop(raw(key), None)

    @rule(ns=NAMESPACES, items=st.lists(st.tuples(KEYS, VALUES), max_size=6), durable=st.booleans())
    def put_many(self, ns, items, durable):
        self.ns(ns).put_many(items, durable=durable)
        for k, v in items:
            self.model[ns][raw(k)] = v

    @rule(ops=st.lists(st.tuples(NAMESPACES, KEYS, st.none() | VALUES), max_size=6),
          abort=st.booleans(), durable=st.booleans())
    def batch(self, ops, abort, durable):
        class Abort(Exception):
            pass

        try:
            with self.db.batch(durable=durable) as b:
                for ns, k, v in ops:
                    if v is None:
                        b.delete(k, namespace=ns)
                    else:
                        b.put(k, v, namespace=ns)
                if abort:
                    raise Abort()
        except Abort:
            return
        for ns, k, v in ops:
            if v is None:
                self.model[ns].pop(raw(k), None)
            else:
                self.model[ns][raw(k)] = v

    @rule()
    def flush(self):
        self.db.flush()
        assert self.db.stats()["pending"] == 0

    @rule()
    def reopen(self):
        self.db.close()
        self.db = kvstore.open(self.dir, **self.opts)

    @rule(ns=NAMESPACES, key=KEYS)
    def get(self, ns, key):
        expected = self.model[ns].get(raw(key), "missing")
        assert self.ns(ns).get(key, "missing") == _lists(expected)
        assert (key in self.ns(ns)) == (raw(key) in self.model[ns])

    @rule(ns=NAMESPACES, keys=st.lists(KEYS, max_size=5))
    def get_many(self, ns, keys):
        assert self.ns(ns).get_many(keys) == [_lists(self.model[ns].get(raw(k))) for k in keys]

    @rule(ns=NAMESPACES, prefix=st.sampled_from([None, b"a", b"b", b"c", b"\xff"]), reverse=st.booleans())
    def scan(self, ns, prefix, reverse):
        got = list(self.ns(ns).scan(prefix, reverse=reverse))
        want = sorted(((k, _lists(v)) for k, v in self.model[ns].items()
                       if prefix is None or k.startswith(prefix)), reverse=reverse, key=lambda kv: kv[0])
        assert got == want

    @precondition(lambda self: hasattr(self, "db"))
    @invariant()
    def lengths_agree(self):
        for ns, data in self.model.items():
            assert len(self.ns(ns)) == len(data)

    def teardown(self):
        if hasattr(self, "db"):
            self.db.close()
            shutil.rmtree(self.dir, ignore_errors=True)


def _lists(value):
    # msgpack has no tuple: sequences come back as lists
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def test_store_matches_dict(codec_backend):
    run_state_machine_as_test(StoreMatchesDict)
