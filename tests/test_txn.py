"""Transactions (kvstore/txn.py): read-modify-write that never loses an
update, on real stores, without and with the write-ahead log."""

import math
import subprocess
import sys
import threading

import pytest

import kvstore
from kvstore.errors import InvalidArgumentTypeError
from kvstore import (MISSING, ConflictError, KVStoreError,
                     NestedTransactionError, ReadOnlyError, TransactionClosedError)

THREADS = 4
PER_THREAD = 300  # the 30,000 take minutes on a shared 2-core machine: every incr of a hot key is a commit
PROCESSES = 4
PER_PROCESS = 100


@pytest.fixture(params=[False, True], ids=["lmdb", "wal"])
def wal(request):
    return request.param


@pytest.fixture
def db(store_path, wal):
    store = kvstore.open(store_path, wal=wal)
    yield store
    store.close()


def _in_threads(n, work):
    errors = []

    def run(i):
        try:
            work(i)
        except BaseException as exc:  # reported by the test, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# ---------------------------------------------------------------- lost updates


def test_increments_from_four_threads_end_exactly_at_their_sum(db):
    _in_threads(THREADS, lambda i: [db.incr("counter") for _ in range(PER_THREAD)])
    assert db.get("counter") == THREADS * PER_THREAD


def test_update_and_transact_mixed_with_plain_puts_lose_no_increment(db):
    def work(i):
        for n in range(PER_THREAD // 2):
            if n % 3 == 0:
                db.update("counter", lambda v: v + 1, 0)
            elif n % 3 == 1:
                db.transact(lambda tx: tx.put("counter", tx.get("counter", 0) + 1))
            else:
                db.incr("counter")
            db.put(f"other:{i}:{n}", n)

    _in_threads(THREADS, work)
    assert db.get("counter") == THREADS * (PER_THREAD // 2)
    assert len(list(db.scan(prefix="other:"))) == THREADS * (PER_THREAD // 2)


# Every conflict of a run is another writer's increment, so a transact with
# as many retries as there are increments in all can never give up.
CHILD = r"""
import sys, kvstore
path, wal, n, tag = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4]
total = 4 * n
db = kvstore.open(path, wal=wal)
for i in range(n):
    if i % 3 == 0:
        db.incr("counter")
    elif i % 3 == 1:
        db.update("counter", lambda v: v + 1, 0)
    else:
        db.transact(lambda tx: tx.put("counter", tx.get("counter", 0) + 1), retries=total)
    db.put(f"other:{tag}:{i}", i)
db.close()
"""


def test_increments_from_four_processes_end_exactly_at_their_sum(store_path, wal):
    kvstore.open(store_path, wal=wal).close()
    children = [subprocess.Popen([sys.executable, "-c", CHILD, store_path, "1" if wal else "0",
                                  str(PER_PROCESS), str(i)], stderr=subprocess.PIPE)
                for i in range(PROCESSES)]
    for child in children:
        _, err = child.communicate(timeout=600)
        assert child.returncode == 0, err.decode()
    with kvstore.open(store_path, wal=wal) as db:
        assert db.get("counter") == PROCESSES * PER_PROCESS
        assert len(list(db.scan(prefix="other:"))) == PROCESSES * PER_PROCESS


# ---------------------------------------------------------------- anomalies


def test_two_transactions_that_read_both_keys_and_write_one_cannot_both_commit(db):
    # write skew: on call, x + y must stay >= 1; each takes one off if both are on
    db.put_many({"x": 1, "y": 1}, durable=True)
    both_read = threading.Barrier(2)
    outcomes = {}

    def doctor(mine):
        try:
            with db.transaction() as tx:
                on = tx.get("x") + tx.get("y")
                both_read.wait()
                if on == 2:
                    tx.put(mine, 0)
            outcomes[mine] = "committed"
        except ConflictError as exc:
            outcomes[mine] = exc

    _in_threads(2, lambda i: doctor("xy"[i]))
    assert sorted(o == "committed" for o in outcomes.values()) == [False, True]
    assert db.get("x") + db.get("y") == 1


def test_a_scan_conflicts_when_another_writer_inserts_into_its_range(db):
    db.put_many({"msg:1": "a", "msg:3": "c", "zzz": 0}, durable=True)
    with pytest.raises(ConflictError) as caught:
        with db.transaction() as tx:
            assert [k for k, _ in tx.scan(prefix="msg:")] == [b"msg:1", b"msg:3"]
            db.put("msg:2", "b", durable=True)  # a phantom appears
            tx.put("count", 2)
    assert caught.value.keys == [("default", b"msg:2")]
    assert db.get("count") is None


def test_a_scan_conflicts_when_a_key_of_its_range_is_deleted_but_not_for_keys_outside_it(db):
    db.put_many({"msg:1": "a", "msg:3": "c", "zzz": 0}, durable=True)
    with db.transaction() as tx:
        list(tx.scan(prefix="msg:"))
        db.put("zzz", 1, durable=True)  # outside the range: no conflict
        tx.put("count", 2)
    assert db.get("count") == 2
    with pytest.raises(ConflictError):
        with db.transaction() as tx:
            list(tx.scan(prefix="msg:"))
            db.delete("msg:1", durable=True)
            tx.put("count", 1)
    assert db.get("count") == 2


def test_a_buffered_write_of_another_thread_pending_at_commit_is_a_conflict(db):
    db.put("k", 1, durable=True)
    with pytest.raises(ConflictError):
        with db.transaction() as tx:
            tx.get("k")
            db.put("k", 2)  # buffered: only in the overlay (or the log) yet
            tx.put("k", 10)
    db.flush()
    assert db.get("k") == 2


OTHER_WRITER = r"""
import sys, kvstore
with kvstore.open(sys.argv[1], wal=sys.argv[2] == "1") as db:
    db.put(sys.argv[3], "from another process", durable=True)
"""


def test_a_write_from_another_process_between_read_and_commit_is_a_conflict(db, store_path, wal):
    db.put_many({"k": 1, "msg:1": 1}, durable=True)

    def other_process_puts(key):
        subprocess.run([sys.executable, "-c", OTHER_WRITER, store_path, "1" if wal else "0", key],
                       check=True, timeout=120)

    with pytest.raises(ConflictError) as caught:
        with db.transaction() as tx:
            tx.get("k")
            other_process_puts("k")
            tx.put("x", 1)
    assert caught.value.keys == [("default", b"k")]
    with pytest.raises(ConflictError) as caught:
        with db.transaction() as tx:
            list(tx.scan(prefix="msg:"))
            other_process_puts("msg:2")  # a phantom, from another process
            tx.put("x", 1)
    assert caught.value.keys == [("default", b"msg:2")]
    assert db.get("x") is None and db.get("k") == "from another process"


def test_a_read_only_transaction_conflicts_when_what_it_read_changed(db):
    db.put("k", 1, durable=True)
    with pytest.raises(ConflictError):
        with db.transaction() as tx:
            tx.get("k")
            db.put("k", 2, durable=True)
    with db.transaction() as tx:
        assert tx.get("k") == 2


def test_the_same_bytes_written_back_are_no_conflict(db):
    db.put("k", {"a": 1}, durable=True)
    with db.transaction() as tx:
        tx.get("k")
        db.put("k", {"b": 2}, durable=True)
        db.put("k", {"a": 1}, durable=True)
        tx.put("j", 1)
    assert db.get("j") == 1


# ---------------------------------------------------------------- what a transaction sees and writes


def test_a_transaction_reads_its_own_writes_and_writes_other_namespaces(db):
    db.put_many({"a": 1, "b": 2}, durable=True)
    episodes = db.namespace("episodes")
    with db.transaction() as tx:
        tx.put("a", 10)
        tx.delete("b")
        tx.put("c", 3)
        tx.put("e1", {"n": 1}, namespace="episodes")
        assert tx.get("a") == 10 and tx.get("b", "gone") == "gone"
        assert "c" in tx and "b" not in tx
        assert tx.get_many(["a", "b", "c", "d"]) == [10, None, 3, None]
        assert list(tx.scan()) == [(b"a", 10), (b"c", 3)]
        assert list(tx.scan(reverse=True, keys_only=True)) == [b"c", b"a"]
        assert tx.get("e1", namespace="episodes") == {"n": 1}
        assert db.get("a") == 1 and episodes.get("e1") is None  # nobody else sees them yet
    assert (db.get("a"), db.get("b"), db.get("c")) == (10, None, 3)
    assert episodes.get("e1") == {"n": 1}


def test_a_namespace_handle_transacts_in_its_own_namespace(db):
    ns = db.namespace("side")
    assert ns.incr("n") == 1 and ns.incr("n", 4) == 5
    assert db.get("n") is None and ns.get("n") == 5
    with ns.transaction() as tx:
        tx.put("x", tx.get("n") * 2)
        tx.put("x", 0, namespace="default")
    assert ns.get("x") == 10 and db.get("x") == 0


def test_a_key_read_twice_reads_the_same_value_and_the_transaction_then_conflicts(db):
    db.put("k", 1, durable=True)
    with pytest.raises(ConflictError):
        with db.transaction() as tx:
            assert tx.get("k") == 1
            db.put("k", 2, durable=True)
            assert tx.get("k") == 1
            tx.put("other", 1)
    assert db.get("other") is None


def test_a_read_that_would_mix_two_states_raises_at_once(db):
    db.put_many({"a": 1, "b": 1}, durable=True)
    with pytest.raises(ConflictError) as caught:
        with db.transaction() as tx:
            assert tx.get("a") == 1
            db.put_many({"a": 2, "b": 2}, durable=True)
            tx.get("b")  # b = 2 beside a = 1 was never the state
            pytest.fail("the transaction read a mix of two states")
    assert caught.value.keys == [("default", b"a")] and tx.state == "conflicted"
    with pytest.raises(ConflictError):
        with db.transaction() as tx:
            tx.get_many(["a", "c"])
            db.put("a", 3)  # buffered: pending in this process
            list(tx.scan(prefix="b"))


def test_transact_runs_again_a_function_whose_read_found_the_state_moved(db):
    db.put_many({"a": 1, "b": 1}, durable=True)
    seen = []

    def fn(tx):
        a = tx.get("a")
        if not seen:
            db.put_many({"a": 2, "b": 2}, durable=True)
        seen.append((a, tx.get("b")))
        tx.put("sum", a + seen[-1][1])

    db.transact(fn)
    assert seen == [(2, 2)] and db.get("sum") == 4


def test_a_conflicted_transaction_writes_nothing_in_any_namespace(db):
    db.put("k", 1, durable=True)
    with pytest.raises(ConflictError):
        with db.transaction() as tx:
            tx.get("k")
            tx.put("a", 1)
            tx.put("b", 1, namespace="other")
            tx.delete("k")
            db.put("k", 2, durable=True)
    assert db.get("a") is None and db.namespace("other").get("b") is None and db.get("k") == 2


def test_an_exception_in_the_block_discards_the_transaction(db):
    with pytest.raises(RuntimeError):
        with db.transaction() as tx:
            tx.put("a", 1)
            raise RuntimeError("boom")
    assert tx.state == "discarded"
    assert db.get("a") is None


def test_a_transaction_that_read_nothing_commits_like_a_batch(db):
    with db.transaction(durable=True) as tx:
        tx.put_many({"a": 1, "b": 2})
    assert tx.state == "committed" and db.get_many(["a", "b"]) == [1, 2]


def test_values_with_a_ttl_and_expiry_judged_at_the_start(store_path, wal):
    now = [1_000_000.0]
    with kvstore.open(store_path, wal=wal, clock=lambda: now[0]) as db:
        db.put("short", 1, ttl=10, durable=True)
        with db.transaction() as tx:
            now[0] += 20  # expired since the transaction began: it still sees it
            assert tx.get("short") == 1
            tx.put("fresh", 2, ttl=5)
        assert db.get("short") is None
        assert db.expiry("fresh")[1] == 5
        with db.transaction() as tx:
            assert tx.get("short") is None and "short" not in tx
            tx.put("short", 3, ttl=math.inf)
        assert db.get("short") == 3 and db.expiry("short") is None


# ---------------------------------------------------------------- the retried helpers


def test_compare_and_set_writes_only_over_the_expected_value(db):
    assert db.compare_and_set("k", MISSING, "a") is True
    assert db.compare_and_set("k", MISSING, "b") is False
    assert db.compare_and_set("k", "x", "b") is False
    assert db.compare_and_set("k", "a", [1, 2]) is True
    assert db.compare_and_set("k", [1, 2], MISSING) is True
    assert "k" not in db


def test_incr_counts_from_default_and_refuses_what_is_not_an_int(db):
    assert db.incr("n", 5, default=10) == 15
    assert db.incr("n", -20) == -5
    db.put("s", "text", durable=True)
    with pytest.raises(InvalidArgumentTypeError, match="holds a str"):
        db.incr("s")
    with pytest.raises(InvalidArgumentTypeError, match="delta must be an int"):
        db.incr("n", 1.5)
    assert db.get("s") == "text" and db.get("n") == -5


def test_update_returns_the_new_value_and_a_failing_function_writes_nothing(db):
    assert db.update("meta", lambda m: {**m, "turns": m.get("turns", 0) + 1}, {}) == {"turns": 1}
    with pytest.raises(ZeroDivisionError):
        db.update("meta", lambda m: 1 / 0)
    assert db.get("meta") == {"turns": 1}


def test_transact_returns_the_result_of_its_function(db):
    assert db.transact(lambda tx: (tx.put("a", 1), "done")[1]) == "done"
    assert db.get("a") == 1


# ---------------------------------------------------------------- errors


def test_a_conflict_error_names_the_keys_and_says_to_run_it_again(db):
    db.put_many({"k": 1, "j": 1}, durable=True)
    with pytest.raises(ConflictError) as caught:
        with db.transaction() as tx:
            tx.get("k")
            tx.get("j", namespace="default")
            tx.get("n", namespace="side")
            db.put("k", 2, durable=True)
            db.namespace("side").put("n", 2, durable=True)
            tx.put("x", 1)
    error = caught.value
    assert isinstance(error, KVStoreError)
    assert error.keys == [("default", b"k"), ("side", b"n")]
    assert "run it again" in str(error) and "b'k'" in str(error)
    assert tx.state == "conflicted"


def test_transact_gives_up_after_its_retries_with_the_count(db):
    runs = []

    def always_loses(tx):
        runs.append(1)
        tx.get("hot")
        db.put("hot", len(runs), durable=True)  # another writer, every time
        tx.put("x", 1)

    with pytest.raises(ConflictError) as caught:
        db.transact(always_loses, retries=2)
    assert len(runs) == 3 and caught.value.attempts == 3
    assert "3 runs" in str(caught.value) and "retries=2" in str(caught.value)
    assert caught.value.keys == [("default", b"hot")]
    assert db.get("x") is None
    assert db.stats()["transactions"] == {"calls": 1, "conflicts": 3}


def test_transact_runs_a_function_again_when_it_failed_on_reads_that_changed(db):
    db.put("k", "not a number", durable=True)
    runs = []

    def fn(tx):
        runs.append(1)
        value = tx.get("k")
        if len(runs) == 1:
            db.put("k", 41, durable=True)  # what it read is stale: its error is not the last word
        tx.put("k", value + 1)

    db.transact(fn)
    assert db.get("k") == 42 and len(runs) == 2


def test_a_transaction_used_after_it_ended_raises(db):
    with db.transaction() as tx:
        tx.put("a", 1)
    for use in (lambda: tx.get("a"), lambda: tx.put("a", 2), lambda: tx.delete("a"),
                lambda: list(tx.scan()), lambda: tx.commit()):
        with pytest.raises(TransactionClosedError, match="start a new one"):
            use()
    unstarted = db.transaction()
    with pytest.raises(TransactionClosedError, match="with block"):
        unstarted.get("a")


def test_a_transaction_inside_another_raises_a_clear_error(db):
    with db.transaction() as tx:
        tx.put("a", 1)
        with pytest.raises(NestedTransactionError, match="outer transaction"):
            with db.transaction():
                pass
        with pytest.raises(NestedTransactionError):
            db.incr("n")
    assert db.get("a") == 1
    assert db.incr("n") == 1  # the outer one ended: transactions work again


def test_a_read_only_store_refuses_a_transaction(store_path, wal):
    kvstore.open(store_path, wal=wal).close()
    with kvstore.open(store_path, readonly=True) as db:
        with pytest.raises(ReadOnlyError):
            db.transaction()
        with pytest.raises(ReadOnlyError):
            db.incr("n")


def test_conflict_errors_pickle_with_their_keys():
    import pickle

    error = pickle.loads(pickle.dumps(ConflictError("m", [("default", b"k")], 3)))
    assert error.keys == [("default", b"k")] and error.attempts == 3 and str(error) == "m"
