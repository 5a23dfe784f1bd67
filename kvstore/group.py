"""What the writer commits: groups of writes, and the steps inside them.

A `Group` is the unit of atomicity: its ops commit together or not at all,
in the order groups were submitted (writer.py). A `ConditionalGroup`'s ops
are decided inside the write transaction by its condition (TTL sweeps and
refreshes: ttl.py; a `Writer.run` step: `Step`). A group's `before` step runs
in the same transaction just ahead of its ops (ttl.Enable).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional, Tuple

from .errors import KVStoreError, Refused

__all__ = ["Group", "ConditionalGroup", "Step", "Op"]

# (namespace, LMDB handle, key, stored bytes or None: a delete)
Op = Tuple[str, Any, bytes, Optional[bytes]]


class Group:
    """Writes that commit together, atomically.

    ops: [(namespace, dbi, key, record or TOMBSTONE)]; nbytes: their records' total size.
    callback: None for a writer thread that waits in submit() (durable) or
    does not wait (buffered). Otherwise a function called with the group,
    in the committing thread and outside the writer's lock, once the group
    is done (see `error`); submit() then never blocks, and a durable group
    is committed at once by the flusher instead of by the caller (asyncio
    callers, kvstore/aio.py).
    before: None, or a step applied in the write transaction just ahead of
    the ops: before(txn), repeatable (a commit is replayed after the map
    grows). Commit hooks see it (the TTL metadata learns its namespace).
    """

    __slots__ = ("ops", "durable", "nbytes", "seq", "queued_at", "thread", "done", "error",
                 "waiter", "lead", "callback", "before")

    condition: Any = None  # see ConditionalGroup

    def __init__(self, ops: list[Op], durable: bool, nbytes: int,
                 callback: Callable[[Group], None] | None = None, before: Any = None):
        self.ops = ops
        self.durable = durable
        self.nbytes = nbytes
        self.callback = callback
        self.before = before
        self.seq = 0
        self.queued_at = 0.0
        self.thread = 0
        self.done = False
        self.error: BaseException | None = None
        self.waiter: threading.Lock | None = None  # held while its writer sleeps
        self.lead = False  # the writer was woken to lead the next commit


class ConditionalGroup(Group):
    """A group whose ops are decided inside the write transaction (TTL sweeps
    and refreshes, kvstore/ttl.py): condition.apply(txn, ops) writes those
    that still apply, and condition.enter(overlay, seq, ops), called under
    the writer's lock at submit, puts in the overlay what reads of this
    process should see until the commit."""

    __slots__ = ("condition",)

    def __init__(self, ops: list[Op], durable: bool, nbytes: int, condition: Any,
                 callback: Callable[[Group], None] | None = None):
        super().__init__(ops, durable, nbytes, callback)
        self.condition = condition


class Step:
    """The condition of a `Writer.run` group: fn(txn) is its whole work."""

    __slots__ = ("fn", "count", "result", "refused")

    def __init__(self, fn: Callable[[Any], Any], count: bool):
        self.fn = fn
        self.count = count  # counted as a commit of writes (commit_seq, stats)
        self.result: Any = None
        self.refused: KVStoreError | None = None

    def enter(self, overlay: Any, seq: int, ops: list[Op]) -> None:
        """A step's writes are not values: nothing for reads to see early."""

    def apply(self, txn: Any, ops: list[Op]) -> None:
        try:
            self.result = self.fn(txn)
            self.refused = None
        except Refused as exc:
            self.refused = exc.error
