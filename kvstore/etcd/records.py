"""Values to etcd and back, in kvstore's record format (kvstore/codec).

The only two places this engine calls the codec: every value written goes
through `encode`, every value read through `decode`.
"""

from __future__ import annotations

from typing import Any

from .. import codec as _codec

__all__ = ["encode", "decode"]


def encode(codec: _codec.CodecLike, key: bytes, value: Any) -> bytes:
    """The record stored for value under key (EncodeError if msgpack cannot carry it)."""
    return codec.encode(value)


def decode(codec: _codec.CodecLike, key: bytes, record: bytes) -> Any:
    """The value of a stored record (CorruptionError if it is damaged)."""
    return codec.decode(record)
