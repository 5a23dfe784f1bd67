"""Regression: the first use of a namespace while another thread of the
process commits must not deadlock (the GIL against LMDB's write lock).

py-lmdb's open_db() without a transaction begins a write transaction while
holding the GIL; a thread that got LMDB's write lock then needs the GIL to
finish its commit. The engine opens namespace handles in a write
transaction of its own instead (Environment._lookup_dbi).
"""

import os
import select
import signal
import subprocess
import sys
import time

import kvstore

HOLDER = """
import sys, lmdb
env = lmdb.open(sys.argv[1], max_dbs=70)
txn = env.begin(write=True)  # LMDB's write lock, held until told
print("holding", flush=True)
sys.stdin.readline()
txn.abort()
print("released", flush=True)
"""

TWO_THREADS = """
import sys, threading, kvstore
db = kvstore.open(sys.argv[1])
db.get("k")  # the default namespace is open: only "fresh" is new below
print("open", flush=True)
sys.stdin.readline()  # another process holds LMDB's write lock now
t = threading.Thread(target=lambda: db.put("k", 1, durable=True))  # its commit waits for the lock
t.start()
sys.stdin.readline()
db.namespace("fresh")  # first use of a namespace in this process
t.join()
print("done", flush=True)
"""


def readline(stream, timeout=30.0) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no output from the child in time"
    return stream.readline().strip()


def write_mutex_has_waiter(path) -> bool:
    # The futex word of lock.mdb's write mutex (offset 64 on x86-64 Linux)
    # gets FUTEX_WAITERS when a thread waits on it.
    with open(os.path.join(path, "lock.mdb"), "rb") as f:
        f.seek(64)
        return bool(int.from_bytes(f.read(4), "little") & 0x80000000)


def test_first_use_of_a_namespace_while_a_commit_waits(store_path):
    with kvstore.open(store_path) as db:
        db.namespace("fresh").put("x", 1, durable=True)
    child = subprocess.Popen([sys.executable, "-c", TWO_THREADS, store_path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    holder = None
    try:
        assert readline(child.stdout) == "open"
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, store_path], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert readline(holder.stdout) == "holding"
        child.stdin.write("go\n")
        child.stdin.flush()
        deadline = time.monotonic() + 10
        while not write_mutex_has_waiter(store_path) and time.monotonic() < deadline:
            time.sleep(0.01)
        child.stdin.write("go\n")
        child.stdin.flush()
        time.sleep(0.5)  # both threads of the child wait for LMDB's write lock
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert readline(holder.stdout) == "released"
        out, err = child.communicate(timeout=20)
        assert child.returncode == 0 and out.strip().endswith("done"), err
        with kvstore.open(store_path) as db:
            assert db.get("k") == 1
    finally:
        for p in (child, holder):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


WRITES_LEFT_IN_THE_LOG = """
import os, sys, kvstore
db = kvstore.open(sys.argv[1], apply_interval=3600)
other = db.namespace("written-elsewhere")
for i in range(20):
    other.put(f"k{i}", i)
db.put("default-too", 1)
os._exit(0)  # no close: the records stay in the log, unapplied
"""


def test_creating_a_namespace_while_the_log_holds_writes_to_one_not_yet_open(store_path):
    """Creating a namespace is an exclusive step: it applies the whole log
    first, which looks up the handles of the namespaces the log writes to.
    It ran holding the lock of those lookups: with a namespace in the log
    that this process had not opened yet, it waited for itself for ever
    (found by test_sigkill_at_random_moments: a child hung at its start)."""
    import threading

    kvstore.open(store_path).close()
    subprocess.run([sys.executable, "-c", WRITES_LEFT_IN_THE_LOG, store_path], check=True, timeout=60)
    with kvstore.open(store_path, apply_interval=3600) as db:
        done = []
        t = threading.Thread(target=lambda: done.append(db.namespace("new-here")), daemon=True)
        t.start()
        t.join(30)
        assert done, "creating a namespace hung"
        done[0].put("x", 1, durable=True)
        other = db.namespace("written-elsewhere")
        assert [other.get(f"k{i}") for i in range(20)] == list(range(20))
        assert db.get("default-too") == 1
