"""The public handle: `kvstore.open()` returns a `Store`; `Store.namespace()`
returns a `Namespace` with the same methods over a separate keyspace.

Keys are bytes or str (UTF-8), 1 to 511 bytes; they come back from scans and
iteration as bytes. Values are anything msgpack carries; they are validated
and encoded in the caller's thread, so a bad value raises at the call and can
never poison a group commit. Reads see this process's pending writes first
(read-your-writes), then the database. A value with a TTL (kvstore/ttl.py)
reads as missing once it has expired, wherever it is found.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from typing import Iterable, Iterator

import lmdb

from . import environment
from . import codec as _codec
from . import ttl as _ttl
from .cache import MISS, SKIP, STALE, Sentinel
from .codec.format import TTL_HEADER_SIZE, TTL_VERSION, dict_id, inner_record, parse_ttl, ttl_expired, wrap_ttl
from .dictionaries import DEFAULT_DICT_SIZE, DEFAULT_SAMPLES
from .layout import DEFAULT_NAMESPACE, MAX_KEY_SIZE, check_bound, check_key, check_namespace_name, prefix_end
from .errors import (
    CorruptionError,
    FormatError,
    InvalidArgumentError,
    InvalidKeyError,
    KVStoreError,
    ReadOnlyError,
    StoreClosedError,
    TTLMismatchError,
    translate,
)
from .options import Options
from .writer import ConditionalGroup, Group, Writer

__all__ = ["open", "Store", "Namespace", "Batch", "MAX_KEY_SIZE"]

SCAN_CHUNK = 256  # most keys read per read transaction in a scan
SCAN_FIRST_CHUNK = 32  # the first chunk: a scan stopped early (the last 20 messages) reads little

_MISSING = object()


def open(path, **options) -> "Store":
    """Open (creating if missing, unless readonly=True) the store at `path`.

    :param path: a directory; created if missing
    :param options: see `kvstore.Options` for every option and its default
    :raises FormatError: path is not a kvstore store, or a newer format
    :raises StoreNotFoundError: readonly=True and no store at path
    """
    return Store(path, Options.from_kwargs(options))


def _live(record, now: int | None = None) -> bool:
    """Whether stored bytes (TTL prefix included) hold a value that has not
    expired at now (ms; None: the clock's now). A damaged prefix counts as
    live: presence needs no decoding (reading the value reports the damage)."""
    if not len(record) or record[0] != TTL_VERSION:
        return True
    try:
        return not ttl_expired(record, _ttl.now_ms() if now is None else now)
    except CorruptionError:
        return True


class Store:
    """A kvstore store: the default namespace of the store at `path`.

    Thread-safe: share one handle between threads. Opening the same path again
    in this process shares the same engine (and its pending writes).
    """

    def __init__(self, path, options: Options):
        self._path = os.fspath(path)
        self._options = options
        self._ns = DEFAULT_NAMESPACE
        self._root = self
        self._closed = False
        self._durable = options.durable
        self._codec = _codec.Codec(options.compression, options.compression_level,
                            options.compress_min_size, options.max_value_size)
        self._env = self._attach()
        _install_exit_hooks()

    def _attach(self):
        env = environment.acquire(self._path, self._options)
        try:
            if not env.readonly and env.writer is None:
                with environment._registry_lock:
                    if env.writer is None:
                        env.writer = _start_writer(env, self._options)
                        env.sweeper = _ttl.Sweeper(env, env.writer, self._options.ttl_sweep_interval,
                                                   self._options.ttl_sweep_batch)
        except BaseException:
            _detach(env)
            raise
        _commit_at_multiprocessing_exit()
        return env

    # ------------------------------------------------------------ handles

    @property
    def path(self) -> str:
        return self._root._path

    @property
    def name(self) -> str:
        """The namespace this handle reads and writes."""
        return self._ns

    @property
    def readonly(self) -> bool:
        return self._root._options.readonly

    @property
    def options(self) -> Options:
        return self._root._options

    def _live_env(self):
        """The Environment, after checking the handle is usable."""
        root = self._root
        if self._closed or root._closed:
            raise StoreClosedError(f"the store at {root._path!r} is closed")
        env = root._env
        if env.forked:
            env = root._reopen_after_fork()
        return env

    def _reopen_after_fork(self):
        # An environment inherited through fork() must not be used in the
        # child (LMDB's locks and reader slots belong to the parent). Abandon
        # it, with the parent's pending writes (the parent commits those), and
        # open the path afresh.
        old = self._env
        try:
            old.env.close()  # py-lmdb sees the fork and leaves LMDB's state alone
        except lmdb.Error:
            pass
        self._env = self._attach()
        return self._env

    def namespace(self, name: str, *, ttl: float | None = None) -> "Namespace":
        """A handle on namespace `name`, created (durably) if missing.

        :param ttl: the namespace's default TTL in seconds, for puts that
            give none: stored in the store (durably) if the namespace has
            none yet; if it has another, TTLMismatchError (change it with
            `set_default_ttl`). None: use whatever the namespace has.
        :raises InvalidNamespaceError: not a str of 1-255 UTF-8 bytes, or starts with "__"
        :raises NamespaceLimitError: the store already holds max_namespaces namespaces
        :raises InvalidTTLError: ttl is not a finite number of seconds > 0
        """
        check_namespace_name(name)
        wanted = None if ttl is None else _ttl.default_to_ms(ttl)
        env = self._live_env()
        env.dbi(name, create=not env.readonly)
        handle = Namespace(self._root, name)
        if wanted is None:
            return handle
        current = env.ttl.default(name)
        if current == wanted:
            if env.ttl.defaults.get(name) != wanted:
                env.ttl.reload()  # another process set it since this one last looked
            return handle
        if current:
            raise TTLMismatchError(
                f"namespace {name!r} has a default TTL of {current / 1000:g} s, not {ttl!r} s; "
                f"change it with db.namespace({name!r}).set_default_ttl({ttl!r}), or leave ttl= out "
                f"to use the stored one")
        handle._writer(env)  # ReadOnlyError
        env.ttl.set_default(name, wanted, env.writer)
        return handle

    @property
    def default_ttl(self) -> float | None:
        """This namespace's default TTL in seconds (None: none), as stored now."""
        ms = self._live_env().ttl.default(self._ns)
        return ms / 1000 if ms else None

    def set_default_ttl(self, ttl: float | None) -> None:
        """Set (seconds), or remove (None), this namespace's default TTL, durably.

        Applies to puts from now on that give no ttl, in this process at once
        and in others within ttl_sweep_interval; values already stored keep
        their own expiry.

        :raises InvalidTTLError: ttl is not a finite number of seconds > 0
        """
        ms = 0 if ttl is None else _ttl.default_to_ms(ttl)
        env = self._live_env()
        self._writer(env)
        if ms or env.ttl.default(self._ns):
            env.ttl.set_default(self._ns, ms, env.writer)

    def namespaces(self) -> list[str]:
        """Names of the namespaces in the store, sorted, "default" included."""
        env = self._live_env()
        return sorted(set(env.namespace_names()) | {DEFAULT_NAMESPACE})

    # ------------------------------------------------------------ writes

    def _writer(self, env) -> Writer:
        if env.readonly or self.readonly:
            raise ReadOnlyError(f"the store at {self.path!r} is open read-only; reopen it without readonly=True to write")
        return env.writer

    def _dbi(self, env, ns: str):
        dbi = env._dbis.get(ns)
        if dbi is None:
            dbi = env.dbi(ns, create=not env.readonly)
        return dbi

    # Each write method has a private twin taking `callback`: None for the
    # calling thread to wait in the writer (durable) or not at all
    # (buffered); a function for asyncio callers (kvstore/aio.py), which
    # the writer calls once the group is done. The twin returns whether the
    # caller must wait for that callback (Writer.submit).

    def _submit(self, env, ops: list, nbytes: int, durable, callback=None, before=None) -> bool:
        writer = self._writer(env)
        if durable is None:
            durable = self._root._durable
        return writer.submit(Group(ops, bool(durable), nbytes, callback, before))

    def put(self, key, value, *, durable: bool | None = None, ttl: float | None = None) -> None:
        """Store value under key.

        :param durable: True: return once the write is synced to disk; False:
            return at once (committed within flush_interval); None: the
            store's default (Options.durable)
        :param ttl: seconds until the value expires (reads then see no key);
            None: the namespace's default TTL, if it has one; math.inf: never
        :raises InvalidKeyError: bad key; nothing is queued
        :raises EncodeError: msgpack cannot carry the value; nothing is queued
        :raises InvalidTTLError: ttl is not a number of seconds > 0; nothing is queued
        """
        self._put(key, value, durable, None, ttl)

    def _put(self, key, value, durable, callback, ttl=None) -> bool:
        # The hot path of every buffered write: kept flat on purpose.
        root = self._root
        env = root._env
        if self._closed or root._closed or env.forked:
            env = self._live_env()
        writer = env.writer
        if writer is None:
            self._writer(env)  # raises ReadOnlyError
        if type(key) is not str or not 0 < len(key) <= 127:  # 127 chars: at most 511 UTF-8 bytes
            key = check_key(key)
        else:
            key = key.encode("utf-8") if key.isascii() else check_key(key)
        ns = self._ns
        record = root._codec.encode(value, dictionary=env.dicts.for_encoding(ns))
        before = None
        if ttl is not None or ns in env.ttl.defaults:
            record, before = _ttl.stamp(env, ns, record, ttl)
        dbi = env._dbis.get(ns) or self._dbi(env, ns)
        return writer.submit(Group([(ns, dbi, key, record)],
                                   root._durable if durable is None else bool(durable),
                                   len(record), callback, before))

    def delete(self, key, *, durable: bool | None = None) -> None:
        """Remove key (no error if it is missing)."""
        self._delete(key, durable, None)

    def _delete(self, key, durable, callback) -> bool:
        env = self._live_env()
        self._writer(env)
        key = check_key(key)
        return self._submit(env, [(self._ns, self._dbi(env, self._ns), key, None)], 0, durable,
                            callback)

    def put_many(self, items, *, durable: bool | None = None, ttl: float | None = None) -> None:
        """Store many pairs atomically, in one commit (all or nothing, across crashes).

        :param items: a mapping, or an iterable of (key, value) pairs; a later
            pair for the same key wins
        :param ttl: as for put, for every pair
        """
        self._put_many(items, durable, None, ttl)

    def _put_many(self, items, durable, callback, ttl=None) -> bool:
        env = self._live_env()
        self._writer(env)
        if hasattr(items, "items"):
            items = items.items()
        elif not hasattr(items, "__iter__"):
            raise InvalidArgumentError(f"put_many takes a mapping or an iterable of (key, value) "
                                       f"pairs, not {type(items).__name__}")
        ns, dbi = self._ns, self._dbi(env, self._ns)
        encode = self._root._codec.encode
        dictionary = env.dicts.for_encoding(ns)
        if ttl is not None:
            _ttl.to_ms(ttl)  # a bad ttl raises before any value is encoded
        stamped = ttl is not None or ns in env.ttl.defaults
        ops = []
        nbytes = 0
        before = None
        for pair in items:
            try:
                key, value = pair
            except (TypeError, ValueError):
                raise InvalidKeyError(f"put_many takes (key, value) pairs, got {pair!r}") from None
            key = check_key(key)
            record = encode(value, dictionary=dictionary)
            if stamped:
                record, step = _ttl.stamp(env, ns, record, ttl)
                before = before or step
            nbytes += len(record)
            ops.append((ns, dbi, key, record))
        return bool(ops) and self._submit(env, ops, nbytes, durable, callback, before)

    def batch(self, durable: bool | None = None) -> "Batch":
        """An atomic batch: ``with db.batch() as b: b.put(...); b.delete(...)``.

        Committed as one group when the block exits normally; discarded if it
        raises. Reads do not see the batch's writes until then.
        """
        env = self._live_env()
        self._writer(env)
        return Batch(self, durable)

    def flush(self, timeout: float | None = None) -> None:
        """Return once every write accepted before the call is committed and synced.

        :raises TimeoutError: not done within timeout seconds (writes stay queued)
        :raises StoreFailedError: a commit failed; the writes it held are lost
        """
        env = self._live_env()
        if env.writer is not None:
            env.writer.flush(timeout)

    def __setitem__(self, key, value) -> None:
        self.put(key, value)

    def __delitem__(self, key) -> None:
        if key not in self:
            raise KeyError(key)
        self.delete(key)

    # ------------------------------------------------------------ reads

    def _pending(self, env, key: bytes):
        """(record-or-None,) if key has a pending write in this process, else None."""
        writer = env.writer
        if writer is not None:
            pending = writer.overlay.get(self._ns)
            if pending:
                entry = pending.get(key)
                if entry is not None:
                    return (entry[1],)
        return None

    def _current(self, env, key: bytes):
        """(stored bytes, txnid) of key: its pending write in this process
        (txnid None), else a copy of what the database holds and the txnid
        it was read at; (None, ...) when neither has it. Expiry unchecked."""
        hit = self._pending(env, key)
        if hit is not None:
            return hit[0], None
        dbi = self._dbi(env, self._ns)
        if dbi is None:
            return None, None

        def read(txn):
            record = txn.get(key, db=dbi)
            return (None if record is None else bytes(record)), txn.id()

        return env.read(read)

    def _expired(self, key: bytes, record) -> bool:
        """Whether a TTL record (stored bytes starting with TTL_VERSION) has
        expired. CorruptionError naming the key if its prefix is damaged."""
        try:
            return parse_ttl(record)[0] <= _ttl.now_ms()
        except CorruptionError as exc:
            raise CorruptionError(exc.reason, key=key, namespace=self._ns) from None

    def _decode(self, key: bytes, record):
        """The value of stored bytes (its expiry, if any, is the caller's to check)."""
        if record and record[0] == TTL_VERSION:
            record = record[TTL_HEADER_SIZE:]
        dicts = self._root._env.dicts
        try:
            return self._root._codec.decode(record, dictionaries=dicts.by_id)
        except CorruptionError as exc:
            did = dict_id(record)
            if did and did not in dicts.by_id and did in dicts.for_decoding(did):
                return self._decode(key, record)  # another process trained it meanwhile
            raise CorruptionError(exc.reason, key=key, namespace=self._ns) from None
        except FormatError as exc:
            raise FormatError(f"key {key!r}: {exc}") from None

    def get(self, key, default=None, *, refresh_ttl: bool = False):
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
        # _live_env, _check_key and _pending do, inlined).
        root = self._root
        env = root._env
        if self._closed or root._closed or env.forked:
            env = self._live_env()
        kind = type(key)
        if kind is str:
            try:
                raw = key.encode()
            except UnicodeEncodeError:
                raw = b""
            # a bad key raises InvalidKeyError naming the key as given
            key = raw if 0 < len(raw) <= MAX_KEY_SIZE else check_key(key)
        elif kind is not bytes or not 0 < len(key) <= MAX_KEY_SIZE:
            key = check_key(key)
        ns = self._ns
        writer = env.writer
        if writer is not None:
            pending = writer.overlay.get(ns)
            if pending:
                entry = pending.get(key)
                if entry is not None:
                    record = entry[1]
                    if record is None or (record[0] == TTL_VERSION and self._expired(key, record)):
                        return default
                    return self._decode(key, record)
        cache = env.cache
        cached = SKIP
        if cache is not None:
            cached = cache.lookup(ns, key, env.last_txnid.view)
            if type(cached) is not Sentinel:
                return cached
        dbi = self._dbi(env, ns)
        if dbi is None:
            return default
        lock = env.map_lock
        lock.acquire_shared()
        try:
            txn = env.env.begin(db=dbi, buffers=True)
            try:
                record = txn.get(key)
                if record and record[0] == TTL_VERSION and self._expired(key, record):
                    record = None
                if cached is SKIP:
                    return default if record is None else self._decode(key, record)
                txnid = txn.id()
                if cached is STALE:
                    value = cache.revalidate(ns, key, record, txnid)
                    if value is not MISS:
                        return value
                if record is None:
                    return default
                value = self._decode(key, record)
                cache.fill(ns, key, value, record, txnid)
                return value
            finally:
                txn.abort()
        except lmdb.MapResizedError:
            pass
        except lmdb.ReadersFullError as exc:
            if not env.clear_stale_readers():
                raise translate(exc, "reading") from None
            return self.get(key, default)
        except lmdb.Error as exc:
            raise translate(exc, "reading") from None
        finally:
            lock.release_shared()
        env.adopt_map_size()
        return self.get(key, default)

    def _get_refreshing(self, key, default):
        """get(key, default, refresh_ttl=True): see get."""
        env = self._live_env()
        writer = self._writer(env)
        key = check_key(key)
        ns = self._ns
        cache = env.cache
        cached = SKIP
        if cache is not None and self._pending(env, key) is None:
            # A value cached, valid at the last commit and without a TTL
            # has nothing to refresh: serve it.
            cached = cache.lookup(ns, key, env.last_txnid.view, untimed_only=True)
            if type(cached) is not Sentinel:
                return cached
        record, txnid = self._current(env, key)
        if record is None:
            return default
        if not len(record) or record[0] != TTL_VERSION:
            if txnid is None:  # a pending write
                return self._decode(key, record)
            if cached is STALE:
                value = cache.revalidate(ns, key, record, txnid)
                if value is not MISS:
                    return value
                cached = MISS
            value = self._decode(key, record)
            if cached is MISS:
                cache.fill(ns, key, value, record, txnid)
            return value
        try:
            expires, ttl_ms = parse_ttl(record)
        except CorruptionError as exc:
            raise CorruptionError(exc.reason, key=key, namespace=ns) from None
        now = _ttl.now_ms()
        if expires <= now:
            return default
        value = self._decode(key, record)
        if now + ttl_ms - expires >= max(1, ttl_ms // 100):
            refreshed = wrap_ttl(bytes(inner_record(record)), now + ttl_ms, ttl_ms)
            writer.submit(ConditionalGroup([(ns, self._dbi(env, ns), key, refreshed)], False, len(refreshed),
                                           _ttl.Refresh(env, [(record, txnid)])))
        return value

    def expiry(self, key) -> tuple[float, float] | None:
        """(expires_at, ttl) of key's value: when it expires, in seconds on
        time.time()'s scale, and the TTL it was written (or last refreshed)
        with, in seconds. None when the value has no TTL.

        :raises KeyError: no such key (or its value has expired)
        """
        env = self._live_env()
        key = check_key(key)
        record = self._current(env, key)[0]
        if record is None:
            raise KeyError(key)
        if not len(record) or record[0] != TTL_VERSION:
            return None
        if self._expired(key, record):
            raise KeyError(key)
        expires, ttl_ms = parse_ttl(record)
        return expires / 1000, ttl_ms / 1000

    def get_many(self, keys: Iterable) -> list:
        """Values of keys (None where missing), in the order given, from one snapshot."""
        env = self._live_env()
        keys = [check_key(k) for k in keys]
        out = [None] * len(keys)
        todo = []
        for i, key in enumerate(keys):
            hit = self._pending(env, key)
            if hit is None:
                todo.append(i)
            elif hit[0] is not None and not (hit[0][0] == TTL_VERSION and self._expired(key, hit[0])):
                out[i] = self._decode(key, hit[0])
        ns = self._ns
        dbi = self._dbi(env, ns)
        if todo and dbi is not None:
            codec = self._root._codec
            cache = env.cache

            def read(txn):
                txnid = txn.id() if cache is not None else 0
                found = []  # (index, record, fill it)
                for i in todo:
                    key = keys[i]
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
                    if cached is STALE:
                        value = cache.revalidate(ns, key, record, txnid)
                        if value is not MISS:
                            out[i] = value
                            continue
                        cached = MISS
                    if record is not None:
                        found.append((i, record, cached is MISS))
                records = [inner_record(r) for _, r, _ in found]
                try:  # one call into the codec for the whole batch
                    values = codec.decode_many(records, dictionaries=env.dicts.by_id)
                except (CorruptionError, FormatError):
                    values = [self._decode(keys[i], r) for i, r, _ in found]  # names the bad key
                for (i, record, fill), value in zip(found, values):
                    out[i] = value
                    if fill:
                        cache.fill(ns, keys[i], value, record, txnid)

            env.read(read)
        return out

    def __getitem__(self, key):
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key) -> bool:
        env = self._live_env()
        key = check_key(key)
        hit = self._pending(env, key)
        if hit is not None:
            return hit[0] is not None and _live(hit[0])
        cache = env.cache
        if cache is not None and cache.contains(self._ns, key, env.last_txnid.view):
            return True
        dbi = self._dbi(env, self._ns)
        if dbi is None:
            return False

        def present(txn):
            record = txn.get(key, db=dbi)
            return record is not None and _live(record)

        return env.read(present)

    def __len__(self) -> int:
        """The number of keys. O(1), except in a namespace that has held TTL
        values: its records are counted one by one, skipping expired ones
        (bench/bench_ttl.py measures it per record)."""
        env = self._live_env()
        dbi = self._dbi(env, self._ns)
        pending = env.writer.snapshot(self._ns) if env.writer is not None else []
        now = _ttl.now_ms()
        if dbi is None:
            return sum(1 for _, r in pending if r is not None and _live(r, now))
        marker = _ttl.TTL_PREFIX + self._ns.encode("utf-8")

        def count(txn):
            if txn.get(marker, db=env.meta_db) is None:  # no TTL value in the namespace
                n = txn.stat(dbi)["entries"]
            else:
                n = sum(1 for record in txn.cursor(db=dbi).iternext(keys=False) if _live(record, now))
            for key, record in pending:
                stored = txn.get(key, db=dbi)
                n += (record is not None and _live(record, now)) - (stored is not None and _live(stored, now))
            return n

        return env.read(count)

    def __iter__(self) -> Iterator[bytes]:
        return self.scan(keys_only=True)

    def keys(self) -> Iterator[bytes]:
        return self.scan(keys_only=True)

    def items(self) -> Iterator[tuple[bytes, object]]:
        return self.scan()

    def scan(self, prefix=None, *, start=None, stop=None, reverse=False, keys_only=False):
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
        env = self._live_env()
        prefix = check_bound(prefix, "prefix")
        lo, hi = check_bound(start, "start"), check_bound(stop, "stop")
        if prefix:
            lo = prefix if lo is None else max(lo, prefix)
            end = prefix_end(prefix)
            if end is not None:
                hi = end if hi is None else min(hi, end)
        return self._scan(env, lo, hi, bool(reverse), bool(keys_only))

    def _scan(self, env, lo, hi, reverse, keys_only):
        pending = []
        if env.writer is not None:
            pending = sorted(env.writer.snapshot(self._ns, lo, hi), reverse=reverse)
        stored = self._scan_stored(env, lo, hi, reverse)
        pi = 0
        for key, record in stored:
            while pi < len(pending) and (pending[pi][0] > key if reverse else pending[pi][0] < key):
                yield from self._emit(pending[pi], keys_only)
                pi += 1
            if pi < len(pending) and pending[pi][0] == key:
                yield from self._emit(pending[pi], keys_only)
                pi += 1
                continue
            if record and record[0] == TTL_VERSION and self._gone(key, record, keys_only):
                continue
            yield key if keys_only else (key, self._decode(key, record))
        while pi < len(pending):
            yield from self._emit(pending[pi], keys_only)
            pi += 1

    def _emit(self, entry, keys_only):
        key, record = entry
        if record is not None and not (record[0] == TTL_VERSION and self._gone(key, record, keys_only)):
            yield key if keys_only else (key, self._decode(key, record))

    def _gone(self, key, record, keys_only) -> bool:
        """Whether a TTL record has expired; a damaged prefix raises, unless
        only the key is wanted (presence needs no decoding)."""
        return not _live(record) if keys_only else self._expired(key, record)

    def _scan_stored(self, env, lo, hi, reverse):
        """(key, record) pairs in the database, chunk by chunk."""
        after = None  # last key returned
        size = SCAN_FIRST_CHUNK
        while True:
            self._live_env()
            dbi = self._dbi(env, self._ns)
            if dbi is None:
                return
            chunk = env.read(lambda txn: self._read_chunk(txn, dbi, lo, hi, reverse, after, size))
            yield from chunk
            if len(chunk) < size:
                return
            after = chunk[-1][0]
            size = min(2 * size, SCAN_CHUNK)

    @staticmethod
    def _read_chunk(txn, dbi, lo, hi, reverse, after, size) -> list:
        cur = txn.cursor(db=dbi)
        out = []
        if not reverse:
            first = after if after is not None else lo
            ok = cur.set_range(first) if first is not None else cur.first()
            if ok and after is not None and bytes(cur.key()) == after:
                ok = cur.next()
            while ok and len(out) < size:
                key = bytes(cur.key())
                if hi is not None and key >= hi:
                    break
                out.append((key, bytes(cur.value())))
                ok = cur.next()
        else:
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

    # ------------------------------------------------------------ dictionaries

    def train_dictionary(self, namespace: str | None = None, samples: int = DEFAULT_SAMPLES,
                         dict_size: int = DEFAULT_DICT_SIZE) -> int:
        """Train a zstd dictionary on values of a namespace; new values of the
        namespace are compressed with it. Returns the dictionary's id.

        Pending writes are committed first so that they are sampled too.
        Values already stored keep the compression they have.

        :param namespace: defaults to this handle's namespace
        :param samples: values sampled (uniformly) for training
        :param dict_size: dictionary size in bytes
        """
        ns = self._ns if namespace is None else namespace
        if ns != DEFAULT_NAMESPACE:
            check_namespace_name(ns)
        env = self._live_env()
        self._writer(env)
        self.flush()
        dbi = self._dbi(env, ns)
        codec = self._root._codec

        def serialize(record):
            return codec.serialize(codec.decode(inner_record(record), dictionaries=env.dicts.by_id))[1]

        return env.dicts.train(ns, dbi, samples, dict_size, serialize, env.writer)

    def dictionaries(self) -> list[dict]:
        """Every dictionary in the store: id, namespace, size, created, samples, current."""
        return self._live_env().dicts.info()

    # ------------------------------------------------------------ state

    def stats(self) -> dict:
        """Counters of the store's engine in this process, and the map's size.

        commits, ops_committed, ops_per_commit {mean, max}, commit_seconds
        {p50, p99}, pending, map_size, map_used, codec, bytes_in (serialized
        bytes of values committed since open), bytes_stored (their stored
        size, headers included), compression_ratio, commit_seq (commits by
        every process), expired_swept (expired values the background sweep of
        this process deleted since open), ttl_sweep_error (what stopped the
        sweep, if anything did).
        """
        env = self._live_env()
        info = env.info()
        w = env.writer
        out = {
            "path": env.path,
            "readonly": env.readonly,
            "codec": self._root._codec.backend,
            "map_size": info["map_size"],
            "map_used": info["map_used"],
            "last_txnid": info["last_txnid"],
            "readers": info["num_readers"],
            "commit_seq": env.commit_seq(),
            "commits": 0,
            "ops_committed": 0,
            "ops_per_commit": {"mean": 0.0, "max": 0},
            "commit_seconds": {"p50": 0.0, "p99": 0.0},
            "durable_groups": 0,
            "buffered_groups": 0,
            "pending": 0,
            "bytes_in": 0,
            "bytes_stored": 0,
            "compression_ratio": None,
            "failed": None,
            "cache": env.cache.stats() if env.cache is not None else None,
            "expired_swept": 0,
            "ttl_sweep_error": None,
        }
        sweeper = env.sweeper
        if sweeper is not None:
            with sweeper._lock:
                out["expired_swept"] = sweeper.swept
            out["ttl_sweep_error"] = repr(sweeper.error) if sweeper.error is not None else None
        if w is not None:
            with w._lock:
                times = sorted(w.commit_seconds)
                out.update(
                    commits=w.commits,
                    ops_committed=w.ops_committed,
                    ops_per_commit={"mean": w.ops_committed / w.commits if w.commits else 0.0,
                                    "max": w.max_ops_in_commit},
                    durable_groups=w.durable_groups,
                    buffered_groups=w.buffered_groups,
                    bytes_in=w.bytes_in,
                    bytes_stored=w.bytes_stored,
                    failed=repr(w.failed.cause) if w.failed is not None else None,
                )
            if times:
                out["commit_seconds"] = {"p50": times[len(times) // 2],
                                         "p99": times[min(len(times) - 1, int(len(times) * 0.99))]}
            out["pending"] = w.pending()
            if out["bytes_in"]:
                out["compression_ratio"] = out["bytes_stored"] / out["bytes_in"]
        return out

    def close(self) -> None:
        """Commit pending writes and release the store. Idempotent.

        :raises StoreFailedError: a commit had failed: some writes were lost
        """
        if self._closed:
            return
        self._closed = True
        if self._root is not self:
            return
        env = self._env
        if not env.forked:
            _detach(env)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if (self._closed or self._root._closed) else "open"
        return f"<kvstore.{type(self).__name__} {self._root._path!r} namespace={self._ns!r} {state}>"


class Namespace(Store):
    """A separate keyspace of a store, with the same methods. Shares the
    store's engine; closing it only closes this handle."""

    def __init__(self, root: Store, name: str):  # noqa: super().__init__ on purpose not called
        self._root = root
        self._ns = name
        self._closed = False
        self._path = root._path


class Batch:
    """Writes that commit atomically when the `with` block exits normally."""

    def __init__(self, store: Store, durable):
        self._store = store
        self._durable = durable
        self._ops: list = []
        self._nbytes = 0
        self._before = None  # the TTL metadata step of its namespaces (ttl.Enable), if any
        self._state = "open"

    def _target(self, namespace):
        if self._state != "open":
            raise StoreClosedError(f"this batch is {self._state}; start a new one with db.batch()")
        store = self._store
        env = store._live_env()
        ns = store._ns if namespace is None else namespace
        if namespace is not None:
            check_namespace_name(namespace)
        return ns, store._dbi(env, ns)

    def put(self, key, value, *, namespace: str | None = None, ttl: float | None = None) -> None:
        """Add a put to the batch; `namespace` targets another namespace of the
        store; `ttl` as for Store.put (None: that namespace's default)."""
        ns, dbi = self._target(namespace)
        key = check_key(key)
        env = self._store._live_env()
        record = self._store._root._codec.encode(value, dictionary=env.dicts.for_encoding(ns))
        if ttl is not None or ns in env.ttl.defaults:
            record, step = _ttl.stamp(env, ns, record, ttl)
            if step is not None:
                self._before = step | self._before
        self._nbytes += len(record)
        self._ops.append((ns, dbi, key, record))

    def delete(self, key, *, namespace: str | None = None) -> None:
        ns, dbi = self._target(namespace)
        self._ops.append((ns, dbi, check_key(key), None))

    def __len__(self) -> int:
        return len(self._ops)

    def __enter__(self) -> "Batch":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close(exc_type is not None, None)

    def _close(self, discard: bool, callback) -> bool:
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
        return store._submit(store._live_env(), ops, self._nbytes, self._durable, callback,
                             self._before)


# ---------------------------------------------------------------- lifecycle


def _start_writer(env, options: Options) -> Writer:
    """The writer of env, with the parts above it subscribed to its commits."""
    writer = Writer(env, options)
    cache = env.cache
    if cache is not None:
        def invalidate(groups):
            # The commit changed these keys: free their cached values now
            # (correctness does not need it: the commit moved the txnid, so
            # their entries would be revalidated on their next read).
            if len(cache):
                cache.invalidate_many((ns, key) for g in groups for ns, _dbi, key, _r in g.ops)

        writer.on_commit(invalidate)

    def check_room(groups):
        if env.space_low():  # the zeroed room past LMDB's pages fell below half
            writer.schedule(env.preallocate)

    writer.on_commit(check_room)
    writer.on_commit(env.ttl.committed)
    env.route_writes(writer.run)
    return writer


def _detach(env) -> None:
    """Drop one handle's reference; the last one flushes and closes."""
    if not environment.release(env):
        return
    try:
        if env.sweeper is not None:
            env.sweeper.stop()
        if env.writer is not None:
            env.writer.close()
    finally:
        env.close()


_hooks_installed = False
_hooks_lock = threading.Lock()
_finalizer_pid = 0  # the process that registered _close_all with multiprocessing


def _close_all() -> None:
    """At interpreter exit: commit every pending write of every open store."""
    for env in environment.all_open():
        if env.forked:
            continue
        try:
            if env.sweeper is not None:
                env.sweeper.stop()
            if env.writer is not None:
                env.writer.close()
        except KVStoreError as exc:
            print(f"kvstore: {env.path}: {exc}", file=sys.stderr)


def _on_sigterm(signum, frame):
    # Unwind the main thread (releasing any lock it holds) and exit through
    # the interpreter's normal shutdown, where atexit commits pending writes.
    raise SystemExit(128 + signum)


def _install_exit_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
        atexit.register(_close_all)
        if threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                    signal.signal(signal.SIGTERM, _on_sigterm)
            except (ValueError, OSError):
                pass  # not the main interpreter: the application owns signals


def _commit_at_multiprocessing_exit() -> None:
    """A multiprocessing child ends with os._exit() when its target returns:
    atexit never runs there, but multiprocessing's own exit function runs the
    finalizers registered in the child. Register the commit of pending
    writes there too, once per process (a child forked from this one
    registers again when it first uses a store)."""
    global _finalizer_pid
    pid = os.getpid()
    if _finalizer_pid == pid:
        return
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is None:
        return  # no multiprocessing: no child of it either
    with _hooks_lock:
        if _finalizer_pid != pid:
            _finalizer_pid = pid
            mp_util.Finalize(None, _close_all, exitpriority=10)
