"""The native codec's failures as kvstore's exceptions: the KVC_E_* codes
the C calls return (native/kvcodec.h), each mapped onto a `Reason` of the
one table of refusal messages in format.py (so both backends refuse a
record with the same message), and the msgpack and type errors met on the
Python side of an encode or decode. Used by nativecodec only; every
function builds the exception, the caller raises it.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from ..errors import KVStoreError
from .format import Reason, refusal
from .._native import ffi, lib

__all__ = ["CData", "msgpack_refusal", "encode_type_error", "decode_error", "encode_error"]

# A cffi object (a pointer, an array, a `kvc_err *`): cffi has no type stubs.
CData: TypeAlias = Any


def msgpack_refusal(exc: Exception) -> KVStoreError:
    return refusal(Reason.MSGPACK, detail=f"{type(exc).__name__}: {exc}")


def encode_type_error(value: object, exc: Exception) -> KVStoreError:
    return refusal(Reason.ENCODE_TYPE, type(value).__name__, detail=str(exc))


def _zstd_error(err: CData) -> str:
    if not err.zstd_error:
        return "unknown error"
    name: bytes = ffi.string(err.zstd_error)
    return name.decode("ascii", "replace")


# The decode refusals the C codec reports, by KVC_E_* code (native/kvcodec.h).
_REASONS: dict[int, Reason] = {
    lib.KVC_E_SHORT: Reason.SHORT,
    lib.KVC_E_NEWER: Reason.NEWER,
    lib.KVC_E_VERSION: Reason.VERSION,
    lib.KVC_E_FLAGS: Reason.FLAGS,
    lib.KVC_E_DICT_NO_ZSTD: Reason.DICT_NO_ZSTD,
    lib.KVC_E_DICT_ZERO: Reason.DICT_ZERO,
    lib.KVC_E_DICT_ID: Reason.DICT_ID,
    lib.KVC_E_TOO_LARGE: Reason.TOO_LARGE,
    lib.KVC_E_RAW_LEN: Reason.RAW_LEN,
    lib.KVC_E_CHECKSUM: Reason.CHECKSUM,
    lib.KVC_E_KEY_CHECKSUM: Reason.KEY_CHECKSUM,
    lib.KVC_E_NO_KEY: Reason.NO_KEY,
    lib.KVC_E_NOT_FRAME: Reason.NOT_FRAME,
    lib.KVC_E_FRAME_SIZE: Reason.FRAME_SIZE,
    lib.KVC_E_NO_DICT: Reason.NO_DICT,
    lib.KVC_E_INFLATE: Reason.INFLATE,
    lib.KVC_E_INFLATE_SIZE: Reason.INFLATE_SIZE,
}


def decode_error(code: int, err: CData, max_value_size: int) -> Exception:
    """The exception for a KVC_E_* code of a decode call."""
    reason = _REASONS.get(code)
    if reason is Reason.TOO_LARGE:
        return refusal(reason, err.a, max_value_size)
    if reason is Reason.NOT_FRAME:
        return refusal(reason, detail="its frame header does not parse")
    if reason is not None:
        return refusal(reason, err.a, err.b, detail=_zstd_error(err))
    if code == lib.KVC_E_NOMEM:
        return MemoryError("out of memory while decoding a value")
    return RuntimeError(f"native codec failed with code {code}")


def encode_error(code: int, err: CData, max_value_size: int) -> Exception:
    """The exception for a KVC_E_* code of an encode call."""
    if code == lib.KVC_E_ENCODE_SIZE:
        return refusal(Reason.ENCODE_SIZE, err.a, max_value_size)
    if code == lib.KVC_E_NOMEM:
        return MemoryError(f"out of memory while compressing a value ({_zstd_error(err)})")
    if code == lib.KVC_E_COMPRESS:
        return RuntimeError(f"zstd failed to compress a value ({_zstd_error(err)})")
    return RuntimeError(f"native codec failed with code {code}")
