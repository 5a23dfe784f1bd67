"""TTL: values that expire, namespace default TTLs, refresh, the sweep.

Most tests open the store with a fake clock (kvstore.open(path,
clock=FakeClock())) and move it instead of sleeping; one
uses real short TTLs to prove that wall time works, and one has another
process watch a value expire. tests/test_model.py runs TTL operations
against a dict with expiry; tests/test_ttl_cli.py covers the commands.
"""

import math
import subprocess
import sys
import textwrap
import time

import lmdb
import pytest

import kvstore
import kvstore.ttl
from kvstore.clock import now_ms
from kvstore import CorruptionError, FormatError, InvalidTTLError, ReadOnlyError, TTLMismatchError
from kvstore.codec import format as fmt
from kvstore.writer import ConditionalGroup

T0 = 1_800_000_000.0  # the fake clock's start, seconds


class FakeClock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock():
    """The clock a test passes to kvstore.open(..., clock=clock) and moves."""
    return FakeClock()


def open_store(path, **options):
    """A store whose only commits are the ones a test asks for, and no background sweep
    (with a log: no apply but the ones a test asks for, with flush())."""
    options = {"flush_interval": 3600, "apply_interval": 3600, "ttl_sweep_interval": 0, **options}
    return kvstore.open(path, **options)


def raw_records(where, ns="default"):
    """{key: stored bytes} of a namespace, expired values included: through
    an open store's LMDB environment, or with py-lmdb at a path."""
    if isinstance(where, kvstore.Store):
        dbi = where._engine.dbi(ns, create=False)
        return where._engine.read(lambda txn: {bytes(k): bytes(v) for k, v in txn.cursor(db=dbi)})
    env = lmdb.open(where, max_dbs=10, readonly=True, lock=False)
    try:
        dbi = env.open_db(ns.encode(), create=False)
        with env.begin(db=dbi) as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor()}
    finally:
        env.close()


def meta(path):
    env = lmdb.open(path, max_dbs=10, readonly=True, lock=False)
    try:
        dbi = env.open_db(b"__kvstore__", create=False)
        with env.begin(db=dbi) as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor()}
    finally:
        env.close()


def every_read(db, key):
    """What each kind of read says about key: all must agree."""
    return {
        "get": db.get(key, "missing"),
        "get_many": db.get_many([key])[0],
        "in": key in db,
        "[]": _item(db, key),
        "scan": dict(db.scan()).get(key.encode() if isinstance(key, str) else key, "missing"),
        "keys": (key.encode() if isinstance(key, str) else key) in list(db.keys()),
        "iter": (key.encode() if isinstance(key, str) else key) in list(db),
        "items": dict(db.items()).get(key.encode() if isinstance(key, str) else key, "missing"),
        "len": len(db),
    }


def _item(db, key):
    try:
        return db[key]
    except KeyError:
        return "missing"


def visible(value, n):
    return {"get": value, "get_many": value, "in": True, "[]": value, "scan": value, "keys": True,
            "iter": True, "items": value, "len": n}


def gone(n):
    return {"get": "missing", "get_many": None, "in": False, "[]": "missing", "scan": "missing",
            "keys": False, "iter": False, "items": "missing", "len": n}


# ---------------------------------------------------------------- expiry on every read


@pytest.mark.parametrize("where", ["pending", "committed", "cached", "uncached"])
def test_expired_key_is_invisible_to_every_read_at_once(store_path, clock, where):
    options = {"cache_entries": 0} if where == "uncached" else {}
    with open_store(store_path, clock=clock, **options) as db:
        # the namespace's TTL metadata first: with a log, the group carrying
        # it is written into LMDB directly, and "k" must be able to stay pending
        db.put("enable", 0, ttl=3600)
        db.delete("enable")
        db.flush()
        db.put("other", 1)
        db.put("k", {"v": 1}, ttl=10)
        if where != "pending":
            db.flush()
        if where == "cached":
            db.get("k"), db.get("k")  # the second miss fills the cache
            assert db.stats()["cache"]["entries"] == 1
        assert every_read(db, "k") == visible({"v": 1}, 2)
        clock.advance(9.999)
        assert every_read(db, "k") == visible({"v": 1}, 2)
        if where == "cached":
            assert db.stats()["cache"]["hits"] > 0
        clock.advance(0.001)  # now == expiry: gone
        assert every_read(db, "k") == gone(1)
        assert db.get("other") == 1
        # pending: not in LMDB yet (queued, or with a log in the log only)
        assert (b"k" in raw_records(db)) == (where != "pending")


def test_cache_entry_is_not_served_after_its_expiry(store_path, clock):
    with open_store(store_path, clock=clock) as db:
        db.put("k", "v", ttl=1, durable=True)
        for _ in range(3):
            assert db.get("k") == "v"
        before = db.stats()["cache"]
        assert before["entries"] == 1 and before["hits"] == 1
        clock.advance(1)
        assert db.get("k") is None and "k" not in db
        after = db.stats()["cache"]
        assert after["expirations"] == 1 and after["hits"] == 1 and after["entries"] == 0


def test_keys_without_ttl_never_expire(store_path, clock):
    with open_store(store_path, clock=clock) as db:
        db.put("k", "v", durable=True)
        clock.advance(1e9)
        assert every_read(db, "k") == visible("v", 1)


def test_rewrite_replaces_the_ttl(store_path, clock):
    with open_store(store_path, clock=clock) as db:
        db.put("a", 1, ttl=5)
        db.put("a", 2)  # no TTL now
        db.put("b", 1)
        db.put("b", 2, ttl=5)  # a TTL now
        db.flush()
        clock.advance(5)
        assert db.get("a") == 2 and db.get("b") is None


def test_put_many_and_batch_take_a_ttl(store_path, clock):
    with open_store(store_path, clock=clock) as db:
        sessions = db.namespace("sessions")
        db.put_many({"a": 1, "b": 2}, ttl=2)
        with db.batch() as b:
            b.put("c", 3, ttl=4)
            b.put("d", 4)
            b.put("s", "x", ttl=2, namespace="sessions")
        assert db.expiry("a") == (T0 + 2, 2) and db.expiry("c") == (T0 + 4, 4) and db.expiry("d") is None
        clock.advance(2)
        assert db.get_many(["a", "b", "c", "d"]) == [None, None, 3, 4]
        assert "s" not in sessions
        db.flush()
        clock.advance(2)
        assert sorted(db.keys()) == [b"d"] and len(db) == 1


def test_expiry_and_ttl_are_reported(store_path, clock):
    with open_store(store_path, clock=clock) as db:
        db.put("k", 1, ttl=0.25)
        db.put("plain", 1)
        assert db.expiry("k") == (T0 + 0.25, 0.25)
        assert db.expiry("plain") is None
        with pytest.raises(KeyError):
            db.expiry("missing")
        clock.advance(0.25)
        with pytest.raises(KeyError):
            db.expiry("k")


# ---------------------------------------------------------------- bad ttl values


@pytest.mark.parametrize("bad", [0, -1, -0.5, float("nan"), -math.inf, 1e12, "10", True, None.__class__])
def test_bad_ttl_raises_at_the_call_and_queues_nothing(store_path, bad):
    with open_store(store_path) as db:
        calls = [lambda: db.put("k", 1, ttl=bad), lambda: db.put_many({"k": 1}, ttl=bad),
                 lambda: db.batch().put("k", 1, ttl=bad), lambda: db.namespace("n", ttl=bad),
                 lambda: db.set_default_ttl(bad)]
        for call in calls:
            with pytest.raises(InvalidTTLError) as info:
                call()
            assert isinstance(info.value, ValueError) and isinstance(info.value, kvstore.KVStoreError)
            assert "ttl" in str(info.value)
        assert db.stats()["pending"] == 0 and "k" not in db
        db.put("after", 1, durable=True)  # the writer was not poisoned


def test_infinite_ttl_means_no_expiry_even_with_a_namespace_default(store_path, clock):
    with open_store(store_path, clock=clock) as db:
        ns = db.namespace("sessions", ttl=5)
        ns.put("forever", 1, ttl=math.inf)
        ns.put("default", 1)
        assert ns.expiry("forever") is None and ns.expiry("default") == (T0 + 5, 5)
        with pytest.raises(InvalidTTLError, match="finite"):
            db.namespace("other", ttl=math.inf)


def test_tiny_ttl_is_one_millisecond(store_path, clock):
    with open_store(store_path, clock=clock) as db:
        db.put("k", 1, ttl=1e-6)
        assert db.expiry("k") == (T0 + 0.001, 0.001)


# ---------------------------------------------------------------- namespace defaults


def test_namespace_default_ttl_applies_and_survives_reopen(store_path, clock):
    with open_store(store_path, clock=clock) as db:
        sessions = db.namespace("sessions", ttl=60)
        assert sessions.default_ttl == 60 and db.default_ttl is None
        sessions.put("a", 1)
        sessions.put("b", 1, ttl=5)  # an explicit ttl wins
        db.put("plain", 1)  # other namespaces are not affected
        assert sessions.expiry("a") == (T0 + 60, 60) and sessions.expiry("b") == (T0 + 5, 5)
        assert db.expiry("plain") is None
    with open_store(store_path, clock=clock) as db:
        sessions = db.namespace("sessions")  # no ttl=: whatever it has
        assert sessions.default_ttl == 60
        sessions.put("c", 1)
        assert sessions.expiry("c") == (T0 + 60, 60)
        assert db.namespace("sessions", ttl=60).default_ttl == 60  # the same: fine


def test_changing_a_namespace_default_must_be_explicit(store_path, clock):
    with open_store(store_path, clock=clock) as db:
        db.namespace("sessions", ttl=60)
        with pytest.raises(TTLMismatchError, match="set_default_ttl") as info:
            db.namespace("sessions", ttl=30)
        assert isinstance(info.value, ValueError)
        sessions = db.namespace("sessions")
        sessions.set_default_ttl(30)
        assert db.namespace("sessions", ttl=30).default_ttl == 30
        sessions.put("a", 1)
        assert sessions.expiry("a") == (T0 + 30, 30)
        sessions.set_default_ttl(None)
        assert sessions.default_ttl is None
        sessions.put("b", 1)
        assert sessions.expiry("b") is None
        db.set_default_ttl(10)  # the default namespace has one too
        db.put("c", 1)
        assert db.expiry("c") == (T0 + 10, 10)


def test_read_only_store_cannot_set_a_default(store_path):
    open_store(store_path).close()
    with kvstore.open(store_path, readonly=True) as db:
        with pytest.raises(ReadOnlyError):
            db.namespace("default", ttl=5)
        with pytest.raises(ReadOnlyError):
            db.set_default_ttl(5)
        with pytest.raises(ReadOnlyError):
            db.get("k", refresh_ttl=True)


# ---------------------------------------------------------------- refresh


def test_refresh_ttl_pushes_the_expiry(store_path, clock):
    with open_store(store_path, clock=clock) as db:
        db.put("k", {"v": 1}, ttl=10, durable=True)
        db.put("plain", 1, durable=True)
        clock.advance(6)
        assert db.get("k", refresh_ttl=True) == {"v": 1}
        assert db.expiry("k") == (T0 + 16, 10)  # visible before the refresh commits
        clock.advance(9)
        assert db.get("k") == {"v": 1}
        db.flush()
        assert db.get("k") == {"v": 1} and db.expiry("k") == (T0 + 16, 10)
        assert db.get("plain", refresh_ttl=True) == 1 and db.expiry("plain") is None
        assert db.get("missing", "d", refresh_ttl=True) == "d"
        clock.advance(1)
        assert db.get("k", "gone", refresh_ttl=True) == "gone"  # too late: expired stays expired
        db.flush()
        assert "k" not in db


def test_refreshing_reads_use_the_cache_for_values_without_ttl(store_path, clock):
    with open_store(store_path, clock=clock) as db:
        db.put("plain", {"v": [1]}, durable=True)
        db.flush()  # in LMDB, where the cache is filled from (with a log: applied)
        for _ in range(2):  # the second miss fills the cache
            assert db.get("plain", refresh_ttl=True) == {"v": [1]}
        hits = db.stats()["cache"]["hits"]
        got = db.get("plain", refresh_ttl=True)
        assert got == {"v": [1]} and db.stats()["cache"]["hits"] == hits + 1
        got["v"].append(2)  # the caller's copy
        db.put("other", 1, durable=True)  # an unrelated commit: revalidated, still no refresh
        db.flush()  # with a log: applied
        assert db.get("plain", refresh_ttl=True) == {"v": [1]}
        assert db.stats()["cache"]["revalidations"] >= 1
        # The key gets a TTL value: a refreshing read must see it and refresh it
        db.put("plain", {"v": [3]}, ttl=10, durable=True)
        clock.advance(6)
        assert db.get("plain", refresh_ttl=True) == {"v": [3]}
        assert db.expiry("plain") == (T0 + 16, 10)
        for _ in range(3):  # a cached value with a TTL is never served to a refreshing read
            assert db.get("plain") == {"v": [3]}
        db.flush()
        clock.advance(6)
        assert db.get("plain", refresh_ttl=True) == {"v": [3]}
        assert db.expiry("plain") == (T0 + 22, 10)


def test_refresh_is_skipped_when_it_would_move_the_expiry_by_under_one_percent(store_path, clock):
    with open_store(store_path, clock=clock) as db:
        db.put("k", 1, ttl=100, durable=True)
        clock.advance(0.5)
        db.get("k", refresh_ttl=True)
        assert db.stats()["pending"] == 0 and db.expiry("k") == (T0 + 100, 100)
        clock.advance(0.5)
        db.get("k", refresh_ttl=True)
        assert db.stats()["pending"] == 1 and db.expiry("k") == (T0 + 101, 100)


def test_refresh_never_overwrites_a_newer_value(store_path, clock):
    other = textwrap.dedent("""
        import sys, kvstore
        with kvstore.open(sys.argv[1], ttl_sweep_interval=0) as db:
            db.put("k", "newer", durable=True)
    """)
    with open_store(store_path, clock=clock) as db:
        db.put("k", "old", ttl=10, durable=True)
        clock.advance(5)
        assert db.get("k", refresh_ttl=True) == "old"  # queued, not committed
        subprocess.run([sys.executable, "-c", other, store_path], check=True, timeout=120)
        db.flush()  # the refresh finds another value: it does nothing
        assert db.get("k") == "newer" and db.expiry("k") is None
        # in this process, a put after the refresh read wins as well
        db.put("j", "old", ttl=10, durable=True)
        clock.advance(5)
        db.get("j", refresh_ttl=True)
        db.put("j", "newer")
        db.flush()
        assert db.get("j") == "newer" and db.expiry("j") is None


@pytest.mark.parametrize("cache_entries", [0, 10_000])
def test_refresh_made_from_an_outdated_read_never_shows_the_old_value(store_path, clock, cache_entries):
    # get(refresh_ttl=True) read "old"; "new" committed before its refresh
    # was queued: reads must not go back to "old", before or after the commit.
    with open_store(store_path, clock=clock, cache_entries=cache_entries) as db:
        db.put("k", "old", ttl=10, durable=True)
        record, txnid = db._current(db._engine, b"k")
        db.put("k", "new", durable=True)
        refreshed = fmt.wrap_ttl(bytes(fmt.inner_record(record)), now_ms(clock) + 10_000, 10_000)
        dbi = db._engine.dbi("default", create=False)
        db._engine.writer.submit(ConditionalGroup([("default", dbi, b"k", refreshed)], False, len(refreshed),
                                               kvstore.ttl.Refresh(db._engine, [(record, txnid)])))
        assert db.stats()["pending"] == 1 and db.get("k") == "new"
        db.flush()
        assert db.get("k") == "new" and db.expiry("k") is None


# ---------------------------------------------------------------- the sweep


def test_sweep_deletes_expired_records_through_the_writer(store_path, clock):
    with open_store(store_path, clock=clock, ttl_sweep_batch=7) as db:
        db.put_many({f"t{i:02d}": i for i in range(20)}, ttl=1)
        db.put_many({f"p{i:02d}": i for i in range(5)})
        db.namespace("other").put("x", 1, ttl=1)
        db.flush()
        clock.advance(1)
        sweeper = db._engine.sweeper
        queued = 0
        for _ in range(10):  # bounded passes of 7 records, round the namespaces
            queued += sweeper.sweep_once()
            db.flush()
        assert queued == 21
        assert sorted(raw_records(db)) == [f"p{i:02d}".encode() for i in range(5)]
        assert raw_records(db, "other") == {}
        stats = db.stats()
        assert stats["expired_swept"] == 21 and stats["ttl_sweep_error"] is None
        assert len(db) == 5


def test_sweep_never_deletes_a_key_written_again_since_it_looked(store_path, clock):
    with open_store(store_path, clock=clock) as db:
        for key in ("renewed", "plain", "deleted", "stays"):
            db.put(key, "old", ttl=1)
        db.flush()
        clock.advance(1)
        sweeper = db._engine.sweeper
        dbi = db._engine.dbi("default", create=False)
        expired, _, _ = db._engine.read(lambda txn: sweeper._scan(txn, dbi, None, now_ms(clock)))
        assert sorted(expired) == [b"deleted", b"plain", b"renewed", b"stays"]
        db.put("renewed", "new", ttl=1)  # committed before the sweep's group
        db.put("plain", "new")
        db.delete("deleted")
        db.flush()
        sweeper._submit("default", dbi, expired, now_ms(clock))
        db.flush()
        assert db.get_many(["renewed", "plain"]) == ["new", "new"]
        assert sorted(raw_records(db)) == [b"plain", b"renewed"]
        assert db.stats()["expired_swept"] == 1  # "stays" alone


def test_sweep_judges_by_the_earlier_clock(store_path, clock):
    # A clock set back between the sweep's read and its commit must not let
    # it delete a value that is live by the clock readers use.
    with open_store(store_path, clock=clock) as db:
        db.put("k", 1, ttl=1, durable=True)
        clock.advance(1)
        sweeper = db._engine.sweeper
        dbi = db._engine.dbi("default", create=False)
        seen = now_ms(clock)
        clock.advance(-10)
        db.put("k", 2, ttl=5, durable=True)  # expires at T0 - 4 s: before `seen`
        sweeper._submit("default", dbi, [b"k"], seen)
        db.flush()
        assert db.get("k") == 2


def test_background_sweep_runs_by_itself(store_path):
    with kvstore.open(store_path, ttl_sweep_interval=0.05, flush_interval=0.01) as db:
        db.put_many({f"k{i}": i for i in range(50)}, ttl=0.05, durable=True)
        db.put("plain", 1, durable=True)
        deadline = time.monotonic() + 60
        while db.stats()["expired_swept"] < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert db.stats()["expired_swept"] == 50
        assert list(raw_records(db)) == [b"plain"]


def test_damaged_ttl_prefix_is_reported_and_never_swept(store_path, clock):
    with open_store(store_path, clock=clock) as db:
        db.put("bad", {"v": 1}, ttl=10)
        db.put("good", 1, ttl=10)
        db.flush()
    env = lmdb.open(store_path, max_dbs=10)
    with env.begin(write=True, db=env.open_db(b"default")) as txn:
        record = bytearray(txn.get(b"bad"))
        record[3] ^= 0x01  # one bit of the expiry
        txn.put(b"bad", bytes(record))
    env.close()
    clock.advance(100)
    with open_store(store_path, clock=clock) as db:
        with pytest.raises(CorruptionError, match="TTL prefix") as info:
            db.get("bad")
        assert info.value.key == b"bad"
        assert "bad" in db  # presence needs no decoding
        db._engine.sweeper.sweep_once()
        db.flush()
        assert sorted(raw_records(db)) == [b"bad"]


# ---------------------------------------------------------------- format


@pytest.mark.parametrize("wal", [False, True])
def test_values_without_ttl_keep_their_exact_bytes(store_path, clock, wal):
    values = {"small": {"a": 1}, "big": {"text": "x" * 1000}, "raw": b"\x00\x01"}
    with open_store(store_path, clock=clock, wal=wal) as db:
        db.put_many(values, durable=True)
    stored = raw_records(store_path)
    for key, value in values.items():  # a log: version 3 records, the key in their checksum
        assert stored[key.encode()] == kvstore.codec.encode(value, key=key.encode() if wal else None)
    # without a log: still readable by kvstore without TTL; a log makes it format 4
    assert meta(store_path)[b"format_version"] == (b"4" if wal else b"1")


@pytest.mark.parametrize("wal", [False, True])
def test_ttl_record_layout(store_path, clock, wal):
    with open_store(store_path, clock=clock, wal=wal) as db:
        db.put("k", {"text": "x" * 1000}, ttl=2.5, durable=True)
    record = raw_records(store_path)[b"k"]
    inner = kvstore.codec.encode({"text": "x" * 1000}, key=b"k" if wal else None)
    assert record[fmt.TTL_HEADER_SIZE:] == inner  # the record, unchanged
    version, flags, expires, ttl, check = fmt.TTL_HEADER.unpack_from(record)
    assert (version, flags, expires, ttl) == (2, 0, int(T0 * 1000) + 2500, 2500)
    import xxhash
    assert check == xxhash.xxh32_intdigest(record[:18])
    assert meta(store_path)[b"format_version"] == (b"4" if wal else b"2")  # a log: format 4
    assert meta(store_path)[b"ttl:default"] == bytes(8)  # TTL values, no default


def test_a_reader_without_ttl_refuses_a_ttl_record_as_newer(store_path, clock):
    # The v1 codec (either backend) is what an older kvstore decodes with.
    record = fmt.wrap_ttl(kvstore.codec.encode("v"), 1, 1)
    with pytest.raises(FormatError, match="newer"):
        kvstore.codec.decode(record)
    # and an older kvstore refuses the store itself at open: its format is newer
    with open_store(store_path, clock=clock) as db:
        db.put("k", 1, ttl=1)
    assert int(meta(store_path)[b"format_version"]) > kvstore.layout.BASE_STORE_FORMAT


@pytest.mark.parametrize("damage", ["check", "flags", "zero-ttl", "inner-version", "short"])
def test_damaged_prefix_is_corruption(damage):
    record = bytearray(fmt.wrap_ttl(kvstore.codec.encode("v"), 123, 456))
    if damage == "check":
        record[5] ^= 0x10
    elif damage == "flags":
        record[1] = 1
    elif damage == "zero-ttl":
        record = bytearray(fmt.wrap_ttl(kvstore.codec.encode("v"), 123, 0))
    elif damage == "inner-version":
        record[fmt.TTL_HEADER_SIZE] = 2
    else:
        record = record[:30]
    with pytest.raises(CorruptionError):
        fmt.parse_ttl(bytes(record))


# ---------------------------------------------------------------- restarts, real time, processes


def test_expiry_survives_restarts(store_path, clock):
    with open_store(store_path, clock=clock) as db:
        db.put("k", 1, ttl=30)
    clock.advance(29)
    with open_store(store_path, clock=clock) as db:
        assert db.get("k") == 1
    clock.advance(1)
    with open_store(store_path, clock=clock) as db:
        assert db.get("k") is None and len(db) == 0


def test_real_wall_clock_expiry(store_path):
    with kvstore.open(store_path) as db:
        for where in ("pending", "committed"):
            key = f"k-{where}"
            before = time.time()
            db.put(key, where, ttl=0.2, durable=where == "committed")
            after = time.time()
            if time.time() - before < 0.15:  # not asserted on a machine too slow to tell
                assert db.get(key) == where
            while time.time() < after + 0.25:
                time.sleep(0.02)
            assert db.get(key) is None and key not in db


def test_another_process_sees_the_value_expire(store_path):
    watcher = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time, kvstore
        with kvstore.open(sys.argv[1]) as db:
            sessions = db.namespace("sessions")
            print("ready", flush=True)
            deadline = time.monotonic() + 60
            while sessions.get("k") is None and time.monotonic() < deadline:
                time.sleep(0.01)
            seen = sessions.get("k")
            expires_at, ttl = sessions.expiry("k")
            while time.time() < expires_at + 0.01:
                time.sleep(0.01)
            print(seen, ttl, sessions.get("k"), "k" in sessions, len(sessions), sessions.default_ttl,
                  flush=True)
    """), store_path], stdout=subprocess.PIPE, text=True)
    try:
        with kvstore.open(store_path) as db:
            sessions = db.namespace("sessions")
            assert watcher.stdout.readline().strip() == "ready"
            sessions.set_default_ttl(2)  # long enough for a slow watcher to see the value first
            sessions.put("k", "v", durable=True)  # the namespace's default TTL
            out = watcher.stdout.readline().split()
        assert out == ["v", "2.0", "None", "False", "0", "2.0"]
    finally:
        assert watcher.wait(timeout=60) == 0


def test_namespace_default_set_by_another_process_applies_here(store_path, clock):
    with open_store(store_path, clock=clock, ttl_sweep_interval=0.02) as db:
        sessions = db.namespace("sessions")
        subprocess.run([sys.executable, "-c", textwrap.dedent("""
            import sys, kvstore
            with kvstore.open(sys.argv[1]) as db:
                db.namespace("sessions", ttl=60)
        """), store_path], check=True, timeout=120)
        deadline = time.monotonic() + 60
        while "sessions" not in db._engine.ttl.defaults and time.monotonic() < deadline:
            time.sleep(0.02)  # the sweeper re-reads the metadata every pass
        sessions.put("a", 1)
        assert sessions.expiry("a") == (T0 + 60, 60)


# ---------------------------------------------------------------- the cache alone


def test_cache_entries_of_ttl_records(clock):
    from kvstore.cache import MISS, ReadCache, record_tag

    cache = ReadCache(100, 1 << 20, admit_on_first_miss=True, clock=clock)
    inner = kvstore.codec.encode({"v": 1})
    now = now_ms(clock)
    record = fmt.wrap_ttl(inner, now + 1000, 1000)
    refreshed = fmt.wrap_ttl(inner, now + 1500, 1000)
    assert record_tag(record) != record_tag(refreshed)  # the same value, another expiry
    assert record_tag(record)[fmt.TTL_HEADER_SIZE:] == inner[:fmt.HEADER_SIZE]
    txnids = (7, 6)  # what LastTxnid.view reads
    assert cache.lookup("ns", b"k", txnids) is MISS
    cache.fill("ns", b"k", {"v": 1}, record, 7)
    assert cache.lookup("ns", b"k", txnids) == {"v": 1}
    assert cache.lookup_at("ns", b"k", 7) == {"v": 1} and cache.contains("ns", b"k", txnids)
    assert cache.revalidate("ns", b"k", refreshed, 8) is MISS  # a refresh is a new version
    cache.fill("ns", b"k", {"v": 1}, refreshed, 8)
    clock.advance(1.499)
    assert cache.lookup("ns", b"k", (8, 7)) == {"v": 1}
    clock.advance(0.001)
    assert not cache.contains("ns", b"k", (8, 7))
    assert cache.lookup("ns", b"k", (8, 7)) is MISS
    assert cache.stats()["expirations"] == 1 and len(cache) == 0


# ---------------------------------------------------------------- asyncio


def test_asyncio_api_takes_ttls(store_path, clock):
    import asyncio

    import kvstore.aio

    async def main():
        async with kvstore.aio.open(store_path, clock=clock, ttl_sweep_interval=0) as db:
            await db.aput("a", 1, ttl=5, durable=True)
            await db.aput_many({"b": 2}, ttl=10)
            sessions = await db.anamespace("sessions", ttl=60)
            await sessions.aput("s", 1)
            async with db.abatch() as b:
                b.put("c", 3, ttl=1)
            clock.advance(3)
            assert await db.aget("b", refresh_ttl=True) == 2
            assert db.store.expiry("b") == (T0 + 13, 10)
            assert sessions.store.expiry("s") == (T0 + 60, 60)
            assert await db.aget_many(["a", "b", "c"]) == [1, 2, None]
            clock.advance(2)
            assert await db.aget("a") is None and not await db.acontains("a")

    asyncio.run(main())


# ---------------------------------------------------------------- the clock option


def test_the_clock_is_an_option_of_each_store(tmp_path):
    # Two stores, two clocks: each judges expiry by its own, nothing global.
    early, late = FakeClock(), FakeClock(T0 + 100)
    with open_store(str(tmp_path / "a"), clock=early) as a, open_store(str(tmp_path / "b"), clock=late) as b:
        assert a.options.clock is early and b.options.clock is late
        a.put("k", 1, ttl=10)
        b.put("k", 1, ttl=10)
        assert a.expiry("k") == (T0 + 10, 10) and b.expiry("k") == (T0 + 110, 10)
        early.advance(10)
        assert a.get("k") is None and b.get("k") == 1
    assert kvstore.Options().clock is time.time


def test_one_clock_per_path_in_a_process(store_path, clock):
    with pytest.raises(TypeError, match="clock"):
        kvstore.open(store_path, clock=1_800_000_000.0)
    with open_store(store_path, clock=clock) as db:
        with open_store(store_path, clock=clock) as again:  # the same clock: the same engine
            assert again.options.clock is clock
        with pytest.raises(ValueError, match="another clock"):
            open_store(store_path)  # time.time: the engine's cache and sweep judge by `clock`
        with pytest.raises(ValueError, match="another clock"):
            open_store(store_path, clock=FakeClock())  # an equal time is not the same clock
        db.put("k", 1, ttl=1, durable=True)
        assert db.get("k") == 1
    with open_store(store_path, clock=FakeClock(T0 + 1)) as db:  # closed: another clock may open it
        assert db.get("k") is None
