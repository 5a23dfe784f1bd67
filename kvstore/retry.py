"""Functions run in transactions until one commits: transact, update.

`transact(store, fn)` runs fn(tx) in a transaction (txn.py) and, on
conflict, runs it again after a random backoff (none before the first
retry, then up to a doubling cap), up to `retries` more times; then
`ConflictError` with the count. If fn raises and what it read changed
meanwhile, that is a conflict too (it may have seen a mix of states).

Fairness (`Gate`): a conflict is learnt at commit, when the winner of the
previous commit is already back with its next transaction. So the keys a
transaction conflicted on are "contended" in its process until its call
ends, and a first run that read one waits, just before its commit, until
they are free (at most YIELD_MAX): the older transaction goes first.

`update` is transact with RMW_RETRIES. `incr_step` and `cas_step` are the
transaction path of incr and compare_and_set, for where rmw.py cannot
compute them in the write path (a namespace with a default TTL, a call in
an open transaction). `Attempts`, `failed_run` and `check_still_open` are
transact's parts, which kvstore.aio's atransact drives with asyncio sleeps.
"""

from __future__ import annotations

import random
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar, Union

from .errors import ConflictError, InvalidArgumentTypeError, TransactionClosedError
from .txn import MISSING, Transaction, conflict_error
from .validate import check_count

if TYPE_CHECKING:
    from ._types import Key, Value
    from .store import Namespace, Store

    Handle = Union[Store[Any], Namespace[Any]]

_R = TypeVar("_R")
NsKey = tuple[str, bytes]

__all__ = ["transact", "update", "incr", "compare_and_set", "incr_step", "cas_step", "update_step",
           "Attempts", "failed_run", "check_still_open", "gate", "stats", "gave_up", "backoff",
           "RETRIES", "RMW_RETRIES", "YIELD_MAX"]

RETRIES = 10  # transact's default: runs of fn after the first
# update, incr, compare_and_set: each conflict is another writer's change of
# the key, and a winner that is back first can win many in a row (another
# process's, which the Gate does not see): they give up only after a
# thousand changes by others during one call.
RMW_RETRIES = 1000
BACKOFF_FIRST = 0.0002  # seconds: the longest sleep before the second retry
BACKOFF_MAX = 0.01  # seconds: the longest sleep between two runs
YIELD_MAX = 0.05  # seconds: the longest a first run waits for this process's retrying ones (Gate)


def backoff(attempt: int) -> float:
    """Seconds to sleep before run attempt+2 of a conflicting transaction:
    none before the first retry, then random up to a doubling cap."""
    if attempt == 0:
        return 0.0
    return random.uniform(0, min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (attempt - 1)))


class Gate:
    """Fairness between the transactions of one process on a hot key.

    A conflict is learnt at commit: by then the winner of the last commit
    is back with its next transaction, ahead of the losers, and could win
    over and over. So the keys a retrying transaction conflicted on are
    "contended" until its transact call ends, and a first run that read a
    contended key waits, before its commit, for them to be free (at most
    YIELD_MAX seconds: never a lock, nobody is kept out for longer): the
    older transaction commits first, and the younger one conflicts and
    becomes a retrier in turn. Transactions on other keys never wait.

    `_keys`: (namespace, key) -> retrying transactions that conflicted on
    it; `calls` (transact calls) and `conflicts` (runs that conflicted), for
    Store.stats(); all guarded by `_cond`'s lock (`_keys` is also read
    without it: single dict lookups)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._keys: dict[NsKey, int] = {}
        self.calls = 0
        self.conflicts = 0

    def started(self) -> None:
        with self._cond:
            self.calls += 1

    def conflicted(self, keys: Iterable[NsKey]) -> None:
        """A run conflicted on keys (those not registered by this call yet)."""
        with self._cond:
            self.conflicts += 1
            for k in keys:
                self._keys[k] = self._keys.get(k, 0) + 1

    def done(self, keys: Iterable[NsKey]) -> None:
        """A call that conflicted on keys has ended."""
        with self._cond:
            for k in keys:
                left = self._keys.get(k, 0) - 1
                if left > 0:
                    self._keys[k] = left
                else:
                    self._keys.pop(k, None)
            self._cond.notify_all()

    def contended(self, keys: Iterable[NsKey]) -> bool:
        held = self._keys
        return bool(held) and any(k in held for k in keys)

    def wait(self, keys: Iterable[NsKey]) -> None:
        """Before a first run's commit: let this process's retrying
        transactions on the keys it read go first."""
        if self.contended(keys):
            with self._cond:
                self._cond.wait_for(lambda: not self.contended(keys), YIELD_MAX)


_gates: weakref.WeakKeyDictionary[Any, Gate] = weakref.WeakKeyDictionary()  # engine -> Gate
_gates_lock = threading.Lock()


def gate(store: Handle) -> Gate:
    """The Gate of the store's engine (one per path per process)."""
    engine = store._live_engine()
    found = _gates.get(engine)
    if found is None:
        with _gates_lock:
            found = _gates.setdefault(engine, Gate())
    return found


def stats(store: Handle) -> dict[str, int]:
    """This process's transact calls (incr, update, compare_and_set
    included) and their runs that conflicted, for Store.stats()."""
    found = gate(store)
    with found._cond:
        return {"calls": found.calls, "conflicts": found.conflicts}


def gave_up(error: ConflictError, retries: int) -> ConflictError:
    """transact's error once its retries are used up."""
    keys = ", ".join(f"{key!r}" + ("" if ns == "default" else f" in {ns!r}") for ns, key in error.keys[:5])
    more = f" and {len(error.keys) - 5} more" if len(error.keys) > 5 else ""
    return ConflictError(
        f"the transaction conflicted on every one of its {retries + 1} runs (retries={retries}; "
        f"last on {keys or 'its reads'}{more}): other writers keep changing what it reads; "
        f"retry later, pass a larger retries=, or spread the writes over more keys",
        error.keys, retries + 1)


def transact(store: Handle, fn: Callable[[Transaction], _R], retries: int = RETRIES,
             durable: bool | None = None) -> _R:
    """Run fn(tx) in a transaction and commit it; on conflict, run it again
    (after a random backoff), up to `retries` more times; returns fn's
    result. If fn raises and what it read has changed meanwhile, that is
    a conflict too (it may have seen a mix of old and new); otherwise its
    exception propagates and nothing is written.

    :raises ConflictError: every run conflicted (`attempts` says how many)
    """
    attempts = Attempts(store, check_count(retries, "retries", "transact", 0))
    with attempts:
        for first, pause in attempts:
            if pause:
                time.sleep(pause)
            tx = Transaction(store, durable)._begin()
            try:
                result = fn(tx)
            except BaseException as exc:
                error = failed_run(tx, exc)
                if error is None:
                    raise
                attempts.conflict(error)
                continue
            check_still_open(tx)
            if first:
                attempts.gate.wait(tx._reads)
            try:
                tx.commit()
                return result
            except ConflictError as exc:
                attempts.conflict(exc)
    raise gave_up(attempts.last_error(), attempts.retries)


class Attempts:
    """The runs of one transact call: iterating yields (first run?, the
    pause before it). `conflict(error)` counts a run that
    conflicted and marks its keys contended in the process's Gate until the
    `with` block ends; `error`: the last run's conflict."""

    def __init__(self, store: Handle, retries: int):
        self.gate = gate(store)
        self.retries = retries
        self.error: ConflictError | None = None
        self._held: set[NsKey] = set()  # keys this call marked contended

    def last_error(self) -> ConflictError:
        """The last run's conflict (once every run conflicted)."""
        assert self.error is not None
        return self.error

    def __iter__(self) -> Iterator[tuple[bool, float]]:
        self.gate.started()
        yield True, 0.0
        for attempt in range(self.retries):
            yield False, backoff(attempt)

    def conflict(self, error: ConflictError) -> None:
        self.error = error
        new = [k for k in error.keys if k not in self._held]
        self._held.update(new)
        self.gate.conflicted(new)

    def __enter__(self) -> "Attempts":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._held:
            self.gate.done(self._held)
            self._held = set()


def failed_run(tx: Transaction, exc: BaseException) -> ConflictError | None:
    """fn raised exc: end tx; the conflict to retry on if it is tx's own (a
    read found what it read before changed), or if what it read changed
    meanwhile (fn may have failed because of that); else None."""
    if tx._state == "conflicted" and isinstance(exc, ConflictError):
        return exc
    stale = None
    if tx._state == "open":
        try:
            stale = tx._current().conflicts if (tx._reads or tx._scans) else None
        except Exception:  # the store itself failing: the function's own error says more
            stale = None
    tx._end("discarded")
    return conflict_error(stale) if stale else None


def check_still_open(tx: Transaction) -> None:
    if tx._state != "open":
        raise TransactionClosedError("transact: fn ended its transaction itself (commit() or "
                                     "discard()); let transact commit it")


def update_step(key: Key, fn: Callable[[Any], Value], default: Any) -> Callable[[Transaction], Any]:
    """The transaction of update(): new = fn(old), written; returns new."""
    def step(tx: Transaction) -> Any:
        new = fn(tx.get(key, default))
        tx.put(key, new)
        return new
    return step


def incr_step(key: Key, delta: int, default: int) -> Callable[[Transaction], int]:
    """The transaction of incr(): the int under key (default if absent) plus delta."""
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise InvalidArgumentTypeError(f"incr: delta must be an int, not {type(delta).__name__} ({delta!r:.60})")
    if isinstance(default, bool) or not isinstance(default, int):
        raise InvalidArgumentTypeError(f"incr: default must be an int, not {type(default).__name__} "
                                       f"({default!r:.60})")

    def step(tx: Transaction) -> int:
        old = tx.get(key, default)
        if isinstance(old, bool) or not isinstance(old, int):
            raise InvalidArgumentTypeError(
                f"incr: key {key!r} holds a {type(old).__name__} ({old!r:.60}), not an int; use "
                f"update() for other values, or put an int there first")
        new = old + delta
        tx.put(key, new)
        return new
    return step


def cas_step(key: Key, expected: Any, new: Any) -> Callable[[Transaction], bool]:
    """The transaction of compare_and_set(): write new (MISSING: delete) if
    the key holds expected (MISSING: absent); returns whether it did."""
    def step(tx: Transaction) -> bool:
        current = tx.get(key, MISSING)
        if current is MISSING or expected is MISSING:
            same = current is expected
        else:
            same = current == expected
        if not same:
            return False
        if new is MISSING:
            tx.delete(key)
        else:
            tx.put(key, new)
        return True
    return step


def update(store: Handle, key: Key, fn: Callable[[Any], Value], default: Any = None,
           durable: bool | None = None) -> Any:
    return transact(store, update_step(key, fn, default), RMW_RETRIES, durable)


def incr(store: Handle, key: Key, delta: int = 1, default: int = 0, durable: bool | None = None) -> int:
    return transact(store, incr_step(key, delta, default), RMW_RETRIES, durable)


def compare_and_set(store: Handle, key: Key, expected: Any, new: Any, durable: bool | None = None) -> bool:
    return transact(store, cas_step(key, expected, new), RMW_RETRIES, durable)
