"""Opening a store whose files were tampered with, raced for, or sit on a
file system that refuses writes (issue 21, findings 4, 5, 6a-c).

Real processes, real LMDB files, real tmpfs mounts."""

import json
import os
import random
import subprocess
import sys
import textwrap
import time

import lmdb
import pytest

import kvstore
from kvstore.errors import FormatError, LockFileReplacedError, ReadOnlyError, StoreFailedError, StoreNotFoundError

# A process that keeps a store open and runs the commands it is sent, one
# JSON line each; it answers one JSON line per command.
CHILD = textwrap.dedent("""
    import json, sys
    import kvstore
    db = None
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd[0] == "open":  # path, options
                db = kvstore.open(cmd[1], **cmd[2])
                out = ["ok"]
            elif cmd[0] == "put":
                db.put(cmd[1], cmd[2], durable=True)
                out = ["ok"]
            elif cmd[0] == "get":
                out = ["ok", db.get(cmd[1])]
            elif cmd[0] == "flush":
                db.flush()
                out = ["ok"]
            elif cmd[0] == "close":
                db.close()
                out = ["ok"]
        except Exception as exc:
            out = ["error", type(exc).__name__, str(exc), isinstance(exc, kvstore.KVStoreError)]
        print(json.dumps(out), flush=True)
""")


class Child:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def __call__(self, *cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the child died"
        return json.loads(line)

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture
def children():
    made = []

    def make():
        made.append(Child())
        return made[-1]

    yield make
    for c in made:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait(30)


# ---------------------------------------------------------------- 4: lock.mdb deleted


def _delete_the_lock_file_under(first, children, path, options):
    """first has the store open; lock.mdb is deleted. A second kvstore
    process would create a fresh lock.mdb and write beside the first one:
    refused, writing nothing."""
    assert issubclass(LockFileReplacedError, StoreFailedError) and kvstore.LockFileReplacedError
    assert first("open", path, options) == ["ok"]
    for i in range(5):
        assert first("put", f"k{i}", i) == ["ok"]
    os.unlink(os.path.join(path, "lock.mdb"))
    second = children()
    answer = second("open", path, options)
    assert answer[:2] == ["error", "LockFileReplacedError"], answer
    assert answer[3] and "close every process" in answer[2]
    assert not os.path.exists(os.path.join(path, "lock.mdb"))
    return second


def test_a_deleted_lock_file_stops_other_openers_and_the_old_holder(tmp_path, children):
    # Without the log every write is an LMDB commit, which checks lock.mdb
    # (with the log: the test after this one).
    path = str(tmp_path / "store")
    first = children()
    second = _delete_the_lock_file_under(first, children, path, {"wal": False})

    # The first one notices before its next write, and writes nothing.
    answer = first("put", "after", 1)
    assert answer[:2] == ["error", "LockFileReplacedError"], answer
    assert "deleted" in answer[2] and "reopen" in answer[2]
    assert first("put", "after2", 1)[0] == "error"  # stays refused
    assert first("get", "k4") == ["ok", 4]  # reads go on
    first("close")
    first.stop()
    second.stop()

    with kvstore.open(path, wal=False) as db:
        assert {k: db.get(k) for k in [f"k{i}" for i in range(5)]} == {f"k{i}": i for i in range(5)}
        assert db.get("after") is None and db.get("after2") is None
        db.put("reopened", 1, durable=True)


def _data_file(path):
    with open(os.path.join(path, "data.mdb"), "rb") as f:
        return f.read()


def test_a_deleted_lock_file_with_the_log_stops_the_old_holder_at_its_next_apply(tmp_path, children):
    """With the log a write goes to data.wal, which lock.mdb does not guard
    (the log has locks of its own), so the old holder's writes are still
    acknowledged; its next apply to LMDB (here at flush()) finds lock.mdb
    deleted: LockFileReplacedError, nothing written into data.mdb, every
    write refused after it, naming why. What the log acknowledged is applied
    once the store is reopened."""
    path = str(tmp_path / "store")
    first = children()
    second = _delete_the_lock_file_under(first, children, path, {"wal": True, "apply_interval": 3600})
    before = _data_file(path)
    assert first("put", "logged", 1) == ["ok"]
    answer = first("flush")
    assert answer[:2] == ["error", "LockFileReplacedError"], answer
    assert "deleted" in answer[2] and "reopen" in answer[2]
    answer = first("put", "after", 1)
    assert answer[:2] == ["error", "StoreFailedError"] and "lock.mdb was deleted" in answer[2], answer
    assert first("get", "k4") == ["ok", 4] and first("get", "logged") == ["ok", 1]  # reads go on
    first("close")
    first.stop()
    second.stop()
    assert _data_file(path) == before
    with kvstore.open(path, wal=True) as db:
        assert {k: db.get(k) for k in [f"k{i}" for i in range(5)]} == {f"k{i}": i for i in range(5)}
        assert db.get("logged") == 1 and db.get("after") is None
        db.put("reopened", 1, durable=True)


def _replace_the_lock_file_under(first, path, options, while_replaced):
    """first has the store open and writes "acked"; lock.mdb is deleted and
    another LMDB program (or an older kvstore) opens the store, with a fresh
    lock file; while it has it open: while_replaced()."""
    assert first("open", path, options) == ["ok"]
    assert first("put", "acked", "yes") == ["ok"]
    os.unlink(os.path.join(path, "lock.mdb"))
    other = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import lmdb, sys
            env = lmdb.open({path!r}, max_dbs=10)
            print("open", flush=True)
            sys.stdin.read()
            env.close()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "open\n"
        assert os.path.exists(os.path.join(path, "lock.mdb"))
        while_replaced()
    finally:
        other.stdin.close()
        other.wait(30)
    first("close")
    first.stop()


def test_a_lock_file_replaced_by_another_lmdb_program_stops_the_old_holder(tmp_path, children):
    """The kvstore process that holds the old lock file must not write
    beside the other program. Without the log its next write is an LMDB
    commit, refused (with the log: the test after this one)."""
    path = str(tmp_path / "store")
    first = children()

    def late_write():
        answer = first("put", "late", 1)
        assert answer[:2] == ["error", "LockFileReplacedError"], answer
        assert "replaced" in answer[2]

    _replace_the_lock_file_under(first, path, {"wal": False}, late_write)
    with kvstore.open(path, wal=False) as db:
        assert db.get("acked") == "yes" and db.get("late") is None


def test_a_lock_file_replaced_by_another_lmdb_program_stops_the_old_holders_apply(tmp_path, children):
    """With the log the old holder's write goes to data.wal (acknowledged:
    the other program does not use the log) and its next apply to LMDB is
    refused, writing nothing into data.mdb; the write is applied once the
    store is reopened with nobody beside it."""
    path = str(tmp_path / "store")
    first = children()

    def late_write():
        before = _data_file(path)
        assert first("put", "late", 1) == ["ok"]
        answer = first("flush")
        assert answer[:2] == ["error", "LockFileReplacedError"], answer
        assert "replaced" in answer[2]
        assert _data_file(path) == before

    _replace_the_lock_file_under(first, path, {"wal": True, "apply_interval": 3600}, late_write)
    with kvstore.open(path, wal=True) as db:
        assert db.get("acked") == "yes" and db.get("late") == 1


# ---------------------------------------------------------------- 5: data.mdb emptied


def test_an_emptied_data_file_is_refused_not_recreated(tmp_path):
    path = str(tmp_path / "store")
    with kvstore.open(path) as db:
        db.put_many({f"k{i}": i for i in range(300)}, durable=True)
    data = os.path.join(path, "data.mdb")
    os.truncate(data, 0)
    for readonly in (False, True):
        with pytest.raises(FormatError, match="data.mdb is empty") as info:
            kvstore.open(path, readonly=readonly)
        assert "backup" in str(info.value)
        assert os.path.getsize(data) == 0  # nothing was created over it


def test_an_empty_data_file_left_by_an_unfinished_creation_still_creates(tmp_path):
    """LMDB created lock.mdb and an empty data.mdb, then the creator died
    before writing the meta pages: no commit was ever counted, so it is a
    new store."""
    path = str(tmp_path / "store")
    os.mkdir(path)
    env = lmdb.open(path)  # a lock file that saw no commit (txnid 0)
    env.close()
    os.truncate(os.path.join(path, "data.mdb"), 0)
    with pytest.raises(StoreNotFoundError, match="empty"):
        kvstore.open(path, readonly=True)
    with kvstore.open(path) as db:
        db.put("a", 1, durable=True)
    with kvstore.open(path, readonly=True) as db:
        assert db.get("a") == 1


# ---------------------------------------------------------------- 6a: creating at once


CREATOR = textwrap.dedent("""
    import sys, time
    import kvstore
    base, rounds, start, me = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    failures = []
    for r in range(rounds):
        delay = start + r * 0.04 - time.time()
        if delay > 0:
            time.sleep(delay)
        try:
            with kvstore.open(f"{base}/s{r}") as db:
                db.put(me, r, durable=True)
        except Exception as exc:
            failures.append(f"round {r}: {type(exc).__name__}: {exc}")
    print("\\n".join(failures))
""")


def test_processes_creating_the_same_store_at_once(tmp_path):
    base = str(tmp_path)
    rounds, nproc = 60, 4
    start = time.time() + 1.5  # the processes start together, then every 40 ms
    procs = [subprocess.Popen([sys.executable, "-c", CREATOR, base, str(rounds), str(start), f"p{i}"],
                              stdout=subprocess.PIPE, text=True) for i in range(nproc)]
    failures = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert not any(failures), failures
    for r in range(rounds):
        with kvstore.open(f"{base}/s{r}", readonly=True) as db:
            assert {db.get(f"p{i}") for i in range(nproc)} == {r}


# ---------------------------------------------------------------- 6b, 6c: file systems


def test_writable_open_on_a_read_only_file_system(small_tmpfs):
    path = os.path.join(small_tmpfs, "store")
    with kvstore.open(path) as db:
        db.put("a", 1, durable=True)
    subprocess.run(["mount", "-o", "remount,ro", small_tmpfs], check=True)
    with pytest.raises(ReadOnlyError, match="read-only file system") as info:
        kvstore.open(path)
    assert "readonly=True" in str(info.value)
    with pytest.raises(ReadOnlyError, match="read-only"):
        kvstore.open(os.path.join(small_tmpfs, "new"))
    with kvstore.open(path, readonly=True) as db:
        assert db.get("a") == 1


def test_a_full_disk_is_named(small_tmpfs):
    # Without the log the full disk fails a commit, and so the store (with
    # the log it first fails an append alone: the test after this one).
    path = os.path.join(small_tmpfs, "store")
    with kvstore.open(path, wal=False) as db:
        db.put("base", 1, durable=True)
        with pytest.raises(StoreFailedError) as info:
            for i in range(2000):
                db.put_many({f"k{i}:{j}": os.urandom(3000) for j in range(20)}, durable=True)
        message = str(info.value)
        assert "disk is full" in message and f"free space on the file system holding {path}" in message
        assert "nothing of it was written" in message
        with pytest.raises(StoreFailedError):  # refused until reopened, as before
            db.put("more", 1, durable=True)
        with pytest.raises(StoreFailedError):
            db.close()
    with kvstore.open(path, readonly=True) as db:
        assert db.get("base") == 1


def test_a_full_disk_is_named_by_the_log_and_by_its_apply(small_tmpfs):
    """With the log: the append that finds the disk full fails alone, named
    (DiskFullError); the apply to LMDB that finds it full fails the store,
    named (StoreFailedError), refused until reopened. Every acknowledged
    write is in the log: read back read-only as it is, and applied once
    there is room."""
    path = os.path.join(small_tmpfs, "store")
    acked = {}
    with kvstore.open(path, wal=True, apply_interval=3600, preallocate=False) as db:
        db.put("base", 1, durable=True)
        with pytest.raises(kvstore.DiskFullError) as info:
            for i in range(2000):
                batch = {f"k{i}:{j}": os.urandom(3000) for j in range(20)}
                db.put_many(batch, durable=True)
                acked.update(batch)
        message = str(info.value)
        assert f"the disk holding {path} is full" in message and "this write was not made" in message
        assert len(acked) > 100
        with pytest.raises(StoreFailedError) as info:
            db.flush()  # LMDB cannot take what the log holds
        message = str(info.value)
        assert "disk is full" in message and f"free space on the file system holding {path}" in message
        assert "nothing of it was written" in message
        with pytest.raises(StoreFailedError):  # refused until reopened
            db.put("more", 1, durable=True)
        with pytest.raises(StoreFailedError):
            db.close()
    with kvstore.open(path, readonly=True) as db:
        assert db.get("base") == 1 and all(db.get(k) == v for k, v in acked.items())
    subprocess.run(["mount", "-o", "remount,size=64m", small_tmpfs], check=True)
    with kvstore.open(path, wal=True) as db:
        assert db.get("base") == 1 and all(db.get(k) == v for k, v in acked.items())
        db.put("more", 1, durable=True)


FSIZE = textwrap.dedent("""
    import os, resource, signal, sys
    import kvstore
    path = sys.argv[1]
    with kvstore.open(path, wal=False) as db:
        db.put("base", 1, durable=True)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = os.path.getsize(os.path.join(path, "data.mdb")) + 200_000
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        try:
            for i in range(2000):
                db.put_many({f"k{i}:{j}": os.urandom(3000) for j in range(20)}, durable=True)
            print("no error")
        except kvstore.StoreFailedError as exc:
            print(exc)
        try:
            db.close()
        except kvstore.StoreFailedError:
            pass
""")


def test_the_file_size_limit_is_named(tmp_path):
    # Without the log (FSIZE opens with wal=False): the commit hits the limit.
    path = str(tmp_path / "store")
    out = subprocess.run([sys.executable, "-c", FSIZE, path], capture_output=True, text=True, timeout=120)
    message = out.stdout.strip()
    assert out.returncode == 0, out.stderr
    assert "file-size limit" in message and "ulimit -f" in message, message
    assert "nothing of it was written" in message
    with kvstore.open(path, readonly=True) as db:
        assert db.get("base") == 1


FSIZE_LOG = textwrap.dedent("""
    import os, random, resource, signal, sys
    import kvstore
    path = sys.argv[1]
    db = kvstore.open(path, wal=True, apply_interval=3600)
    db.put("base", 1, durable=True)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = os.path.getsize(os.path.join(path, "data.mdb")) + 200_000
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    acked = 0
    try:
        for i in range(2000):
            db.put_many({f"k{i}:{j}": random.Random(i * 100 + j).randbytes(3000) for j in range(20)},
                        durable=True)
            acked += 1
        print("no error")
    except kvstore.KVStoreError as exc:
        print(type(exc).__name__, exc)
    try:
        db.flush()
        print("no error")
    except kvstore.StoreFailedError as exc:
        print(type(exc).__name__, exc)
    try:
        db.close()
    except kvstore.StoreFailedError:
        pass
    print(acked)
""")


def test_the_file_size_limit_is_named_by_the_log_and_by_its_apply(tmp_path):
    """With the log: the append past RLIMIT_FSIZE fails alone (DiskFullError),
    the apply that would grow data.mdb past it fails the store; both name
    the limit. The acknowledged writes are applied at the next open."""
    path = str(tmp_path / "store")
    out = subprocess.run([sys.executable, "-c", FSIZE_LOG, path], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    append, apply, acked = out.stdout.strip().splitlines()
    assert append.startswith("DiskFullError") and "file-size limit" in append and "ulimit -f" in append
    assert "this write was not made" in append
    assert apply.startswith("StoreFailedError") and "file-size limit" in apply and "ulimit -f" in apply
    assert "nothing of it was written" in apply
    with kvstore.open(path, wal=True) as db:
        assert db.get("base") == 1 and int(acked) > 0
        for i in range(int(acked)):
            assert all(db.get(f"k{i}:{j}") == random.Random(i * 100 + j).randbytes(3000) for j in range(20))
        assert db.get(f"k{acked}:0") is None
