"""Group commit with many threads and many processes, on real LMDB files."""

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import kvstore


def run_py(code: str, *args, timeout=120, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_durable_writers_share_commits(store_path):
    n_threads, per_thread = 8, 60
    with kvstore.open(store_path) as db:
        def work(t):
            for i in range(per_thread):
                db.put(f"t{t}:{i}", {"t": t, "i": i}, durable=True)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        st = db.stats()
        assert st["ops_committed"] == n_threads * per_thread
        assert st["durable_groups"] == n_threads * per_thread
        # Concurrent durable writers rode along in each other's commits.
        assert st["commits"] < n_threads * per_thread
        assert st["ops_per_commit"]["max"] > 1
        assert len(db) == n_threads * per_thread


def test_writes_from_one_thread_apply_in_program_order(db):
    for i in range(3000):
        db.put("counter", i, durable=(i % 500 == 0))
        db.put(f"k{i % 7}", i)
    db.flush()
    assert db.get("counter") == 2999
    assert [db.get(f"k{j}") for j in range(7)] == [max(i for i in range(3000) if i % 7 == j) for j in range(7)]


def test_many_threads_mixed_reads_and_writes(store_path):
    errors = []
    with kvstore.open(store_path, flush_interval=0.01) as db:
        def writer(t):
            try:
                for i in range(300):
                    db.put(f"w{t}:{i}", i, durable=(i % 50 == 0))
                    assert db.get(f"w{t}:{i}") == i  # read-your-writes
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def reader():
            try:
                for _ in range(200):
                    list(db.scan(prefix="w1:", keys_only=True))
                    len(db)
            except Exception as exc:  # pragma: no cover
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
        threads += [threading.Thread(target=reader) for _ in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors
        db.flush()
        assert len(db) == 1200


def test_buffered_write_committed_within_flush_interval(store_path):
    # without the log: the flusher commits buffered writes (with a log they
    # are in the log when put returns: tests/test_wal.py)
    with kvstore.open(store_path, flush_interval=0.05, max_batch_ops=10_000, wal=False) as db:
        db.put("a", 1)
        assert db.stats()["pending"] == 1
        deadline = time.monotonic() + 5
        while db.stats()["pending"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert db.stats()["pending"] == 0
        # Another process sees it without any flush() here.
        out = run_py("""
            import sys, kvstore
            with kvstore.open(sys.argv[1], readonly=True) as db:
                print(db.get("a"))
        """, store_path)
        assert out.stdout.strip() == "1"


def test_size_limit_triggers_a_commit_without_the_timer(store_path):
    # without the log: buffered writes are batched in commits of max_batch_ops
    with kvstore.open(store_path, flush_interval=3600, max_batch_ops=100, max_pending_ops=1000,
                      wal=False) as db:
        for i in range(100):
            db.put(f"k{i}", i)
        deadline = time.monotonic() + 5
        while db.stats()["commits"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        st = db.stats()
        assert st["commits"] >= 1 and st["ops_per_commit"]["max"] == 100


def test_byte_limit_triggers_a_commit(store_path):
    with kvstore.open(store_path, flush_interval=3600, max_batch_bytes=50_000, compression="none") as db:
        for i in range(20):
            db.put(f"k{i}", b"x" * 5000)
        deadline = time.monotonic() + 5
        while db.stats()["commits"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert db.stats()["commits"] >= 1


def test_backpressure_bounds_pending_writes(store_path):
    with kvstore.open(store_path, flush_interval=3600, max_batch_ops=50, max_pending_ops=200) as db:
        for i in range(5000):
            db.put(f"k{i}", i)
            assert db.stats()["pending"] <= 200 + 1 if i % 500 == 0 else True
        db.flush()
        assert len(db) == 5000


def test_flush_timeout_while_another_process_holds_the_write_lock(store_path):
    with kvstore.open(store_path) as db:
        db.put("first", 1, durable=True)
        holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
            import sys, time, lmdb
            env = lmdb.open(sys.argv[1], max_dbs=10)
            txn = env.begin(write=True)  # LMDB's writer lock, held
            print("holding", flush=True)
            sys.stdin.readline()
            txn.abort()
        """), store_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "holding"
            db.put("second", 2)
            t0 = time.monotonic()
            with pytest.raises(kvstore.TimeoutError, match="flush"):
                db.flush(timeout=0.3)
            assert time.monotonic() - t0 < 5
            assert db.get("second") == 2  # still pending, still visible
        finally:
            holder.stdin.write("\n")
            holder.stdin.close()
            holder.wait(30)
        db.flush(timeout=30)
        assert db.stats()["pending"] == 0


def test_several_processes_write_the_same_store(store_path):
    kvstore.open(store_path).close()
    code = """
        import sys, kvstore
        path, me = sys.argv[1], int(sys.argv[2])
        with kvstore.open(path) as db:
            ns = db.namespace("shared")
            for i in range(300):
                db.put(f"p{me}:{i}", i, durable=(i % 3 == 0))
                ns.put(f"p{me}:{i}", {"by": me})
                db.put("last-writer", me)
    """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), store_path, str(p)])
             for p in range(4)]
    for p in procs:
        assert p.wait(120) == 0
    with kvstore.open(store_path, readonly=True) as db:
        assert len(db) == 4 * 300 + 1
        assert db.get("last-writer") in range(4)
        ns = db.namespace("shared")
        assert len(ns) == 1200
        assert all(ns.get(f"p{p}:{i}") == {"by": p} for p in range(4) for i in range(0, 300, 37))
        assert db.stats()["commit_seq"] >= 2


@pytest.mark.parametrize("wal", [False, True])
def test_durable_write_is_visible_to_another_process_at_once(store_path, wal):
    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, kvstore
        db = kvstore.open(sys.argv[1], wal=sys.argv[2] == "1")
        print("ready", flush=True)
        for line in sys.stdin:
            print(repr(db.get(line.strip())), flush=True)
    """), store_path, "1" if wal else "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        kvstore.open(store_path, wal=wal).close()
        assert reader.stdout.readline().strip() == "ready"
        with kvstore.open(store_path, flush_interval=3600, wal=wal) as db:
            for i in range(20):
                db.put(f"k{i}", i, durable=True)
                reader.stdin.write(f"k{i}\n")
                reader.stdin.flush()
                assert reader.stdout.readline().strip() == str(i)
            db.put("buffered", "b")
            reader.stdin.write("buffered\n")
            reader.stdin.flush()
            # with a log: in the log, visible to every process at once;
            # without: not committed yet
            assert reader.stdout.readline().strip() == ("'b'" if wal else "None")
            db.flush()
            reader.stdin.write("buffered\n")
            reader.stdin.flush()
            assert reader.stdout.readline().strip() == "'b'"  # visible after flush()
    finally:
        reader.stdin.close()
        reader.wait(30)


def _child_uses_inherited_store(db, q):
    try:
        db.put("from-child", os.getpid(), durable=True)
        q.put(("ok", db.get("from-parent-committed"), db.get("from-child")))
    except Exception as exc:  # pragma: no cover - reported to the parent
        q.put(("error", repr(exc), None))


@pytest.mark.skipif(sys.platform != "linux", reason="fork")
def test_store_used_in_forked_child_reopens_itself(store_path):
    db = kvstore.open(store_path, flush_interval=3600)
    db.put("from-parent-committed", 1, durable=True)
    db.put("parent-pending", 2)  # buffered, not committed at fork time
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_uses_inherited_store, args=(db, q))
    p.start()
    status, parent_value, child_value = q.get(timeout=60)
    p.join(60)
    assert p.exitcode == 0
    assert status == "ok", parent_value
    assert parent_value == 1 and child_value == p.pid
    # The parent's handle is untouched, and its pending write is still its own.
    assert db.get("from-child") == p.pid
    assert db.get("parent-pending") == 2
    db.close()
    with kvstore.open(store_path, readonly=True) as ro:
        assert ro.get("parent-pending") == 2
        assert ro.get("from-child") == p.pid


def test_map_resized_by_another_process_is_adopted(store_path):
    with kvstore.open(store_path, map_size=1 << 20) as db:
        db.put("mine", "before", durable=True)
        run_py("""
            import sys, kvstore
            with kvstore.open(sys.argv[1], map_size=1 << 20, compression="none") as db:
                for i in range(40):
                    db.put_many({f"big{i}:{j}": bytes([j]) * 4000 for j in range(64)}, durable=True)
        """, store_path)
        # This process still has a 1 MiB map; the file is now far larger.
        assert os.path.getsize(os.path.join(store_path, "data.mdb")) > 8 << 20
        assert db.get("big39:63") == bytes([63]) * 4000
        assert len(db) == 40 * 64 + 1
        db.put("mine", "after", durable=True)
        assert db.get("mine") == "after"
        assert db.stats()["map_size"] > 1 << 20


def test_no_lmdb_error_when_many_threads_read_during_growth(store_path):
    errors = []
    stop = threading.Event()
    with kvstore.open(store_path, map_size=1 << 20) as db:
        db.put("x", "y", durable=True)

        def read():
            while not stop.is_set():
                try:
                    assert db.get("x") == "y"
                    list(db.scan(prefix="g", keys_only=True))
                except Exception as exc:  # pragma: no cover
                    errors.append(exc)
                    return
                # Readers spinning without a pause starve the committing thread
                # of the GIL when py-lmdb hands it back after the fsync.
                time.sleep(0.0005)

        readers = [threading.Thread(target=read) for _ in range(3)]
        for r in readers:
            r.start()
        for i in range(30):
            db.put_many({f"g{i}:{j}": os.urandom(2000) for j in range(100)}, durable=True)
        stop.set()
        for r in readers:
            r.join()
        assert not errors, errors
        assert db.stats()["map_size"] > 1 << 20
        assert len(db) == 30 * 100 + 1
