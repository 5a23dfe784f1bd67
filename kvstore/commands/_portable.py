"""What the commands do through the public Store API alone, for a store that
has no LMDB file to read: one on an etcd cluster (`etcd://` URLs, see
docs/distributed.md). Local stores keep their own paths (one LMDB snapshot,
stored bytes, page walks); these give the same output where the API can
(tests/test_cli_portable.py runs both on one local store and compares).

What the API cannot give is said where it is missing: there is no snapshot
across a whole store (each namespace is read as it is while it is read), and
no stored bytes (a record's checksum and decode are verified by reading it,
its header is not shown).
"""

from __future__ import annotations

import math
import tempfile
from typing import TYPE_CHECKING, Any, Iterator

from kvstore.errors import KVStoreError
from kvstore.layout import DEFAULT_NAMESPACE

from ._common import clock_of, is_url
from ._encoding import dumps, key_to_json, to_json

if TYPE_CHECKING:
    from typing import Callable, Iterable

    from kvstore.store import Store

    from ._common import Progress

__all__ = ["is_local", "handle_of", "counts", "records", "put_with_expiry", "dump_jsonl", "check_records",
           "dictionaries", "stat_doc", "Tally", "load_records", "CHUNK"]

# Records read per step: keys per get_many when checking records, records
# whose expiries are read together
CHUNK = 256
# (expires_at, ttl) in seconds, as Store.expiry gives it, or None: no TTL
Expiry = tuple[float, float] | None


def is_local(db: Store[Any]) -> bool:
    """Whether db is a store in a local directory (the LMDB engine)."""
    from kvstore.store import Store

    return isinstance(db, Store) and not is_url(str(db.path))


def handle_of(db: Store[Any], name: str) -> Store[Any]:
    return db if name == DEFAULT_NAMESPACE else db.namespace(name)


def counts(db: Store[Any]) -> list[tuple[str, int]]:
    """[(namespace, entries)] of every namespace, sorted by name."""
    return [(name, len(handle_of(db, name))) for name in db.namespaces()]


def records(handle: Store[Any]) -> Iterator[tuple[bytes, Any, Expiry]]:
    """(key, value, expiry) of every live record of a namespace, in key
    order; one that expires or goes between the scan and its expiry's read
    is left out. On a cluster, the engine reads them together
    (`EtcdStore.scan_expiry`: a scan's pages and one call per distinct
    lease); a local store reads each record's expiry from its own file."""
    scan_expiry = getattr(handle, "scan_expiry", None)
    if scan_expiry is not None:
        yield from scan_expiry()
        return
    chunk: list[tuple[bytes, Any]] = []
    for item in handle.scan():
        chunk.append(item)
        if len(chunk) >= CHUNK:
            yield from _with_expiry(handle, chunk)
            chunk = []
    yield from _with_expiry(handle, chunk)


def _with_expiry(handle: Store[Any], chunk: list[tuple[bytes, Any]]) -> Iterator[tuple[bytes, Any, Expiry]]:
    for key, value in chunk:
        try:
            expiry = handle.expiry(key)
        except KeyError:
            continue  # gone since the scan
        yield key, value, expiry


def put_with_expiry(handle: Store[Any], key: bytes, value: Any, expires_at: float | None, has_default: bool,
                    durable: bool | None = None) -> bool:
    """Put a value that expires at expires_at (seconds since the epoch, on
    the store's clock; None: never, even where the namespace has a default
    TTL); False, nothing written, when that moment is already past."""
    if expires_at is None:
        ttl = math.inf if has_default else None
    else:
        ttl = expires_at - clock_of(handle)()
        if ttl <= 0:
            return False
    handle.put(key, value, ttl=ttl, durable=durable)
    return True


def dump_jsonl(db: Store[Any], names: list[str], write: Callable[[str], Any], progress: Progress) -> int:
    """`dump --format jsonl` through the API: the lines the local dump writes
    for the same records. Each namespace is spooled first (its header counts
    its records, and without a snapshot the count is only known once they
    are read)."""
    from .dump import JSONL_FORMAT

    total = 0
    for name in names:
        handle = handle_of(db, name)
        with tempfile.SpooledTemporaryFile(max_size=8 << 20, mode="w+", encoding="utf-8") as spool:
            count = with_ttl = 0
            for key, value, expiry in records(handle):
                line: dict[str, Any] = {"k": key_to_json(key), "v": to_json(value)}
                if expiry is not None:
                    line["expires_at"], line["ttl"] = expiry
                    with_ttl += 1
                spool.write(dumps(line, compact=True) + "\n")
                count += 1
                progress.update()
            header: dict[str, Any] = {"kvstore": JSONL_FORMAT, "version": 1, "namespace": name, "count": count}
            default = handle.default_ttl
            if default:
                header["default_ttl"] = default
            if default or with_ttl:
                header["version"] = 2
            write(dumps(header, compact=True) + "\n")
            spool.seek(0)
            for text in spool:
                write(text)
        total += count
    return total


def check_records(db: Store[Any], progress: Progress) -> tuple[dict[str, Any], list[tuple[str, bytes, str]]]:
    """Read every record of every namespace and decode it (the read verifies
    its checksum): ({namespace: {values, bad, ttl_values, expired}},
    [(namespace, key, reason)]). A chunk that fails is read again key by
    key, so that each damaged record is named."""
    per_ns: dict[str, Any] = {}
    bad: list[tuple[str, bytes, str]] = []
    for name in db.namespaces():
        handle = handle_of(db, name)
        n = nbad = with_ttl = 0
        keys = list(handle.scan(keys_only=True))
        for at in range(0, len(keys), CHUNK):
            chunk = keys[at:at + CHUNK]
            for key, problem in _read_chunk(handle, chunk):
                n += 1
                if problem is not None:
                    nbad += 1
                    bad.append((name, key, problem))
                    continue
                try:
                    with_ttl += handle.expiry(key) is not None
                except KeyError:
                    pass
            progress.update(len(chunk))
        per_ns[name] = {"values": n, "bad": nbad, "ttl_values": with_ttl, "expired": 0}
    return per_ns, bad


def _read_chunk(handle: Store[Any], keys: list[bytes]) -> Iterable[tuple[bytes, str | None]]:
    """(key, problem or None) of each key still there."""
    missing = object()
    try:
        values = handle.get_many(keys)
        return [(k, None) for k, v in zip(keys, values) if v is not None or k in handle]
    except KVStoreError:
        pass
    found: list[tuple[bytes, str | None]] = []
    for key in keys:
        try:
            if handle.get(key, missing) is missing:
                continue
            found.append((key, None))
        except KVStoreError as exc:
            found.append((key, f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"))
    return found


def dictionaries(db: Store[Any]) -> tuple[list[dict[str, Any]], str | None]:
    """(the store's dictionaries, None), or ([], why they cannot be listed)."""
    try:
        return db.dictionaries(), None
    except KVStoreError as exc:
        return [], str(exc)


def stat_doc(db: Store[Any]) -> dict[str, Any]:
    """What `stat` shows of a store reached through the API."""
    namespaces = {}
    for name, n in counts(db):
        namespaces[name] = {"entries": n, "default_ttl": handle_of(db, name).default_ttl}
    found, why = dictionaries(db)
    try:
        stats: Any = db.stats()
    except KVStoreError as exc:
        stats = {"error": str(exc)}
    return {"path": str(db.path), "engine": stats.get("engine", "lmdb"), "namespaces": namespaces, "dictionaries": found,
            "dictionaries_unavailable": why, "stats": stats}


class Tally:
    """What a load did per namespace: loaded, skipped (--no-overwrite), expired."""

    def __init__(self, names: Iterable[str]) -> None:
        self.loaded = dict.fromkeys(names, 0)
        self.skipped = dict.fromkeys(self.loaded, 0)
        self.expired = dict.fromkeys(self.loaded, 0)


def load_records(db: Store[Any], names: list[str], items: Iterable[tuple[str, bytes, Any, float | None]],
                 overwrite: bool, progress: Progress) -> Tally:
    """Put (namespace, key, value, expires_at or None) through the API,
    buffered, and flush (durably) at the end. Without overwrite a key the
    store holds is kept (checked before its put: not atomic with it)."""
    tally = Tally(names)
    handles = {name: handle_of(db, name) for name in names}
    defaults = {name: bool(h.default_ttl) for name, h in handles.items()}
    for name, key, value, expires_at in items:
        handle = handles[name]
        if not overwrite and key in handle:
            tally.skipped[name] += 1
        elif put_with_expiry(handle, key, value, expires_at, defaults[name], durable=False):
            tally.loaded[name] += 1
        else:
            tally.expired[name] += 1
        progress.update()
    db.flush()
    return tally
