"""How the writer's groups reach the write-ahead log (writer.py's log path).

The writer decides who writes and when (its queue and leader); this part
knows how, with a log (store format 3: wal.py, tail.py, applier.py):

- `append_alone(group)`: one group, its caller leading alone: one record,
  validated first if the group is a transaction's (txn.Validate); the
  writer then `sync`s it if durable. Anything out of the ordinary raises
  with nothing appended: the writer then gives the group to `write`,
  which meets it again and answers it.
- `write(groups)`: what a leader took from the queue: plain groups as
  consecutive records, synced once if one of them is durable; a validated
  group alone; an exclusive group (a metadata step, a conditional group, a
  group with a `before` step) written into LMDB by the applier after the
  whole log, in one transaction, decided against the latest state. A
  large group is exclusive too (`exclusive`): over half of log_size it
  would not fit in the log, and from an eighth of max_map_size it may not
  fit in the map, which must fail that group alone (MapFullError) rather
  than an apply of acknowledged writes (which fails the store).
- `sync_due()` / `sync_upkeep()`: the flusher's share: a sync of buffered
  appends within flush_interval of seeing them (anyone's: a process that
  died leaves some).
- `apply_due()` / `apply_upkeep()`: the writer's apply thread's: an apply
  every apply_interval or apply_bytes, or a checkpoint flush() asked for.
  In a thread of its own, as an apply may wait for LMDB's write lock (held
  by another process) while appends must not.
- `close()`: everything synced and applied, the log's space reused.

A log that fills up is applied by the writer that found it full; an index
stuck half changed is recovered and the append tried again.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from . import killpoints
from .applyworker import Handover
from .errors import StoreFailedError
from .environment import range_items
from .group import Step
from .wal import LogFull, append_failure, encode_group, sync_failure

if TYPE_CHECKING:
    from .applier import Applier
    from .environment import Environment
    from .group import Group
    from .options import Options
    from .tail import Tail

_T = TypeVar("_T")

__all__ = ["Appender"]


class Appender:
    """The log path of one process's writer."""

    def __init__(self, env: Environment, options: Options, tail: Tail, applier: Applier):
        self._env = env
        self.tail = tail
        self._applier = applier
        self._interval: float = options.flush_interval
        self._apply_interval: float = options.apply_interval
        self._apply_bytes: int = options.apply_bytes
        self._last_apply = time.monotonic()
        self._unsynced_since = 0.0  # when this process first saw records past the last sync; 0: none
        # groups from this size on are written into LMDB directly (exclusive)
        self._large = min(tail.log.max_size // 2 + 1, options.max_map_size // 8)
        # a worker process may hold the periodic applies (applyworker.py)
        self.handover = Handover(env.path, options)
        self._retry_at = 0.0  # the apply lock was busy: try again from then on

    def exclusive(self, group: Group) -> bool:
        """A group the applier writes into LMDB itself (_exclusive): one
        with a step or a condition to decide there, or a large one (the
        module docstring)."""
        return (group.before is not None or group.nbytes >= self._large
                or (group.condition is not None and not hasattr(group.condition, "validate")))

    def alone(self, group: Group) -> bool:
        """A group a leader takes by itself: exclusive or validated."""
        return group.condition is not None or self.exclusive(group)

    # ------------------------------------------------------------ appending

    def append_alone(self, group: Group) -> tuple[int, int, bool] | None:
        """Append group, its caller leading alone. Returns None when its
        transaction's reads changed (nothing written), else (gen, end,
        durable): sync(gen, end) next if durable. Raises if anything is out
        of the ordinary (too large, the log full, an error): nothing was
        appended then."""
        if group.nbytes >= self._large:
            raise LogFull()  # written into LMDB directly (write)
        if group.condition is None:
            appended = self.tail.append_one(group, encode_group(group.ops))
        else:
            appended = self.tail.append_one(group, lambda: encode_group(group.ops), self._validator(group))
        if appended is None:
            return None
        end, gen, _seq = appended
        self._appended()
        durable = group.durable if group.condition is None else getattr(group.condition, "durable", True)
        return gen, end, durable

    def write(self, groups: list[Group], defer_sync: bool = False) -> tuple[int, tuple[int, int] | None]:
        """Write the groups a leader took (one, if exclusive or validated).
        Returns (the lsn of the last record, 0 for a transaction whose reads
        changed, 1 for an exclusive group; with defer_sync, the (gen, end)
        the caller must sync() for plain groups of which one is durable,
        else None). Raises DiskFullError or MapFullError (nothing written:
        these groups fail, the store goes on) or another KVStoreError (fail
        the store)."""
        first = groups[0]
        if self.exclusive(first):
            self._exclusive(first)
            return 1, None
        if first.condition is not None:
            return self._append_validated(first), None
        return self._append(groups, defer_sync)

    def _appended(self) -> None:
        if killpoints.armed:
            killpoints.reached("log-after-append")
        if not self._unsynced_since:
            self._unsynced_since = time.monotonic()

    def _to_log(self, append: Callable[[], _T]) -> _T:
        """append() (a Tail append); when the log is full, apply it to LMDB
        (its space is reused) and try again; when the index is stuck half
        changed, recover it and try again. An OSError: append_failure."""
        tail = self.tail
        full = False
        for _attempt in range(10):
            try:
                return append()
            except LogFull:
                full = True
                self._applier.checkpoint()
            except tail.Stuck:
                full = False
                self._applier.recover()
            except OSError as exc:
                raise append_failure(exc, self._env.path) from None
        if full:  # other processes kept appending faster than it was applied
            raise StoreFailedError(
                f"the write-ahead log stays full after applying it to LMDB (log_size "
                f"{tail.log.max_size} bytes); reopen the store with a larger log_size")
        raise StoreFailedError("the write-ahead log's index stays half changed after recovering it "
                               "ten times (processes keep dying inside changes of it); reopen the store")

    def _append(self, groups: list[Group], defer_sync: bool) -> tuple[int, tuple[int, int] | None]:
        tail = self.tail
        payloads = [encode_group(g.ops) for g in groups]
        if len(groups) == 1:
            one = self._to_log(lambda: tail.append_one(groups[0], payloads[0]))
            assert one is not None  # no check: always written
            end, gen, last = one
        else:
            # in runs that fit in an empty log (each group does: see exclusive)
            limit = tail.log.max_size // 2
            start = 0
            while start < len(groups):
                stop, size = start + 1, len(payloads[start])
                while stop < len(groups) and size + len(payloads[stop]) <= limit:
                    size += len(payloads[stop])
                    stop += 1
                run, parts = groups[start:stop], payloads[start:stop]
                end, gen, last = self._to_log(lambda: tail.append(run, parts))
                start = stop
        self._appended()
        if any(g.durable for g in groups):
            if defer_sync:
                return last, (gen, end)
            self.sync(gen, end)
        return last, None

    def _validator(self, group: Group) -> Callable[[], bool]:
        """The check a validated group (txn.Validate) makes at its append,
        under the append lock once caught up: its condition's
        validate(get, scan) against every acknowledged write (the overlay,
        then LMDB); True: append it. Sets the condition's `conflicts`. A
        condition that computes the group's ops (rmw.Compute) may leave
        none: nothing to append."""
        condition = group.condition
        read = self._env.read
        overlay = self.tail.overlay

        def get(ns: str, key: bytes) -> Any:
            entry = overlay.get(ns, {}).get(key)
            if entry is not None:
                return entry[1]
            dbi = condition.dbis.get(ns)
            if dbi is None:
                return None
            return read(lambda txn: _copy(txn.get(key, db=dbi)))

        def scan(ns: str, lo: bytes | None, hi: bytes | None) -> list[tuple[bytes, Any]]:
            dbi = condition.dbis.get(ns)
            found = {} if dbi is None else dict(read(lambda txn: range_items(txn, dbi, lo, hi)))
            for key, record in overlay.snapshot(ns, lo, hi):  # under tail.lock: append_one holds it
                if record is None:
                    found.pop(key, None)
                else:
                    found[key] = record
            return sorted(found.items())

        def check() -> bool:
            condition.conflicts = condition.validate(get, scan)
            return not condition.conflicts and bool(group.ops)

        return check

    def _append_validated(self, group: Group) -> int:
        """Append a group whose condition decides, at the append, against
        the latest state (every acknowledged write: the overlay after
        catching up, then LMDB), whether it is written: a transaction
        (txn.Validate: `validate(get, scan)` sets `conflicts`). The append
        lock is held from the check to the write, so nothing can change in
        between, in any process. Returns the record's lsn, 0 if not written."""
        tail = self.tail
        check = self._validator(group)
        appended = self._to_log(lambda: tail.append_one(group, lambda: encode_group(group.ops), check))
        if appended is None:
            return 0  # its reads changed: nothing written (the caller raises ConflictError)
        end, gen, last = appended
        self._appended()
        if getattr(group.condition, "durable", True):
            self.sync(gen, end)
        return last

    def sync(self, gen: int, end: int) -> None:
        """Make the log durable up to end (unless a sync covered it already)."""
        log = self.tail.log
        st = log.state()
        if st is not None and st.gen == gen and st.synced >= end:
            return
        try:
            log.sync(end, gen)
        except OSError as exc:
            raise sync_failure(exc, "syncing the write-ahead log") from None
        if killpoints.armed:
            killpoints.reached("log-after-sync")
        self._unsynced_since = 0.0

    def _exclusive(self, group: Group) -> None:
        """Write group into LMDB directly, after the whole log, in one
        transaction (see applier.py): decided against the latest state."""
        self._applier.checkpoint(_Exclusive(group), extra=[group])
        self._last_apply = time.monotonic()

    # ------------------------------------------------------------ upkeep

    def sync_due(self, closing: bool) -> float:
        """Seconds until sync_upkeep() has work (a sync of buffered appends,
        anyone's); <= 0: now. The writer's flusher asks under its lock."""
        if closing:
            return 0.0
        now = time.monotonic()
        due = self._interval
        st = self.tail.log.state()
        if st is None:
            return 0.0
        if st.synced < st.end and not self._unsynced_since:
            # appended by anyone (a process that died, too): synced within
            # flush_interval of being seen, whoever appended it
            self._unsynced_since = now
        if self._unsynced_since:
            due = min(due, self._unsynced_since + self._interval - now)
        return due

    def sync_upkeep(self, now_wanted: bool = False) -> None:
        """In the flusher: sync the log's buffered appends once they waited
        flush_interval (now_wanted: at once)."""
        st = self.tail.log.state()
        if st is not None and (now_wanted or (self._unsynced_since
                                              and time.monotonic() - self._unsynced_since >= self._interval)):
            if st.synced < st.end:
                self.sync(st.gen, st.end)
            self._unsynced_since = 0.0

    def apply_due(self) -> float:
        """Seconds until apply_upkeep() has work; <= 0: now. At least every
        apply_interval: records appended since (by any process) are seen
        and applied even with a long flush_interval; at once when
        apply_bytes wait."""
        st = self.tail.log.state()
        if st is None:
            return 0.0
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            return wait
        unapplied = st.end - st.applied
        if self.handover.serving():
            return 0.0 if unapplied >= self.handover.behind else self._apply_interval  # the worker's
        if unapplied >= self._apply_bytes:
            return 0.0
        if unapplied:
            return self._last_apply + self._apply_interval - time.monotonic()
        return self._apply_interval

    def apply_upkeep(self, wanted: bool) -> None:
        """In the writer's apply thread: apply the log to LMDB when it is
        due, if no other process is applying. wanted: flush() asked for a
        checkpoint: sync everything first, and wait for another process's
        apply to end rather than skip."""
        if wanted:
            self.sync_upkeep(now_wanted=True)
        st = self.tail.log.state()
        if st is None or (not wanted and self.handover.holds(st.applied, st.end - st.applied)):
            return
        if wanted or st.end - st.applied >= self._apply_bytes or (
                st.end > st.applied and time.monotonic() - self._last_apply >= self._apply_interval):
            began = time.monotonic()
            if not self._applier.checkpoint(block=wanted):
                # another apply holds the lock (the worker's, another
                # process's): not again before a while, never in a spin
                self._retry_at = began + min(0.01, self._apply_interval)
                return
            self._last_apply = time.monotonic()
            after = self.tail.log.state()
            if after is not None:
                self.handover.applied_here(after.applied, None if wanted else self._last_apply - began)

    def run_step(self, step: Callable[[], _T]) -> _T:
        """step() holding the apply lock: between applies and exclusive
        groups, in every process (Writer.schedule's steps, with a log)."""
        with self._applier.held():
            return step()

    def close(self) -> None:
        """Everything into LMDB, the log's space reused: a closed store's
        data.mdb holds every write (LMDB's own tools see them all)."""
        st = self.tail.log.state()
        if st is not None and st.synced < st.end:
            self.sync(st.gen, st.end)
        self._applier.checkpoint()


class _Exclusive:
    """An exclusive group's step in the applier's transaction: its before
    step, then its condition's apply or its ops. `counted`: a commit of
    writes (commit_seq, stats), which a metadata step (Writer.run) alone
    is not unless it says so."""

    __slots__ = ("group", "counted")

    def __init__(self, group: Group):
        self.group = group
        condition = group.condition
        self.counted = type(condition) is not Step or condition.count

    def __call__(self, txn: Any) -> None:
        group = self.group
        if group.before is not None:
            group.before(txn)
        if group.condition is not None:
            group.condition.apply(txn, group.ops)
            return
        for _ns, dbi, key, record in group.ops:
            if record is None:
                txn.delete(key, db=dbi)
            else:
                txn.put(key, record, db=dbi)


def _copy(record: Any) -> bytes | None:
    return None if record is None else bytes(record)
