"""incr and compare_and_set, decided in the write path: no retries.

`Store.update(key, fn)` runs the caller's fn in an optimistic transaction
(txn.py) and runs it again on conflict. incr and compare_and_set need no
caller code, so they need no optimism either: their group carries a
`Compute` condition, and the write path computes the new record from the
key's latest state at the moment it writes, where nothing can change it:

- with a write-ahead log, under the log's append lock once caught up on
  every process's appends (`Appender._validator` calls `validate(get,
  scan)`, which computes; the record is encoded after it), so the state it
  reads is every acknowledged write;
- without one, inside the LMDB write transaction (`apply(txn, ops)`).

`kvstore.aio`'s aincr and acompare_and_set submit the same group with a
completion callback (start_incr, start_compare_and_set, outcome).

So a hot counter costs one append per call, however many threads and
processes add to it, and never conflicts. The group's single op is a
placeholder until then; an incr on a value that is not an int, or a
compare that fails, writes nothing (the op list is emptied, the log gets
no record) and the call raises or returns False.

What the transaction path does too: a value that expired counts as absent,
and the written value has no TTL (as `tx.put(key, new)`). A namespace with
a default TTL, or a call made inside an open transaction, takes the
transaction path (txn.incr_step / cas_step), which handles both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Tuple, Union

from . import retry as _retry
from . import txn as _txn
from .errors import InvalidArgumentTypeError
from .group import ConditionalGroup, Group, Op
from .layout import check_key
from .txnvalidate import _alive

if TYPE_CHECKING:
    from ._types import Key
    from .store import Namespace, Store

    Handle = Union[Store[Any], Namespace[Any]]

__all__ = ["incr", "compare_and_set", "start_incr", "start_compare_and_set", "outcome", "Compute"]

_KEEP: Any = object()  # compute's answer: write nothing
# fn: stored bytes or None -> (the new record, None to delete, or _KEEP; the call's answer)
ComputeFn = Callable[[Union[bytes, None]], Tuple[Any, Any]]
Callback = Callable[[Group], None]
_PLACEHOLDER_BYTES = 64  # the batch limits' estimate of the record not computed yet


class Compute:
    """The condition of a one-key group whose record the write path computes.

    fn(stored bytes or None (absent or expired at `now`)) -> (record, or
    None to delete, or _KEEP to write nothing; the caller's result). An
    exception from fn is kept in `error` and nothing is written. After the
    write path ran it: `ops` holds what was written, `result` fn's answer.
    `conflicts` is always [] (Writer and Appender read it as for txn.Validate)."""

    __slots__ = ("ops", "target", "dbis", "fn", "now", "durable", "conflicts", "result", "error")

    def __init__(self, ops: list[Op], dbis: dict[str, Any], fn: ComputeFn, now: int, durable: bool):
        self.ops = ops
        self.target = ops[0][:3]  # (namespace, dbi, key): ops may be emptied, and computed again
        self.dbis = dbis
        self.fn = fn
        self.now = now
        self.durable = durable
        self.conflicts: list[tuple[str, bytes]] = []
        self.result: Any = None
        self.error: BaseException | None = None

    def enter(self, overlay: Any, seq: int, ops: list[Op]) -> None:
        """Nothing to show before the write path decides."""

    def validate(self, get: Callable[[str, bytes], Any], scan: Any) -> list[tuple[str, bytes]]:
        ns, dbi, key = self.target
        self.error = None  # computed again (an LMDB transaction replayed after the map grew)
        try:
            record, self.result = self.fn(_alive(get(ns, key), self.now))
        except Exception as exc:  # the caller's to raise: the write path must go on
            self.error = exc
            record = _KEEP
        if record is _KEEP:
            self.ops[:] = []
        else:
            self.ops[:] = [(ns, dbi, key, record)]
        return []

    def apply(self, txn: Any, ops: list[Op]) -> None:
        self.validate(lambda _ns, key: txn.get(key, db=self.dbis[_ns]), None)
        for _ns, dbi, key, record in ops:
            if record is None:
                txn.delete(key, db=dbi)
            else:
                txn.put(key, record, db=dbi)


def _submit(store: Handle, key: bytes, fn: ComputeFn, durable: bool | None,
            callback: Callback | None) -> tuple[Compute, bool]:
    """Submit one computed write of key in store's namespace: (its
    condition, whether to wait for callback: Writer.submit's answer).
    Without a callback, submit returns once the write path decided."""
    engine = store._live_engine()
    writer = store._writer(engine)
    ns = store._ns
    dbi = store._dbi(engine, ns)
    if durable is None:
        durable = store._root._durable
    ops: list[Op] = [(ns, dbi, key, None)]
    condition = Compute(ops, {ns: dbi}, fn, store._now(), bool(durable))
    _retry.gate(store).started()  # counted with transact's calls (Store.stats()["transactions"])
    wait: bool = writer.submit(ConditionalGroup(ops, True, _PLACEHOLDER_BYTES, condition, callback))
    return condition, wait


def outcome(condition: Compute) -> Any:
    """The call's answer once its group is done: fn's result, or its error."""
    if condition.error is not None:
        raise condition.error
    return condition.result


def _in_path(store: Handle) -> bool:
    """Whether this call can be computed in the write path (module docstring)."""
    tx = _txn._current_tx.get()
    if tx is not None and tx._state == "open":
        return False  # the transaction path raises NestedTransactionError
    engine = store._live_engine()
    return store._ns not in engine.ttl.defaults


def start_incr(store: Handle, key: Key, delta: int, default: int, durable: bool | None,
               callback: Callback | None = None) -> tuple[Compute, bool] | None:
    """incr's group submitted: (condition, wait) as _submit says; None when
    the call must take the transaction path (txn.incr_step)."""
    if not _in_path(store):
        return None
    _check_int(delta, "delta")
    _check_int(default, "default")
    raw = check_key(key)
    engine = store._live_engine()
    encode = store._root._codec.encode
    decode = store._decode

    def add(stored: bytes | None) -> tuple[Any, Any]:
        old = default if stored is None else decode(raw, stored)
        if isinstance(old, bool) or not isinstance(old, int):
            raise InvalidArgumentTypeError(
                f"incr: key {raw!r} holds a {type(old).__name__} ({old!r:.60}), not an int; use "
                f"update() for other values, or put an int there first")
        new = old + delta
        return encode(new, dictionary=engine.dicts.for_encoding(store._ns),
                      key=raw if engine.keyed else None), new

    return _submit(store, raw, add, durable, callback)


def start_compare_and_set(store: Handle, key: Key, expected: Any, new: Any, durable: bool | None,
                          callback: Callback | None = None) -> tuple[Compute, bool] | None:
    """compare_and_set's group submitted, as start_incr."""
    if not _in_path(store):
        return None
    raw = check_key(key)
    engine = store._live_engine()
    missing = _txn.MISSING
    # encoded now: a value msgpack cannot carry raises here, nothing submitted
    record = None if new is missing else store._root._codec.encode(
        new, dictionary=engine.dicts.for_encoding(store._ns), key=raw if engine.keyed else None)
    decode = store._decode

    def swap(stored: bytes | None) -> tuple[Any, Any]:
        if stored is None or expected is missing:
            same = stored is None and expected is missing
        else:
            same = decode(raw, stored) == expected
        return (record, True) if same else (_KEEP, False)

    return _submit(store, raw, swap, durable, callback)


def incr(store: Handle, key: Key, delta: int = 1, default: int = 0, durable: bool | None = None) -> int:
    started = start_incr(store, key, delta, default, durable)
    if started is None:
        return _retry.incr(store, key, delta, default, durable)
    new: int = outcome(started[0])
    return new


def compare_and_set(store: Handle, key: Key, expected: Any, new: Any, durable: bool | None = None) -> bool:
    started = start_compare_and_set(store, key, expected, new, durable)
    if started is None:
        return _retry.compare_and_set(store, key, expected, new, durable)
    done: bool = outcome(started[0])
    return done


def _check_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentTypeError(f"incr: {name} must be an int, not {type(value).__name__} "
                                       f"({value!r:.60})")
