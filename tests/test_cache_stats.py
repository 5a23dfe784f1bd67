"""cache.stats (kvstore/cachestats.py): each writable process with a read
cache publishes its counters to a slot; the slots of closed and dead
processes are free and taken again; read-only processes, forked children's
inherited descriptors and files of another version publish nothing; the
commands that copy or check a store do not mind the file. Real processes,
real files."""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import kvstore
from kvstore import cachestats
from kvstore.cli import main

HOLDER = textwrap.dedent("""
    import json, os, sys, kvstore
    db = kvstore.open(sys.argv[1], readonly=sys.argv[2] == "ro")
    for _ in range(3):
        db.get("k")
    print(os.getpid(), flush=True)
    sys.stdin.read()
    """)


def _store(path):
    with kvstore.open(str(path)) as db:
        db.put("k", "v", durable=True)
    return str(path)


def _hold(path, mode="rw"):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, path, mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert int(proc.stdout.readline()) == proc.pid
    return proc


def _slots(path, want, timeout=30.0):
    """The live slots, once their number is `want` and a publish has passed."""
    deadline = time.monotonic() + timeout
    while True:
        slots = cachestats.read_slots(path)
        if slots is not None and len(slots) == want and all(s.hits + s.misses for s in slots):
            return slots
        if time.monotonic() > deadline:
            raise AssertionError(f"{want} slots expected, got {slots}")
        time.sleep(0.05)


def test_a_process_publishes_its_counters_and_frees_its_slot_when_it_closes(tmp_path):
    path = _store(tmp_path / "store")
    proc = _hold(path)
    try:
        (slot,) = _slots(path, 1)
        assert (slot.slot, slot.pid) == (0, proc.pid)
        assert slot.hits + slot.revalidations + slot.misses == 3
    finally:
        proc.communicate("", timeout=60)
    assert cachestats.read_slots(path) == []
    with open(os.path.join(path, cachestats.STATS_FILE), "rb") as f:
        assert f.read(64) == cachestats.HEADER_BYTES and len(f.read()) == 255 * 64


def test_the_slot_of_a_killed_process_is_taken_again(tmp_path):
    path = _store(tmp_path / "store")
    a, b = _hold(path), _hold(path)
    try:
        slots = _slots(path, 2)
        b_slot = next(s.slot for s in slots if s.pid == b.pid)
        b.kill()  # SIGKILL: no close; the kernel drops its lock
        b.wait()
        assert [s.pid for s in cachestats.read_slots(path)] == [a.pid]
        c = _hold(path)
        try:
            slots = _slots(path, 2)
            assert {s.pid: s.slot for s in slots}[c.pid] == b_slot
        finally:
            c.communicate("", timeout=60)
    finally:
        a.communicate("", timeout=60)
        b.communicate()


def test_a_readonly_process_publishes_nothing(tmp_path):
    path = _store(tmp_path / "store")
    os.remove(os.path.join(path, cachestats.STATS_FILE))  # the writer that made the store left it
    proc = _hold(path, "ro")
    try:
        time.sleep(0.3)  # > CACHE_STATS_INTERVAL
        assert not os.path.exists(os.path.join(path, cachestats.STATS_FILE))
        assert cachestats.read_slots(path) == []
    finally:
        proc.communicate("", timeout=60)


def test_a_forked_child_does_not_keep_its_parents_slot(tmp_path):
    path = _store(tmp_path / "store")
    script = textwrap.dedent(f"""
        import os, sys, time, kvstore
        db = kvstore.open({path!r})
        db.get("k")
        child = os.fork()
        if child == 0:
            db.get("k")  # the child reopens the store: a slot of its own
            print("child", os.getpid(), flush=True)
            time.sleep(120)  # killed by the test before (stdin is the parent's)
            os._exit(0)
        time.sleep(0.5)
        print("parent", os.getpid(), flush=True)
        sys.stdin.readline()  # then the parent closes; the child lives on
        db.close()
        print("closed", flush=True)
        sys.stdin.readline()
        """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    pids = {}
    try:
        pids = dict(proc.stdout.readline().split() for _ in range(2))
        slots = _slots(path, 2)
        assert {s.pid for s in slots} == {int(pids["child"]), int(pids["parent"])}
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "closed"
        assert [s.pid for s in cachestats.read_slots(path)] == [int(pids["child"])]
    finally:
        if "child" in pids:
            os.kill(int(pids["child"]), signal.SIGKILL)
        proc.kill()
        proc.wait(timeout=60)


def test_a_file_of_another_version_is_left_alone(tmp_path):
    path = _store(tmp_path / "store")
    stats_file = os.path.join(path, cachestats.STATS_FILE)
    other = b"KVCSTAT2" + bytes(64 * 256 - 8)
    with open(stats_file, "wb") as f:
        f.write(other)
    proc = _hold(path)
    try:
        time.sleep(0.3)
        assert cachestats.read_slots(path) is None
        out = io.StringIO()
        assert main(["stat", path, "--watch", "0.01", "--count", "1", "--json"], out=out) == 0
        assert json.loads(out.getvalue())["cache_processes"] is None
    finally:
        proc.communicate("", timeout=60)
    with open(stats_file, "rb") as f:
        assert f.read() == other


def test_check_compact_and_backup_do_not_mind_the_file(tmp_path):
    path = _store(tmp_path / "store")
    proc = _hold(path)
    try:
        _slots(path, 1)
        for argv in (["check", path], ["compact", path, "-o", str(tmp_path / "compacted")],
                     ["backup", path, str(tmp_path / "backup")]):
            assert main(argv, out=io.StringIO()) == 0, argv
        for copy in ("compacted", "backup"):
            assert cachestats.STATS_FILE not in os.listdir(tmp_path / copy)
            with kvstore.open(str(tmp_path / copy), readonly=True) as db:
                assert db.get("k") == "v"
    finally:
        proc.communicate("", timeout=60)
