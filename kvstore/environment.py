"""The LMDB environment of one store path in this process.

LMDB allows an environment to be opened only once per process, so every
`kvstore.open()` of the same path in one process shares one engine
(engine.py), which holds one `Environment`. It owns what is LMDB-specific:

- checking the files before mapping them (lmdbfile.py, lockfile.py: a
  truncated data.mdb would kill the process with SIGBUS on first touch);
- the store's own metadata (format version, commit sequence) in the reserved
  namespace ``__kvstore__``, and what the TTL module keeps there (`ttl`);
- namespace handles (LMDB named databases);
- the map size (maplock.py): growing it when a commit fills it, adopting a size grown by
  another process. LMDB requires that no transaction be active in this
  process while the map is resized, so every transaction runs under
  `map_lock` held shared, and a resize holds it exclusively;
- fork safety: an environment inherited through fork() is abandoned in the
  child (engine.py flags it), which reopens the path on first use.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Any, Callable, TypeVar

import lmdb

from .errors import (
    FormatError,
    LockFileReplacedError,
    MapFullError,
    NamespaceLimitError,
    ReadOnlyError,
    Refused,
    StoreNotFoundError,
    translate,
)
from . import lockfile
from .maplock import MapLock
from .lmdbfile import check_data_file
from .wal import HEADER_SIZE as WAL_HEADER_SIZE, LOG_FILE, Applied, seed as wal_seed
from .options import Options
from .layout import (APPLIED_KEY, BASE_STORE_FORMAT, DEFAULT_NAMESPACE, FORMAT_KEY, KEYED_STORE_FORMAT,
                     META_DB, SEQ, SEQ_KEY, STORE_FORMAT, WAL_STORE_FORMAT)

__all__ = ["Environment", "MapLock", "check_data_file"]


_T = TypeVar("_T")
# A function run in a transaction (Environment.read, write), given the transaction
Step = Callable[[lmdb.Transaction], _T]


def range_items(txn: Any, dbi: Any, lo: bytes | None, hi: bytes | None) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of database dbi in [lo, hi) (None: unbounded), in
    key order, copied out of transaction txn (its buffers die with it)."""
    cur = txn.cursor(db=dbi)
    found = cur.set_range(lo) if lo is not None else cur.first()
    out = []
    while found:
        key = bytes(cur.key())
        if hi is not None and key >= hi:
            break
        out.append((key, bytes(cur.value())))
        found = cur.next()
    return out


class Environment:
    """The LMDB environment of one store path in this process."""

    def __init__(self, path: str, options: Options) -> None:
        self.path = path
        self.options = options
        self.readonly = options.readonly
        self.pid = os.getpid()
        self.forked = False  # set in a forked child: this object must not be used
        self.map_lock = MapLock()
        self._dbis: dict[str, lmdb._Database] = {}  # name -> LMDB handle; guarded by _dbi_lock
        self._dbi_lock = threading.Lock()
        self._new_dbis: dict[str, lmdb._Database] = {}  # opened in the applier's transaction (open_db_in)
        # How write transactions other than commits run: self.write until the
        # writer exists, then Writer.run (route_writes), so that they queue
        # behind the commits instead of racing them for LMDB's write lock.
        self._run: Callable[[Callable[[Any], Any]], Any] = lambda fn: self.write(fn, "creating a namespace")
        self._data_lock_fd: int | None = None  # lockfile.hold_data_file; set by _open
        self._lock_file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of lock.mdb at open; set by _open
        self._gate: lockfile.WriteGate | None = None  # around write transactions; set by _open
        self.env = self._open()
        try:
            self.clear_stale_readers()
            self.meta_db = self._init_meta()
        except BaseException:
            self._release_data_file()
            self.env.close()
            raise

    # ------------------------------------------------------------ opening

    def _open(self) -> lmdb.Environment:
        opts = self.options
        path = self.path
        if os.path.exists(path) and not os.path.isdir(path):
            raise FormatError(f"{path!r} is a file; a kvstore store is a directory")
        data = os.path.join(path, "data.mdb")
        if opts.readonly:
            if not os.path.exists(data):
                raise StoreNotFoundError(f"no kvstore store at {path!r} (opened with readonly=True, "
                                         f"which never creates one)")
        elif os.path.isdir(path) and not os.path.exists(data):
            # lock.mdb is LMDB's; so is a data.mdb that appeared since the
            # check above: another process creating the store (check_data_file
            # looks at it next). A dangling data.mdb symlink is not.
            extra = [n for n in os.listdir(path) if n != "lock.mdb"]
            if "data.mdb" in extra and os.path.exists(data) and all(
                    n == "data.mdb" or n.startswith(LOG_FILE) for n in extra):
                extra = []  # and the log it is getting (wal.py)
            if extra:
                raise FormatError(
                    f"{path!r} is a directory holding other files ({', '.join(sorted(extra)[:3])}) "
                    f"and no store; give kvstore.open() a new or empty directory"
                )
        lockfile.check_empty_data_file(path, opts.readonly)
        check_data_file(path)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise ReadOnlyError(f"cannot create the store directory {path!r}: the file system is "
                                    f"read-only; create the store on a writable one") from None
            raise StoreNotFoundError(f"cannot create the store directory {path!r}: {exc}") from None
        lockfile.check_not_replaced(path)
        try:
            env = self._lmdb_open(lock=True)
        except lmdb.Error as exc:
            if str(exc).endswith(os.strerror(errno.EROFS)):
                raise ReadOnlyError(
                    f"cannot open {path!r} for writing: it is on a read-only file system ({exc}); "
                    f"open it with readonly=True, or remount the file system read-write"
                ) from None
            denied = isinstance(exc, lmdb.ReadonlyError) or str(exc).endswith(
                (os.strerror(errno.EACCES), os.strerror(errno.EPERM)))
            if denied and opts.readonly:
                # lock.mdb is not ours to write (another user's store): read
                # without LMDB's lock when no writer can be active (lockfile.py)
                self._data_lock_fd = lockfile.hold_lockless_read(path, exc)
                try:
                    return self._lmdb_open(lock=False)
                except lmdb.Error as again:
                    self._release_data_file()
                    raise translate(again, f"opening {path!r}") from None
            if denied:
                raise ReadOnlyError(
                    f"cannot open {path!r} for writing ({exc}): this process may not write the "
                    f"store's files; open it with readonly=True to read it"
                ) from None
            raise translate(exc, f"opening {path!r}") from None
        # After LMDB's lock on lock.mdb, so that whoever holds data.mdb holds
        # lock.mdb too (lockfile.check_not_replaced).
        self._data_lock_fd = lockfile.hold_data_file(path)
        if not opts.readonly:
            try:
                lockfile.check_no_lockless_reader(path)
            except BaseException:
                self._release_data_file()
                env.close()
                raise
            try:
                st = os.stat(os.path.join(path, "lock.mdb"))
                self._lock_file_id = (st.st_dev, st.st_ino)
            except OSError:
                pass
            self._gate = lockfile.WriteGate(path)
        return env

    def _lmdb_open(self, lock: bool) -> lmdb.Environment:
        opts = self.options
        return lmdb.open(
            self.path,
            map_size=opts.map_size,
            subdir=True,
            readonly=opts.readonly,
            create=not opts.readonly,
            sync=True,  # buffered writes wait in memory, never in an unsynced file
            metasync=True,
            max_dbs=opts.max_namespaces + 2,  # + default + __kvstore__
            max_readers=opts.max_readers,
            max_spare_txns=0,  # see _before_fork: a child must find no transaction to abort
            readahead=False,  # random reads of a store bigger than RAM
            lock=lock,  # False only for a read-only open: lockfile.hold_lockless_read
        )

    def _check_lock_file(self, doing: str) -> None:
        """In a write transaction: refuse to write when lock.mdb is no longer
        the file this environment locks (deleted or replaced since the open):
        LMDB's write lock then keeps nobody out."""
        try:
            st = os.stat(os.path.join(self.path, "lock.mdb"))
            if (st.st_dev, st.st_ino) == self._lock_file_id:
                return
            what = "replaced by another file"
        except FileNotFoundError:
            what = "deleted"
        except OSError:
            return
        raise LockFileReplacedError(
            f"{doing}: {os.path.join(self.path, 'lock.mdb')} was {what} while the store was open, so "
            f"its write lock no longer keeps other processes out; nothing of this was written and "
            f"the store takes no more writes: close every process using {self.path!r}, then reopen it"
        )

    def _release_data_file(self) -> None:
        fd, self._data_lock_fd = self._data_lock_fd, None
        if fd is not None:
            os.close(fd)
        if self._gate is not None:
            self._gate.close()

    def _init_meta(self) -> Any:
        env = self.env
        try:
            with env.begin() as txn:
                names = [bytes(k) for k, _ in txn.cursor()]
            meta = self._lookup_dbi(META_DB) if META_DB in names else None
            if meta is not None:
                with env.begin(db=meta) as txn:
                    version = txn.get(FORMAT_KEY)
        except lmdb.Error as exc:
            raise translate(exc, f"opening {self.path!r}") from None
        if meta is None:
            if names:
                raise FormatError(
                    f"{self.path!r} is an LMDB environment but not a kvstore store (it holds "
                    f"{len(names)} keys or databases and no {META_DB.decode()} metadata); import it "
                    f"into a new store with LMDB's mdb_dump (Debian's lmdb-utils), its values as bytes: "
                    f"`mdb_dump -a {self.path} | kvstore load NEW --raw` (each named database becomes a "
                    f"namespace), or `mdb_dump {self.path} | kvstore load NEW --raw` (its main database)"
                )
            if self.readonly:
                raise StoreNotFoundError(f"{self.path!r} holds no kvstore store yet")
            return self._create_meta()
        try:
            version_n = int(version)  # type: ignore[arg-type]  # None raises TypeError: damaged
        except (TypeError, ValueError):
            raise FormatError(f"{self.path!r}: damaged store metadata (format version {version!r})") from None
        if version_n > STORE_FORMAT:
            raise FormatError(
                f"{self.path!r} was written by a newer kvstore (store format {version_n}, this one "
                f"reads {STORE_FORMAT}); upgrade kvstore"
            )
        return meta

    def _create_meta(self) -> Any:
        def create(txn: lmdb.Transaction) -> Any:
            meta = self.env.open_db(META_DB, txn=txn, create=True)
            if txn.get(FORMAT_KEY, db=meta) is None:
                txn.put(FORMAT_KEY, str(BASE_STORE_FORMAT).encode(), db=meta)
                txn.put(SEQ_KEY, SEQ.pack(0), db=meta)
            self.env.open_db(DEFAULT_NAMESPACE.encode(), txn=txn, create=True)
            return meta

        return self.write(create, "creating the store")

    # ------------------------------------------------------------ transactions

    def write(self, fn: Step[_T], doing: str) -> _T:
        """Run fn(txn) in a write transaction and commit it; return its result.

        When the map fills up, the transaction is aborted, the map grown and
        fn replayed from the start (so fn must be repeatable); a map grown by
        another process is adopted the same way. Any other LMDB error is
        translated and raised, with nothing written.
        """
        if self.readonly:
            raise ReadOnlyError(f"{doing}: the store is open read-only")
        with self._gate:  # type: ignore[union-attr]  # lockfile.WriteGate: nobody sleeps on LMDB's write lock
            return self._write(fn, doing)

    def _write(self, fn: Step[_T], doing: str) -> _T:
        retry: Callable[[str], None] | None
        while True:
            self.map_lock.acquire_shared()
            try:
                txn = self.env.begin(write=True)
                try:
                    if self._lock_file_id is not None:
                        self._check_lock_file(doing)
                    result = fn(txn)
                    txn.commit()
                    return result
                except BaseException:
                    txn.abort()
                    raise
            except lmdb.MapFullError:
                retry = self.grow_map
            except lmdb.MapResizedError:
                retry = self.adopt_map_size
            except lmdb.ReadersFullError as exc:
                if not self.clear_stale_readers():
                    raise translate(exc, doing) from None
                retry = None
            except lmdb.Error as exc:
                raise translate(exc, doing, self.path) from None
            finally:
                self.map_lock.release_shared()
            if retry is not None:
                retry(doing)

    def route_writes(self, run: Callable[..., Any]) -> None:
        """Run this environment's own write transactions (namespace handles)
        through run(fn) -> fn's result, the writer's entry (Writer.run)."""
        self._run = run

    def clear_stale_readers(self) -> int:
        """Free the reader-table slots of processes that died inside a read
        transaction (LMDB's reader check, what `mdb_stat -rr` does); return
        how many. Such a slot pins every page freed after its snapshot, so
        the file grows instead of reusing space, and enough of them stop
        every read (MDB_READERS_FULL). Run at open, before the map grows,
        and when the table is full."""
        try:
            return self.env.reader_check()
        except lmdb.Error:
            return 0

    def grow_map(self, doing: str = "committing") -> None:
        """Double the map (up to max_map_size). No transaction may be active."""
        if self.clear_stale_readers():
            return  # the pages dead readers pinned are free again: replay first
        self.map_lock.acquire_exclusive()
        try:
            current = self.env.info()["map_size"]
            limit = self.options.max_map_size
            if current >= limit:
                raise MapFullError(
                    f"{doing}: the store reached max_map_size ({limit} bytes); reopen it with a "
                    f"larger max_map_size"
                )
            self.env.set_mapsize(min(current * 2, limit))
        except lmdb.Error as exc:
            raise translate(exc, "growing the map") from None
        finally:
            self.map_lock.release_exclusive()

    def adopt_map_size(self, doing: str = "") -> None:
        """Take the map size another process grew the store to."""
        self.map_lock.acquire_exclusive()
        try:
            self.env.set_mapsize(0)
        except lmdb.Error as exc:
            raise translate(exc, "adopting the map size") from None
        finally:
            self.map_lock.release_exclusive()

    # ------------------------------------------------------------ namespaces

    def dbi(self, name: str, create: bool) -> Any:
        """The LMDB handle of a namespace; None when it does not exist and
        create is False (or the store is read-only)."""
        handle = self._dbis.get(name)
        if handle is not None:
            return handle
        raw = name.encode("utf-8")
        with self._dbi_lock:
            handle = self._dbis.get(name)
            if handle is None:
                handle = self._lookup_dbi(raw)
            if handle is not None:
                self._dbis[name] = handle
                return handle
        if not create or self.readonly:
            return None
        # Created through the writer, without _dbi_lock: with a log its
        # step runs inside an apply of the whole log, which looks up (and
        # adopts) the handles of the namespaces the log writes to. Two
        # threads creating one namespace both run the step: it is idempotent.
        try:
            handle = self._run(lambda txn: self._open_db(txn, raw, True))
        except Refused as exc:  # self.write: no writer to unwrap it
            raise exc.error from None
        with self._dbi_lock:
            return self._dbis.setdefault(name, handle)

    def _lookup_dbi(self, raw: bytes) -> Any:
        # Not in a read transaction of ours: a handle opened in a read-only
        # transaction dies with it. In a writable store, in a write
        # transaction of ours: py-lmdb's own (open_db without txn) would wait
        # for LMDB's write lock holding the GIL, and deadlock with a thread of
        # this process that holds the lock and needs the GIL to commit.
        # An existing namespace's handle is looked up in a write transaction
        # that writes nothing: LMDB ends it without a commit or a sync, so
        # it need not queue behind the writer's commits (creating one does).
        if not self.readonly:
            try:
                return self.write(lambda txn: self._open_db(txn, raw, False),
                                  f"opening namespace {raw.decode('utf-8', 'replace')!r}")
            except Refused as exc:
                raise exc.error from None
        while True:
            self.map_lock.acquire_shared()
            try:
                return self.env.open_db(raw, create=False)
            except lmdb.NotFoundError:
                return None
            except lmdb.MapResizedError:
                pass
            except lmdb.Error as exc:
                raise translate(exc, f"opening namespace {raw!r}") from None
            finally:
                self.map_lock.release_shared()
            self.adopt_map_size()

    def _open_db(self, txn: lmdb.Transaction, raw: bytes, create: bool) -> Any:
        """A namespace's handle, opened inside write transaction txn (None:
        it does not exist and create is False)."""
        try:
            return self.env.open_db(raw, txn=txn, create=create)
        except lmdb.NotFoundError:
            return None
        except lmdb.DbsFullError:
            raise Refused(NamespaceLimitError(
                f"cannot open namespace {raw.decode('utf-8', 'replace')!r}: the store holds max_namespaces "
                f"({self.options.max_namespaces}) already; reopen with a larger max_namespaces")) from None

    def open_db_in(self, txn: lmdb.Transaction, name: str) -> Any:
        """Inside write transaction txn (the applier's): the handle of
        namespace name, created if missing; usable by this process once txn
        commits (adopt_new_dbis)."""
        handle = self._open_db(txn, name.encode("utf-8"), True)
        self._new_dbis[name] = handle
        return handle

    def adopt_new_dbis(self) -> None:
        """After the commit of a transaction that opened handles (open_db_in)."""
        if self._new_dbis:
            with self._dbi_lock:
                for name, handle in self._new_dbis.items():
                    self._dbis.setdefault(name, handle)
                self._new_dbis.clear()

    def upgrade_to_log(self, marker: bytes, restart: bool = False) -> None:
        """Before the writer exists: record that the store has a write-ahead
        log (store format 4: 3 and keyed records) and, for a new log, that nothing of it is
        applied (marker: wal.Applied). The log file exists already, so an
        older kvstore that opens the store refuses it rather than miss it.
        restart: a new log for a store that had one (a copy of data.mdb
        alone): its generation follows the one LMDB last applied."""
        def upgrade(txn: lmdb.Transaction) -> None:
            old = txn.get(APPLIED_KEY, db=self.meta_db)
            if restart and old is not None and len(old) == Applied.size:
                gen = Applied.unpack(old)[0] + 1
                txn.put(APPLIED_KEY, Applied.pack(gen, WAL_HEADER_SIZE, wal_seed(gen)), db=self.meta_db)
            elif old is None:
                txn.put(APPLIED_KEY, marker, db=self.meta_db)
            if int(txn.get(FORMAT_KEY, db=self.meta_db) or 1) < KEYED_STORE_FORMAT:
                txn.put(FORMAT_KEY, str(KEYED_STORE_FORMAT).encode(), db=self.meta_db)

        self.write(upgrade, "adding a write-ahead log to the store")

    def upgrade_to_keyed(self) -> None:
        """Before the writer exists, in a store with a log (format 3): record
        that its writers write version 3 records (store format 4), so that
        kvstore versions reading only version 1 records refuse the store at
        open instead of refusing its values one by one."""
        def upgrade(txn: lmdb.Transaction) -> None:
            if int(txn.get(FORMAT_KEY, db=self.meta_db) or 1) < KEYED_STORE_FORMAT:
                txn.put(FORMAT_KEY, str(KEYED_STORE_FORMAT).encode(), db=self.meta_db)

        self.write(upgrade, "upgrading the store to keyed record checksums")

    def store_format(self) -> int:
        """The store's format number (layout.py); 1 if it cannot be read."""
        raw = self.read(lambda txn: txn.get(FORMAT_KEY, db=self.meta_db))
        try:
            return int(bytes(raw) if raw is not None else b"1")
        except ValueError:
            return BASE_STORE_FORMAT

    def has_log(self) -> bool:
        """Whether the store's format says it has a write-ahead log."""
        return self.store_format() >= WAL_STORE_FORMAT

    def namespace_names(self) -> list[str]:
        names = []
        for raw in self.read(lambda txn: [bytes(k) for k, _ in txn.cursor()]):
            if raw.startswith(b"__"):
                continue
            try:
                names.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                continue  # a database some other tool made; not a namespace
        return names

    # ------------------------------------------------------------ reading

    def read(self, fn: Step[_T], db: Any = None) -> _T:
        """fn(txn) in a read transaction (buffers=True: copy what outlives it)."""
        while True:
            self.map_lock.acquire_shared()
            try:
                with self.env.begin(db=db, buffers=True) as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                pass
            except lmdb.ReadersFullError as exc:
                if not self.clear_stale_readers():
                    raise translate(exc, "reading") from None
                continue
            except lmdb.Error as exc:
                raise translate(exc, "reading") from None
            finally:
                self.map_lock.release_shared()
            self.adopt_map_size()

    def info(self) -> dict[str, Any]:
        self.map_lock.acquire_shared()
        try:
            info: Any = self.env.info()  # LMDB's, with two more keys
            stat = self.env.stat()
        finally:
            self.map_lock.release_shared()
        info["psize"] = stat["psize"]
        info["map_used"] = (info["last_pgno"] + 1) * stat["psize"]
        out: dict[str, Any] = info
        return out

    def commit_seq(self) -> int:
        """Number of commits the store has seen, from any process."""
        raw = self.read(lambda txn: txn.get(SEQ_KEY, db=self.meta_db))
        return SEQ.unpack(raw)[0] if raw is not None else 0

    def bump_seq(self, txn: lmdb.Transaction) -> int:
        """Inside a write transaction: count one more commit; return its number."""
        raw = txn.get(SEQ_KEY, db=self.meta_db)
        seq: int = (SEQ.unpack(raw)[0] if raw is not None else 0) + 1
        txn.put(SEQ_KEY, SEQ.pack(seq), db=self.meta_db)
        return seq

    def close(self) -> None:
        if self.forked:
            return
        self._release_data_file()  # before LMDB lets go of lock.mdb: see lockfile.check_not_replaced
        self.map_lock.acquire_exclusive()
        try:
            self.env.close()
        finally:
            self.map_lock.release_exclusive()


