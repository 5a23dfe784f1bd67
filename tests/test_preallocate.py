"""Options.preallocate: zero-filled room kept after the pages LMDB uses, so
that commits stop growing data.mdb (kvstore/environment.py, preallocate)."""

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

import kvstore

MiB = 1 << 20


def data_size(path) -> int:
    return os.path.getsize(os.path.join(path, "data.mdb"))


def wait_for(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def fill(db, n, start=0, size=700):
    for i in range(start, start + n):
        db.put(f"k{i:06d}", {"i": i, "text": "x" * size})


def test_room_is_kept_ahead_of_the_used_pages(store_path):
    with kvstore.open(store_path) as db:
        fill(db, 3000)
        db.flush()
        # at least half the room (1 MiB for a small store) is always there
        assert wait_for(lambda: data_size(store_path) >= db.stats()["map_used"] + MiB // 2), \
            (data_size(store_path), db.stats()["map_used"])
        # more data than the room: the fill keeps ahead, and every value is intact
        fill(db, 3000, start=3000)
        db.flush()
        assert wait_for(lambda: data_size(store_path) >= db.stats()["map_used"] + MiB // 2)
        used = db.stats()["map_used"]
        # an eighth of the used size at most, or 1 MiB, plus a fill step
        assert data_size(store_path) <= used + max(used // 8, MiB) + 2 * MiB
    with kvstore.open(store_path, readonly=True) as db:
        assert len(db) == 6000
        for i in range(0, 6000, 7):
            assert db.get(f"k{i:06d}") == {"i": i, "text": "x" * 700}


def test_off_leaves_the_file_as_lmdb_grows_it(store_path):
    with kvstore.open(store_path, preallocate=False) as db:
        fill(db, 3000)
        db.flush()
        time.sleep(0.3)
        # LMDB alone: the file ends at its last written page
        assert data_size(store_path) <= db.stats()["map_used"]


def test_readonly_and_preallocated_files_open_everywhere(store_path):
    with kvstore.open(store_path) as db:
        fill(db, 500)
        db.flush()
        assert wait_for(lambda: data_size(store_path) > db.stats()["map_used"] + MiB // 2)
    size = data_size(store_path)
    with kvstore.open(store_path, readonly=True) as db:
        assert db.get("k000042")["i"] == 42
    assert data_size(store_path) == size  # a read-only handle never fills


@pytest.mark.skipif(not (shutil.which("mdb_stat") and shutil.which("mdb_dump")),
                    reason="LMDB's tools are not installed (apt-get install -y lmdb-utils)")
def test_lmdb_tools_read_a_preallocated_store(store_path):
    with kvstore.open(store_path) as db:
        fill(db, 1000)
        db.flush()
        assert wait_for(lambda: data_size(store_path) >= db.stats()["map_used"] + MiB // 2)
        used_pages = db.stats()["map_used"] // 4096
    stat = subprocess.run(["mdb_stat", "-e", store_path], capture_output=True, text=True, timeout=60)
    assert stat.returncode == 0, stat.stderr
    assert f"Number of pages used: {used_pages}" in stat.stdout
    dump = subprocess.run(["mdb_dump", "-a", store_path], capture_output=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert dump.stdout.count(b"k000999".hex().encode()) + dump.stdout.count(b"k000999") >= 1


def test_a_fill_the_disk_refuses_costs_no_write(store_path):
    # The child may not grow data.mdb at all (RLIMIT_FSIZE at its current
    # size; SIGXFSZ ignored, so write() returns EFBIG): the fill fails and
    # stops, and the writes that fit in the room already there still commit.
    with kvstore.open(store_path) as db:
        db.put("before", 1)
        db.flush()
        assert wait_for(lambda: data_size(store_path) >= db.stats()["map_used"] + MiB // 2)
    code = textwrap.dedent("""
        import os, resource, signal, sys, time, kvstore
        path = sys.argv[1]
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        size = os.path.getsize(os.path.join(path, "data.mdb"))
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
        with kvstore.open(path) as db:
            for i in range(800):  # ~650 KB: past half the room, so a fill is tried
                db.put(f"k{i}", os.urandom(700).hex(), durable=i % 50 == 0)
            db.flush()
            time.sleep(0.5)
            db.put("after", 2, durable=True)
            tried = db._root._engine.preallocator._allocated == -1  # the failed fill turned it off
        print(os.path.getsize(os.path.join(path, "data.mdb")) == size, tried)
    """)
    p = subprocess.run([sys.executable, "-c", code, store_path], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "True True"
    with kvstore.open(store_path, readonly=True) as db:
        assert db.get("before") == 1 and db.get("after") == 2
        assert len(db) == 802
