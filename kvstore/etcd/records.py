"""Values to etcd and back, in kvstore's record format (kvstore/codec).

The only two places this engine calls the codec: every value written goes
through `encode`, every value read through `decode`. Records are version 3
(docs/format.md): their checksum covers the key, the key within its
namespace as on a local store, so a value moved to another key is refused.
"""

from __future__ import annotations

from typing import Any

from .. import codec as _codec
from ..errors import CorruptionError

__all__ = ["encode", "decode"]


def encode(codec: _codec.CodecLike, key: bytes, value: Any) -> bytes:
    """The record stored for value under key (EncodeError if msgpack cannot carry it)."""
    return codec.encode(value, key=key)


def decode(codec: _codec.CodecLike, key: bytes, record: bytes, namespace: str | None = None) -> Any:
    """The value of a stored record (CorruptionError naming the key if it is
    damaged or was written for another key)."""
    try:
        return codec.decode(record, key=key)
    except CorruptionError as exc:
        raise CorruptionError(exc.reason, key=key, namespace=namespace) from None
