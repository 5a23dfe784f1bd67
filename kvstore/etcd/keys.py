"""Where a store's keys live in etcd's one flat, ordered keyspace. Frozen.

For the URL's prefix P (UTF-8)::

    P "/n/" namespace            -> b"" or ASCII decimal: the namespace exists;
                                    its default TTL in ms when not empty
    P "/d/" namespace 0x00 key   -> the value, in kvstore's record format
                                    (kvstore/codec/format.py); with a TTL, the
                                    key is attached to an etcd lease

etcd orders keys bytewise as LMDB does, so a namespace's keys are one
contiguous range in the same order as a local store's, and scans with a
prefix, start/stop and reverse are single ranges. A namespace name may not
hold a NUL byte here (it ends the name); "default" is registered like any
other when first written.
"""

from __future__ import annotations

from ..errors import NotSupportedError
from ..layout import check_namespace_name, prefix_end

__all__ = ["Keys"]


class Keys:
    def __init__(self, prefix: str):
        root = prefix.encode("utf-8") + b"/"
        self.registry = root + b"n/"
        self.data = root + b"d/"
        self.data_end = prefix_end(self.data)

    def namespace_key(self, ns: str) -> bytes:
        return self.registry + _name(ns)

    def base(self, ns: str) -> bytes:
        """The prefix of every key of namespace ns."""
        return self.data + _name(ns) + b"\x00"

    def key(self, ns: str, key: bytes) -> bytes:
        return self.data + _name(ns) + b"\x00" + key

    def split(self, full: bytes) -> tuple[str, bytes]:
        """(namespace, key) of a data key."""
        ns, _, key = full[len(self.data):].partition(b"\x00")
        return ns.decode("utf-8"), key

    def range(self, ns: str, lo: bytes | None, hi: bytes | None) -> tuple[bytes, bytes]:
        """The etcd range [start, end) of the namespace's keys in [lo, hi)."""
        base = self.base(ns)
        end = base + hi if hi is not None else prefix_end(base)
        assert end is not None
        return base + (lo or b""), end


def _name(ns: str) -> bytes:
    if "\x00" in ns:
        raise NotSupportedError(f"namespace {ns!r}: a namespace name on etcd may not hold a NUL "
                                f"character (it ends the name in the key layout)")
    return ns.encode("utf-8") if ns == "default" else check_namespace_name(ns)
