"""The writer's apply thread, with a write-ahead log: the log into LMDB.

With a log (store format 3), appends never touch LMDB: this thread applies
the log to LMDB when it is due (`Appender.apply_due`/`apply_upkeep`: every
apply_interval or apply_bytes), answers the checkpoints flush() asks for
(a sync and an apply), and runs the steps `Writer.schedule` hands it
(preallocation), between applies and exclusive groups. It is a thread of
its own because an apply may wait for LMDB's write lock, which another
process can hold for long, and appends (the flusher's too) must not wait
behind it.

It shares the writer's lock, under which the writer keeps its failed state
and its flush() waiters sleep (`released`); it sleeps on its own condition
of that lock, `wake`. A failed apply fails the store (`fail`); a failed
store applies nothing more and only answers checkpoints, with the failure.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .appender import Appender
    from .errors import StoreFailedError

__all__ = ["ApplyThread"]


class ApplyThread:
    """One writer's apply thread (started at once)."""

    def __init__(self, log: Appender, lock: threading.Lock, released: threading.Condition,
                 failed: Callable[[], StoreFailedError | None],
                 fail: Callable[[BaseException, str], None], name: str):
        self._log = log
        self._lock = lock
        self._released = released  # the writer's: flush() waiters sleep there
        self._failed = failed  # under lock: the writer's failure, if any
        self._fail = fail  # fail the store (takes the lock)
        self.wake = threading.Condition(lock)  # the apply thread sleeps here
        # guarded by lock: checkpoints are numbered; done is the number of
        # the last request whose checkpoint started after it was made (so
        # a flush never counts one already under way when it asked)
        self.requested = 0
        self.done = 0
        self._stop = False
        self._steps: list[Callable[[], Any]] = []  # schedule()'s steps
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def add_step(self, step: Callable[[], Any]) -> None:
        """Under lock: run step() in this thread, once (Writer.schedule)."""
        if step not in self._steps:
            self._steps.append(step)
            self.wake.notify()

    def request(self) -> int:
        """Under lock: ask for a checkpoint; it is done once done >= the
        number returned (or the store failed)."""
        self.requested += 1
        self.wake.notify()
        return self.requested

    def _run(self) -> None:
        log = self._log
        while True:
            with self._lock:
                while True:
                    if self._stop:
                        return
                    serving = self.requested
                    wanted = serving > self.done
                    if wanted or self._failed() is not None or self._steps:
                        break
                    due = log.apply_due()
                    if due <= 0:
                        break
                    self.wake.wait(due)
                failed = self._failed()
                steps, self._steps = self._steps, []
            if failed is None:
                for step in steps:  # between applies and exclusive groups (schedule)
                    try:
                        more = log.run_step(step)
                    except Exception:  # best effort, as in the flusher
                        more = False
                    if more:
                        with self._lock:
                            if step not in self._steps:
                                self._steps.append(step)
                try:
                    log.apply_upkeep(wanted)
                except BaseException as exc:  # never die silently: fail the store
                    self._fail(exc, f"applying the write-ahead log failed: {exc!r}; the writes are "
                                    f"safe in the log and are applied when the store is next "
                                    f"opened: reopen it")
            with self._lock:
                if wanted:
                    self.done = serving
                    self._released.notify_all()
                if (self._failed() is not None and not self._stop
                        and self.requested == self.done):
                    self.wake.wait()  # failed: only answer checkpoints (with the failure)

    def stop(self) -> None:
        """Stop the thread (after the applies under way) and wait for it."""
        with self._lock:
            self._stop = True
            self.wake.notify()
        thread = self._thread
        if thread.is_alive() and thread is not threading.current_thread():
            thread.join()
