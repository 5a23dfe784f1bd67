"""A handle opened with readonly=True never writes, whatever else is open in
the process, and a store whose files this process may not write can still be
read with readonly=True (or is refused with the real cause)."""

from __future__ import annotations

import asyncio

import pytest

import kvstore
import kvstore.aio
from kvstore.errors import ReadOnlyError


def _writes(handle):
    """Every write entry point of a handle, each a zero-argument call."""
    def batch():
        with handle.batch() as b:
            b.put("k", 1)

    return {
        "put": lambda: handle.put("k", 1),
        "setitem": lambda: handle.__setitem__("k", 1),
        "delete": lambda: handle.delete("k"),
        "delitem": lambda: handle.__delitem__("k"),
        "put_many": lambda: handle.put_many({"k": 1}),
        "batch": batch,
        "new namespace with ttl": lambda: handle.namespace("brand-new-ttl", ttl=60),
        "set_default_ttl": lambda: handle.set_default_ttl(60),
        "train_dictionary": lambda: handle.train_dictionary(),
        "refresh_ttl": lambda: handle.get("k", refresh_ttl=True),
    }


@pytest.mark.parametrize("entry", sorted(_writes(None)))
@pytest.mark.parametrize("where", ["default", "namespace"])
def test_a_readonly_handle_refuses_every_write_while_a_writable_one_is_open(store_path, entry, where):
    with kvstore.open(store_path) as writable:
        writable.put("k", 0, durable=True)
        writable.namespace("ns").put("k", 0, durable=True)
        with kvstore.open(store_path, readonly=True) as ro:
            handle = ro if where == "default" else ro.namespace("ns")
            with pytest.raises(ReadOnlyError, match="read-only"):
                _writes(handle)[entry]()
        writable.flush()
        assert writable.get("k") == 0
        assert writable.namespace("ns").get("k") == 0
        assert writable.namespaces() == ["default", "ns"]


def test_a_readonly_handle_never_creates_a_namespace_while_a_writable_one_is_open(store_path):
    # As with no writable handle open (test_store_api): a missing namespace
    # reads as empty through a read-only handle, and is not created.
    with kvstore.open(store_path) as writable:
        with kvstore.open(store_path, readonly=True) as ro:
            missing = ro.namespace("brand-new")
            assert missing.get("k") is None and list(missing.scan()) == []
            with pytest.raises(ReadOnlyError):
                missing.put("k", 1)
        assert writable.namespaces() == ["default"]


def test_a_writable_handle_still_writes_beside_a_readonly_one(store_path):
    with kvstore.open(store_path) as writable, kvstore.open(store_path, readonly=True) as ro:
        writable.put("k", 1, durable=True)
        assert ro.get("k") == 1


def test_an_async_readonly_handle_refuses_writes_while_a_writable_one_is_open(store_path):
    async def main():
        async with kvstore.aio.open(store_path) as writable:
            await writable.aput("k", 0, durable=True)
            async with kvstore.aio.open(store_path, readonly=True) as ro:
                for call in (lambda: ro.aput("k", 1), lambda: ro.adelete("k"),
                             lambda: ro.aput_many({"k": 1}),
                             lambda: ro.atrain_dictionary()):
                    with pytest.raises(ReadOnlyError):
                        await call()
                with pytest.raises(ReadOnlyError):
                    async with ro.abatch() as b:
                        b.put("k", 1)
                await ro.anamespace("brand-new")
            assert await writable.aget("k") == 0
            assert await writable.anamespaces() == ["default"]

    asyncio.run(main())
