"""The vectors of KVStore's semantic search: how they are stored, and the
in-process index that searches them. Needs numpy and hnswlib (the `search`
extra), no LangGraph.

Stored, in two kvstore namespaces beside the items' (``<ns>`` below):

    <ns>:vectors    item key -> [paths, float32 bytes]   one vector of `dims`
                    float32 per path (little-endian, normalised), the item's TTL
    <ns>:vectorlog  "s" NUL writer               -> seq   (int)
                    "l" NUL writer NUL seq (16 hex) -> [item key, ...]

Every batch that changes vectors (an item put or deleted) also writes one log
entry naming the items it changed, and its writer's seq key, all in the same
atomic kvstore batch. A writer is one KVStore object (a random id); its seq
counts its batches from 1. Log entries and seq keys expire after LOG_TTL.

Each process keeps an `Index` of every stored vector. Before a search it
catches up (`Index.sync`): it reads the seq keys (one short scan) and, for a
writer whose seq moved, reads that writer's log entries past the last one it
applied, then reloads the vectors of the items they name (a missing record:
the item's rows go). A seq can be seen before an earlier one of the same
writer commits (two threads submitting in the other order): the earlier entry
is a hole, applied when it appears; a hole still open after HOLE_WAIT (its
batch failed), a writer whose first entries expired, or a sync more than
LOG_TTL / 2 after the previous one (entries written since may have expired)
makes the sync reload every vector. Items that expire leave no log entry: a search drops the
rows of an item it finds gone (`Index.drop`) and never returns it.

The index: one float32 matrix of unit rows (a row per item and path), scored
by dot product (cosine similarity, as LangGraph's InMemoryStore ranks). Up to
`exact_max` candidate rows, a search scores them all (numpy, exact); above
it, an HNSW graph (hnswlib) gives the nearest rows (the rows outside the
search's prefix skipped inside the graph's search), asked again for more when
the item filters leave too few. The graph is built when first needed, in a thread on
one core, from a snapshot of the rows (searches stay exact until it is
ready), then takes the rows changed since, and is kept up to date.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from ...errors import InvalidArgumentError, KVStoreError

if TYPE_CHECKING:
    from ..._types import Key
    from ...store import Store

# numpy arrays (float32 rows, bool masks, int rows); hnswlib has no annotations
Array = Any
# (rows, their scores) chunks, best first
Chunks = Iterator[tuple[Array, Array]]

try:
    import hnswlib
    import numpy as np
except ImportError as exc:  # pragma: no cover - depends on the environment
    _MISSING: ImportError | None = exc
else:
    _MISSING = None

LOG_TTL = 3600.0  # seconds a log entry and a seq key live after their last write
HOLE_WAIT = 5.0  # seconds a hole in a writer's log may stay open before a full reload
EXACT_MAX = 50_000  # candidate rows scored exactly; more go through the HNSW graph
# hnswlib's parameters, chosen on bench/bench_search.py's 100,000 hash-embedded
# texts (128 dims: a hard set, nearly random sparse vectors), recall@10 against
# the exact search: M 16, ef_construction 100, ef 200 gave 0.87; M 24,
# ef_construction 200, ef 600 give 0.97 for 2.7x the build time and
# about 2x the graph's search time (see docs/langgraph.md).
HNSW_M = 24  # hnswlib graph degree
HNSW_EF_CONSTRUCTION = 200  # hnswlib build-time beam width
HNSW_EF_MIN = 600  # hnswlib search beam width, at least (more when more rows are wanted)

_SEQ = b"s\x00"
_LOG = b"l\x00"


class SearchNotInstalledError(KVStoreError, ImportError):
    """KVStore(index=...) without numpy and hnswlib: install the search extra."""


def require() -> None:
    """Raise SearchNotInstalledError unless numpy and hnswlib import."""
    if _MISSING is not None:
        raise SearchNotInstalledError(
            f"KVStore(index=...) needs numpy and hnswlib ({_MISSING}); install them with "
            f"pip install 'kvstore[search]'")


def encode(vectors: Sequence[Sequence[float]], dims: int) -> bytes:
    """Embedding vectors as the stored float32 bytes, each normalised (a zero
    vector stays zero: it scores 0 against every query)."""
    array = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    if array.shape[1] != dims:
        raise InvalidArgumentError(
            f"the embedding function returned vectors of {array.shape[1]} dimensions, not the "
            f"{dims} of the index config's 'dims': make them agree")
    out: bytes = _normalised(array).astype("<f4").tobytes()
    return out


def _normalised(array: Array) -> Array:
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return array / norms


def _namespace_part(key: bytes) -> bytes:
    """The namespace labels of an item key, up to and including their last NUL."""
    return key[:key.index(b"\x00\x00") + 1]


class Index:
    """Every stored vector of one KVStore, searchable, caught up from the log.

    Thread-safe: one lock (self._lock) guards all its state.
    """

    def __init__(self, vectors: Store[Any], log: Store[Any], dims: int, exact_max: int = EXACT_MAX) -> None:
        require()
        self._vectors = vectors  # kvstore Namespace: item key -> [paths, bytes]
        self._log = log  # kvstore Namespace: seq keys and log entries
        self.dims = dims
        self.exact_max = exact_max
        self.writer = uuid.uuid4().hex[:16].encode()  # this object's writes
        self._next_seq = 0  # guarded by self._lock, as everything below
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._clock = log.options.clock  # the store's: log entries expire on it
        self._loaded = False
        self._synced_at = 0.0  # on self._clock
        self._clear()

    def _clear(self) -> None:
        self._matrix = np.zeros((64, self.dims), dtype=np.float32)
        self._live = np.zeros(64, dtype=bool)
        self._ns_id = np.zeros(64, dtype=np.int32)
        self._owner: list[bytes | None] = []  # row -> item key
        self._rows: dict[bytes, list[int]] = {}  # item key -> rows
        self._free: list[int] = []
        self._ns_ids: dict[bytes, int] = {}  # namespace part -> id
        self._ann: Any = None  # hnswlib.Index over the live rows, once built
        self._building: threading.Thread | None = None  # building the graph
        self._dirty: set[int] | None = None  # rows changed since the build's snapshot
        self._generation = getattr(self, "_generation", 0) + 1  # a build of an older one is void
        self._seen: dict[bytes, int] = {}  # writer -> its seq key's value at the last sync
        self._upto: dict[bytes, int] = {}  # writer -> every entry up to it applied
        self._extra: dict[bytes, set[int]] = {}  # writer -> entries applied past a hole
        self._hole_since: float | None = None

    # ------------------------------------------------------------ writing

    def log_ops(self, changed: list[bytes]) -> list[tuple[Any, ...]]:
        """The ops recording that this batch changes the vectors of `changed`
        (item keys): a log entry and this writer's seq, in `_apply`'s form.
        Call it last, right before the batch is submitted."""
        with self._lock:
            if os.getpid() != self._pid:  # a forked child is another writer
                self._pid, self.writer, self._next_seq = os.getpid(), uuid.uuid4().hex[:16].encode(), 0
            self._next_seq += 1
            seq = self._next_seq
        name = self._log._ns
        return [(name, _LOG + self.writer + b"\x00" + b"%016x" % seq, changed, LOG_TTL),
                (name, _SEQ + self.writer, seq, LOG_TTL)]

    # ------------------------------------------------------------ catching up

    def sync(self) -> None:
        """Catch up with the stored vectors (see the module docstring)."""
        with self._lock:
            seqs = {key[len(_SEQ):]: seq for key, seq in self._log.scan(_SEQ)}
            now = self._clock()
            if not self._loaded or now - self._synced_at > LOG_TTL / 2 or self._needs_reload(seqs):
                self._reload(seqs)
                self._synced_at = now
                return
            self._synced_at = now
            changed: set[bytes] = set()
            for writer, seq in seqs.items():
                extra = self._extra.setdefault(writer, set())
                if seq == self._seen.get(writer) and not extra:
                    continue
                upto = self._upto.get(writer, 0)
                prefix = _LOG + writer + b"\x00"
                for key, keys in self._log.scan(prefix, start=prefix + b"%016x" % (upto + 1)):
                    n = int(key[len(prefix):], 16)
                    if n not in extra:
                        extra.add(n)
                        changed.update(keys)
                while upto + 1 in extra:
                    upto += 1
                    extra.discard(upto)
                self._upto[writer] = upto
                self._seen[writer] = seq
            if any(self._extra.values()):
                self._hole_since = self._hole_since or time.monotonic()
            else:
                self._hole_since = None
            if changed:
                keys = sorted(changed)
                for key, record in zip(keys, self._vectors.get_many(keys)):
                    self._set(key, record)

    def _needs_reload(self, seqs: dict[bytes, int]) -> bool:
        if self._hole_since is not None and time.monotonic() - self._hole_since > HOLE_WAIT:
            return True
        # a writer new to this index whose first entries have expired
        return any(w not in self._upto and seq > 1 and
                   next(self._log.scan(_LOG + w + b"\x00", keys_only=True), b"")[-16:] != b"%016x" % 1
                   for w, seq in seqs.items())

    def _reload(self, seqs: dict[bytes, int]) -> None:
        self._clear()
        self._loaded = True
        self._seen = dict(seqs)
        self._upto = dict(seqs)  # the scan below sees at least these entries' writes
        for key, record in self._vectors.scan():
            self._set(key, record)

    # ------------------------------------------------------------ rows

    def _set(self, key: bytes, record: list[Any] | None) -> None:
        """Make the rows of item `key` those of its stored record (None: none)."""
        old = self._rows.pop(key, None)
        if old:
            for row in old:
                self._live[row] = False
                self._owner[row] = None
                if self._ann is not None:
                    self._ann.mark_deleted(row)
                elif self._dirty is not None:
                    self._dirty.add(row)
            self._free.extend(old)
        if record is None:
            return
        paths, data = record
        array = np.frombuffer(data, dtype="<f4").reshape(len(paths), -1)
        if array.shape[1] != self.dims:
            raise InvalidArgumentError(
                f"the stored vectors of {self._vectors.name!r} have {array.shape[1]} dimensions, "
                f"not the {self.dims} of the index config: use the 'dims' they were made with, "
                f"or another namespace= for the new embedding")
        ns = _namespace_part(key)
        ns_id = self._ns_ids.setdefault(ns, len(self._ns_ids))
        rows = []
        for vector in array:
            row = self._free.pop() if self._free else self._grow()
            self._matrix[row] = vector
            self._live[row] = True
            self._ns_id[row] = ns_id
            self._owner[row] = key
            rows.append(row)
        self._rows[key] = rows
        if self._ann is not None:
            if self._ann.get_max_elements() < len(self._owner):
                self._ann.resize_index(len(self._matrix))
            self._ann.add_items(array, rows)
        elif self._dirty is not None:
            self._dirty.update(rows)

    def _grow(self) -> int:
        row = len(self._owner)
        if row == len(self._matrix):
            n = 2 * len(self._matrix)
            for name in ("_matrix", "_live", "_ns_id"):
                old = getattr(self, name)
                new = np.zeros((n,) + old.shape[1:], dtype=old.dtype)
                new[:row] = old
                setattr(self, name, new)
        self._owner.append(None)
        return row

    def drop(self, key: bytes) -> None:
        """Forget the rows of an item found gone (expired) at search time."""
        with self._lock:
            self._set(key, None)

    def refresh(self, keys: Sequence[Key]) -> None:
        """Push the expiry of these items' vector records (their items were refreshed)."""
        for key in keys:
            self._vectors.get(key, refresh_ttl=True)

    def indexed(self, key: bytes) -> bool:
        """Whether item `key` has vectors."""
        return key in self._rows

    def __len__(self) -> int:
        return int(self._live[:len(self._owner)].sum())

    # ------------------------------------------------------------ searching

    def ranked(self, query: Sequence[float], prefix: bytes,
               ann: bool | None = None) -> Iterator[list[tuple[bytes, float]]]:
        """Item keys under namespace `prefix` (encoded item-key prefix, b"":
        all), best first, as lists of (key, score): each item once, at the
        score of its best row (max pooling, as InMemoryStore). Consume lazily:
        each next list costs more. `ann`: force (True) or forbid (False) the
        HNSW graph; None: by the number of candidate rows."""
        q = _normalised(np.asarray(query, dtype=np.float32).reshape(1, -1))[0]
        if q.shape[0] != self.dims:
            raise InvalidArgumentError(
                f"the query embedding has {q.shape[0]} dimensions, not the index's {self.dims}")
        with self._lock:
            n = len(self._owner)
            ok = self._live[:n].copy()
            if prefix:
                ids = [i for ns, i in self._ns_ids.items() if ns.startswith(prefix)]
                if len(ids) < len(self._ns_ids):  # else every row is under the prefix
                    ok &= np.isin(self._ns_id[:n], ids)
            count = int(ok.sum())
            if count == 0:
                return
            if ann is None:
                ann = count > self.exact_max
            if ann and self._graph_ready():
                found = self._ann_ranked(q, ok)
            else:  # (until the graph is built, exactly)
                found = self._exact_ranked(q, ok, count)
        seen: set[bytes] = set()
        for rows, scores in found:
            out = []
            with self._lock:  # a row freed since it was scored has no owner: skipped
                owners = [self._owner[row] for row in rows.tolist()]
            for key, score in zip(owners, scores.tolist()):
                if key is not None and key not in seen:
                    seen.add(key)
                    out.append((key, score))
            if out:
                yield out

    def _exact_ranked(self, q: Array, ok: Array, count: int) -> Chunks:
        """Score the candidate rows now (under the caller's lock); rank them lazily."""
        if count < len(ok) // 4:  # a few namespaces: score their rows only
            rows = np.flatnonzero(ok)
            scores = self._matrix[rows] @ q
        else:
            rows = None
            scores = self._matrix[:len(ok)] @ q
            scores[~ok] = -np.inf
        return _best_first(scores, rows, count)

    def _ann_ranked(self, q: Array, ok: Array) -> Chunks:
        """Rows by the HNSW graph, best first, among the candidates `ok`.
        When a prefix leaves out some rows, the graph's search itself skips
        them (hnswlib's filter), so it returns the best k candidates, not the
        best k rows of which the filter would keep only a share."""
        n = len(ok)
        count = int(ok.sum())
        narrowed = count < len(self)

        def allowed(row: int) -> bool:  # rows added since the search began are not candidates
            return row < n and bool(ok[row])

        k = 64
        while True:
            exact = None
            with self._lock:
                total = count if narrowed else len(self)  # live rows: the graph's less the deleted
                k = min(k, total)
                self._ann.set_ef(max(HNSW_EF_MIN, k))
                try:
                    labels, distances = self._ann.knn_query(
                        q, k=k, num_threads=1, filter=allowed if narrowed else None)
                except RuntimeError:  # the graph found fewer than k: score exactly
                    exact = self._exact_ranked(q, ok, count)
            if exact is not None:
                yield from exact
                return
            labels = labels[0].astype(np.int64)
            inside = labels < n
            labels, distances = labels[inside], distances[0][inside]
            keep = ok[labels]
            yield labels[keep], 1.0 - distances[keep]  # the caller skips items already given
            if k >= total:
                return
            k *= 4

    def _graph_ready(self) -> bool:
        """Whether the HNSW graph is built; if not, start building it in a
        thread from a snapshot of the rows (searches stay exact meanwhile),
        then apply the rows changed since (self._dirty). Under self._lock."""
        if self._ann is not None:
            return True
        if self._building is None:
            n = len(self._owner)
            rows = np.flatnonzero(self._live[:n])
            self._dirty = set()
            self._building = threading.Thread(
                target=self._build, args=(rows, self._matrix[rows], len(self._matrix),
                                          self._generation),
                name="kvstore-hnsw-build", daemon=True)
            self._building.start()
        return False

    def _build(self, rows: Array, data: Array, capacity: int, generation: int) -> None:
        ann = hnswlib.Index(space="ip", dim=self.dims)
        ann.init_index(max_elements=max(capacity, 16), M=HNSW_M,
                       ef_construction=HNSW_EF_CONSTRUCTION)
        if len(rows):
            ann.add_items(data, rows, num_threads=1)  # one core: searches go on meanwhile
        with self._lock:
            if generation != self._generation:  # reloaded meanwhile: a new build will start
                return
            if ann.get_max_elements() < len(self._matrix):
                ann.resize_index(len(self._matrix))
            for row in sorted(self._dirty):  # type: ignore[arg-type]  # a set while building
                if self._live[row]:
                    ann.add_items(self._matrix[row:row + 1], [row])
                else:
                    try:
                        ann.mark_deleted(row)
                    except RuntimeError:  # added and removed during the build: never in it
                        pass
            self._ann, self._dirty, self._building = ann, None, None

    def wait_for_graph(self, timeout: float | None = None) -> bool:
        """Wait for a graph build under way (for tests and benchmarks);
        whether the graph is built."""
        building = self._building
        if building is not None:
            building.join(timeout)
        return self._ann is not None

def _best_first(scores: Array, rows: Array | None, count: int) -> Chunks:
    """(rows, scores) chunks, best first, of the `count` candidates: the 64
    best (a partial sort), then, if the caller asks, the rest (a full sort).
    `rows`: the row of each score, or None when scores are indexed by row."""
    k = min(64, count)
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    yield (top if rows is None else rows[top]), scores[top]
    if count > k:  # sorted only when the caller wants more than the best 64
        order = np.argsort(-scores, kind="stable")[:count]
        rest = order[~np.isin(order, top)]
        yield (rest if rows is None else rows[rest]), scores[rest]
