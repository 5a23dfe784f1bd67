"""msgpack as both codec backends use it to read values (one place, so they agree)."""

from __future__ import annotations

from typing import Any, Callable, NoReturn

import msgpack

from ..errors import KVStoreError
from .format import Buffer, Reason, refusal

__all__ = ["unpack"]

_unpackb: Callable[..., Any] = msgpack.unpackb


def _refuse_ext(code: int, data: bytes) -> NoReturn:
    raise refusal(Reason.EXT_TYPE, code)


def _hashable(obj: Any) -> Any:
    return tuple(_hashable(x) for x in obj) if type(obj) is list else obj


def _pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    # msgpack has no tuple: a dict key that was a tuple comes back as an
    # (unhashable) list; make it a tuple again.
    return {(_hashable(k) if type(k) is list else k): v for k, v in pairs}


# What a payload of n bytes may decode into (docs/format.md, "Decoded
# size"): every element of an array takes at least one byte of it, every
# entry of a map two, every byte of a str or bin one, so an array, map, str
# or bin claiming more than n is damaged, and is refused before msgpack
# allocates what it claims. msgpack (>= 0.6.1) sets exactly these limits
# from len(data) when unpackb is given none: the import-time check below
# confirms it, so the common path passes no extra arguments (they cost about
# 0.25 us a call); a msgpack that does not bound them gets them passed.
_CLAIM = b"\xdd\x00\x98\x96\x80"  # array32 header claiming 10,000,000 elements, in 5 bytes


def _bounded_unpackb(raw: Buffer, **kw: Any) -> Any:
    """msgpack.unpackb with the limits given explicitly."""
    n = raw.nbytes if type(raw) is memoryview else len(raw)
    return msgpack.unpackb(raw, max_str_len=n, max_bin_len=n, max_array_len=n, max_map_len=n // 2,
                           max_ext_len=n, **kw)


def _bounded_by_length(unpackb: Callable[..., Any]) -> bool:
    """Whether unpackb refuses a container claiming more than its input holds."""
    try:
        unpackb(_CLAIM)
    except ValueError as exc:
        return "max_array_len" in str(exc)
    except Exception:
        return False
    return False


if not _bounded_by_length(_unpackb):  # msgpack >= 1.0 bounds them itself
    _unpackb = _bounded_unpackb


def _claims_too_much(raw: Buffer, exc: ValueError) -> KVStoreError:
    n = raw.nbytes if type(raw) is memoryview else len(raw)
    return refusal(Reason.CLAIMS, n, detail=str(exc))


def unpack(raw: Buffer) -> Any:
    """The value of a msgpack payload (raises msgpack's errors on bad input;
    CorruptionError for an array, map, str or bin longer than the payload)."""
    try:
        return _unpackb(raw, raw=False, strict_map_key=False, ext_hook=_refuse_ext)
    except TypeError as exc:
        if "unhashable" not in str(exc):
            raise
    except ValueError as exc:
        if " exceeds max_" in str(exc):
            raise _claims_too_much(raw, exc) from None
        raise
    try:
        return _unpackb(raw, raw=False, strict_map_key=False, ext_hook=_refuse_ext, object_pairs_hook=_pairs)
    except ValueError as exc:
        if " exceeds max_" in str(exc):
            raise _claims_too_much(raw, exc) from None
        raise
