"""The map lock: LMDB's rule that no transaction may run during a resize.

LMDB lets a process change its map size (set_mapsize: a commit filled the
map, or another process grew it) only while no transaction of the process
is active. Every LMDB call of the store's process therefore holds
`MapLock` shared, and a resize holds it exclusively (environment.py); the
read hot path takes it directly (reads.py), and fork() takes it
exclusively (engine.py), so a child never inherits a call in progress.
"""

from __future__ import annotations

import threading

__all__ = ["MapLock"]


class MapLock:
    """A readers-writer lock that prefers the writer (the map resize).

    Shared: any LMDB transaction in this process. Exclusive: set_mapsize.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0  # guarded by _cond
        self._resizing = False  # guarded by _cond
        self._waiting = 0  # resizers waiting; guarded by _cond

    def acquire_shared(self) -> None:
        with self._cond:
            while self._resizing or self._waiting:
                self._cond.wait()
            self._readers += 1

    def release_shared(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers and self._waiting:
                self._cond.notify_all()

    def acquire_exclusive(self) -> None:
        with self._cond:
            self._waiting += 1
            while self._readers or self._resizing:
                self._cond.wait()
            self._waiting -= 1
            self._resizing = True

    def release_exclusive(self) -> None:
        with self._cond:
            self._resizing = False
            self._cond.notify_all()
