"""The write-ahead log (kvstore/wal.py, tail.py, applier.py), on real files
and real processes: buffered writes survive SIGKILL, durable ones survive a
simulated power loss, other processes read acknowledged writes at once, and
damaged logs give clean errors with nothing applied past the damage."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import textwrap

import lmdb
import pytest

import kvstore
from kvstore import killpoints, wal
from kvstore.layout import APPLIED_KEY, FORMAT_KEY, META_DB

pytestmark = pytest.mark.slow


def _child(code: str, *args, env=None, timeout=60):
    """Run code in a fresh interpreter; (returncode, stdout lines)."""
    full_env = dict(os.environ)
    full_env.pop("KVSTORE_KILL_POINT", None)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=full_env)
    return proc.returncode, proc.stdout.splitlines(), proc.stderr


WRITER = """
    import json, os, signal, sys, kvstore
    path, n, durable = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    db = kvstore.open(path, wal=True, flush_interval=3600, apply_interval=3600)
    for i in range(n):
        db.put(f"k{i:05d}", {"i": i, "pad": "x" * (i % 50)}, durable=durable)
        print(i, flush=True)
    with db.batch(durable=durable) as b:
        for i in range(10):
            b.put(f"batch{i}", i)
    print("batch", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _raw_lmdb(path):
    """What LMDB alone holds: {namespace: {key: stored bytes}} and the metadata."""
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=8)
    out = {}
    try:
        with env.begin() as txn:
            names = [bytes(k) for k, _ in txn.cursor()]
        for name in names:
            db = env.open_db(name, create=False)
            with env.begin(db=db) as txn:
                out[name] = {bytes(k): bytes(v) for k, v in txn.cursor()}
    finally:
        env.close()
    return out


def test_buffered_writes_survive_a_sigkill_of_their_process(store_path):
    rc, lines, err = _child(WRITER, store_path, 2000, 0)
    assert rc == -9, err
    acked = [int(x) for x in lines if x.isdigit()]
    assert len(acked) == 2000 and lines[-1] == "batch"
    with kvstore.open(store_path) as db:
        for i in acked:
            assert db.get(f"k{i:05d}") == {"i": i, "pad": "x" * (i % 50)}
        assert [db.get(f"batch{i}") for i in range(10)] == list(range(10))


def test_a_reopen_applies_the_log_to_lmdb_and_a_close_leaves_the_log_empty(store_path):
    rc, lines, err = _child(WRITER, store_path, 300, 0)
    assert rc == -9, err
    before = _raw_lmdb(store_path).get(b"default", {})
    assert b"k00299" not in before  # the writer never applied: only the log had it
    db = kvstore.open(store_path)
    assert db.get("k00299") == {"i": 299, "pad": "x" * (299 % 50)}
    db.close()
    after = _raw_lmdb(store_path)
    assert b"k00299" in after[b"default"] and b"batch9" in after[b"default"]
    gen, pos, _sum = wal.Applied.unpack(after[META_DB][APPLIED_KEY])
    assert pos >= wal.HEADER_SIZE and int(after[META_DB][FORMAT_KEY]) == 4  # a log, keyed records
    log = wal.Log(store_path, readonly=True, create=False, initial_size=1 << 20, max_size=1 << 26)
    try:
        st = log.state()
        assert st.end == st.applied  # nothing left unapplied
    finally:
        log.close()


POWER = """
    import os, signal, sys, kvstore
    path, n = sys.argv[1], int(sys.argv[2])
    db = kvstore.open(path, wal=True, flush_interval=3600, apply_interval=3600)
    for i in range(n):
        durable = i % 3 == 0
        db.put(f"k{i:05d}", i, durable=durable)
        print(("D" if durable else "B"), i, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _index(path):
    with open(os.path.join(path, wal.INDEX_FILE), "rb") as f:
        raw = f.read(4096)
    gen, _z, end, end_sum, synced, applied, applied_sum = struct.unpack_from("<IIQQQQQ", raw, 40)
    return {"gen": gen, "end": end, "synced": synced, "applied": applied}


def _lose_power(path, seed):
    """What a power loss can leave: the log past its last sync replaced by
    garbage (or a torn record), and an index from before the reboot."""
    rng = random.Random(seed)
    idx = _index(path)
    log_path = os.path.join(path, wal.LOG_FILE)
    size = os.path.getsize(log_path)
    with open(log_path, "r+b") as f:
        f.seek(idx["synced"])
        kind = seed % 3
        if kind == 0:
            f.write(bytes(rng.randrange(256) for _ in range(min(4096, size - idx["synced"]))))
        elif kind == 1:  # a torn record: a plausible head, a short body
            f.write(struct.pack("<IIQ", 500, idx["gen"], rng.getrandbits(64)) + b"\x01" * 100)
        else:
            f.truncate(idx["synced"])
            f.truncate(size)
    with open(os.path.join(path, wal.INDEX_FILE), "r+b") as f:
        f.seek(16)
        f.write(b"\xff" * 16)  # another boot's id: the index is rebuilt from the log


@pytest.mark.parametrize("seed", range(3))
def test_durable_writes_survive_a_simulated_power_loss(store_path, seed):
    rc, lines, err = _child(POWER, store_path, 300)
    assert rc == -9, err
    durable = [int(x.split()[1]) for x in lines if x.startswith("D")]
    _lose_power(store_path, seed)
    with kvstore.open(store_path) as db:
        present = {int(k[1:]) for k in map(bytes.decode, db.keys())}
        for i in durable:
            assert db.get(f"k{i:05d}") == i
        # nothing reordered: what survived is a prefix of the writes
        assert present == set(range(len(present)))
        assert len(present) >= max(durable) + 1


CROSS = """
    import sys, time, kvstore
    path, me, other, n, pad = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    db = kvstore.open(path, wal=True, log_initial_size=64 * 1024)
    for i in range(n):
        db.put(f"{me}:{i}", i if not pad else [i, "x" * pad])
        # the other process's acknowledged counter must never go backwards
        db.put(f"{me}:last", i)
    deadline = time.time() + 30
    while db.get(f"{other}:last") != n - 1 and time.time() < deadline:
        time.sleep(0.001)
    seen = db.get(f"{other}:last")
    db.flush()
    missing = [i for i in range(n) if db.get(f"{other}:{i}") != (i if not pad else [i, "x" * pad])]
    print(seen, len(missing), flush=True)
    db.close()
"""


@pytest.mark.parametrize("pad", [0, 300])
def test_another_process_reads_acknowledged_buffered_writes_at_once(store_path, pad):
    """pad 300: the two processes' appends grow the log (from 64 KiB) many
    times over, each growing it while the other knows an older size."""
    kvstore.open(store_path, wal=True, log_initial_size=64 * 1024).close()
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(CROSS), store_path, a, b, "1000",
                               str(pad)], stdout=subprocess.PIPE, text=True, env=env)
             for a, b in (("p", "q"), ("q", "p"))]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    for out in outs:
        assert out == ["999", "0"]


READ_LIVE = """
    import sys, lmdb, kvstore
    env = lmdb.open(sys.argv[1], readonly=True, lock=False, max_dbs=8)
    with env.begin(db=env.open_db(b"default", create=False)) as txn:
        print("in LMDB:", txn.get(b"live") is not None, flush=True)
    env.close()
    db = kvstore.open(sys.argv[1], readonly=True)
    print(db.get("live"), flush=True)
"""


def test_a_read_only_process_sees_a_live_writers_unapplied_writes(store_path):
    with kvstore.open(store_path, wal=True, apply_interval=3600, flush_interval=3600) as db:
        db.put("live", {"v": 1})
        rc, lines, err = _child(READ_LIVE, store_path)
        assert rc == 0, err
        assert lines == ["in LMDB: False", "{'v': 1}"]


def test_flush_applies_the_log_to_lmdb(store_path):
    with kvstore.open(store_path, wal=True, apply_interval=3600) as db:
        db.put_many({f"k{i}": i for i in range(100)})
        st = kvstore.engine.of(db).log.state()
        assert st.applied < st.end
        db.flush()
        st = kvstore.engine.of(db).log.state()
        assert st.applied == st.end and st.synced >= st.applied
        assert len(db) == 100


def test_a_store_without_a_log_is_upgraded_in_place(store_path):
    with kvstore.open(store_path, wal=False) as db:
        db.put("old", 1)
    assert not os.path.exists(os.path.join(store_path, wal.LOG_FILE))
    with kvstore.open(store_path, wal=True) as db:
        assert db.get("old") == 1
        db.put("new", 2)
    assert int(_raw_lmdb(store_path)[META_DB][FORMAT_KEY]) == 4  # a log, keyed records
    with kvstore.open(store_path) as db:  # a store with a log always uses it
        db.put("newer", 3)
        assert (db.get("old"), db.get("new")) == (1, 2)
    assert os.path.exists(os.path.join(store_path, wal.LOG_FILE))


def test_the_log_is_reused_once_applied_and_a_full_log_applies_first(store_path):
    """And a batch too large for the log goes to LMDB directly."""
    with kvstore.open(store_path, wal=True, log_size=256 * 1024, log_initial_size=64 * 1024,
                      apply_interval=3600) as db:
        for i in range(3000):  # about 4x the log's size
            db.put(f"k{i}", "v" * 300)
        assert os.path.getsize(os.path.join(store_path, wal.LOG_FILE)) <= 256 * 1024
        assert db.get("k0") == "v" * 300 and db.get("k2999") == "v" * 300
        # a batch over half of log_size skips the log: written into LMDB
        # directly, after the log, in one transaction
        big = {f"big{i}": os.urandom(1000) for i in range(200)}  # incompressible
        db.put_many(big)
        assert db.get_many(list(big)) == list(big.values())
        assert os.path.getsize(os.path.join(store_path, wal.LOG_FILE)) <= 256 * 1024


# ---------------------------------------------------------------- kill points

KILLED = """
    import sys, time, kvstore
    path = sys.argv[1]
    db = kvstore.open(path, wal=True, flush_interval=0.01, apply_interval=0.01)
    deadline = time.monotonic() + 60
    for i in range(10**9):  # until killed: every point fires within ms, even on a loaded machine
        db.put(f"k{i:07d}", i, durable=i % 2 == 0)
        print(i, flush=True)
        if time.monotonic() > deadline:
            break
    db.flush()
    db.close()
    print("closed", flush=True)
"""


@pytest.mark.parametrize("point", killpoints.POINTS)
def test_kill_points_of_the_log_lose_no_acknowledged_write(store_path, point):
    kvstore.open(store_path, wal=True).close()
    rc, lines, err = _child(KILLED, store_path, env={"KVSTORE_KILL_POINT": f"{point}:3"}, timeout=120)
    assert rc == -9, f"{point} did not fire: {err}"
    acked = [int(x) for x in lines if x.isdigit()]
    with kvstore.open(store_path) as db:
        present = sorted(int(k[1:]) for k in map(bytes.decode, db.keys()))
        for i in acked:
            assert db.get(f"k{i:07d}") == i
        assert present == list(range(len(present)))  # a prefix: nothing partial or reordered
        assert len(present) <= len(acked) + 1  # at most the write the kill interrupted


# ---------------------------------------------------------------- hostile logs


def _store_with_tail(path):
    rc, lines, err = _child(WRITER, path, 50, 0)
    assert rc == -9, err


def test_a_log_with_a_damaged_header_is_refused(store_path):
    _store_with_tail(store_path)
    with open(os.path.join(store_path, wal.LOG_FILE), "r+b") as f:
        f.write(b"garbage!")
    with pytest.raises(kvstore.FormatError, match="not a kvstore write-ahead log"):
        kvstore.open(store_path)


def test_a_log_from_a_newer_format_is_refused(store_path):
    _store_with_tail(store_path)
    with open(os.path.join(store_path, wal.LOG_FILE), "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", 99))
    with pytest.raises(kvstore.FormatError, match="newer kvstore"):
        kvstore.open(store_path)


def test_damage_in_the_acknowledged_part_of_the_log_is_a_corruption_error(store_path):
    _store_with_tail(store_path)
    idx = _index(store_path)
    with open(os.path.join(store_path, wal.LOG_FILE), "r+b") as f:
        f.seek(idx["applied"] + wal.HEAD_SIZE + 5)
        f.write(b"\xee\xee")
    with pytest.raises(kvstore.CorruptionError, match="damaged at byte"):
        kvstore.open(store_path)


@pytest.mark.parametrize("damage", ["huge-length", "random", "truncated"])
def test_after_a_reboot_a_damaged_tail_ends_the_log_and_nothing_past_it_is_applied(store_path, damage):
    _store_with_tail(store_path)
    idx = _index(store_path)
    log_path = os.path.join(store_path, wal.LOG_FILE)
    # the third record onwards is damaged (the first two hold k00000, k00001)
    at = idx["applied"]
    with open(log_path, "rb") as f:
        for _ in range(2):
            f.seek(at)
            length = struct.unpack("<I", f.read(4))[0]
            at += wal.HEAD_SIZE + length
    with open(log_path, "r+b") as f:
        f.seek(at)
        if damage == "huge-length":
            f.write(struct.pack("<IIQ", 0x7FFFFFF0, idx["gen"], 0))
        elif damage == "random":
            f.write(os.urandom(64))
        else:
            f.truncate(at)
    with open(os.path.join(store_path, wal.INDEX_FILE), "r+b") as f:
        f.seek(16)
        f.write(b"\xff" * 16)  # after a reboot: the log is read again from LMDB's APPLIED
    with kvstore.open(store_path) as db:
        assert db.get("k00000") is not None and db.get("k00001") is not None
        assert db.get("k00002") is None and db.get("k00049") is None and db.get("batch0") is None


def test_a_full_disk_fails_the_write_that_hit_it_and_the_store_goes_on(small_tmpfs):
    """ENOSPC while the log grows: that write gets DiskFullError, nothing
    acknowledged is lost, and once there is room again writes work, without
    reopening."""
    path = os.path.join(small_tmpfs, "store")
    acked = {}
    with kvstore.open(path, wal=True, compression="none", log_initial_size=64 * 1024,
                      apply_interval=3600, preallocate=False) as db:
        with pytest.raises(kvstore.DiskFullError, match="disk .* is full"):
            for i in range(10_000):
                value = os.urandom(2000)
                db.put(f"k{i:05d}", value)
                acked[f"k{i:05d}"] = value
        assert len(acked) > 100
        assert all(db.get(k) == v for k, v in acked.items())
        subprocess.run(["mount", "-o", "remount,size=64m", small_tmpfs], check=True)
        db.put("after", b"room again", durable=True)
        assert db.get("after") == b"room again"
    with kvstore.open(path) as db:
        assert all(db.get(k) == v for k, v in acked.items()) and db.get("after") == b"room again"


FSIZE_LOG = """
    import os, resource, signal, sys, kvstore
    path = sys.argv[1]
    db = kvstore.open(path, wal=True, compression="none", apply_interval=3600)
    db.put("before", "ok", durable=True)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # below the log's preallocated size (1 MiB): the append itself crosses the limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    try:
        db.put_many({f"k{i}": os.urandom(3000) for i in range(40)}, durable=True)
        print("no error")
    except kvstore.KVStoreError as exc:
        print(type(exc).__name__, exc)
    db.put("small", "fits", durable=True)
    print("small", db.get("small"), db.get("k1"))
    os._exit(0)
"""


def test_an_append_past_the_file_size_limit_names_the_limit(store_path):
    """An append that crosses RLIMIT_FSIZE inside the log's preallocated
    size is a short write, then EFBIG: the error names the file-size limit,
    not a full disk (it once said "the disk ... is full"). The store goes on."""
    rc, lines, err = _child(FSIZE_LOG, store_path)
    assert rc == 0, err
    assert lines[0].startswith("DiskFullError") and "file-size limit" in lines[0] \
        and "ulimit -f" in lines[0] and "disk" not in lines[0], lines
    assert lines[1] == "small fits None"
    with kvstore.open(store_path) as db:
        assert db.get("before") == "ok" and db.get("small") == "fits" and db.get("k1") is None


def test_a_failure_the_applier_finds_is_named_to_the_writes_after_it(store_path):
    """The apply that finds lock.mdb deleted fails the store in the
    background (or in flush()); the writes refused after it say why, as
    does stats()["failed"] (they once said "cause: None")."""
    db = kvstore.open(store_path, wal=True, apply_interval=3600)
    db.put("k", 1, durable=True)
    os.unlink(os.path.join(store_path, "lock.mdb"))
    with pytest.raises(kvstore.LockFileReplacedError, match="deleted"):
        db.flush()
    with pytest.raises(kvstore.StoreFailedError, match="lock.mdb was deleted") as info:
        db.put("after", 1)
    assert isinstance(info.value.cause, kvstore.LockFileReplacedError)
    assert "lock.mdb was deleted" in db.stats()["failed"]
    with pytest.raises(kvstore.StoreFailedError):
        db.close()
    with kvstore.open(store_path, wal=True) as db:
        assert db.get("k") == 1 and db.get("after") is None


def test_the_log_is_applied_while_durable_writers_keep_the_writer_busy(store_path):
    """Durable writers that keep the writer's queue busy (one leads, the
    others queue behind it) and a long flush_interval once starved the
    applier: nothing was applied until the log filled or the store closed
    (the flusher slept flush_interval, or until a leader handed it the
    queue). Found by test_process_crash.py's kill points with the log."""
    import threading
    import time

    db = kvstore.open(store_path, wal=True, flush_interval=3600)
    stop = threading.Event()

    def write(t):
        i = 0
        while not stop.is_set():
            db.put(f"{t}:{i % 50}", i, durable=True)
            i += 1

    threads = [threading.Thread(target=write, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30  # applies come every apply_interval (50 ms); 30 s: only a bound
    try:
        while db.stats()["log"]["applies"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert db.stats()["log"]["applies"] >= 3, db.stats()["log"]
    db.close()


def test_a_copy_of_data_mdb_alone_opens_and_a_lost_log_is_refused(store_path, tmp_path):
    with kvstore.open(store_path, wal=True) as db:
        db.put_many({f"k{i}": i for i in range(50)})
    copy = str(tmp_path / "copy")
    os.mkdir(copy)
    with open(os.path.join(store_path, "data.mdb"), "rb") as src, \
            open(os.path.join(copy, "data.mdb"), "wb") as dst:
        dst.write(src.read())
    with kvstore.open(copy, readonly=True) as db:  # what the copy holds, as it is
        assert db.get("k49") == 49
    with kvstore.open(copy) as db:  # a new log, after the generation LMDB applied last
        db.put("more", 1)
        assert db.get("k0") == 0 and db.get("more") == 1
    with kvstore.open(copy) as db:
        assert db.get("more") == 1
    os.unlink(os.path.join(store_path, wal.LOG_FILE))  # the index is left: the log was lost
    with pytest.raises(kvstore.FormatError, match="data.wal is missing"):
        kvstore.open(store_path)


OLD_MODE = """
    import sys, time, kvstore
    db = kvstore.open(sys.argv[1], wal=False)
    db.put("old-mode", 1, durable=True)
    print("open", flush=True)
    sys.stdin.readline()
    db.put("old-mode", 2, durable=True)
    db.close()
"""


def test_no_log_is_added_under_a_process_that_uses_the_store_without_one(store_path):
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(OLD_MODE), store_path],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "open\n"
        with kvstore.open(store_path, wal=True) as db:  # it cannot add one now
            assert kvstore.engine.of(db).log is None
            db.put("new-mode", 1)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    with kvstore.open(store_path, wal=True) as db:  # nobody else: the log is added now
        assert kvstore.engine.of(db).log is not None
        assert (db.get("old-mode"), db.get("new-mode")) == (2, 1)


# A writer inside a change of the index: the counter odd, the append lock
# held. "hold": it is descheduled there for a while, then finishes;
# "die": it dies there (its lock goes with it, the counter stays odd).
INSIDE_A_CHANGE = """
import os, struct, sys, time
from kvstore import wal
path, how = sys.argv[1], sys.argv[2]
log = wal.Log(path, readonly=False, create=False, initial_size=1 << 16, max_size=1 << 26)
log.lock()
c = struct.unpack_from("<Q", log.view, 32)[0]
struct.pack_into("<Q", log.view, 32, c + 1)
print("inside", flush=True)
if how == "die":
    os._exit(0)
time.sleep(1.0)
struct.pack_into("<Q", log.view, 32, c + 2)
log.unlock()
"""


@pytest.mark.parametrize("how", ["hold", "die"])
def test_a_read_only_reader_waits_for_a_live_writer_inside_a_change(store_path, how):
    """A reader that finds the index's counter odd for longer than its spin
    (a writer descheduled inside a change, on a loaded machine) took it for a
    dead writer and raised FormatError (bench_apply's reader did). It now
    waits for the append lock; only a writer that died inside the change is
    refused (a read-only handle cannot rebuild the index)."""
    with kvstore.open(store_path, wal=True) as db:
        db.put("k", "v", durable=True)
    child = subprocess.Popen([sys.executable, "-c", INSIDE_A_CHANGE, store_path, how],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "inside\n"
        if how == "die":
            child.wait(30)
            with pytest.raises(kvstore.FormatError, match="kvstore checkpoint"):
                kvstore.open(store_path, readonly=True)
        else:
            with kvstore.open(store_path, readonly=True) as reader:
                assert reader.get("k") == "v"  # waited for the writer, then read
    finally:
        child.wait(30)
    with kvstore.open(store_path) as db:  # a writable open repairs it
        assert db.get("k") == "v"


WRITES_THEN_DIES = """
import os, sys, kvstore
db = kvstore.open(sys.argv[1], wal=True, apply_interval=3600, flush_interval=3600)
db.put("a", [None, "after"])       # buffered: in the kernel, not synced
db.put("ab", [None, "after"])
os._exit(0)
"""


def _lose_power_torn(path: str) -> None:
    """A power loss: the log's first unsynced record torn (56 bytes of a
    record head that claims 300 bytes), what follows it left as it was,
    and the index from another boot."""
    with open(os.path.join(path, wal.INDEX_FILE), "rb") as f:
        index = f.read(96)
    gen, _z, end, _s, synced, _a, _as = struct.unpack_from("<IIQQQQQ", index, 40)
    with open(os.path.join(path, wal.LOG_FILE), "r+b") as f:
        f.seek(synced)
        f.write(struct.pack("<IIQ", 300, gen, 12345) + b"\x07" * 40)
    with open(os.path.join(path, wal.INDEX_FILE), "r+b") as f:
        f.seek(16)
        f.write(os.urandom(16))


def test_a_write_a_power_loss_took_never_comes_back(store_path):
    """The WAL crash model found it: a power loss tore the first record of a
    new generation and kept the record after it; recovery went back to the
    previous generation, so the next one got the same number again; a new
    first record byte for byte equal to the torn one then chained on to the
    kept record, and the next recovery brought back a write the first power
    loss had taken. Recovery now clears the log's file once it is applied."""
    with kvstore.open(store_path, wal=True, apply_interval=3600) as db:
        db.put("base", 1, durable=True)  # closed: applied, the log at a new generation
    subprocess.run([sys.executable, "-c", WRITES_THEN_DIES, store_path], check=True, timeout=60)
    _lose_power_torn(store_path)
    with kvstore.open(store_path, wal=True, apply_interval=3600, readonly=False) as db:
        assert db.get("a") is None and db.get("ab") is None  # not synced: lost, allowed
    # the same write again, durable, by a process that then dies: its record
    # is byte for byte the torn one (same generation number, same chain)
    subprocess.run([sys.executable, "-c", DURABLE_THEN_DIES, store_path], check=True, timeout=60)
    with open(os.path.join(store_path, wal.INDEX_FILE), "r+b") as f:  # another power loss
        f.seek(16)
        f.write(os.urandom(16))
    with kvstore.open(store_path, wal=True) as db:
        assert db.get("a") == [None, "after"]  # durable: kept
        assert db.get("ab") is None, "a write the first power loss took came back"
        assert db.get("base") == 1


DURABLE_THEN_DIES = """
import os, sys, kvstore
db = kvstore.open(sys.argv[1], wal=True, apply_interval=3600, flush_interval=3600)
db.put("a", [None, "after"], durable=True)
os._exit(0)
"""


# ---------------------------------------------------------------- reading the log back in chunks

APPEND_MANY = """
    import random, sys, kvstore
    path, n = sys.argv[1], int(sys.argv[2])
    rng = random.Random(7)
    db = kvstore.open(path, wal=True, flush_interval=3600, apply_interval=3600)
    for i in range(n):
        db.put(f"k{i:05d}", b"v" * rng.choice([1, 15, 16, 17, 300, 5000]))
    db.put("big", b"b" * (3 << 20))  # longer than one read-ahead
    db._engine.writer._log.tail.log.close()  # no apply at exit: the records stay in the log
    import os; os._exit(0)
"""


def _parse_log(path):
    """The log's records by an independent reading: [(end, gen, payload)]."""
    with open(os.path.join(path, wal.LOG_FILE), "rb") as f:
        data = f.read()
    head = struct.Struct("<IIQ")
    at, out = wal.HEADER_SIZE, []
    while at + head.size <= len(data):
        length, gen, _checksum = head.unpack_from(data, at)
        if length == 0:
            break
        at += head.size + length
        out.append((at, gen, data[at - length:at]))
    return out


@pytest.mark.parametrize("read_ahead", [16, 17, 40, 4096, 1 << 20])
def test_records_read_in_chunks_of_any_size_are_the_records(store_path, read_ahead, monkeypatch):
    """Log.records reads READ_AHEAD bytes per system call: heads and
    payloads that straddle a read, and a record longer than one, come back
    whole; the tail (another process's records) and the apply read them so."""
    kvstore.open(store_path, wal=True).close()
    rc, _out, err = _child(APPEND_MANY, store_path, 400)
    assert rc == 0, err
    expected = _parse_log(store_path)
    assert len(expected) == 401
    monkeypatch.setattr(wal, "READ_AHEAD", read_ahead)
    db = kvstore.open(store_path, wal=True, flush_interval=3600, apply_interval=3600)
    try:
        log = db._engine.writer._log.tail.log
        st = log.state()
        got = [(end, bytes(p)) for end, _sum, p in log.records(st.gen, st.applied, st.applied_sum, st.end)]
        assert got == [(end, p) for end, _gen, p in expected]
    finally:
        db.close()  # applies the log through the same reading
    raw = _raw_lmdb(store_path)[b"default"]
    assert len(raw) == 401 and kvstore.open(store_path, readonly=True).get("big") == b"b" * (3 << 20)


@pytest.mark.parametrize("read_ahead", [16, 40, 1 << 20])
def test_a_damaged_record_is_found_whatever_the_read_size(store_path, read_ahead, monkeypatch):
    kvstore.open(store_path, wal=True).close()
    rc, _out, err = _child(APPEND_MANY, store_path, 50)
    assert rc == 0, err
    records = _parse_log(store_path)
    end, _gen, payload = records[20]
    flip = end - len(payload) // 2 - 1
    with open(os.path.join(store_path, wal.LOG_FILE), "r+b") as f:
        f.seek(flip)
        byte = f.read(1)
        f.seek(flip)
        f.write(bytes([byte[0] ^ 0x40]))
    monkeypatch.setattr(wal, "READ_AHEAD", read_ahead)
    log = wal.Log(store_path, readonly=True, create=False, initial_size=1 << 16, max_size=1 << 30)
    try:
        st = log.state()
        assert st is not None
        with pytest.raises(kvstore.CorruptionError, match=f"damaged at byte {records[19][0]} "):
            list(log.records(st.gen, st.applied, st.applied_sum, st.end))
    finally:
        log.close()
