"""The write-ahead log: every acknowledged write is here before LMDB has it.

Two files sit beside data.mdb and lock.mdb. Every process that opens the
store maps the index and appends to the log; LMDB is the checkpointed
state the log is applied to (applier.py). Frozen: values that reach disk
never change meaning.

The log, ``data.wal``::

    log     := header record* rest
    header  := magic "KVSTWAL1" | version u32 | zero[20]              (32 bytes)
    record  := length u32 | gen u32 | checksum u64 | payload[length]   (16-byte head)
    payload := op+                       one group of writes: all or nothing
    op      := kind u8 | ns_len u8 | key_len u16 | rec_len u32 | ns | key | stored
               kind 1: put (stored: rec_len bytes, codec/format.py);
               kind 2: delete (rec_len 0, nothing stored)
    rest    := zeros, or what earlier generations or a dead writer left

Integers are little-endian. ``checksum`` is XXH64 of the record's length,
gen and payload, seeded with the checksum of the record before it (for
the first record of a generation: XXH64 of the generation number), so a
record is valid only where the chain that leads to it is: bytes left by an
earlier generation or by a writer killed mid-append never pass for a
record. The first record that fails its check ends the log.

The log is reused, not wrapped: once every record of a generation is in
LMDB (applied and synced), the next appends start again just past the
header in generation gen+1. LMDB's metadata says how far it has applied
(``APPLIED``: gen, position, checksum of the last record applied), written
in the same transaction as the records it covers: each record is applied
exactly once, by whichever process applies first.

The index, ``data.wal-index``: one page that every process maps shared
(SQLite's -shm file plays this part), so that a reader learns that the log
changed with one memory read, no system call::

    index   := magic "KVSTIDX1" | version u32 | zero u32 | boot_id[16]
               | counter u64 | gen u32 | zero u32 | end u64 | end_sum u64
               | synced u64 | applied u64 | applied_sum u64

``counter`` goes up by one before and one after every change (odd while a
change is under way), so a reader copies the fields and checks that the
counter did not move (a seqlock). ``end`` is where the next record goes;
``synced``, how far an fdatasync has covered; ``applied``, how far LMDB
holds the records (end_sum and applied_sum: the chain's checksum there).
Every change is made under the append lock: an flock on the index file,
which the kernel drops if its holder dies. A writer killed between its
two counter bumps leaves the counter odd: the next process to take the
lock finds the end again by reading the log (`recover`). The index is
trusted only on the boot it was written in (``boot_id``): after a reboot it
is rebuilt from the log and LMDB's APPLIED.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import threading
from typing import Any, Iterator, Optional, Sequence, Tuple

import xxhash

from . import killpoints
from .errors import CorruptionError, DiskFullError, FormatError, KVStoreError, StoreFailedError
from .options import READ_AHEAD  # tunables: see there

__all__ = ["Log", "State", "encode_group", "decode_ops", "Applied", "LOG_FILE",
           "INDEX_FILE", "HEADER_SIZE", "PUT", "DELETE", "seed"]

LOG_FILE = "data.wal"
INDEX_FILE = "data.wal-index"

LOG_MAGIC = b"KVSTWAL1"
INDEX_MAGIC = b"KVSTIDX1"
VERSION = 1
HEADER_SIZE = 32
_HEADER = struct.Struct("<8sI20x")
_HEAD = struct.Struct("<IIQ")  # length, gen, checksum
HEAD_SIZE = _HEAD.size
_OP = struct.Struct("<BBHI")  # kind, ns_len, key_len, rec_len
PUT, DELETE = 1, 2

# index fields (offsets into the mapped page)
_INDEX_HEAD = struct.Struct("<8sII16s")
_COUNTER = 32
_FIELDS = struct.Struct("<IIQQQQQ")  # gen, zero, end, end_sum, synced, applied, applied_sum
_FIELDS_AT = 40
INDEX_SIZE = 4096

# LMDB's record of how far the log is applied (layout.APPLIED_KEY)
Applied = struct.Struct("<IQQ")  # gen, position, checksum of the last record applied

_MAX_RECORD = 1 << 31  # a record's length field above this is damage, not a record


def seed(gen: int) -> int:
    """The chain's starting checksum in generation gen."""
    return xxhash.xxh64_intdigest(struct.pack("<I", gen))


def _boot_id() -> bytes:
    """This boot's id (read once per process: it cannot change under it)."""
    global _BOOT
    if _BOOT is None:
        _BOOT = _read_boot_id()
    return _BOOT


_BOOT: bytes | None = None


def _read_boot_id() -> bytes:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return bytes.fromhex(f.read().strip().decode().replace("-", ""))[:16]
    except (OSError, ValueError):
        return bytes(16)  # no boot id: the index is rebuilt at every first open


# ---------------------------------------------------------------- payloads


def encode_group(ops: Sequence[Tuple[str, Any, bytes, Optional[bytes]]]) -> bytes:
    """The payload of one group: ops are (namespace, dbi, key, stored or None)."""
    parts = []
    pack = _OP.pack
    for ns, _dbi, key, record in ops:
        raw_ns = ns.encode("utf-8")
        if record is None:
            parts.append(pack(DELETE, len(raw_ns), len(key), 0))
            parts.append(raw_ns)
            parts.append(key)
        else:
            parts.append(pack(PUT, len(raw_ns), len(key), len(record)))
            parts.append(raw_ns)
            parts.append(key)
            parts.append(record)
    return b"".join(parts)


def decode_ops(payload: bytes | memoryview) -> list[tuple[str, bytes, bytes | None]]:
    """[(namespace, key, stored or None)] of a payload (bytes or memoryview)."""
    ops = []
    at = 0
    n = len(payload)
    unpack = _OP.unpack_from
    while at < n:
        if at + _OP.size > n:
            raise ValueError("op head past the end of the record")
        kind, ns_len, key_len, rec_len = unpack(payload, at)
        at += _OP.size
        end = at + ns_len + key_len + rec_len
        if kind not in (PUT, DELETE) or end > n or (kind == DELETE and rec_len):
            raise ValueError(f"bad op (kind {kind}) at {at - _OP.size}")
        ns = bytes(payload[at:at + ns_len]).decode("utf-8")
        at += ns_len
        key = bytes(payload[at:at + key_len])
        at += key_len
        ops.append((ns, key, bytes(payload[at:end]) if kind == PUT else None))
        at = end
    return ops


# ---------------------------------------------------------------- state


class State:
    """A consistent copy of the index's fields."""

    __slots__ = ("counter", "gen", "end", "end_sum", "synced", "applied", "applied_sum")

    def __init__(self, counter: int, gen: int, _zero: int, end: int, end_sum: int, synced: int,
                 applied: int, applied_sum: int):
        self.counter = counter
        self.gen = gen
        self.end = end
        self.end_sum = end_sum
        self.synced = synced
        self.applied = applied
        self.applied_sum = applied_sum


class Log:
    """The log and its index, as one process uses them.

    `lock()` / `unlock()`: the append lock (a thread lock, then the flock);
    every method that changes the index or writes the log must hold it.
    `state()` reads the index without it (seqlock)."""

    def __init__(self, path: str, *, readonly: bool, create: bool, initial_size: int,
                 max_size: int):
        self.path = path
        self.log_path = os.path.join(path, LOG_FILE)
        self.index_path = os.path.join(path, INDEX_FILE)
        self.readonly = readonly
        self.initial_size = initial_size
        self.max_size = max_size
        self._tlock = threading.Lock()
        self.created = False
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
        if create and not readonly:
            try:
                self.created = self._create_log()
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise DiskFullError(
                        f"cannot create the write-ahead log {self.log_path} ({exc}): free space "
                        f"(it needs {initial_size} bytes to start) and open the store again, or "
                        f"open it with wal=False") from None
                raise
        try:
            self.fd = os.open(self.log_path, flags)
        except FileNotFoundError:
            raise FormatError(
                f"{self.log_path} is missing: the store's write-ahead log holds writes that LMDB "
                f"may not have yet; restore the file from where it went (a backup made by "
                f"`kvstore backup` never needs it)") from None
        try:
            self._check_header()
            self.size = os.fstat(self.fd).st_size
            self.ifd = os.open(self.index_path, (os.O_RDONLY if readonly else os.O_RDWR | os.O_CREAT)
                               | os.O_CLOEXEC, 0o644)
            if not readonly and os.fstat(self.ifd).st_size < INDEX_SIZE:
                os.ftruncate(self.ifd, INDEX_SIZE)
            if os.fstat(self.ifd).st_size < INDEX_SIZE:
                raise FormatError(f"{self.index_path} is shorter than an index page; open the store "
                                  f"for writing once to rebuild it")
            self.map = mmap.mmap(self.ifd, INDEX_SIZE, mmap.MAP_SHARED,
                                 mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self.fd)
            raise
        self.view = memoryview(self.map)  # the counter, read on every read of the store

    # ------------------------------------------------------------ files

    def _create_log(self) -> bool:
        """Create the log (header and zeros) if it does not exist; True if it was created."""
        if os.path.exists(self.log_path):
            return False
        tmp = f"{self.log_path}.{os.getpid()}.{threading.get_ident()}.new"  # one per creator
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.pwrite(fd, _HEADER.pack(LOG_MAGIC, VERSION), 0)
            _zero_fill(fd, HEADER_SIZE, self.initial_size)
            os.fsync(fd)
        except BaseException:
            os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        try:
            os.link(tmp, self.log_path)  # never replaces a log another process made meanwhile
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return True

    def _check_header(self) -> None:
        raw = os.pread(self.fd, HEADER_SIZE, 0)
        if len(raw) < HEADER_SIZE or raw[:8] != LOG_MAGIC:
            raise FormatError(f"{self.log_path} is not a kvstore write-ahead log (bad header); "
                              f"restore it from a backup")
        (version,) = struct.unpack_from("<I", raw, 8)
        if version > VERSION:
            raise FormatError(f"{self.log_path} was written by a newer kvstore (log version "
                              f"{version}, this one reads {VERSION}); upgrade kvstore")

    def close(self) -> None:
        try:
            self.view.release()
            self.map.close()
        except (BufferError, ValueError):
            pass
        for fd in (self.fd, self.ifd):
            try:
                os.close(fd)
            except OSError:
                pass

    def abandon(self) -> None:
        """In a forked child: let go of the inherited descriptors without
        touching the lock the parent may hold through them."""
        self.close()

    # ------------------------------------------------------------ the lock

    def lock(self) -> None:
        self._tlock.acquire()
        try:
            fcntl.flock(self.ifd, fcntl.LOCK_EX)
        except BaseException:
            self._tlock.release()
            raise

    def wait_for_writer(self) -> None:
        """For a read-only handle that finds the index's counter odd: wait
        while a process is inside an append (it holds the append lock:
        taken shared here, and let go). A writer that died inside a change
        holds nothing: the counter is still odd after this."""
        fcntl.flock(self.ifd, fcntl.LOCK_SH)
        fcntl.flock(self.ifd, fcntl.LOCK_UN)

    def unlock(self) -> None:
        try:
            fcntl.flock(self.ifd, fcntl.LOCK_UN)
        finally:
            self._tlock.release()

    # ------------------------------------------------------------ the index

    def counter(self) -> int:
        """The index's change counter: one memory read."""
        counter: int = _unpack_q(self.view, _COUNTER)[0]
        return counter

    def state(self) -> State | None:
        """The index's fields, consistent; None if a change is stuck half
        made (a writer died in it) or the index is not valid: then take the
        lock and `recover`."""
        view = self.view
        q = _unpack_q
        for _ in range(1000):
            c1 = q(view, _COUNTER)[0]
            if c1 & 1:
                continue
            fields = _FIELDS.unpack_from(view, _FIELDS_AT)
            if q(view, _COUNTER)[0] == c1:
                return State(c1, *fields)
        return None

    def index_valid(self) -> bool:
        """Holding the lock: the index was written on this boot by this
        format and no change of it was left half made."""
        magic, version, _z, boot = _INDEX_HEAD.unpack_from(self.view, 0)
        if magic != INDEX_MAGIC or version != VERSION or boot != _boot_id():
            return False
        st = self.state()  # waits out a change under way (a reader may see one)
        if st is not None and st.end > self.size:
            self.refresh_size()  # grown by another process
        return st is not None and HEADER_SIZE <= st.applied <= st.end <= self.size and st.gen > 0

    def publish(self, gen: int, end: int, end_sum: int, synced: int, applied: int, applied_sum: int,
                _q: struct.Struct = struct.Struct("<Q"), _fields: Any = _FIELDS.pack_into) -> None:
        """Holding the lock: write the index's fields (a seqlock change)."""
        view = self.view
        c = _q.unpack_from(view, _COUNTER)[0]
        if c & 1:
            c += 1  # a dead writer's half change: this one replaces it
        _q.pack_into(view, _COUNTER, c + 1)
        _fields(view, _FIELDS_AT, gen, 0, end, end_sum, synced, applied, applied_sum)
        _q.pack_into(view, _COUNTER, c + 2)

    def rebuild(self, gen: int, pos: int, chain: int) -> State:
        """Holding the lock: make the index again from the log, given what
        LMDB holds (APPLIED: gen, pos, chain). The log is read from there to
        its first invalid record; a generation gen+1 that started after that
        apply is found at the log's start."""
        if self.valid_record_at(HEADER_SIZE, gen + 1, seed(gen + 1)):
            gen, pos, chain = gen + 1, HEADER_SIZE, seed(gen + 1)
        end, end_sum = pos, chain
        for end, end_sum, _payload in self.records(gen, pos, chain, None):
            pass
        if not self.readonly:
            os.fdatasync(self.fd)  # what the log holds now is what a crash keeps
            _INDEX_HEAD.pack_into(self.view, 0, INDEX_MAGIC, VERSION, 0, _boot_id())
        self.publish(gen, end, end_sum, end, pos, chain)
        st = self.state()
        assert st is not None  # just published, under the lock
        return st

    # ------------------------------------------------------------ reading the log

    def valid_record_at(self, at: int, gen: int, chain: int) -> bool:
        for _ in self.records(gen, at, chain, None, limit=1):
            return True
        return False

    def records(self, gen: int, at: int, chain: int, end: int | None,
                limit: int = -1) -> Iterator[tuple[int, int, memoryview]]:
        """Yield (end position, checksum, payload) of each valid record of
        generation gen from position at (chain: the checksum before it) up
        to end. With end None, stop quietly at the first invalid record (a
        scan for the log's end). With an end, a record that is invalid
        before it is damage: CorruptionError naming the position.

        The log is read READ_AHEAD bytes at a time (a record longer than
        that in one read of its own), not record by record: an apply of
        thousands of records makes a few system calls, not two per record,
        each a point where the thread gives up the GIL to the appenders.
        A payload is a view into that read; it stays valid while held."""
        fd = self.fd
        size = self.size if end is None else end
        buf = memoryview(b"")
        base = at  # buf holds the log's bytes [base, base + len(buf))
        while at + HEAD_SIZE <= size and limit != 0:
            off = at - base
            if off + HEAD_SIZE > len(buf):
                buf, base, off = memoryview(os.pread(fd, min(max(READ_AHEAD, HEAD_SIZE), size - at), at)), at, 0
            length, rgen, checksum = (_HEAD.unpack_from(buf, off) if off + HEAD_SIZE <= len(buf)
                                      else (0, 0, 0))
            bad = None
            if rgen != gen or length == 0 or length > _MAX_RECORD or at + HEAD_SIZE + length > size:
                bad = "its head does not fit"
            else:
                if off + HEAD_SIZE + length > len(buf):  # past this read: read from its head on
                    buf = memoryview(os.pread(fd, min(max(READ_AHEAD, HEAD_SIZE + length), size - at), at))
                    base, off = at, 0
                payload = buf[off + HEAD_SIZE:off + HEAD_SIZE + length]
                if len(payload) != length or _checksum(length, gen, payload, chain) != checksum:
                    bad = "its checksum does not match"
            if bad is not None:
                if end is None:
                    return
                raise CorruptionError(
                    f"the write-ahead log {self.log_path} is damaged at byte {at} ({bad}), inside "
                    f"the part that holds acknowledged writes; run `kvstore check` and restore "
                    f"the store from a backup")
            at += HEAD_SIZE + length
            chain = checksum
            limit -= 1
            yield at, checksum, payload

    # ------------------------------------------------------------ writing the log

    def append(self, st: State, payloads: list[bytes]) -> tuple[int, int, list[int]]:
        """Holding the lock, with st the index's state: write payloads as
        records at st.end and publish the new end. Returns (end, checksum,
        [end position of each record]); raises LogFull when they do not fit
        below max_size (the caller checkpoints and retries)."""
        chain = st.end_sum
        gen = st.gen
        parts = []
        ends = []
        at = st.end
        for payload in payloads:
            length = len(payload)
            chain = _checksum(length, gen, payload, chain)
            parts.append(_HEAD.pack(length, gen, chain))
            parts.append(payload)
            at += HEAD_SIZE + length
            ends.append(at)
        if at > self.size:
            self._grow(at)
        data = b"".join(parts)
        if killpoints.armed:
            os.pwrite(self.fd, data[:len(data) // 2], st.end)  # a torn append
            killpoints.reached("log-mid-append")
        _pwrite_all(self.fd, data, st.end)
        self.publish(gen, at, chain, st.synced, st.applied, st.applied_sum)
        return at, chain, ends

    def append_one(self, st: State, payload: bytes) -> tuple[int, int]:
        """append() of one payload, the common case: (end, checksum)."""
        length = len(payload)
        at = st.end + HEAD_SIZE + length
        if at > self.size:
            self._grow(at)
        chain = _checksum(length, st.gen, payload, st.end_sum)
        data = _HEAD.pack(length, st.gen, chain) + payload
        if killpoints.armed:
            os.pwrite(self.fd, data[:len(data) // 2], st.end)  # a torn append
            killpoints.reached("log-mid-append")
        _pwrite_all(self.fd, data, st.end)
        self.publish(st.gen, at, chain, st.synced, st.applied, st.applied_sum)
        return at, chain

    def _grow(self, needed: int) -> None:
        """Make the log at least needed bytes long (doubling, zero-filled and
        synced, so that later syncs only write data), or raise LogFull."""
        self.refresh_size()  # another process may have grown it (and written past our size)
        if needed <= self.size:
            return
        if needed > self.max_size:
            raise LogFull(needed)
        size = max(self.size, HEADER_SIZE)
        while size < needed:
            size *= 2
        size = min(size, self.max_size)
        _zero_fill(self.fd, self.size, size)
        os.fdatasync(self.fd)
        self.size = size

    def refresh_size(self) -> None:
        """Another process may have grown the log."""
        self.size = os.fstat(self.fd).st_size

    def sync(self, upto: int, gen: int) -> None:
        """fdatasync the log, then record that it covers upto (if the
        generation is still gen and nobody recorded more)."""
        os.fdatasync(self.fd)
        self.lock()
        try:
            st = self.state()
            if st is not None and st.gen == gen and st.synced < upto:
                self.publish(st.gen, st.end, st.end_sum, upto, st.applied, st.applied_sum)
        finally:
            self.unlock()

    def reset(self, st: State) -> None:
        """Holding the lock, with every record of st.gen applied: start
        generation gen+1 at the log's start."""
        gen = st.gen + 1
        s = seed(gen)
        self.publish(gen, HEADER_SIZE, s, HEADER_SIZE, HEADER_SIZE, s)


    def wipe(self) -> None:
        """Holding the lock, every record applied and the log empty (after a
        recovery's reset): clear the file past its header, so that nothing
        of an earlier incarnation survives in it (Applier.recover); it is
        zero-filled again to its initial size and synced."""
        os.ftruncate(self.fd, HEADER_SIZE)
        size = max(min(self.initial_size, self.max_size), HEADER_SIZE)
        _zero_fill(self.fd, HEADER_SIZE, size)
        os.fdatasync(self.fd)
        self.size = size


class LogFull(Exception):
    """An append that does not fit in the log below max_size (internal)."""


_unpack_q = struct.Struct("<Q").unpack_from


def _checksum(length: int, gen: int, payload: bytes | memoryview, chain: int, _pack: Any = struct.Struct("<II").pack,
              _digest: Any = xxhash.xxh64_intdigest) -> int:
    checksum: int = _digest(_pack(length, gen) + payload, chain)
    return checksum


def _pwrite_all(fd: int, data: bytes, at: int) -> None:
    """Write all of data at `at`. A short write (the file-size limit or a
    full disk reached part way) is followed by another, which raises the
    kernel's own reason (EFBIG, ENOSPC) for append_failure to name."""
    n = os.pwrite(fd, data, at)
    if n == len(data):
        return
    view = memoryview(data)
    while True:
        if n <= 0:
            raise OSError(errno.ENOSPC, "no space to write to the write-ahead log")
        view = view[n:]
        at += n
        if not view:
            return
        n = os.pwrite(fd, view, at)


def _zero_fill(fd: int, start: int, end: int) -> None:
    zeros = bytes(min(1 << 20, max(end - start, 0)))
    at = start
    while at < end:
        n = os.pwrite(fd, zeros[:end - at], at)
        if n <= 0:
            raise OSError(errno.ENOSPC, "no space to grow the write-ahead log")
        at += n


def append_failure(exc: OSError, path: str) -> KVStoreError:
    """An append that failed before the index published it: that write is
    not acknowledged and the log is as before, so the store goes on (a full
    disk: once space is freed, the next write works)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"writing to the write-ahead log: the disk holding {path} is full ({exc}); this write "
            f"was not made and nothing acknowledged is lost: free space and write again")
    if exc.errno == errno.EFBIG:
        return DiskFullError(
            f"writing to the write-ahead log: it reached this process's file-size limit "
            f"(RLIMIT_FSIZE, {exc}); this write was not made: raise the limit (`ulimit -f`) and "
            f"write again")
    return sync_failure(exc, "writing to the write-ahead log")


def sync_failure(exc: OSError, doing: str) -> StoreFailedError:
    """A failed fdatasync (or an unknown write error): the kernel may have
    dropped the pages it could not write, so it is never retried."""
    return StoreFailedError(f"{doing} failed ({exc}); writes waiting on it were not acknowledged, "
                            f"and the store takes no more writes: reopen it", exc)
