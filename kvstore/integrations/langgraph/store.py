"""The LangGraph long-term memory store, KVStore: layout and guarantees in
kvstore.integrations.langgraph's docstring."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from datetime import datetime, timezone

from ... import errors
from ...errors import InvalidArgumentError, InvalidTTLError
from ...store import MAX_KEY_SIZE
from ...ttl import MAX_TTL
from ._owner import _SEP, _Owner, _langgraph_missing

try:
    from langgraph.store.base import (
        BaseStore,
        GetOp,
        InvalidNamespaceError as _LangGraphNamespaceError,
        Item,
        ListNamespacesOp,
        MatchCondition,
        Op,
        PutOp,
        Result,
        SearchItem,
        SearchOp,
        TTLConfig,
        validate_op_namespace,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise _langgraph_missing(exc) from exc

__all__ = ["KVStore", "InvalidStoreNamespaceError"]


class InvalidStoreNamespaceError(errors.InvalidNamespaceError, _LangGraphNamespaceError):
    """A LangGraph store namespace kvstore cannot hold: empty, or a label that
    is empty, not a str, or contains "." or NUL. Both a kvstore error and
    LangGraph's own InvalidNamespaceError."""


def _namespace(labels) -> tuple[str, ...]:
    return tuple(labels)


def _ns_prefix(namespace: tuple[str, ...]) -> str:
    """Keys of a namespace and of every namespace under it start with this."""
    return "".join(label + _SEP for label in namespace)


def _item_key(namespace: tuple[str, ...], key: str) -> str:
    if not namespace:
        raise InvalidStoreNamespaceError("a namespace cannot be empty: give at least one label")
    full = _ns_prefix(namespace) + _SEP + key
    if len(full) > MAX_KEY_SIZE // 4 and len(full.encode("utf-8")) > MAX_KEY_SIZE:
        raise InvalidArgumentError(
            f"namespace {namespace!r} and key {key[:40]!r} add up to more than {MAX_KEY_SIZE} "
            f"bytes, the longest key kvstore holds: use shorter labels or keys")
    return full


def _split_item_key(raw: bytes) -> tuple[tuple[str, ...], str]:
    text = raw.decode("utf-8")
    end = text.index(_SEP + _SEP)  # labels are never empty: the first NUL NUL ends the namespace
    return tuple(text[:end].split(_SEP)), text[end + 2:]


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _ttl_seconds(minutes) -> float:
    """A LangGraph TTL (minutes; None: never expires) as a kvstore one
    (seconds; math.inf: never expires, whatever default the kvstore
    namespace may have). InvalidTTLError for anything else."""
    if minutes is None or minutes == math.inf:
        return math.inf
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) \
            or not 0 < minutes <= MAX_TTL / 60:  # also refuses nan
        raise InvalidTTLError(
            f"a LangGraph ttl is a number of minutes > 0 and at most {MAX_TTL // 60} (100 years), "
            f"not {minutes!r}; pass ttl=None for an item that never expires")
    return minutes * 60


def _ns_matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        part = namespace[:len(path)]
    elif condition.match_type == "suffix":
        part = namespace[len(namespace) - len(path):]
    else:
        raise InvalidArgumentError(
            f"unknown namespace match type {condition.match_type!r}: use 'prefix' or 'suffix'")
    return all(p == "*" or p == label for p, label in zip(path, part))


_OPERATORS = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def _compare(op: str, actual, expected) -> bool:
    fn = _OPERATORS.get(op)
    if fn is None:
        raise InvalidArgumentError(
            f"unknown filter operator {op!r}: use {', '.join(_OPERATORS)} or a plain value")
    if op in ("$eq", "$ne"):
        return fn(actual, expected)
    try:  # an ordering between values that have none (a str and a number) is no match
        return fn(actual, expected)
    except TypeError:
        return False


def _matches(actual, expected) -> bool:
    """Whether a stored value matches a filter value: equality, {"$op": v}
    comparisons, nested mappings and sequences compared member by member."""
    if isinstance(expected, dict):
        if any(isinstance(k, str) and k.startswith("$") for k in expected):
            return all(_compare(op, actual, v) for op, v in expected.items())
        return isinstance(actual, dict) and all(_matches(actual.get(k), v)
                                                for k, v in expected.items())
    if isinstance(expected, (list, tuple)):
        return isinstance(actual, (list, tuple)) and len(actual) == len(expected) and all(
            _matches(a, e) for a, e in zip(actual, expected))
    return actual == expected


class KVStore(_Owner, BaseStore):
    """A LangGraph long-term memory store (`BaseStore`) on kvstore.

    :param db: an open `kvstore.Store` (or `kvstore.aio.AsyncStore`); not closed by this object
    :param durable: True (default): a put/delete returns once synced; False: at once
    :param namespace: the kvstore namespace holding the items
    :param ttl: LangGraph's TTLConfig: ``default_ttl`` (minutes) for puts
        that give no ttl, ``refresh_on_read`` (default True) for reads that
        do not say whether to refresh. ``sweep_interval_minutes`` is not
        used: kvstore's own background sweep deletes expired items
        (the store's ``ttl_sweep_interval``), and reads never see them.

    Supported: get, put (a value that msgpack carries: JSON-like data, bytes),
    delete, search by namespace prefix with equality / ``$eq $ne $gt $gte $lt
    $lte`` filters (nested mappings compared member by member), limit and
    offset, list_namespaces with prefix, suffix (``"*"`` wildcards),
    max_depth, limit and offset. Search returns items in namespace-then-key
    order. An update keeps the item's created_at.

    TTL, as in LangGraph's PostgresStore: a put's ``ttl`` is in minutes
    (None: never expires; ``put()`` without one uses the config's
    default_ttl), and an item expires that long after its last put or
    refreshing read. A get or search with ``refresh_ttl`` (GetOp/SearchOp's
    default, or the config's refresh_on_read through get()/search()) pushes
    the expiry of the items it returns to now + their TTL. Expired items are
    invisible to get, search and list_namespaces at once, as TTLConfig's
    ``omit_expired`` asks. Not supported: semantic search (no vector index:
    a search's ``query`` is ignored, as in LangGraph's InMemoryStore without
    an index).
    """

    supports_ttl = True

    def __init__(self, db, *, durable: bool = True, namespace: str = "langgraph:store",
                 ttl: TTLConfig | None = None) -> None:
        store = self._attach(db, durable)
        if ttl is not None:
            if not isinstance(ttl, dict):
                raise InvalidArgumentError(
                    f"ttl takes LangGraph's TTLConfig, a dict such as {{'default_ttl': 60}} "
                    f"(minutes), not {type(ttl).__name__}")
            _ttl_seconds(ttl.get("default_ttl"))  # a bad default raises now, not at a put
        self.ttl_config = ttl
        self._ns_items = namespace
        self._items = store.namespace(namespace)
        self._refreshable = not store.readonly  # a refresh is a write

    @classmethod
    def from_path(cls, path, *, durable: bool = True, namespace: str = "langgraph:store",
                  ttl: TTLConfig | None = None, **options) -> "KVStore":
        """A store on the kvstore store at `path` (created if missing), which it
        owns: `close()` or ``with``/``async with`` closes it."""
        return cls._from_path(path, options, durable=durable, namespace=namespace, ttl=ttl)

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ops; reads see the store before the batch, and the batch's puts
        (the last one per item wins) commit together, atomically."""
        results, writes = self._run(ops)
        self._write(writes)
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        results, writes = self._run(ops)
        await self._awrite(writes)
        return results

    def _run(self, ops: Iterable[Op]) -> tuple[list, list]:
        results: list = []
        puts: dict[tuple, PutOp] = {}
        for op in ops:
            try:
                validate_op_namespace(op)
            except _LangGraphNamespaceError as exc:
                raise InvalidStoreNamespaceError(str(exc)) from None
            if isinstance(op, GetOp):
                results.append(self._get(_namespace(op.namespace), str(op.key),
                                         op.refresh_ttl))
            elif isinstance(op, SearchOp):
                results.append(self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._list_namespaces(op))
            elif isinstance(op, PutOp):
                puts[(_namespace(op.namespace), str(op.key))] = op
                results.append(None)
            else:
                raise InvalidArgumentError(f"unknown store operation {type(op).__name__}")
        return results, self._put_ops(puts)

    def _put_ops(self, puts: dict) -> list:
        if not puts:
            return []
        keys = [_item_key(ns, key) for ns, key in puts]
        previous = self._items.get_many(keys)
        now = time.time()
        ops = []
        for key, old, op in zip(keys, previous, puts.values()):
            if op.value is None:
                ops.append((self._ns_items, key, None))
            else:
                created = old[1] if old is not None else now
                ops.append((self._ns_items, key, [dict(op.value), created, now],
                            _ttl_seconds(op.ttl)))  # a bad ttl raises before any write
        return ops

    def _get(self, namespace: tuple[str, ...], key: str, refresh: bool) -> Item | None:
        if not namespace:
            return None
        record = self._items.get(_item_key(namespace, key),
                                 refresh_ttl=bool(refresh) and self._refreshable)
        if record is None:
            return None
        value, created, updated = record
        return Item(value=value, key=key, namespace=namespace, created_at=_when(created),
                    updated_at=_when(updated))

    def _search(self, op: SearchOp) -> list[SearchItem]:
        out: list[SearchItem] = []
        found: list[bytes] = []  # their keys
        if op.limit <= 0:
            return out
        skip = max(op.offset, 0)
        for raw, (value, created, updated) in self._items.scan(
                _ns_prefix(_namespace(op.namespace_prefix)) or None):
            if op.filter and not all(_matches(value.get(k), v) for k, v in op.filter.items()):
                continue
            if skip:
                skip -= 1
                continue
            namespace, key = _split_item_key(raw)
            out.append(SearchItem(namespace=namespace, key=key, value=value,
                                  created_at=_when(created), updated_at=_when(updated)))
            found.append(raw)
            if len(out) >= op.limit:
                break
        if op.refresh_ttl and self._refreshable:
            for raw in found:  # the items returned, as PostgresStore refreshes them
                self._items.get(raw, refresh_ttl=True)
        return out

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        conditions = op.match_conditions or ()
        # The fixed leading labels of a prefix condition narrow the scan.
        lead: tuple[str, ...] = ()
        for c in conditions:
            if c.match_type == "prefix":
                fixed = []
                for label in c.path:
                    if label == "*":
                        break
                    fixed.append(label)
                if len(fixed) > len(lead):
                    lead = tuple(fixed)
        prefix = _ns_prefix(lead) or None
        wanted = max(op.offset, 0) + op.limit
        found: list[tuple[str, ...]] = []
        start = None
        # Skip scan: read the first key of each namespace only, then jump past it.
        while len(found) < wanted:
            raw = next(self._items.scan(prefix, start=start, keys_only=True), None)
            if raw is None:
                break
            namespace, _ = _split_item_key(raw)
            encoded = _ns_prefix(namespace)
            if all(_ns_matches(c, namespace) for c in conditions):
                if op.max_depth is not None and len(namespace) > op.max_depth:
                    namespace = namespace[:op.max_depth]
                    encoded = _ns_prefix(namespace)
                    start = encoded[:-1] + "\x01"  # past every namespace under the truncated one
                else:
                    start = encoded + "\x01"  # past this namespace's own items
                if not found or found[-1] != namespace:
                    found.append(namespace)
            else:
                start = encoded + "\x01"
        return found[max(op.offset, 0):wanted]
