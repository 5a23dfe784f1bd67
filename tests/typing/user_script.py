"""The public API used as an application uses it, for `mypy --strict`.

Checked by CI (.ci/run) and tests/test_typing.py, which also runs it: each
`assert_type` says what a type checker must infer there (a no-op at run
time). Usage: python tests/typing/user_script.py DIRECTORY
"""

from __future__ import annotations

import asyncio
import math
import sys
from pathlib import Path
from typing import Any, Iterator

from typing_extensions import assert_type

import kvstore
import kvstore.aio
from kvstore import Key, Namespace, Options, Store, Value


def remember(db: Store, session: int, messages: list[dict[str, str]]) -> None:
    """A function taking the handle, as an application passes it around."""
    db.put(f"session:{session}:meta", {"stage": "intake", "turns": len(messages)})
    db.put_many({f"session:{session}:msg:{i}": m for i, m in enumerate(messages)}, durable=True)


def keys_of(handle: Store[Any]) -> list[Key]:
    return list(handle.keys())


def sync_api(path: Path) -> None:
    with kvstore.open(path, durable=False, cache_entries=1000, compression="zstd") as db:
        assert_type(db, Store[bytes])
        assert_type(db.options, Options)
        remember(db, 1, [{"role": "user", "content": "hello"}])

        # reads return Any: the application knows its values' shape
        meta = db.get("session:1:meta")
        stage: str = meta["stage"]
        assert stage == "intake"
        assert db.get(b"missing", default=0) == 0
        assert "session:1:meta" in db and len(db) == 2
        assert_type(db.get_many(["session:1:meta", b"session:1:msg:0"]), list[Any])

        # scans: bytes keys from a bytes handle; keys_only narrows the items
        for key, value in db.scan(prefix="session:1:"):
            assert_type(key, bytes)
        assert_type(db.scan(keys_only=True), Iterator[bytes])
        assert_type(list(db), list[bytes])

        # values: what msgpack carries, nested
        nested: Value = {"a": [1, 2.5, None, True, b"raw", ("t", "u")], "b": {"c": "d"}}
        db.put("nested", nested)
        counts: dict[str, int] = {"x": 1}
        db.put("counts", counts)  # a dict[str, int] is a Value (Mapping is covariant in its values)
        db["item"] = [1, 2, 3]
        del db["item"]

        # TTLs
        db.put("short", "lived", ttl=60)
        db.put("forever", "kept", ttl=math.inf)
        expiry = db.expiry("short")
        assert_type(expiry, "tuple[float, float] | None")
        assert db.get("short", refresh_ttl=True) == "lived"

        # namespaces: str keys on request
        notes = db.namespace("notes", keys=str, ttl=3600)
        assert_type(notes, Namespace[str])
        notes.put("n1", {"text": "hi"})
        for name in notes.keys():
            assert_type(name, str)
        for name, note in notes.items():
            assert_type(name, str)
        raw = db.namespace("raw")
        assert_type(raw, Namespace[bytes])
        assert keys_of(raw) == []
        assert_type(notes.default_ttl, "float | None")
        assert "notes" in db.namespaces()

        # batches
        with db.batch(durable=True) as b:
            b.put("a", 1)
            b.put("n2", "other namespace", namespace="notes", ttl=30)
            b.delete("counts")
            assert len(b) == 3

        # transactions
        with db.transaction() as tx:
            assert_type(tx, kvstore.Transaction)
            balance = tx.get("balance", 0)  # Any: a stored value's shape is the application's
            tx.put("balance", balance + 10)
            assert_type(tx.get_many(["balance", "visits"]), list[Any])
        assert_type(db.incr("visits"), int)
        assert_type(db.compare_and_set("a", 1, 2), bool)
        assert_type(db.compare_and_set("a", 2, kvstore.MISSING), bool)
        db.update("balance", lambda old: old * 2, default=0)

        def step(tx: kvstore.Transaction) -> str:
            tx.put("by-step", True)
            return "done"

        assert_type(db.transact(step, retries=3), str)

        # memoize keeps the function's parameters and result type
        @db.memoize(ttl=600, namespace="tool-calls")
        def search(query: str, top_k: int = 5) -> list[str]:
            return [query] * top_k

        assert_type(search("lmdb", top_k=2), list[str])
        assert_type(search.key("lmdb"), bytes)
        search.forget("lmdb")
        assert_type(search.clear(), int)

        stats: dict[str, Any] = db.stats()
        assert stats["commits"] >= 0
        db.flush(timeout=5.0)

    try:
        kvstore.open(path, readonly=True).put("x", 1)
    except kvstore.ReadOnlyError as exc:
        assert isinstance(exc, kvstore.KVStoreError)


async def async_api(path: Path) -> None:
    async with kvstore.aio.open(path, durable=True) as db:
        assert_type(db, kvstore.aio.AsyncStore[bytes])
        await db.aput("k", {"v": 1}, ttl=60)
        assert (await db.aget("k"))["v"] == 1
        async with db.abatch() as b:
            b.put("k2", [1, 2])
        async for key in db.ascan(keys_only=True):
            assert_type(key, bytes)
        notes = await db.anamespace("anotes", keys=str)
        async for name, _value in notes.ascan():
            assert_type(name, str)
        assert_type(await db.aincr("n"), int)

        async def step(tx: kvstore.Transaction) -> int:
            tx.put("from-async", 1)
            return 1

        assert_type(await db.atransact(step), int)
        async with db.atransaction() as tx:
            tx.put("in-tx", True)
        await db.aflush()


def langgraph_api(path: Path) -> None:
    from kvstore.integrations.langgraph import KVStore, KVStoreSaver

    with kvstore.open(path) as db:
        saver = KVStoreSaver(db, ttl={"default_ttl": 60})
        assert saver.db is db
        store = KVStore(db, namespace="memories")
        store.put(("user", "1"), "prefs", {"theme": "dark"})
        item = store.get(("user", "1"), "prefs")
        assert item is not None and item.value["theme"] == "dark"


def main(directory: str) -> None:
    base = Path(directory)
    sync_api(base / "sync")
    asyncio.run(async_api(base / "async"))
    langgraph_api(base / "langgraph")


if __name__ == "__main__":
    main(sys.argv[1])
