"""The asyncio API: `kvstore.aio.open()` returns an `AsyncStore`.

    import kvstore.aio

    async with kvstore.aio.open("./agent-memory") as db:
        await db.aput("session:42:msg:1", {"role": "user"}, durable=True)
        await db.aget("session:42:msg:1")
        async with db.abatch(durable=True) as b:
            b.put("meta:42", {"stage": "DRAFT"})
        async for key, value in db.ascan(prefix="session:42:"):
            ...

An `AsyncStore` wraps a `Store` (`AsyncStore(store)`, or `db.store` the
other way) and keeps its guarantees: the same write modes, atomicity and
read-your-writes. How each call meets the event loop:

- Writes are checked and encoded in the calling thread, exactly as `Store`
  does, then queued with a completion callback, so queueing never blocks.
  A durable write (or a buffered one past ``max_pending_ops``) then awaits a
  future that the committing thread resolves through
  ``loop.call_soon_threadsafe``: the loop keeps running during the commit,
  and concurrent writes from many tasks share commits as threads do.
  Cancelling such an await stops the wait, not the write: it is queued and
  commits (or fails) like any other.
- Reads run inline. A get is a few microseconds of LMDB and decoding, far
  less than a hop to a worker thread (about 7 us against 150-200 us on the
  development machine); `aget_many` of more than `INLINE_GET_MANY` keys goes
  to a worker thread so that one call cannot hold the loop for long.
  `ascan` reads in the loop and hands it back every `SCAN_CHUNK` items.
- Transactions (`atransaction`, `atransact`, `aincr`, `aupdate`,
  `acompare_and_set`; kvstore/txn.py): the transaction's reads and writes
  are plain calls that run inline, like `aget`; its commit is queued with a
  completion callback and awaited like a durable write, and a retry's
  backoff is an `asyncio.sleep`.
- Opening, closing, `aflush`, `anamespace` and `atrain_dictionary` can wait
  for LMDB's write lock or an fsync, so they run in the loop's default
  executor.

Not covered: a value's encoding runs in the caller's thread, so a huge value
(megabytes) holds the loop while zstd compresses it; and a resize of the
memory map (rare: the map doubles) pauses reads of this process, the loop's
included, for its duration.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import weakref
from typing import (TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Generator, Generic, Iterable,
                    TypeVar, overload)

from . import rmw as _rmw
from . import retry as _retry
from . import txn as _txn
from .errors import ConflictError, InvalidArgumentError
from .options import INLINE_GET_MANY, SETTLE_SLICE, Options
from .store import SCAN_CHUNK, Batch, Store
from .validate import check_count
from ._types import Items, Key, KeyT, Value

if TYPE_CHECKING:
    import os
    from types import TracebackType

    from typing_extensions import Literal, Unpack

    from .options import OptionsDict

_R = TypeVar("_R")

__all__ = ["open", "AsyncStore", "AsyncBatch", "AsyncTransaction", "INLINE_GET_MANY"]



def open(path: str | os.PathLike[str], **options: Unpack[OptionsDict]) -> _Opening:
    """Open (creating if missing) the store at `path` without blocking the loop.

    Await it, or use it as an async context manager (which closes the store
    on exit)::

        db = await kvstore.aio.open(path)
        async with kvstore.aio.open(path) as db: ...

    :param options: those of `kvstore.open()` (`kvstore.Options`); a bad one
        raises here, before anything is opened

    An ``etcd://`` URL opens a store on an etcd cluster (kvstore/etcd/aio.py):
    an `AsyncEtcdStore`, with the same methods.
    """
    if isinstance(path, str) and path.startswith("etcd://"):
        from .etcd import aio as _etcd_aio  # imports the etcd client libraries
        return _etcd_aio.open(path, **options)  # type: ignore[return-value]  # the same API, another class
    return _Opening(path, Options.from_kwargs(options))


class _Opening:
    """What `open()` returns: awaitable, and an async context manager."""

    def __init__(self, path: str | os.PathLike[str], options: Options):
        self._path = path
        self._options = options
        self._db: AsyncStore | None = None

    def _open_sync(self) -> Store[bytes]:
        store = Store(self._path, self._options)
        try:
            if not store.readonly:
                store.namespace(store.name)  # the namespace handle, so the first write need not open it
        except BaseException:
            store.close()
            raise
        return store

    async def _open(self) -> AsyncStore[bytes]:
        store = await asyncio.get_running_loop().run_in_executor(None, self._open_sync)
        return AsyncStore(store)

    def __await__(self) -> Generator[Any, None, AsyncStore[bytes]]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncStore[bytes]:
        self._db = await self._open()
        return self._db

    async def __aexit__(self, *exc: object) -> None:
        await self._db.aclose()  # type: ignore[union-attr]  # set by __aenter__


# Completions settled per turn of the loop (options.SETTLE_SLICE). One commit
# can complete a hundred waiting tasks; woken all at once, their next steps
# (each encoding its next value) would run back to back and hold the loop for
# milliseconds. In slices, other callbacks run between them.
_SLICE = SETTLE_SLICE


class _Bridge:
    """Carries completions from committing threads into one event loop.

    A commit completes many groups at once (one per waiting task); the
    committing thread appends each to a list and wakes the loop only for
    the first, so a commit costs the loop one wake-up, not one per task.
    The loop settles them _SLICE at a time.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._lock = threading.Lock()
        self._done: list[tuple[asyncio.Future[Any], BaseException | None]] = []  # guarded by _lock

    def settle(self, future: asyncio.Future[Any], error: BaseException | None) -> None:  # in the committing thread
        with self._lock:
            self._done.append((future, error))
            first = len(self._done) == 1
        if first:
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: nobody is left to tell
                with self._lock:
                    self._done.clear()

    def _drain(self) -> None:  # in the loop
        with self._lock:
            done, self._done = self._done[:_SLICE], self._done[_SLICE:]
            if self._done:  # the rest after the tasks woken now have run
                self._loop.call_soon(self._drain)
        for future, error in done:
            # a result, not an exception: an unawaited future must not log
            # "exception was never retrieved"; done: its task was cancelled
            if not future.done():
                future.set_result(error)


_bridges: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Bridge]" = weakref.WeakKeyDictionary()
_bridges_lock = threading.Lock()


def _bridge(loop: asyncio.AbstractEventLoop) -> _Bridge:
    bridge = _bridges.get(loop)
    if bridge is None:
        with _bridges_lock:
            bridge = _bridges.get(loop)
            if bridge is None:
                bridge = _bridges[loop] = _Bridge(loop)
    return bridge


class _Completion:
    """The writer's callback for one group: resolves a future of the calling
    loop with ``group.error`` (None on success) once the group is done."""

    __slots__ = ("_bridge", "future")

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._bridge = _bridge(loop)
        self.future: asyncio.Future[Any] | None = loop.create_future()

    def __call__(self, group: Any) -> None:  # in the committing thread
        future = self.future
        if future is not None:  # None: a buffered write nobody waits for
            self._bridge.settle(future, group.error)

    async def wait(self, must_wait: bool) -> None:
        """Await the group if `must_wait` (Writer.submit's answer); raise its error."""
        if not must_wait:
            self.future = None
            return
        error = await self.future  # type: ignore[misc]  # set, when must_wait
        if error is not None:
            raise error


class AsyncStore(Generic[KeyT]):
    """A store, or one namespace of it, for asyncio code.

    One handle can be used by any number of tasks, on any number of event
    loops, and alongside threads using the `Store` it wraps. For type
    checkers, generic in the type of the keys its scans return, as Store is.
    """

    def __init__(self, store: Store[KeyT]):
        if not isinstance(store, Store):
            raise InvalidArgumentError(f"AsyncStore wraps a kvstore.Store (from kvstore.open()), "
                                       f"not {type(store).__name__}")
        self._store: Store[KeyT] = store

    @property
    def store(self) -> Store[KeyT]:
        """The synchronous handle this one wraps (for threads and sync code)."""
        return self._store

    @property
    def path(self) -> str:
        return self._store.path

    @property
    def name(self) -> str:
        """The namespace this handle reads and writes."""
        return self._store.name

    @property
    def readonly(self) -> bool:
        return self._store.readonly

    @property
    def options(self) -> Options:
        return self._store.options

    # ------------------------------------------------------------ writes

    async def aput(self, key: Key, value: Value, *, durable: bool | None = None,
                   ttl: float | None = None) -> None:
        """`Store.put`: a durable put returns once its commit is synced; `ttl`
        as for Store.put.

        :raises InvalidKeyError, EncodeError, InvalidTTLError: at the call; nothing is queued
        :raises StoreFailedError: the commit failed (durable writes only)
        """
        done = _Completion()
        await done.wait(self._store._put(key, value, durable, done, ttl))

    async def adelete(self, key: Key, *, durable: bool | None = None) -> None:
        """`Store.delete`: remove key (no error if it is missing)."""
        done = _Completion()
        await done.wait(self._store._delete(key, durable, done))

    async def aput_many(self, items: Items, *, durable: bool | None = None, ttl: float | None = None) -> None:
        """`Store.put_many`: many pairs atomically, in one commit."""
        done = _Completion()
        await done.wait(self._store._put_many(items, durable, done, ttl))

    def abatch(self, durable: bool | None = None) -> AsyncBatch:
        """An atomic batch: ``async with db.abatch() as b: b.put(...)``.

        Committed as one group when the block exits normally (a durable one
        is awaited without blocking the loop); discarded if it raises.
        """
        return AsyncBatch(self._store.batch(durable))

    # ------------------------------------------------------------ read-modify-write

    def atransaction(self, durable: bool | None = None) -> AsyncTransaction:
        """`Store.transaction` for asyncio: ``async with db.atransaction() as tx:``.

        tx is a `kvstore.Transaction`: its reads and writes are plain calls
        (they run inline, as aget does); the commit at the end of the block
        is awaited without blocking the loop.

        :raises ConflictError: at the end of the block, as for Store.transaction
        """
        return AsyncTransaction(self._store.transaction(durable))

    @overload
    async def atransact(self, fn: Callable[[_txn.Transaction], Awaitable[_R]], *,
                        retries: int = _retry.RETRIES, durable: bool | None = None) -> _R: ...
    @overload
    async def atransact(self, fn: Callable[[_txn.Transaction], _R], *,
                        retries: int = _retry.RETRIES, durable: bool | None = None) -> _R: ...

    async def atransact(self, fn: Callable[[_txn.Transaction], Any], *,
                        retries: int = _retry.RETRIES, durable: bool | None = None) -> Any:
        """`Store.transact`: fn(tx) (a function or a coroutine function) in a
        transaction, run again on conflict after an asyncio.sleep backoff;
        returns fn's result.

        :raises ConflictError: every run conflicted (its message has the count)
        """
        attempts = _retry.Attempts(self._store, check_count(retries, "retries", "atransact", 0))
        with attempts:
            for first, pause in attempts:
                if pause:
                    await asyncio.sleep(pause)
                tx = self._store.transaction(durable)._begin()
                try:
                    result = fn(tx)
                    if inspect.isawaitable(result):
                        result = await result
                except BaseException as exc:
                    error = _retry.failed_run(tx, exc)
                    if error is None:
                        raise
                    attempts.conflict(error)
                    continue
                _retry.check_still_open(tx)
                if first:  # Gate.wait, without blocking the loop
                    waited = time.monotonic() + _retry.YIELD_MAX
                    while attempts.gate.contended(tx._reads) and time.monotonic() < waited:
                        await asyncio.sleep(0.001)
                try:
                    await _commit(tx)
                    return result
                except ConflictError as exc:
                    attempts.conflict(exc)
        raise _retry.gave_up(attempts.last_error(), attempts.retries)

    async def aupdate(self, key: Key, fn: Callable[[Any], Awaitable[Value] | Value], default: Value = None, *,
                      durable: bool | None = None) -> Any:
        """`Store.update`: store fn(old) (fn may be a coroutine function) and return it."""
        async def step(tx: _txn.Transaction) -> Any:
            new = fn(tx.get(key, default))
            if inspect.isawaitable(new):
                new = await new
            tx.put(key, new)
            return new

        return await self.atransact(step, retries=_retry.RMW_RETRIES, durable=durable)

    async def aincr(self, key: Key, delta: int = 1, default: int = 0, *, durable: bool | None = None) -> int:
        """`Store.incr`: add delta to the int under key; returns the new value."""
        done = _Completion()
        started = _rmw.start_incr(self._store, key, delta, default, durable, done)
        if started is None:  # the transaction path (rmw.py says when)
            new: int = await self.atransact(_retry.incr_step(key, delta, default),
                                            retries=_retry.RMW_RETRIES, durable=durable)
            return new
        await done.wait(started[1])
        value: int = _rmw.outcome(started[0])
        return value

    async def acompare_and_set(self, key: Key, expected: Any, new: Value | _txn._Missing, *,
                               durable: bool | None = None) -> bool:
        """`Store.compare_and_set`: new under key if it holds expected
        (kvstore.MISSING: absent); returns whether it did."""
        done = _Completion()
        started = _rmw.start_compare_and_set(self._store, key, expected, new, durable, done)
        if started is None:
            swapped: bool = await self.atransact(_retry.cas_step(key, expected, new),
                                                 retries=_retry.RMW_RETRIES, durable=durable)
            return swapped
        await done.wait(started[1])
        answer: bool = _rmw.outcome(started[0])
        return answer

    async def aflush(self, timeout: float | None = None) -> None:
        """`Store.flush`: every write accepted before the call is committed
        and synced. Waits in a worker thread.

        :raises TimeoutError: not done within timeout seconds (writes stay queued)
        :raises StoreFailedError: a commit failed; the writes it held are lost
        """
        await asyncio.get_running_loop().run_in_executor(None, self._store.flush, timeout)

    # ------------------------------------------------------------ reads

    async def aget(self, key: Key, default: Any = None, *, refresh_ttl: bool = False) -> Any:
        """`Store.get`: the value stored under key, or default (runs inline)."""
        return self._store.get(key, default, refresh_ttl=refresh_ttl)

    async def aget_many(self, keys: Iterable[Key]) -> list[Any]:
        """`Store.get_many`: values of keys (None where missing), from one snapshot."""
        todo = list(keys)
        if len(todo) <= INLINE_GET_MANY:
            return self._store.get_many(todo)
        return await asyncio.get_running_loop().run_in_executor(None, self._store.get_many, todo)

    async def acontains(self, key: Key) -> bool:
        """`key in store` (runs inline)."""
        return key in self._store

    @overload
    def ascan(self, prefix: Key | None = None, *, start: Key | None = None, stop: Key | None = None,
              reverse: bool = False, keys_only: Literal[False] = False) -> AsyncIterator[tuple[KeyT, Any]]: ...
    @overload
    def ascan(self, prefix: Key | None = None, *, start: Key | None = None, stop: Key | None = None,
              reverse: bool = False, keys_only: Literal[True]) -> AsyncIterator[KeyT]: ...
    @overload
    def ascan(self, prefix: Key | None = None, *, start: Key | None = None, stop: Key | None = None,
              reverse: bool = False, keys_only: bool) -> AsyncIterator[Any]: ...

    async def ascan(self, prefix: Key | None = None, *, start: Key | None = None, stop: Key | None = None,
                    reverse: bool = False, keys_only: bool = False) -> AsyncIterator[Any]:
        """`Store.scan` as an async iterator: (key, value) pairs, or keys alone
        with keys_only, in key order. Reads in the loop and gives it back
        every SCAN_CHUNK items; the same consistency as `Store.scan`."""
        items = self._store.scan(prefix, start=start, stop=stop, reverse=reverse,
                                 keys_only=keys_only)
        n = 0
        for item in items:
            yield item
            n += 1
            if n == SCAN_CHUNK:
                n = 0
                await asyncio.sleep(0)

    # ------------------------------------------------------------ namespaces, state

    @overload
    async def anamespace(self, name: str, *, ttl: float | None = None) -> AsyncStore[bytes]: ...
    @overload
    async def anamespace(self, name: str, *, ttl: float | None = None,
                         keys: type[bytes]) -> AsyncStore[bytes]: ...
    @overload
    async def anamespace(self, name: str, *, ttl: float | None = None, keys: type[str]) -> AsyncStore[str]: ...

    async def anamespace(self, name: str, *, ttl: float | None = None,
                         keys: type[bytes] | type[str] = bytes) -> AsyncStore[bytes] | AsyncStore[str]:
        """`Store.namespace`: a handle on namespace `name`, created (durably,
        in a worker thread) if missing; `ttl`: its default TTL, `keys`: the
        type of the keys its scans return, as there."""
        ns: Store[Any] = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self._store.namespace(name, ttl=ttl, keys=keys))
        return AsyncStore(ns)

    async def anamespaces(self) -> list[str]:
        """`Store.namespaces`: names of the namespaces in the store, sorted."""
        return self._store.namespaces()

    async def atrain_dictionary(self, namespace: str | None = None, **kwargs: int) -> int:
        """`Store.train_dictionary`, in a worker thread; returns the dictionary's id."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, lambda: self._store.train_dictionary(namespace, **kwargs))

    def stats(self) -> dict[str, Any]:
        """`Store.stats` (cheap: counters and one read transaction)."""
        return self._store.stats()

    async def aclose(self) -> None:
        """`Store.close` in a worker thread: commit pending writes, release the store."""
        await asyncio.get_running_loop().run_in_executor(None, self._store.close)

    async def __aenter__(self) -> AsyncStore[KeyT]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<kvstore.aio.AsyncStore of {self._store!r}>"


class AsyncBatch:
    """Writes that commit atomically when the `async with` block exits normally.

    `put` and `delete` only check and encode (they do not wait), so they are
    plain methods, as on `kvstore.Batch`.
    """

    def __init__(self, batch: Batch):
        self._batch = batch

    def put(self, key: Key, value: Value, *, namespace: str | None = None, ttl: float | None = None) -> None:
        """Add a put; `namespace` targets another namespace of the store."""
        self._batch.put(key, value, namespace=namespace, ttl=ttl)

    def delete(self, key: Key, *, namespace: str | None = None) -> None:
        self._batch.delete(key, namespace=namespace)

    def __len__(self) -> int:
        return len(self._batch)

    async def __aenter__(self) -> AsyncBatch:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        done = _Completion()
        await done.wait(self._batch._close(exc_type is not None, done))


async def _commit(tx: _txn.Transaction) -> None:
    """Commit a transaction without blocking the loop (Transaction.commit)."""
    done = _Completion()
    try:
        condition, wait = tx._submit(done)
        await done.wait(wait)
    except BaseException:
        tx._end("failed")
        raise
    tx._settle(condition)


class AsyncTransaction:
    """What `AsyncStore.atransaction()` returns: ``async with`` gives the
    `kvstore.Transaction`, committed (awaited) when the block exits
    normally, discarded if it raises."""

    def __init__(self, tx: _txn.Transaction):
        self._tx = tx

    async def __aenter__(self) -> _txn.Transaction:
        return self._tx._begin()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc_type is not None:
            self._tx._end("discarded")
            return
        await _commit(self._tx)
