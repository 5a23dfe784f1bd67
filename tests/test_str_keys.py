"""db.namespace(name, keys=str): scans, iteration, keys() and items() return
keys as str; bytes stays the default."""

from __future__ import annotations

import asyncio

import pytest

import kvstore
import kvstore.aio
from kvstore.errors import InvalidArgumentError, InvalidKeyError


@pytest.fixture
def sessions(db):
    ns = db.namespace("sessions")
    ns.put_many({"s:1": 1, "s:2": 2, "ünï:3": 3, "t:4": 4}, durable=True)
    return db


def test_a_str_namespace_returns_str_keys_from_every_scan(sessions):
    ns = sessions.namespace("sessions", keys=str)
    assert ns.key_type is str
    assert list(ns) == ["s:1", "s:2", "t:4", "ünï:3"]
    assert list(ns.keys()) == ["s:1", "s:2", "t:4", "ünï:3"]
    assert list(ns.items()) == [("s:1", 1), ("s:2", 2), ("t:4", 4), ("ünï:3", 3)]
    assert list(ns.scan(prefix="s:", reverse=True)) == [("s:2", 2), ("s:1", 1)]
    assert list(ns.scan(start=b"s:2", stop="u", keys_only=True)) == ["s:2", "t:4"]
    assert dict(ns.items()) == {k: ns[k] for k in ns}


def test_pending_writes_come_back_as_str_too(sessions):
    ns = sessions.namespace("sessions", keys=str)
    ns.put("s:0", 0)  # buffered: read back from this process's pending writes
    assert next(iter(ns)) == "s:0"
    assert all(type(k) is str for k in ns)


def test_bytes_stays_the_default(sessions):
    assert sessions.namespace("sessions").key_type is bytes
    assert list(sessions.namespace("sessions").keys())[0] == b"s:1"
    assert list(sessions.namespace("sessions", keys=bytes).keys())[0] == b"s:1"


def test_a_key_that_is_not_utf8_says_which_and_what_to_do(db):
    db.namespace("blobs").put(b"\xff\x00", 1, durable=True)
    ns = db.namespace("blobs", keys=str)
    with pytest.raises(InvalidKeyError, match=r"key b'\\xff\\x00' in namespace 'blobs' is not UTF-8.*keys=bytes"):
        list(ns)
    assert ns.get(b"\xff\x00") == 1  # only the str form is missing


def test_keys_must_be_bytes_or_str(db):
    with pytest.raises(InvalidArgumentError, match="keys must be bytes or str"):
        db.namespace("x", keys=int)


def test_a_readonly_str_namespace_and_memoize_on_it(store_path):
    with kvstore.open(store_path) as db:
        notes = db.namespace("notes", keys=str)

        @notes.memoize(name="up")
        def up(text):
            return text.upper()

        up("a")
        assert list(notes) == [up.key("a").decode()]
        assert up.clear() == 1
        notes.put("k", 1, durable=True)
    with kvstore.open(store_path, readonly=True) as ro:
        assert list(ro.namespace("notes", keys=str)) == ["k"]


def test_async_namespaces_take_keys_too(store_path):
    async def main():
        async with kvstore.aio.open(store_path) as db:
            ns = await db.anamespace("n", keys=str)
            await ns.aput("k", 1, durable=True)
            return [k async for k in ns.ascan(keys_only=True)]

    assert asyncio.run(main()) == ["k"]
