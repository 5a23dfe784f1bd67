"""The read cache of a store on etcd: decoded values by key, with the
mod_revision they had, kept right by a watch.

    lookup(key)          -> Entry or None; entry.fresh says whether it may be
                            served without asking the cluster
    fill(key, value, mod_revision, read_revision)
                         after a read from the cluster at read_revision
    revalidated(key)     a keys-only read found the entry's mod_revision still current
    invalidate(keys, revision)
                         this process wrote keys at revision (called before
                         its pending writes are dropped, so no read falls
                         between; a racing read older than it is not filled)

The watch (one stream per store, on the whole data prefix, from the
revision of the cache's first read) drops the entry of every key another
client changes or deletes. Why a hit is right (docs/distributed.md):

- an entry is served from memory only within `max_age` seconds of when it
  was read or last revalidated; older, a hit first reads the key's
  mod_revision (keys-only, linearizable) and is served only if it is
  unchanged. So a hit is never staler than max_age, even if the watch is
  behind or broken;
- the watch removes entries much sooner (its events come as the cluster
  applies each write);
- a fill races with the watch: a read at revision R may arrive after the
  event of a later change of its key. The cache remembers the revision of
  the last event of each key (`_seen`, bounded; past its bound, the newest
  revision it forgot) and refuses a fill whose read is older than one;
- when the watch breaks (member lost, revision compacted), every entry is
  dropped and the watch restarts from a fresh revision.

Lock discipline: `_entries`, `_seen`, `_forgot` and the counters are
guarded by `_lock`; the watch thread takes it per event.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Iterator

from .client import Client, rpc

__all__ = ["Cache", "Entry"]

SEEN_MAX_FACTOR = 2  # events remembered: this many times the entries


class Entry:
    __slots__ = ("value", "mod_revision", "checked")

    def __init__(self, value: Any, mod_revision: int, checked: float):
        self.value = value
        self.mod_revision = mod_revision
        self.checked = checked


class Cache:
    def __init__(self, client: Client, prefix: bytes, prefix_end: bytes, entries: int, max_age: float,
                 clock: Callable[[], float] = time.monotonic):
        self._client = client
        self._prefix = prefix
        self._end = prefix_end
        self._max = entries
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()  # guarded
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # guarded: key -> revision of its last event
        self._forgot = 0  # guarded: the newest revision dropped from _seen
        self.hits = 0
        self.misses = 0
        self.revalidations = 0
        self.invalidations = 0
        self.watch_restarts = 0
        self.watched_revision = 0  # the header revision of the last watch response
        self._closing = threading.Event()
        self._requests: queue.Queue[Any] = queue.Queue()
        self._started = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ reads

    def lookup(self, key: bytes) -> tuple[Entry | None, bool]:
        """(entry, fresh): fresh when it may be served as it is."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None, False
        if self._clock() - entry.checked <= self.max_age and self._started:
            self.hits += 1
            return entry, True
        return entry, False

    def fill(self, key: bytes, value: Any, mod_revision: int, read_revision: int) -> None:
        if not self._started:
            self._start(read_revision)
        with self._lock:
            seen = self._seen.get(key, self._forgot)
            if seen > read_revision:
                return  # a newer change of the key was already seen: this read is stale
            self._entries[key] = Entry(value, mod_revision, self._clock())
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def revalidated(self, key: bytes, entry: Entry) -> None:
        self.revalidations += 1
        self.hits += 1
        entry.checked = self._clock()

    def invalidate(self, keys: list[bytes], revision: int = 0) -> None:
        """This process wrote keys, at revision (0: not known, the outcome
        of the write is unknown): drop their entries, and refuse fills from
        reads older than the write (a read of another thread, racing)."""
        with self._lock:
            for key in keys:
                if self._entries.pop(key, None) is not None:
                    self.invalidations += 1
                if revision:
                    self._seen[key] = max(revision, self._seen.get(key, 0))
                    self._seen.move_to_end(key)
            self._trim_seen()

    def _trim_seen(self) -> None:
        while len(self._seen) > SEEN_MAX_FACTOR * self._max:
            _, rev = self._seen.popitem(last=False)
            self._forgot = max(self._forgot, rev)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def stats(self) -> dict[str, Any]:
        return {"entries": len(self._entries), "hits": self.hits, "misses": self.misses,
                "revalidations": self.revalidations, "invalidations": self.invalidations,
                "watch_restarts": self.watch_restarts, "watched_revision": self.watched_revision,
                "max_age": self.max_age}

    # ------------------------------------------------------------ the watch

    def _start(self, revision: int) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            self._forgot = max(self._forgot, revision)  # a read older than the watch's start is never filled
        self._thread = threading.Thread(target=self._watch_loop, args=(revision,), name="kvstore-etcd-watch",
                                        daemon=True)
        self._thread.start()

    def _watched(self, events: Any, revision: int) -> None:
        with self._lock:
            for ev in events:
                key = ev.kv.key
                self._seen[key] = max(int(ev.kv.mod_revision), self._seen.get(key, 0))
                self._seen.move_to_end(key)
                if self._entries.pop(key, None) is not None:
                    self.invalidations += 1
            self._trim_seen()
            self.watched_revision = max(self.watched_revision, revision)

    def _watch_loop(self, revision: int) -> None:
        while not self._closing.is_set():
            try:
                revision = self._watch(revision)
            except Exception:
                pass
            if self._closing.is_set():
                return
            # The watch broke: what it would have said is unknown, so drop
            # everything and start again from now.
            self.watch_restarts += 1
            with self._lock:
                self._entries.clear()
                self._forgot = max(self._forgot, revision)
            self._closing.wait(0.05)
            try:
                resp = self._client.call("KV", "Range", rpc.RangeRequest(key=self._prefix, count_only=True),
                                         doing="restarting the cache's watch")
                revision = int(resp.header.revision)
                with self._lock:
                    self._entries.clear()
                    self._forgot = max(self._forgot, revision)
            except Exception:
                continue

    def _watch(self, revision: int) -> int:
        """Watch from revision+1 until the stream ends; returns the last revision seen."""
        create = rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=self._prefix, range_end=self._end, start_revision=revision + 1))
        requests: queue.Queue[Any] = queue.Queue()
        self._requests = requests
        requests.put(create)

        def outgoing() -> Iterator[Any]:
            while True:
                item = requests.get()
                if item is None:
                    return
                yield item

        _, stub = self._client.stub("Watch")
        stream = stub.Watch(outgoing(), metadata=(("hasleader", "true"),))
        self._stream = stream
        try:
            for resp in stream:
                if resp.compact_revision or resp.canceled:
                    return max(revision, int(resp.compact_revision))
                if resp.events:
                    self._watched(resp.events, int(resp.header.revision))
                    revision = max(revision, int(resp.events[-1].kv.mod_revision))
                else:
                    self.watched_revision = max(self.watched_revision, int(resp.header.revision))
                if self._closing.is_set():
                    break
        finally:
            requests.put(None)
        return revision

    def close(self) -> None:
        self._closing.set()
        self._requests.put(None)
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.cancel()
        if self._thread is not None:
            self._thread.join(5)
