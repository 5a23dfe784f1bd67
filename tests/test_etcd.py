"""What is particular to stores on etcd (kvstore/etcd/), on a real 3-member
cluster (tests/support/etcd_cluster.py): the limits of one etcd transaction,
an unreachable cluster, the missing extra, the grouping of writes, the read
cache across processes, and the loss of the leader under durable writers."""

import os
import subprocess
import sys
import threading
import time

import pytest

import kvstore
from support.etcd_cluster import free_port


def test_a_put_many_over_max_txn_ops_raises_before_sending_and_names_the_flag(etcd_url):
    with kvstore.open(etcd_url) as db:
        with pytest.raises(kvstore.InvalidArgumentError, match=r"max_txn_ops=128.*--max-txn-ops"):
            db.put_many({f"k{i}": i for i in range(129)}, durable=True)
        with pytest.raises(kvstore.InvalidArgumentError, match="--max-txn-ops"):
            with db.batch() as b:
                for i in range(129):
                    b.put(f"b{i}", i)
        db.put_many({f"k{i}": i for i in range(128)}, durable=True)  # exactly the limit
        assert len(db) == 128 and db.get("b0") is None


def test_a_request_over_max_request_bytes_raises_before_sending_and_names_the_flag(etcd_url):
    blob = os.urandom(400_000)  # incompressible
    with kvstore.open(etcd_url) as db:
        with pytest.raises(kvstore.InvalidArgumentError, match="--max-request-bytes"):
            db.put_many({f"k{i}": blob for i in range(4)}, durable=True)
        assert db.get("k0") is None
        db.put_many({f"k{i}": blob for i in range(3)}, durable=True)
        assert db.get("k2") == blob


def test_a_limit_set_above_the_clusters_is_refused_by_the_cluster_with_the_flag_named(etcd_url):
    with kvstore.open(etcd_url, max_txn_ops=200) as db:
        with pytest.raises(kvstore.InvalidArgumentError, match="--max-txn-ops"):
            db.put_many({f"k{i}": i for i in range(150)}, durable=True)
        assert db.get("k0") is None


def test_an_unreachable_cluster_raises_unavailable_after_bounded_retries():
    url = f"etcd://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/x"
    started = time.monotonic()
    with pytest.raises(kvstore.UnavailableError, match="majority") as info:
        kvstore.open(url, retry_time=0.5)
    assert time.monotonic() - started < 5
    assert isinstance(info.value, kvstore.KVStoreError)


def test_options_of_local_stores_only_are_refused_by_name(etcd_url):
    with pytest.raises(kvstore.NotSupportedError, match="map_size"):
        kvstore.open(etcd_url, map_size=1 << 30)
    with pytest.raises(kvstore.InvalidArgumentError, match="no_such"):
        kvstore.open(etcd_url, no_such=1)
    with pytest.raises(kvstore.InvalidArgumentError):
        kvstore.open("etcd:///x")


def test_without_the_extra_kvstore_works_and_an_etcd_url_says_what_to_install(tmp_path):
    code = (
        "import sys; sys.modules['pyetcd'] = None; sys.modules['grpc'] = None\n"
        "import kvstore\n"
        f"db = kvstore.open({str(tmp_path / 's')!r}); db.put('a', 1, durable=True); assert db.get('a') == 1\n"
        "try:\n"
        "    kvstore.open('etcd://127.0.0.1:2379/x')\n"
        "except kvstore.KVStoreError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("NotSupportedError") and "pip install 'kvstore[etcd]'" in out.stdout


def test_namespace_options_and_refusals(etcd_url):
    with kvstore.open(etcd_url) as db:
        with pytest.raises(kvstore.NotSupportedError, match="dictionar"):
            db.train_dictionary()
        with pytest.raises(kvstore.NotSupportedError, match="NUL"):
            db.namespace("a\x00b")
    with kvstore.open(etcd_url, readonly=True) as ro:
        with pytest.raises(kvstore.ReadOnlyError):
            ro.put("a", 1)


def test_buffered_puts_share_etcd_transactions(etcd_url):
    with kvstore.open(etcd_url) as db:
        for i in range(1000):
            db.put(f"k{i}", i)
        db.flush()
        stats = db.stats()
        assert stats["ops_committed"] == 1000
        assert stats["commits"] <= 100, stats  # grouped: at most max_txn_ops per transaction
        assert stats["ops_per_commit"]["max"] <= 128


def _in_threads(n, work):
    """work(t) in n threads, t = 0..n-1; returns when all are done."""
    threads = [threading.Thread(target=work, args=(t,)) for t in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_durable_writes_of_concurrent_threads_share_round_trips(etcd_url):
    with kvstore.open(etcd_url, durable=True) as db:
        def work(t):
            for i in range(25):
                db.put(f"{t}:{i}", i)

        _in_threads(16, work)
        stats = db.stats()
        assert stats["ops_committed"] == 400
        assert stats["ops_per_commit"]["max"] > 1, stats
        assert len(db) == 400



def test_the_sender_lingers_for_every_durable_writer_it_just_answered(etcd_url):
    """commit_linger waits for all the callers the last transaction answered
    (not only the first to write again), so 16 durable writers keep sharing
    one transaction instead of splitting into two that alternate."""
    # Counted in the steady state: from the first thread's 10th put to its
    # 30th. Over the whole run the ramp-up (the first transaction carries
    # one write, the linger then waits for as many as the last one carried)
    # and the stragglers at the end weigh with the scheduling of a loaded
    # machine: a CI run saw a mean of 7.6 over 10 puts a thread.
    # Best of three runs: a CI run on a loaded machine once saw 8.0 (two
    # transactions of 8) in one run; the old linger gives 9.1-9.3 in every
    # run, so the best of three still tells them apart.
    means = []
    with kvstore.open(etcd_url, durable=True, commit_linger=0.5) as db:
        for run in range(3):
            start = threading.Barrier(16)
            marks: dict[int, dict] = {}
            lock = threading.Lock()

            def work(t, run=run, start=start, marks=marks, lock=lock):
                start.wait()
                for i in range(40):
                    if i in (10, 30):
                        with lock:
                            marks.setdefault(i, db.stats())
                    db.put(f"{run}:{t}:{i}", i)

            _in_threads(16, work)
            assert db.stats()["ops_committed"] == 640 * (run + 1)
            a, b = marks[10], marks[30]
            means.append((b["ops_committed"] - a["ops_committed"]) / (b["commits"] - a["commits"]))
            if means[-1] >= 10:
                break
        assert max(means) >= 10, means  # 16 here; 9.1-9.3 when the linger ended at the first

_WRITER = """
import sys, kvstore
db = kvstore.open(sys.argv[1], cache_entries=0)
db.put("shared", int(sys.argv[2]), durable=True)
db.close()
print("written", flush=True)
"""


def _write_in_another_process(url, value):
    out = subprocess.run([sys.executable, "-c", _WRITER, url, str(value)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "written", out.stderr


def test_another_processes_write_is_seen_by_the_next_read_through_the_cache(etcd_url):
    # cache_max_age=0: a hit always checks the key's mod_revision (keys-only),
    # so the read after another process's acknowledged write is exact.
    with kvstore.open(etcd_url, cache_max_age=0) as db:
        db.put("shared", 1, durable=True)
        for _ in range(3):
            assert db.get("shared") == 1
        assert db.stats()["cache"]["hits"] >= 2
        _write_in_another_process(etcd_url, 2)
        assert db.get("shared") == 2
        _write_in_another_process(etcd_url, 3)
        assert db.get("shared") == 3


def test_the_watch_drops_a_cached_value_another_process_changed(etcd_url):
    # With the default cache_max_age, hits come from memory; the watch drops
    # the entry as the cluster applies the other process's write.
    with kvstore.open(etcd_url, cache_max_age=30) as db:
        db.put("shared", 1, durable=True)
        assert db.get("shared") == 1
        assert db.get("shared") == 1
        before = db.stats()["cache"]
        _write_in_another_process(etcd_url, 2)
        deadline = time.monotonic() + 5
        while db.get("shared") != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert db.get("shared") == 2
        assert db.stats()["cache"]["invalidations"] > before["invalidations"]


def test_killing_the_leader_under_8_durable_writers_loses_no_acknowledged_write(etcd_cluster, etcd_url):
    acked: dict[str, int] = {}
    unknown: list[tuple[str, kvstore.OutcomeUnknownError]] = []
    unavailable: list[str] = []
    after_kill = [0]
    killed = threading.Event()
    stop = threading.Event()
    lock = threading.Lock()
    db = kvstore.open(etcd_url, durable=True, timeout=1.0, retry_time=15)

    def writer(t):
        i = 0
        while not stop.is_set():
            key = f"w{t}:{i:05d}"
            try:
                db.put(key, i)
            except kvstore.OutcomeUnknownError as exc:
                assert ("default", key.encode()) in exc.keys
                with lock:
                    unknown.append((key, exc))
            except kvstore.UnavailableError:
                with lock:
                    unavailable.append(key)
            else:
                with lock:
                    acked[key] = i
                    if killed.is_set():
                        after_kill[0] += 1
            i += 1

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    victim = None
    try:
        time.sleep(0.5)
        victim = etcd_cluster.leader()
        etcd_cluster.kill(victim)
        killed.set()
        deadline = time.monotonic() + 20
        while after_kill[0] < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
        if victim is not None:
            etcd_cluster.restart(victim)
    assert after_kill[0] >= 200, "the writers did not resume after the leader was killed"
    db.close()
    with kvstore.open(etcd_url, cache_entries=0) as check:
        stored = dict(check.scan())
    missing = [k for k, v in acked.items() if stored.get(k.encode()) != v]
    assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:5]}"
    extra = set(stored) - {k.encode() for k in acked} - {k.encode() for k, _ in unknown}
    assert not extra, f"writes neither acknowledged nor reported unknown are stored: {sorted(extra)[:5]}"
    print(f"acked {len(acked)}, outcome unknown {len(unknown)}, unavailable {len(unavailable)}")


def test_a_threads_own_write_is_never_hidden_by_a_racing_read_filling_the_cache(etcd_url):
    # Another thread's read of the old value may come back after the write's
    # transaction was answered: it must not fill the cache with it.
    with kvstore.open(etcd_url, cache_max_age=30) as db:
        db.put("k", -1, durable=True)
        stop = threading.Event()

        def reader():
            while not stop.is_set():
                db.get("k")
                time.sleep(0)  # let the writer run

        readers = [threading.Thread(target=reader) for _ in range(3)]
        for t in readers:
            t.start()
        try:
            stale = []
            for i in range(300):
                db.put("k", i, durable=True)
                got = db.get("k")
                if got != i:
                    stale.append((i, got))
        finally:
            stop.set()
            for t in readers:
                t.join()
        assert not stale, f"{len(stale)} reads after the thread's own durable write saw an older value: {stale[:5]}"


def test_without_a_majority_writes_and_reads_raise_unavailable_and_nothing_is_written(etcd_cluster, etcd_url):
    db = kvstore.open(etcd_url, durable=True, timeout=0.5, retry_time=1.0, cache_entries=0)
    db.put("before", 1)
    down = [i for i in range(3) if i != etcd_cluster.leader()]
    try:
        for i in down:
            etcd_cluster.kill(i)
        started = time.monotonic()
        # Sent to the leader before it noticed it lost its majority: no
        # answer, so the outcome is unknown; once it stepped down: refused.
        with pytest.raises((kvstore.UnavailableError, kvstore.OutcomeUnknownError)) as info:
            db.put("during", 2)
        assert time.monotonic() - started < 10
        with pytest.raises(kvstore.UnavailableError, match="majority"):
            db.get("before")
    finally:
        for i in down:
            etcd_cluster.restart(i)
    assert db.get("before") == 1
    if isinstance(info.value, kvstore.UnavailableError):  # refused: never written
        assert db.get("during") is None
    db.put("after", 3)
    assert db.get("after") == 3
    db.close()


def test_values_on_etcd_carry_the_key_in_their_checksum(etcd_url):
    """Records on etcd are version 3 (docs/format.md): a value copied under
    another key, as damage or a misdirected write would leave it, is refused
    with the key named rather than read as that key's value."""
    from kvstore.etcd.client import rpc

    with kvstore.open(etcd_url, cache_entries=0) as db:
        db.put("msg:00246", {"text": "hello"}, durable=True)
        remote = db._remote
        full = remote.keys.key(db.name, b"msg:00246")
        stored = remote.range(rpc.RangeRequest(key=full), "test").kvs[0].value
        assert stored[0] == 3  # the keyed record version
        moved = remote.keys.key(db.name, b"msg:00247")
        remote.client.call("KV", "Put", rpc.PutRequest(key=moved, value=stored), doing="test", write=True)
        assert db.get("msg:00246") == {"text": "hello"}
        with pytest.raises(kvstore.CorruptionError, match="msg:00247"):
            db.get("msg:00247")
        with pytest.raises(kvstore.CorruptionError, match="msg:00247"):
            list(db.scan())


def test_the_expiries_of_a_range_are_read_in_a_few_round_trips(etcd_url):
    """scan_expiry (what `kvstore copy` and `dump` read on a cluster): a
    scan's pages and one call per distinct lease, not a call or two per key."""
    from kvstore.commands._portable import records

    with kvstore.open(etcd_url) as db:
        ns = db.namespace("e", keys=str)
        for ttl, first in ((60, 0), (60, 100), (120, 200), (120, 300)):
            ns.put_many({f"k{i:04}": {"i": i} for i in range(first, first + 100)}, ttl=ttl, durable=True)
        ns.put_many({f"k{i:04}": i for i in range(400, 500)}, durable=True)
        before = db.stats()["calls"]
        found = list(records(ns))
        calls = db.stats()["calls"] - before
        assert calls <= 2 + 4  # two pages of keys, four leases (one per transaction and TTL)
        assert [k for k, _, _ in found] == [f"k{i:04}" for i in range(500)]
        assert found[5][1] == {"i": 5} and found[450][1] == 450
        now = time.time()
        for key, _, expiry in found:
            i = int(key[1:])
            if i >= 400:
                assert expiry is None
            else:
                wanted = 60 if i < 200 else 120
                assert expiry[1] == wanted and now + wanted - 3 < expiry[0] <= now + wanted + 1
                assert abs(expiry[0] - ns.expiry(key)[0]) < 2
        assert [k for k, _, _ in ns.scan_expiry(start="k0100", stop="k0103", reverse=True)] == \
            ["k0102", "k0101", "k0100"]


def test_get_refresh_ttl_gives_the_value_a_lease_of_its_own(etcd_url):
    """As on a local store, get(refresh_ttl=True) pushes the value's expiry
    to now + its TTL; on etcd through a new lease for that key alone, so
    the other puts that shared its lease keep their expiry."""
    with kvstore.open(etcd_url) as db:
        db.put_many({"a": 1, "b": 2}, ttl=5, durable=True)  # one transaction: one lease
        db.put("plain", 3, durable=True)
        time.sleep(2.2)
        assert db.get("a", refresh_ttl=True) == 1
        now = time.time()  # etcd gives a lease's time left in whole seconds, rounded down
        a_at, a_ttl = db.expiry("a")
        b_at, _ = db.expiry("b")
        assert a_ttl == 5 and now + 3.9 < a_at <= now + 5.1
        assert b_at <= now + 3
        calls = db.stats()["calls"]
        assert db.get("a", refresh_ttl=True) == 1  # just refreshed: only read (the key, its lease)
        assert db.stats()["calls"] - calls == 2
        assert db.get("plain", refresh_ttl=True) == 3 and db.expiry("plain") is None
        assert db.get("missing", "dflt", refresh_ttl=True) == "dflt"
        db.put("queued", 4, ttl=5)  # buffered: sent first, then refreshed
        assert db.get("queued", refresh_ttl=True) == 4
    with kvstore.open(etcd_url, readonly=True) as ro:
        with pytest.raises(kvstore.ReadOnlyError):
            ro.get("a", refresh_ttl=True)
