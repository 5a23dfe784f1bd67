"""kvstore.writer.Writer's hooks and steps, on real stores: on_commit, schedule,
run (with Refused) and Group.before.

Each test opens its own store in tmp_path; the writer is `db._engine.writer`.
Tests that make a commit fail use a store of their own: a failed commit puts
the store into the failed state for good.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

import kvstore
from kvstore.errors import KVStoreError, Refused, StoreClosedError, StoreFailedError
from kvstore.layout import SEQ, SEQ_KEY
from kvstore.group import Step
from kvstore.writer import Group

SLOW = 3600.0  # a flush_interval no test waits for: buffered groups stay queued until flush()


def wait_for(condition, timeout=10.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def group_of(db, pairs, durable=True, before=None, ns="default"):
    """A Group writing pairs into ns, encoded as the store encodes them."""
    env = db._engine
    dbi = env.dbi(ns, create=False)
    ops = [(ns, dbi, key, None if value is None else db._codec.encode(value, key=key if env.keyed else None))
           for key, value in pairs]
    return Group(ops, durable, sum(len(r) for *_x, r in ops if r is not None), before=before)


def stored(db, key, ns="default"):
    env = db._engine
    dbi = env.dbi(ns, create=False)
    return env.read(lambda txn: txn.get(key, db=dbi))


def meta(db, key):
    env = db._engine
    return env.read(lambda txn: txn.get(key, db=env.meta_db))


class Boom(KVStoreError):
    """The error a test's before step makes a commit fail with."""


# ---------------------------------------------------------------- on_commit


def test_on_commit_hook_sees_exactly_the_groups_of_each_commit_before_their_writers_wake(tmp_path):
    db = kvstore.open(tmp_path / "s", flush_interval=SLOW, wal=False)
    try:
        writer = db._engine.writer
        commits = []

        def hook(groups):
            commits.append([(len(g.ops), [k for _ns, _d, k, _r in g.ops], g.done) for g in groups])
            # committed already: a fresh read transaction sees the group's writes
            commits[-1].append([stored(db, k) is not None for g in groups for _n, _d, k, _r in g.ops])

        writer.on_commit(hook)
        db.put("a", 1)
        db.put("b", 2)
        db.put_many({"c": 3, "d": 4, "e": 5})
        db.delete("zz")
        assert commits == []  # buffered, flush_interval far off: nothing committed yet
        db.flush()
        assert commits == [[(1, [b"a"], False), (1, [b"b"], False), (3, [b"c", b"d", b"e"], False),
                            (1, [b"zz"], False), [True] * 5 + [False]]]
        db.put("f", 6, durable=True)
        assert len(commits) == 2
        assert commits[1] == [(1, [b"f"], False), [True]]
        assert sum(n for c in commits for n, *_ in c[:-1]) == writer.stats()["ops_committed"]
    finally:
        db.close()


def test_on_commit_hook_is_not_called_for_a_commit_that_failed(tmp_path):
    db = kvstore.open(tmp_path / "s", flush_interval=SLOW, wal=False)
    writer = db._engine.writer
    calls = []
    writer.on_commit(lambda groups: calls.append(len(groups)))
    db.put("ok", 1, durable=True)
    assert calls == [1]

    def fail(txn):
        raise Boom("the before step refuses")

    with pytest.raises(Boom):
        writer.submit(group_of(db, [(b"doomed", "x")], before=fail))
    assert calls == [1]  # no hook call for the failed commit
    assert stored(db, b"doomed") is None
    assert db.get("doomed") is None  # its overlay entry is gone too
    assert isinstance(writer.failed, StoreFailedError)
    with pytest.raises(StoreFailedError):
        db.put("later", 2)
    with pytest.raises(StoreFailedError):
        db.close()
    assert calls == [1]


@pytest.mark.parametrize("wal", [False, True])
def test_a_failed_commit_fails_the_groups_queued_behind_it_and_calls_no_hook(tmp_path, wal):
    # with a log, the failing group is exclusive (its before step) and the
    # commit hooks run after applies: none happens
    db = kvstore.open(tmp_path / "s", flush_interval=SLOW, apply_interval=SLOW, wal=wal)
    writer = db._engine.writer
    calls = []
    writer.on_commit(lambda groups: calls.append(len(groups)))
    entered = threading.Event()
    release = threading.Event()

    def fail_later(txn):
        entered.set()
        release.wait(10)
        raise Boom("refused after the next group queued")

    errors = {}

    def durable_failing():
        try:
            writer.submit(group_of(db, [(b"first", 1)], before=fail_later))
        except BaseException as exc:
            errors["first"] = exc

    def buffered():
        try:
            db.put("queued", 2)  # queued behind the failing commit
        except BaseException as exc:
            errors["queued"] = exc

    t = threading.Thread(target=durable_failing)
    t.start()
    assert entered.wait(10)
    q = threading.Thread(target=buffered)  # without a log it returns at once; with one it
    q.start()                              # waits for its append
    wait_for(lambda: writer.pending() >= 2, what="the buffered put to queue")
    release.set()
    t.join(10)
    q.join(10)
    assert isinstance(errors["first"], Boom)
    if wal:  # never acknowledged: the put itself fails
        assert isinstance(errors["queued"], StoreFailedError)
    else:  # acknowledged as buffered: flush reports the failure
        assert "queued" not in errors
        with pytest.raises(StoreFailedError):
            db.flush(timeout=10)
    assert calls == []
    assert db.get("first") is None and db.get("queued") is None
    assert stored(db, b"first") is None and stored(db, b"queued") is None
    with pytest.raises(StoreFailedError):
        db.put("later", 3)
    with pytest.raises(StoreFailedError):
        db.close()


def test_a_commit_hook_that_raises_does_not_leave_the_commits_groups_waiting(tmp_path):
    db = kvstore.open(tmp_path / "s", flush_interval=SLOW)
    writer = db._engine.writer

    def broken(groups):
        raise RuntimeError("a broken commit hook")

    writer.on_commit(broken)
    db.put("k", 1)
    try:
        try:
            db.flush(timeout=1.5)
        except StoreFailedError:
            pass  # acceptable: the store reports the hook's failure
        assert writer.pending() == 0
    finally:
        try:
            db.close()
        except KVStoreError:
            pass


# ---------------------------------------------------------------- schedule


@pytest.mark.parametrize("wal", [False, True], ids=["commits", "log"])
def test_a_scheduled_step_returning_true_runs_again_until_it_returns_false(tmp_path, wal):
    with kvstore.open(tmp_path / "s", preallocate=False, wal=wal) as db:
        runs = []

        def step():
            runs.append(threading.current_thread().name)
            return len(runs) < 4

        db._engine.writer.schedule(step)
        wait_for(lambda: len(runs) >= 4, what="four runs of the step")
        time.sleep(0.1)
        assert len(runs) == 4  # returned False the fourth time: not run again
        # in the flusher, between commits; with a log in the apply thread, between applies
        assert all(name.startswith("kvstore-apply:" if wal else "kvstore-writer:") for name in runs)


def test_a_scheduled_step_that_raises_is_dropped_and_the_writer_keeps_working(tmp_path):
    with kvstore.open(tmp_path / "s", preallocate=False, wal=False) as db:
        writer = db._engine.writer
        runs = []

        def bad():
            runs.append(1)
            raise RuntimeError("a broken step")

        writer.schedule(bad)
        wait_for(lambda: runs, what="the raising step")
        time.sleep(0.1)
        assert runs == [1]  # dropped, not retried
        db.put("buffered", 1)
        db.flush(timeout=10)
        db.put("durable", 2, durable=True)
        assert stored(db, b"buffered") is not None and stored(db, b"durable") is not None
        assert writer.failed is None
        later = threading.Event()
        writer.schedule(lambda: later.set())  # the flusher still runs steps
        assert later.wait(10)


def test_scheduling_a_step_already_waiting_does_not_queue_it_twice(tmp_path):
    with kvstore.open(tmp_path / "s", preallocate=False) as db:
        writer = db._engine.writer
        busy, release = threading.Event(), threading.Event()
        runs = []

        def blocker():  # keeps the flusher in a step while `step` is scheduled twice
            busy.set()
            release.wait(10)
            return False

        def step():
            runs.append(1)
            return False

        writer.schedule(blocker)
        assert busy.wait(10)
        writer.schedule(step)
        writer.schedule(step)
        release.set()
        wait_for(lambda: runs, what="the step")
        time.sleep(0.1)
        assert runs == [1]


class CommitWatch:
    """Brackets every commit of groups made with `before=watch.mark`: in_commit
    is set from that before step to the commit hook. `step` is a scheduled
    step that notes each run, and each run that fell inside such a commit,
    and asks to run again until `stop` is set."""

    def __init__(self, db):
        self.in_commit = False
        self.commits = 0
        self.runs = []  # commits done at each run of the step
        self.overlaps = []  # the same, for runs inside a commit
        self.stop = threading.Event()
        db._engine.writer.on_commit(self._hook)

    def mark(self, txn):
        self.in_commit = True
        time.sleep(0.003)  # widen the window a step could run in

    def _hook(self, groups):
        if any(g.before == self.mark for g in groups):
            self.in_commit = False
            self.commits += 1

    def step(self):
        self.runs.append(self.commits)
        if self.in_commit:
            self.overlaps.append(self.commits)
        time.sleep(0.0005)
        return not self.stop.is_set()


@pytest.mark.parametrize("wal", [False, True])
def test_scheduled_steps_never_run_while_the_flusher_commits(tmp_path, wal):
    # with a log, groups with a before step are applied to LMDB by their
    # caller, and the flusher applies the log: neither may overlap a step
    with kvstore.open(tmp_path / "s", preallocate=False, flush_interval=0.001, wal=wal) as db:
        writer = db._engine.writer
        watch = CommitWatch(db)
        writer.schedule(watch.step)
        for i in range(40):  # buffered groups, each committed by the flusher (flush only waits)
            writer.submit(group_of(db, [(b"k%d" % i, i)], durable=False, before=watch.mark))
            db.flush(timeout=10)
        watch.stop.set()
        assert watch.commits == 40
        assert len(set(watch.runs)) >= 10  # the step ran between many of the commits
        assert watch.overlaps == []


def test_scheduled_steps_never_run_while_a_durable_writer_leads_a_commit(tmp_path):
    with kvstore.open(tmp_path / "s", preallocate=False) as db:
        writer = db._engine.writer
        watch = CommitWatch(db)
        writer.schedule(watch.step)
        for i in range(150):  # durable groups: this thread leads each commit
            writer.submit(group_of(db, [(b"k%d" % i, i)], durable=True, before=watch.mark))
        watch.stop.set()
        assert watch.commits == 150
        assert watch.runs
        assert watch.overlaps == []


# ---------------------------------------------------------------- run


def test_run_returns_what_fn_returns_and_commits_what_fn_writes(tmp_path):
    with kvstore.open(tmp_path / "s") as db:
        env = db._engine
        before = env.commit_seq()

        def fn(txn):
            txn.put(b"test:run", b"written", db=env.meta_db)
            return ("seen seq", SEQ.unpack(txn.get(SEQ_KEY, db=env.meta_db))[0])

        assert env.writer.run(fn) == ("seen seq", before)
        assert meta(db, b"test:run") == b"written"
        assert env.commit_seq() == before  # a metadata step alone is not a commit of writes
        assert env.writer.run(fn, count=True) == ("seen seq", before)
        assert env.commit_seq() == before + 1  # one that writes records (kvstore load) is


def test_run_is_applied_after_a_buffered_put_submitted_before_it(tmp_path):
    with kvstore.open(tmp_path / "s", flush_interval=SLOW) as db:
        env = db._engine
        dbi = env.dbi("default", create=False)
        db.put("earlier", {"v": 1})
        assert stored(db, b"earlier") is None  # still queued
        seen = env.writer.run(lambda txn: txn.get(b"earlier", db=dbi))
        assert seen is not None and db._codec.decode(bytes(seen), key=b"earlier") == {"v": 1}


def test_run_raising_refused_fails_only_its_call_and_a_put_in_the_same_commit_commits(tmp_path):
    with kvstore.open(tmp_path / "s") as db:
        writer = db._engine.writer
        commits = []
        writer.on_commit(lambda groups: commits.append(list(groups)))
        inside = threading.Event()
        release = threading.Event()

        def hold(txn):  # keeps a first commit open while the other two queue
            inside.set()
            release.wait(10)

        refusal = kvstore.errors.NamespaceLimitError("refused by the test")
        results = {}

        def refuse(txn):
            raise Refused(refusal)

        def run_refused():
            try:
                results["run"] = writer.run(refuse)
            except BaseException as exc:
                results["run"] = exc

        def durable_put():
            try:
                db.put("together", "yes", durable=True)
                results["put"] = "ok"
            except BaseException as exc:
                results["put"] = exc

        holder = threading.Thread(target=lambda: writer.submit(group_of(db, [(b"held", 0)], before=hold)))
        holder.start()
        assert inside.wait(10)
        threads = [threading.Thread(target=durable_put), threading.Thread(target=run_refused)]
        for t in threads:
            t.start()
            wait_for(lambda: len(writer._queue) == threads.index(t) + 1, what="the group to queue")
        release.set()
        for t in [holder, *threads]:
            t.join(10)
        assert results["run"] is refusal
        assert results["put"] == "ok"
        assert db.get("together") == "yes" and stored(db, b"together") is not None
        # the put and the refused step shared one commit
        shared = [c for c in commits if any(isinstance(g.condition, Step) for g in c)]
        assert len(shared) == 1
        assert any(k == b"together" for g in shared[0] for _n, _d, k, _r in g.ops)
        assert writer.failed is None
        db.put("after", 1, durable=True)
        assert writer.run(lambda txn: "still works") == "still works"


def test_run_on_a_closed_store_raises_store_closed_error(tmp_path):
    db = kvstore.open(tmp_path / "s")
    writer = db._engine.writer
    db.close()
    with pytest.raises(StoreClosedError):
        writer.run(lambda txn: None)


# ---------------------------------------------------------------- Group.before


def test_group_before_runs_in_the_transaction_of_its_ops_just_ahead_of_them(tmp_path):
    with kvstore.open(tmp_path / "s") as db:
        env = db._engine
        dbi = env.dbi("default", create=False)
        db.put("k", "old", durable=True)
        seen = []

        def before(txn):
            seen.append(db._codec.decode(bytes(txn.get(b"k", db=dbi)), key=b"k"))
            prev = SEQ.unpack(txn.get(SEQ_KEY, db=env.meta_db))[0]
            txn.put(b"test:marker", SEQ.pack(prev), db=env.meta_db)

        env.writer.submit(group_of(db, [(b"k", "new")], before=before))
        assert seen == ["old"]  # ahead of the group's own write
        marker = SEQ.unpack(meta(db, b"test:marker"))[0]
        # The marker was written in the transaction that committed seq marker+1,
        # the last commit, the one holding the new value.
        assert env.commit_seq() == marker + 1
        both = env.read(lambda txn: (txn.get(b"test:marker", db=env.meta_db), txn.get(b"k", db=dbi)))
        assert both[0] is not None and db._codec.decode(bytes(both[1]), key=b"k") == "new"


def test_group_before_replayed_after_a_map_grow_commits_once_with_its_values(tmp_path):
    with kvstore.open(tmp_path / "s", map_size=1 << 20, preallocate=False) as db:
        env = db._engine
        start_map = env.info()["map_size"]
        start_seq = env.commit_seq()
        calls = []

        def before(txn):
            calls.append(1)
            txn.put(b"test:marker", b"%d" % len(calls), db=env.meta_db)

        values = [(b"big%03d" % i, os.urandom(16 * 1024)) for i in range(200)]  # ~3 MiB, incompressible
        env.writer.submit(group_of(db, values, before=before))
        assert len(calls) >= 2  # the map filled: the commit was replayed, before with it
        assert env.info()["map_size"] > start_map
        assert meta(db, b"test:marker") == b"%d" % len(calls)  # the last replay's write, once
        markers = env.read(lambda txn: [bytes(k) for k, _ in txn.cursor(db=env.meta_db)
                                        if bytes(k).startswith(b"test:")])
        assert markers == [b"test:marker"]
        assert env.commit_seq() == start_seq + 1
        assert all(db.get(k) == v for k, v in values)


# ---------------------------------------------------------------- with a write-ahead log


def test_with_a_log_a_step_that_keeps_rescheduling_itself_does_not_starve_flush(tmp_path):
    # Preallocation is such a step: it returns True while data.mdb has room
    # left to zero-fill. The flusher ran steps ahead of the log's work, so
    # flush()'s checkpoint (and every periodic apply) waited for it forever.
    with kvstore.open(tmp_path / "s", wal=True, preallocate=False) as db:
        stop = threading.Event()
        runs = []

        def step():
            runs.append(1)
            return not stop.is_set()

        db._engine.writer.schedule(step)
        try:
            db.put("k", 1)
            db.flush(timeout=10)
            assert stored(db, b"k") is not None
            assert runs  # the step ran meanwhile, and still does
        finally:
            stop.set()


def test_with_a_log_the_commit_hook_sees_the_groups_of_each_apply_after_lmdb_has_them(tmp_path):
    db = kvstore.open(tmp_path / "s", wal=True, flush_interval=SLOW, apply_interval=SLOW)
    try:
        writer = db._engine.writer
        applies = []

        def hook(groups):
            # the applier hands over every op it wrote, in log order (as one
            # group: the hooks need the keys, not where each group ended)
            keys = [k for g in groups for _ns, _d, k, _r in g.ops]
            # applied already: a fresh read transaction sees the writes
            applies.append([keys, [stored(db, k) is not None for k in keys]])

        writer.on_commit(hook)
        db.put("a", 1)
        db.put_many({"c": 3, "d": 4})
        db.put("f", 6, durable=True)  # in the log, synced: not applied yet
        db.delete("zz")
        assert applies == []
        db.flush()
        assert applies == [[[b"a", b"c", b"d", b"f", b"zz"], [True] * 4 + [False]]]
        db.put("g", 7, durable=True)
        db.flush()
        assert applies[1] == [[b"g"], [True]]
    finally:
        db.close()



def test_with_a_log_a_buffered_put_does_not_wait_for_another_writers_sync(tmp_path):
    """While a durable put's leader waits for its fdatasync (its record
    appended), a buffered put or put_many from another thread is appended
    beside it and returns while that sync is still under way (before, it
    queued behind the sync). The sync is held open by wrapping the log's
    real sync, and the durable put still returns only after it."""
    with kvstore.open(str(tmp_path / "s"), wal=True, flush_interval=SLOW) as db:
        log = db._engine.writer._log.tail.log
        real_sync = log.sync
        entered, release = threading.Event(), threading.Event()

        def held_sync(upto, gen):
            if threading.current_thread().name == "durable":
                entered.set()
                assert release.wait(30)
            real_sync(upto, gen)

        log.sync = held_sync
        returned = threading.Event()

        def durable():
            db.put("d", 1, durable=True)
            returned.set()

        t = threading.Thread(target=durable, name="durable")
        t.start()
        try:
            assert entered.wait(30), "the durable put never reached its sync"
            done = threading.Event()
            b = threading.Thread(target=lambda: (db.put("b", 2), db.put_many({"c": 3, "e": 4}),
                                                 done.set()))
            b.start()
            assert done.wait(10), "a buffered put waited for another writer's sync"
            assert not returned.is_set(), "the durable put returned before its sync"
            assert db.get("b") == 2 and db.get("e") == 4 and db.get("d") == 1
        finally:
            release.set()
            t.join(30)
            b.join(30)
        assert returned.is_set()
        assert db.stats()["durable_groups"] >= 1


def test_a_beside_append_that_fails_as_the_store_fails_leaves_flush_an_answer(tmp_path):
    """A buffered put appended beside a syncing leader fails (an I/O error)
    just as the leader's sync fails the store: the put raises, and flush()
    then says the store failed instead of waiting for that put for ever."""
    import errno

    with kvstore.open(str(tmp_path / "s"), wal=True, flush_interval=SLOW) as db:
        writer = db._engine.writer
        log = writer._log.tail.log
        appender = writer._log
        real_sync, real_append = log.sync, appender.append_alone
        entered, go = threading.Event(), threading.Event()

        def failing_sync(upto, gen):
            if threading.current_thread().name == "durable":
                entered.set()
                assert go.wait(30)
                raise OSError(errno.EIO, "injected")
            real_sync(upto, gen)

        def failing_append(group):
            if threading.current_thread().name == "beside":
                go.set()  # the leader's sync fails now
                wait_for(lambda: writer._failed is not None, what="the store to fail")
                raise OSError(errno.EIO, "injected")
            return real_append(group)

        log.sync = failing_sync
        appender.append_alone = failing_append
        errors = {}

        def run(name, fn):
            try:
                fn()
            except BaseException as exc:  # recorded for the asserts below
                errors[name] = exc

        d = threading.Thread(target=run, args=("durable", lambda: db.put("d", 1, durable=True)),
                             name="durable")
        d.start()
        assert entered.wait(30)
        b = threading.Thread(target=run, args=("beside", lambda: db.put("b", 2)), name="beside")
        b.start()
        b.join(30)
        d.join(30)
        assert isinstance(errors.get("durable"), StoreFailedError)
        assert isinstance(errors.get("beside"), StoreFailedError)
        with pytest.raises(StoreFailedError):
            db.flush(timeout=5)
        with pytest.raises(StoreFailedError):
            db.close()
