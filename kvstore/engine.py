"""The engine of one store path in this process: its parts, built in order,
shared by every handle, and their lifecycle.

    Environment (environment.py)     LMDB: files, map, transactions
      Dictionaries (dictionaries.py) trained zstd dictionaries, read from the store
      TTLMeta (ttl.py)               which namespaces hold TTL values, their defaults
      ReadCache + LastTxnid          decoded values, versioned by LMDB's last txnid
      Writer (writer.py)             when writable: every write; its commit hooks
                                     invalidate the cache, keep preallocated room
                                     and teach TTLMeta what committed
      Sweeper (ttl.py)               when writable: deletes expired values

One engine per path per process (LMDB allows one environment per file per
process): `acquire` counts references, `release` drops one, and the last
handle's close commits the pending writes and closes LMDB. At interpreter
exit, SIGTERM and the exit of a multiprocessing child, every engine's
pending writes are committed. An engine inherited through fork() is
abandoned in the child, which reopens the path on first use (the parent's
pending writes stay the parent's to commit).

Handles (store.py, reads.py) hold their path's `Engine`; the CLI and the
integrations reach it through `of(handle)`, and use only the internal API
that the Engine class lists: the parts, and the LMDB operations of its
Environment that the layers above may call.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable

from . import ttl as _ttl
from .cache import LastTxnid, ReadCache
from .cachestats import Publisher
from .dictionaries import Dictionaries
from .environment import Environment
from .preallocate import Preallocator
from .layout import KEYED_STORE_FORMAT
from . import lockfile
from .appender import Appender
from .applier import Applier, initial_marker
from .errors import FormatError, InvalidArgumentError, KVStoreError, ReadOnlyError
from .tail import Tail
from .wal import INDEX_FILE, LOG_FILE, Log
from .options import Options
from .writer import Writer

if TYPE_CHECKING:
    from types import FrameType

    from .overlay import Overlay
    from .store import Store

__all__ = ["Engine", "of", "codec_of", "attach", "detach", "acquire", "release", "all_open"]


class Engine:
    """The parts of one store path in this process, and the internal API
    that handles, the CLI and the integrations use (nothing else of the
    Environment or the parts' private state)."""

    def __init__(self, env: Environment) -> None:
        self.env = env  # LMDB: environment.py
        self.path = env.path
        self.options = env.options
        self.readonly = env.readonly
        self.meta_db = env.meta_db  # the handle of the reserved metadata database (layout.py)
        self.refs = 0  # handles; guarded by _registry_lock
        self.forked = False  # set in a forked child: this engine must not be used
        # for the read hot path (reads.py): no attribute hop through env
        self.map_lock = env.map_lock
        self.lmdb = env.env
        self.dbis = env._dbis
        # the LMDB operations the layers above call
        self.read = env.read  # read(fn) -> fn(txn) in a read transaction
        self.dbi = env.dbi  # dbi(namespace, create) -> LMDB handle or None
        self.info = env.info
        self.commit_seq = env.commit_seq
        self.namespace_names = env.namespace_names
        self.adopt_map_size = env.adopt_map_size
        self.clear_stale_readers = env.clear_stale_readers
        self.writer: Writer | None = None  # when writable (attach)
        self.sweeper: _ttl.Sweeper | None = None  # when writable (attach)
        self.cache: ReadCache | None = None
        self.last_txnid: LastTxnid | None = None
        # the cache's counters in cache.stats, for `kvstore stat --watch`
        # (cachestats.py): writable engines with a cache only
        self.cache_stats: Publisher | None = None
        # with a write-ahead log (wal.py): the log, its tail as this process
        # reads it (tail.py), and the applier that moves it into LMDB
        self.log: Log | None = None
        self.tail: Tail | None = None
        self.applier: Applier | None = None
        self.overlay: Overlay | None = None  # the pending writes reads look at first (tail's, or the writer's)
        self._without_log: int | None = None  # lockfile descriptors (_open_log)
        self._adding_log: int | None = None
        try:
            # the zeroed room in data.mdb (preallocate.py): sized before the log is applied
            self.preallocator = Preallocator(env)
            self._open_log(env)
            # whether records are written with the key in their checksum
            # (version 3; codec/format.py): in a store of format 4
            self.keyed = env.store_format() >= KEYED_STORE_FORMAT
            self.dicts = Dictionaries(env)
            self.ttl = _ttl.TTLMeta(env, env.options.clock)
            self.cache, self.last_txnid = _start_cache(env)
            if self.cache is not None and not self.readonly:
                self.cache_stats = Publisher.start(env.path, self.cache.counters)
        except BaseException:
            if self.log is not None:
                self.log.close()
            for fd in (self._without_log, self._adding_log):
                if fd is not None:
                    os.close(fd)
            env.close()
            raise

    def _open_log(self, env: Environment) -> None:
        """Open the store's write-ahead log, if it has one (or gets one:
        Options.wal). A writable open whose index could not be trusted (the
        first open since a reboot, or after a process died inside a change
        of it) rebuilds the index and applies the whole log to LMDB before
        anything is read: that is the recovery."""
        opts = env.options
        has_log = env.has_log()
        if not has_log:
            right = None if env.readonly or not opts.wal else lockfile.may_add_log(env.path)
            if right is None:
                # without a log, saying so (lockfile.hold_without_log), so
                # that no process adds one under this one; unless one was
                # added just before
                self._without_log = lockfile.hold_without_log(env.path)
                if not env.has_log():
                    return
                os.close(self._without_log)  # type: ignore[arg-type]  # held just above
                self._without_log = None
                has_log = True
            else:
                self._adding_log = right  # closed once the log is added (below, or on an error)
        # A store whose format says it has a log and that has neither log
        # file is a copy of data.mdb alone (`kvstore backup`, mdb_copy, cp),
        # which holds everything its copy took: it starts a new log. With
        # the index left and the log gone, the log was lost: an error (its
        # writes may not be in LMDB), raised by Log.
        copied = has_log and not any(os.path.exists(os.path.join(env.path, name))
                                     for name in (LOG_FILE, INDEX_FILE))
        if copied and env.readonly:
            return
        log = Log(env.path, readonly=env.readonly, create=not (env.readonly or (has_log and not copied)),
                  initial_size=opts.log_initial_size, max_size=opts.log_size)
        try:
            applier = Applier(env, log)
            recover: Callable[[], object]
            if env.readonly:
                if not log.index_valid():
                    log.wait_for_writer()  # a live writer inside a change, perhaps descheduled
                if not log.index_valid():
                    raise FormatError(
                        f"{env.path!r}: the store's write-ahead log index is not current (the machine "
                        f"restarted, or a writer died while changing it), and a read-only open cannot "
                        f"rebuild it; run `kvstore checkpoint {env.path}` (or open the store for "
                        f"writing once), then open it read-only again")
                def recover_readonly() -> None:
                    # a live writer's change takes microseconds, but the
                    # writer may be descheduled inside it: wait for it first
                    log.wait_for_writer()
                    if log.state() is None:
                        _cannot_recover()

                recover = recover_readonly
            else:
                if not has_log or copied:  # (a write transaction: only when there is something to write)
                    env.upgrade_to_log(initial_marker(), restart=copied)
                elif env.store_format() < KEYED_STORE_FORMAT:
                    env.upgrade_to_keyed()
                applier.recover()  # an index that cannot be trusted: rebuilt, and the log replayed into LMDB
                recover = applier.recover
            tail = Tail(log, recover)
            tail.catch_up()
        except BaseException:
            log.close()
            raise
        if self._adding_log is not None:
            os.close(self._adding_log)
            self._adding_log = None
        self.log, self.tail, self.applier = log, tail, applier
        self.overlay = tail.overlay

    def snapshot(self, ns: str, lo: bytes | None = None, hi: bytes | None = None
                 ) -> list[tuple[bytes, bytes | None]]:
        """[(key, stored or TOMBSTONE)] pending in namespace ns (keys in
        [lo, hi) in order when a bound is given): the overlay.py snapshot
        of the tail's (caught up first) or the writer's pending writes."""
        tail = self.tail
        if tail is not None:
            tail.refresh()
            with tail.lock:
                return tail.overlay.snapshot(ns, lo, hi)
        if self.writer is not None:
            return self.writer.snapshot(ns, lo, hi)
        return []

    def current_txnid(self) -> int:
        """The txnid of the last commit to the store, by any process: from
        LMDB's meta pages directly when the read cache set that up
        (LastTxnid, no lock), else through LMDB."""
        if self.last_txnid is not None:
            return self.last_txnid()
        txnid: int = self.env.info()["last_txnid"]
        return txnid

    def close(self) -> None:
        if self.forked:
            return
        if self.cache_stats is not None:
            self.cache_stats.close()
        if self.last_txnid is not None:
            self.last_txnid.close()
        if self.log is not None:
            self.log.close()
        if self._without_log is not None:
            os.close(self._without_log)
            self._without_log = None
        self.env.close()


def _cannot_recover() -> None:
    raise FormatError("the store's write-ahead log index was left half changed by a writer that "
                      "died; a read-only handle cannot repair it: open the store for writing once "
                      "(or run `kvstore checkpoint PATH`), then read it again")


def of(handle: Store[Any]) -> Engine:
    """The engine behind a Store or Namespace handle (after checking the
    handle is open, and reopening it after a fork): the CLI's entry."""
    return handle._live_engine()


def codec_of(handle: Store[Any]) -> Any:
    """The codec (kvstore.codec.Codec) a handle encodes and decodes with."""
    return handle._root._codec


def attach(path: str, options: Options) -> Engine:
    """The engine of path for one more handle: opened and built on first
    use, with its writer and sweeper started when writable."""
    engine = acquire(path, options)
    try:
        if not engine.readonly and engine.writer is None:
            with _registry_lock:
                if engine.writer is None:
                    engine.writer = _start_writer(engine, options)
                    engine.sweeper = _ttl.Sweeper(engine, engine.writer, options.ttl_sweep_interval,
                                                  options.ttl_sweep_batch, options.clock)
    except BaseException:
        detach(engine)
        raise
    _install_exit_hooks()
    _commit_at_multiprocessing_exit()
    return engine


def _start_cache(env: Environment) -> tuple[ReadCache | None, LastTxnid | None]:
    """The read cache (kvstore/cache.py), unless the options turn it off.

    Its versions come from LastTxnid, which reads LMDB's meta pages
    itself; if that does not agree with LMDB's own reading (an LMDB
    build with another meta layout), the cache stays off rather than
    risk serving a stale value."""
    opts = env.options
    cache = ReadCache.create(opts.cache_entries, opts.cache_bytes, clock=opts.clock)
    if cache is None:
        return None, None
    try:
        last = LastTxnid(env.path)
    except (OSError, ValueError):
        return None, None
    before = env.info()["last_txnid"]
    mine = last()
    after = env.info()["last_txnid"]
    if not before <= mine <= after:
        last.close()
        return None, None
    return cache, last




def _start_writer(engine: Engine, options: Options) -> Writer:
    """The writer of the engine, with the parts above it subscribed to its commits."""
    env = engine.env
    log = None
    if engine.tail is not None and engine.applier is not None:  # a store with a log
        log = Appender(env, options, engine.tail, engine.applier)
    writer = Writer(env, options, log)
    if engine.applier is not None:
        engine.applier.hooks = writer._hooks  # with a log, commits to LMDB are the applier's
    else:
        engine.overlay = writer.overlay
    cache = engine.cache
    if cache is not None:
        def invalidate(groups: list[Any]) -> None:
            # The commit changed these keys: free their cached values now
            # (correctness does not need it: the commit moved the txnid, so
            # their entries would be revalidated on their next read).
            if len(cache):
                cache.invalidate_many((ns, key) for g in groups for ns, _dbi, key, _r in g.ops)

        writer.on_commit(invalidate)

    room = engine.preallocator

    def check_room(groups: list[Any]) -> None:
        if room.space_low():  # the zeroed room past LMDB's pages fell below half
            writer.schedule(room.step)

    writer.on_commit(check_room)
    writer.on_commit(engine.ttl.committed)
    env.route_writes(writer.run)
    return writer


def detach(env: Engine) -> None:
    """Drop one handle's reference; the last one flushes and closes."""
    if not release(env):
        return
    try:
        _stop(env)
    finally:
        env.close()


def _stop(env: Engine) -> None:
    """Stop the sweeper, then commit the pending writes and stop the writer."""
    if env.sweeper is not None:
        env.sweeper.stop()
    if env.writer is not None:
        env.writer.close()


_hooks_installed = False
_hooks_lock = threading.Lock()
_finalizer_pid = 0  # the process that registered _close_all with multiprocessing


def _close_all() -> None:
    """At interpreter exit: commit every pending write of every open store."""
    for env in all_open():
        if env.forked:
            continue
        try:
            _stop(env)
        except KVStoreError as exc:
            print(f"kvstore: {env.path}: {exc}", file=sys.stderr)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwind the main thread (releasing any lock it holds) and exit through
    # the interpreter's normal shutdown, where atexit commits pending writes.
    raise SystemExit(128 + signum)


def _install_exit_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
        atexit.register(_close_all)
        if threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                    signal.signal(signal.SIGTERM, _on_sigterm)
            except (ValueError, OSError):
                pass  # not the main interpreter: the application owns signals


def _commit_at_multiprocessing_exit() -> None:
    """A multiprocessing child ends with os._exit() when its target returns:
    atexit never runs there, but multiprocessing's own exit function runs the
    finalizers registered in the child. Register the commit of pending
    writes there too, once per process (a child forked from this one
    registers again when it first uses a store)."""
    global _finalizer_pid
    pid = os.getpid()
    if _finalizer_pid == pid:
        return
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is None:
        return  # no multiprocessing: no child of it either
    with _hooks_lock:
        if _finalizer_pid != pid:
            _finalizer_pid = pid
            mp_util.Finalize(None, _close_all, exitpriority=10)


# ---------------------------------------------------------------- registry

_registry: dict[str, Engine] = {}  # guarded by _registry_lock
_registry_lock = threading.Lock()


def acquire(path: str, options: Options) -> Engine:
    """The shared Engine for path, opened on first use; count a reference."""
    key = os.path.realpath(os.path.abspath(os.fspath(path)))
    with _registry_lock:
        env = _registry.get(key)
        if env is None:
            env = Engine(Environment(key, options))
            _registry[key] = env
        elif env.readonly and not options.readonly:
            raise ReadOnlyError(
                f"{key!r} is already open read-only in this process; close those handles before "
                f"opening it for writing (one LMDB environment per path per process)"
            )
        elif options.clock is not env.options.clock:
            # the engine's parts judge expiry by the clock it was built with
            raise InvalidArgumentError(
                f"{key!r} is already open in this process with another clock "
                f"({env.options.clock!r}); every handle of a path shares one clock: pass the same one, "
                f"or close the other handles first")
        env.refs += 1
        return env


def release(env: Engine) -> bool:
    """Drop a reference; True when it was the last (the caller then closes)."""
    with _registry_lock:
        env.refs -= 1
        if env.refs > 0:
            return False
        if _registry.get(env.path) is env:
            del _registry[env.path]
        return True


def all_open() -> list[Engine]:
    with _registry_lock:
        return list(_registry.values())


_held_for_fork: list[Engine] = []


def _before_fork() -> None:
    # Fork only when no transaction of ours is active: a child that closes
    # an inherited environment aborts its live transactions, and with
    # MDB_NOTLS that frees their reader slots, which the parent still uses.
    _registry_lock.acquire()
    for env in _registry.values():
        env.map_lock.acquire_exclusive()
        _held_for_fork.append(env)


def _after_fork_in_parent() -> None:
    while _held_for_fork:
        _held_for_fork.pop().map_lock.release_exclusive()
    _registry_lock.release()


def _after_fork_in_child() -> None:
    # The parent's threads are gone here, and its locks are copies: give the
    # inherited environments nothing but a flag. Handles reopen on next use.
    global _registry_lock
    _registry_lock = threading.Lock()
    _held_for_fork.clear()
    for engine in _registry.values():
        engine.forked = engine.env.forked = True
        if engine.log is not None:
            engine.log.abandon()  # the parent's append and apply locks stay the parent's
        if engine.writer is not None:
            engine.writer.abandon_worker()  # likewise: its apply worker
        env = engine.env
        if env._data_lock_fd is not None:
            os.close(env._data_lock_fd)  # the parent's lock stays: its own descriptor holds it
            env._data_lock_fd = None
        if env._gate is not None:
            env._gate.close()  # likewise: the parent's write gate must go when the parent dies
        if engine.cache_stats is not None:
            engine.cache_stats.abandon()  # likewise: its cache.stats slot
    _registry.clear()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
