"""The expiries of a range of keys in few round trips (`EtcdStore.scan_expiry`).

A key's TTL on etcd is its lease: each KeyValue a Range returns names its
lease id (0: none), and a lease's remaining time is one LeaseTimeToLive call.
The puts of one transaction with the same TTL share a lease, so the keys of
a range have far fewer distinct leases than keys: each is read once per
scan and remembered (a lease kvstore granted is never renewed, so its end
does not move).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ..store import _decoded
from .client import rpc
from .records import decode

if TYPE_CHECKING:
    from .remote import Remote

__all__ = ["with_expiry", "lease_expiry", "Expiry"]

# (expires_at on time.time()'s scale, ttl in seconds), or None: no TTL
Expiry = tuple[float, float] | None


def with_expiry(remote: Remote, pages: Iterable[Any], ns: str, base: int, as_str: bool
                ) -> Iterator[tuple[Any, Any, Expiry]]:
    """(key, value, expiry) of each KeyValue of pages (its key past the
    first base bytes); a key whose lease has ended is left out."""
    leases: dict[int, tuple[float, float] | None] = {}  # lease id -> its expiry, or None: it has ended
    for kvs in pages:
        for kv in kvs:
            lease = int(kv.lease)
            expiry = None
            if lease:
                if lease not in leases:
                    leases[lease] = lease_expiry(remote, lease)
                expiry = leases[lease]
                if expiry is None:
                    continue
            key = kv.key[base:]
            yield (_decoded(key, ns) if as_str else key), decode(remote.codec, key, kv.value, ns), expiry


def lease_expiry(remote: Remote, lease: int) -> tuple[float, float] | None:
    """(expires_at, granted TTL in seconds) of a lease; None when it has ended."""
    info = remote.client.call("Lease", "LeaseTimeToLive", rpc.LeaseTimeToLiveRequest(ID=lease),
                              doing="reading a lease")
    if info.TTL < 0:
        return None
    return time.time() + info.TTL, float(info.grantedTTL)
