"""What the commands share: errors with exit statuses, opening stores,
namespaces, progress on stderr, sizes."""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, TextIO

import kvstore
from kvstore import engine
from kvstore.clock import now_ms
from kvstore.layout import DEFAULT_NAMESPACE, META_DB
from kvstore.errors import KVStoreError, StoreNotFoundError

from ._encoding import dumps, escape_key

if TYPE_CHECKING:
    import argparse

    from kvstore.store import Store

    # What every command module's add_parser(subparsers) and run(args, out) take
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
    Parser = argparse.ArgumentParser
    Args = argparse.Namespace
    Out = TextIO

# The clock a command's stores judge expiry by (kvstore.cli.main's; None: time.time)
Clock = Callable[[], float] | None

__all__ = ["CommandError", "NotFound", "is_url", "open_readonly", "open_writable", "namespace_handle",
           "namespace_dbi", "Progress", "human_size", "plural", "quote_key", "write_json", "is_terminal",
           "utc_text", "expiry_doc", "expiry_text", "now_of", "clock_of"]

# The CLI opens stores with room for many namespaces, so that it can show a
# store whose application raised max_namespaces; it costs a few bytes each.
CLI_MAX_NAMESPACES = 1024


class CommandError(Exception):
    """A failure the command explains: printed as `kvstore: error: MESSAGE`."""

    status = 2

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class NotFound(CommandError):
    """A key or namespace that is not in the store: exit status 1."""

    status = 1


def quote_key(key: bytes | memoryview) -> str:
    return "'" + escape_key(key) + "'"


def is_terminal(stream: Any) -> bool:
    try:
        tty: bool = stream.isatty()
        return tty
    except (AttributeError, ValueError):
        return False


def write_json(out: TextIO, doc: Any, indent: int | None = 2) -> None:
    out.write(dumps(doc, indent=indent) + "\n")


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def human_size(n: float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def utc_text(ms: int) -> str:
    """A time in ms since the Unix epoch as ISO 8601 UTC, to the millisecond."""
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def expiry_doc(expires_ms: int | None, ttl_ms: Any, now_ms: int) -> dict[str, Any] | None:
    """The JSON form of a record's expiry: None without a TTL."""
    if expires_ms is None:
        return None
    return {"expires_at": expires_ms / 1000, "expires_at_utc": utc_text(expires_ms),
            "expires_in": (expires_ms - now_ms) / 1000, "ttl": ttl_ms / 1000,
            "expired": expires_ms <= now_ms}


def expiry_text(expires_ms: int | None, ttl_ms: Any, now_ms: int) -> str:
    """One line for a record's expiry, as inspect and get --ttl print it."""
    if expires_ms is None:
        return "never (no TTL)"
    when = f"{utc_text(expires_ms)} ({expires_ms / 1000:.3f})"
    if expires_ms > now_ms:
        state = f"in {(expires_ms - now_ms) / 1000:.3f} s"
    else:
        state = f"EXPIRED {(now_ms - expires_ms) / 1000:.3f} s ago"
    return f"{when}, {state}; ttl {ttl_ms / 1000:g} s"


# ---------------------------------------------------------------- stores

# Where a command takes a store PATH it also takes the URL of a store on an
# etcd cluster (docs/distributed.md): it then works through the public Store
# API only, since there is no LMDB file to read.
URL_SCHEMES = ("etcd://",)


def is_url(path: str) -> bool:
    """Whether a command's PATH argument names a store on a cluster, not a directory."""
    return isinstance(path, str) and path.startswith(URL_SCHEMES)


def _open_url(url: str, **options: Any) -> Store:
    # No clock: a store on etcd judges expiry by the cluster's leases
    store: Store = kvstore.open(url, **options)
    return store


def _open(path: str, clock: Clock, **options: Any) -> Store:
    if clock is not None:
        options["clock"] = clock
    try:
        return kvstore.open(path, max_namespaces=CLI_MAX_NAMESPACES, **options)
    except KVStoreError:
        raise
    except (KeyError, TypeError, ValueError, EOFError) as exc:
        # Opening reads the store's dictionaries from its metadata; a damaged
        # entry there surfaces as a msgpack or zstd error, not a KVStoreError.
        what = f"{type(exc).__module__.split('.')[0]}.{type(exc).__name__}" + (f": {exc}" if str(exc) else "")
        raise CommandError(f"cannot open the store at {path!r}: its metadata (the {META_DB.decode()} "
                           f"database, where the dictionaries are) is damaged ({what})") from None


def open_readonly(path: str, clock: Clock = None) -> Store:
    """The store at path, read-only; StoreNotFoundError if there is none.
    clock: its Options.clock (None: the default); commands pass args.clock,
    which kvstore.cli.main sets. A store whose write-ahead log holds
    records LMDB does not have yet is checkpointed first (when this process
    may write it), so that commands reading LMDB see every acknowledged write.
    An etcd URL opens that store with readonly=True, on the cluster's clock
    (its leases), whatever clock says."""
    from .checkpoint import unapplied_bytes  # checkpoint.py imports this module

    if is_url(path):
        return _open_url(path, readonly=True)
    pending = unapplied_bytes(path)
    if pending and os.access(os.fspath(path), os.W_OK):
        _open(path, clock).close()  # a writable close applies the log
    elif pending:
        print(f"kvstore: warning: {pending} bytes of acknowledged writes of {os.fspath(path)!r} are "
              f"still only in its write-ahead log, which this user may not apply: reads through "
              f"kvstore see them, but dump, check, backup and compact read data.mdb and do not; run "
              f"`kvstore checkpoint {os.fspath(path)}` as a user who may write the store first",
              file=sys.stderr)
    return _open(path, clock, readonly=True)


def open_writable(path: str, create: bool, clock: Clock = None, **options: Any) -> Store:
    """The store at path for writing; every write durable by default. Creates
    the store only when create is True. clock: as for open_readonly;
    options: more of kvstore.open's (wal=False: never add a log to a store
    that has none; a store that has one uses it anyway). An etcd URL opens
    that store (there is nothing to create; clock is not used)."""
    if is_url(path):
        return _open_url(path, durable=True, **options)
    if not create and not os.path.exists(os.path.join(os.fspath(path), "data.mdb")):
        raise StoreNotFoundError(f"no kvstore store at {os.fspath(path)!r}")
    return _open(path, clock, durable=True, **options)


def clock_of(db: Store[Any]) -> Callable[[], float]:
    """The clock an opened store judges expiry by: its Options.clock, or
    time.time for a store on etcd (its leases run on the cluster's)."""
    clock: Callable[[], float] = getattr(db.options, "clock", time.time)
    return clock


def now_of(db: Store[Any]) -> int:
    """Now in ms on the clock of an opened store: what a command judges
    expiry by."""
    return now_ms(clock_of(db))


def namespace_dbi(db: Store, name: str) -> Any:
    """The LMDB handle of namespace name; NotFound if the store lacks it.

    The default namespace always exists (it may lack a database, in a store
    made by other tools: then it reads as empty and this returns None)."""
    dbi = engine.of(db).dbi(name, create=False)
    if dbi is None and name != DEFAULT_NAMESPACE:
        names = ", ".join(db.namespaces())
        raise NotFound(f"no namespace {name!r} in the store at {db.path!r} (it holds: {names})")
    return dbi


def namespace_handle(db: Store, name: str, create: bool = False) -> Store:
    """A handle on namespace name (the store itself for the default one);
    NotFound, unless create, when the store lacks it."""
    if name == DEFAULT_NAMESPACE:
        return db
    if not create and is_url(db.path):
        names = db.namespaces()
        if name not in names:
            raise NotFound(f"no namespace {name!r} in the store at {db.path!r} (it holds: {', '.join(names)})")
    elif not create:
        namespace_dbi(db, name)
    return db.namespace(name)


# ---------------------------------------------------------------- progress


class Progress:
    """A progress bar on stderr with count, rate and ETA (tqdm), drawn only
    when the stream is a terminal; silent otherwise, and then tqdm is not
    even imported (the CLI's start-up and piped runs pay nothing for it).

    Every long command uses one, and a command of its own can too (compact:
    a `with Progress(...)` around each long step):

        with Progress("dump", total) as progress:    # total: None if unknown
            for ...: progress.update()               # one more item done
        with Progress("copy", nbytes, unit="bytes", poll=lambda: os.path.getsize(f)):
            long_call()                              # poll() -> done so far, read 5 times a second

    unit: "records" (the default), "bytes" (sizes in KiB/MiB) or any word.
    poll: for work that reports nothing while it runs (an LMDB copy, zstd's
    training); a thread calls it and redraws (poll may return None: only the
    elapsed time moves)."""

    def __init__(self, label: str, total: int | None = None, *, unit: str = "records", stream: Any = None,
                 poll: Callable[[], int | None] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = is_terminal(self.stream)
        self.total = total
        self.done = 0  # guarded by _lock (a poll thread may update too)
        self._lock = threading.Lock()
        self._bar: Any = None  # tqdm's
        self._stop: threading.Event | None = None
        if not self.enabled:
            return
        from tqdm import tqdm  # only for a terminal: see the class docstring

        in_bytes = unit == "bytes"
        self._bar = tqdm(total=total or None, desc=label, unit="B" if in_bytes else " " + unit,
                         unit_scale=in_bytes, unit_divisor=1024 if in_bytes else 1000, file=self.stream,
                         mininterval=0.1, dynamic_ncols=True, leave=True)
        if poll is not None:
            self._stop = threading.Event()
            self._poller = threading.Thread(target=self._poll, args=(poll,), daemon=True)
            self._poller.start()

    def _poll(self, poll: Callable[[], int | None]) -> None:
        while not self._stop.wait(0.2):  # type: ignore[union-attr]  # set before the thread starts
            try:
                done = poll()
            except OSError:
                continue
            if done is None:
                self._bar.refresh()
            else:
                self.set(done)

    def update(self, n: int = 1) -> None:
        if self._bar is None:
            self.done += n
            return
        with self._lock:
            self.done += n
            self._bar.update(n)

    def set(self, done: int) -> None:
        if self._bar is None:
            self.done = done
            return
        with self._lock:
            self._bar.update(done - self.done)
            self.done = done

    def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._poller.join()
            self._stop = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
