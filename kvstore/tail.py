"""The log's unapplied tail as this process sees it: what reads find before LMDB.

Every write any process acknowledged and LMDB does not hold yet is a record
of the log (wal.py) between the index's `applied` and `end`. This process
keeps those records' writes in the overlay (overlay.py), in log order, so
that a read finds the newest write of a key there before it looks in the
read cache or LMDB:

- `refresh()`, on every read: one memory read of the index's counter; when
  it moved, `catch_up()` reads the records appended since (by any process)
  into the overlay, and drops the entries LMDB now holds.
- `append()`, by the writer's leader: under the log's append lock, catch up
  first (so the overlay stays in log order), write the leader's groups as
  records, and enter their writes.

An entry's seq is its record's log sequence number (`lsn`: generation and
end position), so an entry is dropped once the index says LMDB holds its
record, unless a newer write of the key replaced it. Entries are dropped
only after LMDB committed them, so a read that misses the overlay finds
them in LMDB. A new generation of the log means every record of the old
one is in LMDB: its entries all go.

`lock` guards the overlay's changes and the fields below; reads look
entries up without it (single dict operations). The writer's own lock is
never taken while holding it.
"""

from __future__ import annotations

import collections
import struct
import threading
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .group import Group
    from .wal import Log

from .errors import CorruptionError
from .overlay import Overlay
from .wal import LogFull, State, decode_ops

__all__ = ["Tail", "lsn", "LogFull"]


def lsn(gen: int, pos: int) -> int:
    """A record's place in the log across generations (its end position)."""
    return gen << 40 | pos


class _Stuck(Exception):
    """The index is stuck half changed: recover, then append again (internal)."""


class Tail:
    """See the module docstring. `recover` is called, holding nothing, when
    the index is stuck half changed (a writer died in the middle of one)."""

    Stuck = _Stuck  # what _append raises for that: the appender recovers, then appends again

    def __init__(self, log: Log, recover: Callable[[], Any]):
        self.log = log
        self.overlay = Overlay()
        self.lock = threading.Lock()
        self._recover = recover
        self._counter = partial(struct.Struct("<Q").unpack_from, log.view, 32)
        # guarded by lock: how far this process has read the log
        self.seen = -1  # the index counter caught up to
        self._state: State | None = None  # the index at counter `seen` (read or published here)
        self.gen = 0
        self.pos = 0
        self.chain = 0
        self.applied = 0  # lsn up to which LMDB holds the records
        self._entries: collections.deque[tuple[int, list[tuple[str, bytes, int]]]] = collections.deque()
        self.ingested = 0  # records of other processes read (stats)

    # ------------------------------------------------------------ reads

    def refresh(self) -> None:
        """Catch up if anything changed in the log since the last look."""
        if self._counter()[0] != self.seen:
            self.catch_up()

    def catch_up(self) -> None:
        with self.lock:
            self._catch_up(None)

    def _catch_up(self, st: State | None) -> None:
        """Holding lock: read what was appended since, drop what was
        applied. st: the index state when the caller holds the append lock."""
        log = self.log
        for _ in range(100):
            current = st or log.state()
            if current is None:
                self.lock.release()
                try:
                    self._recover()
                finally:
                    self.lock.acquire()
                continue
            try:
                self._read(current)
                return
            except CorruptionError:
                if st is not None:
                    raise
                # the log may have been reset under our read: look again
                again = log.state()
                if again is not None and again.gen == current.gen and again.counter == current.counter:
                    raise
        raise CorruptionError(f"the write-ahead log index of {log.path} keeps changing under a "
                              f"reader; reopen the store")

    def _read(self, st: State) -> None:
        if st.gen != self.gen:
            # a new generation: the old one is all in LMDB
            self._drop_all()
            self.gen = st.gen
            self.pos, self.chain = st.applied, st.applied_sum
        if st.applied > self.pos:  # records this process never read, and LMDB holds already
            self.pos, self.chain = st.applied, st.applied_sum
        if st.end > self.pos:
            log = self.log
            if st.end > log.size:
                log.refresh_size()
            gen = st.gen
            for end, checksum, payload in log.records(gen, self.pos, self.chain, st.end):
                seq = lsn(gen, end)
                ops = [(ns, None, key, record) for ns, key, record in decode_ops(payload)]
                self.overlay.enter(seq, ops)
                self._entries.append((seq, [(ns, key, seq) for ns, _d, key, _r in ops]))
                self.pos, self.chain = end, checksum
                self.ingested += 1
        self._drop_applied(lsn(st.gen, st.applied))
        self.seen, self._state = st.counter, st

    def _drop_applied(self, upto: int) -> None:
        if upto <= self.applied:
            return
        self.applied = upto
        entries = self._entries
        drop = self.overlay.drop
        while entries and entries[0][0] <= upto:
            drop(entries.popleft()[1])
        self.overlay.forget_unsorted()

    def _drop_all(self) -> None:
        drop = self.overlay.drop
        while self._entries:
            drop(self._entries.popleft()[1])

    # ------------------------------------------------------------ the writer

    def append(self, groups: list[Group], payloads: list[bytes]) -> tuple[int, int, int]:
        """Write the groups' payloads as records, in order, after whatever
        other processes appended; enter their writes. Returns (end position,
        generation, lsn of the last record). Raises LogFull when they do not
        fit (nothing written) and OSError when the write fails (nothing
        published)."""
        appended = self._append(groups, lambda st: self.log.append(st, payloads))
        assert appended is not None  # no check: always written
        return appended

    def append_one(self, group: Group, payload: bytes | Callable[[], bytes],
                   check: Callable[[], bool] | None = None) -> tuple[int, int, int] | None:
        """append() of one group, the common case. check: None, or a
        function called once caught up, under the append lock (the state
        cannot move meanwhile): False appends nothing and returns None (a
        transaction whose reads changed: txn.Validate). payload: the
        record's bytes, or a function making them after check (which may
        decide the group's ops: rmw.Compute)."""
        def write(st: State) -> tuple[int, int, tuple[int]]:
            data = payload() if callable(payload) else payload
            end, checksum = self.log.append_one(st, data)
            return end, checksum, (end,)

        return self._append((group,), write, check)

    def _append(self, groups: tuple[Group, ...] | list[Group], write: Callable[[State], Any],
                check: Callable[[], bool] | None = None) -> tuple[int, int, int] | None:
        log = self.log
        with self.lock:
            log.lock()
            try:
                st = self._state if self._counter()[0] == self.seen else None
                if st is None:  # the index changed since this process last knew it
                    st = log.state()
                    if st is None:
                        raise _Stuck()
                    if st.counter != self.seen:
                        self._catch_up(st)
                if check is not None and not check():
                    return None
                end, checksum, ends = write(st)
                gen = st.gen
                for g, rec_end in zip(groups, ends):
                    seq = lsn(gen, rec_end)
                    self.overlay.enter(seq, g.ops)
                    self._entries.append((seq, [(ns, key, seq) for ns, _d, key, _r in g.ops]))
                self.pos, self.chain = end, checksum
                # our publish was the only change under the lock: the index
                # is st moved to the new end (kept, so that the next append
                # under an unmoved counter need not read it again)
                st.counter += 2
                st.end, st.end_sum = end, checksum
                self.seen, self._state = st.counter, st
            finally:
                log.unlock()
        return end, gen, lsn(gen, end)

    def unsynced(self) -> bool:
        st = self.log.state()
        return st is not None and st.synced < st.end

    def stats(self) -> dict[str, int]:
        st = self.log.state()
        out = {"log_bytes": self.log.size, "log_records_read": self.ingested}
        if st is not None:
            out.update(log_generation=st.gen, log_end=st.end, log_unapplied_bytes=st.end - st.applied,
                       log_unsynced_bytes=st.end - st.synced)
        return out

