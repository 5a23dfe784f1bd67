"""The read paths of a store handle: get, get_many, in, len, expiry, scan.

Every read looks in three places, in order: the pending writes (the
overlay: this process's, and with a write-ahead log every process's
acknowledged writes that LMDB does not hold yet, tail.py), the read cache (kvstore/cache.py:
a value known current at LMDB's last commit), then LMDB, in a read
transaction under the map lock. A value whose TTL has run out reads as
missing wherever it is found.

`Reads` is a mixin of `Store` (store.py), which gives it `_root` (the
store's default handle: `_engine`, the path's Engine (engine.py); `_codec`),
`_ns` (the namespace), `_live_engine()` (the engine, after checking the
handle is open and reopening it after a fork), `_dbi(engine, ns)` and
`_writer(engine)`: the class declares them (`Host`, for type checkers
only), so its methods are checked against them, and Store's are checked to
match. Reads is generic in the type of the keys scans return (KeyT, as
Store): its own scans yield bytes; Namespace wraps them for keys=str. Expiry is judged by the store's clock, `_root._options.clock`
(time.time unless the store was opened with another; every handle of a
path shares one, as the engine's cache does). `get` and its cache protocol
are kept flat on purpose: they are the hot path of every read.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Generic, Iterable, Iterator, Union, overload

import lmdb

from . import ttl as _ttl
from .cache import ABSENT, MISS, SKIP, STALE, Sentinel
from .clock import now_ms
from .codec.format import TTL_HEADER_SIZE, TTL_VERSION, dict_id, inner_record, parse_ttl, ttl_expired, wrap_ttl
from .errors import CorruptionError, FormatError, translate
from .options import SCAN_CHUNK, SCAN_FIRST_CHUNK  # tunables: see there
from .layout import MAX_KEY_SIZE, check_bound, check_key, prefix_end
from .validate import check_keys_iterable
from .writer import ConditionalGroup
from ._types import Key, KeyT

if TYPE_CHECKING:
    from typing_extensions import Literal

    from lmdb import Cursor, Transaction, _Database

    from .engine import Engine
    from .store import Store
    from .writer import Writer

    # A stored record (TTL prefix included): a copy, or LMDB's memory in a
    # read transaction (buffers=True).
    Record = Union[bytes, memoryview]
    # (key, a copy of its record, or None: deleted by a pending write), as
    # a scan merges the stored and the pending ones.
    Pair = tuple[bytes, Union[bytes, None]]

__all__ = ["Reads", "SCAN_CHUNK", "SCAN_FIRST_CHUNK"]


_MISSING = object()


def _live(record: Record, now: int) -> bool:
    """Whether stored bytes (TTL prefix included) hold a value that has not
    expired at now (ms). A damaged prefix counts as live: presence needs no
    decoding (reading the value reports the damage)."""
    if not len(record) or record[0] != TTL_VERSION:
        return True
    try:
        return not ttl_expired(record, now)
    except CorruptionError:
        return True


def scan_bounds(prefix: object, start: object, stop: object) -> tuple[bytes | None, bytes | None]:
    """The key range [lo, hi) (None: unbounded) of scan's prefix, start and stop."""
    prefix = check_bound(prefix, "prefix")
    lo, hi = check_bound(start, "start"), check_bound(stop, "stop")
    if prefix:
        lo = prefix if lo is None else max(lo, prefix)
        end = prefix_end(prefix)
        if end is not None:
            hi = end if hi is None else min(hi, end)
    return lo, hi


class Reads(Generic[KeyT]):
    """The read methods of Store and Namespace (see the module docstring)."""

    __slots__ = ()

    if TYPE_CHECKING:
        # Host: what Store gives the mixin (store.py defines each).
        _root: Store[Any]
        _ns: str
        _closed: bool

        def _live_engine(self) -> Engine: ...
        def _dbi(self, engine: Engine, ns: str) -> _Database | None: ...
        def _writer(self, engine: Engine) -> Writer: ...

    def _pending(self, engine: Engine, key: bytes) -> tuple[bytes | None] | None:
        """(record-or-None,) if key has a pending write in this process, else None."""
        overlay = engine.overlay
        if overlay is not None:
            if engine.tail is not None:
                engine.tail.refresh()  # another process's appends: one memory read when none
            pending = overlay.get(self._ns)
            if pending:
                entry = pending.get(key)
                if entry is not None:
                    return (entry[1],)
        return None

    def _current(self, engine: Engine, key: bytes) -> tuple[bytes | None, int | None]:
        """(stored bytes, txnid) of key: its pending write in this process
        (txnid None), else a copy of what the database holds and the txnid
        it was read at; (None, ...) when neither has it. Expiry unchecked."""
        hit = self._pending(engine, key)
        if hit is not None:
            return hit[0], None
        dbi = self._dbi(engine, self._ns)
        if dbi is None:
            return None, None

        def read(txn: Transaction) -> tuple[bytes | None, int]:
            record = txn.get(key, db=dbi)
            return (None if record is None else bytes(record)), txn.id()

        return engine.read(read)

    def _now(self) -> int:
        """Now on the store's clock, in ms (the scale of stored expiries)."""
        return now_ms(self._root._options.clock)

    def _expired(self, key: bytes, record: Record) -> bool:
        """Whether a TTL record (stored bytes starting with TTL_VERSION) has
        expired. CorruptionError naming the key if its prefix is damaged."""
        try:
            return parse_ttl(record)[0] <= self._now()
        except CorruptionError as exc:
            raise CorruptionError(exc.reason, key=key, namespace=self._ns) from None

    def _decode(self, key: bytes, record: Record) -> Any:
        """The value of stored bytes (its expiry, if any, is the caller's to check)."""
        if record and record[0] == TTL_VERSION:
            record = record[TTL_HEADER_SIZE:]
        dicts = self._root._engine.dicts
        try:
            return self._root._codec.decode(record, dictionaries=dicts.by_id, key=key)
        except CorruptionError as exc:
            did = dict_id(record)
            if did and did not in dicts.by_id and did in dicts.for_decoding(did):
                return self._decode(key, record)  # another process trained it meanwhile
            raise CorruptionError(exc.reason, key=key, namespace=self._ns) from None
        except FormatError as exc:
            raise FormatError(f"key {key!r}: {exc}") from None

    def get(self, key: Key, default: Any = None, *, refresh_ttl: bool = False) -> Any:
        """The value stored under key, or default (also once it has expired).

        Served from the read cache when the cached value is known current
        (kvstore/cache.py); a pending write of this process wins over both.

        :param refresh_ttl: if the value has a TTL, push its expiry to now +
            that TTL (a buffered write, applied only if the key still holds
            this value then; skipped when it would move the expiry by less
            than 1% of the TTL). Such reads use the read cache only for
            values without a TTL. Needs a writable store.
        :raises CorruptionError: the stored bytes are damaged (names the key)
        """
        if refresh_ttl:
            return self._get_refreshing(key, default)
        # The hot path of every cache hit: kept flat on purpose (what
        # _live_engine, _check_key and _pending do, inlined).
        root = self._root
        engine = root._engine
        if self._closed or root._closed or engine.forked:
            engine = self._live_engine()
        if type(key) is str:  # type(), not a local of it: what mypy narrows key by
            try:
                raw = key.encode()
            except UnicodeEncodeError:
                raw = b""
            # a bad key raises InvalidKeyError naming the key as given
            key = raw if 0 < len(raw) <= MAX_KEY_SIZE else check_key(key)
        elif type(key) is not bytes or not 0 < len(key) <= MAX_KEY_SIZE:
            key = check_key(key)
        ns = self._ns
        overlay = engine.overlay
        if overlay is not None:
            tail = engine.tail
            if tail is not None and tail._counter()[0] != tail.seen:
                tail.catch_up()  # another process appended (tail.py)
            pending = overlay.get(ns)
            if pending:
                entry = pending.get(key)
                if entry is not None:
                    record = entry[1]
                    if record is None or (record[0] == TTL_VERSION and self._expired(key, record)):
                        return default
                    return self._decode(key, record)
        cache = engine.cache
        cached = SKIP
        if cache is not None:
            cached = cache.lookup(ns, key, engine.last_txnid.view)  # type: ignore[union-attr]  # with the cache
            if type(cached) is not Sentinel:
                return cached
        dbi = self._dbi(engine, ns)
        if dbi is None:
            return default
        lock = engine.map_lock
        lock.acquire_shared()
        try:
            txn = engine.lmdb.begin(db=dbi, buffers=True)
            try:
                record = txn.get(key)
                if cached is SKIP and record and record[0] != TTL_VERSION:
                    try:  # the uncached read: the codec directly, one frame fewer
                        return root._codec.decode(record, dictionaries=engine.dicts.by_id, key=key)
                    except (CorruptionError, FormatError):
                        return self._decode(key, record)  # names the key, or finds a new dictionary
                if record and record[0] == TTL_VERSION and self._expired(key, record):
                    record = None
                if cached is SKIP or cache is None:  # (never None when not SKIP)
                    return default if record is None else self._decode(key, record)
                value = cache.load(cached, ns, key, record, txn.id(), partial(self._decode, key))
                return default if value is ABSENT else value
            finally:
                txn.abort()
        except lmdb.MapResizedError:
            pass
        except lmdb.ReadersFullError as exc:
            if not engine.clear_stale_readers():
                raise translate(exc, "reading") from None
            return self.get(key, default)
        except lmdb.Error as exc:
            raise translate(exc, "reading") from None
        finally:
            lock.release_shared()
        engine.adopt_map_size()
        return self.get(key, default)

    def _get_refreshing(self, key: Key, default: Any) -> Any:
        """get(key, default, refresh_ttl=True): see get."""
        engine = self._live_engine()
        writer = self._writer(engine)
        key = check_key(key)
        ns = self._ns
        cache = engine.cache
        cached = SKIP
        if cache is not None and self._pending(engine, key) is None:
            # A value cached, valid at the last commit and without a TTL
            # has nothing to refresh: serve it.
            cached = cache.lookup(ns, key, engine.last_txnid.view,  # type: ignore[union-attr]  # with the cache
                                  untimed_only=True)
            if type(cached) is not Sentinel:
                return cached
        record, txnid = self._current(engine, key)
        if record is None:
            return default
        if not len(record) or record[0] != TTL_VERSION:
            if txnid is None or cached is SKIP or cache is None:  # a pending write, or nothing to do with the cache
                return self._decode(key, record)
            return cache.load(cached, ns, key, record, txnid, partial(self._decode, key))
        try:
            expires, ttl_ms = parse_ttl(record)
        except CorruptionError as exc:
            raise CorruptionError(exc.reason, key=key, namespace=ns) from None
        now = self._now()
        if expires <= now:
            return default
        value = self._decode(key, record)
        if now + ttl_ms - expires >= max(1, ttl_ms // 100):
            refreshed = wrap_ttl(bytes(inner_record(record)), now + ttl_ms, ttl_ms)
            writer.submit(ConditionalGroup([(ns, self._dbi(engine, ns), key, refreshed)], False, len(refreshed),
                                           _ttl.Refresh(engine, [(record, txnid)])))
        return value

    def expiry(self, key: Key) -> tuple[float, float] | None:
        """(expires_at, ttl) of key's value: when it expires, in seconds on
        time.time()'s scale, and the TTL it was written (or last refreshed)
        with, in seconds. None when the value has no TTL.

        :raises KeyError: no such key (or its value has expired)
        """
        engine = self._live_engine()
        key = check_key(key)
        record = self._current(engine, key)[0]
        if record is None:
            raise KeyError(key)
        if not len(record) or record[0] != TTL_VERSION:
            return None
        if self._expired(key, record):
            raise KeyError(key)
        expires, ttl_ms = parse_ttl(record)
        return expires / 1000, ttl_ms / 1000

    def get_many(self, keys: Iterable[Key]) -> list[Any]:
        """Values of keys (None where missing), in the order given, from one snapshot."""
        engine = self._live_engine()
        wanted = [check_key(k) for k in check_keys_iterable(keys, "get_many")]
        out: list[Any] = [None] * len(wanted)
        todo = []
        ns = self._ns
        # the pending writes: another process's appends read in once, so
        # that every key is looked up in the same state of the log
        overlay = engine.overlay
        if overlay is not None and engine.tail is not None:
            engine.tail.refresh()
        pending = None if overlay is None else overlay.get(ns)
        for i, key in enumerate(wanted):
            entry = pending.get(key) if pending else None
            if entry is None:
                todo.append(i)
            elif entry[1] is not None and not (entry[1][0] == TTL_VERSION and self._expired(key, entry[1])):
                out[i] = self._decode(key, entry[1])
        dbi = self._dbi(engine, ns)
        if todo and dbi is not None:
            codec = self._root._codec
            cache = engine.cache

            def read(txn: Transaction) -> None:
                txnid = txn.id() if cache is not None else 0
                found: list[tuple[int, Record, bool]] = []  # (index, record, fill it)
                for i in todo:
                    key = wanted[i]
                    cached = SKIP
                    if cache is not None:
                        # a hit must be valid at this snapshot exactly: the
                        # values returned all come from one snapshot
                        cached = cache.lookup_at(ns, key, txnid)
                        if type(cached) is not Sentinel:
                            out[i] = cached
                            continue
                    record = txn.get(key, db=dbi)
                    if record and record[0] == TTL_VERSION and self._expired(key, record):
                        record = None
                    if cached is STALE and cache is not None:  # (never None when STALE)
                        value = cache.revalidate(ns, key, record, txnid)
                        if value is not MISS:
                            out[i] = value
                            continue
                        cached = MISS
                    if record is not None:
                        found.append((i, record, cached is MISS))
                records = [inner_record(r) for _, r, _ in found]
                try:  # one call into the codec for the whole batch
                    values = codec.decode_many(records, dictionaries=engine.dicts.by_id,
                                               keys=[wanted[i] for i, _, _ in found])
                except (CorruptionError, FormatError):
                    values = [self._decode(wanted[i], r) for i, r, _ in found]  # names the bad key
                for (i, record, fill), value in zip(found, values):
                    out[i] = value
                    if fill and cache is not None:  # (never None when fill)
                        cache.fill(ns, wanted[i], value, record, txnid)

            engine.read(read)
        return out

    def __getitem__(self, key: Key) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        engine = self._live_engine()
        key = check_key(key)
        hit = self._pending(engine, key)
        if hit is not None:
            return hit[0] is not None and _live(hit[0], self._now())
        cache = engine.cache
        if cache is not None and cache.contains(self._ns, key,
                                                engine.last_txnid.view):  # type: ignore[union-attr]  # with the cache
            return True
        dbi = self._dbi(engine, self._ns)
        if dbi is None:
            return False

        def present(txn: Transaction) -> bool:
            record = txn.get(key, db=dbi)
            return record is not None and _live(record, self._now())

        return engine.read(present)

    def __len__(self) -> int:
        """The number of keys. O(1), except in a namespace that has held TTL
        values: its records are counted one by one, skipping expired ones
        (bench/bench_ttl.py measures it per record)."""
        engine = self._live_engine()
        dbi = self._dbi(engine, self._ns)
        pending = engine.snapshot(self._ns)
        now = self._now()
        if dbi is None:
            return sum(1 for _, r in pending if r is not None and _live(r, now))
        marker = _ttl.TTL_PREFIX + self._ns.encode("utf-8")

        def count(txn: Transaction) -> int:
            if txn.get(marker, db=engine.meta_db) is None:  # no TTL value in the namespace
                n = txn.stat(dbi)["entries"]
            else:
                n = sum(1 for record in txn.cursor(db=dbi).iternext(keys=False) if _live(record, now))
            for key, record in pending:
                stored = txn.get(key, db=dbi)
                n += (record is not None and _live(record, now)) - (stored is not None and _live(stored, now))
            return n

        return engine.read(count)

    def __iter__(self) -> Iterator[KeyT]:
        return self.scan(keys_only=True)

    def keys(self) -> Iterator[KeyT]:
        return self.scan(keys_only=True)

    def items(self) -> Iterator[tuple[KeyT, Any]]:
        return self.scan()

    @overload
    def scan(self, prefix: Key | None = None, *, start: Key | None = None, stop: Key | None = None,
             reverse: bool = False, keys_only: Literal[False] = False) -> Iterator[tuple[KeyT, Any]]: ...
    @overload
    def scan(self, prefix: Key | None = None, *, start: Key | None = None, stop: Key | None = None,
             reverse: bool = False, keys_only: Literal[True]) -> Iterator[KeyT]: ...
    @overload
    def scan(self, prefix: Key | None = None, *, start: Key | None = None, stop: Key | None = None,
             reverse: bool = False, keys_only: bool) -> Iterator[KeyT] | Iterator[tuple[KeyT, Any]]: ...

    def scan(self, prefix: Key | None = None, *, start: Key | None = None, stop: Key | None = None,
             reverse: bool = False, keys_only: bool = False) -> Iterator[Any]:
        """Iterate (key, value) pairs (keys alone with keys_only) in key order.

        :param prefix: only keys starting with it (bytes or str)
        :param start: only keys >= start; :param stop: only keys < stop
        :param reverse: descending order
        Keys come back as bytes. The scan reads at most SCAN_CHUNK keys per
        read transaction (fewer at first), so it never pins old pages for long:
        each key is returned at most once, in order, with a value it held
        during the scan; writes made while it runs may or may not be seen.
        Pending writes of this process at the start of the scan are included.
        """
        engine = self._live_engine()
        lo, hi = scan_bounds(prefix, start, stop)
        return self._scan(engine, lo, hi, bool(reverse), bool(keys_only))

    def _scan(self, engine: Engine, lo: bytes | None, hi: bytes | None, reverse: bool,
              keys_only: bool) -> Iterator[Any]:
        # One flat loop per record: the merged chunk's (key, record) pairs,
        # a tombstone or TTL test, then the codec's decode (or the key alone).
        pending = engine.snapshot(self._ns, lo, hi)  # in key order when bounded
        if lo is None and hi is None:
            pending.sort()
        if reverse:
            pending.reverse()
        decode = self._root._codec.decode
        by_id = engine.dicts.by_id
        pi = 0
        for chunk in self._scan_stored(engine, lo, hi, reverse):
            if pi < len(pending):
                chunk, pi = _merged(chunk, pending, pi, reverse)
            for key, record in chunk:
                if record is None:
                    continue  # deleted by a pending write
                if record and record[0] == TTL_VERSION:
                    if self._gone(key, record, keys_only):
                        continue
                    if not keys_only:
                        yield key, self._decode(key, record)
                        continue
                if keys_only:
                    yield key
                    continue
                try:
                    value = decode(record, dictionaries=by_id, key=key)
                except (CorruptionError, FormatError):
                    value = self._decode(key, record)  # names the key, or finds a new dictionary
                yield key, value
        for key, record in pending[pi:]:  # past the last stored key
            if record is not None and not (record[0] == TTL_VERSION and self._gone(key, record, keys_only)):
                yield key if keys_only else (key, self._decode(key, record))

    def _gone(self, key: bytes, record: Record, keys_only: bool) -> bool:
        """Whether a TTL record has expired; a damaged prefix raises, unless
        only the key is wanted (presence needs no decoding)."""
        return not _live(record, self._now()) if keys_only else self._expired(key, record)

    def _scan_stored(self, engine: Engine, lo: bytes | None, hi: bytes | None,
                     reverse: bool) -> Iterator[list[Pair]]:
        """The database's (key, record) pairs of [lo, hi), chunk by chunk
        (lists), each read in a read transaction of its own."""
        after = None  # last key returned
        size = SCAN_FIRST_CHUNK
        while True:
            self._live_engine()
            dbi = self._dbi(engine, self._ns)
            if dbi is None:
                return
            chunk = engine.read(lambda txn: _chunk(txn.cursor(db=dbi), lo, hi, reverse, after, size))
            if chunk:
                yield chunk
            if len(chunk) < size:
                return
            after = chunk[-1][0]
            size = min(2 * size, SCAN_CHUNK)


def _merged(chunk: list[Pair], pending: list[Pair], pi: int, reverse: bool) -> tuple[list[Pair], int]:
    """The stored pairs of a chunk with the pending writes (in the scan's
    order, from pending[pi]) up to its last key merged in, a pending write
    replacing the stored record of its key; and the index of the first
    pending write past the chunk."""
    out: list[Pair] = []
    n = len(pending)
    for key, record in chunk:
        while pi < n and (pending[pi][0] > key if reverse else pending[pi][0] < key):
            out.append(pending[pi])
            pi += 1
        if pi < n and pending[pi][0] == key:
            out.append(pending[pi])
            pi += 1
        else:
            out.append((key, record))
    return out, pi


def _chunk(cur: Cursor, lo: bytes | None, hi: bytes | None, reverse: bool, after: bytes | None,
           size: int) -> list[Pair]:
    """Up to size (key, record) pairs of [lo, hi) after `after` (exclusive;
    None: from the range's start), copied out of the transaction. The
    cursor stops at the range's end: a chunk reads no record past it."""
    out: list[Pair] = []
    if not reverse:
        first = after if after is not None else lo
        ok = cur.set_range(first) if first is not None else cur.first()
        if ok and after is not None and cur.key() == after:
            ok = cur.next()
        while ok and len(out) < size:
            key = bytes(cur.key())
            if hi is not None and key >= hi:
                break
            out.append((key, bytes(cur.value())))
            ok = cur.next()
        return out
    top = after if after is not None else hi  # exclusive upper bound
    if top is None:
        ok = cur.last()
    elif cur.set_range(top):
        ok = cur.prev()
    else:
        ok = cur.last()
    while ok and len(out) < size:
        key = bytes(cur.key())
        if lo is not None and key < lo:
            break
        out.append((key, bytes(cur.value())))
        ok = cur.prev()
    return out
