"""What the handles of one store on etcd share (`Remote`), and the writes
they build: the connection, the sender of writes, the cache, the codec, the
namespaces' registry and default TTLs.
"""

from __future__ import annotations

from typing import Any, Iterable

from .. import codec as _codec
from ..layout import DEFAULT_NAMESPACE, check_key
from ..ttl import to_ms
from .cache import Cache
from .client import Client, rpc
from .grouping import Committer, Op, whole_seconds
from .keys import Keys
from .options import EtcdOptions
from .records import encode
from .url import Target

__all__ = ["Remote", "make_op", "ttl_seconds"]


class Remote:
    """What the handles of one opened store share: the connection, the
    sender of writes, the cache, the codec, the namespaces' TTLs."""

    def __init__(self, target: Target, options: EtcdOptions):
        self.target = target
        self.options = options
        self.keys = Keys(target.prefix)
        self.codec = _codec.Codec(options.compression, options.compression_level,
                                  options.compress_min_size, options.max_value_size)
        self.client = Client(target.endpoints, options.timeout, options.retry_time)
        self.closed = False
        try:
            self.client.call("KV", "Range", rpc.RangeRequest(key=self.keys.registry, count_only=True),
                             doing=f"opening {target.url()}")
        except BaseException:
            self.client.close()
            raise
        self.cache = None
        if options.cache_entries:
            assert self.keys.data_end is not None
            self.cache = Cache(self.client, self.keys.data, self.keys.data_end, options.cache_entries,
                               options.cache_max_age)
        invalidate = self.cache.invalidate if self.cache is not None else (lambda keys, revision: None)
        self.committer = Committer(self.client, options.max_txn_ops, options.max_request_bytes,
                                   options.flush_interval, options.max_pending_ops, invalidate,
                                   options.commit_linger)
        self.ttl_ms: dict[str, int] = {}  # namespace -> default TTL in ms (0: none), as last read
        self.registered: set[str] = set()

    def range(self, request: Any, doing: str) -> Any:
        return self.client.call("KV", "Range", request, doing=doing)

    def load_namespace(self, ns: str) -> int:
        """The namespace's default TTL in ms (0: none), read from the cluster."""
        resp = self.range(rpc.RangeRequest(key=self.keys.namespace_key(ns)), f"reading namespace {ns!r}")
        ms = int(resp.kvs[0].value or b"0") if resp.kvs else 0
        self.ttl_ms[ns] = ms
        if resp.kvs:
            self.registered.add(ns)
        return ms

    def register(self, ns: str, ttl_ms: int | None) -> None:
        """Create the namespace's registry key (if missing), or set its default TTL."""
        key = self.keys.namespace_key(ns)
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=str(ttl_ms or 0).encode()
                                                       if ttl_ms is not None else b""))
        if ttl_ms is None:  # create only if missing: never reset a stored TTL
            compare = [rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL,
                                   create_revision=0)]
            self.client.call("KV", "Txn", rpc.TxnRequest(compare=compare, success=[put]), write=True,
                             doing=f"creating namespace {ns!r}", keys=[(ns, b"")])
        else:
            self.client.call("KV", "Txn", rpc.TxnRequest(success=[put]), write=True,
                             doing=f"setting the default TTL of namespace {ns!r}", keys=[(ns, b"")])
            self.ttl_ms[ns] = ttl_ms
        self.registered.add(ns)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.committer.close()
        finally:
            if self.cache is not None:
                self.cache.close()
            self.client.close()

    def register_all(self, names: Iterable[str]) -> None:
        """Register the namespaces a write names that this process has not seen registered."""
        for ns in names:
            if ns not in self.registered and ns != DEFAULT_NAMESPACE:
                self.register(ns, None)


def ttl_seconds(remote: Remote, ns: str, ttl: float | None) -> int:
    """A put's TTL in whole seconds (0: none): ttl, else the namespace's default."""
    if ttl is None:
        ms = remote.ttl_ms.get(ns)
        if ms is None:
            ms = remote.load_namespace(ns)
        return whole_seconds(ms / 1000) if ms else 0
    ms = to_ms(ttl)  # 0: math.inf, never expires
    return whole_seconds(ms / 1000) if ms else 0


def make_op(remote: Remote, ns: str, key: Any, value: Any, ttl: int) -> Op:
    """A put of value under key in namespace ns, encoded (a bad key or value raises here)."""
    raw = check_key(key)
    return ns, raw, remote.keys.key(ns, raw), encode(remote.codec, raw, value), ttl
