"""kvstore: an embedded key-value store for Python on LMDB, with group commit.

    import kvstore
    with kvstore.open("./agent-memory") as db:
        db.put("session:1:meta", {"stage": "intake"})             # buffered
        db.put("session:1:msg:1", {"role": "user"}, durable=True)  # synced
        db.get("session:1:meta")

See README.md for the guarantees of each write mode, and `kvstore.Options` for
every option.
"""

from . import codec
from .errors import (
    CorruptionError,
    EncodeError,
    FormatError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidNamespaceError,
    InvalidTTLError,
    KVStoreError,
    LockFileReplacedError,
    MapFullError,
    DiskFullError,
    NamespaceLimitError,
    NotSupportedError,
    ReadersFullError,
    ReadOnlyError,
    StoreClosedError,
    StoreFailedError,
    StoreNotFoundError,
    TimeoutError,
    TTLMismatchError,
)
from .options import Options
from .store import Batch, Namespace, Store, open

__version__ = "0.1.0"

__all__ = [
    "open",
    "Store",
    "Namespace",
    "Batch",
    "Options",
    "codec",
    "KVStoreError",
    "CorruptionError",
    "EncodeError",
    "FormatError",
    "InvalidArgumentError",
    "InvalidKeyError",
    "InvalidNamespaceError",
    "InvalidTTLError",
    "LockFileReplacedError",
    "MapFullError",
    "DiskFullError",
    "NamespaceLimitError",
    "NotSupportedError",
    "ReadersFullError",
    "ReadOnlyError",
    "StoreClosedError",
    "StoreFailedError",
    "StoreNotFoundError",
    "TimeoutError",
    "TTLMismatchError",
]
