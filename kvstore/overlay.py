"""Pending writes of this process: what reads see before the commit (read-your-writes).

The overlay maps namespace -> key -> (group seq, stored bytes or TOMBSTONE).
The writer (writer.py) enters every submitted group's writes into it and
drops them once their commit is done, unless a later write to the same key
replaced them (its seq differs). Reads look a key up without any lock
(`overlay.get(ns)`, then `.get(key)`: single dict operations, atomic under
the GIL); every change, and `snapshot`, runs under the writer's lock, which
the caller holds.

Scans need the pending writes of a key range in order. A namespace with few
pending writes is filtered and sorted per scan; from ORDER_FROM on, the
first range snapshot of the namespace keeps its keys in order (`_ordered`)
and later snapshots insert only the keys added since (`_unordered`), by
bisection: the agent's "last 20 messages" scan, once per turn over a
thousand pending writes, sorts in that turn's writes instead of all of them.
"""

from __future__ import annotations

import bisect
import collections
from typing import Any, Iterable

from .options import ORDER_FROM  # a tunable: see there

__all__ = ["Overlay", "TOMBSTONE", "ORDER_FROM"]

TOMBSTONE = None  # the record of a pending delete



class Overlay(collections.defaultdict):  # type: ignore[type-arg]  # str -> {bytes: (int, bytes | None)}
    """namespace -> {key: (seq, record or TOMBSTONE)}; see the module docstring.

    Guarded by the writer's lock for every change; read without it."""

    def __init__(self) -> None:
        super().__init__(dict)
        # ns -> the namespace's pending keys in order (with keys dropped since,
        # and without those in _unordered); ns -> keys added since, in any
        # order. Made by the first range snapshot of the namespace, dropped
        # when writes go on without one.
        self._ordered: dict[str, list[bytes]] = {}
        self._unordered: dict[str, list[bytes]] = {}

    def enter(self, seq: int, ops: Iterable[tuple[Any, ...]]) -> None:
        """Enter a group's writes [(ns, dbi, key, record)] as pending at seq."""
        for ns, _dbi, key, record in ops:
            self[ns][key] = (seq, record)
        self.added(ops)

    def added(self, ops: Iterable[tuple[Any, ...]]) -> None:
        """Note keys entered for namespaces kept in order (also after a
        conditional group entered its own writes)."""
        if self._unordered:
            for ns, _dbi, key, _record in ops:
                keys = self._unordered.get(ns)
                if keys is not None:
                    keys.append(key)

    def drop(self, entries: Iterable[tuple[str, bytes, int]]) -> None:
        """Drop [(ns, key, seq)] entries that still hold that seq."""
        for ns, key, seq in entries:
            pending = self[ns]
            entry = pending.get(key)
            if entry is not None and entry[0] == seq:
                del pending[key]

    def forget_unsorted(self) -> None:
        """Stop keeping namespaces in order where writes went on without a
        range snapshot to sort them in."""
        if self._unordered:
            for ns, added in list(self._unordered.items()):
                if len(added) > 4 * len(self.get(ns, ())) + 1024:
                    del self._unordered[ns], self._ordered[ns]

    def snapshot(self, ns: str, lo: bytes | None = None, hi: bytes | None = None
                 ) -> list[tuple[bytes, bytes | None]]:
        """[(key, record-or-TOMBSTONE)] pending in ns; only keys in [lo, hi)
        when a bound is given (then in key order)."""
        pending = self.get(ns)
        if not pending:
            return []
        if lo is None and hi is None:
            return [(k, v[1]) for k, v in pending.items()]
        if len(pending) < ORDER_FROM:
            return sorted((k, v[1]) for k, v in pending.items()
                          if (lo is None or lo <= k) and (hi is None or k < hi))
        ordered = self._in_order(ns, pending)
        i = 0 if lo is None else bisect.bisect_left(ordered, lo)
        j = len(ordered) if hi is None else bisect.bisect_left(ordered, hi)
        out = []
        for k in ordered[i:j]:
            entry = pending.get(k)
            if entry is not None:
                out.append((k, entry[1]))
        return out

    def _in_order(self, ns: str, pending: dict[bytes, Any]) -> list[bytes]:
        """The keys pending in ns, in order (and maybe some dropped since).
        The writes since the last call are inserted one by one; the list is
        rebuilt when it is made or holds twice as many keys as are pending."""
        ordered = self._ordered.get(ns)
        if ordered is None or len(ordered) > 2 * len(pending) + ORDER_FROM:
            ordered = self._ordered[ns] = sorted(pending)
            self._unordered[ns] = []
            return ordered
        added = self._unordered[ns]
        if added:
            for key in added:
                at = bisect.bisect_left(ordered, key)
                if at == len(ordered) or ordered[at] != key:
                    ordered.insert(at, key)
            added.clear()
        return ordered
