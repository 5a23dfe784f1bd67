"""Transactions: read-modify-write that never loses an update.

    with db.transaction() as tx:
        meta = tx.get("meta:42", {})
        meta["turns"] = meta.get("turns", 0) + 1
        tx.put("meta:42", meta)
        tx.put("msg:42:7", msg, namespace="messages")

Optimistic: no lock is held while the caller's code runs.

1. Reads go through the usual places, newest first: the pending writes (the
   overlay: this process's, and with a write-ahead log every process's
   acknowledged writes LMDB does not hold yet), then LMDB. For every key
   read the transaction remembers the **stored bytes** it saw (None: absent,
   or expired at the transaction's start); for every scan, its range
   (namespace, lo, hi) and the (key, stored bytes) it saw there. A key read
   again returns what was read the first time; a key the transaction wrote
   reads as written (read-your-writes). Before a read reaches for more of
   the latest state, what was read so far is checked to still hold
   (`_consistent`: cheap while LMDB's txnid and the pending writes of the
   keys read have not moved); if not, that read raises ConflictError: the
   reads are always of one state, though no LMDB snapshot is held.
2. Writes are encoded at the call (a bad value raises there) and buffered.
3. The commit is one `ConditionalGroup` whose condition, `Validate`
   (txnvalidate.py), runs inside the write path: in the LMDB write
   transaction (with a log: after the whole log is applied in that same
   transaction), it compares every read key's stored bytes and every
   scanned range with what the transaction saw. All equal: the writes are applied, in the same LMDB
   transaction. Anything different: nothing is written, and the caller gets
   `ConflictError` naming the keys.

Equal stored bytes mean the transaction's reads are exactly the state at its
commit point, so it can be ordered there: the history of transactions and
plain writes is serializable. (The same bytes written back in between count
as unchanged: that is value-based validation, and it is still serializable.)
A record that expired at the transaction's start counts as absent on both
sides of the comparison.

`Validate.validate(get, scan)` is the check alone, against any view of the
latest state: `apply` calls it with the LMDB transaction's, a transaction
that wrote nothing is checked with a fresh read of the latest state
(`_current`), and a write-ahead log can call it at append time.

Shortcuts: a transaction that read nothing commits as a plain batch
(`durable` as given); one that wrote nothing is checked with a read, no
commit; one already stale when it commits conflicts before it is submitted.
A failed check in the write path writes nothing but is still a commit of
the writer (LMDB's transaction may hold other groups).

Cost: a transaction that read something waits for the write path to
decide it (durable=True or not): without a log, one synced LMDB commit
shared with concurrent writers; with one, its append, checked under the
append lock (Appender._append_validated), synced if durable.

Nesting is refused (per thread, and per asyncio task: a context
variable), and a transaction used after it ended raises. Running a
function in transactions until one commits (`transact`, `update`) is
retry.py's; `incr` and `compare_and_set` are computed in the write path
(rmw.py).
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from . import ttl as _ttl
from .errors import NestedTransactionError, TransactionClosedError
from .group import ConditionalGroup
from .layout import check_key, check_namespace_name
from .environment import range_items
from .reads import scan_bounds
from .txnvalidate import NsKey, Op, Seen, Stored, Validate, _alive, _copy, conflict_error
from .validate import check_keys_iterable

if TYPE_CHECKING:
    from types import TracebackType

    from ._types import Items, Key, Value
    from .group import Group
    from .store import Namespace, Store

__all__ = ["Transaction", "Validate", "MISSING", "conflict_error"]


class _Missing:
    """`kvstore.MISSING`: "no value", for compare_and_set."""

    _instance: "_Missing | None" = None

    def __new__(cls) -> "_Missing":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "kvstore.MISSING"

    def __reduce__(self) -> tuple[type[_Missing], tuple[()]]:
        return (_Missing, ())


MISSING = _Missing()

# the transaction open in this thread or asyncio task, if any
_current_tx: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar("kvstore_transaction",
                                                                              default=None)


# ---------------------------------------------------------------- the transaction


class Transaction:
    """Reads and writes that commit together if nothing read changed; see
    the module docstring. Made by `Store.transaction()`; use it in a `with`
    block (or `async with` from `AsyncStore.atransaction()`).

    Every method takes `namespace=`: the name of another namespace of the
    store (created if missing), for the transaction to read or write there;
    the default is the namespace of the handle it was made from.
    """

    def __init__(self, store: Store[Any] | Namespace[Any], durable: bool | None):
        engine = store._live_engine()
        store._writer(engine)  # ReadOnlyError: a transaction writes
        self._store = store
        self._engine = engine
        self._durable: bool = store._root._durable if durable is None else bool(durable)
        # namespace -> handle (decoding, its dbi)
        self._handles: dict[str, Store[Any] | Namespace[Any]] = {store._ns: store}
        self._dbis: dict[str, Any] = {}
        self._reads: dict[NsKey, Stored] = {}  # stored bytes or None, as first read
        self._scans: list[Seen] = []  # (ns, lo, hi, [(key, stored)])
        self._writes: dict[NsKey, Op] = {}
        self._nbytes = 0
        self._before: Any = None  # ttl.Enable of the namespaces its TTL values go to
        self._now = 0
        self._txnid: int | None = None  # LMDB's last txnid when the reads so far were known current
        self._state = "new"
        self._token: contextvars.Token[Transaction | None] | None = None

    # ------------------------------------------------------------ life

    def _begin(self) -> "Transaction":
        if self._state != "new":
            raise TransactionClosedError(f"this transaction is {self._state}; start a new one "
                                         f"with db.transaction()")
        outer = _current_tx.get()
        if outer is not None and outer._state == "open":
            raise NestedTransactionError(
                "a transaction was begun inside another one of the same thread or task: do this "
                "work with the outer transaction's tx (it reads and writes every namespace), or "
                "after it ends")
        self._token = _current_tx.set(self)
        self._now = self._store._now()
        self._state = "open"
        return self

    def _end(self, state: str) -> None:
        if self._state != "open":
            return
        self._state = state
        try:
            if self._token is not None:
                _current_tx.reset(self._token)
        except ValueError:  # ended from another context (an executor thread): nothing to reset there
            _current_tx.set(None)

    def __enter__(self) -> "Transaction":
        return self._begin()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self._end("discarded")
            return
        self.commit()

    @property
    def state(self) -> str:
        """new, open, committed, conflicted, failed or discarded."""
        return self._state

    def _check_open(self) -> None:
        if self._state != "open":
            what = "has not begun: use it in a with block" if self._state == "new" else f"is {self._state}"
            raise TransactionClosedError(f"this transaction {what}; start a new one with "
                                         f"`with db.transaction() as tx:`")

    def _handle(self, namespace: str | None) -> Store[Any] | Namespace[Any]:
        """The handle of the namespace a call names (None: the transaction's own)."""
        self._check_open()
        if namespace is None:
            return self._store
        handle = self._handles.get(namespace)
        if handle is None:
            from .store import Namespace  # store.py imports this module

            check_namespace_name(namespace)
            handle = self._handles[namespace] = Namespace(self._store._root, namespace)
        return handle

    def _dbi(self, ns: str) -> Any:
        dbi = self._dbis.get(ns)
        if dbi is None:
            dbi = self._dbis[ns] = self._store._dbi(self._engine, ns)
        return dbi

    # ------------------------------------------------------------ reads

    def _pending(self, ns: str, key: bytes) -> tuple[Stored] | None:
        """(stored or None,) pending in the overlay, else None."""
        engine = self._engine
        if engine.tail is not None:
            engine.tail.refresh()
        pending = None if engine.overlay is None else engine.overlay.get(ns)
        if pending:
            entry = pending.get(key)
            if entry is not None:
                return (entry[1],)
        return None

    def _consistent(self) -> None:
        """Before reading more of the latest state: ConflictError now (the
        transaction ends) if what it read so far has changed, so that its
        reads are always of one state, even in a transaction that will not
        commit. Cheap while nothing moved: LMDB's last txnid (one memory
        read with the read cache on) and the pending writes of the keys
        read."""
        txnid = self._engine.current_txnid()
        if not self._reads and not self._scans:
            self._txnid = txnid
            return
        if txnid == self._txnid and not self._pending_moved():
            return
        conflicts = self._current().conflicts
        if conflicts:
            self._end("conflicted")
            raise conflict_error(conflicts)
        self._txnid = txnid

    def _pending_moved(self) -> bool:
        """Whether a pending write (the overlay) now stands for a key read,
        or in a range scanned, with other bytes than the transaction saw."""
        engine = self._engine
        if engine.tail is not None:
            engine.tail.refresh()
        overlay = engine.overlay
        if overlay is None:
            return False
        now = self._now
        for (ns, key), seen in self._reads.items():
            pending = overlay.get(ns)
            entry = pending.get(key) if pending else None
            if entry is not None and _alive(entry[1], now) != seen:
                return True
        for ns, lo, hi, found in self._scans:
            if overlay.get(ns):
                saw = dict(found)
                if any(_alive(r, now) != saw.get(k) for k, r in engine.snapshot(ns, lo, hi)):
                    return True
        return False

    def _stored(self, ns: str, key: bytes) -> Stored:
        """The key's stored bytes as the transaction sees them (None: none),
        remembered on first read."""
        k = (ns, key)
        written = self._writes.get(k)
        if written is not None:
            return written[3]
        if k in self._reads:
            return self._reads[k]
        self._consistent()
        hit = self._pending(ns, key)
        record: Any
        if hit is not None:
            record = hit[0]
        else:
            dbi = self._dbi(ns)
            record = self._engine.read(lambda txn: _copy(txn.get(key, db=dbi)))
        alive = self._reads[k] = _alive(record, self._now)
        return alive

    def get(self, key: Key, default: Any = None, *, namespace: str | None = None) -> Any:
        """The value of key as this transaction sees it (its own write, else
        what it read first), or default."""
        handle = self._handle(namespace)
        raw = check_key(key)
        record = self._stored(handle._ns, raw)
        return default if record is None else handle._decode(raw, record)

    def __contains__(self, key: Key) -> bool:
        return self.get(key, MISSING) is not MISSING

    def get_many(self, keys: Iterable[Key], *, namespace: str | None = None) -> list[Any]:
        """Values of keys (None where missing), in order; the keys not read
        before are read from one LMDB snapshot."""
        handle = self._handle(namespace)
        ns = handle._ns
        raws = [check_key(k) for k in check_keys_iterable(keys, "get_many")]
        self._consistent()
        todo: list[bytes] = []
        for key in raws:
            k = (ns, key)
            if k in self._writes or k in self._reads:
                continue
            hit = self._pending(ns, key)
            if hit is not None:
                self._reads[k] = _alive(hit[0], self._now)
            else:
                todo.append(key)
        if todo:
            dbi = self._dbi(ns)
            found = self._engine.read(lambda txn: [_copy(txn.get(key, db=dbi)) for key in todo])
            for key, record in zip(todo, found):
                self._reads[(ns, key)] = _alive(record, self._now)
        out: list[Any] = []
        for key in raws:
            record = self._stored(ns, key)
            out.append(None if record is None else handle._decode(key, record))
        return out

    def _range(self, ns: str, lo: bytes | None, hi: bytes | None) -> list[tuple[bytes, bytes]]:
        """[(key, stored)] live in [lo, hi) of the latest state: pending
        writes over LMDB (the pending ones are looked at first: one that
        commits meanwhile is then in LMDB)."""
        engine = self._engine
        pending = engine.snapshot(ns, lo, hi)
        dbi = self._dbi(ns)
        stored = engine.read(lambda txn: range_items(txn, dbi, lo, hi))
        merged: dict[bytes, bytes | None] = dict(stored)
        merged.update(pending)
        now = self._now
        out: list[tuple[bytes, bytes]] = []
        for k in sorted(merged):
            r = _alive(merged[k], now)
            if r is not None:
                out.append((k, r))
        return out

    def scan(self, prefix: Key | None = None, *, start: Key | None = None, stop: Key | None = None,
             reverse: bool = False, keys_only: bool = False, namespace: str | None = None) -> Iterator[Any]:
        """(key, value) pairs (keys alone with keys_only) in key order, as
        this transaction sees them: the range as read, with the
        transaction's own writes. The whole range is read at the call and
        validated at the commit (a key that appears in it, goes or changes is
        a conflict): keep it narrow."""
        handle = self._handle(namespace)
        ns = handle._ns
        lo, hi = scan_bounds(prefix, start, stop)
        self._consistent()
        seen = self._range(ns, lo, hi)
        self._scans.append((ns, lo, hi, seen))
        view: dict[bytes, Stored] = dict(seen)
        for (wns, key), op in self._writes.items():
            if wns == ns and (lo is None or key >= lo) and (hi is None or key < hi):
                view[key] = op[3]
        live = sorted(((k, r) for k, r in view.items() if r is not None), reverse=bool(reverse))
        if keys_only:
            return iter([k for k, _ in live])
        return iter([(k, handle._decode(k, r)) for k, r in live])

    # ------------------------------------------------------------ writes

    def put(self, key: Key, value: Value, *, ttl: float | None = None, namespace: str | None = None) -> None:
        """Buffer a put; `ttl` as for Store.put. Encoded now: a bad value raises here."""
        handle = self._handle(namespace)
        ns = handle._ns
        raw = check_key(key)
        engine = self._engine
        record = handle._root._codec.encode(value, dictionary=engine.dicts.for_encoding(ns),
                                            key=raw if engine.keyed else None)
        if ttl is not None or ns in engine.ttl.defaults:
            record, step = _ttl.stamp(engine, ns, record, ttl)
            if step is not None:
                self._before = step | self._before
        self._write(ns, raw, record)

    def delete(self, key: Key, *, namespace: str | None = None) -> None:
        """Buffer a delete (no error if key is missing)."""
        handle = self._handle(namespace)
        self._write(handle._ns, check_key(key), None)

    def put_many(self, items: Items, *, ttl: float | None = None, namespace: str | None = None) -> None:
        """Buffer a put of every (key, value) pair (a mapping, or an iterable of pairs)."""
        self._check_open()
        pairs: Iterable[tuple[Key, Value]] = items.items() if hasattr(items, "items") else items
        for key, value in pairs:
            self.put(key, value, ttl=ttl, namespace=namespace)

    def _write(self, ns: str, key: bytes, record: Stored) -> None:
        k = (ns, key)
        old = self._writes.pop(k, None)  # re-inserted last: the ops keep the order of last writes
        if old is not None and old[3] is not None:
            self._nbytes -= len(old[3])
        self._writes[k] = (ns, self._dbi(ns), key, record)
        if record is not None:
            self._nbytes += len(record)

    # ------------------------------------------------------------ commit

    def _group(self, callback: Callable[[Group], None] | None = None) -> ConditionalGroup:
        """What commit() submits: a ConditionalGroup, or None when there is
        nothing to decide in the write path (read-only, or nothing read:
        those are done by `_submit_blind` / `_check_reads`)."""
        ops = list(self._writes.values())
        dbis = {ns: self._dbi(ns) for ns, _key in self._reads}
        dbis.update((ns, self._dbi(ns)) for ns, _lo, _hi, _seen in self._scans)
        condition = Validate(self._reads, self._scans, dbis, self._now, self._durable)
        group = ConditionalGroup(ops, True, self._nbytes, condition, callback)
        group.before = self._before
        return group

    def _mode(self) -> str:
        """blind (nothing read: a plain batch), read-only (checked by a
        read), or checked (in the write path)."""
        if not self._reads and not self._scans:
            return "blind"
        return "checked" if self._writes else "read-only"

    def _submit_blind(self, callback: Callable[[Group], None] | None = None) -> bool:
        ops = list(self._writes.values())
        if not ops:
            return False
        store = self._store
        wait: bool = store._submit(self._engine, ops, self._nbytes, self._durable, callback, self._before)
        return wait

    def _current(self) -> Validate:
        """The transaction's reads checked against the latest state (a read, no commit)."""
        condition = Validate(self._reads, self._scans, {}, self._now, self._durable)

        def get(ns: str, key: bytes) -> Any:
            hit = self._pending(ns, key)
            if hit is not None:
                return hit[0]
            dbi = self._dbi(ns)
            return self._engine.read(lambda txn: _copy(txn.get(key, db=dbi)))

        condition.conflicts = condition.validate(get, lambda ns, lo, hi: self._range(ns, lo, hi))
        return condition

    def _settle(self, condition: Validate | None) -> None:
        """After the group is done: end the transaction; ConflictError if it
        did not commit."""
        if condition is None or not condition.conflicts:
            self._end("committed")
            return
        self._end("conflicted")
        raise conflict_error(condition.conflicts)

    def _submit(self, callback: Callable[[Group], None] | None = None) -> tuple[Validate | None, bool]:
        """Start the commit: (the condition to settle with, or None; whether
        to wait for callback, as Writer.submit says). Without a callback a
        checked transaction returns decided (its group is durable: waited)."""
        self._check_open()
        try:
            mode = self._mode()
            if mode == "blind":
                return None, self._submit_blind(callback)
            if mode == "read-only":
                return self._current(), False
            # already stale (the state moved since the reads): conflict
            # now, without a commit; the write path checks again anyway
            self._consistent()
            group = self._group(callback)
            wait: bool = self._store._writer(self._engine).submit(group)
            return group.condition, wait
        except BaseException:
            self._end("failed")
            raise

    def commit(self) -> None:
        """Commit (what leaving the `with` block normally does).

        :raises ConflictError: something read changed since; nothing was written
        :raises StoreFailedError, MapFullError, ...: as for a write of the store
        """
        condition, _wait = self._submit()
        self._settle(condition)

    def discard(self) -> None:
        """End the transaction without writing anything."""
        self._end("discarded")

    def __repr__(self) -> str:
        return (f"<kvstore.Transaction {self._state} on {self._store!r}: {len(self._reads)} keys "
                f"and {len(self._scans)} ranges read, {len(self._writes)} writes>")


