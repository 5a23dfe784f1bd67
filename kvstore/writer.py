"""Group commit: many writers, one LMDB write transaction per group of writes.

The write path, top to bottom:

1. The caller's thread validates and encodes its writes (store.py) and hands
   them over as one `Group` (a put, a delete, a put_many or a batch) with
   `submit()`. The group is appended to the queue and its writes to the
   overlay, which reads consult first (read-your-writes).
2. Buffered group: `submit()` returns at once. The background flusher
   commits the queue when its oldest group has waited `flush_interval`, or
   at once when the queue reaches `max_batch_ops`/`max_batch_bytes`.
3. Durable group: if no commit is running, the caller becomes the leader;
   otherwise it sleeps on its group's own lock. The leader gives the other
   durable writers that were active lately a moment to queue (at most half
   a commit's time: their writes would otherwise wait a whole commit), takes
   every queued group (up to the batch limits, never splitting a group),
   writes them in one LMDB transaction, commits and syncs once, and wakes
   every writer whose group is done. When its own group is done it hands
   the lead to the first writer still waiting, or gives it up. So concurrent
   durable writers share fsyncs, and nobody waits for the flush timer
   (LevelDB's writer queue, with LMDB underneath).
4. After the commit, the commit hooks run (`on_commit`: the read cache drops
   the keys, preallocation checks the room left in data.mdb), the groups'
   writers are woken, then the groups' overlay entries are dropped (unless
   a newer write to the same key replaced them; overlay.py). Work a hook
   asks for with `schedule` (preallocating disk space) runs in the flusher
   between commits, holding the lead: a leader that is done hands it over,
   and the lead goes back to a commit after each step.

With a write-ahead log (store format 3: wal.py, tail.py, applier.py) the
same queue and leader append to the log instead of committing to LMDB,
through the Appender (appender.py), which knows how:

1'. A plain group whose caller finds no leader and an empty queue is
   appended by that caller at once (`_append_alone`): one record, written
   under the log's append lock after catching up on what other processes
   appended, published in the shared index, entered in the overlay; then,
   if durable, the log is synced. Buffered or durable, the call returns
   only then: a buffered write is in the kernel, a durable one on disk. Every other group queues and its caller waits (a buffered one
   too): the next leader appends everything queued as consecutive records
   and syncs once if any of them is durable (`_log_groups`, `Appender.write`).
2'. Exclusive groups (a metadata step, a conditional group, a group with a
   `before` step) are written into LMDB by `Applier.checkpoint(step)`: the
   whole log first, then the step, in one transaction (`Appender.write`).
3'. The flusher syncs the log within flush_interval of seeing unsynced
   records (anyone's) (`_log_work`); the apply thread applies it to LMDB
   every apply_interval (applythread.py), in a thread of its own because an
   apply may wait for LMDB's write lock and appends must not; flush() asks
   it for a sync and an apply (`checkpoint`).
   The commit hooks run after each apply (the applier shares `_hooks`).
   A log that fills up is applied by the writer that found it full.
   A full disk fails the group that hit it (DiskFullError) and nothing
   else; a failed sync or apply fails the store, as a failed commit does.

Every write of the store goes through here: values, deletes and batches,
and also metadata (TTL defaults, dictionaries, new namespaces) and TTL
sweeps and refreshes, as `ConditionalGroup`s whose ops are decided inside
the write transaction, or `run(fn)`: fn(txn) applied in the next commit, in
order with every other group. A group's `before` step (the first TTL value
of a namespace records the namespace's TTL metadata) is applied in the
same transaction, just ahead of its writes (group.py). The only write
transactions outside the writer are the store's creation at open (the
writer does not exist yet), the lookup of an existing namespace's handle
(an empty write transaction, which LMDB ends without a commit or a sync),
and LMDB's own in the CLI's offline copies.

A commit that fills the map is replayed whole after the map grows
(Environment.write). One that cannot grow it (max_map_size) wrote nothing:
its groups are committed one by one, and those that do not fit fail alone
with MapFullError; the store goes on (with a log: large groups are written
into LMDB directly for the same reason, appender.py). Any other commit error fails every group of that
commit with that error, fails every group still queued, and puts the store
into the failed state: further writes raise StoreFailedError, because a
failed fsync cannot be retried safely.

One lock, `_lock`, guards all the state below (and the counters of
commitstats.py, and the apply thread's requests); the LMDB transaction itself
runs outside it, in the leader's thread (`_leading` says one is running).
A sleeping writer is woken by the release of its group's `waiter` lock,
after `done` or `lead` was set, so waking a writer never contends `_lock`.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from . import killpoints
from .applythread import ApplyThread
from .codec.format import raw_len
from .commitstats import CommitStats
from .errors import DiskFullError, KVStoreError, MapFullError, StoreClosedError, StoreFailedError, TimeoutError
from .options import ACTIVE_WINDOW, MAX_GATHER, OVERLAY_SLICE  # tunables: see there
from .appender import Appender
from .group import ConditionalGroup, Group, Step
from .overlay import TOMBSTONE, Overlay

if TYPE_CHECKING:
    from .environment import Environment
    from .options import Options

Hook = Callable[[list[Group]], Any]

__all__ = ["Group", "ConditionalGroup", "Writer", "TOMBSTONE"]  # the groups live in group.py



def _LOG_WORK() -> None:
    """The flusher's step marker for the log's upkeep (Writer._log_work); never called."""


def _cause(failed: StoreFailedError) -> BaseException:
    """Why the store failed, for the writes refused after it: the failure's
    cause, or the failure itself when it is a named one (a replaced lock
    file). With a log the applier can find it in the background, where no
    write hears of it."""
    return failed.cause if failed.cause is not None else failed


class Writer:
    """The batching writer of one Environment (one per store path per process)."""

    def __init__(self, env: Environment, options: Options, log: Appender | None = None):
        self._env = env
        # With a write-ahead log (format 3; wal.py): groups are appended to
        # the log by the leader (appender.py) and LMDB is the applier's
        # (applier.py). Without one, the leader commits to LMDB.
        self._log = log
        self._max_ops = options.max_batch_ops
        self._max_bytes = options.max_batch_bytes
        self._max_pending = options.max_pending_ops
        self._interval = options.flush_interval
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)  # for flush() and the flusher
        self._arrived = threading.Condition(self._lock)  # a durable group was queued
        self._wake = threading.Condition(self._lock)  # the flusher sleeps here
        # guarded by _lock:
        self._queue: collections.deque[Group] = collections.deque()
        self._queued_ops = 0
        self._queued_bytes = 0
        self._queued_durable = 0
        self._in_flight_ops = 0
        self._leading = False  # a thread is running a commit
        # With a log: leaders now waiting for their sync (fdatasync), their
        # records appended; and buffered groups being appended beside them
        # meanwhile (_append_beside), which close() waits for.
        self._syncing = 0
        self._beside = 0
        self._gathering = False  # the leader waits for durable groups to arrive
        self._gather_target = 0
        self._flush_waiters = 0
        self._flush_wanted = False
        self._scheduled: list[Callable[[], Any]] = []  # steps for the flusher to run between commits (schedule)
        self._step_turn = False  # a leader handed the lead to the flusher for one step
        self._hooks: list[Hook] = []  # on_commit hooks; appended before the first write
        self.hook_error: Exception | None = None  # the last exception an on_commit hook raised
        self._next_seq = 1
        self._last: Group | None = None  # last group submitted
        self._failed: StoreFailedError | None = None
        self._closing = False
        self._durable_seen: dict[int, int] = {}  # thread id -> commit number of its last durable group
        self._gather_seconds = 0.0
        # pending writes: mutated under _lock, read without it (overlay.py);
        # with a log, the tail's overlay (tail.py: its own lock)
        self.overlay = Overlay() if log is None else log.tail.overlay
        self.counts = CommitStats()  # guarded by _lock
        self._thread = threading.Thread(target=self._flusher, name=f"kvstore-writer:{env.path}",
                                        daemon=True)
        self._thread.start()
        # with a log, the apply thread (applythread.py): the log into LMDB
        self._apply_thread: ApplyThread | None = None
        if log is not None:
            self._apply_thread = ApplyThread(log, self._lock, self._released, lambda: self._failed,
                                             self._set_failed, f"kvstore-apply:{env.path}")

    # ------------------------------------------------------------ hooks

    def on_commit(self, hook: Hook) -> None:
        """Call hook(groups) after every successful commit, in the committing
        thread, outside the writer's lock, before the groups' writers are
        woken. For the parts above the writer (the read cache, preallocation,
        the TTL metadata): the writer never calls into them otherwise. A hook
        that raises changes nothing for the commit, which is done: the
        exception is kept in stats()["hook_error"]."""
        self._hooks.append(hook)

    def schedule(self, step: Callable[[], Any]) -> None:
        """Run step() in the flusher between commits, once: it holds the lead
        meanwhile, so no commit runs during it (writers queue behind it), and
        a leader hands it the lead when it is done. step returns True to be
        run again after the next commit, if one is due. A step that raises is
        dropped. Keep steps short: durable writers wait for them. With a
        log, steps run in the apply thread instead, holding the apply lock:
        between applies and exclusive groups (LMDB is the applier's), and
        appends never wait for a step."""
        with self._lock:
            if self._apply_thread is not None:
                self._apply_thread.add_step(step)
                return
            if step not in self._scheduled:
                self._scheduled.append(step)
                self._wake.notify()

    # ------------------------------------------------------------ callers

    def _check_open(self) -> None:
        """Under _lock: raise if the store failed or is closing."""
        if self._failed is not None:
            cause = _cause(self._failed)
            raise StoreFailedError(
                f"the store failed earlier and takes no more writes; reopen it (cause: {cause!r})", cause)
        if self._closing:
            raise StoreClosedError("the store is closed")

    def submit(self, group: Group) -> bool:
        """Queue a group; for a durable group, return once it is committed.

        A group with a callback never blocks here: the return value says
        whether its caller should wait for the callback (a durable group, or
        a buffered one over max_pending_ops) before acknowledging the write.
        """
        with self._lock:
            self._check_open()
            group.seq = self._next_seq
            self._next_seq += 1
            if (self._log is not None and not self._leading and not self._queue
                    and group.callback is None and group.before is None
                    and (group.condition is None or hasattr(group.condition, "validate"))):
                # With a log and nobody leading, a group is appended (and
                # synced, if durable) by its caller at once: no queue, no
                # hand-over. Writers arriving meanwhile queue for the next
                # leader, who takes them all (and shares one sync).
                self._leading = group.lead = True
                self._last = group
                self._in_flight_ops += len(group.ops)
                alone = True
                beside = False
            else:
                alone = False
                # A leader waits for its sync, its records appended: a plain
                # buffered group needs no sync and nothing queued has
                # returned yet, so it is appended now, beside the leader,
                # instead of waiting for the sync and the next leader.
                beside = (self._syncing > 0 and self._log is not None and not group.durable
                          and group.callback is None and group.before is None
                          and group.condition is None)
                if beside:
                    self._beside += 1
                    self._last = group
                    self._in_flight_ops += len(group.ops)
        if beside and self._append_beside(group):
            return True
        if alone:
            try:
                appended = self._append_alone(group)
            except BaseException:  # interrupted (KeyboardInterrupt): never keep the lead
                with self._lock:
                    self._in_flight_ops -= len(group.ops)
                    group.done = True
                self._hand_off()
                raise
            if not appended:
                try:
                    self._log_groups([group], len(group.ops), group.nbytes, int(group.durable), 0.0)
                finally:
                    self._hand_off()
            if group.error is not None:
                raise group.error
            return True
        with self._lock:
            try:
                self._check_open()
            except KVStoreError as exc:
                if beside:  # _last may be this group: a flush() must not wait for it for ever
                    group.error = exc
                    group.done = True
                    self._released.notify_all()
                raise
            group.queued_at = time.monotonic()
            self._queue.append(group)
            self._last = group
            tail = None if self._log is None else self._log.tail
            if tail is None:
                if group.condition is None:
                    self.overlay.enter(group.seq, group.ops)
                else:
                    group.condition.enter(self.overlay, group.seq, group.ops)
                    self.overlay.added(group.ops)
            elif group.condition is not None:
                # with a log, a plain group's writes enter the overlay when
                # appended (tail.py), in log order
                with tail.lock:
                    group.condition.enter(self.overlay, group.seq, group.ops)
                    self.overlay.added(group.ops)
            self._queued_ops += len(group.ops)
            self._queued_bytes += group.nbytes
            # with a log, every plain group's caller waits for its append:
            # a buffered write is in the kernel when the call returns
            wait = (group.durable or self._queued_ops + self._in_flight_ops > self._max_pending
                    or (tail is not None and group.condition is None))
            if group.callback is not None:
                if wait:  # commit it now, in the flusher
                    self._flush_wanted = True
                    self._wake.notify()
                elif len(self._queue) == 1 or self._queued_ops >= self._max_ops \
                        or self._queued_bytes >= self._max_bytes:
                    self._wake.notify()
                return wait
            if group.durable:
                group.thread = threading.get_ident()
                self._queued_durable += 1
                if self._gathering and self._queued_durable >= self._gather_target:
                    self._arrived.notify()
            elif len(self._queue) == 1 or self._queued_ops >= self._max_ops \
                    or self._queued_bytes >= self._max_bytes:
                self._wake.notify()
            if wait:
                if self._leading:
                    group.waiter = threading.Lock()
                    group.waiter.acquire()
                else:
                    self._leading = True
                    group.lead = True
        if wait:
            self._wait(group)
        return wait

    def run(self, fn: Callable[[Any], Any], *, count: bool = False) -> Any:
        """Apply fn(txn) in the next commit, in order with every other group,
        and return its result once that commit is synced.

        For the store's own metadata (TTL defaults, dictionaries, namespace
        handles): so that every write transaction is the writer's. fn must be
        repeatable (a commit is replayed after the map grows) and may raise
        `Refused` before writing to fail this call alone. Never call it from
        a commit hook (the hook runs inside the commit it would wait for).
        count: the step writes records (kvstore load): its commit counts in
        commit_seq and the stats like any other; metadata steps do not."""
        step = Step(fn, count)
        self.submit(ConditionalGroup([], True, 0, step))
        if step.refused is not None:
            raise step.refused
        return step.result

    def flush(self, timeout: float | None = None) -> None:
        """Return once every group submitted before the call is committed.

        The flusher thread commits; this thread only waits, so a timeout holds
        even while another process keeps LMDB's write lock.
        """
        with self._lock:
            last = self._last
            if last is not None and not last.done:
                self._flush_wanted = True
                self._wake.notify()
                self._await(lambda: last.done, timeout,
                            f"writes not committed within {timeout} s; they stay queued and "
                            f"will commit (call flush() again to wait for them)")
            failed = self._failed
        if failed is not None:
            raise failed
        if self._log is not None:
            self.checkpoint(timeout)

    def _await(self, done: Callable[[], bool], timeout: float | None, message: str) -> None:
        """Under _lock: sleep on _released until done(); TimeoutError(message)
        once timeout seconds have passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._flush_waiters += 1
        try:
            while not done():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(message)
                self._released.wait(left)
        finally:
            self._flush_waiters -= 1

    def _wait(self, group: Group) -> None:
        """Sleep until group is committed, or lead commits until it is."""
        if group.waiter is not None:
            group.waiter.acquire()  # released by a leader: done, or our turn to lead
        if not group.done:
            try:
                while not group.done:
                    self._gather()
                    self._commit_next()
            finally:
                self._hand_off()
        if group.error is not None:
            raise group.error

    def _hand_off(self, after_step: bool = False) -> None:
        """The leader is done: give the lead to the flusher for one scheduled
        step, if one waits and nothing is queued (a queued group goes first,
        and after a step a commit does), or wake the first writer still
        waiting to lead, or give up the lead (the flusher takes buffered
        groups; it runs steps itself while the queue is not due). So steps
        run strictly between commits, never ahead of one that is due, and a
        writer that commits back to back cannot starve them."""
        with self._lock:
            if self._scheduled and not self._queue and not after_step and not self._closing:
                self._step_turn = True  # _leading stays True: the flusher holds the lead
                self._wake.notify()
                return
            for g in self._queue:
                if g.waiter is not None:
                    g.lead = True
                    g.waiter.release()
                    return
            self._leading = False
            if self._queue or self._closing or self._scheduled:
                # the flusher waits for the lead to come back (or, closing,
                # to see the queue empty and stop): never leave it asleep
                self._wake.notify()
            self._released.notify_all()

    def _gather(self) -> None:
        """Give durable writers that were active lately a moment to queue."""
        with self._lock:
            horizon = self.counts.commits - ACTIVE_WINDOW
            expected = sum(1 for last in self._durable_seen.values() if last >= horizon)
            if expected <= 1 or self._queued_durable >= expected:
                return
            deadline = time.monotonic() + self._gather_seconds
            self._gathering = True
            self._gather_target = expected
            try:
                while self._queued_durable < expected and self._queued_ops < self._max_ops:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._arrived.wait(left)
            finally:
                self._gathering = False

    # ------------------------------------------------------------ the commit

    def _commit_next(self) -> None:
        """Commit the groups at the front of the queue. Caller is the leader."""
        with self._lock:
            groups: list[Group] = []
            ops = nbytes = durable = 0
            queue = self._queue
            log = self._log
            while queue:
                g = queue[0]
                if groups and (ops + len(g.ops) > self._max_ops or nbytes + g.nbytes > self._max_bytes):
                    break
                if log is not None and groups and (log.alone(g) or log.alone(groups[0])):
                    break  # with a log, an exclusive or validated group goes alone
                groups.append(queue.popleft())
                ops += len(g.ops)
                nbytes += g.nbytes
                durable += g.durable and g.callback is None
            self._queued_ops -= ops
            self._queued_bytes -= nbytes
            self._queued_durable -= durable
            self._in_flight_ops += ops
            failed = self._failed
        if not groups:
            return
        if failed is not None:
            cause = _cause(failed)
            self._finish(groups, ops, StoreFailedError(
                f"not committed: the store failed earlier; reopen it (cause: {cause!r})", cause))
            return
        started = time.perf_counter()
        if self._log is not None:
            self._log_groups(groups, ops, nbytes, durable, started)
            return
        self._commit(groups, ops, nbytes, durable, started)

    def _commit(self, groups: list[Group], ops: int, nbytes: int, durable: int, started: float,
                requeue: bool = True) -> None:
        """Without a log: write the groups in one LMDB transaction and commit.
        Interrupted, the groups go back to the queue (requeue: the caller
        does it, when it commits them one by one)."""
        try:
            seq = self._env.write(lambda txn: self._apply(txn, groups, ops), "committing")
        except MapFullError as exc:
            # Nothing was written, and the map is intact: the groups that do
            # not fit fail alone (those that do commit), the store goes on.
            if len(groups) == 1:
                self._finish(groups, ops, exc)
                return
            for i, g in enumerate(groups):
                try:
                    self._commit([g], len(g.ops), g.nbytes, int(g.durable and g.callback is None),
                                 time.perf_counter(), requeue=False)
                except BaseException:
                    rest = groups[i:]
                    self._requeue(rest, sum(len(r.ops) for r in rest), sum(r.nbytes for r in rest),
                                  sum(r.durable and r.callback is None for r in rest))
                    raise
            return
        except KVStoreError as exc:
            self._fail(groups, ops, exc)
            return
        except BaseException:
            # Interrupted (KeyboardInterrupt, SystemExit from a signal): the
            # transaction was aborted, so put the groups back to be committed
            # by the next leader. Replaying is harmless even if the interrupt
            # landed after the commit: the same writes apply again, in order.
            if requeue:
                self._requeue(groups, ops, nbytes, durable)
            raise
        if killpoints.armed and seq:
            killpoints.reached("after-commit")
        self._finish(groups, ops, None, seq, time.perf_counter() - started)

    def _requeue(self, groups: list[Group], ops: int, nbytes: int, durable: int) -> None:
        """Put interrupted groups back at the front of the queue, for the next leader."""
        with self._lock:
            self._queue.extendleft(reversed(groups))
            self._queued_ops += ops
            self._queued_bytes += nbytes
            self._queued_durable += durable
            self._in_flight_ops -= ops

    def _append_alone(self, group: Group) -> bool:
        """The caller leads and its group (plain, buffered or durable, or a
        transaction's) is the only one: append it, sync it if durable, and
        give up the lead, in as few steps as it takes. False when
        anything is out of the ordinary (nothing was appended, the caller
        still leads): then the general path (_log_groups) takes it."""
        log = self._log
        assert log is not None  # only with a log (submit)
        started = time.perf_counter()
        n = len(group.ops)  # as submit counted it in flight (a computed group may empty its ops)
        try:
            appended = log.append_alone(group)
        except Exception:
            return False  # nothing appended: the general path meets it again and answers it
        if appended is None:  # a transaction whose reads changed: decided, nothing written
            with self._lock:
                group.done = True
                self._in_flight_ops -= n
            self._hand_off()
            return True
        gen, end, durable = appended
        if durable:
            try:
                self._sync_leading(gen, end)
            except KVStoreError as exc:
                self._fail([group], n, exc)
                self._hand_off()
                return True
        with self._lock:
            self._counted(group, n, started, durable)
            if self._queue or self._scheduled or self._closing:
                quiet = False
            else:
                self._leading = False
                quiet = True
                if self._flush_waiters:
                    self._released.notify_all()
        if not quiet:
            self._hand_off()
        return True

    def _counted(self, group: Group, n: int, started: float, durable: bool) -> None:
        """Under _lock: a group appended alone (or beside a leader) is done:
        count it, field by field (commitstats.py)."""
        group.done = True
        self._in_flight_ops -= n
        st = self.counts
        st.commits += 1
        st.ops_committed += n
        st.max_ops_in_commit = max(st.max_ops_in_commit, n)
        st.commit_seconds.append(time.perf_counter() - started)
        if durable:
            st.durable_groups += 1
        else:
            st.buffered_groups += 1
        st.bytes_stored += group.nbytes
        ops = group.ops
        if len(ops) == 1:  # a put or a delete, the common case
            record = ops[0][3]
            st.bytes_in += raw_len(record) if record is not None else 0
        else:
            st.bytes_in += sum(raw_len(r) for _ns, _d, _k, r in ops if r is not None)

    def _sync_leading(self, gen: int, end: int) -> None:
        """The leader syncs the log up to end; buffered groups arriving
        meanwhile are appended beside it (submit, _append_beside)."""
        log = self._log
        assert log is not None
        with self._lock:
            self._syncing += 1
        try:
            log.sync(gen, end)
        finally:
            with self._lock:
                self._syncing -= 1

    def _append_beside(self, group: Group) -> bool:
        """Append a plain buffered group while a leader syncs, without the
        lead (the append lock orders it with any other append). False:
        nothing appended (too large, the log full, an error): the caller
        queues it as usual and the general path answers it."""
        log = self._log
        assert log is not None  # only with a log (submit)
        started = time.perf_counter()
        n = len(group.ops)
        appended = None
        interrupted = True
        try:
            appended = log.append_alone(group)
            interrupted = False
        except Exception:
            interrupted = False
        finally:
            with self._lock:
                self._beside -= 1
                if appended is not None:
                    self._counted(group, n, started, False)
                else:
                    self._in_flight_ops -= n
                    if interrupted:  # KeyboardInterrupt, SystemExit: nothing appended, none to come
                        group.done = True
                if self._flush_waiters or self._closing:
                    self._released.notify_all()
        return appended is not None

    def _log_groups(self, groups: list[Group], ops: int, nbytes: int, durable: int, started: float) -> None:
        """With a log: append plain groups as records (and sync them if one
        is durable), or write an exclusive group into LMDB after the whole
        log (applier.py). Caller is the leader."""
        log = self._log
        assert log is not None  # only with a log (_commit_next)
        try:
            seq, to_sync = log.write(groups, defer_sync=True)
        except (DiskFullError, MapFullError) as exc:  # nothing written: these fail, the store goes on
            self._finish(groups, ops, exc)
            return
        except KVStoreError as exc:
            self._fail(groups, ops, exc)
            return
        except Exception as exc:  # a bug: fail the store loudly rather than retry it forever
            self._fail(groups, ops, StoreFailedError(
                f"writing to the write-ahead log failed unexpectedly ({exc!r}); nothing of it was "
                f"acknowledged, and the store takes no more writes: reopen it", exc))
            return
        except BaseException:
            self._requeue(groups, ops, nbytes, durable)  # interrupted before anything was published
            raise
        if to_sync is not None:  # appended and published: never requeued from here on
            try:
                self._sync_leading(*to_sync)
            except KVStoreError as exc:
                self._fail(groups, ops, exc)
                return
            except BaseException:
                # interrupted (the fdatasync itself may be done): the writers
                # of these groups hear only once a sync covered them
                try:
                    self._sync_leading(*to_sync)
                except KVStoreError as exc:
                    self._fail(groups, ops, exc)
                else:
                    self._finish(groups, ops, None, seq, time.perf_counter() - started)
                raise
        self._finish(groups, ops, None, seq, time.perf_counter() - started)

    def _apply(self, txn: Any, groups: list[Group], ops: int) -> int:
        """Write the groups into txn (run again from scratch after a map grow)."""
        half = ops // 2 if killpoints.armed else -1
        n = 0
        counted = False  # a commit of metadata steps alone is not counted (commit_seq, stats)
        for g in groups:
            if g.before is not None:
                g.before(txn)
            if g.condition is not None:
                g.condition.apply(txn, g.ops)
                n += len(g.ops)
                counted = counted or type(g.condition) is not Step or g.condition.count
                continue
            counted = True
            for _ns, dbi, key, record in g.ops:
                if record is None:
                    txn.delete(key, db=dbi)
                else:
                    txn.put(key, record, db=dbi)
                n += 1
                if n == half:
                    killpoints.reached("mid-apply")
        seq = self._env.bump_seq(txn) if counted else 0
        if killpoints.armed and seq:  # kill points count commits of writes, not of metadata steps
            killpoints.reached("before-commit")
        return seq

    def _finish(self, groups: list[Group], ops: int, error: BaseException | None, seq: int = 0,
                seconds: float = 0.0) -> None:
        """Mark groups done (with error, if any), wake their writers, then
        drop their overlay entries.

        After a commit the writers are woken first: an overlay entry left a
        moment longer holds exactly what was committed, so reads stay right
        (after a failure, the entries go first). The overlay
        is then cleaned a slice at a time, so that writers submitting
        meanwhile wait for the lock at most a slice's time, not a whole
        commit's (asyncio callers submit from the event loop)."""
        if error is None and self._log is None:  # with a log, the applier runs them
            for hook in self._hooks:
                try:
                    hook(groups)
                except Exception as exc:  # the commit is done: its writers must hear so
                    self.hook_error = exc
        bytes_in = bytes_stored = 0
        if error is not None:
            # nothing was written: no read may see these writes once their
            # writers have their error
            self._drop_overlay(groups)
        else:
            bytes_in, bytes_stored = CommitStats.sizes(groups)
        callbacks = False
        st = self.counts
        with self._lock:
            for g in groups:
                g.error = error
                g.done = True
                if g.waiter is not None and not g.lead:
                    g.waiter.release()
                callbacks = callbacks or g.callback is not None
                if error is None and seq:
                    if g.durable:
                        st.durable_groups += 1
                        if g.callback is None:
                            self._durable_seen[g.thread] = st.commits
                    else:
                        st.buffered_groups += 1
            self._in_flight_ops -= ops
            if error is None and seq:
                st.committed(ops, bytes_in, bytes_stored, seq, seconds)
                self._gather_seconds = min(seconds / 2, MAX_GATHER)
                if len(self._durable_seen) > 4 * ACTIVE_WINDOW:
                    horizon = st.commits - ACTIVE_WINDOW
                    self._durable_seen = {t: c for t, c in self._durable_seen.items() if c >= horizon}
            if self._flush_waiters:
                self._released.notify_all()
        if callbacks:
            for g in groups:
                if g.callback is not None:
                    try:
                        g.callback(g)
                    except Exception:  # a caller's bug must not stop the writer
                        pass
        if error is None:
            self._drop_overlay(groups)

    def _drop_overlay(self, groups: list[Group]) -> None:
        """Drop the overlay entries of committed (or failed) groups, unless a
        later write replaced them; OVERLAY_SLICE ops per hold of the lock."""
        overlay = self.overlay
        lock = self._lock
        if self._log is not None:
            # with a log, the tail drops what LMDB holds; only what a
            # conditional group entered at submit is left to drop here
            groups = [g for g in groups if g.condition is not None]
            if not groups:
                return
            lock = self._log.tail.lock
        entries = [(ns, key, g.seq) for g in groups for ns, _dbi, key, _r in g.ops]
        for i in range(0, len(entries), OVERLAY_SLICE):
            with lock:
                overlay.drop(entries[i:i + OVERLAY_SLICE])
        with lock:
            overlay.forget_unsorted()

    def _set_failed(self, exc: BaseException, message: str) -> None:
        """The store takes no more writes, because of exc (kept as it is if
        it is a StoreFailedError); waiters in flush() and the apply thread hear."""
        error = exc if isinstance(exc, StoreFailedError) else StoreFailedError(message, exc)
        with self._lock:
            if self._failed is None:
                self._failed = error
            self._released.notify_all()
            if self._apply_thread is not None:
                self._apply_thread.wake.notify()

    def _fail(self, groups: list[Group], ops: int, exc: KVStoreError) -> None:
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
            self._queued_ops = self._queued_bytes = self._queued_durable = 0
            self._in_flight_ops += rest_ops
        self._finish(groups, ops, exc)
        if rest:
            self._finish(rest, rest_ops, StoreFailedError(
                f"not committed: an earlier commit failed ({exc}); reopen the store", exc))

    # ------------------------------------------------------------ the flusher

    def _flusher(self) -> None:
        while True:
            step = None
            with self._lock:
                while True:
                    if self._step_turn:  # handed the lead for a step (_hand_off)
                        self._step_turn = False
                        step = self._scheduled.pop(0)
                        break
                    if not self._queue:
                        self._flush_wanted = False
                        if self._closing:
                            return
                        # with a log, its work that is due goes ahead of a
                        # scheduled step, as a due commit does: a step that
                        # keeps asking to run again must not starve it
                        due = self._log_work_due() if self._log is not None else None
                        if due is not None and due <= 0:
                            step = _LOG_WORK
                            break
                        if self._scheduled and not self._leading:
                            step = self._scheduled.pop(0)
                            break
                        if due is not None:
                            self._wake.wait(due)
                            continue
                        self._wake.wait()  # _hand_off wakes us when a leader is done
                        continue
                    log_due = None
                    if self._log is not None and not self._closing:
                        # with a log, writers queued behind a leader must not
                        # starve the log's upkeep (applies every apply_interval;
                        # closing, the queue goes first: close() applies after it)
                        log_due = self._log_work_due()
                        if log_due <= 0:
                            step = _LOG_WORK
                            break
                    if (self._closing or self._flush_wanted or self._queued_ops >= self._max_ops
                            or self._queued_bytes >= self._max_bytes):
                        break
                    wait = self._queue[0].queued_at + self._interval - time.monotonic()
                    if wait <= 0:
                        break
                    if self._scheduled and not self._leading:
                        step = self._scheduled.pop(0)
                        break
                    self._wake.wait(wait if log_due is None else min(wait, log_due))
                if step is _LOG_WORK:
                    pass  # needs no lead: the log and the applier lock themselves
                elif step is not None:
                    self._leading = True  # a step holds the lead: no commit runs meanwhile
                elif self._leading:
                    # A writer is committing; it hands the queue back to us
                    # (notifying _wake) when it gives up the lead. With a log,
                    # the log's upkeep is due meanwhile too.
                    self._wake.wait(None if self._log is None else max(self._log_work_due(), 0.001))
                    continue
                else:
                    self._leading = True
            if step is _LOG_WORK:
                try:
                    self._log_work()
                except BaseException as exc:  # never die silently: fail the store
                    self._set_failed(exc, f"the background writer failed: {exc!r}; reopen the store")
                continue
            if step is not None:
                # One step between commits, holding the lead; then the lead
                # goes to a commit first, and the step again after it if it
                # has more to do.
                try:
                    more = step()
                except Exception:  # best effort: a failing step must not stop the writer
                    more = False
                if more:
                    with self._lock:
                        if step not in self._scheduled:
                            self._scheduled.append(step)
                self._hand_off(after_step=True)
                continue
            try:
                self._commit_next()
            except BaseException as exc:  # never die silently with writes queued
                with self._lock:
                    if self._failed is None:
                        self._failed = StoreFailedError(f"the background writer failed: {exc!r}", exc)
                self._fail([], 0, self._failed)
            finally:
                self._hand_off()

    # ------------------------------------------------------------ the log's upkeep

    def _log_work_due(self) -> float:
        """Under _lock, with a log: seconds until the flusher has log work
        (a sync of buffered appends); <= 0: now."""
        log = self._log
        assert log is not None
        return log.sync_due(self._closing)

    def _log_work(self) -> None:
        """In the flusher: the log's sync upkeep (Appender.sync_upkeep)."""
        log = self._log
        assert log is not None
        log.sync_upkeep()

    def checkpoint(self, timeout: float | None = None) -> None:
        """With a log: sync it and apply everything to LMDB, in the apply
        thread (so a timeout holds while another process keeps LMDB's write
        lock)."""
        applying = self._apply_thread
        assert applying is not None  # only with a log (flush)
        with self._lock:
            target = applying.request()
            self._await(lambda: applying.done >= target or self._failed is not None,
                        timeout, f"the write-ahead log was not applied within {timeout} s (another "
                                 f"process may hold LMDB's write lock); the writes are safe in the "
                                 f"log (call flush() again to wait for them)")
            failed = self._failed
        if failed is not None:
            raise failed

    # ------------------------------------------------------------ state

    @property
    def failed(self) -> StoreFailedError | None:
        return self._failed

    def pending(self) -> int:
        """Writes accepted and not yet committed (queued or being committed)."""
        with self._lock:
            return self._queued_ops + self._in_flight_ops

    def stats(self) -> dict[str, Any]:
        """This writer's counters (commitstats.py), for Store.stats()."""
        with self._lock:
            return self.counts.report(
                repr(_cause(self._failed)) if self._failed is not None else None,
                self._queued_ops + self._in_flight_ops,
                repr(self.hook_error) if self.hook_error is not None else None)

    def snapshot(self, ns: str, lo: bytes | None = None, hi: bytes | None = None) -> list[tuple[bytes, Any]]:
        """[(key, record-or-TOMBSTONE)] pending in namespace ns; only keys in
        [lo, hi) when given (then in key order)."""
        with self._lock:
            return self.overlay.snapshot(ns, lo, hi)

    def worker_stats(self) -> dict[str, Any]:
        """With a log: the apply worker's pid while it applies (else None),
        and why it stopped, if it did."""
        return self._log.handover.stats() if self._log is not None else {}

    def abandon_worker(self) -> None:
        """In a child forked from this process: the apply worker, if any,
        stays the parent's (applyworker.py)."""
        if self._log is not None:
            self._log.handover.abandon()

    def close(self) -> None:
        """Commit everything queued, stop the flusher. Raises if the store failed."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            while self._beside:  # buffered groups appended beside a leader (_append_beside)
                self._released.wait()
        if self._apply_thread is not None:
            self._apply_thread.stop()
        if self._log is not None:
            self._log.handover.stop()  # it closes the store and exits; the checkpoint below is ours
        if self._log is not None and self._failed is None:
            try:
                self._log.close()
            except KVStoreError as exc:
                self._failed = exc if isinstance(exc, StoreFailedError) else StoreFailedError(
                    f"closing: applying the write-ahead log failed ({exc}); the writes are safe in "
                    f"the log and are applied when the store is next opened", exc)
        if self._failed is not None:
            raise self._failed
