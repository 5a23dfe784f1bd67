"""What survives: real processes, real SIGTERM/SIGKILL, a real failing disk write."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import kvstore


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


def test_max_map_size_reached_fails_clearly_and_loses_nothing_committed(store_path):
    with kvstore.open(store_path, map_size=1 << 20, max_map_size=2 << 20, compression="none") as db:
        db.put("kept", "yes", durable=True)
        with pytest.raises(kvstore.MapFullError, match="max_map_size"):
            db.put_many({f"k{j}": os.urandom(4000) for j in range(1000)}, durable=True)
        with pytest.raises(kvstore.StoreFailedError, match="reopen"):
            db.put("after", 1)
        assert db.get("kept") == "yes"
        assert db.get("k1") is None  # nothing of the failed group is visible
        with pytest.raises(kvstore.StoreFailedError):
            db.close()
    with kvstore.open(store_path, max_map_size=1 << 30) as db:
        assert db.get("kept") == "yes" and db.get("k1") is None
        db.put("after", 1, durable=True)
        assert db.get("after") == 1


def test_failing_disk_write_fails_the_group_and_the_store(store_path):
    # A real write error: the child may not grow data.mdb past a size limit
    # (RLIMIT_FSIZE; SIGXFSZ ignored so write() returns EFBIG). Without
    # preallocation, so that the group must grow the file.
    kvstore.open(store_path, preallocate=False).close()
    p = spawn("""
        import os, resource, signal, sys, kvstore
        path = sys.argv[1]
        db = kvstore.open(path, map_size=64 << 20, compression="none", preallocate=False)
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
    with kvstore.open(store_path) as db:  # reopened: intact, usable
        assert db.get("before") == "ok"
        assert db.get("k1") is None
        db.put("again", 1, durable=True)
        assert db.get("again") == 1


@pytest.mark.parametrize("point", ["mid-apply", "before-commit", "after-commit"])
def test_kill_points(store_path, point):
    with kvstore.open(store_path) as db:
        db.put("base", 0, durable=True)
    env = dict(os.environ, KVSTORE_KILL_POINT=point)
    p = spawn("""
        import sys, kvstore
        db = kvstore.open(sys.argv[1])
        print(db.stats()["commit_seq"], flush=True)
        db.put_many({f"k{i}": i for i in range(100)}, durable=True)
        print("acknowledged", flush=True)
    """, store_path, env=env)
    seq_before = int(p.stdout.readline())
    rest = p.stdout.read()
    p.wait(30)
    assert p.returncode == -signal.SIGKILL
    assert "acknowledged" not in rest  # killed before the writer was released
    with kvstore.open(store_path) as db:
        n = sum(1 for k in db.scan(keys_only=True) if k.startswith(b"k"))
        seq = db.stats()["commit_seq"]
        if point == "after-commit":
            assert n == 100 and seq == seq_before + 1  # committed, never acknowledged
        else:
            assert n == 0 and seq == seq_before  # nothing of the group
        assert db.get("base") == 0
