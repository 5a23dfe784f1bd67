"""The read-through cache: a bounded LRU of decoded values in front of LMDB.

A `ReadCache` belongs to one store path in one process (the Environment) and
is shared by every handle and namespace of it. The store consults it after
the writer's overlay (pending writes of this process always win) and before
LMDB:

    value = cache.lookup(ns, key, last_txnid.view)   # no transaction, no lock
    if value is a sentinel (STALE, MISS, SKIP):
        in a read transaction: record = txn.get(key); txnid = txn.id()
        if value is STALE:
            value = cache.revalidate(ns, key, record, txnid)   # value, or MISS
        if value is MISS or SKIP, and record is not None:
            value = decode(record)
            if MISS: cache.fill(ns, key, value, record, txnid)

Versions are LMDB transaction ids
---------------------------------
Every commit, by any process, makes a new txnid. Each entry remembers the
txnid it is known valid at:

- lookup: an entry validated at the last committed txnid (or later) is
  served at once, a hit: nothing committed since. An older entry is STALE.
- revalidate: the caller read the stored record in a snapshot (no
  decompression, no decoding); its 18-byte header is compared with the
  cached one. Equal: the same stored bytes (XXH64 of the payload, same flags,
  length and dictionary id), so the entry is marked valid at the snapshot's
  txnid and served, a revalidation. Different, or the key is gone: the entry
  is dropped, an invalidation, and the caller decodes. The checksum alone
  would not do: a top-level bytes value is stored raw, so b"\x01" and 1
  (msgpack 0x01) have the same payload and checksum; only the flags differ.
- fill: tagged with the txnid of the snapshot it was read from, it never
  replaces an entry validated at that txnid or later. An old value filled
  after its key changed keeps its old txnid, so it is revalidated before
  being served.
- lookup_at: get_many reads one snapshot and must not mix in a later
  commit, so it hits only entries validated at exactly its txnid.

So the cache stays transparent when other processes commit: their commits
move the txnid and each entry is revalidated on its next read. Commits of
this process also drop their keys (`invalidate_many` from Writer._finish),
which frees memory early; correctness does not depend on it.

`LastTxnid` reads the txnids of LMDB's two meta pages in data.mdb through a
read-only mapping of its own, as a two-word memoryview: a hit's check
`t < view[0] or t < view[1]` costs 0.08 us (0.15 us with the one-call
struct.unpack_from it replaced, which built a tuple), no transaction, no
lock. env.info()["last_txnid"] reads the same field through LMDB's map, so
it needs the store's map lock (a resize must not run meanwhile): 0.9 us +
1.0 us for the lock; a read transaction's txn.id() costs 0.5 us + the lock
(tight loops on this machine, a shared 2-core VM). The larger of the two
txnids is the last commit. Reading them needs no lock: the page not being
written holds the previous txnid T, and a torn read of the other gives less
than T (the max ignores it), T+1, or more than T+1, which only makes lookups
revalidate through a real transaction.

Copy-on-read: a hit hands out a private copy of the cached value, made by
the plan kept with it: a copy of its dicts and lists, or marshal.loads of
its marshal bytes for a value of many small containers
(kvstore/copyplan.py chooses per value and measures the choice).

Admission: a key is cached on its second miss
---------------------------------------------
Caching a value costs a copy and a plan (3.4 us), an LRU insert and an
eviction (about 2 us with cachetools, more to free a cold evicted value): a
filling miss costs 2.2x an uncached get in the bench, paid for nothing by a
key read once, which also evicts a key that may be hot. A first miss that
only marks the key costs 1.13x (alone) to 1.19x (the bench, a full cache of
10,000 entries) an uncached get. So, as
TinyLFU's doorkeeper does, a key's first miss only marks it in a Bloom
filter (two bytes that hash(key) picks in a table of 32 to 64 bytes per
entry, set to the current generation) and returns SKIP: decode, do not
fill. A miss that finds both bytes marked in this generation or the last
fills; a generation ends after max_entries first misses. Other keys' marks
make a first miss fill at once now and then (the bench prints how often:
0.3%). A key dropped by an invalidation (its content changed, or this
process wrote it) is admitted at its next miss. `admit_on_first_miss=True`
turns this off.

Sizes and limits
----------------
An entry counts ENTRY_OVERHEAD bytes, the key's length, and OBJECT_FACTOR
times the serialized (msgpack) length of its value, read from the record
header: the decoded objects of the corpus take 3.7x (embeddings) to 6.3x
(session metadata) their msgpack size, 4.6x overall. The admission table
(32 to 64 bytes per max_entries) is not counted. The cache holds at most
max_entries entries and max_bytes such bytes, evicting the least recently
used; a value bigger than max_bytes, or nested deeper than MAX_DEPTH, is
not cached. 0 for either limit disables the cache: `ReadCache.create`
returns None then.

Thread safety: one lock guards every change to the LRU (fills, drops,
evictions, revalidations) and the counters; copies are made outside it
(cached objects are never mutated, only read). The LRU is
cachetools.LRUCache with a getsizeof. A hit takes no lock: it calls the
get of cachetools' private dict and the move_to_end of its OrderedDict
directly (what LRUCache.__getitem__ does, without its two Python frames),
single C calls, atomic under the GIL; no change made under the lock ever
leaves a key in the dict that the OrderedDict lacks, and move_to_end only
reorders (see `_reads`). Hits are counted by next() on an itertools.count,
one C call too. The lock cost a hit about 0.2 us, a third of the time a hit
spent in the cache.

Expiry (values with a TTL, kvstore/ttl.py): an entry remembers when its
value expires (0: never), read from the record's TTL prefix at fill. A
lookup that finds an entry valid at the last commit but past its expiry
drops it and returns MISS, so an expired value is never served, even though
no commit told the cache (expiry is a matter of time, not of txnids). For
a value without TTL the check is one field test on the hit path. A TTL
record's tag is its TTL prefix and inner header (40 bytes): a refresh that
only moves the expiry changes the tag.

Corruption: a hit or a revalidation serves the value whose payload was
checked (XXH64) when it was decoded; a payload damaged later under an
intact header raises CorruptionError only once the entry has left the cache.
"""

from __future__ import annotations

import collections
import itertools
import threading
from typing import Any, Callable, Iterable

import cachetools

import time

from . import ttl as _ttl
from .clock import now_ms
from .codec.format import HEADER_SIZE, raw_len, tag_size
from .copyplan import LOADS as _LOADS, TooDeep as _TooDeep, copy_out as _copy_out, copy_planned as _copy, \
    loads as _loads, snapshot as _snapshot
from .options import ENTRY_OVERHEAD, OBJECT_FACTOR  # tunables: see there
from .lmdbfile import LastTxnid  # the meta-page txnid view lives with the file parser

__all__ = ["ReadCache", "LastTxnid", "Sentinel", "MISS", "SKIP", "STALE", "ABSENT", "record_tag", "ENTRY_OVERHEAD",
           "OBJECT_FACTOR"]

_K = tuple[str, bytes]  # (namespace, key)
_Entry = list[Any]  # [value, plan, tag, txnid, size, expires]: the indices below
_Txnids = Any  # LastTxnid.view: the txnids of LMDB's two meta pages, read at each subscript


class Sentinel:
    """What a lookup returns instead of a value: test `type(x) is Sentinel`."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


MISS = Sentinel("MISS")  # not cached (or just dropped): decode, then fill
SKIP = Sentinel("SKIP")  # not cached, first miss of the key: decode, do not fill
STALE = Sentinel("STALE")  # cached, but something committed since: revalidate
ABSENT = Sentinel("ABSENT")  # load(): the snapshot holds no value for the key


# Entry layout: a list, so that revalidation updates it in place. _EXPIRES:
# when the value expires (ms, kvstore.ttl), 0 if it has no TTL.
_VALUE, _PLAN, _TAG, _TXNID, _SIZE, _EXPIRES = range(6)


def record_tag(record: bytes | memoryview) -> bytes:
    """What identifies a stored record's content: its 18-byte header
    (version, flags, raw length, dictionary id, XXH64 of the payload),
    after the TTL prefix (expiry and TTL) when it has one. Reads no payload
    byte; `record` may be a buffer of a live transaction."""
    return bytes(record[:tag_size(record)])


class _LRU(cachetools.LRUCache[_K, _Entry]):
    """cachetools' LRU with a getsizeof, counting evictions."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.evictions = 0

    @staticmethod
    def getsizeof(entry: _Entry) -> int:
        size: int = entry[_SIZE]
        return size

    def popitem(self) -> tuple[_K, _Entry]:
        item = super().popitem()
        self.evictions += 1
        return item


def _reads(lru: _LRU) -> tuple[Callable[[_K], _Entry | None], Callable[[_K], Any]]:
    """(get, touch) for lru, for reads without the cache's lock: get(k) ->
    entry or None, leaving the LRU order alone; touch(k) makes k the most
    recently used (KeyError if it is gone).

    LRUCache.__getitem__ is `data[key]` then `order.move_to_end(key)` on its
    private dict and OrderedDict, behind two Python frames; cachetools 5.3
    to 8 all lay them out so. Calling the two C methods directly saves
    about 0.6 us per hit (a third of a hit's cost in the cache), and each
    is a single C call, atomic under the GIL, so a hit needs no lock: the
    changes made under the lock (insert, delete, evict) never leave a key
    in the dict that the OrderedDict lacks, and a hit only reorders keys
    (move_to_end never inserts). Any other layout gets the public, slower
    equivalent, which at worst raises KeyError for a key being dropped."""
    data = getattr(lru, "_Cache__data", None)
    order = getattr(lru, "_LRUCache__order", None)
    if type(data) is dict and isinstance(order, collections.OrderedDict):
        return data.get, order.move_to_end
    peek = cachetools.Cache.__getitem__  # no reordering

    def get(k: _K) -> _Entry | None:
        try:
            return peek(lru, k)
        except KeyError:
            return None

    return get, lru.__getitem__


class ReadCache:
    """A thread-safe LRU of decoded values keyed by (namespace, key), validated
    by LMDB txnid. See the module docstring for the protocol."""

    def __init__(self, max_entries: int, max_bytes: int, *, admit_on_first_miss: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError(f"cache sizes must be >= 0, not {max_entries!r}, {max_bytes!r}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.enabled = bool(max_entries and max_bytes)
        # the store's clock (Options.clock): an entry with an expiry is
        # served only while now_ms(clock) is before it
        self._clock = clock
        # (ns, key) -> entry: cachetools' LRU, bounded by bytes (and by
        # entries in fill). Changed only under _lock; hits read and reorder it
        # without (see _reads).
        self._lru = _LRU(max_bytes)
        self._get, self._touch = _reads(self._lru)
        self._lock = threading.Lock()
        # admission (the doorkeeper): a Bloom filter of two probes, bytes
        # holding the last generation that marked them (0: none); a key is
        # marked when both of its bytes hold this generation or the last. A
        # generation ends after max_entries first misses.
        self._admit_all = admit_on_first_miss or not self.enabled
        size = 1 << max(6, (32 * max_entries - 1).bit_length())  # >= 32 bytes per entry
        self._door = bytearray(0 if self._admit_all else size)
        self._door_mask = size - 1
        self._door_gen = 1
        self._door_next = max_entries  # the generation ends when _deferred reaches it
        # counters, guarded by _lock (stats() is the public view)
        # served at once: counted lock-free by next(), one C call (atomic);
        # stats() reads it with next() too and keeps count of its own reads
        self._hit_count = itertools.count()
        self._hit_count_reads = 0
        self._revalidations = 0  # served after comparing the stored header
        self._misses = 0  # not served, to be decoded and filled (MISS)
        self._deferred = 0  # not served, to be decoded only (SKIP: first miss)
        self._fills = 0  # values cached
        self._invalidations = 0  # dropped: content changed, deleted, written here
        self._expirations = 0  # dropped: the value's TTL ran out

    @classmethod
    def create(cls, max_entries: int, max_bytes: int, **kwargs: Any) -> ReadCache | None:
        """A cache, or None when either limit is 0 (the cache is off)."""
        return cls(max_entries, max_bytes, **kwargs) if max_entries and max_bytes else None

    # ------------------------------------------------------------ reads

    def lookup(self, ns: str, key: bytes, txnids: _Txnids, untimed_only: bool = False) -> Any:
        """For a single read. txnids: the txnids of the two LMDB meta pages,
        read at each subscript (`LastTxnid.view`); the larger is the last
        commit.

        Returns the value (a fresh object the caller may keep and mutate) if
        cached and valid at the last commit; else STALE (read the record,
        then `revalidate`), MISS (decode, then `fill`) or SKIP (decode only:
        the key's first miss). untimed_only: a value that has a TTL is
        STALE too (a read that refreshes TTLs must see its record).

        A hit takes no lock (see _lru and _hit_count): e stays a value valid
        at e[_TXNID] even if evicted or replaced meanwhile."""
        k = (ns, key)
        e = self._get(k)
        if e is None:
            return self._missed(k)
        try:
            self._touch(k)
        except KeyError:
            pass  # evicted since: e is still a value valid at e's txnid
        t = e[_TXNID]
        if t < txnids[0] or t < txnids[1]:
            return STALE
        if e[_EXPIRES]:
            if untimed_only:
                return STALE
            if e[_EXPIRES] <= now_ms(self._clock):
                with self._lock:
                    return self._expired(k, e)
        next(self._hit_count)
        plan = e[_PLAN]  # _copy_out(value, plan), inlined: a hit's copy-out without a call
        if plan is None:
            return e[_VALUE]
        if plan is _LOADS:
            return _loads(e[_VALUE])
        return _copy(e[_VALUE], plan) if plan else e[_VALUE].copy()

    def lookup_at(self, ns: str, key: bytes, txnid: int) -> Any:
        """`lookup` for a read that must see the snapshot txnid exactly (and no
        later commit), such as get_many: hits only an entry validated at
        txnid; an entry validated earlier or later is STALE."""
        k = (ns, key)
        with self._lock:
            e = self._get(k)
            if e is None:
                return self._missed(k)
            self._touch(k)
            if e[_TXNID] != txnid:
                return STALE
            if e[_EXPIRES] and e[_EXPIRES] <= now_ms(self._clock):
                return self._expired(k, e)
            next(self._hit_count)
        return _copy_out(e[_VALUE], e[_PLAN])

    def _missed(self, k: _K) -> Sentinel:
        """A lookup of an uncached key: MISS, or SKIP on its first miss.

        Needs no lock (lookup calls it without, lookup_at and revalidate
        under _lock): the doorkeeper's marks and the counters are single
        operations under the GIL, so a race between threads can only lose a
        mark or a count (the key then fills on its next miss, or a
        generation ends a little early or late)."""
        if self._admit_all:
            if self.enabled:
                self._misses += 1
                return MISS
            self._deferred += 1
            return SKIP
        h = hash(k[1])
        mask = self._door_mask
        door = self._door
        gen = self._door_gen
        i, j = h & mask, (h >> 32) & mask
        a, b = door[i], door[j]
        door[i] = door[j] = gen
        if a and b and a >= gen - 1 and b >= gen - 1:
            self._misses += 1
            return MISS  # it missed in this generation or the last
        self._deferred += 1
        if self._deferred >= self._door_next:
            self._next_generation()
        return SKIP

    def _expired(self, k: _K, e: _Entry) -> Sentinel:
        """A lookup found entry e of k past its expiry: drop it (unless it was
        evicted or replaced meanwhile); MISS (the caller reads the store,
        which holds it expired, or a newer value). Under _lock."""
        if self._get(k) is e:
            self._remove(k)
        self._expirations += 1
        self._misses += 1
        return MISS

    def _next_generation(self) -> None:
        self._door_next = self._deferred + self.max_entries
        self._door_gen += 1
        if self._door_gen == 256:  # a byte's worth: start over, forgetting all
            self._door = bytearray(len(self._door))
            self._door_gen = 1

    def _admit(self, k: _K) -> None:
        """Admit k at its next miss (it was cached). Under _lock."""
        if not self._admit_all:
            h = hash(k[1])
            mask = self._door_mask
            self._door[h & mask] = self._door[(h >> 32) & mask] = self._door_gen

    def revalidate(self, ns: str, key: bytes, record: bytes | memoryview | None, txnid: int) -> Any:
        """After a lookup said STALE: record is what the snapshot txnid holds
        for the key (None: no such key, or its value expired). Returns the
        value if that record is the one cached, else MISS (decode the record,
        if any, and fill)."""
        k = (ns, key)
        with self._lock:
            e = self._get(k)
            if e is None:  # dropped meanwhile
                self._misses += 1
                return MISS
            tag = e[_TAG]
            same = record is not None and tag == record[:len(tag)]
            if e[_TXNID] < txnid:
                if not same:
                    self._remove(k)
                    self._invalidations += 1
                    self._misses += 1
                    self._admit(k)  # it was cached: admit it again at once
                    return MISS
                e[_TXNID] = txnid
            elif not same:
                # the entry holds a later commit than this snapshot (lookup_at
                # of an older snapshot): keep it, the caller decodes its own
                self._misses += 1
                return MISS
            self._revalidations += 1
        return _copy_out(e[_VALUE], e[_PLAN])

    def load(self, state: Sentinel, ns: str, key: bytes, record: bytes | memoryview | None, txnid: int,
             decode: Callable[[Any], Any]) -> Any:
        """After a lookup that did not hit (state: STALE, MISS or SKIP): the
        value of record, what the snapshot txnid holds for the key (None: no
        such key, or expired), or ABSENT. Revalidates a STALE entry against
        the record's header, decodes (decode(record)) when it must, and fills
        after a MISS: the whole protocol of the module docstring, in one call
        inside the caller's read transaction. get_many drives the steps
        itself (revalidate, fill) to decode its misses in one batch."""
        if state is STALE:
            value = self.revalidate(ns, key, record, txnid)
            if value is not MISS:
                return value
            state = MISS
        if record is None:
            return ABSENT
        value = decode(record)
        if state is MISS:
            self.fill(ns, key, value, record, txnid)
        return value

    def contains(self, ns: str, key: bytes, txnids: _Txnids) -> bool:
        """True if the key is cached and valid at the last commit (txnids as
        for lookup), so it exists; False means "ask LMDB". Counts nothing,
        leaves the LRU order alone. Takes no lock, as a hit."""
        e = self._get((ns, key))
        if e is None:
            return False
        t = e[_TXNID]
        return t >= txnids[0] and t >= txnids[1] and not (e[_EXPIRES] and e[_EXPIRES] <= now_ms(self._clock))

    # ------------------------------------------------------------ writes

    def fill(self, ns: str, key: bytes, value: Any, record: bytes | memoryview, txnid: int) -> None:
        """After a MISS: cache value, just decoded from record (the stored
        bytes, TTL prefix included, unexpired; may be a buffer of the live
        transaction) read in the snapshot txnid. Keeps a private copy: the
        caller keeps value. An entry validated at txnid or later is kept
        instead."""
        if not self.enabled:
            return
        k = (ns, key)
        tag = tag_size(record)
        expires = _ttl.expiry_ms(record) if tag != HEADER_SIZE else 0
        size = ENTRY_OVERHEAD + len(key) + OBJECT_FACTOR * raw_len(record)
        try:
            if size > self.max_bytes:
                raise _TooDeep
            stored, plan = _snapshot(value)
        except _TooDeep:  # too big or too deep to cache: make sure no old value stays
            self._drop([k])
            return
        entry = [stored, plan, bytes(record[:tag]), txnid, size, expires]
        lru = self._lru
        with self._lock:
            old = self._get(k)
            if old is not None and old[_TXNID] >= txnid:
                return  # a fill or revalidation as new or newer won
            lru[k] = entry  # evicts least recently used entries past max_bytes
            self._fills += 1
            if len(lru) > self.max_entries:  # one entry added: one eviction at most
                lru.popitem()

    def _remove(self, k: _K) -> None:
        """Drop the entry of k, which is cached. Under _lock."""
        del self._lru[k]

    def invalidate(self, ns: str, key: bytes) -> None:
        """Drop the entry of (ns, key), if any."""
        self._drop([(ns, key)])

    def invalidate_many(self, pairs: Iterable[_K], chunk: int = 256) -> None:
        """Drop the entries of an iterable of (ns, key) pairs, holding the lock
        for at most `chunk` pairs at a time (readers get in between)."""
        batch = []
        for pair in pairs:
            batch.append(pair)
            if len(batch) >= chunk:
                self._drop(batch)
                batch = []
        if batch:
            self._drop(batch)

    def _drop(self, batch: list[_K]) -> None:
        get = self._get
        with self._lock:
            for k in batch:
                if get(k) is not None:
                    self._remove(k)
                    self._invalidations += 1
                    self._admit(k)  # it was cached: admit it again at once

    def clear(self) -> None:
        """Drop every entry and the admission history (the counters stay)."""
        with self._lock:
            self._lru.clear()
            self._door = bytearray(len(self._door))
            self._door_gen = 1
            self._door_next = self._deferred + self.max_entries

    # ------------------------------------------------------------ state

    def __len__(self) -> int:
        return len(self._lru)

    def counters(self) -> tuple[int, int, int]:
        """(hits, revalidations, misses) as stats() counts them: what
        cachestats.py publishes for `kvstore stat --watch`."""
        with self._lock:
            return self._counters()

    def _counters(self) -> tuple[int, int, int]:  # guarded by _lock
        hits = next(self._hit_count) - self._hit_count_reads
        self._hit_count_reads += 1
        return hits, self._revalidations, self._misses + self._deferred

    def stats(self) -> dict[str, Any]:
        """Counters for Store.stats()['cache']."""
        with self._lock:
            hits, reval, misses = self._counters()
            served = hits + reval
            return {
                "hits": hits,
                "misses": misses,
                "revalidations": reval,
                "invalidations": self._invalidations,
                "expirations": self._expirations,
                "evictions": self._lru.evictions,
                "fills": self._fills,
                "deferred": self._deferred,
                "entries": len(self._lru),
                "bytes": self._lru.currsize,
                "max_entries": self.max_entries,
                "max_bytes": self.max_bytes,
                "hit_ratio": served / (served + misses) if served + misses else None,
            }
