"""Reading a store's records and metadata for inspection: the namespaces and
their LMDB handles, the dictionaries as of one snapshot, and one record
examined layer by layer (header, checksum, dictionary, decode)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import msgpack
from xxhash import xxh64_intdigest as xxh64

from kvstore import engine
from kvstore.codec import Dictionary
from kvstore.codec.format import (FLAG_DICT, FLAG_MSGPACK, FLAG_ZSTD, HEADER, HEADER_SIZE, TTL_HEADER_SIZE,
                                  KEYED_VERSION, TTL_VERSION, key_seed, parse_header, parse_ttl)
from kvstore.layout import CURRENT_PREFIX, DICT_PREFIX, FORMAT_KEY, SEQ_KEY, TTL_PREFIX
from kvstore.errors import CorruptionError, FormatError
from kvstore.ttl import ttl_of

if TYPE_CHECKING:
    import lmdb

    from kvstore.store import Store

__all__ = ["namespaces", "snapshot_meta", "examine", "Examined", "flag_names", "MISSING", "inner_dict_id"]

_ID = struct.Struct(">I")
MISSING = object()


def namespaces(db: Store[Any]) -> list[tuple[str, Any]]:
    """[(name, dbi-or-None)] of every namespace, sorted by name; the default
    namespace always listed (None when its database does not exist)."""
    env = engine.of(db)
    return [(name, env.dbi(name, create=False)) for name in db.namespaces()]


def flag_names(flags: int) -> list[str]:
    names = [n for bit, n in ((FLAG_MSGPACK, "MSGPACK"), (FLAG_ZSTD, "ZSTD"), (FLAG_DICT, "DICT"))
             if flags & bit]
    unknown = flags & ~(FLAG_MSGPACK | FLAG_ZSTD | FLAG_DICT)
    if unknown:
        names.append(f"UNKNOWN(0x{unknown:02x})")
    return names


@dataclass
class Meta:
    """The reserved metadata database as one snapshot sees it."""

    format_version: bytes | None = None  # bytes, or None when missing
    commit_seq: int | None = None
    dictionaries: dict[int, Dictionary] = field(default_factory=dict)  # id -> Dictionary (the ones that parse)
    docs: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> {namespace, created, samples, size}
    current: dict[str, int] = field(default_factory=dict)  # namespace -> id
    ttl_namespaces: set[str] = field(default_factory=set)  # namespaces with a ttl: key (may hold TTL values)
    ttl_defaults: dict[str, int] = field(default_factory=dict)  # namespace -> default TTL in ms (those with one)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (what, reason)


def snapshot_meta(txn: lmdb.Transaction, env: Any) -> Meta:
    """Read __kvstore__ inside txn: format version, commit count, dictionaries."""
    meta = Meta()
    db = env.meta_db
    raw = txn.get(FORMAT_KEY, db=db)
    meta.format_version = bytes(raw) if raw is not None else None
    if raw is None:
        meta.problems.append(("metadata", "format_version is missing"))
    raw = txn.get(SEQ_KEY, db=db)
    if raw is not None and len(raw) == 8:
        meta.commit_seq = struct.unpack(">Q", raw)[0]
    else:
        meta.problems.append(("metadata", f"commit_seq is {'missing' if raw is None else f'{len(raw)} bytes, not 8'}"))
    cur = txn.cursor(db=db)
    for suffix, value in _prefixed(cur, DICT_PREFIX):
        if len(suffix) != 4:
            meta.problems.append(("metadata", f"dictionary key {DICT_PREFIX + suffix!r} is not dict:<u32>"))
            continue
        (did,) = _ID.unpack(suffix)
        try:
            doc = msgpack.unpackb(bytes(value), raw=False)
            data = doc["data"]
            if not isinstance(data, bytes) or did == 0:
                raise ValueError("no dictionary bytes" if did else "id 0")
            meta.dictionaries[did] = Dictionary(did, data)
            meta.docs[did] = {"namespace": doc.get("namespace"), "created": doc.get("created"),
                              "samples": doc.get("samples"), "size": len(data)}
        except Exception as exc:  # a damaged entry: msgpack, KeyError, TypeError...
            meta.problems.append((f"dictionary {did}", f"unreadable ({type(exc).__name__}: {exc})"))
    for suffix, value in _prefixed(cur, CURRENT_PREFIX):
        name = suffix.decode("utf-8", "replace")
        if len(value) != 4:
            meta.problems.append((f"dictionary pointer of {name!r}", f"{len(value)} bytes, not 4"))
            continue
        (did,) = _ID.unpack(bytes(value))
        meta.current[name] = did
        if did not in meta.dictionaries:
            meta.problems.append((f"dictionary pointer of {name!r}",
                                  f"names dictionary {did}, which the store does not hold"))
    for suffix, value in _prefixed(cur, TTL_PREFIX):
        name = suffix.decode("utf-8", "replace")
        meta.ttl_namespaces.add(name)
        if len(value) != 8:
            meta.problems.append((f"default TTL of {name!r}", f"{len(value)} bytes, not 8"))
        elif ttl_of(value):
            meta.ttl_defaults[name] = ttl_of(value)
    return meta


def _prefixed(cur: lmdb.Cursor, prefix: bytes) -> Iterator[tuple[bytes, Any]]:
    """(key without prefix, value) of the keys starting with prefix, in order."""
    if cur.set_range(prefix):
        for key, value in cur:
            key = bytes(key)
            if not key.startswith(prefix):
                return
            yield key[len(prefix):], value


def inner_dict_id(record: bytes | memoryview) -> int:
    """The dictionary id in a stored record's v1 header (behind its TTL
    prefix, if any); 0 when it is too short to hold one."""
    at = TTL_HEADER_SIZE if len(record) and record[0] == TTL_VERSION else 0
    return int.from_bytes(record[at + 6:at + 10], "little") if len(record) >= at + 10 else 0


@dataclass
class Examined:
    """One record, layer by layer. `problem` is None when it decodes.

    The header fields are those of the v1 record, behind the TTL prefix when
    the record has one (`expires_ms` and `ttl_ms` are then set)."""

    size: int
    prefix_size: int = 0  # TTL_HEADER_SIZE for a TTL record
    expires_ms: int | None = None
    ttl_ms: int | None = None
    version: int | None = None
    flags: int | None = None
    raw_len: int | None = None
    dict_id: int | None = None
    checksum_stored: int | None = None
    checksum_computed: int | None = None
    problem: str | None = None
    value: object = MISSING

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def payload_size(self) -> int:
        return max(0, self.size - self.prefix_size - HEADER_SIZE)

    def expired(self, now_ms: int) -> bool:
        return self.expires_ms is not None and self.expires_ms <= now_ms


def examine(record: bytes | memoryview, codec: Any, dictionaries: dict[int, Dictionary],
            decode: bool = True, *, key: bytes | None) -> Examined:
    """Check a record stored under `key` the way a reader does, one layer at
    a time, and say which layer failed: TTL prefix, header, checksum (of a
    version 3 record: with the key), dictionary, or decode."""
    record = bytes(record)
    ex = Examined(size=len(record))
    if record[:1] == bytes([TTL_VERSION]):
        ex.prefix_size = TTL_HEADER_SIZE
        try:
            ex.expires_ms, ex.ttl_ms = parse_ttl(record)
        except CorruptionError as exc:
            ex.problem = f"TTL prefix: {exc.reason}"
            return ex
        record = record[TTL_HEADER_SIZE:]
    if len(record) < HEADER_SIZE:
        ex.problem = f"header: record is {len(record)} bytes, shorter than the {HEADER_SIZE}-byte header"
        return ex
    ex.version, ex.flags, ex.raw_len, ex.dict_id, ex.checksum_stored = HEADER.unpack_from(record)
    keyed = ex.version == KEYED_VERSION and key is not None
    ex.checksum_computed = xxh64(record[HEADER_SIZE:], key_seed(key) if keyed else 0)  # type: ignore[arg-type]
    try:
        parse_header(record, codec.max_value_size)
    except (CorruptionError, FormatError) as exc:
        ex.problem = f"header: {getattr(exc, 'reason', exc)}"
        return ex
    if ex.version == KEYED_VERSION and key is None:
        ex.problem = "checksum: a version 3 record, and no key to check it with"
        return ex
    if ex.checksum_computed != ex.checksum_stored:
        ex.problem = (f"checksum mismatch: stored 0x{ex.checksum_stored:016x}, "
                      f"computed 0x{ex.checksum_computed:016x} "
                      + ("with the key (the stored bytes or the key were damaged, or the record was "
                         "written for another key)" if keyed else "(the stored bytes were damaged)"))
        return ex
    if ex.dict_id and ex.dict_id not in dictionaries:
        ex.problem = f"dictionary: the record uses dictionary {ex.dict_id}, which the store does not hold"
        return ex
    if decode:
        try:
            ex.value = codec.decode(record, dictionaries=dictionaries, key=key)
        except (CorruptionError, FormatError) as exc:
            ex.problem = f"decode: {getattr(exc, 'reason', exc)}"
    return ex
