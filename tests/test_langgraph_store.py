"""KVStore, the LangGraph BaseStore on kvstore: behaviour modelled on LangGraph's
own store tests (InMemoryStore, SqliteStore), plus persistence and asyncio."""

import asyncio
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


def test_ttl_is_not_supported_yet(store):
    assert store.supports_ttl is False
    with pytest.raises(NotImplementedError):
        store.put(("a",), "k", {"v": 1}, ttl=5)
    with pytest.raises(kvstore.NotSupportedError, match="TTL"):
        store.batch([PutOp(("a",), "k", {"v": 1}, ttl=5.0)])
    assert store.get(("a",), "k") is None
    store.put(("a",), "k", {"v": 1}, ttl=None)
    assert store.get(("a",), "k", refresh_ttl=True).value == {"v": 1}


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
            assert after["commits"] - before["commits"] <= n // 5
            found = await store.asearch(("mem",), filter={"i": {"$gte": 190}}, limit=100)
            assert sorted(i.value["i"] for i in found) == list(range(190, 200))
            assert len(await store.alist_namespaces(prefix=("mem",))) == 7
            await store.adelete(("mem", "u1"), "a")
            assert await store.aget(("mem", "u1"), "a") is None

    asyncio.run(main())
