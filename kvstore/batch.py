"""Batch: writes gathered in a `with` block, committed as one group.

`Store.batch()` returns one. Each put is checked and encoded at the call,
in the caller's thread, as a plain put is (store.py), so a bad value raises
there and never reaches the writer; when the block exits normally the
writes are submitted together, as one group (writer.py), and commit
atomically; when it raises, they are discarded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from . import ttl as _ttl
from .errors import StoreClosedError
from .layout import check_key, check_namespace_name
from ._types import Key, Value

if TYPE_CHECKING:
    from types import TracebackType

    from .store import Store

__all__ = ["Batch"]


class Batch:
    """Writes that commit atomically when the `with` block exits normally."""

    def __init__(self, store: Store[Any], durable: bool | None):
        self._store = store
        self._durable = durable
        self._ops: list[Any] = []
        self._nbytes = 0
        self._before: Any = None  # the TTL metadata step of its namespaces (ttl.Enable), if any
        self._state = "open"

    def _target(self, namespace: str | None) -> tuple[str, Any]:
        if self._state != "open":
            raise StoreClosedError(f"this batch is {self._state}; start a new one with db.batch()")
        store = self._store
        engine = store._live_engine()
        ns = store._ns if namespace is None else namespace
        if namespace is not None:
            check_namespace_name(namespace)
        return ns, store._dbi(engine, ns)

    def put(self, key: Key, value: Value, *, namespace: str | None = None, ttl: float | None = None) -> None:
        """Add a put to the batch; `namespace` targets another namespace of the
        store; `ttl` as for Store.put (None: that namespace's default)."""
        ns, dbi = self._target(namespace)
        raw = check_key(key)
        engine = self._store._live_engine()
        record = self._store._root._codec.encode(value, dictionary=engine.dicts.for_encoding(ns),
                                                 key=raw if engine.keyed else None)
        if ttl is not None or ns in engine.ttl.defaults:
            record, step = _ttl.stamp(engine, ns, record, ttl)
            if step is not None:
                self._before = step | self._before
        self._nbytes += len(record)
        self._ops.append((ns, dbi, raw, record))

    def delete(self, key: Key, *, namespace: str | None = None) -> None:
        ns, dbi = self._target(namespace)
        self._ops.append((ns, dbi, check_key(key), None))

    def __len__(self) -> int:
        return len(self._ops)

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._close(exc_type is not None, None)

    def _close(self, discard: bool, callback: Callable[[Any], None] | None) -> bool:
        """Discard the batch, or submit its writes as one group (see
        Store._submit); returns whether to wait for callback."""
        if self._state != "open":
            return False
        ops, self._ops = self._ops, []
        if discard:
            self._state = "discarded"
            return False
        self._state = "committed"
        if not ops:
            return False
        store = self._store
        return store._submit(store._live_engine(), ops, self._nbytes, self._durable, callback,
                             self._before)

