"""Atomic batches on etcd: `with db.batch() as b: ...` is one group of
writes, so one etcd transaction (kvstore/etcd/grouping.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import StoreClosedError
from ..layout import check_key, check_namespace_name
from .grouping import Op
from .remote import Remote, make_op, ttl_seconds

if TYPE_CHECKING:
    from .store import EtcdStore

__all__ = ["EtcdBatch"]


class EtcdBatch:
    """Writes that commit atomically, in one etcd transaction, when the `with` block exits normally."""

    def __init__(self, store: EtcdStore, durable: bool | None):
        self._store = store
        self._durable = durable
        self._ops: list[Op] = []
        self._state = "open"

    def _check(self, namespace: str | None) -> tuple[Remote, str]:
        if self._state != "open":
            raise StoreClosedError(f"this batch is {self._state}; start a new one with db.batch()")
        if namespace is not None:
            check_namespace_name(namespace)
        return self._store._writable(), self._store._ns if namespace is None else namespace

    def put(self, key: Any, value: Any, *, namespace: str | None = None, ttl: float | None = None) -> None:
        remote, ns = self._check(namespace)
        self._ops.append(make_op(remote, ns, key, value, ttl_seconds(remote, ns, ttl)))

    def delete(self, key: Any, *, namespace: str | None = None) -> None:
        remote, ns = self._check(namespace)
        raw = check_key(key)
        self._ops.append((ns, raw, remote.keys.key(ns, raw), None, 0))

    def __len__(self) -> int:
        return len(self._ops)

    def __enter__(self) -> EtcdBatch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self._state != "open":
            return
        ops, self._ops = self._ops, []
        if exc_type is not None:
            self._state = "discarded"
            return
        self._state = "committed"
        self._store._submit(self._store._live(), ops, self._durable, "batch")
