"""The read cache inside a real store: transparent to every read, coherent
with this process's writes and with commits by other processes.

A key enters the cache on its second miss (admission), so tests read a key
twice to cache it (`warm`). tests/test_model.py runs the same operation
sequences against a store with the cache on, one with it off, and a dict.
"""

import random
import subprocess
import sys
import textwrap
import threading

import pytest

import kvstore


def run_py(code, *args):
    """Run code in another Python process (a real second writer)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def warm(db, *keys):
    for _ in range(2):  # the second miss fills
        for k in keys:
            db.get(k)


def cache_stats(db):
    return db.stats()["cache"]


@pytest.fixture
def db(store_path):
    with kvstore.open(store_path) as store:
        yield store


def test_defaults_and_stats_keys(db):
    st = cache_stats(db)
    assert st["max_entries"] == 10_000 and st["max_bytes"] == 64 << 20
    for name in ("hits", "misses", "revalidations", "invalidations", "evictions", "entries",
                 "bytes", "hit_ratio"):
        assert name in st
    assert st["hit_ratio"] is None  # nothing read yet


@pytest.mark.parametrize("bad, error", [({"cache_entries": -1}, ValueError),
                                        ({"cache_bytes": -5}, ValueError),
                                        ({"cache_entries": "many"}, TypeError),
                                        ({"cache_bytes": 1.5}, TypeError)])
def test_bad_cache_options_are_refused_at_open(store_path, bad, error):
    with pytest.raises(error, match="cache_"):
        kvstore.open(store_path, **bad)


@pytest.mark.parametrize("off", [{"cache_entries": 0}, {"cache_bytes": 0}])
def test_zero_turns_the_cache_off(store_path, off):
    with kvstore.open(store_path, **off) as db:
        db.put(b"k", {"v": 1}, durable=True)
        warm(db, b"k")
        assert db.get(b"k") == {"v": 1} and b"k" in db
        assert db.stats()["cache"] is None


def test_second_read_fills_third_hits(db):
    db.put(b"k", {"v": [1, 2]}, durable=True)
    db.flush()  # in LMDB: with a log, a value is served from the overlay until applied
    assert db.get(b"k") == {"v": [1, 2]}
    assert cache_stats(db)["entries"] == 0  # first miss: only marked
    assert db.get(b"k") == {"v": [1, 2]}
    assert cache_stats(db)["entries"] == 1
    assert db.get(b"k") == {"v": [1, 2]} and db[b"k"] == {"v": [1, 2]}
    st = cache_stats(db)
    assert st["hits"] == 2 and st["misses"] == 2 and st["hit_ratio"] == 0.5


@pytest.mark.parametrize("read", ["get", "getitem", "get_many"])
def test_mutating_a_returned_value_never_changes_later_reads(db, read):
    value = {"meta": {"tags": ["a", "b"]}, "turns": [{"n": 1}, {"n": 2}], "emb": [0.5] * 8,
             "raw": b"\x00\x01", "t": None}
    db.put(b"k", value, durable=True)
    db.flush()  # in LMDB, where the cache is filled from
    warm(db, b"k")

    def get():
        if read == "get":
            return db.get(b"k")
        if read == "getitem":
            return db[b"k"]
        return db.get_many([b"k"])[0]

    for _ in range(2):
        got = get()
        assert got == value
        got["meta"]["tags"].append("mutated")
        got["turns"][0]["n"] = 99
        got["emb"][0] = -1.0
        got["new"] = True
    assert get() == value
    assert cache_stats(db)["hits"] >= 2


def test_own_writes_win_and_invalidate(db):
    db.put(b"k", "old", durable=True)
    db.flush()  # in LMDB, where the cache is filled from
    warm(db, b"k")
    db.put(b"k", "new")  # buffered: pending, the overlay wins over the cache
    assert db.get(b"k") == "new" and b"k" in db
    db.flush()
    assert db.get(b"k") == "new"
    assert cache_stats(db)["invalidations"] >= 1
    warm(db, b"k")
    db.delete(b"k")
    assert db.get(b"k", "gone") == "gone" and b"k" not in db
    db.flush()
    assert db.get(b"k", "gone") == "gone" and b"k" not in db
    assert db.get_many([b"k"]) == [None]


def test_two_handles_of_one_path_share_the_cache(store_path):
    with kvstore.open(store_path) as a, kvstore.open(store_path) as b:
        a.put(b"k", 1, durable=True)
        warm(b, b"k")
        a.put(b"k", 2, durable=True)
        assert b.get(b"k") == 2
        assert a.stats()["cache"] == b.stats()["cache"]


def test_an_unrelated_commit_costs_a_revalidation_only(db):
    db.put(b"k", {"v": 1}, durable=True)
    db.flush()  # in LMDB, where the cache is filled from
    warm(db, b"k")
    db.put(b"other", 2, durable=True)
    db.flush()  # committed to LMDB (with a log: applied)
    assert db.get(b"k") == {"v": 1}
    st = cache_stats(db)
    assert st["revalidations"] == 1 and st["invalidations"] == 0
    assert db.get(b"k") == {"v": 1}
    assert cache_stats(db)["hits"] == st["hits"] + 1


def test_other_process_overwrites_deletes_and_batches(db):
    keys = [b"a", b"b", b"c", b"d", b"e"]
    db.put_many({k: {"n": 1, "k": k.decode()} for k in keys}, durable=True)
    ns = db.namespace("episodes")
    ns.put(b"x", ["episode", 1], durable=True)
    warm(db, *keys)
    warm(ns, b"x")
    assert all(k in db for k in keys)
    run_py("""
        import sys, kvstore
        with kvstore.open(sys.argv[1]) as db:
            db.put(b"a", {"n": 2, "k": "a"})             # changed
            db.put(b"b", {"n": 1, "k": "b"})             # rewritten, same content
            db.delete(b"c")                              # deleted
            with db.batch() as batch:                    # a batch over two keys and a namespace
                batch.put(b"d", "batched")
                batch.delete(b"e")
                batch.put(b"x", ["episode", 2], namespace="episodes")
    """, db.path)
    assert db.get(b"a") == {"n": 2, "k": "a"}
    assert db.get(b"b") == {"n": 1, "k": "b"}
    assert db.get(b"c") is None and b"c" not in db
    assert db.get_many([b"d", b"e", b"a"]) == ["batched", None, {"n": 2, "k": "a"}]
    assert b"e" not in db
    assert ns.get(b"x") == ["episode", 2]
    st = cache_stats(db)
    # The changed keys were dropped, b dropped or checked again. Which one
    # depends on who applied the other process's log: this process's
    # applier drops every key it applies (invalidations), while after the
    # other process applied it at close, b (same bytes) is revalidated.
    assert st["invalidations"] >= 4 and st["revalidations"] + st["invalidations"] >= 5, st


def test_contains_does_not_trust_an_entry_after_another_process_deletes(db):
    db.put(b"k", "v", durable=True)
    warm(db, b"k")
    assert b"k" in db
    run_py("""
        import sys, kvstore
        with kvstore.open(sys.argv[1]) as db:
            db.delete(b"k", durable=True)
    """, db.path)
    assert b"k" not in db
    assert db.get(b"k") is None


def test_readonly_handle_sees_a_writer_process(store_path):
    with kvstore.open(store_path) as w:
        w.put(b"k", "one", durable=True)
    with kvstore.open(store_path, readonly=True) as ro:
        warm(ro, b"k")
        assert ro.get(b"k") == "one"
        run_py("""
            import sys, kvstore
            with kvstore.open(sys.argv[1]) as db:
                db.put(b"k", "two", durable=True)
        """, store_path)
        assert ro.get(b"k") == "two"
        assert ro.stats()["cache"]["invalidations"] == 1


def test_get_many_hits_and_misses_together(db):
    db.put_many({f"k{i}".encode(): {"i": i} for i in range(10)}, durable=True)
    db.flush()  # in LMDB, where the cache is filled from
    warm(db, *[f"k{i}".encode() for i in range(5)])
    before = cache_stats(db)["hits"]
    keys = [f"k{i}".encode() for i in range(12)]
    assert db.get_many(keys) == [{"i": i} for i in range(10)] + [None, None]
    assert cache_stats(db)["hits"] - before == 5


def test_eviction_by_entries(store_path):
    with kvstore.open(store_path, cache_entries=5) as db:
        keys = [f"k{i:02d}".encode() for i in range(20)]
        db.put_many({k: {"k": k.decode()} for k in keys}, durable=True)
        db.flush()  # in LMDB, where the cache is filled from
        for k in keys:
            for _ in range(3):  # cached on the second read
                assert db.get(k) == {"k": k.decode()}
        st = cache_stats(db)
        assert st["entries"] == 5 and st["evictions"] == 15
        # the five most recently read are the ones kept
        before = st["hits"]
        for k in keys[-5:]:
            db.get(k)
        assert cache_stats(db)["hits"] - before == 5


def test_eviction_by_bytes(store_path):
    value = {"text": "x" * 1000}
    with kvstore.open(store_path, cache_bytes=20_000, compression="none") as db:
        keys = [f"k{i:02d}".encode() for i in range(30)]
        db.put_many({k: value for k in keys}, durable=True)
        db.flush()  # in LMDB, where the cache is filled from
        for k in keys:
            for _ in range(2):
                assert db.get(k) == value
        st = cache_stats(db)
        assert 0 < st["bytes"] <= 20_000
        assert 0 < st["entries"] < 30 and st["evictions"] > 0


def test_a_value_bigger_than_the_cache_is_read_but_not_cached(store_path):
    with kvstore.open(store_path, cache_bytes=4096) as db:
        big = "y" * 100_000
        db.put(b"big", big, durable=True)
        for _ in range(3):
            assert db.get(b"big") == big
        assert cache_stats(db)["entries"] == 0


def test_namespaces_are_separate(db):
    other = db.namespace("other")
    db.put(b"k", "default", durable=True)
    other.put(b"k", "other", durable=True)
    for _ in range(3):
        assert db.get(b"k") == "default"
        assert other.get(b"k") == "other"


def test_map_growth_keeps_the_versions(store_path):
    with kvstore.open(store_path, map_size=1 << 20, compression="none") as db:
        db.put(b"k", 0, durable=True)
        warm(db, b"k")
        for i in range(40):
            db.put_many({f"{i}:{j}".encode(): b"x" * 4000 for j in range(50)})
            db.put(b"k", i + 1)
        db.flush()
        assert db.stats()["map_size"] > 1 << 20
        assert db.get(b"k") == 40


def test_threads_reading_while_commits_change_keys(db):
    keys = [b"k%d" % i for i in range(20)]
    db.put_many({k: {"k": k.decode(), "gen": 0} for k in keys}, durable=True)
    db.flush()  # in LMDB, where the cache is filled from
    stop = threading.Event()
    errors = []

    last = [0]

    def writer():
        gen = 0
        while not stop.is_set():
            gen += 1
            db.put_many({k: {"k": k.decode(), "gen": gen} for k in keys[:5]}, durable=True)
            last[0] = gen

    def reader(seed):
        rng = random.Random(seed)
        latest = {}  # the generations this reader saw never go back
        try:
            for _ in range(1500):
                k = rng.choice(keys)
                got = db.get(k) if rng.random() < 0.8 else db.get_many([k])[0]
                assert got["k"] == k.decode()
                if k in keys[5:]:
                    assert got["gen"] == 0
                assert got["gen"] >= latest.get(k, 0)
                latest[k] = got["gen"]
                got["gen"] = -1  # mutating what we got changes nothing
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    w = threading.Thread(target=writer)
    w.start()
    readers = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    stop.set()
    w.join()
    assert not errors, errors[0]
    for i, k in enumerate(keys):  # after the last commit, every read is current
        want = {"k": k.decode(), "gen": last[0] if i < 5 else 0}
        assert db.get(k) == db.get_many([k])[0] == want
    assert cache_stats(db)["hits"] > 0
