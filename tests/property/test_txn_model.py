"""Model-based test of transactions against a serial model.

Each step runs a round of 2 to 4 concurrent transactions from threads, and
maybe a plain writer, on a few keys. Every transaction reads first (keys,
or the whole range by a scan), then all wait at a barrier, so they overlap
for certain and conflicts are forced; then each writes values computed
from what it read and commits. Maybe another process (`OtherProcess`) runs
a whole transaction while they wait at the barrier: after their reads,
before their commits. After the round:

- every transaction either committed or raised ConflictError naming keys
  it read;
- there is a serial order of the committed ones (and the plain writes) in
  which each transaction reads exactly what it read, and whose final state
  is the store's: so every committed transaction's effects are present,
  every failed one's absent, and the history is serializable;
- the model (a dict) becomes that state, and the store must match it key by
  key and by scan.

Runs without and with the write-ahead log, on the hypothesis profile's
examples and steps (tests/support/profiles.py). A failing example prints its
steps and the @reproduce_failure line to paste above the test.
"""

import itertools
import json
import os
import subprocess
import sys
import threading

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

import kvstore

KEYS = ["k:a", "k:b", "k:c", "k:d"]

# A transaction: what it reads (keys, or the whole k: range by a scan), what
# it writes (key -> None for a delete, else a constant added to the sum of
# what it read).
TXS = st.fixed_dictionaries({
    "reads": st.lists(st.sampled_from(KEYS), min_size=0, max_size=3, unique=True),
    "scan": st.booleans(),
    "writes": st.dictionaries(st.sampled_from(KEYS), st.none() | st.integers(1, 50), min_size=1, max_size=2),
})
PLAIN = st.none() | st.tuples(st.sampled_from(KEYS), st.none() | st.integers(100, 200), st.booleans())


class Round:
    """One transaction of a round: what it saw and how it ended."""

    def __init__(self, spec):
        self.spec = spec
        self.seen: dict = {}  # key -> value read (None: absent)
        self.scanned = None  # [(key, value)] of the k: range
        self.outcome = None  # "committed", or the ConflictError

    def values(self, seen):
        total = sum(v for v in seen.values() if v is not None)
        if self.scanned is not None:
            total += sum(v for _k, v in self.scanned)
        return {k: (None if c is None else total + c) for k, c in self.spec["writes"].items()}

    def run(self, db, barrier):
        try:
            with db.transaction() as tx:
                try:
                    for key in self.spec["reads"]:
                        self.seen[key] = tx.get(key)
                    if self.spec["scan"]:
                        self.scanned = [(k.decode(), v) for k, v in tx.scan(prefix="k:")]
                finally:
                    barrier.wait()  # also after a read that conflicted: the others wait here
                for key, value in self.values(self.seen).items():
                    if value is None:
                        tx.delete(key)
                    else:
                        tx.put(key, value)
            self.outcome = "committed"
        except kvstore.ConflictError as exc:
            self.outcome = exc

    def matches(self, state: dict) -> bool:
        """Whether, run on state, it reads what it read."""
        if any(state.get(k) != v for k, v in self.seen.items()):
            return False
        return self.scanned is None or self.scanned == sorted(state.items())

    def apply(self, state: dict) -> None:
        for key, value in self.values(self.seen).items():
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value


class PlainWrite:
    def __init__(self, key, value, durable):
        self.key, self.value, self.durable = key, value, durable

    def run(self, db, barrier):
        barrier.wait()
        if self.value is None:
            db.delete(self.key, durable=self.durable)
        else:
            db.put(self.key, self.value, durable=self.durable)

    def matches(self, state) -> bool:
        return True

    def apply(self, state) -> None:
        if self.value is None:
            state.pop(self.key, None)
        else:
            state[self.key] = self.value


class OtherProcess:
    """A second process that runs one Round at a time on request (JSON lines:
    path, wal, spec in; seen, scanned, conflict keys out)."""

    CODE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import kvstore
from test_txn_model import Round

class NoBarrier:
    def wait(self):
        pass

stores = {}
for line in sys.stdin:
    req = json.loads(line)
    if "close" in req:
        db = stores.pop(req["close"], None)
        if db is not None:
            db.close()
        out = {}
    else:
        db = stores.get(req["path"]) or stores.setdefault(req["path"], kvstore.open(req["path"], wal=req["wal"]))
        r = Round(req["spec"])
        r.run(db, NoBarrier())
        db.flush()  # a transaction that read nothing is a buffered batch: committed by now
        out = {"seen": r.seen, "scanned": r.scanned,
               "conflict": None if r.outcome == "committed" else [[ns, k.decode()] for ns, k in r.outcome.keys]}
    print(json.dumps(out), flush=True)
"""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE, os.path.dirname(os.path.abspath(__file__))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the other process died (exit {self.proc.wait()})")
        return json.loads(line)

    def run(self, path: str, wal: bool, spec: dict) -> Round:
        reply = self.ask({"path": path, "wal": wal, "spec": spec})
        r = Round(spec)
        r.seen = reply["seen"]
        r.scanned = None if reply["scanned"] is None else [tuple(p) for p in reply["scanned"]]
        r.outcome = "committed" if reply["conflict"] is None else kvstore.ConflictError(
            "in the other process", [(ns, k.encode()) for ns, k in reply["conflict"]])
        return r

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


OTHER: OtherProcess | None = None  # set by the test functions while a machine runs


class TransactionsAreSerializable(RuleBasedStateMachine):
    WAL = False

    def __init__(self):
        super().__init__()
        import tempfile

        self.dir = tempfile.TemporaryDirectory()
        self.db = None
        self.model: dict = {}

    @initialize()
    def open_store(self):
        self.db = kvstore.open(self.dir.name, wal=self.WAL, flush_interval=0.002)

    @rule(specs=st.lists(TXS, min_size=2, max_size=4), plain=PLAIN, other=st.none() | TXS)
    def concurrent_round(self, specs, plain, other):
        self.db.flush()  # the round starts from a committed state (the model's)
        txs = [Round(spec) for spec in specs]
        actors = list(txs) + ([PlainWrite(*plain)] if plain is not None else [])
        remote = []

        def other_process_runs():  # when every thread has read, before any commits
            if other is not None:
                remote.append(OTHER.run(self.dir.name, self.WAL, other))

        barrier = threading.Barrier(len(actors), action=other_process_runs)
        threads = [threading.Thread(target=a.run, args=(self.db, barrier)) for a in actors]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        txs += remote
        actors += remote
        self.db.flush()
        actual = {k.decode(): v for k, v in self.db.scan(prefix="k:")}
        for tx in txs:
            assert tx.outcome is not None, "a transaction neither committed nor conflicted"
            if tx.outcome != "committed":
                read = set(tx.seen) | (set(KEYS) if tx.scanned is not None else set())
                assert tx.outcome.keys and {k.decode() for _ns, k in tx.outcome.keys} <= read
        done = [a for a in actors if not isinstance(a, Round) or a.outcome == "committed"]
        for order in itertools.permutations(done):
            state = dict(self.model)
            for actor in order:
                if not actor.matches(state):
                    break
                actor.apply(state)
            else:
                if state == actual:
                    break
        else:
            pytest.fail(f"no serial order of the committed transactions {[a.__dict__ for a in done]} "
                        f"from {self.model} reads what they read and ends at {actual}")
        self.model = actual

    @rule(key=st.sampled_from(KEYS), value=st.integers(0, 9))
    def plain_put(self, key, value):
        self.db.put(key, value)
        self.model[key] = value

    @invariant()
    def store_matches_model(self):
        if self.db is None:
            return
        assert {k.decode(): v for k, v in self.db.scan(prefix="k:")} == self.model
        assert self.db.get_many(KEYS) == [self.model.get(k) for k in KEYS]

    def teardown(self):
        if self.db is not None:
            self.db.close()
            if OTHER is not None:
                OTHER.ask({"close": self.dir.name})
        self.dir.cleanup()


class TransactionsAreSerializableWithTheLog(TransactionsAreSerializable):
    WAL = True


def _run(machine):
    global OTHER
    OTHER = OtherProcess()  # started here: it inherits the backend's KVSTORE_CODEC
    try:
        run_state_machine_as_test(machine)
    finally:
        OTHER.close()
        OTHER = None


def test_transactions_from_threads_and_a_process_are_serializable(codec_backend):
    _run(TransactionsAreSerializable)


def test_transactions_from_threads_and_a_process_are_serializable_with_the_log(codec_backend):
    _run(TransactionsAreSerializableWithTheLog)
