"""The checkpoint: the log's records applied to LMDB in large, synced transactions.

Any process may apply; the apply lock (an flock on the log file's own
descriptor, plus a thread lock) lets one at a time. One apply:

1. reads the index (wal.py): records from `applied` to `end`;
2. in one LMDB write transaction: skips what LMDB's APPLIED says it holds
   already (an applier that died after its commit and before it published
   it), writes every op of the rest, runs the exclusive step if there is
   one (below), counts a commit of writes (commit_seq), and writes APPLIED
   = (gen, end, checksum) -- so each record is applied exactly once;
3. commits (LMDB synced: sync and metasync stay on), then publishes
   `applied` in the index, under the append lock; if nothing was appended
   meanwhile, the log starts its next generation (its space is reused);
4. runs the commit hooks (cache invalidation, preallocation, TTL metadata).

The exclusive step is the writer's way to write LMDB directly: metadata
steps (`Writer.run`), conditional groups (TTL sweeps and refreshes) and
groups carrying a `before` step are decided and written in the same
transaction that applies the whole log before them, so they see the
latest state (LMDB plus every acknowledged write), in log order.

`recover()` rebuilds the index from the log and APPLIED when the index is
from another boot, missing, or stuck half changed (a process died inside a
change); a writable open then applies everything (`checkpoint`) before
its first read returns.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from . import killpoints
from .errors import CorruptionError
from .group import Group
from .layout import APPLIED_KEY
from .wal import HEADER_SIZE, Applied, decode_ops, seed

if TYPE_CHECKING:
    from .environment import Environment
    from .wal import Log, State

__all__ = ["Applier"]


class Applier:
    def __init__(self, env: Environment, log: Log):
        self._env = env
        self._log = log
        self._lock = threading.Lock()  # with the flock: one apply at a time
        self.hooks: list[Callable[[list[Group]], Any]] = []  # after each commit (Writer.on_commit's list)
        self.applies = 0
        self.records_applied = 0
        self.hook_error: Exception | None = None

    # ------------------------------------------------------------ the lock

    def _acquire(self, block: bool) -> bool:
        if not self._lock.acquire(blocking=block):
            return False
        try:
            fcntl.flock(self._log.fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            self._lock.release()
            return False
        except BaseException:
            self._lock.release()
            raise

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The apply lock, for work that must not overlap an apply or an
        exclusive step (the writer's scheduled steps: preallocation)."""
        self._acquire(True)
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        try:
            fcntl.flock(self._log.fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()

    # ------------------------------------------------------------ recovery

    def marker(self, txn: Any = None) -> tuple[int, int, int]:
        """LMDB's APPLIED: (gen, position, checksum)."""
        env = self._env
        if txn is None:
            raw = env.read(lambda t: t.get(APPLIED_KEY, db=env.meta_db))
            raw = None if raw is None else bytes(raw)
        else:
            raw = txn.get(APPLIED_KEY, db=env.meta_db)
        if raw is None or len(raw) != Applied.size:
            raise CorruptionError(f"{env.path!r}: the store's record of how far its write-ahead log "
                                  f"is applied is missing or damaged; restore it from a backup")
        return Applied.unpack(raw)

    def recover(self) -> bool:
        """Rebuild the index if it cannot be trusted, then apply what it holds
        and start the log afresh; True if it was rebuilt. Holds the apply
        lock throughout, so no apply moves APPLIED meanwhile.

        Starting afresh clears the log's file (`Log.wipe`): after a power
        loss it can hold records past the end the rebuild found, of this
        generation or of an abandoned incarnation of the next one (whose
        first record the power loss tore, so that the next generation gets
        the same number again). A new record byte for byte equal to the
        torn one would chain on to them, and a write the power loss took
        would come back at the next recovery."""
        log = self._log
        self._acquire(True)
        try:
            log.lock()
            try:
                if log.index_valid():
                    return False
                log.refresh_size()
                gen, pos, chain = self.marker()
                log.rebuild(gen, pos, chain)
            finally:
                log.unlock()
            # a log this open created holds nothing of an earlier incarnation
            self._apply(None, True, wipe=not log.created)
            return True
        finally:
            self._release()

    # ------------------------------------------------------------ applying

    def checkpoint(self, step: Callable[[Any], Any] | None = None, *, block: bool = True, reset: bool = True,
                   extra: Iterable[Group] = ()) -> bool:
        """Apply the log to LMDB (and run step(txn) after it, in the same
        transaction); see the module docstring. Returns False when block is
        False and another apply holds the lock. step's result is the
        caller's to fetch from the step itself; extra: the groups step
        writes, for the commit hooks."""
        if not self._acquire(block):
            return False
        try:
            self._apply(step, reset, extra)
        finally:
            self._release()
        return True

    def _apply(self, step: Callable[[Any], Any] | None, reset: bool, extra: Iterable[Group] = (),
               wipe: bool = False) -> None:
        log = self._log
        env = self._env
        st = log.state()
        if st is None or not log.index_valid():
            st = self._recovered_state()
        if st.end > log.size:
            log.refresh_size()
        records = []  # (end, checksum, ops)
        for end, checksum, payload in log.records(st.gen, st.applied, st.applied_sum, st.end):
            records.append((end, checksum, decode_ops(payload)))
        if not records and step is None:
            if reset and (st.end > HEADER_SIZE or wipe):
                self._publish(st.end, st.applied_sum, reset, wipe)
            return
        end, checksum = (records[-1][0], records[-1][1]) if records else (st.applied, st.applied_sum)
        dbis = {}
        for _end, _sum, ops in records:
            for ns, _key, _record in ops:
                if ns not in dbis:
                    dbis[ns] = env.dbi(ns, create=False)
        groups: list[Group] = []
        nrecords = 0

        def write(txn: Any) -> None:
            nonlocal nrecords
            groups.clear()
            gen, pos, _chain = self.marker(txn)
            done = pos if gen == st.gen else HEADER_SIZE
            n = 0
            total = sum(len(ops) for e, _s, ops in records if e > done)
            half = max(total // 2, 1) if killpoints.armed else -1  # every apply of ops reaches it
            applied = []  # every op written, as one group for the commit hooks
            put = txn.put
            handles = dict(dbis)  # plus those opened in this transaction (gone if it is replayed)
            nrecords = 0
            for rec_end, _sum, ops in records:
                if rec_end <= done:
                    continue  # applied by an applier that died before publishing it
                nrecords += 1
                for ns, key, record in ops:
                    dbi = handles.get(ns)
                    if dbi is None:
                        dbi = handles[ns] = env.open_db_in(txn, ns)
                    if record is None:
                        txn.delete(key, db=dbi)
                    else:
                        put(key, record, db=dbi)
                    applied.append((ns, dbi, key, record))
                    n += 1
                    if n == half:
                        killpoints.reached("mid-apply")
            if applied:
                groups.append(Group(applied, False, 0))
            if step is not None:
                step(txn)
            if n or (step is not None and getattr(step, "counted", False)):
                env.bump_seq(txn)
                if killpoints.armed:
                    killpoints.reached("before-commit")
            txn.put(APPLIED_KEY, Applied.pack(st.gen, end, checksum), db=env.meta_db)

        env.write(write, "applying the write-ahead log")
        env.adopt_new_dbis()
        counted = bool(groups) or (step is not None and getattr(step, "counted", False))
        if killpoints.armed and counted:
            killpoints.reached("after-commit")
        self.applies += 1
        self.records_applied += nrecords
        self._publish(end, checksum, reset, wipe)
        if killpoints.armed and groups:
            killpoints.reached("after-apply")
        if extra:
            groups = groups + list(extra)
        for hook in self.hooks:
            try:
                hook(groups)
            except Exception as exc:  # the apply is done: report, do not undo
                self.hook_error = exc

    def _publish(self, end: int, checksum: int, reset: bool, wipe: bool = False) -> None:
        log = self._log
        log.lock()
        try:
            st = self._state_locked()
            if st.applied < end:
                log.publish(st.gen, st.end, st.end_sum, st.synced, end, checksum)
                st = self._state_locked()
            if reset and st.end == st.applied:
                if st.end > HEADER_SIZE:
                    log.reset(st)
                if wipe:  # every record applied, none appended since: nothing in the file is needed
                    log.wipe()
        finally:
            log.unlock()

    def _recovered_state(self) -> State:
        """The index's state, rebuilt first if it cannot be trusted (takes
        the append lock)."""
        self._log.lock()
        try:
            return self._state_locked()
        finally:
            self._log.unlock()

    def _state_locked(self) -> State:
        """Holding the append lock: the index's state; rebuilt from the log
        and APPLIED first when a writer died inside a change of it (or it is
        from another boot)."""
        log = self._log
        st = log.state()
        if st is None or not log.index_valid():
            log.refresh_size()
            gen, pos, chain = self.marker()
            log.rebuild(gen, pos, chain)
            st = log.state()
        if st is None:  # a rebuilt index is whole: nobody else changes it under the lock
            raise CorruptionError(f"{self._env.path!r}: the write-ahead log's index stays half changed "
                                  f"after a rebuild; close every process using the store and open it again")
        return st

    def stats(self) -> dict[str, int]:
        return {"applies": self.applies, "records_applied": self.records_applied}


def initial_marker() -> bytes:
    """APPLIED for a log that was just created: generation 1, nothing applied."""
    return Applied.pack(1, HEADER_SIZE, seed(1))
