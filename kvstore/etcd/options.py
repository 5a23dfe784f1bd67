"""The options of a store on etcd: one frozen dataclass, validated.

`kvstore.open("etcd://...", **options)` takes these; an option of a local
store that means nothing here (map_size, wal, ...) raises NotSupportedError
naming it, and an unknown name raises InvalidArgumentError.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import InvalidArgumentError, InvalidArgumentTypeError, NotSupportedError

__all__ = ["EtcdOptions", "LOCAL_ONLY", "MAX_TXN_OPS", "MAX_REQUEST_BYTES"]

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
MAX_REQUEST_BYTES = 1536 * 1024  # etcd's default --max-request-bytes (1.5 MiB)

# Options of a local store (kvstore.Options) that have no meaning on etcd.
LOCAL_ONLY = frozenset({
    "max_namespaces", "max_readers", "map_size", "max_map_size", "max_batch_ops", "max_batch_bytes",
    "preallocate", "wal", "log_size", "log_initial_size", "apply_interval", "apply_bytes",
    "ttl_sweep_interval", "ttl_sweep_batch", "cache_bytes",
})


@dataclass(frozen=True)
class EtcdOptions:
    # -- behaviour
    durable: bool = False
    """True: a write returns once the cluster committed it (a Raft majority
    fsynced it); False: it is queued and sent within flush_interval, grouped
    with others in one etcd transaction (flush() waits for it)."""
    readonly: bool = False
    """True: writes raise ReadOnlyError."""
    max_txn_ops: int = MAX_TXN_OPS
    """The cluster's --max-txn-ops: operations per etcd transaction. A
    put_many/batch/transaction with more raises before anything is sent;
    raise both together (etcd's flag, then this)."""
    max_request_bytes: int = MAX_REQUEST_BYTES
    """The cluster's --max-request-bytes: the size of one request. As
    max_txn_ops, for the bytes of keys and values."""

    # -- failures
    timeout: float = 2.0
    """Seconds one call to a member may take before it is given up (a
    write then raises OutcomeUnknownError)."""
    retry_time: float = 5.0
    """Seconds calls that are safe to repeat are retried (on the next member,
    with backoff) before UnavailableError: longer than an election."""

    # -- performance
    flush_interval: float = 0.002
    """Seconds a buffered write may wait for others to share its etcd
    transaction when nothing is in flight; while one is, writes queue
    anyway and go together in the next one."""
    commit_linger: float = 0.001
    """Seconds the sender waits for more durable writes when fewer are
    queued than its last transaction carried (grouping.py); 0: never."""
    max_pending_ops: int = 20000
    """Buffered writes queued but not yet sent; past it a buffered write
    waits (back-pressure)."""
    cache_entries: int = 10_000
    """Decoded values kept by the read cache (0: no cache)."""
    cache_max_age: float = 0.5
    """Seconds a cached value is served without asking the cluster; after
    that a hit checks the key's mod_revision with a keys-only read (no
    value transferred or decoded). The watch invalidates entries sooner:
    docs/distributed.md."""
    compression: str = "zstd"
    """As for a local store (kvstore.Options)."""
    compression_level: int = 3
    compress_min_size: int = 128
    max_value_size: int = 1024 * 1024
    """Bytes of one encoded value: at most what fits in one etcd request."""

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any]) -> EtcdOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        for name in options:
            if name in LOCAL_ONLY:
                raise NotSupportedError(
                    f"option {name}= applies to local stores (LMDB) only; a store on etcd has no "
                    f"such setting: leave it out (docs/distributed.md lists the options)")
            if name not in names:
                raise InvalidArgumentError(f"unknown option {name}= for a store on etcd; the options are "
                                           f"{', '.join(sorted(names))}")
        made = cls(**options)
        made._check()
        return made

    def _check(self) -> None:
        for name in ("durable", "readonly"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgumentTypeError(f"{name} must be True or False, not {getattr(self, name)!r}")
        for name in ("max_txn_ops", "max_request_bytes", "max_pending_ops", "cache_entries",
                     "compression_level", "compress_min_size", "max_value_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgumentError(f"{name} must be an int >= 0, not {value!r}")
        if self.max_txn_ops < 1 or self.max_request_bytes < 1024:
            raise InvalidArgumentError("max_txn_ops must be >= 1 and max_request_bytes >= 1024")
        for name in ("timeout", "retry_time", "flush_interval", "commit_linger", "cache_max_age"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise InvalidArgumentError(f"{name} must be a finite number of seconds >= 0, not {value!r}")
        if self.timeout <= 0:
            raise InvalidArgumentError(f"timeout must be > 0 seconds, not {self.timeout!r}")
