"""Transactions on etcd: reads at one revision, writes validated by compares.

A transaction's first read fixes a revision R (the cluster's, linearizable);
every later read is at R, so it sees one consistent state. It remembers the
mod_revision of every key it read (0: missing). Its commit is one etcd Txn:

    compare:  mod_revision(key) == what it read          for every key read
              mod_revision < R + 1 over [start, end)      for every range scanned
    success:  its puts and deletes (TTL puts on leases granted just before)
    failure:  keys-only reads of the keys it read        to say which changed

so it commits only if nothing it read has changed since R (a key that
appeared in a scanned range has a newer mod_revision; one that went is a
read key whose mod_revision is now 0). etcd applies it atomically, through
Raft: always durable (durable= is accepted and has no other effect).
Compares and writes each count against max_txn_ops (checked before
sending). A commit whose answer is lost raises OutcomeUnknownError, never a
retry. `transact` runs a function again on ConflictError, with the backoff
of kvstore/retry.py.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar

from ..errors import (ConflictError, InvalidArgumentError, NestedTransactionError, OutcomeUnknownError,
                      TransactionClosedError)
from ..layout import check_key
from ..reads import scan_bounds
from ..retry import RETRIES, backoff, gave_up
from ..txn import MISSING, conflict_error
from ..validate import check_count
from .client import Compacted, rpc
from .grouping import Op, grant
from .records import decode
from .remote import make_op, ttl_seconds

if TYPE_CHECKING:
    from .store import EtcdStore

__all__ = ["EtcdTransaction", "transact", "STATS"]

_R = TypeVar("_R")
STATS = {"calls": 0, "conflicts": 0}  # this process's transact calls and their conflicted runs
# The transaction a thread or asyncio task has open, for NestedTransactionError.
_current: ContextVar[EtcdTransaction | None] = ContextVar("kvstore_etcd_transaction", default=None)


class EtcdTransaction:
    def __init__(self, store: EtcdStore, durable: bool | None):
        self._store = store
        self._remote = store._live()
        self._revision = 0
        self._reads: dict[tuple[str, bytes], tuple[bytes, int, Any]] = {}  # (ns, key) -> (full, mod, record)
        self._ranges: list[tuple[bytes, bytes]] = []
        self._writes: dict[bytes, Op] = {}
        self._state = "open"

    @property
    def state(self) -> str:
        return self._state

    def __enter__(self) -> EtcdTransaction:
        return self._begin(nesting=True)

    def _begin(self, nesting: bool) -> EtcdTransaction:
        """Start: _claim() it (nesting=True; kvstore.aio claims it in the
        task, then calls this in a worker thread with False); then this
        store's buffered writes are sent, so that its reads see them."""
        if nesting:
            self._claim()
        self._store._settle(self._remote)
        return self

    def _claim(self) -> None:
        """NestedTransactionError inside another open transaction of this
        thread, or of this asyncio task (a context variable: the executor
        calls of kvstore.aio run in a copy of their task's context)."""
        outer = _current.get()
        if outer is not None and outer._state == "open":
            raise NestedTransactionError(
                "a transaction was begun inside another one of the same thread or task: do this work "
                "with the outer transaction's tx (it reads and writes every namespace), or after it ends")
        _current.set(self)

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self._state != "open":
            return
        if exc_type is not None:
            self.discard()
        else:
            self.commit()

    def _check_open(self) -> None:
        if self._state != "open":
            raise TransactionClosedError(f"this transaction is {self._state}; start a new one")

    def _ns(self, namespace: str | None) -> str:
        self._check_open()
        if namespace is None:
            return self._store._ns
        self._remote.keys.base(namespace)  # checks the name
        return namespace

    def _range(self, request: Any) -> Any:
        request.revision = self._revision
        try:
            resp = self._remote.range(request, "reading in a transaction")
        except Compacted:
            raise ConflictError("the transaction's snapshot was compacted away by etcd before it ended; "
                                "run it again (transact does)") from None
        if not self._revision:
            self._revision = int(resp.header.revision)
        return resp

    # ------------------------------------------------------------ reads

    def _stored(self, ns: str, key: bytes) -> Any:
        """The record of key as the transaction sees it (None: missing)."""
        full = self._remote.keys.key(ns, key)
        if full in self._writes:
            return self._writes[full][3]
        seen = self._reads.get((ns, key))
        if seen is None:
            resp = self._range(rpc.RangeRequest(key=full))
            kv = resp.kvs[0] if resp.kvs else None
            seen = self._reads[(ns, key)] = (full, int(kv.mod_revision) if kv else 0, kv.value if kv else None)
        return seen[2]

    def get(self, key: Any, default: Any = None, *, namespace: str | None = None) -> Any:
        ns = self._ns(namespace)
        raw = check_key(key)
        record = self._stored(ns, raw)
        return default if record is None else self._decode(raw, record, ns)

    def _decode(self, key: bytes, record: bytes, ns: str) -> Any:
        return decode(self._remote.codec, key, record, ns)

    def __contains__(self, key: Any) -> bool:
        return self.get(key, MISSING) is not MISSING

    def get_many(self, keys: Iterable[Any], *, namespace: str | None = None) -> list[Any]:
        return [self.get(k, None, namespace=namespace) for k in list(keys)]

    def scan(self, prefix: Any = None, *, start: Any = None, stop: Any = None, reverse: bool = False,
             keys_only: bool = False, namespace: str | None = None) -> Iterator[Any]:
        """The range as read at the transaction's revision, with its own
        writes; validated at the commit (a key that appears, goes or changes
        in it is a conflict): keep it narrow (each key read is a compare)."""
        ns = self._ns(namespace)
        keys = self._remote.keys
        lo, hi = scan_bounds(prefix, start, stop)
        first, end = keys.range(ns, lo, hi)
        base = len(keys.base(ns))
        view: dict[bytes, Any] = {}
        cursor = first
        while cursor < end:
            resp = self._range(rpc.RangeRequest(key=cursor, range_end=end, limit=1000))
            for kv in resp.kvs:
                raw = kv.key[base:]
                self._reads.setdefault((ns, raw), (kv.key, int(kv.mod_revision), kv.value))
                view[raw] = kv.value
            if not resp.more or not resp.kvs:
                break
            cursor = resp.kvs[-1].key + b"\x00"
        if first < end:
            self._ranges.append((first, end))
        for full, op in self._writes.items():
            if op[0] == ns and first <= full < end:
                view[op[1]] = op[3]
        found = sorted((k for k, r in view.items() if r is not None), reverse=bool(reverse))
        if keys_only:
            return iter(found)
        return iter([(k, self._decode(k, view[k], ns)) for k in found])

    # ------------------------------------------------------------ writes

    def put(self, key: Any, value: Any, *, ttl: float | None = None, namespace: str | None = None) -> None:
        ns = self._ns(namespace)
        op = make_op(self._remote, ns, key, value, ttl_seconds(self._remote, ns, ttl))
        self._writes.pop(op[2], None)
        self._writes[op[2]] = op

    def delete(self, key: Any, *, namespace: str | None = None) -> None:
        ns = self._ns(namespace)
        raw = check_key(key)
        full = self._remote.keys.key(ns, raw)
        self._writes.pop(full, None)
        self._writes[full] = (ns, raw, full, None, 0)

    def put_many(self, items: Any, *, ttl: float | None = None, namespace: str | None = None) -> None:
        self._check_open()
        for key, value in (items.items() if hasattr(items, "items") else items):
            self.put(key, value, ttl=ttl, namespace=namespace)

    # ------------------------------------------------------------ the end

    def discard(self) -> None:
        if self._state == "open":
            self._state = "discarded"

    def commit(self) -> None:
        """Commit if nothing it read changed; ConflictError (nothing written) otherwise."""
        self._check_open()
        self._state = "committing"
        writes = list(self._writes.values())
        if not writes:  # its reads were one consistent snapshot: nothing to validate
            self._state = "committed"
            return
        remote = self._store._writable()
        limit = remote.options.max_txn_ops
        compare = [rpc.Compare(key=full, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=mod)
                   for full, mod, _ in self._reads.values()]
        compare += [rpc.Compare(key=first, range_end=end, target=rpc.Compare.MOD, result=rpc.Compare.LESS,
                                mod_revision=self._revision + 1) for first, end in self._ranges]
        if len(compare) > limit or len(writes) > limit:
            self._state = "failed"
            raise InvalidArgumentError(
                f"the transaction read {len(compare)} keys/ranges and writes {len(writes)} keys: more than "
                f"one etcd transaction may hold (max_txn_ops={limit}, the cluster's --max-txn-ops; reads "
                f"and writes count separately); nothing was sent. Read and write less in one transaction, "
                f"or raise --max-txn-ops and open the store with the same max_txn_ops=")
        from .grouping import check_limits
        check_limits(writes, limit, remote.options.max_request_bytes, "the transaction")
        remote.register_all({op[0] for op in writes})
        leases: dict[int, int] = {}
        success = []
        for ns, raw, full, record, ttl in writes:
            if record is None:
                success.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=full)))
                continue
            if ttl and ttl not in leases:
                leases[ttl] = grant(remote.client, ttl)
            success.append(rpc.RequestOp(request_put=rpc.PutRequest(key=full, value=record,
                                                                    lease=leases.get(ttl, 0))))
        reads = list(self._reads.items())
        failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=full, keys_only=True))
                   for _, (full, _, _) in reads[:limit]]
        try:
            resp = remote.client.call("KV", "Txn", rpc.TxnRequest(compare=compare, success=success,
                                                                  failure=failure),
                                      write=True, doing="committing a transaction",
                                      keys=[(op[0], op[1]) for op in writes])
        except OutcomeUnknownError:
            self._state = "failed"
            if remote.cache is not None:
                remote.cache.invalidate([op[2] for op in writes])
            raise
        except BaseException:
            self._state = "failed"
            raise
        if remote.cache is not None and resp.succeeded:
            remote.cache.invalidate([op[2] for op in writes], int(resp.header.revision))
        if resp.succeeded:
            self._state = "committed"
            return
        self._state = "conflicted"
        changed = []
        for (k, (full, mod, _)), r in zip(reads, resp.responses):
            kvs = r.response_range.kvs
            if (int(kvs[0].mod_revision) if kvs else 0) != mod:
                changed.append(k)
        if not changed:  # a key appeared in a scanned range
            changed = [remote.keys.split(first) for first, _ in self._ranges]
        raise conflict_error(changed)


def transact(store: EtcdStore, fn: Callable[[EtcdTransaction], _R], retries: int = RETRIES,
             durable: bool | None = None) -> _R:
    """Run fn(tx) and commit; on ConflictError run it again after a random
    backoff, at most `retries` more times (as kvstore.Store.transact)."""
    retries = check_count(retries, "retries", "transact", 0)
    STATS["calls"] += 1
    last: ConflictError | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff(attempt - 1))
        tx = EtcdTransaction(store, durable).__enter__()
        try:
            result = fn(tx)
        except ConflictError as exc:
            tx.discard()
            STATS["conflicts"] += 1
            last = exc
            continue
        except BaseException:
            tx.discard()
            raise
        if tx.state != "open":
            raise TransactionClosedError("transact: fn ended its transaction itself (commit() or "
                                         "discard()); let transact commit it")
        try:
            tx.commit()
            return result
        except ConflictError as exc:
            STATS["conflicts"] += 1
            last = exc
    assert last is not None
    raise gave_up(last, retries)

