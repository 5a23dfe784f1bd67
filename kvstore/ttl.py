"""Time to live: values that expire, namespace defaults, and the sweep.

A value put with `ttl=seconds` (or into a namespace that has a default TTL)
is stored as a `ttl_record`: its ordinary record behind a 22-byte prefix
holding when it expires and the TTL it was given (kvstore/codec/format.py
defines the bytes). Times are wall-clock (`time.time()`, in milliseconds on
disk), so an expiry means the same to every process and survives restarts.
They are read from the store's clock (Options.clock, kvstore/clock.py),
which TTLMeta and the Sweeper are given: time.time unless a test or a
simulation passes its own.

Reads treat a value whose expiry has passed as missing, wherever they find
it: in LMDB, in this process's pending writes, in the read cache (an entry
remembers its expiry). Nothing has to delete it for that; deleting only
gives the space back:

- `Sweeper`: a thread per writable process reads a bounded chunk of records
  per pass and deletes the expired ones through the group-commit writer, as
  a `Sweep` group: inside the write transaction each key is deleted only if
  the record it holds then has expired, so a key written again (with a new
  TTL or none) since the sweep looked is never deleted.
- `kvstore compact` leaves expired values out of the copy.

`get(key, refresh_ttl=True)` rewrites a live value's prefix with expiry now
+ ttl, as a `Refresh` group: applied only if the key still holds the same
value when it commits.

Metadata, in the reserved ``__kvstore__`` database::

    b"ttl:" + namespace  ->  u64 big-endian: the namespace's default TTL in
                             milliseconds, 0 for none

A namespace gets its key no later than its first TTL value: in the same
write transaction (the value's group carries an `Enable` step until this
process has seen the key committed), and keeps it: so a namespace without one holds no TTL value, and its len() is LMDB's
entry count, with no record to look at. Writing the first one also sets the store's
format_version to 2 (layout.TTL_STORE_FORMAT), which kvstore versions
without TTL refuse to open.
"""

from __future__ import annotations

import math
import struct
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    import lmdb

    from .engine import Engine
    from .environment import Environment
    from .overlay import Overlay
    from .writer import Writer

Clock = Callable[[], float]

from .clock import now_ms
from .codec.format import TTL_HEADER_SIZE, TTL_VERSION, parse_ttl, ttl_expired, wrap_ttl
from .layout import FORMAT_KEY, TTL_PREFIX, TTL_STORE_FORMAT
from .errors import CorruptionError, InvalidTTLError, StoreClosedError, StoreFailedError
from .writer import ConditionalGroup

__all__ = ["TTLMeta", "Sweeper", "Sweep", "Refresh", "to_ms", "default_to_ms", "expiry_ms",
           "stamp", "TTL_PREFIX", "MAX_TTL"]

_DEFAULT = struct.Struct(">Q")

# Longest TTL accepted, seconds (100 years); math.inf means "never expires".
MAX_TTL = 100 * 365 * 86400

def to_ms(ttl: float) -> int:
    """A TTL in seconds as whole milliseconds (at least 1); 0 for math.inf
    (no expiry). InvalidTTLError for anything else."""
    t = type(ttl)
    if (t is int or t is float) and 0.001 <= ttl <= MAX_TTL:  # the common case, quickly
        return round(ttl * 1000)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise InvalidTTLError(f"ttl must be a number of seconds, not {type(ttl).__name__}; "
                              f"pass ttl=None for the namespace's default, math.inf for no expiry")
    if ttl == math.inf:
        return 0
    if not 0 < ttl <= MAX_TTL:  # also refuses nan
        raise InvalidTTLError(f"ttl must be > 0 and at most {MAX_TTL} seconds (100 years), not {ttl!r}; "
                              f"pass math.inf for a value that never expires")
    return max(1, round(ttl * 1000))


def default_to_ms(ttl: float) -> int:
    """A namespace's default TTL in seconds as milliseconds: like to_ms, but
    it must be finite (a namespace without a default has none)."""
    ms = to_ms(ttl)
    if not ms:
        raise InvalidTTLError(f"a namespace's default ttl must be finite, not {ttl!r}; leave it out, or "
                              f"call set_default_ttl(None), for values that never expire")
    return ms


def expiry_ms(record: bytes | memoryview) -> int:
    """When a stored record expires (Unix epoch, milliseconds); 0 if it has no
    TTL. CorruptionError if its TTL prefix is damaged."""
    if len(record) and record[0] == TTL_VERSION:
        return parse_ttl(record)[0]
    return 0


def stamp(env: Engine, ns: str, record: bytes, ttl: float | None) -> tuple[bytes, Enable | None]:
    """(the bytes to store, a step for the group's `before`) for a freshly
    encoded record in namespace ns: with its TTL prefix when ttl (seconds;
    None: the namespace's default) says so.

    Raises InvalidTTLError for a bad ttl, before anything is queued. Until
    the namespace's metadata key is committed, each TTL value's group
    carries the step that writes it (`Enable`), in the same transaction as
    the value: the first TTL value of a namespace costs no commit of its
    own (see the module docstring). The expiry is now on the store's clock
    (env.ttl.clock) + the TTL."""
    meta = env.ttl
    ms = meta.defaults.get(ns, 0) if ttl is None else to_ms(ttl)
    if not ms:
        return record, None
    return wrap_ttl(record, now_ms(meta.clock) + ms, ms), meta.step_for(ns)


# ---------------------------------------------------------------- metadata


def ttl_of(meta_value: bytes | memoryview | None) -> int:
    """The default TTL (ms) in a ttl: key's value; 0 for none (or a damaged value)."""
    ms: int = _DEFAULT.unpack(bytes(meta_value))[0] if meta_value is not None and len(meta_value) == 8 else 0
    return ms


class Enable:
    """A group's `before` step (writer.Group): give the namespaces their
    ttl: key if they have none, and the store format 2, inside the group's
    own write transaction. Repeatable; harmless where already done."""

    __slots__ = ("meta", "namespaces")

    def __init__(self, meta: TTLMeta, namespaces: frozenset[str]) -> None:
        self.meta = meta
        self.namespaces = namespaces

    def __or__(self, other: "Enable | None") -> "Enable":
        """The step of a batch that writes TTL values into several namespaces."""
        if other is None or other.namespaces <= self.namespaces:
            return self
        return Enable(self.meta, self.namespaces | other.namespaces)

    __ror__ = __or__

    def __call__(self, txn: lmdb.Transaction) -> None:
        meta = self.meta._env.meta_db
        for ns in self.namespaces:
            key = TTL_PREFIX + ns.encode("utf-8")
            if txn.get(key, db=meta) is None:
                txn.put(key, _DEFAULT.pack(0), db=meta)
        _upgrade_format(txn, meta)


def _upgrade_format(txn: lmdb.Transaction, meta: Any) -> None:
    if int(txn.get(FORMAT_KEY, db=meta) or 1) < TTL_STORE_FORMAT:
        txn.put(FORMAT_KEY, str(TTL_STORE_FORMAT).encode(), db=meta)


class TTLMeta:
    """The TTL metadata of one store as this process knows it: which
    namespaces may hold TTL values, and their default TTLs; and the clock
    new TTL values are stamped by (Options.clock)."""

    def __init__(self, env: Environment, clock: Clock) -> None:
        self._env = env
        self.clock = clock  # a callable returning wall-clock seconds (kvstore/clock.py)
        self._lock = threading.Lock()  # serialises enable() and reload()
        # replaced whole, never mutated: read without the lock
        self.defaults: dict[str, int] = {}  # namespace -> default TTL, ms (only those with one)
        self.namespaces: frozenset[str] = frozenset()  # namespaces that have a ttl: key
        self._steps: dict[str, Enable] = {}  # handed out and not yet seen committed
        self.reload()

    def step_for(self, ns: str) -> "Enable | None":
        """None if ns has its ttl: key; else the step a group writing a TTL
        value into ns must carry (`stamp`)."""
        if ns in self.namespaces:
            return None
        step = self._steps.get(ns)
        if step is None:
            step = self._steps.setdefault(ns, Enable(self, frozenset((ns,))))
        return step

    def committed(self, groups: list[Any]) -> None:
        """Commit hook (Writer.on_commit): namespaces whose ttl: key a
        committed group's step wrote are known to have it from now on."""
        if not self._steps:
            return
        done: set[str] = set()
        for g in groups:
            if type(g.before) is Enable:
                done |= g.before.namespaces
        if done:
            with self._lock:
                self.namespaces = self.namespaces | done
                for ns in done:
                    self._steps.pop(ns, None)

    def _read(self, txn: lmdb.Transaction) -> dict[str, int]:
        """namespace -> default ms (0: none) of every ttl: key, inside txn."""
        out = {}
        cur = txn.cursor(db=self._env.meta_db)
        if cur.set_range(TTL_PREFIX):
            for key, value in cur:
                key = bytes(key)
                if not key.startswith(TTL_PREFIX):
                    break
                out[key[len(TTL_PREFIX):].decode("utf-8", "replace")] = ttl_of(value)
        return out

    def reload(self) -> None:
        """Read the ttl: keys afresh (other processes may have changed them).
        Under the lock: a reload that read before an enable() committed must
        not replace what that enable() adopted."""
        with self._lock:
            self._adopt(self._env.read(self._read))

    def _adopt(self, found: dict[str, int]) -> None:
        self.defaults = {ns: ms for ns, ms in found.items() if ms}
        self.namespaces = frozenset(found)

    def default(self, ns: str) -> int:
        """The namespace's default TTL in ms (0: none), as stored now."""
        key = TTL_PREFIX + ns.encode("utf-8")
        return ttl_of(self._env.read(lambda txn: txn.get(key, db=self._env.meta_db)))

    def set_default(self, ns: str, default_ms: int, writer: Writer) -> None:
        """Set ns's default TTL (0 removes it), giving it its ttl: key and the
        store format 2; durable, through the writer (Writer.run)."""
        env = self._env
        key = TTL_PREFIX + ns.encode("utf-8")

        def write(txn: lmdb.Transaction) -> dict[str, int]:
            meta = env.meta_db
            txn.put(key, _DEFAULT.pack(default_ms), db=meta)
            _upgrade_format(txn, meta)
            return self._read(txn)

        found = writer.run(write)
        with self._lock:
            self._adopt(found)


# ---------------------------------------------------------------- conditional groups


class Sweep:
    """The condition of a sweep group (writer.ConditionalGroup): its ops are
    (namespace, dbi, key, None) for keys whose record had expired when the
    sweep read them. Each is deleted only if the record the key holds inside
    the write transaction has expired too; the rest are left alone."""

    __slots__ = ("now", "clock", "deleted")

    def __init__(self, now: int, clock: Clock) -> None:
        self.now = now  # ms: what the sweep judged expiry by
        self.clock = clock  # the store's clock, read again when the group applies
        self.deleted = 0  # set by the last apply() (a replay after a map grow runs it again)

    def enter(self, overlay: Overlay, seq: int, ops: list[Any]) -> None:
        """Reads need not see a sweep before it commits: its keys read as missing already."""

    def apply(self, txn: lmdb.Transaction, ops: list[Any]) -> None:
        # The earlier of the two clocks: a clock set back since the sweep
        # read must not make it delete a value written in between.
        deadline = min(self.now, now_ms(self.clock))
        deleted = 0
        for _ns, dbi, key, _ in ops:
            record = txn.get(key, db=dbi)
            if record is None or not len(record) or record[0] != TTL_VERSION:
                continue  # gone, or written again without a TTL
            try:
                expires = parse_ttl(record)[0]
            except CorruptionError:
                continue  # an expiry that cannot be trusted deletes nothing
            if expires <= deadline:
                txn.delete(key, db=dbi)
                deleted += 1
        self.deleted = deleted


class Refresh:
    """The condition of a refresh group: its ops are (namespace, dbi, key,
    refreshed record); `bases` says what each was made from, as get read
    it: (record, None) from this process's pending writes, (record, txnid)
    from the database at that txnid. A refreshed record replaces the key's
    record only if that still holds the same value (the same inner record)
    with an earlier expiry."""

    __slots__ = ("_env", "bases")

    def __init__(self, env: Engine, bases: list[tuple[bytes, int | None]]) -> None:
        self._env = env
        self.bases = bases

    def enter(self, overlay: Overlay, seq: int, ops: list[Any]) -> None:
        # Under the writer's lock. Reads of this process see the refreshed
        # record at once if what get read is still the key's newest version:
        # the very pending write it read, or, with nothing pending, the
        # database unchanged since it read it. Otherwise reads keep seeing
        # what they see (the refresh applies at the commit, or not at all):
        # they must never go back to an older value.
        last = None
        for (ns, _dbi, key, record), (base, txnid) in zip(ops, self.bases):
            pending = overlay[ns]
            entry = pending.get(key)
            if txnid is None:
                current = entry is not None and entry[1] is base
            else:
                if entry is None and last is None:
                    last = self._env.current_txnid()
                current = entry is None and last == txnid
            if current:
                pending[key] = (seq, record)

    def apply(self, txn: lmdb.Transaction, ops: list[Any]) -> None:
        for (_ns, dbi, key, record), (base, _) in zip(ops, self.bases):
            current = txn.get(key, db=dbi)
            if current is None or not len(current) or current[0] != TTL_VERSION:
                continue
            if current[TTL_HEADER_SIZE:] != base[TTL_HEADER_SIZE:]:
                continue  # written again since
            try:
                if parse_ttl(current)[0] >= parse_ttl(record)[0]:
                    continue  # refreshed as far already
            except CorruptionError:
                continue
            txn.put(key, record, db=dbi)


# ---------------------------------------------------------------- the sweep


class Sweeper:
    """The background sweep of one Environment in this process: every
    `interval` seconds, up to `batch` records of the next namespace that
    holds TTL values, continuing where the last pass stopped; the expired
    keys go to the writer as one buffered Sweep group. A pass starts only
    once the previous pass's group has committed, so the sweep never has
    more than one group of work queued, and never blocks on a commit.

    Also re-reads the TTL metadata every pass, so a default TTL set by
    another process applies here within `interval` seconds.

    Thread safety: passes run in the sweeper's thread (or in a test's
    thread, never both); `swept` and `error` are written under _lock."""

    def __init__(self, env: Engine, writer: Writer, interval: float, batch: int, clock: Clock) -> None:
        self._env = env
        self._writer = writer
        self._clock = clock  # the store's clock (Options.clock)
        self._interval = interval
        self._batch = batch
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.swept = 0  # values deleted by committed sweeps; guarded by _lock
        self.error: BaseException | None = None  # what stopped the thread, if anything did
        self._position: dict[str, bytes | None] = {}  # namespace -> last key read
        self._turn = 0  # index of the namespace to read next, in sorted order
        self._queued: Any = None  # the last pass's group, until it is done
        self._thread: threading.Thread | None = None
        if interval > 0:
            self._thread = threading.Thread(target=self._run, name=f"kvstore-ttl-sweep:{env.path}",
                                            daemon=True)
            self._thread.start()

    def stats(self) -> dict[str, Any]:
        """This sweeper's counters, for Store.stats()."""
        with self._lock:
            return {"expired_swept": self.swept,
                    "ttl_sweep_error": repr(self.error) if self.error is not None else None}

    def stop(self) -> None:
        """Stop the thread (a pass in progress finishes first)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sweep_once()
            except (StoreClosedError, StoreFailedError):
                return  # the store's own writes report these
            except BaseException as exc:  # a background thread must not die unseen
                with self._lock:
                    self.error = exc  # Store.stats()["ttl_sweep_error"]
                return

    def sweep_once(self, now: int | None = None) -> int:
        """One pass: read up to `batch` records and queue the deletion of the
        expired ones (`now`: the time in ms to judge by; None: the clock's).
        Returns how many were queued: 0 also when the previous pass's group
        has not committed yet (the pass is skipped)."""
        env = self._env
        env.ttl.reload()
        queued = self._queued
        if queued is not None and not queued.done:
            return 0
        names = sorted(env.ttl.namespaces)
        if not names:
            return 0
        self._turn %= len(names)
        ns = names[self._turn]
        dbi = env.dbi(ns, create=False)
        if dbi is None:
            self._turn += 1
            return 0
        now = now_ms(self._clock) if now is None else now
        after = self._position.get(ns)
        expired, last, done = env.read(lambda txn: self._scan(txn, dbi, after, now))
        if done:  # the end of the namespace: the next pass takes the next one, from its start
            self._position.pop(ns, None)
            self._turn += 1
        else:
            self._position[ns] = last
        if expired:
            self._submit(ns, dbi, expired, now)
        return len(expired)

    def _scan(self, txn: lmdb.Transaction, dbi: Any, after: bytes | None, now: int
              ) -> tuple[list[bytes], bytes | None, bool]:
        """(expired keys, last key read, reached the end) of one chunk."""
        cur = txn.cursor(db=dbi)
        ok = cur.set_range(after) if after is not None else cur.first()
        if ok and after is not None and cur.key() == after:
            ok = cur.next()
        expired: list[bytes] = []
        last: Any = after
        n = 0
        while ok and n < self._batch:
            record = cur.value()
            if len(record) and record[0] == TTL_VERSION:
                try:
                    if ttl_expired(record, now):
                        expired.append(bytes(cur.key()))
                except CorruptionError:
                    pass  # an expiry that cannot be trusted: `kvstore check` reports it
            n += 1
            last = cur.key()
            ok = cur.next()
        return expired, (bytes(last) if last is not None else None), not ok

    def _submit(self, ns: str, dbi: Any, keys: Iterable[bytes], now: int) -> None:
        sweep = Sweep(now, self._clock)

        def committed(group: Any) -> None:
            if group.error is None:
                with self._lock:
                    self.swept += sweep.deleted

        group = ConditionalGroup([(ns, dbi, key, None) for key in keys], False, 0, sweep,
                                 callback=committed)
        self._queued = group
        self._writer.submit(group)
