"""The apply worker (kvstore/applyworker.py): a process that applies a busy
writer's log to LMDB. Real processes throughout: the worker is started,
killed (SIGKILL, at kill points mid-apply), orphaned and forked around, and
every acknowledged write must still be in the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import lmdb
import pytest

import kvstore
from kvstore import engine as _engine
from kvstore.errors import KVStoreError

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses /proc and fork")


def _handover(db):
    return _engine.of(db).writer._log.handover


def _wait(predicate, timeout=20.0, what="the condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _alive(pid):
    """A process that exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _items(db):
    return {k.decode(): v for k, v in db.items()}


def _worker_pid(db):
    return db.stats()["log"]["apply_worker"]


def _serving(db):
    return _worker_pid(db) is not None


_LMDB_KEYS = textwrap.dedent("""
    import json, sys, lmdb
    env = lmdb.open(sys.argv[1], readonly=True, lock=False, max_dbs=256)
    keys = []
    with env.begin() as txn:
        names = [k for k, _ in txn.cursor()]
        for name in names:
            try:
                dbi = env.open_db(name, txn=txn, create=False)
            except lmdb.Error:
                continue
            keys += [k.decode("utf-8", "replace") for k, _ in txn.cursor(db=dbi)]
    print(json.dumps(keys))
""")


def _lmdb_keys(path):
    """Every key LMDB itself holds (what has been applied), read by py-lmdb
    in another process (this one has the environment open)."""
    out = subprocess.run([sys.executable, "-c", _LMDB_KEYS, path], check=True, capture_output=True)
    return set(json.loads(out.stdout))


def test_always_starts_a_worker_that_applies_what_this_process_writes(tmp_path):
    path = str(tmp_path / "s")
    with kvstore.open(path, apply_worker="always", flush_interval=3600) as db:
        _wait(lambda: _serving(db), what="the worker to be ready")
        pid = _worker_pid(db)
        assert pid != os.getpid() and _alive(pid)
        applier = _engine.of(db).applier
        before = applier.applies
        for i in range(500):
            db.put(f"k{i:04d}", {"i": i, "text": "x" * (i % 300)})
        # The worker applies them within apply_interval; this process does not.
        _wait(lambda: db.stats()["log"]["log_unapplied_bytes"] == 0, what="the worker's apply")
        assert applier.applies == before
        assert _lmdb_keys(path) >= {f"k{i:04d}" for i in range(500)}
        assert db.get("k0499") == {"i": 499, "text": "x" * 199}
    _wait(lambda: not _alive(pid), 5, "the worker to exit after close")
    with kvstore.open(path, apply_worker="never") as db:
        assert len(db) == 500


def test_never_and_a_light_load_start_no_worker(tmp_path):
    with kvstore.open(str(tmp_path / "a"), apply_worker="never") as db:
        for i in range(3000):
            db.put(f"k{i}", i)
        db.flush()
        assert _handover(db).worker is None
    with kvstore.open(str(tmp_path / "b")) as db:  # "auto", a few writes a second
        for i in range(20):
            db.put(f"k{i}", i)
            time.sleep(0.02)
        db.flush()
        assert _handover(db).worker is None
        assert db.stats()["log"]["apply_worker"] is None


def test_auto_starts_the_worker_for_a_busy_writer(tmp_path):
    value = {"role": "assistant", "content": "word " * 120, "tags": list(range(20))}
    with kvstore.open(str(tmp_path / "s")) as db:
        end = time.monotonic() + 10
        i = 0
        while _handover(db).worker is None and time.monotonic() < end:
            for _ in range(500):
                db.put(f"k{i:07d}", value)
                i += 1
        assert _handover(db).worker is not None, "a writer applying all the time started no worker"
        _wait(lambda: _serving(db), what="the worker to be ready")
        db.flush()
        assert len(db) == i


def test_bad_apply_worker_option():
    with pytest.raises(ValueError, match="apply_worker must be 'auto', 'always' or 'never'"):
        kvstore.open("/nonexistent/never-created", apply_worker="sometimes")


def test_a_killed_worker_hands_the_applies_back(tmp_path):
    path = str(tmp_path / "s")
    with kvstore.open(path, apply_worker="always") as db:
        _wait(lambda: _serving(db), what="the worker to be ready")
        pid = _worker_pid(db)
        for i in range(200):
            db.put(f"a{i}", i)
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: not _serving(db), what="the writer to notice")
        assert "exited" in db.stats()["log"]["apply_worker_error"]
        applier = _engine.of(db).applier
        before = applier.applies
        for i in range(200):
            db.put(f"b{i}", i)
        _wait(lambda: db.stats()["log"]["log_unapplied_bytes"] == 0, what="the writer's own apply")
        assert applier.applies > before
        assert {f"b{i}" for i in range(200)} <= _lmdb_keys(path)
    with kvstore.open(path) as db:
        assert len(db) == 400


def test_a_worker_that_cannot_open_the_store_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("KVSTORE_CODEC", "no-such-backend")  # the worker's import fails
    path = str(tmp_path / "s")
    with kvstore.open(path, apply_worker="always") as db:
        _wait(lambda: _handover(db).worker.gone, what="the worker to fail")
        assert "could not open the store" in db.stats()["log"]["apply_worker_error"]
        assert not _alive(_handover(db).worker.pid), "the failed worker was left a zombie"
        for i in range(100):
            db.put(f"k{i}", i)
        db.flush()
        assert len(db) == 100
        assert {f"k{i}" for i in range(100)} <= _lmdb_keys(path)


@pytest.mark.parametrize("point", ["mid-apply", "before-commit", "after-commit", "after-apply"])
def test_the_worker_killed_at_a_kill_point_loses_nothing(tmp_path, monkeypatch, point):
    monkeypatch.setenv("KVSTORE_WORKER_KILL_POINT", point)
    path = str(tmp_path / "s")
    expected = {}
    with kvstore.open(path, apply_worker="always") as db:
        _wait(lambda: _handover(db).worker.ready or _handover(db).worker.gone, what="the worker")
        pid = _handover(db).worker.pid
        for i in range(300):
            expected[f"k{i:03d}"] = {"i": i, "pad": "p" * 200}
            db.put(f"k{i:03d}", expected[f"k{i:03d}"])
        _wait(lambda: not _alive(pid), what=f"the worker to die at {point}")
        for i in range(300, 400):  # the writer applies again from here
            expected[f"k{i:03d}"] = i
            db.put(f"k{i:03d}", i)
        assert _items(db) == expected
    with kvstore.open(path, apply_worker="never") as db:
        assert _items(db) == expected
    subprocess.run(["mdb_stat", "-a", path], check=False, capture_output=True)  # LMDB's own view, if installed


_ORPHAN = textwrap.dedent("""
    import json, sys, time, kvstore
    db = kvstore.open(sys.argv[1], apply_worker="always")
    while db.stats()["log"]["apply_worker"] is None:
        time.sleep(0.01)
    for i in range(300):
        db.put(f"k{i}", i)   # acknowledged: in the log
    print(json.dumps(db.stats()["log"]["apply_worker"]), flush=True)
    time.sleep(600)
""")


def test_the_worker_exits_when_its_writer_is_sigkilled(tmp_path):
    path = str(tmp_path / "s")
    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN, path], stdout=subprocess.PIPE)
    try:
        pid = json.loads(proc.stdout.readline())
        assert _alive(pid)
        proc.kill()
        proc.wait()
        _wait(lambda: not _alive(pid), 10, "the orphaned worker to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with kvstore.open(path) as db:
        assert {db.get(f"k{i}") for i in range(300)} == set(range(300))


def test_a_forked_child_leaves_the_parents_worker_alone(tmp_path):
    path = str(tmp_path / "s")
    with kvstore.open(path, apply_worker="always") as db:
        _wait(lambda: _serving(db), what="the worker to be ready")
        pid = _worker_pid(db)
        child = os.fork()
        if child == 0:  # the child writes and closes: the worker is not its to stop
            code = 1
            try:
                db.put("from-child", 1)  # the handle reopens the store in this process
                db.close()
                code = 0
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert status == 0
        assert _alive(pid) and _worker_pid(db) == pid
        for i in range(100):
            db.put(f"k{i}", i)
        _wait(lambda: db.stats()["log"]["log_unapplied_bytes"] == 0, what="the worker's apply")
        assert db.get("from-child") == 1
    _wait(lambda: not _alive(pid), 5, "the worker to exit")


def test_reads_see_every_write_while_the_worker_applies(tmp_path):
    """Model check: a dict against the store, read back while the worker
    moves records from the log to LMDB underneath the reads."""
    path = str(tmp_path / "s")
    model = {}
    import random
    rnd = random.Random(5)
    with kvstore.open(path, apply_worker="always", apply_interval=0.005) as db:
        _wait(lambda: _serving(db), what="the worker to be ready")
        for step in range(6000):
            key = f"k{rnd.randrange(400):03d}"
            op = rnd.random()
            if op < 0.6:
                model[key] = [step, "v" * rnd.randrange(300)]
                db.put(key, model[key])
            elif op < 0.7:
                model.pop(key, None)
                db.delete(key)
            elif op < 0.75:
                pairs = {f"k{rnd.randrange(400):03d}": step for _ in range(5)}
                model.update(pairs)
                db.put_many(pairs)
            else:
                assert db.get(key) == model.get(key), f"step {step}: {key}"
            if step % 1000 == 999:
                assert _items(db) == model
        assert _engine.of(db).applier.applies == 0 or _serving(db)
    with kvstore.open(path) as db:
        assert _items(db) == model


def test_closing_with_a_worker_leaves_no_process_and_a_closed_store(tmp_path):
    path = str(tmp_path / "s")
    db = kvstore.open(path, apply_worker="always")
    _wait(lambda: _serving(db), what="the worker to be ready")
    pid = _worker_pid(db)
    db.put("k", 1)
    db.close()
    assert not _alive(pid)
    with pytest.raises(KVStoreError):
        db.get("k")


def test_the_worker_keeps_the_writers_flush_interval(tmp_path):
    """The worker runs a flusher too: it must not sync the writer's buffered
    appends more often than the writer's flush_interval asks."""
    with kvstore.open(str(tmp_path / "s"), apply_worker="always", flush_interval=3600,
                      apply_interval=3600) as db:
        _wait(lambda: _serving(db), what="the worker to be ready")
        for i in range(50):
            db.put(f"k{i}", i)
        time.sleep(0.6)
        assert db.stats()["log"]["log_unsynced_bytes"] > 0


_HOLD_APPLY_LOCK = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.read()
""")


def test_an_apply_lock_held_elsewhere_is_retried_not_spun_on(tmp_path):
    """Another process holds the apply lock (the worker's, or any other
    applier's) while more than apply_bytes wait: the apply thread tries
    again every 10 ms at most, it does not spin on the lock."""
    path = str(tmp_path / "s")
    with kvstore.open(path, apply_worker="never", apply_bytes=4096) as db:
        db.put("first", 1)
        holder = subprocess.Popen([sys.executable, "-c", _HOLD_APPLY_LOCK, os.path.join(path, "data.wal")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert holder.stdout.readline() == b"held\n"
            applier = _engine.of(db).applier
            tries = []
            real = applier.checkpoint

            def counted(*args, **kwargs):
                tries.append(1)
                return real(*args, **kwargs)

            applier.checkpoint = counted
            for i in range(100):
                db.put(f"k{i}", "v" * 100)  # well past apply_bytes
            time.sleep(0.5)
            assert 5 <= len(tries) <= 150, f"{len(tries)} tries in 0.5 s"
        finally:
            holder.stdin.close()
            holder.wait(10)
        db.flush()
        assert db.stats()["log"]["log_unapplied_bytes"] == 0
