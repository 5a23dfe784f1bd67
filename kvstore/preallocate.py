"""Preallocation: zeroed room kept ready in data.mdb past LMDB's last page.

LMDB grows data.mdb as it writes new pages, so a sync that follows also
changes the file's size (a metadata update for the file system). With
Options.preallocate, `Preallocator` keeps zero-filled, synced room past
the used pages: LMDB then writes its new pages into space that is already
allocated and initialised, and its syncs stop changing the file's size.

It runs through the writer (engine.py): after each commit a hook asks
`space_low()`, and when the room fell below half, `Writer.schedule(step)`
runs `step()` between commits (with a log, in the apply thread), one
FILL_STEP at a time, until the room is back.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import lmdb

from .errors import KVStoreError
from .options import FILL_STEP, PREALLOCATE_MAX, PREALLOCATE_MIN  # tunables: see there

if TYPE_CHECKING:
    from .environment import Environment

__all__ = ["Preallocator"]


def _slack(used: int) -> int:
    """The zeroed room the preallocator keeps past the used pages."""
    return min(max(used // 8, PREALLOCATE_MIN), PREALLOCATE_MAX)


class Preallocator:
    """The zeroed room of one environment's data.mdb (Options.preallocate)."""

    def __init__(self, env: Environment) -> None:
        self._env = env
        self._psize = env.env.stat()["psize"]
        # bytes of data.mdb known allocated; -1: not preallocating
        self._allocated = (os.path.getsize(os.path.join(env.path, "data.mdb"))
                           if env.options.preallocate and not env.readonly else -1)

    def space_low(self) -> bool:
        """After a commit: is the zero-filled space past LMDB's last page
        below half of what step() keeps ready?"""
        if self._allocated < 0:
            return False
        # Under the map lock, as every LMDB call: py-lmdb counts a call in
        # progress, and a fork() meanwhile (which takes the lock exclusive)
        # would leave the child an environment that never closes.
        env = self._env
        env.map_lock.acquire_shared()
        try:
            used = (env.env.info()["last_pgno"] + 1) * self._psize
        except lmdb.Error:
            return False  # ask again after the next commit
        finally:
            env.map_lock.release_shared()
        return used + _slack(used) // 2 > self._allocated

    def step(self) -> bool:
        """Zero-fill data.mdb past the last page LMDB uses, toward _slack of
        room, and sync it: one step of at most FILL_STEP bytes in one write
        transaction; True if there is more to fill. The transaction holds
        LMDB's write lock, so no process writes pages meanwhile, and the
        fill starts at the end of the file or of the used pages, whichever
        is further: it never touches a page LMDB uses. Best effort: an
        error (disk full) stops filling and disables it for this process."""
        if self._allocated < 0:
            return False
        try:
            return self._env.write(self._fill_step, "preallocating disk space")
        except (KVStoreError, OSError):
            self._allocated = -1
            return False

    def _fill_step(self, _txn: lmdb.Transaction) -> bool:
        env = self._env
        info = env.env.info()  # inside our write transaction: nobody commits meanwhile
        used = (info["last_pgno"] + 1) * self._psize
        target = min(used + _slack(used), info["map_size"])
        fd = os.open(os.path.join(env.path, "data.mdb"), os.O_WRONLY | os.O_CLOEXEC)
        try:
            start = max(os.fstat(fd).st_size, used)
            end = min(target, start + FILL_STEP)
            if end - start >= self._psize:
                zeros = bytes(min(FILL_STEP, 256 * 1024))
                for at in range(start, end, len(zeros)):
                    os.pwrite(fd, zeros[:end - at], at)
                os.fdatasync(fd)
            self._allocated = max(start, end)
        finally:
            os.close(fd)
        return end < target
