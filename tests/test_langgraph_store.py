"""KVStore, the LangGraph BaseStore on kvstore: behaviour modelled on LangGraph's
own store tests (InMemoryStore, SqliteStore), plus persistence and asyncio."""

import asyncio
import math
import time

import pytest

pytest.importorskip("langgraph.store.base")

from langgraph.store.base import (  # noqa: E402
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchOp,
)

import kvstore  # noqa: E402
import kvstore.aio  # noqa: E402
from kvstore.integrations.langgraph import InvalidStoreNamespaceError, KVStore  # noqa: E402
from test_ttl import T0, FakeClock  # noqa: E402


@pytest.fixture
def store(db):
    return KVStore(db)


def test_put_get_update_delete(store):
    ns = ("test", "documents")
    store.put(ns, "doc1", {"title": "Test", "content": "Hello"})
    item = store.get(ns, "doc1")
    assert isinstance(item, Item)
    assert (item.namespace, item.key, item.value) == (ns, "doc1", {"title": "Test", "content": "Hello"})
    time.sleep(0.01)
    store.put(ns, "doc1", {"title": "Updated"})
    updated = store.get(ns, "doc1")
    assert updated.value == {"title": "Updated"}
    assert updated.created_at == item.created_at  # an update keeps created_at
    assert updated.updated_at > item.updated_at
    assert store.get(("test", "other"), "doc1") is None
    store.delete(ns, "doc1")
    assert store.get(ns, "doc1") is None
    store.delete(ns, "never-there")  # no error


def test_batch_order_and_results(store):
    store.put(("test", "foo"), "key1", {"data": "value1"})
    store.put(("test", "bar"), "key2", {"data": "value2"})
    results = store.batch([
        GetOp(("test", "foo"), "key1"),
        PutOp(("test", "bar"), "key2", {"data": "value2b"}),
        SearchOp(("test",), filter={"data": "value1"}, limit=10, offset=0),
        ListNamespacesOp(match_conditions=None, max_depth=None, limit=10, offset=0),
        GetOp(("test",), "key3"),
        PutOp(("test",), "key3", {"data": "value3"}),
        PutOp(("test",), "key3", {"data": "value3, last wins"}),
        PutOp(("test", "foo"), "key1", None),
    ])
    assert len(results) == 8
    assert results[0].value == {"data": "value1"} and results[0].namespace == ("test", "foo")
    assert results[1] is None and results[5] is None and results[6] is None and results[7] is None
    assert [(i.namespace, i.key) for i in results[2]] == [(("test", "foo"), "key1")]
    assert results[3] == [("test", "bar"), ("test", "foo")]
    assert results[4] is None  # reads see the store as before the batch's puts
    assert store.get(("test", "bar"), "key2").value == {"data": "value2b"}
    assert store.get(("test",), "key3").value == {"data": "value3, last wins"}
    assert store.get(("test", "foo"), "key1") is None


def test_search_prefix_filters_limit_offset(store):
    data = [
        (("test", "docs"), "doc1", {"title": "First", "author": "Alice", "tags": ["important"],
                                    "score": 4.5, "meta": {"lang": "en", "pages": 3}}),
        (("test", "docs"), "doc2", {"title": "Second", "author": "Bob", "tags": ["draft"],
                                    "score": 3.0, "meta": {"lang": "fr", "pages": 10}}),
        (("test", "images"), "img1", {"title": "Image", "author": "Alice", "tags": ["final"],
                                      "score": 4.0, "meta": {"lang": "en", "pages": 1}}),
        (("testing",), "x", {"title": "not under ('test',)", "author": "Alice"}),
    ]
    for ns, key, value in data:
        store.put(ns, key, value)
    assert len(store.search(("test",))) == 3
    assert {i.key for i in store.search(("test", "docs"))} == {"doc1", "doc2"}
    assert len(store.search(())) == 4
    assert {i.key for i in store.search(["test"], filter={"author": "Alice"})} == {"doc1", "img1"}
    assert {i.key for i in store.search(("test",), filter={"score": {"$gt": 3.5}})} == {"doc1", "img1"}
    assert {i.key for i in store.search(("test",), filter={"score": {"$gte": 4.0, "$lt": 4.5}})} == {"img1"}
    assert {i.key for i in store.search(("test",), filter={"score": {"$lte": 3.0}})} == {"doc2"}
    assert {i.key for i in store.search(("test",), filter={"author": {"$ne": "Alice"}})} == {"doc2"}
    assert {i.key for i in store.search(("test",), filter={"author": {"$eq": "Bob"}})} == {"doc2"}
    assert {i.key for i in store.search(("test",), filter={"meta": {"lang": "en"}})} == {"doc1", "img1"}
    assert {i.key for i in store.search(("test",), filter={"tags": ["draft"]})} == {"doc2"}
    assert {i.key for i in store.search(("test",), filter={"author": "Alice", "score": 4.0})} == {"img1"}
    assert store.search(("test",), filter={"title": {"$gt": 3}}) == []  # no order between str and int
    assert store.search(("test",), filter={"missing": "x"}) == []
    page1 = store.search(("test",), limit=2)
    page2 = store.search(("test",), limit=2, offset=2)
    assert [i.key for i in page1] == ["doc1", "doc2"] and [i.key for i in page2] == ["img1"]
    assert [i.key for i in store.search(("test",), filter={"author": "Alice"}, offset=1)] == ["img1"]
    assert all(i.score is None for i in page1)
    assert len(store.search(("test",), query="ignored without an index")) == 3
    with pytest.raises(kvstore.InvalidArgumentError, match="operator"):
        store.search(("test",), filter={"score": {"$near": 1}})


NAMESPACES = [
    ("a", "b", "c"), ("a", "b", "d", "e"), ("a", "b", "d", "i"), ("a", "b", "f"), ("a", "c", "f"),
    ("b", "a", "f"), ("users", "123"), ("users", "456", "settings"), ("admin", "users", "789"),
]


def test_list_namespaces(store):
    for i, ns in enumerate(NAMESPACES):
        store.put(ns, f"id_{i}", {"data": f"value_{i:02d}"})
        store.put(ns, f"id_{i}b", {"data": "a second item in the same namespace"})
    assert store.list_namespaces() == sorted(NAMESPACES)
    assert store.list_namespaces(prefix=("a", "b")) == [
        ("a", "b", "c"), ("a", "b", "d", "e"), ("a", "b", "d", "i"), ("a", "b", "f")]
    assert store.list_namespaces(suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f"), ("b", "a", "f")]
    assert store.list_namespaces(prefix=("a",), suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(prefix=("a", "b"), max_depth=3) == [
        ("a", "b", "c"), ("a", "b", "d"), ("a", "b", "f")]
    assert store.list_namespaces(max_depth=2) == [
        ("a", "b"), ("a", "c"), ("admin", "users"), ("b", "a"), ("users", "123"), ("users", "456")]
    assert store.list_namespaces(prefix=("a", "b"), limit=2) == [("a", "b", "c"), ("a", "b", "d", "e")]
    assert store.list_namespaces(prefix=("a", "b"), offset=2) == [("a", "b", "d", "i"), ("a", "b", "f")]
    assert store.list_namespaces(prefix=("a", "*", "f")) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(suffix=("*", "f")) == [("a", "b", "f"), ("a", "c", "f"), ("b", "a", "f")]
    assert store.list_namespaces(prefix=("*", "users"), suffix=("*", "settings")) == []
    assert store.list_namespaces(prefix=("users", "*")) == [("users", "123"), ("users", "456", "settings")]
    assert store.list_namespaces(prefix=("nonexistent",)) == []
    assert store.list_namespaces(prefix=("users", "123")) == [("users", "123")]
    ops = [ListNamespacesOp(match_conditions=(MatchCondition("suffix", ("f",)),), limit=10)]
    assert store.batch(ops)[0] == [("a", "b", "f"), ("a", "c", "f"), ("b", "a", "f")]


def test_list_namespaces_pagination_and_empty(store):
    assert store.list_namespaces() == []
    for i in range(20):
        store.put(("namespace", f"sub_{i:02d}"), f"id_{i:02d}", {"data": i})
    for offset in (0, 5, 15):
        assert store.list_namespaces(prefix=("namespace",), limit=5, offset=offset) == \
            [("namespace", f"sub_{i:02d}") for i in range(offset, offset + 5)]


def test_namespace_rules_follow_langgraph(store):
    doc = {"foo": "bar"}
    for bad in [(), ("the", "thing.about"), ("some", "fun", ""), ("langgraph", "foo")]:
        with pytest.raises(InvalidNamespaceError):
            store.put(bad, "foo", doc)
    store.put(("foo", "langgraph", "foo"), "bar", doc)
    assert store.get(("foo", "langgraph", "foo"), "bar").value == doc
    # past the public put: a "langgraph" root is allowed, as in LangGraph's stores
    store.batch([PutOp(("langgraph", "foo"), "bar", doc)])
    assert store.search(("langgraph", "foo"))[0].value == doc
    # ops given to batch() directly are checked too, with an error of both families
    for op in (PutOp(("a.b",), "k", doc), GetOp(("nul\x00",), "k"), PutOp((), "k", doc)):
        with pytest.raises(InvalidStoreNamespaceError) as info:
            store.batch([op])
        assert isinstance(info.value, InvalidNamespaceError)
        assert isinstance(info.value, kvstore.KVStoreError)


def test_values_and_keys_kvstore_cannot_hold(store):
    with pytest.raises(kvstore.EncodeError):
        store.put(("a",), "k", {"when": object()})
    with pytest.raises(kvstore.InvalidArgumentError, match="shorter"):
        store.put(("a",), "k" * 600, {"v": 1})
    assert store.search(("a",)) == []


def test_items_persist_across_reopen(store_path):
    with KVStore.from_path(store_path) as store:
        store.put(("users", "u1"), "prefs", {"theme": "dark"})
        created = store.get(("users", "u1"), "prefs").created_at
    with KVStore.from_path(store_path) as store:
        item = store.get(("users", "u1"), "prefs")
        assert item.value == {"theme": "dark"} and item.created_at == created
        assert store.list_namespaces() == [("users", "u1")]


def test_async_api_and_shared_commits(store_path):
    async def main():
        async with kvstore.aio.open(store_path) as db:
            store = KVStore(db)
            await store.aput(("mem", "u1"), "a", {"text": "hello"})
            assert (await store.aget(("mem", "u1"), "a")).value == {"text": "hello"}
            before = db.stats()
            n = 200
            await asyncio.gather(*(store.aput(("mem", f"u{i % 7}"), f"k{i}", {"i": i})
                                   for i in range(n)))
            after = db.stats()
            assert after["durable_groups"] - before["durable_groups"] == n
            # shared commits: a commit per put would be n; how many share one
            # depends on scheduling (51 commits seen on a loaded machine)
            assert after["commits"] - before["commits"] <= n // 2
            found = await store.asearch(("mem",), filter={"i": {"$gte": 190}}, limit=100)
            assert sorted(i.value["i"] for i in found) == list(range(190, 200))
            assert len(await store.alist_namespaces(prefix=("mem",))) == 7
            await store.adelete(("mem", "u1"), "a")
            assert await store.aget(("mem", "u1"), "a") is None

    asyncio.run(main())


# ---------------------------------------------------------------- TTL (minutes, as in LangGraph)


@pytest.fixture
def clock():
    """A fake clock: a test that takes it gets `db` (so `store`) opened on it."""
    return FakeClock()


def expiry(store, namespace, key):
    """(expires_at, ttl in seconds) of an item as the engine holds it; None without a TTL."""
    raw = "".join(label + "\x00" for label in namespace) + "\x00" + key
    return store.db.namespace("langgraph:store").expiry(raw)


def visible(store, namespace, key):
    """Whether get (without refreshing), search and list_namespaces all see
    the item; asserts that they agree."""
    got = store.get(namespace, key, refresh_ttl=False) is not None
    searched = key in {i.key for i in store.search(namespace, refresh_ttl=False)}
    listed = tuple(namespace) in store.list_namespaces()
    assert got == searched == listed, (got, searched, listed)
    return got


def test_put_ttl_is_in_minutes_and_the_item_expires(store, clock):
    assert store.supports_ttl is True
    store.put(("a",), "k", {"v": 1}, ttl=2)
    store.put(("b",), "k", {"v": 2})  # no ttl, no default: never expires
    assert expiry(store, ("a",), "k") == (T0 + 120, 120)
    assert expiry(store, ("b",), "k") is None
    clock.advance(119)
    assert visible(store, ("a",), "k")
    clock.advance(1)
    assert not visible(store, ("a",), "k")
    assert store.get(("a",), "k") is None  # a refreshing read does not bring it back
    assert store.list_namespaces() == [("b",)]
    assert [i.key for i in store.search(())] == ["k"] and store.search(())[0].namespace == ("b",)
    clock.advance(100 * 365 * 86400)
    assert store.get(("b",), "k").value == {"v": 2}
    # put again after expiry: a new item (created_at anew), with its own TTL
    store.put(("a",), "k", {"v": 3}, ttl=0.5)
    assert expiry(store, ("a",), "k") == (clock.now + 30, 30)
    assert store.get(("a",), "k").value == {"v": 3}


def test_expired_items_leave_namespace_listing_and_search(store, clock):
    store.put(("users", "1"), "old", {"n": 1}, ttl=1)
    store.put(("users", "1"), "new", {"n": 2}, ttl=3)
    store.put(("users", "2"), "only", {"n": 3}, ttl=1)
    store.put(("users", "3"), "kept", {"n": 4})
    clock.advance(61)
    assert store.list_namespaces(prefix=("users",)) == [("users", "1"), ("users", "3")]
    assert store.list_namespaces(max_depth=1) == [("users",)]
    assert [i.key for i in store.search(("users",), refresh_ttl=False)] == ["new", "kept"]
    assert [i.key for i in store.search(("users",), filter={"n": {"$lt": 3}}, refresh_ttl=False)] == ["new"]
    clock.advance(120)
    assert store.list_namespaces() == [("users", "3")]
    assert [i.key for i in store.search(("users",), limit=1)] == ["kept"]


def test_get_refreshes_the_expiry(store, clock):
    store.put(("a",), "k", {"v": 1}, ttl=1)
    clock.advance(50)
    assert store.get(("a",), "k").value == {"v": 1}  # refresh_ttl: None -> True without a config
    assert expiry(store, ("a",), "k") == (T0 + 110, 60)
    clock.advance(50)  # past the first expiry
    assert store.get(("a",), "k", refresh_ttl=False).value == {"v": 1}
    assert store.batch([GetOp(("a",), "k")])[0].value == {"v": 1}  # GetOp refreshes by default
    assert expiry(store, ("a",), "k") == (T0 + 160, 60)
    clock.advance(59)
    assert store.batch([GetOp(("a",), "k", refresh_ttl=False)])[0] is not None
    clock.advance(1)
    assert not visible(store, ("a",), "k")


def test_search_refreshes_the_items_it_returns(store, clock):
    for key in ("k1", "k2", "k3"):
        store.put(("a",), key, {"key": key}, ttl=1)
    clock.advance(50)
    found = store.search(("a",), filter={"key": {"$ne": "k2"}}, limit=1)  # returns k1 only
    assert [i.key for i in found] == ["k1"]
    assert expiry(store, ("a",), "k1") == (T0 + 110, 60)
    assert expiry(store, ("a",), "k2") == expiry(store, ("a",), "k3") == (T0 + 60, 60)
    assert store.batch([SearchOp(("a",), offset=2)])[0][0].key == "k3"  # SearchOp refreshes by default
    assert expiry(store, ("a",), "k3") == (T0 + 110, 60)
    clock.advance(10)
    assert [i.key for i in store.search(("a",), refresh_ttl=False)] == ["k1", "k3"]
    clock.advance(50)
    assert store.search(("a",), refresh_ttl=False) == []


def test_ttl_config_default_and_refresh_on_read(db, clock):
    store = KVStore(db, ttl={"default_ttl": 1, "refresh_on_read": False})
    assert store.ttl_config == {"default_ttl": 1, "refresh_on_read": False}
    store.put(("a",), "default", {"v": 1})  # no ttl given: the config's default
    store.put(("a",), "never", {"v": 2}, ttl=None)  # None: never expires, default or not
    store.put(("a",), "own", {"v": 3}, ttl=3)
    store.batch([PutOp(("a",), "op", {"v": 4})])  # a PutOp's ttl is None unless given
    assert expiry(store, ("a",), "default") == (T0 + 60, 60)
    assert expiry(store, ("a",), "never") is None and expiry(store, ("a",), "op") is None
    assert expiry(store, ("a",), "own") == (T0 + 180, 180)
    clock.advance(50)
    store.get(("a",), "default")  # refresh_on_read False: get() does not refresh...
    store.search(("a",))  # ...nor search()
    assert expiry(store, ("a",), "default") == (T0 + 60, 60)
    store.get(("a",), "own", refresh_ttl=True)  # unless asked
    assert expiry(store, ("a",), "own") == (T0 + 230, 180)
    clock.advance(10)
    assert [i.key for i in store.search(("a",))] == ["never", "op", "own"]
    # a put over an item with a TTL starts its time again; ttl=None takes the TTL away
    store.put(("a",), "own", {"v": 5})
    assert expiry(store, ("a",), "own") == (T0 + 120, 60)
    store.put(("a",), "own", {"v": 6}, ttl=None)
    clock.advance(10**6)
    assert store.get(("a",), "own").value == {"v": 6}


def test_ttl_none_never_expires_even_under_a_kvstore_namespace_default(db, clock):
    db.namespace("langgraph:store", ttl=30)  # an engine default (seconds) set outside LangGraph
    store = KVStore(db)
    store.put(("a",), "k", {"v": 1})
    store.batch([PutOp(("a",), "op", {"v": 2})])
    assert expiry(store, ("a",), "k") is None and expiry(store, ("a",), "op") is None
    clock.advance(3600)
    assert [i.key for i in store.search(("a",))] == ["k", "op"]


def test_refresh_on_read_defaults_to_true_with_a_config(db, clock):
    store = KVStore(db, ttl={"default_ttl": 1})
    store.put(("a",), "k", {"v": 1})
    clock.advance(50)
    store.get(("a",), "k")
    assert expiry(store, ("a",), "k") == (T0 + 110, 60)


def test_bad_ttls_raise_before_anything_is_written(store, clock):
    for bad in (0, -1, "5", True, float("nan"), 10**9):
        with pytest.raises(kvstore.InvalidTTLError, match="minutes"):
            store.batch([PutOp(("a",), "good", {"v": 1}), PutOp(("a",), "bad", {"v": 2}, ttl=bad)])
    assert store.search(("a",)) == []
    store.put(("a",), "k", {"v": 1}, ttl=math.inf)  # inf minutes: never expires
    assert expiry(store, ("a",), "k") is None
    with pytest.raises(kvstore.InvalidTTLError):
        KVStore(store.db, ttl={"default_ttl": -5})
    with pytest.raises(kvstore.InvalidArgumentError, match="TTLConfig"):
        KVStore(store.db, ttl=5)


def test_ttl_survives_reopen_and_read_only_stores_read_without_refreshing(store_path, clock):
    with KVStore.from_path(store_path, ttl={"default_ttl": 1}, clock=clock) as store:
        store.put(("a",), "k", {"v": 1})
    clock.advance(30)
    with KVStore.from_path(store_path, readonly=True, clock=clock) as store:
        assert store.get(("a",), "k").value == {"v": 1}  # asks to refresh: cannot, no error
        assert [i.key for i in store.search(("a",))] == ["k"]
        assert expiry(store, ("a",), "k") == (T0 + 60, 60)
    clock.advance(30)
    with KVStore.from_path(store_path, clock=clock) as store:
        assert store.get(("a",), "k") is None and store.list_namespaces() == []


def test_async_ttl(db, clock):
    async def main():
        store = KVStore(kvstore.aio.AsyncStore(db), ttl={"default_ttl": 1})
        await store.aput(("a",), "default", {"v": 1})
        await store.aput(("a",), "own", {"v": 2}, ttl=2)
        await store.aput(("a",), "never", {"v": 3}, ttl=None)
        assert expiry(store, ("a",), "default") == (T0 + 60, 60)
        assert expiry(store, ("a",), "own") == (T0 + 120, 120)
        assert expiry(store, ("a",), "never") is None
        clock.advance(50)
        assert (await store.aget(("a",), "default")).value == {"v": 1}  # refreshes
        assert expiry(store, ("a",), "default") == (T0 + 110, 60)
        clock.advance(40)
        assert [i.key for i in await store.asearch(("a",), refresh_ttl=False)] == \
            ["default", "never", "own"]
        assert [i.key for i in await store.asearch(("a",), limit=2)] == ["default", "never"]
        assert expiry(store, ("a",), "default") == (T0 + 150, 60)
        assert expiry(store, ("a",), "own") == (T0 + 120, 120)  # not returned: not refreshed
        clock.advance(40)
        assert await store.aget(("a",), "own") is None
        assert [i.key for i in await store.asearch(("a",))] == ["default", "never"]
        clock.advance(100)
        assert await store.aget(("a",), "default", refresh_ttl=False) is None
        assert await store.alist_namespaces() == [("a",)]
        await store.abatch([PutOp(("a",), "never", None)])
        assert await store.alist_namespaces() == []
        with pytest.raises(kvstore.InvalidTTLError):
            await store.aput(("a",), "k", {"v": 1}, ttl=0)

    asyncio.run(main())


def test_real_clock_short_ttl(store):
    before = time.time()
    store.put(("a",), "k", {"v": 1}, ttl=0.005)  # 0.3 s
    after = time.time()
    if time.time() - before < 0.2:  # not asserted on a machine too slow to tell
        assert store.get(("a",), "k", refresh_ttl=False) is not None
    while time.time() < after + 0.35:
        time.sleep(0.02)
    assert store.get(("a",), "k") is None and store.search(("a",)) == []
