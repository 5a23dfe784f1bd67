"""The public handle: `kvstore.open()` returns a `Store`; `Store.namespace()`
returns a `Namespace` with the same methods over a separate keyspace.

Keys are bytes or str (UTF-8), 1 to 511 bytes; they come back from scans and
iteration as bytes, or as str through `namespace(name, keys=str)`. Values are anything msgpack carries; they are validated
and encoded in the caller's thread, so a bad value raises at the call and can
never poison a group commit. Reads see this process's pending writes first
(read-your-writes), then the database. A value with a TTL (kvstore/ttl.py)
reads as missing once it has expired, wherever it is found.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Iterator, ParamSpec, TypeVar, overload

import lmdb

from .batch import Batch
from .engine import attach, detach
from . import codec as _codec
from . import ttl as _ttl
from . import rmw as _rmw
from . import retry as _retry
from . import txn as _txn
from .codec.format import inner_record
from .dictionaries import DEFAULT_DICT_SIZE, DEFAULT_SAMPLES
from . import memoize as _memoize
from .layout import DEFAULT_NAMESPACE, MAX_KEY_SIZE, check_key, check_namespace_name
from .errors import (
    InvalidArgumentError,
    InvalidKeyError,
    ReadOnlyError,
    StoreClosedError,
    TTLMismatchError,
)
from .options import Options
from .reads import SCAN_CHUNK, Reads
from .validate import check_timeout
from .writer import Group, Writer
from ._types import Items, Key, KeyT, Value

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack

    from .options import OptionsDict

    from .engine import Engine
    from .memoize import Memoized

_R = TypeVar("_R")
_P = ParamSpec("_P")
__all__ = ["open", "Store", "Namespace", "Batch", "MAX_KEY_SIZE", "SCAN_CHUNK"]



def open(path: str | os.PathLike[str], **options: Unpack[OptionsDict]) -> Store:
    """Open (creating if missing, unless readonly=True) the store at `path`.

    :param path: a directory; created if missing
    :param options: see `kvstore.Options` for every option and its default
    :raises FormatError: path is not a kvstore store, or a newer format
    :raises StoreNotFoundError: readonly=True and no store at path

    An ``etcd://host:port[,host:port...]/prefix`` URL opens a store on an
    etcd cluster instead (kvstore/etcd/, docs/distributed.md): an
    `kvstore.etcd.store.EtcdStore`, with the same methods, taking the
    options of `kvstore.etcd.options.EtcdOptions`.
    """
    if isinstance(path, str) and path.startswith("etcd://"):
        from . import etcd
        return etcd.open(path, **options)  # type: ignore[return-value]  # the same API, another class
    return Store(path, Options.from_kwargs(options))


class Store(Reads[KeyT]):
    """A kvstore store: the default namespace of the store at `path`.

    Thread-safe: share one handle between threads. Opening the same path again
    in this process shares the same engine (and its pending writes).

    For type checkers, generic in the type of the keys its scans return
    (KeyT): a Store is a Store[bytes]; a Namespace opened with keys=str is
    a Namespace[str].
    """

    _root: Store[Any]
    _engine: Engine

    def __init__(self, path: str | os.PathLike[str], options: Options):
        self._path = os.fspath(path)
        self._options = options
        self._ns = DEFAULT_NAMESPACE
        self._root = self
        self._closed = False
        self._durable = options.durable
        self._codec = _codec.Codec(  # set by codec.use()
            options.compression, options.compression_level, options.compress_min_size,
            options.max_value_size)
        self._engine = self._attach()

    def _attach(self) -> Engine:
        return attach(self._path, self._options)

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

    def _live_engine(self) -> Engine:
        """The Environment, after checking the handle is usable."""
        root = self._root
        if self._closed or root._closed:
            raise StoreClosedError(f"the store at {root._path!r} is closed")
        engine = root._engine
        if engine.forked:
            engine = root._reopen_after_fork()
        return engine

    def _reopen_after_fork(self) -> Engine:
        # An environment inherited through fork() must not be used in the
        # child (LMDB's locks and reader slots belong to the parent). Abandon
        # it, with the parent's pending writes (the parent commits those), and
        # open the path afresh.
        old = self._engine
        try:
            old.lmdb.close()  # py-lmdb sees the fork and leaves LMDB's state alone
        except lmdb.Error:
            pass
        self._engine = self._attach()
        return self._engine

    @overload
    def namespace(self, name: str, *, ttl: float | None = None) -> Namespace[bytes]: ...
    @overload
    def namespace(self, name: str, *, ttl: float | None = None, keys: type[bytes]) -> Namespace[bytes]: ...
    @overload
    def namespace(self, name: str, *, ttl: float | None = None, keys: type[str]) -> Namespace[str]: ...

    def namespace(self, name: str, *, ttl: float | None = None,
                  keys: type[bytes] | type[str] = bytes) -> Namespace[bytes] | Namespace[str]:
        """A handle on namespace `name`, created (durably) if missing.

        :param ttl: the namespace's default TTL in seconds, for puts that
            give none: stored in the store (durably) if the namespace has
            none yet; if it has another, TTLMismatchError (change it with
            `set_default_ttl`). None: use whatever the namespace has.
        :param keys: the type of the keys this handle's scans, iteration and
            keys()/items() return: bytes (the default), or str (decoded from
            UTF-8; a stored key that is not UTF-8 raises InvalidKeyError).
            Keys given to any method may be either, whatever this says.
        :raises InvalidNamespaceError: not a str of 1-255 UTF-8 bytes, or starts with "__"
        :raises NamespaceLimitError: the store already holds max_namespaces namespaces
        :raises InvalidTTLError: ttl is not a finite number of seconds > 0
        """
        check_namespace_name(name)
        if keys is not bytes and keys is not str:
            raise InvalidArgumentError(f"keys must be bytes or str (the type scans return keys as), "
                                       f"not {keys!r}")
        wanted = None if ttl is None else _ttl.default_to_ms(ttl)
        engine = self._live_engine()
        # A read-only handle never creates one, even when the engine it
        # shares with a writable handle of this process could.
        engine.dbi(name, create=not (engine.readonly or self.readonly))
        handle: Namespace[bytes] | Namespace[str] = Namespace(self._root, name, keys)
        if wanted is None:
            return handle
        current = engine.ttl.default(name)
        if current == wanted:
            if engine.ttl.defaults.get(name) != wanted:
                engine.ttl.reload()  # another process set it since this one last looked
            return handle
        if current:
            raise TTLMismatchError(
                f"namespace {name!r} has a default TTL of {current / 1000:g} s, not {ttl!r} s; "
                f"change it with db.namespace({name!r}).set_default_ttl({ttl!r}), or leave ttl= out "
                f"to use the stored one")
        writer = handle._writer(engine)  # ReadOnlyError
        engine.ttl.set_default(name, wanted, writer)
        return handle

    @property
    def default_ttl(self) -> float | None:
        """This namespace's default TTL in seconds (None: none), as stored now."""
        ms = self._live_engine().ttl.default(self._ns)
        return ms / 1000 if ms else None

    def set_default_ttl(self, ttl: float | None) -> None:
        """Set (seconds), or remove (None), this namespace's default TTL, durably.

        Applies to puts from now on that give no ttl, in this process at once
        and in others within ttl_sweep_interval; values already stored keep
        their own expiry.

        :raises InvalidTTLError: ttl is not a finite number of seconds > 0
        """
        ms = 0 if ttl is None else _ttl.default_to_ms(ttl)
        engine = self._live_engine()
        writer = self._writer(engine)
        if ms or engine.ttl.default(self._ns):
            engine.ttl.set_default(self._ns, ms, writer)

    def namespaces(self) -> list[str]:
        """Names of the namespaces in the store, sorted, "default" included."""
        engine = self._live_engine()
        return sorted(set(engine.namespace_names()) | {DEFAULT_NAMESPACE})

    # ------------------------------------------------------------ writes

    def _writer(self, engine: Engine) -> Writer:
        if engine.readonly or self.readonly:
            raise ReadOnlyError(f"the store at {self.path!r} is open read-only; reopen it without readonly=True to write")
        return engine.writer  # type: ignore[return-value]  # None only on a read-only engine

    def _dbi(self, engine: Engine, ns: str) -> lmdb._Database | None:
        dbi = engine.dbis.get(ns)
        if dbi is None:
            dbi = engine.dbi(ns, create=not (engine.readonly or self.readonly))
        return dbi

    # Each write method has a private twin taking `callback`: None for the
    # calling thread to wait in the writer (durable) or not at all
    # (buffered); a function for asyncio callers (kvstore/aio.py), which
    # the writer calls once the group is done. The twin returns whether the
    # caller must wait for that callback (Writer.submit).

    def _submit(self, engine: Engine, ops: list[Any], nbytes: int, durable: bool | None,
                callback: Callable[[Any], None] | None = None, before: Any = None) -> bool:
        writer = self._writer(engine)
        if durable is None:
            durable = self._root._durable
        return writer.submit(Group(ops, bool(durable), nbytes, callback, before))

    def put(self, key: Key, value: Value, *, durable: bool | None = None, ttl: float | None = None) -> None:
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

    def _put(self, key: Key, value: Value, durable: bool | None, callback: Callable[[Any], None] | None,
             ttl: float | None = None) -> bool:
        # The hot path of every buffered write: kept flat on purpose.
        root = self._root
        engine = root._engine
        if self._closed or root._closed or engine.forked:
            engine = self._live_engine()
        writer = engine.writer
        if writer is None or root._options.readonly:  # a read-only handle, maybe on a shared
            self._writer(engine)  # writable engine: raises ReadOnlyError
        if type(key) is not str or not 0 < len(key) <= 127:  # 127 chars: at most 511 UTF-8 bytes
            key = check_key(key)
        else:
            key = key.encode("utf-8") if key.isascii() else check_key(key)
        ns = self._ns
        record = root._codec.encode(value, dictionary=engine.dicts.for_encoding(ns),
                                    key=key if engine.keyed else None)
        before = None
        if ttl is not None or ns in engine.ttl.defaults:
            record, before = _ttl.stamp(engine, ns, record, ttl)
        dbi = engine.dbis.get(ns) or self._dbi(engine, ns)
        return writer.submit(Group([(ns, dbi, key, record)],  # type: ignore[union-attr]  # as _writer
                                   root._durable if durable is None else bool(durable),
                                   len(record), callback, before))

    def delete(self, key: Key, *, durable: bool | None = None) -> None:
        """Remove key (no error if it is missing)."""
        self._delete(key, durable, None)

    def _delete(self, key: Key, durable: bool | None, callback: Callable[[Any], None] | None) -> bool:
        engine = self._live_engine()
        self._writer(engine)
        raw = check_key(key)
        return self._submit(engine, [(self._ns, self._dbi(engine, self._ns), raw, None)], 0, durable,
                            callback)

    def put_many(self, items: Items, *, durable: bool | None = None, ttl: float | None = None) -> None:
        """Store many pairs atomically, in one commit (all or nothing, across crashes).

        :param items: a mapping, or an iterable of (key, value) pairs; a later
            pair for the same key wins
        :param ttl: as for put, for every pair
        """
        self._put_many(items, durable, None, ttl)

    def _put_many(self, items: Any, durable: bool | None, callback: Callable[[Any], None] | None,
                  ttl: float | None = None) -> bool:
        engine = self._live_engine()
        self._writer(engine)
        if hasattr(items, "items"):
            items = items.items()
        elif not hasattr(items, "__iter__"):
            raise InvalidArgumentError(f"put_many takes a mapping or an iterable of (key, value) "
                                       f"pairs, not {type(items).__name__}")
        ns, dbi = self._ns, self._dbi(engine, self._ns)
        encode = self._root._codec.encode
        keyed = engine.keyed
        dictionary = engine.dicts.for_encoding(ns)
        if ttl is not None:
            _ttl.to_ms(ttl)  # a bad ttl raises before any value is encoded
        stamped = ttl is not None or ns in engine.ttl.defaults
        ops: list[Any] = []
        nbytes = 0
        before = None
        for pair in items:
            try:
                key, value = pair
            except (TypeError, ValueError):
                raise InvalidKeyError(f"put_many takes (key, value) pairs, got {pair!r}") from None
            key = check_key(key)
            record = encode(value, dictionary=dictionary, key=key if keyed else None)
            if stamped:
                record, step = _ttl.stamp(engine, ns, record, ttl)
                before = before or step
            nbytes += len(record)
            ops.append((ns, dbi, key, record))
        return bool(ops) and self._submit(engine, ops, nbytes, durable, callback, before)

    def batch(self, durable: bool | None = None) -> Batch:
        """An atomic batch: ``with db.batch() as b: b.put(...); b.delete(...)``.

        Committed as one group when the block exits normally; discarded if it
        raises. Reads do not see the batch's writes until then.
        """
        engine = self._live_engine()
        self._writer(engine)
        return Batch(self, durable)

    # ------------------------------------------------------------ read-modify-write (txn.py)

    def transaction(self, durable: bool | None = None) -> _txn.Transaction:
        """A transaction: ``with db.transaction() as tx: tx.get(...); tx.put(...)``.

        Commits when the block exits normally, if nothing it read has changed
        since it read it (in any thread or process); otherwise raises
        ConflictError and writes nothing. Discarded if the block raises.
        Reads and writes other namespaces with ``namespace=``.
        docs/transactions.md has the whole contract.

        :raises NestedTransactionError: begun inside another transaction of this thread or task
        """
        return _txn.Transaction(self, durable)

    def transact(self, fn: Callable[[_txn.Transaction], _R], *, retries: int = _retry.RETRIES,
                 durable: bool | None = None) -> _R:
        """Run fn(tx) in a transaction, running it again (after a random
        backoff) when it conflicts, at most `retries` more times; returns
        fn's result. fn may run more than once: keep its side effects in tx.

        :raises ConflictError: every run conflicted (its message has the count)
        """
        result: _R = _retry.transact(self, fn, retries, durable)
        return result

    def update(self, key: Key, fn: Callable[[Any], Value], default: Value = None, *,
               durable: bool | None = None) -> Any:
        """Store fn(old value) under key (old: default when missing) and return
        it; retried on conflict, so fn may run more than once."""
        return _retry.update(self, key, fn, default, durable)

    def incr(self, key: Key, delta: int = 1, default: int = 0, *, durable: bool | None = None) -> int:
        """Add delta to the int under key (default when missing); returns the new value.

        :raises InvalidArgumentTypeError: delta or default, or the stored value, is not an int
        """
        new: int = _rmw.incr(self, key, delta, default, durable)
        return new

    def compare_and_set(self, key: Key, expected: Any, new: Value | _txn._Missing, *,
                        durable: bool | None = None) -> bool:
        """Store new under key if it holds expected (kvstore.MISSING: if it is
        absent); new=kvstore.MISSING deletes it. Returns whether it did.
        Values compare as they read back (a tuple stored reads as a list)."""
        done: bool = _rmw.compare_and_set(self, key, expected, new, durable)
        return done

    def flush(self, timeout: float | None = None) -> None:
        """Return once every write accepted before the call is committed and synced.

        :raises TimeoutError: not done within timeout seconds (writes stay queued)
        :raises StoreFailedError: a commit failed; the writes it held are lost
        """
        timeout = check_timeout(timeout)
        engine = self._live_engine()
        if engine.writer is not None:
            engine.writer.flush(timeout)

    def __setitem__(self, key: Key, value: Value) -> None:
        self.put(key, value)

    def __delitem__(self, key: Key) -> None:
        if key not in self:
            raise KeyError(key)
        self.delete(key)

    # ------------------------------------------------------------ memoize

    def memoize(self, ttl: float | None = None, namespace: str | None = None, *, name: str | None = None,
                key: Callable[..., Value] | None = None
                ) -> Callable[[Callable[_P, _R]], Memoized[_P, _R]]:
        """A decorator caching a function's results in this store, by its
        arguments (kvstore/memoize.py: keys, collisions, concurrency)::

            @db.memoize(ttl=3600, namespace="tool-calls")
            def search(query, top_k=5): ...

        :param ttl: seconds a result is kept (None: the namespace's default)
        :param namespace: where results are stored (default: this handle's)
        :param name: the key prefix (default: the function's module.qualname)
        :param key: key(*args, **kwargs) -> what the call's key is made of,
            for arguments memoize cannot encode (default: the arguments)
        """
        handle: Store[Any] = self if namespace is None else self._root.namespace(namespace)
        return _memoize.memoize(handle, ttl, name=name, key=key)

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
        engine = self._live_engine()
        writer = self._writer(engine)
        self.flush()
        dbi = self._dbi(engine, ns)
        codec = self._root._codec

        def serialize(key: bytes, record: bytes) -> bytes:
            return codec.serialize(
                codec.decode(inner_record(record), dictionaries=engine.dicts.by_id, key=key))[1]

        return engine.dicts.train(ns, dbi, samples, dict_size, serialize, writer)

    def dictionaries(self) -> list[dict[str, Any]]:
        """Every dictionary in the store: id, namespace, size, created, samples, current."""
        return self._live_engine().dicts.info()

    # ------------------------------------------------------------ state

    def stats(self) -> dict[str, Any]:
        """Counters of the store's engine in this process, and the map's size.

        commits, ops_committed, ops_per_commit {mean, max}, commit_seconds
        {p50, p99}, pending, map_size, map_used, codec, bytes_in (serialized
        bytes of values committed since open), bytes_stored (their stored
        size, headers included), compression_ratio, commit_seq (commits by
        every process), expired_swept (expired values the background sweep of
        this process deleted since open), ttl_sweep_error (what stopped the
        sweep, if anything did), transactions {calls, conflicts} (transact
        calls of this process, incr/update/compare_and_set included, and their
        runs that conflicted and ran again or gave up).
        """
        engine = self._live_engine()
        info = engine.info()
        w = engine.writer
        out: dict[str, Any] = {
            "path": engine.path,
            "readonly": engine.readonly,
            "codec": self._root._codec.backend,
            "map_size": info["map_size"],
            "map_used": info["map_used"],
            "last_txnid": info["last_txnid"],
            "readers": info["num_readers"],
            "commit_seq": engine.commit_seq(),
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
            "cache": engine.cache.stats() if engine.cache is not None else None,
            "expired_swept": 0,
            "ttl_sweep_error": None,
        }
        if engine.sweeper is not None:
            out.update(engine.sweeper.stats())
        if w is not None:
            out.update(w.stats())
        if engine.tail is not None:  # the write-ahead log (wal.py): its size, tail, applies
            out["log"] = {**engine.tail.stats(), **engine.applier.stats()}  # type: ignore[union-attr]  # with the tail
            if w is not None:
                out["log"].update(w.worker_stats())
        if w is not None:
            out["transactions"] = _retry.stats(self)
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
        engine = self._engine
        if not engine.forked:
            detach(engine)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if (self._closed or self._root._closed) else "open"
        return f"<kvstore.{type(self).__name__} {self._root._path!r} namespace={self._ns!r} {state}>"


class Namespace(Store[KeyT]):
    """A separate keyspace of a store, with the same methods. Shares the
    store's engine; closing it only closes this handle. With keys=str
    (Store.namespace), its scans and iteration return keys as str."""

    def __init__(self, root: Store[bytes], name: str,  # noqa: super().__init__ on purpose not called
                 keys: type[bytes] | type[str] = bytes):
        self._root = root
        self._ns = name
        self._closed = False
        self._path = root._path
        self._keys = keys

    @property
    def key_type(self) -> type[bytes] | type[str]:
        """bytes or str: the type of the keys scans and iteration return."""
        return self._keys

    # Keys as str: the scans of reads.py return bytes; these wrap them.

    # Type checkers see Store's declarations of these (keys of KeyT).
    if not TYPE_CHECKING:
        def scan(self, prefix=None, *, start=None, stop=None, reverse=False, keys_only=False):
            it = super().scan(prefix, start=start, stop=stop, reverse=reverse, keys_only=keys_only)
            return it if self._keys is bytes else _str_keys(it, keys_only, self._ns)

        def keys(self):
            return self.scan(keys_only=True)

        def items(self):
            return self.scan()

        def __iter__(self):
            return self.scan(keys_only=True)

    def __repr__(self) -> str:
        text = super().__repr__()
        return text if self._keys is bytes else text[:-1] + " keys=str>"


def _decoded(key: bytes, ns: str) -> str:
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidKeyError(f"key {key!r} in namespace {ns!r} is not UTF-8, so it has no str form; "
                              f"read this namespace through a handle with keys=bytes (the default)") from None


def _str_keys(it: Iterator[Any], keys_only: bool, ns: str) -> Iterator[Any]:
    """A scan's items with their keys decoded from UTF-8."""
    if keys_only:
        for key in it:
            yield _decoded(key, ns)
    else:
        for key, value in it:
            yield _decoded(key, ns), value
