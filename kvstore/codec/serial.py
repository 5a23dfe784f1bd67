"""msgpack as both codec backends use it to read values (one place, so they agree)."""

from __future__ import annotations

import msgpack

from ..errors import CorruptionError

__all__ = ["unpack"]

_unpackb = msgpack.unpackb


def _refuse_ext(code, data):
    raise CorruptionError(f"msgpack extension type {code} is not part of the kvstore format")


def _hashable(obj):
    return tuple(_hashable(x) for x in obj) if type(obj) is list else obj


def _pairs(pairs):
    # msgpack has no tuple: a dict key that was a tuple comes back as an
    # (unhashable) list; make it a tuple again.
    return {(_hashable(k) if type(k) is list else k): v for k, v in pairs}


def unpack(raw):
    """The value of a msgpack payload (raises msgpack's errors on bad input)."""
    try:
        return _unpackb(raw, raw=False, strict_map_key=False, ext_hook=_refuse_ext)
    except TypeError as exc:
        if "unhashable" not in str(exc):
            raise
    return _unpackb(raw, raw=False, strict_map_key=False, ext_hook=_refuse_ext, object_pairs_hook=_pairs)
