"""`kvstore stat`: the map size and readers it reports (issue 20), and where
the file's bytes go (pages by kind, fill, free pages, preallocated room;
issue 17). Real stores; no timing asserted."""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap

import kvstore
import kvstore.cli
from kvstore import engine
from kvstore.cli import main

MiB = 1 << 20
RECORDS = 2500


def stat(path, *more):
    out = io.StringIO()
    status = main(["stat", str(path), *more], out=out)
    assert status == 0
    return out.getvalue()


def grown_store(path) -> int:
    """A store that outgrew a 2 MiB map: closed, and the map size its writer had."""
    db = kvstore.open(str(path), map_size=2 * MiB)
    for i in range(RECORDS):
        db.put(b"k%05d" % i, os.urandom(1000).hex())  # ~2,000 bytes of msgpack, ~1,100 stored
    db.flush()
    map_size = engine.of(db).info()["map_size"]
    db.close()
    assert 2 * MiB < map_size < 64 * MiB  # it grew, and stays below a read-only open's default
    return map_size


def test_stat_shows_the_map_size_the_store_was_written_with(tmp_path):
    path = tmp_path / "store"
    map_size = grown_store(path)
    env = json.loads(stat(path, "--json"))["environment"]
    assert env["map_size"] == map_size
    assert env["map_used"] <= env["map_size"]
    pct = 100.0 * env["map_used"] / map_size
    assert f"{kvstore.commands._common.human_size(map_size)}, " in stat(path)
    assert f"({pct:.1f}%)" in stat(path)


def test_stat_counts_open_read_transactions_not_its_own_reader_slots(tmp_path):
    path = tmp_path / "store"
    with kvstore.open(str(path)) as db:
        db.put("k", "v", durable=True)
        db.get("k")
    assert json.loads(stat(path, "--json"))["environment"]["readers"] == 0
    assert "0 read transactions open" in stat(path)
    # another process holds a read transaction open while stat runs
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, lmdb
        env = lmdb.open({str(path)!r}, readonly=True, max_dbs=8, lock=True)
        txn = env.begin()
        print("reading", flush=True)
        sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "reading"
        assert json.loads(stat(path, "--json"))["environment"]["readers"] == 1
    finally:
        holder.communicate("")


def test_stat_accounts_for_every_page_of_the_file(tmp_path):
    path = tmp_path / "store"
    grown_store(path)
    doc = json.loads(stat(path, "--json"))
    env, pages = doc["environment"], doc["pages"]
    assert pages["total"] * env["page_size"] == env["map_used"]
    assert pages["total"] == pages["meta"] + pages["branch"] + pages["leaf"] + pages["overflow"] + pages["free"]
    assert pages["problems"] == 0
    assert 0 < pages["fill"] <= 1 and pages["overflow_fill"] is None  # no value needs an overflow run
    assert pages["bytes_per_entry"] == env["map_used"] / RECORDS
    assert env["preallocated_bytes"] == env["file_size"] - env["map_used"]
    assert 0 < doc["namespaces"]["default"]["fill"] <= 1
    text = stat(path)
    assert f"{pages['leaf']:,} leaf (" in text and "zero-filled past the last page" in text


def test_stat_counts_overflow_pages_and_how_full_they_are(tmp_path):
    path = tmp_path / "store"
    with kvstore.open(str(path), compression="none") as db:
        db.put("big", b"x" * 5000, durable=True)  # 5,018 stored bytes: a run of 2 pages of 4 KiB
    pages = json.loads(stat(path, "--json"))["pages"]
    assert pages["overflow"] == 2
    assert pages["overflow_fill"] == 1 - (2 * 4096 - 16 - 5018) / (2 * 4096)


# ---------------------------------------------------------------- --watch (issue 20)


class _Writing:
    """A thread writing puts and batches into db until stopped."""

    def __init__(self, db):
        import threading

        self.db = db
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        i = 0
        while not self.stop.is_set():
            self.db.put(f"k{i}", {"i": i})
            if i % 20 == 0:
                with self.db.batch() as b:
                    for j in range(5):
                        b.put(f"b{i}-{j}", j)
            i += 1
            self.stop.wait(0.001)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_stat_watch_prints_a_line_per_interval(tmp_path):
    path = tmp_path / "store"
    with kvstore.open(str(path)) as db, _Writing(db):
        text = stat(path, "--watch", "0.05", "--count", "3")
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["time", "commits/s", "groups/s", "ops/s", "caches", "hit", "ratio", "since", "open",
                                "log", "used", "unapplied", "map"]
    for line in lines[1:]:
        assert " of 64.0 MiB (" in line  # map use against the map size


def test_stat_watch_json_counts_the_writes_of_other_handles(tmp_path):
    path = tmp_path / "store"
    with kvstore.open(str(path)) as db, _Writing(db):
        docs = [json.loads(line) for line in stat(path, "--watch", "0.05", "--count", "3", "--json").splitlines()]
    assert len(docs) == 3
    ops = sum(d["ops_per_second"] * d["seconds"] for d in docs)
    groups = sum(d["groups_per_second"] * d["seconds"] for d in docs)
    assert ops > groups > 0  # batches hold several ops: more ops than groups
    for d in docs:
        assert d["commits_per_second"] >= 0 and d["log_used_bytes"] >= d["log_unapplied_bytes"] >= 0
        assert 0 < d["map_used"] <= d["map_size"]


def test_stat_watch_without_a_log_shows_no_groups_or_ops(tmp_path):
    path = tmp_path / "store"
    with kvstore.open(str(path), wal=False) as db:
        db.put("k", 1, durable=True)
    line = stat(path, "--watch", "0.01", "--count", "1").splitlines()[1]
    assert line.split()[1:4] == ["0.0", "-", "-"]  # commits/s, groups/s, ops/s
    doc = json.loads(stat(path, "--watch", "0.01", "--count", "1", "--json"))
    assert doc["ops_per_second"] is None and doc["log_used_bytes"] is None


def test_stat_watch_ends_cleanly_on_ctrl_c(tmp_path):
    path = tmp_path / "store"
    with kvstore.open(str(path)) as db:
        db.put("k", 1, durable=True)
    proc = subprocess.Popen([sys.executable, "-m", "kvstore", "stat", str(path), "--watch", "0.05"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().split()[0] == "time"
        assert " of " in proc.stdout.readline()  # a sample: the watch is running
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert err == ""  # no traceback, no "interrupted"


def test_stat_watch_arguments_are_checked(tmp_path):
    path = tmp_path / "store"
    with kvstore.open(str(path)) as db:
        db.put("k", 1, durable=True)
    for more, said in ((["--count", "2"], "--count goes with --watch"),
                       (["--watch", "0"], "--watch takes a number of seconds > 0"),
                       (["--watch", "1", "--count", "0"], "--count takes a number of lines >= 1")):
        err = io.StringIO()
        args = kvstore.cli._parse(kvstore.cli.build_parser(), ["stat", str(path), *more])
        args.clock = None
        assert kvstore.commands.dispatch(args, io.StringIO(), err) == 2
        assert said in err.getvalue()


# ---------------------------------------------------------------- --watch: the read caches of other processes

READER = textwrap.dedent("""
    import json, sys, kvstore
    path, hot, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    db = kvstore.open(path)
    def read(n):
        for _ in range(n):
            for i in range(hot):
                assert db.get(f"k{i:03d}") == i
        print(json.dumps(db.stats()["cache"]), flush=True)
    read(rounds)
    for line in sys.stdin:  # "again": one more round, all hits; EOF: close
        read(1)
    """)


class _Reader:
    """A process reading `hot` keys `rounds` times through its read cache,
    then one more round (all hits) for each line given; its cache stats
    after each. The store stays open until it is told to close."""

    def __init__(self, path, hot, rounds):
        self.proc = subprocess.Popen([sys.executable, "-c", READER, str(path), str(hot), str(rounds)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.stats = json.loads(self.proc.stdout.readline())

    def again(self):
        self.proc.stdin.write("again\n")
        self.proc.stdin.flush()
        self.stats = json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.communicate("", timeout=60)


def _readers_store(path, keys=100):
    with kvstore.open(str(path)) as db:
        db.put_many({f"k{i:03d}": i for i in range(keys)})


def _ratio(*stats):
    served = sum(s["hits"] + s["revalidations"] for s in stats)
    return served / (served + sum(s["misses"] for s in stats))


def _published(path, n):
    """Wait until n processes have published counters that stopped moving."""
    import time

    from kvstore import cachestats

    last = None
    for _ in range(200):
        slots = cachestats.read_slots(str(path))
        if len(slots) == n and slots == last:
            return
        last = slots
        time.sleep(0.3)  # > CACHE_STATS_INTERVAL
    raise AssertionError(f"{n} publishers expected, cache.stats has {last}")


def test_stat_watch_shows_the_hit_ratio_of_the_processes_reading(tmp_path):
    path = tmp_path / "store"
    _readers_store(path)
    # first misses mark a key, second ones fill, then hits (cache.py):
    # 50 keys x 3 rounds: 1/3 hits; 10 keys x 10 rounds: 80%
    a, b = _Reader(path, 50, 3), _Reader(path, 10, 10)
    try:
        assert (a.stats["hit_ratio"], b.stats["hit_ratio"]) == (50 / 150, 80 / 100)
        _published(path, 2)
        doc = json.loads(stat(path, "--watch", "0.05", "--count", "1", "--json"))
        assert doc["cache_processes"] == 2
        assert doc["cache_hit_ratio_since_open"] == _ratio(a.stats, b.stats) == 130 / 250
        assert doc["cache_hit_ratio"] is None and doc["cache_reads_per_second"] == 0  # idle meanwhile
        # a read-only process does not publish (it writes nothing beside the store)
        with kvstore.open(str(path), readonly=True) as ro:
            ro.get("k000")
            line = stat(path, "--watch", "0.05", "--count", "1").splitlines()[1].split()
        assert line[4:7] == ["2", "-", "52.0%"]  # caches, hit ratio, since open

        # reads during the watch: the interval's ratio is theirs alone
        watch = subprocess.Popen([sys.executable, "-m", "kvstore", "stat", str(path), "--watch", "2", "--count",
                                  "2", "--json"], stdout=subprocess.PIPE, text=True)
        try:
            _wait_until_open(watch.pid)
            a.again()
            b.again()  # 60 hits
            docs = [json.loads(line) for line in watch.communicate(timeout=120)[0].splitlines()]
        finally:
            watch.kill()
        assert len(docs) == 2
        reads = [d["cache_reads_per_second"] * d["seconds"] for d in docs]
        assert round(sum(reads)) == 60
        assert all(d["cache_hit_ratio"] == 1.0 for d, n in zip(docs, reads) if round(n))
        assert docs[-1]["cache_hit_ratio_since_open"] == _ratio(a.stats, b.stats) == 190 / 310
    finally:
        a.close()
        b.close()
    _published(path, 0)  # closed: their slots are free
    doc = json.loads(stat(path, "--watch", "0.01", "--count", "1", "--json"))
    assert doc["cache_processes"] == 0 and doc["cache_hit_ratio_since_open"] is None


def _wait_until_open(pid):
    """Wait until the watch process has the store open (its first sample
    follows at once): LMDB's locks on lock.mdb, which /proc/locks lists
    with its pid."""
    import time

    for _ in range(600):
        if any(f" {pid} " in line for line in open("/proc/locks")):
            time.sleep(0.2)
            return
        time.sleep(0.05)
    raise AssertionError("the watch did not open the store")
