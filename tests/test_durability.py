"""What survives: real processes, real SIGTERM/SIGKILL, a real failing disk write."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import kvstore
from kvstore import killpoints


def spawn(code: str, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_interpreter_exit_commits_buffered_writes(store_path):
    p = spawn("""
        import sys, kvstore
        db = kvstore.open(sys.argv[1], flush_interval=3600)
        for i in range(500):
            db.put(f"k{i}", i)
        # no close(), no flush(): the interpreter exits
    """, store_path)
    assert p.wait(60) == 0, p.stderr.read()
    with kvstore.open(store_path, readonly=True) as db:
        assert len(db) == 500 and db.get("k499") == 499


def test_sigterm_commits_buffered_writes(store_path):
    p = spawn("""
        import sys, time, kvstore
        db = kvstore.open(sys.argv[1], flush_interval=3600)
        for i in range(300):
            db.put(f"k{i}", {"i": i})
        print("written", flush=True)
        time.sleep(60)
    """, store_path)
    assert p.stdout.readline().strip() == "written"
    p.send_signal(signal.SIGTERM)
    rc = p.wait(60)
    assert rc != 0  # it did terminate
    with kvstore.open(store_path, readonly=True) as db:
        assert len(db) == 300 and db.get("k299") == {"i": 299}


def test_sigterm_handler_of_the_application_is_left_alone(store_path):
    p = spawn("""
        import signal, sys, time, kvstore
        signal.signal(signal.SIGTERM, lambda *a: print("app handler", flush=True))
        db = kvstore.open(sys.argv[1])
        print("ready", flush=True)
        time.sleep(2)
        print("still running", flush=True)
    """, store_path)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 0
    assert p.stdout.read().split() == ["app", "handler", "still", "running"]


def test_sigkill_keeps_every_acknowledged_durable_write(store_path):
    p = spawn("""
        import sys, kvstore
        db = kvstore.open(sys.argv[1], flush_interval=3600)
        i = 0
        while True:
            db.put(f"d{i}", {"i": i, "pad": "x" * 300}, durable=True)
            print(i, flush=True)           # acknowledged
            db.put(f"b{i}", i)              # buffered: may be lost
            i += 1
    """, store_path)
    acked = []
    deadline = time.monotonic() + 30
    while len(acked) < 200 and time.monotonic() < deadline:
        acked.append(int(p.stdout.readline()))
    os.kill(p.pid, signal.SIGKILL)
    p.wait(30)
    assert len(acked) >= 200
    with kvstore.open(store_path) as db:
        for i in acked:
            assert db.get(f"d{i}") == {"i": i, "pad": "x" * 300}
        # every buffered write before the last acknowledged durable write was
        # committed with (or before) it: writes of one thread commit in order
        for i in acked[:-1]:
            assert db.get(f"b{i}") == i


def test_sigkill_mid_batch_is_all_or_nothing(store_path):
    p = spawn("""
        import sys, kvstore
        db = kvstore.open(sys.argv[1])
        n = 0
        while True:
            db.put_many({f"g{n}:{j}": j for j in range(200)}, durable=(n % 2 == 0))
            print(n, flush=True)
            n += 1
    """, store_path)
    for _ in range(30):
        p.stdout.readline()
    os.kill(p.pid, signal.SIGKILL)
    p.wait(30)
    with kvstore.open(store_path) as db:
        counts = {}
        for key in db.scan(keys_only=True):
            group = key.split(b":")[0]
            counts[group] = counts.get(group, 0) + 1
        assert counts and all(c == 200 for c in counts.values()), counts
        groups = sorted(int(g[1:]) for g in counts)
        assert groups == list(range(len(groups)))  # a prefix of the history


def test_map_grows_from_1mib_to_over_50mib(store_path):
    with kvstore.open(store_path, map_size=1 << 20, compression="none") as db:
        chunk = os.urandom(4096)
        for i in range(14):
            db.put_many({f"k{i}:{j}": chunk[j % 64:] + bytes([i, j % 256]) for j in range(1000)})
        db.flush()
        st = db.stats()
        assert st["map_used"] > 50 << 20
        assert st["map_size"] >= st["map_used"]
        assert len(db) == 14000
        assert db.get("k13:999") == chunk[999 % 64:] + bytes([13, 999 % 256])


@pytest.mark.parametrize("wal", [False, True], ids=["commits", "log"])
def test_a_group_too_large_for_max_map_size_fails_alone_and_the_store_goes_on(store_path, wal):
    """One write that cannot fit in the map gets MapFullError; nothing of it
    is written and every other write goes on (issue 20). Without the log
    the commit that could not grow the map is retried one group at a time;
    with it, a group that large is written into LMDB directly instead of
    being acknowledged in the log first."""
    with kvstore.open(store_path, wal=wal, map_size=1 << 20, max_map_size=2 << 20,
                      compression="none") as db:
        db.put("kept", "yes", durable=True)
        with pytest.raises(kvstore.MapFullError, match="max_map_size"):
            db.put_many({f"k{j}": os.urandom(4000) for j in range(1000)}, durable=True)
        assert db.get("k1") is None  # nothing of the failed group is visible
        db.put("after", 1, durable=True)  # the store goes on
        db.put_many({f"s{j}": j for j in range(100)})
        db.flush()
        assert db.get("kept") == "yes" and db.get("after") == 1 and db.get("s99") == 99
    with kvstore.open(store_path, wal=wal) as db:
        assert db.get("kept") == "yes" and db.get("after") == 1 and db.get("k1") is None


def test_a_failed_commit_of_several_groups_fails_only_those_that_do_not_fit(store_path):
    """Without the log, buffered groups share a commit: when it cannot grow
    the map, the groups that fit alone still commit."""
    with kvstore.open(store_path, wal=False, map_size=1 << 20, max_map_size=2 << 20,
                      compression="none", flush_interval=3600) as db:
        db.put("small0", 0)
        db.put_many({f"k{j}": os.urandom(4000) for j in range(1000)})  # buffered: fails at the commit
        db.put("small1", 1)
        db.flush()  # the commit: the big group fails alone (its writer was not waiting)
        assert db.get("small0") == 0 and db.get("small1") == 1 and db.get("k1") is None
        db.put("after", 2, durable=True)
        assert db.stats()["failed"] is None


def test_max_map_size_reached_while_applying_the_log_fails_the_store_and_loses_nothing(store_path):
    """With the log a durable write returns once the log has it; an apply
    that would take LMDB past max_map_size (groups each small, together
    too large) fails the store, naming the limit, and the writes stay in
    the log: a reopen with a larger max_map_size applies every
    acknowledged one."""
    big = {f"k{j}": os.urandom(4000) for j in range(1000)}
    with kvstore.open(store_path, wal=True, map_size=1 << 20, max_map_size=2 << 20,
                      compression="none", apply_interval=3600) as db:
        db.put("kept", "yes", durable=True)
        keys = list(big)
        for i in range(0, len(keys), 20):  # 80 KB groups: each under an eighth of the map
            db.put_many({k: big[k] for k in keys[i:i + 20]}, durable=True)  # acknowledged
        with pytest.raises(kvstore.StoreFailedError, match="max_map_size") as info:
            db.flush()
        assert isinstance(info.value.cause, kvstore.MapFullError)
        with pytest.raises(kvstore.StoreFailedError, match="reopen"):
            db.put("after", 1)
        assert db.get("kept") == "yes" and db.get("k1") == big["k1"]  # reads go on
        with pytest.raises(kvstore.StoreFailedError):
            db.close()
    with kvstore.open(store_path, wal=True, max_map_size=1 << 30) as db:
        assert db.get("kept") == "yes" and db.get("after") is None
        assert all(db.get(k) == v for k, v in big.items())
        db.put("after", 1, durable=True)
        db.flush()
        assert db.get("after") == 1 and db.stats()["map_used"] > 2 << 20  # LMDB holds them now


def test_failing_disk_write_fails_the_group_and_the_store(store_path):
    # A real write error: the child may not grow data.mdb past a size limit
    # (RLIMIT_FSIZE; SIGXFSZ ignored so write() returns EFBIG). Without
    # preallocation, so that the group must grow the file.
    # Without the log: the group's commit is the failing write (with the
    # log, see the test after this one).
    kvstore.open(store_path, wal=False, preallocate=False).close()
    p = spawn("""
        import os, resource, signal, sys, kvstore
        path = sys.argv[1]
        db = kvstore.open(path, wal=False, map_size=64 << 20, compression="none", preallocate=False)
        db.put("before", "ok", durable=True)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        size = os.path.getsize(os.path.join(path, "data.mdb"))
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 8192, resource.RLIM_INFINITY))
        db.put("buffered", "lost?")
        try:
            db.put_many({f"k{i}": os.urandom(3000) for i in range(200)}, durable=True)
            print("no error")
        except kvstore.KVStoreError as exc:
            print("group:", type(exc).__name__)
        for call in (lambda: db.put("x", 1), lambda: db.flush()):
            try:
                call()
                print("no error")
            except kvstore.StoreFailedError as exc:
                print("after:", type(exc).__name__, "cause" if exc.cause is not None else "")
        print("get:", db.get("before"), db.get("k1"))
        try:
            db.close()
        except kvstore.StoreFailedError:
            print("close: StoreFailedError")
    """, store_path)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("group: ") and lines[0] != "group: no error"
    assert lines[1] == "after: StoreFailedError cause"
    assert lines[2] == "after: StoreFailedError cause"
    assert lines[3] == "get: ok None"
    assert lines[4] == "close: StoreFailedError"
    with kvstore.open(store_path, wal=False) as db:  # reopened: intact, usable
        assert db.get("before") == "ok"
        assert db.get("k1") is None
        db.put("again", 1, durable=True)
        assert db.get("again") == 1


def test_failing_disk_writes_with_the_log_fail_the_append_alone_and_the_apply_fails_the_store(store_path):
    """The same real write error (RLIMIT_FSIZE, EFBIG) with the log. An
    append that hits it fails that group alone and the store goes on; an
    apply to LMDB that hits it fails the store. Every acknowledged write is
    in the log, and there after the reopen."""
    kvstore.open(store_path, wal=True, preallocate=False).close()
    p = spawn("""
        import os, random, resource, signal, sys, kvstore
        path = sys.argv[1]
        db = kvstore.open(path, wal=True, map_size=64 << 20, compression="none", preallocate=False,
                          apply_interval=3600)
        db.put("before", "ok", durable=True)
        db.flush()  # LMDB holds it; from here on only flush() applies (apply_interval)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        size = os.path.getsize(os.path.join(path, "data.mdb"))
        # the limit is every file's: the log (1 MiB, preallocated) is written
        # from its start, so it takes appends up to this size too
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 8192, resource.RLIM_INFINITY))
        db.put("buffered", "kept")
        try:
            db.put_many({f"k{i}": os.urandom(3000) for i in range(200)}, durable=True)
            print("no error")
        except kvstore.KVStoreError as exc:
            print("group:", type(exc).__name__, "file-size limit" in str(exc))
        db.put("x", 1)
        # 18 KB: fits in the log, not in the 8 KB data.mdb may still grow
        small = {f"s{i}": random.Random(i).randbytes(3000) for i in range(6)}
        db.put_many(small, durable=True)
        print("after: ok")
        try:
            db.flush()
            print("no error")
        except kvstore.StoreFailedError as exc:
            print("flush:", type(exc).__name__, "file-size limit" in str(exc) and "ulimit -f" in str(exc))
        try:
            db.put("y", 1)
            print("no error")
        except kvstore.StoreFailedError as exc:
            print("after:", type(exc).__name__, "cause" if exc.cause is not None else "")
        print("get:", db.get("before"), db.get("buffered"), db.get("x"), db.get("k1"),
              all(db.get(k) == v for k, v in small.items()))
        try:
            db.close()
        except kvstore.StoreFailedError:
            print("close: StoreFailedError")
    """, store_path)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert out.splitlines() == ["group: DiskFullError True", "after: ok", "flush: StoreFailedError True",
                                "after: StoreFailedError cause", "get: ok kept 1 None True",
                                "close: StoreFailedError"], out
    with kvstore.open(store_path, wal=True) as db:  # reopened: every acknowledged write applied
        assert (db.get("before"), db.get("buffered"), db.get("x")) == ("ok", "kept", 1)
        assert all(db.get(f"s{i}") == random.Random(i).randbytes(3000) for i in range(6))
        assert db.get("k1") is None and db.get("y") is None
        db.put("again", 1, durable=True)
        assert db.get("again") == 1


def _kill_a_put_many(store_path, point, wal):
    """A child writes a durable put_many of 100 keys and is killed at point.
    Returns (was it acknowledged, how many of its keys the reopened store
    holds, commit_seq before it, commit_seq after the reopen and a flush)."""
    with kvstore.open(store_path, wal=wal) as db:
        db.put("base", 0, durable=True)
    p = spawn("""
        import sys, kvstore
        db = kvstore.open(sys.argv[1], wal=sys.argv[2] == "1")
        print(db.stats()["commit_seq"], flush=True)
        db.put_many({f"k{i}": i for i in range(100)}, durable=True)
        print("acknowledged", flush=True)
    """, store_path, int(wal), env=dict(os.environ, KVSTORE_KILL_POINT=point))
    seq_before = int(p.stdout.readline())
    rest = p.stdout.read()
    p.wait(30)
    assert p.returncode == -signal.SIGKILL, p.stderr.read()
    with kvstore.open(store_path, wal=wal) as db:
        n = sum(1 for k in db.scan(keys_only=True) if k.startswith(b"k"))
        db.flush()
        assert db.get("base") == 0
        return "acknowledged" in rest, n, seq_before, db.stats()["commit_seq"]


@pytest.mark.parametrize("point", ["mid-apply", "before-commit", "after-commit"])
def test_kill_points(store_path, point):
    # Without the log: the writer's own commit, before its writer is released
    # (with the log these points are the applier's: the test after this one).
    acked, n, seq_before, seq = _kill_a_put_many(store_path, point, wal=False)
    assert not acked  # killed before the writer was released
    if point == "after-commit":
        assert n == 100 and seq == seq_before + 1  # committed, never acknowledged
    else:
        assert n == 0 and seq == seq_before  # nothing of the group


@pytest.mark.parametrize("point", killpoints.POINTS)
def test_kill_points_with_the_log(store_path, point):
    """A durable put_many killed at each point: torn in the log, it is not
    there; once published in the log it survives the kill, acknowledged or
    not; killed in the applier (after its acknowledgement, at the apply of
    the child's exit), it is there and is applied exactly once."""
    acked, n, seq_before, seq = _kill_a_put_many(store_path, point, wal=True)
    assert acked == (not point.startswith("log-"))
    if point == "log-mid-append":
        assert n == 0 and seq == seq_before  # half a record: nothing of the group
    else:  # the whole group, applied once
        assert n == 100 and seq == seq_before + 1
