"""Misuse of the API that a type checker must flag.

Each line below is wrong on purpose and carries `# type: ignore[CODE]`.
tests/test_typing.py runs `mypy --strict --warn-unused-ignores` on this
file: an ignore that mypy finds unused means the misuse was NOT flagged,
which fails the test. Never run; only type-checked.
"""

from __future__ import annotations

import datetime
from typing import Any

import kvstore
import kvstore.aio
from kvstore import Namespace, Store


def sync_misuse(db: Store) -> None:
    db.put(123, "value")  # type: ignore[arg-type]  # an int key
    db.put("k", {1, 2, 3})  # type: ignore[arg-type]  # a set: msgpack has none
    db.put("k", datetime.datetime.now())  # type: ignore[arg-type]  # an object
    db.put("k", "v", durable="yes")  # type: ignore[arg-type]  # durable is a bool
    db.put("k", "v", ttl="60")  # type: ignore[arg-type]  # ttl is seconds, a number
    db.get(None)  # type: ignore[arg-type]  # a key is bytes or str
    db.delete(3.5)  # type: ignore[arg-type]
    db.put_many([("k", 1), (2, 2)])  # type: ignore[list-item]  # a pair with an int key
    db.scan(prefix=7)  # type: ignore[call-overload]  # a prefix is bytes or str
    db.namespace(42)  # type: ignore[call-overload]  # a namespace name is a str
    db.namespace("n", keys=int)  # type: ignore[arg-type]  # keys are bytes or str
    with db.batch() as b:
        b.put(b"k", object())  # type: ignore[arg-type]
    db["k"] = {"when": datetime.date.today()}  # type: ignore[dict-item]


def key_types(db: Store) -> None:
    notes = db.namespace("notes", keys=str)
    for key in notes.scan(keys_only=True):
        key.decode()  # type: ignore[attr-defined]  # keys=str: the keys are str
    raw: Namespace[str] = db.namespace("raw")  # type: ignore[assignment]  # keys=bytes by default


def transaction_misuse(db: Store) -> None:
    with db.transaction() as tx:
        tx.put(42, "v")  # type: ignore[arg-type]  # a key is bytes or str
        tx.put("k", {"s": {1, 2}})  # type: ignore[dict-item]  # a set is no msgpack value
        tx.get("k", namespace=7)  # type: ignore[arg-type]  # a namespace name is a str


def option_misuse(path: str) -> None:
    kvstore.open(path, durable=1.5)  # type: ignore[arg-type]  # a bool option
    kvstore.open(path, map_size="1G")  # type: ignore[arg-type]  # an int option
    kvstore.open(path, compression="lz4")  # type: ignore[arg-type]  # "zstd" or "none"
    kvstore.open(path, no_such_option=True)  # type: ignore[call-arg]
    kvstore.aio.open(path, readonly="no")  # type: ignore[arg-type]


def memoize_misuse(db: Store) -> None:
    @db.memoize(ttl=60)
    def search(query: str, top_k: int = 5) -> list[str]:
        return [query] * top_k

    search(3)  # type: ignore[arg-type]  # the memoized function keeps its parameters
    n: int = search("q")  # type: ignore[assignment]  # and its result type


async def async_misuse(db: kvstore.aio.AsyncStore[Any]) -> None:
    await db.aput(1, "v")  # type: ignore[arg-type]
    await db.aput("k", {1})  # type: ignore[arg-type]
