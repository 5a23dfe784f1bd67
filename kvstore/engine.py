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

Today the engine's parts hang off the Environment object (env.writer,
env.cache, ...), which is what handles and the CLI hold.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading

from . import ttl as _ttl
from .cache import LastTxnid, ReadCache
from .dictionaries import Dictionaries
from .environment import Environment
from .errors import KVStoreError, ReadOnlyError
from .options import Options
from .writer import Writer

__all__ = ["attach", "detach", "acquire", "release", "all_open"]


def attach(path: str, options: Options) -> Environment:
    """The engine of path for one more handle: opened and built on first
    use, with its writer and sweeper started when writable."""
    env = acquire(path, options)
    try:
        if not env.readonly and env.writer is None:
            with _registry_lock:
                if env.writer is None:
                    env.writer = _start_writer(env, options)
                    env.sweeper = _ttl.Sweeper(env, env.writer, options.ttl_sweep_interval,
                                               options.ttl_sweep_batch, env.options.clock)
    except BaseException:
        detach(env)
        raise
    _install_exit_hooks()
    _commit_at_multiprocessing_exit()
    return env


def _build(env: Environment) -> Environment:
    """The parts above LMDB that every engine has (see the module docstring)."""
    try:
        env.dicts = Dictionaries(env)
        env.ttl = _ttl.TTLMeta(env, env.options.clock)
        _start_cache(env)
    except BaseException:
        env.close()
        raise
    return env


def _start_cache(env: Environment) -> None:
    """The read cache (kvstore/cache.py), unless the options turn it off.

    Its versions come from LastTxnid, which reads LMDB's meta pages
    itself; if that does not agree with LMDB's own reading (an LMDB
    build with another meta layout), the cache stays off rather than
    risk serving a stale value."""
    opts = env.options
    cache = ReadCache.create(opts.cache_entries, opts.cache_bytes, clock=opts.clock)
    if cache is None:
        return
    try:
        last = LastTxnid(env.path)
    except (OSError, ValueError):
        return
    before = env.info()["last_txnid"]
    mine = last()
    after = env.info()["last_txnid"]
    if not before <= mine <= after:
        last.close()
        return
    env.cache, env.last_txnid = cache, last




def _start_writer(env, options: Options) -> Writer:
    """The writer of env, with the parts above it subscribed to its commits."""
    writer = Writer(env, options)
    cache = env.cache
    if cache is not None:
        def invalidate(groups):
            # The commit changed these keys: free their cached values now
            # (correctness does not need it: the commit moved the txnid, so
            # their entries would be revalidated on their next read).
            if len(cache):
                cache.invalidate_many((ns, key) for g in groups for ns, _dbi, key, _r in g.ops)

        writer.on_commit(invalidate)

    def check_room(groups):
        if env.space_low():  # the zeroed room past LMDB's pages fell below half
            writer.schedule(env.preallocate)

    writer.on_commit(check_room)
    writer.on_commit(env.ttl.committed)
    env.route_writes(writer.run)
    return writer


def detach(env) -> None:
    """Drop one handle's reference; the last one flushes and closes."""
    if not release(env):
        return
    try:
        _stop(env)
    finally:
        env.close()


def _stop(env) -> None:
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


def _on_sigterm(signum, frame):
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

_registry: dict[str, Environment] = {}  # guarded by _registry_lock
_registry_lock = threading.Lock()


def acquire(path: str, options: Options) -> Environment:
    """The shared Environment for path, opened on first use; count a reference."""
    key = os.path.realpath(os.path.abspath(os.fspath(path)))
    with _registry_lock:
        env = _registry.get(key)
        if env is None:
            env = _build(Environment(key, options))
            _registry[key] = env
        elif env.readonly and not options.readonly:
            raise ReadOnlyError(
                f"{key!r} is already open read-only in this process; close those handles before "
                f"opening it for writing (one LMDB environment per path per process)"
            )
        elif options.clock is not env.options.clock:
            # the engine's parts judge expiry by the clock it was built with
            raise ValueError(f"{key!r} is already open in this process with another clock "
                             f"({env.options.clock!r}); every handle of a path shares one clock")
        env.refs += 1
        return env


def release(env: Environment) -> bool:
    """Drop a reference; True when it was the last (the caller then closes)."""
    with _registry_lock:
        env.refs -= 1
        if env.refs > 0:
            return False
        if _registry.get(env.path) is env:
            del _registry[env.path]
        return True


def all_open() -> list[Environment]:
    with _registry_lock:
        return list(_registry.values())


_held_for_fork: list[Environment] = []


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
    for env in _registry.values():
        env.forked = True
        if env._data_lock_fd is not None:
            os.close(env._data_lock_fd)  # the parent's lock stays: its own descriptor holds it
            env._data_lock_fd = None
    _registry.clear()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
