"""Reading and refreshing expiries, which on etcd are leases: the expiries
of a range of keys in few round trips (`EtcdStore.scan_expiry`), and
`get(refresh_ttl=True)` (`get_refreshing`).

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
from .grouping import grant
from .records import decode

if TYPE_CHECKING:
    from .remote import Remote

__all__ = ["with_expiry", "lease_expiry", "get_refreshing", "Expiry"]

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


def get_refreshing(remote: Remote, ns: str, raw: bytes, default: Any) -> Any:
    """get(key, default, refresh_ttl=True): the value, whose expiry, if it
    has a TTL, moves to now + that TTL. Its lease may be shared with the
    other puts of its transaction, so the key gets a new lease of its own,
    of the same TTL, by a put that keeps its value (etcd's ignore_value),
    applied only if the key still holds the value read (a compare on its
    mod_revision; a write in between wins). Skipped, as on a local store,
    when it would move the expiry by less than 1% of the TTL, or by less
    than a second (a lease's granularity); etcd gives a lease's time left
    rounded down to whole seconds, so one more second is asked for (else a
    lease just granted would look a second old, and be replaced at every
    read)."""
    full = remote.keys.key(ns, raw)
    resp = remote.range(rpc.RangeRequest(key=full), "reading a key")
    if not resp.kvs:
        return default
    kv = resp.kvs[0]
    value = decode(remote.codec, raw, kv.value, ns)
    lease = int(kv.lease)
    if not lease:
        return value
    expiry = lease_expiry(remote, lease)
    if expiry is None:  # its lease ended: the key is going
        return default
    expires_at, ttl = expiry
    if time.time() + ttl - expires_at >= max(1.0, ttl / 100) + 1:
        compare = rpc.Compare(key=full, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL,
                              mod_revision=kv.mod_revision)
        put = rpc.PutRequest(key=full, lease=grant(remote.client, int(ttl)), ignore_value=True)
        remote.client.call("KV", "Txn", rpc.TxnRequest(compare=[compare], success=[rpc.RequestOp(request_put=put)]),
                           write=True, doing="refreshing a value's TTL", keys=[(ns, raw)])
    return value
