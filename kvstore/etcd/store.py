"""A store on an etcd cluster, with the public API of a local `Store`.

`open_url("etcd://host:port[,host:port...]/prefix", **options)` returns an
`EtcdStore`: its default namespace. `namespace(name)` returns another
handle on the same connection. How each part maps onto etcd:

- keys: kvstore/etcd/keys.py (namespaces are key prefixes, in one range);
- writes: queued as groups and sent as etcd transactions by grouping.py;
- reads: linearizable Range calls (a scan pages through one revision),
  after this store's pending writes (read-your-writes) and the read cache
  (cache.py);
- TTL: etcd leases, in whole seconds (grouping.whole_seconds);
- transactions: txn.py (compares on mod_revision).

What a local store offers and this one cannot keep the same promise for
raises NotSupportedError saying why (zstd dictionaries).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar

from .. import memoize as _memoize
from ..errors import (InvalidArgumentError, InvalidKeyError, NotSupportedError, ReadOnlyError,
                      StoreClosedError, TTLMismatchError)
from ..layout import DEFAULT_NAMESPACE, check_key, check_namespace_name
from ..reads import SCAN_CHUNK, scan_bounds
from ..store import _decoded
from ..ttl import default_to_ms
from ..validate import check_timeout
from .client import rpc
from .expiries import get_refreshing, lease_expiry, with_expiry
from .grouping import Group, Op
from .options import EtcdOptions
from .records import decode
from .remote import Remote, make_op, ttl_seconds
from .url import parse

if TYPE_CHECKING:
    from .batch import EtcdBatch

__all__ = ["open_url", "EtcdStore"]

_R = TypeVar("_R")


def open_url(url: str, **options: Any) -> EtcdStore:
    """Open the store under the URL's prefix on the etcd cluster it names.

    Checks that the cluster answers (UnavailableError otherwise) and
    registers nothing: namespaces are registered when first opened.
    """
    target = parse(url)
    return EtcdStore(Remote(target, EtcdOptions.from_kwargs(options)), DEFAULT_NAMESPACE, bytes)


class EtcdStore:
    """A handle on one namespace of a store on etcd (see the module docstring).

    Thread-safe: share one handle between threads. Scans and iteration
    return keys as bytes, or as str for a handle opened with keys=str."""

    def __init__(self, remote: Remote, ns: str, keys: type[bytes] | type[str], root: bool = True):
        self._remote = remote
        self._ns = ns
        self._keys = keys
        self._root = root
        self._closed = False

    # ------------------------------------------------------------ handles

    @property
    def url(self) -> str:
        return self._remote.target.url()

    path = url

    @property
    def name(self) -> str:
        return self._ns

    @property
    def readonly(self) -> bool:
        return self._remote.options.readonly

    @property
    def options(self) -> EtcdOptions:
        return self._remote.options

    @property
    def key_type(self) -> type[bytes] | type[str]:
        return self._keys

    def _live(self) -> Remote:
        remote = self._remote
        if self._closed or remote.closed:
            raise StoreClosedError(f"the store at {self.url!r} is closed")
        return remote

    def _writable(self) -> Remote:
        remote = self._live()
        if remote.options.readonly:
            raise ReadOnlyError(f"the store at {self.url!r} is open read-only; reopen it without "
                                f"readonly=True to write")
        return remote

    def namespace(self, name: str, *, ttl: float | None = None,
                  keys: type[bytes] | type[str] = bytes) -> EtcdStore:
        """A handle on namespace `name`, registered in the cluster if missing;
        as `kvstore.Store.namespace` (ttl: its default TTL, stored)."""
        check_namespace_name(name)
        if keys is not bytes and keys is not str:
            raise InvalidArgumentError(f"keys must be bytes or str (the type scans return keys as), "
                                       f"not {keys!r}")
        wanted = None if ttl is None else default_to_ms(ttl)
        remote = self._live()
        self._remote.keys.base(name)  # NotSupportedError for a NUL in the name
        current = remote.load_namespace(name)
        if name not in remote.registered and not remote.options.readonly:
            remote.register(name, None)
        handle = EtcdStore(remote, name, keys, root=False)
        if wanted is not None and current != wanted:
            if current:
                raise TTLMismatchError(
                    f"namespace {name!r} has a default TTL of {current / 1000:g} s, not {ttl!r} s; change "
                    f"it with db.namespace({name!r}).set_default_ttl({ttl!r}), or leave ttl= out")
            handle.set_default_ttl(ttl)
        return handle

    def namespaces(self) -> list[str]:
        """Names of the namespaces in the store, sorted, "default" included."""
        remote = self._live()
        reg = remote.keys.registry
        resp = remote.range(rpc.RangeRequest(key=reg, range_end=_end(reg), keys_only=True), "listing namespaces")
        names = {kv.key[len(reg):].decode("utf-8") for kv in resp.kvs}
        return sorted(names | {DEFAULT_NAMESPACE})

    @property
    def default_ttl(self) -> float | None:
        ms = self._live().load_namespace(self._ns)
        return ms / 1000 if ms else None

    def set_default_ttl(self, ttl: float | None) -> None:
        """Set (seconds, whole seconds on etcd), or remove (None), this namespace's default TTL."""
        ms = 0 if ttl is None else default_to_ms(ttl)
        self._writable().register(self._ns, ms)

    # ------------------------------------------------------------ writes

    def _submit(self, remote: Remote, ops: list[Op], durable: bool | None, what: str) -> None:
        if not ops:
            return
        remote.register_all({op[0] for op in ops})
        durable = remote.options.durable if durable is None else bool(durable)
        remote.committer.submit(Group(ops, durable), what)

    def put(self, key: Any, value: Any, *, durable: bool | None = None, ttl: float | None = None) -> None:
        """Store value under key; as `kvstore.Store.put` (ttl: rounded up to whole seconds)."""
        remote = self._writable()
        op = make_op(remote, self._ns, key, value, ttl_seconds(remote, self._ns, ttl))
        self._submit(remote, [op], durable, "put")

    def delete(self, key: Any, *, durable: bool | None = None) -> None:
        remote = self._writable()
        raw = check_key(key)
        self._submit(remote, [(self._ns, raw, remote.keys.key(self._ns, raw), None, 0)], durable, "delete")

    def put_many(self, items: Any, *, durable: bool | None = None, ttl: float | None = None) -> None:
        """Store many pairs atomically, in one etcd transaction (so at most
        max_txn_ops keys and max_request_bytes: checked before sending)."""
        remote = self._writable()
        if hasattr(items, "items"):
            items = items.items()
        elif not hasattr(items, "__iter__"):
            raise InvalidArgumentError(f"put_many takes a mapping or an iterable of (key, value) "
                                       f"pairs, not {type(items).__name__}")
        seconds = ttl_seconds(remote, self._ns, ttl)
        ops = []
        for pair in items:
            try:
                key, value = pair
            except (TypeError, ValueError):
                raise InvalidKeyError(f"put_many takes (key, value) pairs, got {pair!r}") from None
            ops.append(make_op(remote, self._ns, key, value, seconds))
        self._submit(remote, ops, durable, "put_many")

    def batch(self, durable: bool | None = None) -> EtcdBatch:
        self._writable()
        from .batch import EtcdBatch
        return EtcdBatch(self, durable)

    def flush(self, timeout: float | None = None) -> None:
        """Return once every write accepted before the call is committed by the cluster.

        :raises UnavailableError, OutcomeUnknownError: a buffered write since
            the last flush failed (the first such error)
        """
        timeout = check_timeout(timeout)
        self._live().committer.flush(timeout)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    def __delitem__(self, key: Any) -> None:
        if key not in self:
            raise KeyError(key)
        self.delete(key)

    # ------------------------------------------------------------ reads

    def _read(self, remote: Remote, raw: bytes, missing: Any) -> Any:
        """The value under key raw of this namespace: pending writes, cache, cluster."""
        full = remote.keys.key(self._ns, raw)
        pending = remote.committer.pending.get(full)
        if pending is not None:
            record = pending[1]
            return missing if record is None else decode(remote.codec, raw, record, self._ns)
        cache = remote.cache
        entry = None
        if cache is not None:
            entry, fresh = cache.lookup(full)
            if fresh:
                return entry.value  # type: ignore[union-attr]  # fresh: an entry
            if entry is not None:  # too old to trust: is its revision still the key's?
                resp = remote.range(rpc.RangeRequest(key=full, keys_only=True), "reading a key")
                if resp.kvs and resp.kvs[0].mod_revision == entry.mod_revision:
                    cache.revalidated(full, entry)
                    return entry.value
        resp = remote.range(rpc.RangeRequest(key=full), "reading a key")
        if not resp.kvs:
            return missing
        kv = resp.kvs[0]
        value = decode(remote.codec, raw, kv.value, self._ns)
        if cache is not None:
            cache.fill(full, value, int(kv.mod_revision), int(resp.header.revision))
        return value

    def get(self, key: Any, default: Any = None, *, refresh_ttl: bool = False) -> Any:
        """The value under key, or default; as `kvstore.Store.get`.

        :param refresh_ttl: as on a local store, but sent at once (a new
            lease for the key alone: expiries.get_refreshing); needs a
            writable store
        """
        if refresh_ttl:
            remote = self._writable()
            raw = check_key(key)
            self._settle(remote)
            return get_refreshing(remote, self._ns, raw, default)
        remote = self._live()
        raw = check_key(key)
        return self._read(remote, raw, default)

    def get_many(self, keys: Iterable[Any]) -> list[Any]:
        """Values of keys, None for missing ones, in order. The keys neither
        pending nor fresh in the cache are read in etcd transactions of
        max_txn_ops reads each: one round trip, one revision, per part."""
        remote = self._live()
        raws = [check_key(k) for k in list(keys)]
        fulls = [remote.keys.key(self._ns, raw) for raw in raws]
        out: list[Any] = [None] * len(fulls)
        todo: list[int] = []
        pending, cache = remote.committer.pending, remote.cache
        for i, full in enumerate(fulls):
            if full in pending:
                record = pending[full][1]
                out[i] = None if record is None else decode(remote.codec, raws[i], record, self._ns)
                continue
            if cache is not None:
                entry, fresh = cache.lookup(full)
                if fresh:
                    out[i] = entry.value  # type: ignore[union-attr]  # fresh: an entry
                    continue
            todo.append(i)
        step = remote.options.max_txn_ops
        for part in range(0, len(todo), step):
            wanted = todo[part:part + step]
            reads = [rpc.RequestOp(request_range=rpc.RangeRequest(key=fulls[i])) for i in wanted]
            resp = remote.client.call("KV", "Txn", rpc.TxnRequest(success=reads), doing="reading keys")
            revision = int(resp.header.revision)
            for i, r in zip(wanted, resp.responses):
                kvs = r.response_range.kvs
                if kvs:
                    out[i] = decode(remote.codec, raws[i], kvs[0].value, self._ns)
                    if cache is not None:
                        cache.fill(fulls[i], out[i], int(kvs[0].mod_revision), revision)
        return out

    def __getitem__(self, key: Any) -> Any:
        missing = object()
        value = self.get(key, missing)
        if value is missing:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        missing = object()
        return self.get(key, missing) is not missing

    def expiry(self, key: Any) -> tuple[float, float] | None:
        """(expires_at on time.time()'s scale, ttl in seconds) of key's value;
        None when it has no TTL. KeyError if there is no such key."""
        remote = self._live()
        self._settle(remote)
        raw = check_key(key)
        resp = remote.range(rpc.RangeRequest(key=remote.keys.key(self._ns, raw)), "reading a key")
        if not resp.kvs:
            raise KeyError(key)
        lease = int(resp.kvs[0].lease)
        if not lease:
            return None
        expiry = lease_expiry(remote, lease)
        if expiry is None:  # the lease ended: the key is going
            raise KeyError(key)
        return expiry

    def _settle(self, remote: Remote) -> None:
        """Scans and counts read the cluster only: send this store's pending writes first."""
        if remote.committer.pending:
            remote.committer.flush()

    def __len__(self) -> int:
        remote = self._live()
        self._settle(remote)
        lo, hi = remote.keys.range(self._ns, None, None)
        return int(remote.range(rpc.RangeRequest(key=lo, range_end=hi, count_only=True), "counting keys").count)

    def __iter__(self) -> Iterator[Any]:
        return self.scan(keys_only=True)

    def keys(self) -> Iterator[Any]:
        return self.scan(keys_only=True)

    def items(self) -> Iterator[tuple[Any, Any]]:
        return self.scan()

    def scan(self, prefix: Any = None, *, start: Any = None, stop: Any = None, reverse: bool = False,
             keys_only: bool = False) -> Iterator[Any]:
        """Keys (and values) in key order, as `kvstore.Store.scan`: pages of
        SCAN_CHUNK read at one revision (a consistent view)."""
        remote = self._live()
        lo, hi = scan_bounds(prefix, start, stop)
        self._settle(remote)
        return self._scan(remote, lo, hi, reverse, keys_only)

    def _scan(self, remote: Remote, lo: bytes | None, hi: bytes | None, reverse: bool,
              keys_only: bool) -> Iterator[Any]:
        base = len(remote.keys.base(self._ns))
        as_str = self._keys is str
        for kvs in self._pages(remote, lo, hi, reverse, keys_only):
            for kv in kvs:
                key = kv.key[base:]
                out = _decoded(key, self._ns) if as_str else key
                yield out if keys_only else (out, decode(remote.codec, key, kv.value, self._ns))

    def _pages(self, remote: Remote, lo: bytes | None, hi: bytes | None, reverse: bool,
               keys_only: bool) -> Iterator[Any]:
        """The KeyValues of the namespace's keys in [lo, hi), a page of
        SCAN_CHUNK at a time, every page read at the first one's revision."""
        first, end = remote.keys.range(self._ns, lo, hi)
        revision = 0
        while first < end:
            request = rpc.RangeRequest(
                key=first, range_end=end, limit=SCAN_CHUNK, revision=revision, keys_only=keys_only,
                sort_order=rpc.RangeRequest.DESCEND if reverse else rpc.RangeRequest.ASCEND,
                sort_target=rpc.RangeRequest.KEY)
            resp = remote.range(request, "scanning")
            revision = revision or int(resp.header.revision)
            if resp.kvs:
                yield resp.kvs
            if not resp.more or not resp.kvs:
                return
            if reverse:
                end = resp.kvs[-1].key
            else:
                first = resp.kvs[-1].key + b"\x00"

    def scan_expiry(self, prefix: Any = None, *, start: Any = None, stop: Any = None,
                    reverse: bool = False) -> Iterator[tuple[Any, Any, tuple[float, float] | None]]:
        """(key, value, expiry) in key order, as scan() and expiry() of each
        key give them, in few round trips: the pages of a scan, and one
        LeaseTimeToLive per distinct lease (the puts of a transaction with
        the same TTL share one). A key whose lease ends before its lease is
        read is left out (it expired). An etcd engine's call: a local store
        has none (its expiry() reads no network)."""
        remote = self._live()
        lo, hi = scan_bounds(prefix, start, stop)
        self._settle(remote)
        return with_expiry(remote, self._pages(remote, lo, hi, reverse, False), self._ns,
                           len(remote.keys.base(self._ns)), self._keys is str)

    # ------------------------------------------------------------ transactions (txn.py)

    def transaction(self, durable: bool | None = None) -> Any:
        """A transaction validated by etcd compares on mod_revision: docs/distributed.md."""
        from .txn import EtcdTransaction
        return EtcdTransaction(self, durable)

    def transact(self, fn: Callable[[Any], _R], *, retries: int = 10, durable: bool | None = None) -> _R:
        from .txn import transact
        return transact(self, fn, retries, durable)

    def update(self, key: Any, fn: Callable[[Any], Any], default: Any = None, *,
               durable: bool | None = None) -> Any:
        from ..retry import RMW_RETRIES, update_step
        return self.transact(update_step(key, fn, default), retries=RMW_RETRIES, durable=durable)

    def incr(self, key: Any, delta: int = 1, default: int = 0, *, durable: bool | None = None) -> int:
        from ..retry import RMW_RETRIES, incr_step
        return self.transact(incr_step(key, delta, default), retries=RMW_RETRIES, durable=durable)

    def compare_and_set(self, key: Any, expected: Any, new: Any, *, durable: bool | None = None) -> bool:
        from ..retry import RMW_RETRIES, cas_step
        return self.transact(cas_step(key, expected, new), retries=RMW_RETRIES, durable=durable)

    # ------------------------------------------------------------ the rest

    def memoize(self, ttl: float | None = None, namespace: str | None = None, *, name: str | None = None,
                key: Callable[..., Any] | None = None) -> Any:
        """As `kvstore.Store.memoize`."""
        handle = self if namespace is None else self.namespace(namespace)
        return _memoize.memoize(handle, ttl, name=name, key=key)  # type: ignore[arg-type]  # same API

    def train_dictionary(self, namespace: str | None = None, samples: int = 5000,
                         dict_size: int = 112640) -> int:
        raise NotSupportedError("zstd dictionaries are not supported on etcd: a dictionary must reach "
                                "every reader before any value that uses it, which this engine does "
                                "not order; values are compressed without one")

    def dictionaries(self) -> list[dict[str, Any]]:
        return []

    def stats(self) -> dict[str, Any]:
        """Counters of this process's connection: commits (etcd transactions
        of writes), ops_committed, ops_per_commit, commit_seconds, pending,
        calls/retries/failovers, cache, transactions."""
        remote = self._live()
        c = remote.committer
        times = sorted(c.txn_seconds)
        from .txn import STATS
        return {
            "url": self.url, "engine": "etcd", "endpoint": remote.client.endpoint,
            "readonly": self.readonly, "codec": remote.codec.backend,
            "commits": c.txns, "ops_committed": c.ops_sent,
            "ops_per_commit": {"mean": c.ops_sent / c.txns if c.txns else 0.0, "max": c.max_ops_per_txn},
            "commit_seconds": {"p50": times[len(times) // 2] if times else 0.0,
                               "p99": times[int(len(times) * 0.99)] if times else 0.0},
            "pending": c.queued(),
            "calls": remote.client.calls, "retries": remote.client.retries,
            "failovers": remote.client.failovers,
            "cache": remote.cache.stats() if remote.cache is not None else None,
            "transactions": dict(STATS),
        }

    def close(self) -> None:
        """Send pending writes and close the connection (a namespace handle:
        only itself). Idempotent.

        :raises UnavailableError, OutcomeUnknownError: a buffered write since
            the last flush failed (the connection is closed all the same)
        """
        if self._closed:
            return
        self._closed = True
        if self._root and not self._remote.closed:
            try:
                self._remote.committer.flush()  # a buffered write's failure is raised here
            finally:
                self._remote.close()

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if (self._closed or self._remote.closed) else "open"
        return f"<kvstore.etcd.EtcdStore {self.url!r} namespace={self._ns!r} {state}>"


def _end(prefix: bytes) -> bytes:
    from ..layout import prefix_end
    end = prefix_end(prefix)
    assert end is not None
    return end

