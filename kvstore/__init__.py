"""kvstore: an embedded key-value store for Python on LMDB, with group commit.

    import kvstore
    with kvstore.open("./agent-memory") as db:
        db.put("session:1:meta", {"stage": "intake"})             # buffered
        db.put("session:1:msg:1", {"role": "user"}, durable=True)  # synced
        db.get("session:1:meta")

See README.md for the guarantees of each write mode, and `kvstore.Options` for
every option. The package is typed (PEP 561): `Key` and `Value` are the types
of what a write takes (kvstore/_types.py).
"""

from . import codec
from .errors import (
    ConflictError,
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
    NestedTransactionError,
    NotSupportedError,
    OutcomeUnknownError,
    ReadersFullError,
    ReadOnlyError,
    StoreClosedError,
    StoreFailedError,
    StoreNotFoundError,
    TimeoutError,
    TransactionClosedError,
    TTLMismatchError,
    UnavailableError,
)
from ._types import Items, Key, Value
from .memoize import Memoized
from .options import Options, OptionsDict
from .store import Batch, Namespace, Store, open
from .txn import MISSING, Transaction

__version__ = "0.1.0"

__all__ = [
    "open",
    "Store",
    "Namespace",
    "Batch",
    "Transaction",
    "MISSING",
    "Options",
    "OptionsDict",
    "Key",
    "Value",
    "Items",
    "Memoized",
    "codec",
    "KVStoreError",
    "ConflictError",
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
    "NestedTransactionError",
    "NotSupportedError",
    "OutcomeUnknownError",
    "ReadersFullError",
    "ReadOnlyError",
    "StoreClosedError",
    "StoreFailedError",
    "StoreNotFoundError",
    "TimeoutError",
    "TransactionClosedError",
    "TTLMismatchError",
    "UnavailableError",
]
