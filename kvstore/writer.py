"""Group commit: many writers, one LMDB write transaction per group of writes.

The write path, top to bottom:

1. The caller's thread validates and encodes its writes (store.py) and hands
   them over as one `Group` (a put, a delete, a put_many or a batch) with
   `submit()`. The group is appended to the queue and its writes to the
   overlay, which reads consult first (read-your-writes).
2. Buffered group: `submit()` returns at once. The background flusher
   commits the queue when its oldest group has waited `flush_interval`, or
   at once when the queue reaches `max_batch_ops`/`max_batch_bytes`.
3. Durable group: the caller waits on the commit lock. Whoever holds it is
   the leader: it takes every queued group (up to the batch limits, never
   splitting a group), writes them in one LMDB transaction, commits and
   syncs once, and marks them done. A waiter that gets the lock finds its
   group done (it rode along) or leads the next commit with everything
   queued meanwhile. So concurrent durable writers share fsyncs, and nobody
   waits for a timer (LevelDB's writer queue, with LMDB underneath).
4. After the commit, the group's overlay entries are dropped (unless a newer
   write to the same key replaced them) and its writers are released.

A commit that fills the map is replayed whole after the map grows
(Environment.write). Any other commit error fails every group of that
commit with that error, fails every group still queued, and turns the store
into the failed state: further writes raise StoreFailedError, because a
failed fsync cannot be retried safely.

Lock order: commit_lock, then _lock. Never take commit_lock holding _lock.
"""

from __future__ import annotations

import collections
import threading
import time

from . import killpoints
from .errors import KVStoreError, StoreClosedError, StoreFailedError, TimeoutError

__all__ = ["Group", "Writer", "TOMBSTONE"]

TOMBSTONE = None  # the record of a pending delete in the overlay


class Group:
    """Writes that commit together, atomically. ops: (namespace, dbi, key, record-or-None, raw_len)."""

    __slots__ = ("ops", "durable", "nbytes", "seq", "queued_at", "done", "error")

    def __init__(self, ops: list, durable: bool):
        self.ops = ops
        self.durable = durable
        self.nbytes = sum(len(op[3]) for op in ops if op[3] is not None)
        self.seq = 0
        self.queued_at = 0.0
        self.done = False
        self.error: BaseException | None = None


class Writer:
    """The batching writer of one Environment (one per store path per process)."""

    def __init__(self, env, options):
        self._env = env
        self._max_ops = options.max_batch_ops
        self._max_bytes = options.max_batch_bytes
        self._max_pending = options.max_pending_ops
        self._interval = options.flush_interval
        self._commit_lock = threading.Lock()  # held by the thread that commits
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the flusher sleeps here
        # guarded by _lock:
        self._queue: collections.deque[Group] = collections.deque()
        self._queued_ops = 0
        self._queued_bytes = 0
        self._in_flight_ops = 0
        self._next_seq = 1
        self._last: Group | None = None  # last group submitted
        self._failed: StoreFailedError | None = None
        self._closing = False
        # namespace -> key -> (group seq, record or TOMBSTONE); mutated under
        # _lock, read without it (single dict operations are atomic).
        self.overlay: dict[str, dict[bytes, tuple]] = collections.defaultdict(dict)
        # statistics, guarded by _lock
        self.commits = 0
        self.ops_committed = 0
        self.max_ops_in_commit = 0
        self.bytes_in = 0
        self.bytes_stored = 0
        self.durable_groups = 0
        self.buffered_groups = 0
        self.last_commit_seq = 0
        self.commit_seconds: collections.deque[float] = collections.deque(maxlen=4096)
        self._thread = threading.Thread(target=self._flusher, name=f"kvstore-writer:{env.path}",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ callers

    def submit(self, group: Group, timeout: float | None = None) -> None:
        """Queue a group; for a durable group, return once it is committed."""
        with self._lock:
            if self._failed is not None:
                raise StoreFailedError(
                    f"the store failed earlier and takes no more writes; reopen it "
                    f"(cause: {self._failed.cause!r})", self._failed.cause)
            if self._closing:
                raise StoreClosedError("the store is closed")
            group.seq = self._next_seq
            self._next_seq += 1
            group.queued_at = time.monotonic()
            self._queue.append(group)
            self._last = group
            overlay = self.overlay
            for ns, _dbi, key, record, _raw_len in group.ops:
                overlay[ns][key] = (group.seq, record)
            self._queued_ops += len(group.ops)
            self._queued_bytes += group.nbytes
            full = self._queued_ops >= self._max_ops or self._queued_bytes >= self._max_bytes
            if not group.durable and (full or len(self._queue) == 1):
                self._wake.notify()
            backlog = self._queued_ops + self._in_flight_ops > self._max_pending
        if group.durable or backlog:
            self._wait(group, timeout)

    def flush(self, timeout: float | None = None) -> None:
        """Return once every group submitted before the call is committed."""
        with self._lock:
            last = self._last
            failed = self._failed
        if last is not None and not last.done:
            self._wait(last, timeout, own=False)
        elif failed is not None:
            raise failed

    def _wait(self, group: Group, timeout: float | None, own: bool = True) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not group.done:
            if deadline is None:
                self._commit_lock.acquire()
            else:
                left = deadline - time.monotonic()
                if left <= 0 or not self._commit_lock.acquire(timeout=left):
                    raise TimeoutError(
                        f"writes not committed within {timeout} s; they stay queued and will "
                        f"commit (call flush() again to wait for them)")
            try:
                if not group.done:
                    self._commit_next()
            finally:
                self._commit_lock.release()
        if group.error is not None:
            error = group.error
            if not own and not isinstance(error, StoreFailedError):
                error = StoreFailedError(f"a commit failed: {error}; reopen the store", error)
            raise error

    # ------------------------------------------------------------ the commit

    def _commit_next(self) -> None:
        """Commit the groups at the front of the queue. Caller holds commit_lock."""
        with self._lock:
            groups = []
            ops = nbytes = 0
            queue = self._queue
            while queue:
                g = queue[0]
                if groups and (ops + len(g.ops) > self._max_ops or nbytes + g.nbytes > self._max_bytes):
                    break
                groups.append(queue.popleft())
                ops += len(g.ops)
                nbytes += g.nbytes
            self._queued_ops -= ops
            self._queued_bytes -= nbytes
            self._in_flight_ops += ops
            failed = self._failed
        if not groups:
            return
        if failed is not None:
            self._finish(groups, ops, StoreFailedError(
                f"not committed: the store failed earlier; reopen it (cause: {failed.cause!r})",
                failed.cause))
            return
        started = time.perf_counter()
        try:
            seq = self._env.write(lambda txn: self._apply(txn, groups, ops), "committing")
        except KVStoreError as exc:
            self._fail(groups, ops, exc)
            return
        except BaseException:
            # Interrupted (KeyboardInterrupt, SystemExit from a signal): the
            # transaction was aborted, so put the groups back to be committed
            # by the next leader. Replaying is harmless even if the interrupt
            # landed after the commit: the same writes apply again, in order.
            with self._lock:
                self._queue.extendleft(reversed(groups))
                self._queued_ops += ops
                self._queued_bytes += nbytes
                self._in_flight_ops -= ops
            raise
        if killpoints.armed:
            killpoints.reached("after-commit")
        self._finish(groups, ops, None, seq, time.perf_counter() - started)

    def _apply(self, txn, groups: list[Group], ops: int) -> int:
        """Write the groups into txn (run again from scratch after a map grow)."""
        half = ops // 2 if killpoints.armed else -1
        n = 0
        for g in groups:
            for _ns, dbi, key, record, _raw_len in g.ops:
                if record is None:
                    txn.delete(key, db=dbi)
                else:
                    txn.put(key, record, db=dbi)
                n += 1
                if n == half:
                    killpoints.reached("mid-apply")
        seq = self._env.bump_seq(txn)
        if killpoints.armed:
            killpoints.reached("before-commit")
        return seq

    def _finish(self, groups, ops, error, seq=0, seconds=0.0) -> None:
        overlay = self.overlay
        with self._lock:
            for g in groups:
                for ns, _dbi, key, record, raw_len in g.ops:
                    pending = overlay[ns]
                    entry = pending.get(key)
                    if entry is not None and entry[0] == g.seq:
                        del pending[key]
                    if error is None and record is not None:
                        self.bytes_in += raw_len
                        self.bytes_stored += len(record)
                g.error = error
                g.done = True
                if error is None:
                    if g.durable:
                        self.durable_groups += 1
                    else:
                        self.buffered_groups += 1
            self._in_flight_ops -= ops
            if error is None:
                self.commits += 1
                self.ops_committed += ops
                self.max_ops_in_commit = max(self.max_ops_in_commit, ops)
                self.commit_seconds.append(seconds)
                self.last_commit_seq = seq

    def _fail(self, groups, ops, exc: KVStoreError) -> None:
        """A commit failed: its groups get exc; the store takes no more writes."""
        failure = exc if isinstance(exc, StoreFailedError) else StoreFailedError(
            f"a commit failed ({exc}); nothing of it was written and the store takes no more "
            f"writes: reopen it", exc)
        with self._lock:
            if self._failed is None:
                self._failed = failure
            rest = list(self._queue)
            self._queue.clear()
            rest_ops = sum(len(g.ops) for g in rest)
            self._queued_ops -= rest_ops
            self._queued_bytes = 0
            self._in_flight_ops += rest_ops
        self._finish(groups, ops, exc)
        if rest:
            self._finish(rest, rest_ops, StoreFailedError(
                f"not committed: an earlier commit failed ({exc}); reopen the store", exc))

    # ------------------------------------------------------------ the flusher

    def _flusher(self) -> None:
        while True:
            with self._lock:
                while True:
                    if not self._queue:
                        if self._closing:
                            return
                        self._wake.wait()
                        continue
                    if (self._closing or self._queued_ops >= self._max_ops
                            or self._queued_bytes >= self._max_bytes):
                        break
                    wait = self._queue[0].queued_at + self._interval - time.monotonic()
                    if wait <= 0:
                        break
                    self._wake.wait(wait)
            with self._commit_lock:
                try:
                    self._commit_next()
                except BaseException as exc:  # never die silently with writes queued
                    with self._lock:
                        if self._failed is None:
                            self._failed = StoreFailedError(f"the background writer failed: {exc!r}", exc)
                    self._fail([], 0, self._failed)

    # ------------------------------------------------------------ state

    @property
    def failed(self) -> StoreFailedError | None:
        return self._failed

    def pending(self) -> int:
        """Writes accepted and not yet committed (queued or being committed)."""
        with self._lock:
            return self._queued_ops + self._in_flight_ops

    def snapshot(self, ns: str) -> list:
        """[(key, record-or-TOMBSTONE)] pending in namespace ns, unordered."""
        with self._lock:
            pending = self.overlay.get(ns)
            return [(k, v[1]) for k, v in pending.items()] if pending else []

    def close(self) -> None:
        """Commit everything queued, stop the flusher. Raises if the store failed."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        if self._failed is not None:
            raise self._failed
