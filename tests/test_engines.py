"""The Store API behaviours promised by both engines, run on both: a local
store (LMDB) and a store on a real 3-member etcd cluster (kvstore/etcd/)."""

import threading

import pytest

import kvstore


@pytest.fixture(params=["lmdb", "etcd"])
def store(request, tmp_path):
    if request.param == "lmdb":
        db = kvstore.open(str(tmp_path / "store"))
    else:
        db = kvstore.open(request.getfixturevalue("etcd_url"))
    yield db
    db.close()


def test_put_get_delete_and_contains(store):
    store.put("a", {"x": 1})
    store.put(b"b", [1, 2, 3], durable=True)
    assert store.get("a") == {"x": 1}
    assert store[b"b"] == [1, 2, 3]
    assert "a" in store and "zz" not in store
    assert store.get("zz", "dflt") == "dflt"
    store.delete("a")
    assert store.get("a") is None
    with pytest.raises(KeyError):
        store["a"]
    store.flush()
    assert store.get("b") == [1, 2, 3]


def test_buffered_writes_are_read_back_before_and_after_flush(store):
    for i in range(300):
        store.put(f"k{i:03d}", i)
    assert store.get("k299") == 299  # read-your-writes while queued
    store.flush()
    assert len(store) == 300
    assert store.get_many(["k000", "nope", "k150"]) == [0, None, 150]


def test_scan_prefix_start_stop_reverse_and_keys_only(store):
    store.put_many({f"{p}{i}": i for p in ("a", "b", "c") for i in range(5)}, durable=True)
    assert [k for k, _ in store.scan(prefix="b")] == [b"b0", b"b1", b"b2", b"b3", b"b4"]
    assert list(store.scan(start="a3", stop="b2", keys_only=True)) == [b"a3", b"a4", b"b0", b"b1"]
    assert list(store.scan(prefix="c", reverse=True, keys_only=True)) == [b"c4", b"c3", b"c2", b"c1", b"c0"]
    assert list(store.scan(prefix="b", start="b2", stop="b4")) == [(b"b2", 2), (b"b3", 3)]
    assert list(store) == sorted(f"{p}{i}".encode() for p in "abc" for i in range(5))
    assert dict(store.items())[b"a2"] == 2
    assert list(store.scan(start="c9")) == []


def test_a_scan_longer_than_one_page_is_complete_in_both_directions(store):
    n = kvstore.store.SCAN_CHUNK * 2 + 7
    keys = [f"{i:05d}".encode() for i in range(n)]
    for i in range(0, n, 100):
        store.put_many({k: 1 for k in keys[i:i + 100]})
    assert list(store.scan(keys_only=True)) == keys
    assert list(store.scan(keys_only=True, reverse=True)) == keys[::-1]


def test_namespaces_are_separate_keyspaces(store):
    users = store.namespace("users")
    docs = store.namespace("docs", keys=str)
    users.put("k", 1)
    docs.put("k", 2)
    store.put("k", 3)
    store.flush()
    assert (users.get("k"), docs.get("k"), store.get("k")) == (1, 2, 3)
    assert list(docs.scan(keys_only=True)) == ["k"]
    assert len(users) == 1
    assert store.namespaces() == ["default", "docs", "users"]
    with pytest.raises(kvstore.InvalidNamespaceError):
        store.namespace("__reserved")


def test_bad_keys_raise_before_anything_is_queued(store):
    with pytest.raises(kvstore.InvalidKeyError):
        store.put(b"", 1)
    with pytest.raises(kvstore.InvalidKeyError):
        store.put(b"x" * 512, 1)
    with pytest.raises(kvstore.EncodeError):
        store.put("k", object())
    assert store.get("k") is None


def test_batch_is_atomic_and_discarded_on_error(store):
    with store.batch(durable=True) as b:
        b.put("x", 1)
        b.put("y", 2, namespace="other")
        b.delete("x")
    assert store.get("x") is None and store.namespace("other").get("y") == 2
    with pytest.raises(RuntimeError):
        with store.batch() as b:
            b.put("z", 1)
            raise RuntimeError("boom")
    store.flush()
    assert store.get("z") is None


def test_ttl_expires_values_and_a_default_ttl_applies(store):
    store.put("short", 1, ttl=1, durable=True)
    store.put("forever", 2, durable=True)
    expires_at, ttl = store.expiry("short")
    assert ttl == 1.0
    assert store.expiry("forever") is None
    ns = store.namespace("sessions", ttl=1)
    assert ns.default_ttl == 1
    ns.put("s", 3, durable=True)
    assert ns.expiry("s") is not None
    import time
    deadline = time.monotonic() + 4
    while (store.get("short") is not None or ns.get("s") is not None) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.get("short") is None and ns.get("s") is None
    assert store.get("forever") == 2


def test_transaction_commits_and_conflicts(store):
    store.put("acct", 10, durable=True)
    with store.transaction() as tx:
        tx.put("acct", tx.get("acct") - 3)
        tx.put("log", ["-3"])
    assert store.get("acct") == 7 and store.get("log") == ["-3"]
    tx = store.transaction()
    tx.__enter__()
    seen = tx.get("acct")
    store.put("acct", 100, durable=True)  # another writer, after the read
    tx.put("acct", seen + 1)
    with pytest.raises(kvstore.ConflictError) as info:
        tx.__exit__(None, None, None)
    assert ("default", b"acct") in info.value.keys
    assert store.get("acct") == 100


def test_a_scanned_range_conflicts_when_a_key_appears_in_it(store):
    store.put_many({"q1": 1, "q2": 2}, durable=True)
    tx = store.transaction()
    tx.__enter__()
    assert list(tx.scan(prefix="q", keys_only=True)) == [b"q1", b"q2"]
    store.put("q3", 3, durable=True)
    tx.put("total", 3)
    with pytest.raises(kvstore.ConflictError):
        tx.__exit__(None, None, None)
    assert store.get("total") is None


def test_incr_update_compare_and_set_from_threads(store):
    def work():
        for _ in range(10):
            store.incr("n")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("n") == 40
    assert store.update("l", lambda old: old + [1], default=[]) == [1]
    assert store.compare_and_set("l", [1], "new") is True
    assert store.compare_and_set("l", [1], "newer") is False
    assert store.compare_and_set("l", "new", kvstore.MISSING) is True
    assert store.get("l") is None
    assert store.transact(lambda tx: tx.get("n") * 2) == 80


def test_closed_store_refuses_calls(store):
    store.close()
    with pytest.raises(kvstore.StoreClosedError):
        store.get("a")


def test_stats_count_commits(store):
    store.put("a", 1, durable=True)
    stats = store.stats()
    assert stats["commits"] >= 1 and stats["ops_committed"] >= 1


def test_the_asyncio_api(store, tmp_path):
    import asyncio

    import kvstore.aio

    url = store.path
    store.close()

    async def main():
        async with kvstore.aio.open(url) as db:
            await db.aput("a", 1, durable=True)
            await asyncio.gather(*(db.aput(f"k{i}", i, durable=True) for i in range(20)))
            assert await db.aget("a") == 1
            assert await db.aget_many(["k3", "nope"]) == [3, None]
            async with db.abatch() as b:
                b.put("b", 2)
            await db.aflush()
            assert [k async for k in db.ascan(prefix="k1", keys_only=True)] == [b"k1", b"k10", b"k11", b"k12",
                                                                                 b"k13", b"k14", b"k15",
                                                                                 b"k16", b"k17", b"k18", b"k19"]
            assert await db.aincr("n", 2) == 2
            assert await db.acompare_and_set("n", 2, 3) is True
            assert await db.aupdate("n", lambda v: v * 10) == 30
            ns = await db.anamespace("other")
            await ns.aput("x", 1, durable=True)
            assert await db.anamespaces() == ["default", "other"]
            async with db.atransaction() as tx:
                tx.put("t", tx.get("n") + 1)
            assert await db.aget("t") == 31

    asyncio.run(main())


def test_a_transaction_inside_another_of_the_same_task_is_refused_in_asyncio(store):
    """As the sync API: in one task (or a sync function it runs), a second
    transaction inside an open one raises; another task may run its own."""
    import asyncio

    import kvstore.aio

    url = store.path
    store.close()

    async def main():
        async with kvstore.aio.open(url) as db:
            async with db.atransaction() as tx:
                tx.put("a", 1)
                with pytest.raises(kvstore.NestedTransactionError):
                    async with db.atransaction():
                        pass
                with pytest.raises(kvstore.NestedTransactionError):
                    await db.atransact(lambda inner: inner.put("b", 1))
                with pytest.raises(kvstore.NestedTransactionError):
                    await db.aupdate("n", lambda v: (v or 0) + 1)
            assert await db.aget("a") == 1 and await db.aget("b") is None

            def nested_sync(tx):  # atransact runs a sync function: the sync API inside it is checked too
                with pytest.raises(kvstore.NestedTransactionError):
                    db._store.transact(lambda inner: None)
                tx.put("c", 1)

            await db.atransact(nested_sync)
            assert await db.aget("c") == 1
            assert await db.aupdate("n", lambda v: (v or 0) + 1) == 1  # the outer ones ended: allowed
            release = asyncio.Event()

            async def other_task():  # begun before the outer transaction: its own context
                await release.wait()
                async with db.atransaction() as tx:
                    tx.put("d", 1)

            task = asyncio.create_task(other_task())
            await asyncio.sleep(0)
            async with db.atransaction() as tx:
                tx.put("e", 1)
                release.set()
                await task
            assert await db.aget_many(["d", "e"]) == [1, 1]

    asyncio.run(main())


def test_get_many_of_more_keys_than_one_etcd_transaction_holds(store):
    for i in range(0, 300, 100):
        store.put_many({f"k{j:03d}": j for j in range(i, i + 100)}, durable=True)
    store.get("k005")  # cached on etcd
    store.put("k007", "pending")  # buffered
    keys = [f"k{j:03d}" for j in range(300)] + ["missing"]
    expected = list(range(300)) + [None]
    expected[7] = "pending"
    assert store.get_many(keys) == expected


def test_a_transaction_writes_to_another_namespace(store):
    with store.transaction() as tx:
        tx.put("x", 1, namespace="elsewhere")
        tx.put("y", 2)
    assert store.namespace("elsewhere").get("x") == 1 and store.get("y") == 2
    assert "elsewhere" in store.namespaces()


def test_a_namespace_with_another_default_ttl_is_refused(store):
    store.namespace("s", ttl=5)
    with pytest.raises(kvstore.TTLMismatchError):
        store.namespace("s", ttl=7)
    store.namespace("s").set_default_ttl(7)
    assert store.namespace("s", ttl=7).default_ttl == 7


def test_a_transaction_inside_another_of_the_same_thread_is_refused(store):
    with store.transaction() as tx:
        tx.put("a", 1)
        with pytest.raises(kvstore.NestedTransactionError):
            with store.transaction():
                pass
        with pytest.raises(kvstore.NestedTransactionError):
            store.incr("n")
    assert store.get("a") == 1
    assert store.incr("n") == 1  # the outer one ended: allowed again


def _public(cls):
    return {n: getattr(cls, n) for n in dir(cls)
            if not n.startswith("_") or n in ("__len__", "__iter__", "__contains__", "__getitem__",
                                              "__setitem__", "__delitem__", "__enter__", "__exit__",
                                              "__aenter__", "__aexit__")}


@pytest.mark.parametrize("local, remote", [
    ("kvstore.store:Store", "kvstore.etcd.store:EtcdStore"),
    ("kvstore.store:Batch", "kvstore.etcd.batch:EtcdBatch"),
    ("kvstore.txn:Transaction", "kvstore.etcd.txn:EtcdTransaction"),
    ("kvstore.aio:AsyncStore", "kvstore.etcd.aio:AsyncEtcdStore"),
    ("kvstore.aio:AsyncBatch", "kvstore.etcd.aio:AsyncEtcdBatch"),
    ("kvstore.aio:AsyncTransaction", "kvstore.etcd.aio:_AsyncTransaction"),
])
def test_each_engine_offers_every_public_name_with_the_same_parameters(local, remote):
    """The etcd engine implements the public API itself (docs/design.md):
    every method and property of the local class exists on it, taking the
    same parameters by the same names, so code moves between the engines
    unchanged (what etcd cannot do raises NotSupportedError when called)."""
    import importlib
    import inspect

    def load(spec):
        module, name = spec.split(":")
        return getattr(importlib.import_module(module), name)

    a, b = _public(load(local)), _public(load(remote))
    assert sorted(set(a) - set(b)) == []
    for name, member in a.items():
        if not callable(member) or isinstance(member, type) or name in ("__exit__", "__aexit__"):
            continue  # (exit methods take the exception triple by position)
        params = [(p.name, p.kind, p.default) for p in inspect.signature(member).parameters.values()]
        theirs = [(p.name, p.kind, p.default) for p in inspect.signature(b[name]).parameters.values()]
        assert theirs == params, name
