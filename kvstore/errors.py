"""Every error kvstore raises, one class per failure mode, under `KVStoreError`.

Grouped by the phase in which they occur. Each message says what to do next.
No `lmdb.Error` escapes the package: `translate()` maps them onto these classes.
"""

from __future__ import annotations

import builtins
import errno
import os
import resource
from typing import Any, Iterable

import lmdb

__all__ = [
    "KVStoreError",
    # -- at the call, before anything is queued
    "InvalidKeyError",
    "InvalidNamespaceError",
    "InvalidTTLError",
    "TTLMismatchError",
    "EncodeError",
    "CodecSelectionError",
    "ReadOnlyError",
    "StoreClosedError",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "NotSupportedError",
    "NestedTransactionError",
    "TransactionClosedError",
    # -- opening a store
    "FormatError",
    "StoreNotFoundError",
    "StoreAccessError",
    "StoreInUseError",
    # -- reading
    "CorruptionError",
    # -- committing
    "MapFullError",
    "DiskFullError",
    "NamespaceLimitError",
    "ReadersFullError",
    "StoreFailedError",
    "LockFileReplacedError",
    "TimeoutError",
    "ConflictError",
    # -- a remote engine (kvstore/etcd/)
    "UnavailableError",
    "OutcomeUnknownError",
    "translate",
]


class KVStoreError(Exception):
    """Root of every error kvstore raises."""


# ---------------------------------------------------------------- at the call


class InvalidKeyError(KVStoreError, ValueError):
    """A key is not bytes or str, is empty, or is longer than 511 bytes."""


class InvalidNamespaceError(KVStoreError, ValueError):
    """A namespace name is not a usable name (empty, too long, reserved)."""


class InvalidTTLError(KVStoreError, ValueError):
    """A time to live is not a number of seconds > 0 (math.inf: no expiry)."""


class TTLMismatchError(KVStoreError, ValueError):
    """namespace(name, ttl=...) names a default TTL other than the one the
    namespace holds; change it explicitly with set_default_ttl()."""


class EncodeError(KVStoreError, TypeError):
    """A value cannot be stored: msgpack cannot carry it, or it is too large."""


class CodecSelectionError(KVStoreError, ValueError):
    """KVSTORE_CODEC (or a backend name) is not one kvstore knows."""


class ReadOnlyError(KVStoreError):
    """A write was attempted on a store opened with readonly=True."""


class StoreClosedError(KVStoreError):
    """The store (or namespace handle) was used after close()."""


class InvalidArgumentError(KVStoreError, ValueError):
    """An argument kvstore cannot use: the wrong kind of object, or a value
    outside what the call accepts (a LangGraph config without a thread_id,
    an unknown prune strategy, a search filter operator it does not know)."""


class InvalidArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument of a type the call does not take (a str where a count is
    wanted, None where an iterable of keys is). Also a builtin ``TypeError``,
    which is what Python itself raises for the wrong type, and an
    `InvalidArgumentError` (so a ``ValueError``)."""


class NotSupportedError(KVStoreError, NotImplementedError):
    """A feature the call asks for that kvstore does not offer (yet), such as
    a time-to-live in the LangGraph store."""


class NestedTransactionError(KVStoreError, RuntimeError):
    """A transaction (or transact, update, incr, compare_and_set) was begun
    inside another transaction of the same thread or asyncio task. Do the
    work in the outer transaction (its `tx` reads and writes every
    namespace), or after it ends."""


class TransactionClosedError(StoreClosedError):
    """A transaction was used after it committed, failed or was discarded
    (or before its `with` block began). Start a new one."""


# ------------------------------------------------------------------- opening


class FormatError(KVStoreError):
    """The path is not a kvstore store, or was written by a newer format version."""


class StoreNotFoundError(KVStoreError, FileNotFoundError):
    """No store at the path, and the call may not create one (readonly=True)."""


class StoreAccessError(KVStoreError, PermissionError):
    """This process may not use the store's files as the open needs: a
    read-only open of a store whose lock.mdb it may not write, while other
    processes have the store open (reading without LMDB's lock is safe only
    when no writer can be active). Also a builtin ``PermissionError``."""


class StoreInUseError(KVStoreError):
    """A writable open while a process reads the store without LMDB's lock
    (a reader that may not write lock.mdb): writing then could reuse pages
    under that reader. Open it for writing once that reader has closed."""


# ------------------------------------------------------------------- reading


class CorruptionError(KVStoreError):
    """A stored value failed its checksum or could not be decoded.

    ``key`` names the key (bytes) when the error comes from a store read.
    """

    def __init__(self, message: str, key: bytes | None = None, namespace: str | None = None):
        self.key = key
        self.namespace = namespace
        where = ""
        if key is not None:
            where = f"key {key!r}"
            if namespace not in (None, "default"):
                where += f" in namespace {namespace!r}"
            where += ": "
        super().__init__(where + message)
        self.reason = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.key, self.namespace))


# ---------------------------------------------------------------- committing


class MapFullError(KVStoreError):
    """The store reached max_map_size; reopen it with a larger max_map_size."""


class DiskFullError(KVStoreError, OSError):
    """A write could not be added to the write-ahead log: the disk is full or
    the file-size limit was reached. That write was not made; nothing
    acknowledged is lost, and writes work again once there is room."""


class NamespaceLimitError(KVStoreError):
    """More namespaces than max_namespaces; reopen with a larger max_namespaces."""


class ReadersFullError(KVStoreError):
    """LMDB's reader table is full (too many processes or threads reading at once)."""


class StoreFailedError(KVStoreError):
    """A commit failed in a way that cannot be retried safely; reopen the store.

    ``cause`` holds the original error. Every write of the failed commit was
    discarded (none of it is on disk); the store refuses further writes.
    """

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause
        self.__cause__ = cause

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.cause))


class LockFileReplacedError(StoreFailedError):
    """The store's lock file (lock.mdb) was deleted or replaced while the
    store was open, so LMDB's write lock no longer keeps other processes'
    writers out: a write raises this before it writes anything, and an open
    beside processes that still use the old lock file raises it too. Close
    every process using the store, then reopen it."""


class TimeoutError(KVStoreError, builtins.TimeoutError):
    """flush(timeout=...) or a durable write did not complete in time.

    Also a builtin ``TimeoutError``. The writes are still queued: they will
    commit, or fail the store, as usual.
    """


class ConflictError(KVStoreError):
    """A transaction did not commit: something it read changed before its
    commit (another thread, process, or plain write). Nothing of it was
    written. Run it again (`transact` does, with backoff).

    ``keys``: the (namespace, key) pairs whose stored value changed (for a
    scanned range, the keys that appeared, went or changed in it);
    ``attempts``: how many times `transact` ran the function, when it gave up.
    """

    def __init__(self, message: str, keys: Iterable[tuple[str, bytes]] = (), attempts: int | None = None):
        super().__init__(message)
        self.keys = list(keys)
        self.attempts = attempts

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.keys, self.attempts))


def _errno_of(exc: lmdb.Error) -> int | None:
    """The errno an lmdb.Error reports ("mdb_txn_commit: No space left on
    device"); py-lmdb keeps only the text."""
    text = str(exc)
    for code in (errno.ENOSPC, errno.EFBIG, errno.EIO, errno.EROFS, errno.EDQUOT):
        if text.endswith(os.strerror(code)):
            return code
    return None


def _write_failure(exc: lmdb.Error, doing: str, path: str) -> KVStoreError | None:
    """What made a write of the store at `path` fail, when it is the disk
    (ENOSPC, EDQUOT), the file-size limit (EFBIG, RLIMIT_FSIZE) or a
    read-only file system; None for anything else. LMDB turns a short write
    into EIO, which is what a full disk or the file-size limit give when the
    write starts below the limit, so EIO is looked into as well."""
    code = _errno_of(exc)
    if code is None:
        return None
    after = ("; nothing of it was written, and the store takes no more writes until it is "
             "reopened")
    data = os.path.join(path, "data.mdb")
    if code in (errno.EFBIG, errno.EIO):
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        try:
            size = os.path.getsize(data)
        except OSError:
            size = None
        if limit != resource.RLIM_INFINITY and size is not None and size + 64 * 1024 >= limit:
            return StoreFailedError(
                f"{doing} failed: {data} reached this process's file-size limit ({limit} bytes, "
                f"RLIMIT_FSIZE) ({exc}){after}; raise the limit (`ulimit -f`) and reopen the store",
                exc)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
        try:
            st = os.statvfs(path)
            free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
        except OSError:
            free = None
        if code != errno.EIO or (free is not None and free < 1024 * 1024):
            what = "the disk quota is used up" if code == errno.EDQUOT else "the disk is full"
            return StoreFailedError(
                f"{doing} failed: {what} ({exc}){after}; free space on the file system holding "
                f"{path} ({free if free is not None else 'unknown'} bytes free), then reopen "
                f"the store", exc)
    if code == errno.EROFS:
        return ReadOnlyError(f"{doing}: {path} is on a read-only file system ({exc}); open the store "
                             f"with readonly=True, or remount the file system read-write")
    return None


def translate(exc: lmdb.Error, doing: str, path: str | None = None) -> KVStoreError:
    """Map an `lmdb.Error` raised while `doing` something onto a kvstore error.

    With `path` (the store's directory), a failed write is looked into: a
    full disk, the file-size limit or a read-only file system is named,
    with what to do about it."""
    if path is not None:
        named = _write_failure(exc, doing, path)
        if named is not None:
            return named
    if isinstance(exc, lmdb.MapFullError):
        return MapFullError(f"{doing}: the store is full; reopen it with a larger max_map_size ({exc})")
    if isinstance(exc, lmdb.DbsFullError):
        return NamespaceLimitError(
            f"{doing}: too many namespaces; reopen the store with a larger max_namespaces ({exc})"
        )
    if isinstance(exc, lmdb.ReadersFullError):
        return ReadersFullError(
            f"{doing}: LMDB's reader table is full; close idle stores or processes, "
            f"or reopen with a larger max_readers ({exc})"
        )
    if isinstance(exc, (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.PanicError)):
        return CorruptionError(
            f"{doing}: the LMDB file is damaged ({exc}); restore from a backup or run "
            f"`kvstore check` to see what is readable"
        )
    if isinstance(exc, (lmdb.InvalidError, lmdb.VersionMismatchError, lmdb.IncompatibleError)):
        return FormatError(f"{doing}: not a kvstore store, or made by an incompatible LMDB ({exc})")
    if isinstance(exc, lmdb.ReadonlyError):
        return ReadOnlyError(f"{doing}: the store's files are read-only ({exc})")
    return StoreFailedError(f"{doing} failed: {exc}; reopen the store", exc)


# ---------------------------------------------------------------- a remote engine (kvstore/etcd/)


class UnavailableError(KVStoreError, ConnectionError):
    """The cluster could not be reached, had no leader, or did not answer in
    time, after the bounded retries of calls that are safe to repeat (reads,
    and writes that certainly never reached it). Nothing of the failed call
    was written. Check that a majority of the cluster's members are up and
    reachable, then call again."""


class OutcomeUnknownError(KVStoreError):
    """A write reached the cluster but no answer came back (a timeout, or the
    leader was lost while it was in flight): it may or may not have been
    applied, and it is never retried behind your back (that could apply it
    twice). Read the keys to see whether it was, then write again if needed.

    ``keys``: the (namespace, key) pairs the write touched."""

    def __init__(self, message: str, keys: Iterable[tuple[str, bytes]] = ()):
        super().__init__(message)
        self.keys = list(keys)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.keys))


class Refused(Exception):
    """Internal, never seen by users: raised by a step given to the writer
    (`Writer.run`) before it writes anything, so that its own call fails
    with `error` while the other groups of the same transaction commit."""

    def __init__(self, error: KVStoreError):
        super().__init__(error)
        self.error = error
