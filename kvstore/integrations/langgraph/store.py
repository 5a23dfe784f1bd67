"""The LangGraph long-term memory store, KVStore: layout and guarantees in
kvstore.integrations.langgraph's docstring."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any, Callable

from ... import errors
from ...errors import InvalidArgumentError
from ...store import MAX_KEY_SIZE
from ._owner import _SEP, Handle, _Owner, _check_ttl_config, _langgraph_missing, _ttl_seconds
from ._owner import Op as Write
from .vectors import EXACT_MAX, SearchNotInstalledError

try:
    from langgraph.store.base import (
        BaseStore,
        GetOp,
        IndexConfig,
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

from ._durability import synced_by_run  # noqa: E402 (after LangGraph's import check)
from .semantic import Item as ItemId, Semantic  # noqa: E402

# What a batch's puts embedded: (texts, their vectors, {query: vector})
Embedded = tuple[list[Any], list[list[float]], dict[str, list[float]]]
# A search's candidate: (item key, record, score or None)
Row = tuple[bytes, Any, "float | None"]

__all__ = ["KVStore", "InvalidStoreNamespaceError", "SearchNotInstalledError"]


class InvalidStoreNamespaceError(errors.InvalidNamespaceError, _LangGraphNamespaceError):
    """A LangGraph store namespace kvstore cannot hold: empty, or a label that
    is empty, not a str, or contains "." or NUL. Both a kvstore error and
    LangGraph's own InvalidNamespaceError."""


def _namespace(labels: Iterable[str]) -> tuple[str, ...]:
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


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def _compare(op: str, actual: Any, expected: Any) -> bool:
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


def _matches(actual: Any, expected: Any) -> bool:
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
    equal: bool = actual == expected
    return equal


def _passes(op: SearchOp, value: dict[str, Any]) -> bool:
    """Whether an item's value passes a search's filter (every member matches)."""
    return not op.filter or all(_matches(value.get(k), v) for k, v in op.filter.items())


def _search_item(raw: bytes, value: dict[str, Any], created: float, updated: float,
                 score: float | None = None) -> SearchItem:
    namespace, key = _split_item_key(raw)
    return SearchItem(namespace=namespace, key=key, value=value, created_at=_when(created),
                      updated_at=_when(updated), score=score)


class KVStore(_Owner, BaseStore):
    """A LangGraph long-term memory store (`BaseStore`) on kvstore.

    :param db: an open `kvstore.Store` (or `kvstore.aio.AsyncStore`); not closed by this object
    :param durable: True (default): a put/delete returns once synced (in a
        graph run whose checkpointer is a durable KVStoreSaver on the same
        kvstore store, once appended: the run's next checkpoint put syncs
        it, docs/langgraph.md); False: at once
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
    ``omit_expired`` asks.

    Semantic search, with ``index=`` (LangGraph's IndexConfig: ``dims``,
    ``embed``, ``fields``; needs the `search` extra): puts embed the texts
    at the fields (a put's ``index=False`` or ``index=[paths]`` overrides),
    and store their vectors in ``<namespace>:vectors``, in the put's batch;
    a search with ``query`` ranks the items by cosine similarity (an item
    scores its best vector; ``SearchItem.score``), after the filter, then
    lists matching items without vectors (score None), as InMemoryStore.
    Every process keeps an index of the stored vectors and catches up with
    other writers before each search (vectors.py): exact (numpy) up to
    ``exact_max`` candidate vectors, an HNSW graph (hnswlib) beyond.
    """

    supports_ttl = True

    def __init__(self, db: Handle, *, durable: bool = True, namespace: str = "langgraph:store",
                 ttl: TTLConfig | None = None, index: IndexConfig | None = None,
                 exact_max: int = EXACT_MAX) -> None:
        store = self._attach(db, durable)
        if ttl is not None:
            _check_ttl_config(ttl)
        self.ttl_config = ttl
        self._ns_items = namespace
        self._items = store.namespace(namespace)
        self._refreshable = not store.readonly  # a refresh is a write
        self.index_config = index
        self._semantic = Semantic(store, namespace, index, exact_max) if index else None

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], *, durable: bool = True,
                  namespace: str = "langgraph:store", ttl: TTLConfig | None = None,
                  index: IndexConfig | None = None, exact_max: int = EXACT_MAX,
                  **options: Any) -> KVStore:
        """A store on the kvstore store at `path` (created if missing), which it
        owns: `close()` or ``with``/``async with`` closes it."""
        return cls._from_path(path, options, durable=durable, namespace=namespace, ttl=ttl,
                              index=index, exact_max=exact_max)

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ops; reads see the store before the batch, and the batch's puts
        (the last one per item wins) commit together, atomically, with their
        vectors when the store has an index (embedded before anything is read)."""
        todo, puts = self._prepare(ops)
        embedded: Embedded | None = None
        if self._semantic is not None:
            texts = self._semantic.texts(puts)
            embedded = (texts, *self._semantic.embed(texts, self._semantic.queries(todo)))
        results, writes = self._run(todo, puts, embedded)
        self._write(writes, durable=not (writes and synced_by_run(self._db)))
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        todo, puts = self._prepare(ops)
        embedded: Embedded | None = None
        if self._semantic is not None:
            texts = self._semantic.texts(puts)
            embedded = (texts, *await self._semantic.aembed(texts, self._semantic.queries(todo)))
        results, writes = self._run(todo, puts, embedded)
        await self._awrite(writes, durable=not (writes and synced_by_run(self._db)))
        return results

    @staticmethod
    def _prepare(ops: Iterable[Op]) -> tuple[list[Op], dict[ItemId, PutOp]]:
        """The ops as a list, checked, and the puts by item (the last one wins)."""
        todo = list(ops)
        puts: dict[ItemId, PutOp] = {}
        for op in todo:
            try:
                validate_op_namespace(op)
            except _LangGraphNamespaceError as exc:
                raise InvalidStoreNamespaceError(str(exc)) from None
            if isinstance(op, PutOp):
                puts[(_namespace(op.namespace), str(op.key))] = op
            elif not isinstance(op, (GetOp, SearchOp, ListNamespacesOp)):
                raise InvalidArgumentError(f"unknown store operation {type(op).__name__}")
        return todo, puts

    def _run(self, ops: list[Op], puts: dict[ItemId, PutOp], embedded: Embedded | None
             ) -> tuple[list[Result], list[Write]]:
        """Results of the reads, and the writes of the puts; `embedded`:
        (texts, their vectors, {query: vector}) when the store has an index."""
        results: list[Result] = []
        queries = embedded[2] if embedded is not None else {}
        for op in ops:
            if isinstance(op, GetOp):
                results.append(self._get(_namespace(op.namespace), str(op.key),
                                         op.refresh_ttl))
            elif isinstance(op, SearchOp):
                if op.query and op.query in queries:
                    results.append(self._semantic_search(op, queries[op.query]))
                else:
                    results.append(self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._list_namespaces(op))
            else:
                results.append(None)
        return results, self._put_ops(puts, embedded)

    def _put_ops(self, puts: dict[ItemId, PutOp], embedded: Embedded | None = None) -> list[Write]:
        if not puts:
            return []
        keys = [_item_key(ns, key) for ns, key in puts]
        previous = self._items.get_many(keys)
        now = time.time()
        ops: list[Write] = []
        ttls: list[float | None] = []
        for key, old, op in zip(keys, previous, puts.values()):
            if op.value is None:
                ops.append((self._ns_items, key, None))
                ttls.append(None)
            else:
                created = old[1] if old is not None else now
                ttls.append(_ttl_seconds(op.ttl))  # a bad ttl raises before any write
                ops.append((self._ns_items, key, [dict(op.value), created, now], ttls[-1]))
        if embedded is not None:
            texts, docs, _ = embedded
            ops += self._semantic.ops(puts, keys, texts, docs, ttls)  # type: ignore[union-attr]  # embedded: it is set
        return ops

    def _get(self, namespace: tuple[str, ...], key: str, refresh: bool) -> Item | None:
        if not namespace:
            return None
        raw = _item_key(namespace, key)
        record = self._items.get(raw, refresh_ttl=bool(refresh) and self._refreshable)
        if record is None:
            return None
        if refresh and self._refreshable and self._semantic is not None:
            self._semantic.refresh([raw])
        value, created, updated = record
        return Item(value=value, key=key, namespace=namespace, created_at=_when(created),
                    updated_at=_when(updated))

    def _search(self, op: SearchOp) -> list[SearchItem]:
        out: list[SearchItem] = []
        found: list[bytes] = []  # their keys
        if op.limit > 0:
            scan = self._items.scan(_ns_prefix(_namespace(op.namespace_prefix)) or None)
            self._collect(op, ((raw, record, None) for raw, record in scan), out, found,
                          max(op.offset, 0))
            self._refresh(op, found)
        return out

    @staticmethod
    def _collect(op: SearchOp, rows: Iterable[Row], out: list[SearchItem], found: list[bytes],
                 skip: int) -> int:
        """Add to `out` the rows (key, record, score) whose value passes the
        filter, past the first `skip` of them, up to op.limit items (their
        keys to `found`); returns how many are still to skip."""
        for raw, (value, created, updated), score in rows:
            if not _passes(op, value):
                continue
            if skip:
                skip -= 1
                continue
            out.append(_search_item(raw, value, created, updated, score))
            found.append(raw)
            if len(out) >= op.limit:
                break
        return skip

    def _refresh(self, op: SearchOp, found: list[bytes]) -> None:
        """Refresh the TTL of the items a search returns (and of their vectors),
        as PostgresStore refreshes them."""
        if op.refresh_ttl and self._refreshable:
            for raw in found:
                self._items.get(raw, refresh_ttl=True)
            if self._semantic is not None:
                self._semantic.refresh(found)

    def _semantic_search(self, op: SearchOp, query: list[float]) -> list[SearchItem]:
        """Items under the prefix matching the filter, by cosine similarity to
        the query (an item scores its best vector), then, if fewer than limit,
        the matching items without vectors (score None), as InMemoryStore."""
        out: list[SearchItem] = []
        found: list[bytes] = []
        if op.limit <= 0:
            return out
        index = self._semantic.index  # type: ignore[union-attr]  # a query was embedded: it is set
        index.sync()
        prefix = _ns_prefix(_namespace(op.namespace_prefix)).encode("utf-8")

        def ranked() -> Iterator[Row]:
            for chunk in index.ranked(query, prefix):
                records = self._items.get_many([key for key, _ in chunk])
                for (raw, score), record in zip(chunk, records):
                    if record is None:  # expired: the sweep deletes it without a log entry
                        index.drop(raw)
                    else:
                        yield raw, record, float(score)

        self._collect(op, ranked(), out, found, max(op.offset, 0))
        if len(out) < op.limit:  # then the items without vectors, in key order
            scan = self._items.scan(prefix or None)
            self._collect(op, ((raw, record, None) for raw, record in scan
                               if not index.indexed(raw)), out, found, 0)
        self._refresh(op, found)
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
        start: str | None = None
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
