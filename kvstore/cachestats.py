"""cache.stats: the read-cache counters of every process that has the store open.

A read cache (cache.py) counts its hits and misses in its process's memory.
So that `kvstore stat --watch` can show the hit ratio of every process, each
writable process with a read cache publishes its counters to a slot of a
small file beside data.mdb, and the watch reads them all:

    cache.stats := header slot{SLOTS}                (all integers little-endian)
    header      := magic "KVCSTAT1" | version u32 (1) | slot_size u32 (64) |
                   slots u32 (255) | zero{44}         64 bytes
    slot        := pid u64 | opened_ns u64 | hits u64 | revalidations u64 |
                   misses u64 | zero{24}              64 bytes, at 64 * (1 + i)

hits, revalidations and misses are `Store.stats()["cache"]`'s counters of
the process's engine since it opened (misses include the first misses the
admission doorkeeper only marks): its hit ratio is
(hits + revalidations) / (hits + revalidations + misses). opened_ns
(time.time_ns() when the slot was claimed) tells a slot reused by a later
engine from the same one.

Who owns a slot: the process holding an OFD write lock on its 64 bytes (the
kernel drops it when its holder dies or closes the file), so a slot nobody
locks is free, whatever it holds, and the next claimer takes it. A slot is
claimed at open by trying each one's lock in turn; the file is created (and
its header written) under a lock on the header's bytes. A publisher rewrites
its slot with one pwrite when a counter moved, from a thread of its own
every CACHE_STATS_INTERVAL (the read path never touches the file); a reader
reads the file twice and keeps a slot only when both reads agree (a pwrite
may be read half done). Between taking a slot's lock and its first write (a
few microseconds) a slot still holds its previous owner's counters; a
reader that looks just then counts those once more.

Not published: read-only handles (they write nothing beside the store), a
store whose directory this process may not write, a cache turned off, and
the engines past the 255th at once (they still work; the watch leaves
their reads out). `kvstore check`, `compact` and `backup` read data.mdb
only: this file is not part of a store's data, and deleting it loses
nothing but the counters (publishers holding it keep writing to the
deleted file; the next engine to open creates a new one).
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
from typing import Callable, NamedTuple

from .options import CACHE_STATS_INTERVAL  # tunable: see there

__all__ = ["STATS_FILE", "Publisher", "Slot", "read_slots"]

STATS_FILE = "cache.stats"
MAGIC = b"KVCSTAT1"
VERSION = 1
SLOT_SIZE = 64
SLOTS = 255
_HEADER = struct.Struct("<8sIII44x")
_SLOT = struct.Struct("<QQQQQ24x")
HEADER_BYTES = _HEADER.pack(MAGIC, VERSION, SLOT_SIZE, SLOTS)
FILE_SIZE = SLOT_SIZE * (1 + SLOTS)
_FLOCK = struct.Struct("hhqqi4x")  # struct flock: type, whence, start, len, pid

Counters = Callable[[], "tuple[int, int, int]"]  # (hits, revalidations, misses)


class Slot(NamedTuple):
    """A live slot of cache.stats: one engine's counters."""
    slot: int
    pid: int
    opened_ns: int
    hits: int
    revalidations: int
    misses: int


def _lock(fd: int, cmd: int, kind: int, start: int, length: int) -> bytes:
    return fcntl.fcntl(fd, cmd, _FLOCK.pack(kind, os.SEEK_SET, start, length, 0))


def _claim(path: str) -> tuple[int, int] | None:
    """(descriptor, slot index) of a slot this open file description now
    owns, the file created if missing; None when it cannot be had."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        return None
    try:
        _lock(fd, fcntl.F_OFD_SETLKW, fcntl.F_WRLCK, 0, SLOT_SIZE)
        try:
            head = os.pread(fd, SLOT_SIZE, 0)
            if not head:
                os.ftruncate(fd, FILE_SIZE)
                os.pwrite(fd, HEADER_BYTES, 0)
                head = HEADER_BYTES
        finally:
            _lock(fd, fcntl.F_OFD_SETLK, fcntl.F_UNLCK, 0, SLOT_SIZE)
        for i in range(SLOTS if head == HEADER_BYTES else 0):  # another version's, or damaged: leave it
            try:
                _lock(fd, fcntl.F_OFD_SETLK, fcntl.F_WRLCK, SLOT_SIZE * (1 + i), SLOT_SIZE)
            except OSError:
                continue  # owned by a live engine
            return fd, i
    except (OSError, AttributeError):  # AttributeError: no OFD locks on this platform
        pass
    os.close(fd)
    return None


class Publisher:
    """The slot of one engine, and the thread that keeps it current.

    `start` claims a slot and starts the thread (None: nothing to publish
    to); `close` stops it and frees the slot; `abandon` (in a forked child)
    closes the inherited descriptor only, so that the slot stays the
    parent's while it lives and is freed when it dies."""

    def __init__(self, fd: int, index: int, counters: Counters, interval: float) -> None:
        self._fd = fd
        self.index = index
        self._offset = SLOT_SIZE * (1 + index)
        self._pid = os.getpid()
        self._opened = time.time_ns()
        self._counters = counters
        self._interval = interval
        self._last: tuple[int, int, int] | None = None
        self._stop = threading.Event()
        self._write((0, 0, 0))
        self._thread = threading.Thread(target=self._run, name="kvstore-cache-stats", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, store_path: str, counters: Counters,
              interval: float = CACHE_STATS_INTERVAL) -> Publisher | None:
        claimed = _claim(os.path.join(store_path, STATS_FILE))
        if claimed is None:
            return None
        try:
            return cls(claimed[0], claimed[1], counters, interval)
        except OSError:
            os.close(claimed[0])
            return None

    def _write(self, counts: tuple[int, int, int]) -> None:
        os.pwrite(self._fd, _SLOT.pack(self._pid, self._opened, *counts), self._offset)
        self._last = counts

    def publish(self) -> None:
        """Write the counters to the slot, if they moved since the last write."""
        counts = self._counters()
        if counts != self._last:
            self._write(counts)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.publish()
            except OSError:
                return  # the file system refuses: the counters stay as last written

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        self.abandon()

    def abandon(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_slots(store_path: str) -> list[Slot] | None:
    """The live slots of the store's cache.stats ([] when it has none or
    no file); None when the file is not one this version reads."""
    try:
        fd = os.open(os.path.join(store_path, STATS_FILE), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    try:
        first = os.pread(fd, FILE_SIZE, 0)
        if not first:
            return []  # being created
        if first[:SLOT_SIZE] != HEADER_BYTES or len(first) < FILE_SIZE:
            return None
        out = []
        for i in range(SLOTS):
            at = SLOT_SIZE * (1 + i)
            answer = _lock(fd, fcntl.F_OFD_GETLK, fcntl.F_RDLCK, at, SLOT_SIZE)
            if _FLOCK.unpack(answer)[0] == fcntl.F_UNLCK:
                continue  # nobody owns it
            raw = first[at:at + SLOT_SIZE]
            for _ in range(3):
                again = os.pread(fd, SLOT_SIZE, at)
                if again == raw:
                    break
                raw = again  # a pwrite was under way: read it once more
            pid, opened, hits, reval, misses = _SLOT.unpack(raw)
            if pid:
                out.append(Slot(i, pid, opened, hits, reval, misses))
        return out
    except (OSError, AttributeError):
        return None
    finally:
        os.close(fd)
