"""The asyncio API of a store on etcd: `await kvstore.aio.open("etcd://...")`.

`AsyncEtcdStore` has the methods of `kvstore.aio.AsyncStore`. Every call
that may talk to the cluster runs in the loop's default executor, so the
loop never waits for a round trip: a write's queueing and a durable write's
wait for its etcd transaction, a read (a cache hit too: it may need a
keys-only check), a scan (its pages are read in a worker thread, the whole
range at once), flush, open and close. Concurrent durable writes from many
tasks share etcd transactions as threads do (kvstore/etcd/grouping.py).

Transactions: `atransaction()` yields the store's `EtcdTransaction`, whose
reads are blocking calls of one round trip (call them from a worker thread
with `asyncio.to_thread` if that matters); `atransact`, `aupdate`, `aincr`
and `acompare_and_set` run each attempt's reads and commit in a worker
thread and sleep the backoff with asyncio.sleep.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from typing import Any, AsyncIterator, Awaitable, Callable, Generator, Iterable, TypeVar

from ..errors import ConflictError
from ..retry import RETRIES, RMW_RETRIES, backoff, cas_step, gave_up, incr_step
from ..validate import check_count
from .batch import EtcdBatch
from .options import EtcdOptions
from .store import EtcdStore, open_url
from .txn import STATS, EtcdTransaction

__all__ = ["open", "AsyncEtcdStore"]

_R = TypeVar("_R")


async def _thread(fn: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
    """fn(*args, **kwargs) in the loop's executor, in a copy of the task's
    context (as asyncio.to_thread): the transaction it has open goes along."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(None, call)


async def _begin(tx: EtcdTransaction) -> EtcdTransaction:
    """Start tx for a task: claimed in the task's context (nested ones
    raise), its setup done in a worker thread."""
    tx._claim()
    try:
        return await _thread(tx._begin, False)
    except BaseException:
        tx.discard()
        raise


class _Opening:
    """What `open()` returns: awaitable, and an async context manager."""

    def __init__(self, url: str, options: dict[str, Any]):
        self._url = url
        self._options = options
        self._db: AsyncEtcdStore | None = None

    async def _open(self) -> AsyncEtcdStore:
        return AsyncEtcdStore(await _thread(open_url, self._url, **self._options))

    def __await__(self) -> Generator[Any, None, AsyncEtcdStore]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncEtcdStore:
        self._db = await self._open()
        return self._db

    async def __aexit__(self, *exc: object) -> None:
        if self._db is not None:
            await self._db.aclose()


def open(url: str, **options: Any) -> _Opening:
    """Open the store at an etcd URL without blocking the loop (await it, or `async with`)."""
    return _Opening(url, options)


class AsyncEtcdStore:
    def __init__(self, store: EtcdStore):
        self._store = store

    @property
    def store(self) -> EtcdStore:
        return self._store

    @property
    def name(self) -> str:
        return self._store.name

    @property
    def path(self) -> str:
        return self._store.url

    @property
    def readonly(self) -> bool:
        return self._store.readonly

    @property
    def options(self) -> EtcdOptions:
        return self._store.options

    # ------------------------------------------------------------ writes

    async def aput(self, key: Any, value: Any, *, durable: bool | None = None, ttl: float | None = None) -> None:
        await _thread(self._store.put, key, value, durable=durable, ttl=ttl)

    async def adelete(self, key: Any, *, durable: bool | None = None) -> None:
        await _thread(self._store.delete, key, durable=durable)

    async def aput_many(self, items: Any, *, durable: bool | None = None, ttl: float | None = None) -> None:
        await _thread(self._store.put_many, items, durable=durable, ttl=ttl)

    def abatch(self, durable: bool | None = None) -> AsyncEtcdBatch:
        return AsyncEtcdBatch(self._store.batch(durable))

    async def aflush(self, timeout: float | None = None) -> None:
        await _thread(self._store.flush, timeout)

    # ------------------------------------------------------------ reads

    async def aget(self, key: Any, default: Any = None, *, refresh_ttl: bool = False) -> Any:
        return await _thread(self._store.get, key, default, refresh_ttl=refresh_ttl)

    async def aget_many(self, keys: Iterable[Any]) -> list[Any]:
        return await _thread(self._store.get_many, list(keys))

    async def acontains(self, key: Any) -> bool:
        return await _thread(self._store.__contains__, key)

    async def ascan(self, prefix: Any = None, *, start: Any = None, stop: Any = None, reverse: bool = False,
                    keys_only: bool = False) -> AsyncIterator[Any]:
        items = await _thread(lambda: list(self._store.scan(prefix, start=start, stop=stop, reverse=reverse,
                                                            keys_only=keys_only)))
        for item in items:
            yield item

    # ------------------------------------------------------------ transactions

    def atransaction(self, durable: bool | None = None) -> _AsyncTransaction:
        return _AsyncTransaction(self._store.transaction(durable))

    async def atransact(self, fn: Callable[[Any], Any], *, retries: int = RETRIES,
                        durable: bool | None = None) -> Any:
        """`transact`: fn(tx) (a function or a coroutine function), run again on conflict."""
        retries = check_count(retries, "retries", "atransact", 0)
        STATS["calls"] += 1
        last: ConflictError | None = None
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(backoff(attempt - 1))
            tx = await _begin(EtcdTransaction(self._store, durable))
            try:
                if inspect.iscoroutinefunction(fn):
                    result = await fn(tx)
                else:
                    result = await _thread(fn, tx)
                await _thread(tx.commit)
                return result
            except ConflictError as exc:
                tx.discard()
                STATS["conflicts"] += 1
                last = exc
            except BaseException:
                tx.discard()
                raise
        assert last is not None
        raise gave_up(last, retries)

    async def aupdate(self, key: Any, fn: Callable[[Any], Awaitable[Any] | Any], default: Any = None, *,
                      durable: bool | None = None) -> Any:
        async def step(tx: EtcdTransaction) -> Any:
            new = fn(await _thread(tx.get, key, default))
            if inspect.isawaitable(new):
                new = await new
            tx.put(key, new)
            return new

        return await self.atransact(step, retries=RMW_RETRIES, durable=durable)

    async def aincr(self, key: Any, delta: int = 1, default: int = 0, *, durable: bool | None = None) -> int:
        new: int = await self.atransact(incr_step(key, delta, default), retries=RMW_RETRIES, durable=durable)
        return new

    async def acompare_and_set(self, key: Any, expected: Any, new: Any, *, durable: bool | None = None) -> bool:
        done: bool = await self.atransact(cas_step(key, expected, new), retries=RMW_RETRIES, durable=durable)
        return done

    # ------------------------------------------------------------ namespaces, state

    async def anamespace(self, name: str, *, ttl: float | None = None,
                         keys: type[bytes] | type[str] = bytes) -> AsyncEtcdStore:
        return AsyncEtcdStore(await _thread(self._store.namespace, name, ttl=ttl, keys=keys))

    async def anamespaces(self) -> list[str]:
        return await _thread(self._store.namespaces)

    async def atrain_dictionary(self, namespace: str | None = None, **kwargs: int) -> int:
        return self._store.train_dictionary(namespace, **kwargs)  # NotSupportedError

    def stats(self) -> dict[str, Any]:
        return self._store.stats()

    async def aclose(self) -> None:
        await _thread(self._store.close)

    async def __aenter__(self) -> AsyncEtcdStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<kvstore.aio.AsyncEtcdStore of {self._store!r}>"


class AsyncEtcdBatch:
    """Writes that commit atomically (one etcd transaction) when the `async with` block exits normally."""

    def __init__(self, batch: EtcdBatch):
        self._batch = batch

    def put(self, key: Any, value: Any, *, namespace: str | None = None, ttl: float | None = None) -> None:
        self._batch.put(key, value, namespace=namespace, ttl=ttl)

    def delete(self, key: Any, *, namespace: str | None = None) -> None:
        self._batch.delete(key, namespace=namespace)

    def __len__(self) -> int:
        return len(self._batch)

    async def __aenter__(self) -> AsyncEtcdBatch:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        await _thread(self._batch.__exit__, exc_type, None, None)


class _AsyncTransaction:
    def __init__(self, tx: EtcdTransaction):
        self._tx = tx

    async def __aenter__(self) -> EtcdTransaction:
        return await _begin(self._tx)

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        await _thread(self._tx.__exit__, exc_type, None, None)
