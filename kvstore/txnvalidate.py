"""The condition a transaction commits under: `Validate` (txn.py's step 3).

A transaction (txn.py) remembers the stored bytes of every key it read and
the (key, stored bytes) of every range it scanned. Its commit is one
`ConditionalGroup` whose condition is a `Validate`: inside the write path
(the LMDB write transaction, or with a write-ahead log the append, checked
under the append lock), `validate(get, scan)` compares all of it with the
latest state; `apply` writes the transaction's writes only when nothing
differs, and otherwise leaves `conflicts` naming the keys that changed.
A record that expired at the transaction's start counts as absent on both
sides (`_alive`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

from . import killpoints
from .errors import ConflictError
from .environment import range_items
from .reads import _live

__all__ = ["Validate", "conflict_error", "NsKey", "Stored", "Op", "Seen", "Get", "Scan"]

NsKey = Tuple[str, bytes]  # (namespace, key)
Stored = Optional[bytes]  # a key's stored bytes; None: absent (or expired)
Op = Tuple[str, Any, bytes, Optional[bytes]]  # (namespace, LMDB handle, key, stored or None: delete)
Seen = Tuple[str, Optional[bytes], Optional[bytes], "list[tuple[bytes, bytes]]"]  # a scan: ns, lo, hi, found
Get = Callable[[str, bytes], Any]  # (namespace, key) -> stored bytes (or a buffer), None if absent
Scan = Callable[[str, Optional[bytes], Optional[bytes]], Any]  # -> [(key, stored)] in key order


def conflict_error(keys: list[NsKey]) -> ConflictError:
    shown = ", ".join(f"{key!r}" + ("" if ns == "default" else f" in {ns!r}") for ns, key in keys[:5])
    return ConflictError(f"the transaction did not commit: {shown}{' ...' if len(keys) > 5 else ''} "
                         f"changed since it read them; nothing was written: run it again "
                         f"(db.transact(fn) retries for you)", keys)


def _copy(record: Any) -> Stored:
    """Bytes out of a read transaction (its buffers die with it)."""
    return None if record is None else bytes(record)


def _alive(record: Any, now: int) -> Stored:
    """Stored bytes as a transaction compares them: None when absent or
    expired at now (ms)."""
    if record is None or not _live(record, now):
        return None
    return bytes(record)


class Validate:
    """The condition of a transaction's group (writer.ConditionalGroup).

    reads: {(namespace, key): stored bytes or None}; scans: [(namespace, lo,
    hi, [(key, stored bytes)])]; dbis: {namespace: LMDB handle}; now: the
    transaction's start (ms) by which expiry is judged; durable: what the
    caller asked for (the group itself is always waited for). After apply,
    `conflicts` is [] (written) or the (namespace, key) pairs that changed
    (nothing written)."""

    __slots__ = ("reads", "scans", "dbis", "now", "durable", "conflicts")

    def __init__(self, reads: dict[NsKey, Stored], scans: list[Seen], dbis: dict[str, Any], now: int,
                 durable: bool):
        self.reads = reads
        self.scans = scans
        self.dbis = dbis
        self.now = now
        self.durable = durable
        self.conflicts: list[NsKey] | None = None

    def enter(self, overlay: Any, seq: int, ops: list[Op]) -> None:
        """A transaction's writes are invisible until it has committed."""

    def validate(self, get: Get, scan: Scan) -> list[NsKey]:
        """The (namespace, key) pairs whose state differs from what the
        transaction saw, judged by get(ns, key) -> stored bytes or None and
        scan(ns, lo, hi) -> [(key, stored bytes)] in key order."""
        now = self.now
        out: list[NsKey] = []
        for (ns, key), seen in self.reads.items():
            if _alive(get(ns, key), now) != seen:
                out.append((ns, key))
        for ns, lo, hi, found in self.scans:
            current = [(k, r) for k, r in ((k, _alive(r, now)) for k, r in scan(ns, lo, hi)) if r is not None]
            if current != found:
                changed = set(current).symmetric_difference(found)
                out.extend(sorted({(ns, k) for k, _r in changed}))
        return out

    def apply(self, txn: Any, ops: list[Op]) -> None:
        dbis = self.dbis

        def get(ns: str, key: bytes) -> Any:
            return txn.get(key, db=dbis[ns])

        def scan(ns: str, lo: bytes | None, hi: bytes | None) -> Any:
            return range_items(txn, dbis[ns], lo, hi)

        self.conflicts = self.validate(get, scan)
        if self.conflicts:
            return
        half = len(ops) // 2 if killpoints.armed else -1
        for n, (_ns, dbi, key, record) in enumerate(ops, 1):
            if record is None:
                txn.delete(key, db=dbi)
            else:
                txn.put(key, record, db=dbi)
            if n == half:
                killpoints.reached("mid-apply")
