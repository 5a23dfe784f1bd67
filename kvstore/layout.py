"""What a store keeps besides its values, and the rules for its names. Frozen.

A store is one LMDB environment (a directory holding data.mdb and lock.mdb)::

    environment := main_db
    main_db     := { namespace_name -> named database }   LMDB's own table
    namespace   := named database { key -> stored }        stored: codec/format.py
    "__kvstore__" := the reserved metadata database:
        b"format_version"          -> ASCII decimal: the store format (below)
        b"commit_seq"              -> u64 big-endian: +1 on every commit of writes, by any
                                      process (not on one of metadata alone: a new
                                      namespace, a TTL default, a dictionary)
        b"ttl:" + namespace        -> u64 big-endian: its default TTL in ms, 0 for none
                                      (present once the namespace may hold TTL values: ttl.py)
        b"dict:" + id (u32 BE)     -> msgpack {"namespace", "created", "samples", "data"}
        b"dict-current:" + namespace -> id (u32 BE): the dictionary new values use
                                      (dictionaries.py)
        b"wal_applied"             -> wal.Applied (gen u32, position u64, checksum u64,
                                      little-endian): how far LMDB holds the write-ahead
                                      log's records, written in the same transaction as
                                      they are (wal.py, applier.py)

Store formats: a new store is format 1; its first TTL value makes it format 2
(ttl: keys in the metadata, TTL records in namespaces), which kvstore versions
without TTL refuse to open. Format 3 has a write-ahead log (data.wal and
data.wal-index beside data.mdb; wal.py) holding acknowledged writes LMDB may
not have yet: kvstore versions without it would miss them, so they refuse it.
Format 4 is format 3 whose writers write version 3 records (their checksum
covers the key: codec/format.py); kvstore versions that read only version 1
records refuse it. A writable open that has or adds a log upgrades a store of
format 1, 2 or 3 to 4 in place (a read-only one reads it as it is); a store
used without a log stays at its format and gets version 1 records. Every
format's records stay readable. STORE_FORMAT is the newest this version reads.

Names: a namespace is a str of 1 to 255 UTF-8 bytes not starting with "__"
(reserved for kvstore); "default" is the namespace of `kvstore.open()`'s
handle. A key is bytes or str (UTF-8), 1 to MAX_KEY_SIZE bytes.
"""

from __future__ import annotations

import struct
from typing import Any

from .errors import InvalidKeyError, InvalidNamespaceError

__all__ = [
    "DEFAULT_NAMESPACE", "META_DB", "FORMAT_KEY", "SEQ_KEY", "SEQ", "TTL_PREFIX", "DICT_PREFIX",
    "CURRENT_PREFIX", "BASE_STORE_FORMAT", "TTL_STORE_FORMAT", "WAL_STORE_FORMAT", "KEYED_STORE_FORMAT", "STORE_FORMAT", "APPLIED_KEY", "MAX_KEY_SIZE",
    "check_namespace_name", "check_key", "check_bound", "prefix_end",
]

DEFAULT_NAMESPACE = "default"
META_DB = b"__kvstore__"  # reserved: store metadata, never a user namespace

FORMAT_KEY = b"format_version"
SEQ_KEY = b"commit_seq"
APPLIED_KEY = b"wal_applied"
SEQ = struct.Struct(">Q")
TTL_PREFIX = b"ttl:"
DICT_PREFIX = b"dict:"
CURRENT_PREFIX = b"dict-current:"

BASE_STORE_FORMAT = 1
TTL_STORE_FORMAT = 2
WAL_STORE_FORMAT = 3
KEYED_STORE_FORMAT = 4  # a log, and version 3 records (keyed checksums)
STORE_FORMAT = KEYED_STORE_FORMAT

MAX_KEY_SIZE = 511  # LMDB's limit with its default build


def check_namespace_name(name: object) -> bytes:
    """The UTF-8 bytes of a valid namespace name; InvalidNamespaceError otherwise."""
    if not isinstance(name, str):
        raise InvalidNamespaceError(f"a namespace name must be a str, not {type(name).__name__}")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidNamespaceError(f"namespace name {name!r} is not valid UTF-8") from None
    if not 1 <= len(raw) <= 255:
        raise InvalidNamespaceError(f"namespace name must be 1 to 255 bytes, not {len(raw)}")
    if name.startswith("__"):
        raise InvalidNamespaceError(f"namespace names starting with '__' are reserved: {name!r}")
    return raw


def check_key(key: Any) -> bytes:
    """The bytes of a valid key (a str is encoded as UTF-8); InvalidKeyError otherwise."""
    if type(key) is str:
        try:
            key = key.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidKeyError(f"key {key!r} cannot be encoded as UTF-8") from None
    elif type(key) is not bytes:
        if isinstance(key, str):
            return check_key(str.__str__(key))  # its text: str() may be overridden (an Enum's)
        if isinstance(key, bytes):
            return check_key(bytes(key))
        raise InvalidKeyError(f"a key must be bytes or str, not {type(key).__name__}")
    if not 0 < len(key) <= MAX_KEY_SIZE:
        raise InvalidKeyError(
            f"a key must be 1 to {MAX_KEY_SIZE} bytes long, not {len(key)}"
            + ("" if key else " (empty)"))
    return key  # type: ignore[no-any-return]  # bytes: checked above


def check_bound(value: object, name: str) -> bytes | None:
    """A scan bound (prefix, start, stop) as bytes; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidKeyError(f"{name} {value!r} cannot be encoded as UTF-8") from None
    if isinstance(value, bytes):
        return bytes(value)
    raise InvalidKeyError(f"{name} must be bytes or str, not {type(value).__name__}")


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with prefix (None: no such key)."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return None
    p[-1] += 1
    return bytes(p)
