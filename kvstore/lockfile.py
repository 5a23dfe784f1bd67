"""lock.mdb, and the lock kvstore holds on data.mdb: two file checks at open.

LMDB coordinates processes through lock.mdb: its header holds the last
committed txnid (MDB_txninfo.mti_txnid), and LMDB holds a lock on its byte 0
while an environment is open. Two ways of losing a store go through it:

- An emptied data.mdb: LMDB takes a zero-length data file for a new
  environment. `check_empty_data_file` refuses one whose lock file counted
  commits (it held a store), and lets a creation cut short finish.
- A deleted or replaced lock.mdb: the next opener would get a fresh one, and
  two writers would each hold "the" write lock. Every kvstore process holds
  an OFD read lock on data.mdb while it has the store open
  (`hold_data_file`); `check_not_replaced` refuses to open when data.mdb is
  held but lock.mdb is missing or unlocked. A process holding the old lock
  file finds out at its next write (Environment._check_lock_file).

A SIGKILL can make LMDB's write lock sleep for ever: it is a robust
process-shared mutex, and when the waiter its holder woke is killed before
it takes the lock, the other waiters are never woken (the next process to
take the free lock does not know they sleep). `WriteGate` keeps them from
sleeping there: every kvstore write transaction first takes a lock the
kernel releases when its holder dies (an OFD lock on byte 3 of data.mdb,
and a thread lock), so at most one process waits for LMDB's.

A third concern: reading a store whose lock.mdb this process may not write
(another user's store). LMDB's readers register in lock.mdb, so that writers
do not reuse the pages they read; without write access a reader can only
open with LMDB's lock off, which is safe only while no writer is active.
`hold_lockless_read` decides that, and `check_no_lockless_reader` keeps
kvstore writers out meanwhile (see there). (A read-only file system needs
none of this: LMDB reads it without a lock file, as nobody can write.)
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
import tempfile
import threading
import time

import lmdb

from .errors import (FormatError, LockFileReplacedError, StoreAccessError, StoreInUseError,
                     StoreNotFoundError)

__all__ = ["check_empty_data_file", "check_not_replaced", "hold_data_file", "hold_lockless_read",
           "check_no_lockless_reader", "WriteGate"]

_MiB = 1 << 20


def check_empty_data_file(path: str, readonly: bool) -> None:
    """Refuse an empty data.mdb that once held a store.

    LMDB takes an empty data file for a new environment and would create an
    empty store over it. kvstore's own creation can leave one (a crash after
    LMDB created the file, before it wrote the meta pages), and then lock.mdb
    says no transaction ever committed (its txnid is 0). A lock file that
    counts commits means the data file was emptied or replaced."""
    data_path = os.path.join(path, "data.mdb")
    try:
        st = os.stat(data_path)
    except OSError:
        return  # check_data_file says what is wrong with it, if anything
    if not stat.S_ISREG(st.st_mode) or st.st_size:
        return
    lock_path = os.path.join(path, "lock.mdb")
    txnid = _lock_file_txnid(lock_path)
    if txnid:
        # A creator in another process writes the meta pages before it
        # commits: a data file still empty after a commit was counted is one
        # that lost them.
        try:
            if os.path.getsize(data_path):
                return
        except OSError:
            return
        raise FormatError(
            f"{data_path} is empty, but {lock_path} records {txnid} commits to it: the data file "
            f"was truncated or replaced, and opening it would start a new, empty store in its "
            f"place; restore {data_path} from a backup (or delete both files to start afresh)"
        )
    if readonly:
        raise StoreNotFoundError(f"no kvstore store at {path!r} yet: {data_path} is empty (a store "
                                 f"whose creation did not finish); open it writable to create it")


def _lock_file_txnid(lock_path: str) -> int:
    """The last txnid LMDB's lock file holds (MDB_txninfo.mti_txnid), 0 when
    there is no lock file or it is not one this LMDB writes."""
    try:
        with open(lock_path, "rb") as f:
            head = f.read(256)
    except OSError:
        return 0
    if len(head) < 8 or struct.unpack_from("<I", head)[0] != 0xBEEFC0DE:
        return 0
    offset = _lock_txnid_offset()
    if offset < 0 or len(head) < offset + 8:
        return 0
    txnid: int = _TXNID.unpack_from(head, offset)[0]
    return txnid


_TXNID = struct.Struct("<Q")
_txnid_offset = None  # where mti_txnid is in lock.mdb; -1: unknown


def _lock_txnid_offset() -> int:
    """Where this LMDB build keeps mti_txnid in lock.mdb. It follows a
    pthread mutex whose size depends on the platform, so it is found once
    per process on a scratch environment: the one 8-byte field that counts
    its commits."""
    global _txnid_offset
    if _txnid_offset is None:
        found = None
        try:
            with tempfile.TemporaryDirectory(prefix="kvstore-lock-layout-") as tmp:
                scratch = lmdb.open(tmp, map_size=_MiB, sync=False, metasync=False)
                try:
                    for n in (1, 2, 3):
                        with scratch.begin(write=True) as txn:
                            txn.put(b"n", b"%d" % n)
                        with open(os.path.join(tmp, "lock.mdb"), "rb") as f:
                            head = f.read(256)
                        at = {o for o in range(8, len(head) - 7, 8) if _TXNID.unpack_from(head, o)[0] == n}
                        found = at if found is None else found & at
                finally:
                    scratch.close()
        except (OSError, lmdb.Error):
            found = None
        _txnid_offset = min(found) if found and len(found) == 1 else -1
    return _txnid_offset


_FLOCK = struct.Struct("hhqqi4x")  # struct flock: type, whence, start, len, pid


def _locked_by_others(fd: int) -> bool | None:
    """Does another open file (any process) hold a lock on byte 0 of fd's
    file? The OFD lock query asks without taking anything. None: no OFD
    locks here, nothing to tell."""
    query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, query)
    except (OSError, AttributeError):
        return None
    locked: bool = _FLOCK.unpack(answer)[0] != fcntl.F_UNLCK
    return locked


def check_not_replaced(path: str) -> None:
    """Refuse to open beside processes that still use a deleted or replaced
    lock.mdb. Every kvstore process with the store open holds a read lock
    on data.mdb (`hold_data_file`), taken after LMDB's own lock on
    lock.mdb and released before it; LMDB holds its lock on byte 0 of
    lock.mdb while the environment is open. So when data.mdb is held and
    lock.mdb is missing or nobody holds it, the holders use another lock
    file, and LMDB would give this process a fresh one: two writers, each
    holding "the" write lock.

    lock.mdb is asked first: a process closing meanwhile lets go of
    data.mdb before lock.mdb, so it cannot look like such a holder. One
    opening meanwhile can (it takes both between the two questions), so
    only an answer that stays the same a few times over is believed."""
    data_path = os.path.join(path, "data.mdb")
    lock_path = os.path.join(path, "lock.mdb")
    for attempt in range(4):
        if attempt:
            time.sleep(0.01 * attempt)
        if _held_by_others(lock_path) is not False or not _held_by_others(data_path):
            return
    raise LockFileReplacedError(
        f"{lock_path} was deleted or replaced while other processes have the store open with the "
        f"old one; opening it now would let two writers overwrite each other's commits. Those "
        f"processes refuse to write now: close every process using {path!r}, then open it again"
    )


def _held_by_others(file_path: str | None = None, fd: int | None = None) -> bool | None:
    """Does another process hold a lock on byte 0 of the file (or of the
    file open as fd)? False when the file is missing; None when that cannot
    be told."""
    if fd is not None:
        return _locked_by_others(fd)  # the OFD query: this descriptor's own locks never count
    try:
        fd = os.open(file_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # type: ignore[arg-type]  # given when fd is not
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        return _locked_by_others(fd)
    finally:
        # Closing drops this process's POSIX locks on the file: it has none,
        # as it holds no environment of this path (acquire()).
        os.close(fd)


def hold_data_file(path: str) -> int | None:
    """A read lock on byte 0 of data.mdb, held while the environment is open
    (see check_not_replaced); its descriptor, or None."""
    try:
        fd = os.open(os.path.join(path, "data.mdb"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, 0, 1, 0))
    except (OSError, AttributeError):
        os.close(fd)
        return None
    return fd


# Byte 2 of data.mdb: a read lock says "a process uses this store without a
# write-ahead log" (wal=False, or a store a log could not be added to); a
# process adds a log only while it can take a write lock on it, so a store
# never gets a log under a process that would bypass it (engine._open_log).
_NO_LOG_BYTE = 2


def _lock_byte(path: str, kind: int, byte: int, wait: bool = False) -> int | None:
    try:
        fd = os.open(os.path.join(path, "data.mdb"), (os.O_RDWR if kind == fcntl.F_WRLCK else os.O_RDONLY)
                     | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK,
                    _FLOCK.pack(kind, os.SEEK_SET, byte, 1, 0))
    except (OSError, AttributeError):
        os.close(fd)
        return None
    return fd


def hold_without_log(path: str) -> int | None:
    """Say, while the returned descriptor is open, that this process uses
    the store without a write-ahead log; None where OFD locks are missing.
    Waits while another process is adding a log (it holds the write lock
    for that long only): the caller then finds the log and uses it."""
    return _lock_byte(path, fcntl.F_RDLCK, _NO_LOG_BYTE, wait=True)


def may_add_log(path: str) -> int | None:
    """A descriptor holding the right to add a log (no process uses the
    store without one); close it once the log is added. None: another
    process uses the store without a log now."""
    return _lock_byte(path, fcntl.F_WRLCK, _NO_LOG_BYTE)


# A reader without LMDB's lock holds a read lock on this byte of data.mdb
# (not byte 0, which check_not_replaced reads as "uses a lock.mdb").
_LOCKLESS_BYTE = 1


def hold_lockless_read(path: str, cause: BaseException) -> int:
    """For a read-only open that LMDB refused because this process may not
    write lock.mdb (cause: its error): mark this process as a reader without
    LMDB's lock, then make sure no writer can be active; the descriptor
    that holds the mark (close it to release it).

    How we know no writer is active: every LMDB environment open on the
    store, reader or writer, kvstore or not, holds a lock on byte 0 of
    lock.mdb, and every kvstore process a lock on byte 0 of data.mdb. If
    either is held by another process, the store is in use and this open is
    refused (StoreAccessError). If neither is, nobody has it open, and a
    kvstore writer that opens later sees the mark and refuses to open
    (check_no_lockless_reader): the mark is set before the check here, and
    the writer's lock on lock.mdb before its check there, so one of the two
    always sees the other. Not covered: a writer that is not kvstore (LMDB's
    mdb_load, another program) opening the store while this reads it."""
    lock_path = os.path.join(path, "lock.mdb")
    why = (f"this process may not write {lock_path}, where LMDB's readers register ({cause})")
    try:
        fd = os.open(os.path.join(path, "data.mdb"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreAccessError(f"cannot read the store at {path!r}: {exc.strerror} "
                               f"({exc.filename}); ask its owner for read access") from None
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, _LOCKLESS_BYTE, 1, 0))
        in_use = _held_by_others(lock_path) is not False or _held_by_others(fd=fd) is not False
    except (OSError, AttributeError):
        in_use = None
    if in_use:
        os.close(fd)
        what = ("other processes have the store open" if in_use is True
                else "this system cannot tell whether other processes have the store open")
        raise StoreAccessError(
            f"cannot read the store at {path!r} read-only: {why}, and {what}, so reading it without "
            f"LMDB's lock could see pages a writer is reusing; read it when no process has it open, "
            f"or ask its owner for write access to {lock_path} (or for a copy: `kvstore backup`)")
    return fd


def check_no_lockless_reader(path: str) -> None:
    """In a writable open, once LMDB holds its lock on lock.mdb: refuse
    (StoreInUseError) while a process reads the store without LMDB's lock
    (hold_lockless_read), whose pages a commit could reuse."""
    try:
        fd = os.open(os.path.join(path, "data.mdb"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, _LOCKLESS_BYTE, 1, 0)
        try:
            held = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_OFD_GETLK, query))[0] != fcntl.F_UNLCK
        except (OSError, AttributeError):
            return
    finally:
        os.close(fd)
    if held:
        raise StoreInUseError(
            f"cannot open the store at {path!r} for writing: a process of a user who may not write "
            f"its lock.mdb is reading it without LMDB's lock, and a commit now could change pages "
            f"under it; open it for writing once that reader has closed the store (or open it "
            f"with readonly=True meanwhile)")


# Byte 3 of data.mdb: the write gate (the module docstring).
_WRITE_BYTE = 3


class WriteGate:
    """Held around every LMDB write transaction of a writable environment
    (Environment.write): a thread lock, then a write lock on byte 3 of
    data.mdb, released by the kernel if the process dies. Only the holder
    asks for LMDB's write lock, so no process sleeps on LMDB's mutex with
    others (see the module docstring); a killed holder's successor finds
    LMDB's mutex free, or owned by a dead process, which LMDB recovers.
    Where OFD locks are missing, the thread lock alone."""

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._fd: int | None
        try:
            self._fd = os.open(os.path.join(path, "data.mdb"), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            self._fd = None
        if self._fd is not None and not hasattr(fcntl, "F_OFD_SETLKW"):
            self.close()

    def __enter__(self) -> None:
        self._lock.acquire()
        fd = self._fd
        if fd is None:
            return
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, _WRITE_BYTE, 1, 0))
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        fd = self._fd
        try:
            if fd is not None:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, _WRITE_BYTE, 1, 0))
        finally:
            self._lock.release()

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
