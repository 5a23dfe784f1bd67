"""What KVStoreSaver and KVStore share: their kvstore handles, how they
write, closing a store they opened themselves, and the NUL that joins the
parts of their keys. Needs no LangGraph."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Mapping, Union

from ...aio import AsyncBatch, AsyncStore
from ...errors import InvalidArgumentError, InvalidTTLError
from ...store import Batch, Store, open as _open_store
from ...ttl import MAX_TTL

if TYPE_CHECKING:
    from typing_extensions import Self

_SEP = "\x00"

# A write of the saver or the store: (namespace, key, value or None to
# delete[, ttl in seconds, as for kvstore's put]).
Op = tuple[Any, ...]
# What the integrations' constructors take: a kvstore handle, sync or async.
Handle = Union[Store[Any], AsyncStore[Any]]


def _langgraph_missing(exc: ImportError) -> ImportError:
    """The error of importing kvstore.integrations.langgraph without LangGraph."""
    return ImportError(
        f"kvstore.integrations.langgraph needs LangGraph ({exc}); install it with "
        f"pip install 'kvstore[langgraph]'")


def _ttl_seconds(minutes: object) -> float:
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


def _check_ttl_config(ttl: object) -> None:
    """InvalidArgumentError unless ttl is a TTLConfig-like dict, InvalidTTLError
    for a bad default_ttl: at construction, not at the first put."""
    if not isinstance(ttl, dict):
        raise InvalidArgumentError(
            f"ttl takes LangGraph's TTLConfig, a dict such as {{'default_ttl': 60}} "
            f"(minutes), not {type(ttl).__name__}")
    _ttl_seconds(ttl.get("default_ttl"))


def _apply(batch: Batch | AsyncBatch, ops: list[Op]) -> None:
    """Fill a kvstore Batch or AsyncBatch with ops: [(namespace, key, value or
    None to delete[, ttl in seconds, as for kvstore's put])]."""
    for ns, key, value, *ttl in ops:
        if value is None:
            batch.delete(key, namespace=ns)
        else:
            batch.put(key, value, namespace=ns, ttl=ttl[0] if ttl else None)


class _Owner:
    """What the saver and the store share: the kvstore handles, how they write,
    and closing a store they opened themselves."""

    _db: Store[Any]
    _adb: AsyncStore[Any]

    def _attach(self, db: Handle, durable: bool) -> Store[Any]:
        if isinstance(db, AsyncStore):
            db = db.store
        if not isinstance(db, Store):
            raise InvalidArgumentError(
                f"{type(self).__name__} takes an open kvstore store (kvstore.open() or "
                f"kvstore.aio.open()), not {type(db).__name__}; or use {type(self).__name__}"
                f".from_path(path)")
        self._db = db
        self._adb = AsyncStore(db)
        self._durable = bool(durable)
        self._owned = False
        return db

    @property
    def db(self) -> Store[Any]:
        """The kvstore store this object reads and writes."""
        return self._db

    def _write(self, ops: list[Op], durable: bool = True) -> None:
        """Commit ops as one atomic batch: synced if the object is durable
        and `durable`, else buffered (in order with every other write)."""
        if ops:
            with self._db.batch(self._durable and durable) as batch:
                _apply(batch, ops)

    async def _awrite(self, ops: list[Op], durable: bool = True) -> None:
        if ops:
            async with self._adb.abatch(self._durable and durable) as batch:
                _apply(batch, ops)

    @classmethod
    def _from_path(cls, path: str | os.PathLike[str], options: Mapping[str, Any], **kwargs: Any) -> Self:
        db = _open_store(path, **options)
        try:
            owner = cls(db, **kwargs)  # type: ignore[call-arg]  # the subclass's constructor
        except BaseException:
            db.close()
            raise
        owner._owned = True
        return owner

    def close(self) -> None:
        """Close the store if it was opened by from_path() (committing pending writes)."""
        if self._owned:
            self._db.close()

    async def aclose(self) -> None:
        if self._owned:
            await self._adb.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
