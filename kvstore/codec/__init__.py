"""The value codec: turns values into stored records and back.

The record layout (value formats v1 and v3) is defined, as a byte grammar,
in `kvstore.codec.format`; `docs/format.md` explains it. This module picks
the backend and exposes its functions:

    encode(value, *, dictionary=None, key=None) -> bytes
                                     one record, header included: version 3
                                     (checksum bound to key) with a key, else 1
    decode(data, *, dictionaries=None, key=None) -> value
                                     CorruptionError if damaged, or if a
                                     version 3 record is not key's (or no key)
    encode_many(values, *, keys=None) / decode_many(records, *, keys=None)
                                     batch forms: keys, one per record
    hash64(data) -> int                            XXH64, seed 0
    backend                                        name of the active backend
    backends() -> list[str]                        backends that work here
    get_backend(name) -> module                    a backend's module

Two backends write and read the same bytes: "native" (C through cffi,
`nativecodec`, see docs/native.md) and "python" (`pycodec`). The environment
variable KVSTORE_CODEC picks one when kvstore is imported:

    auto (or unset)  native when its extension is built and works, else python
                     with one RuntimeWarning saying why
    native           native, or ImportError if it is not available
    python           python

Module-level functions use the default settings of a store (zstd level 3,
values under 128 bytes uncompressed); a store uses a `Codec` built from its
options.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Any, Callable, Iterable, Mapping, Protocol

from . import pycodec
from ..errors import CodecSelectionError
from .dictionary import Dictionary
from .format import (HEADER_SIZE, KEYED_VERSION, MAX_VALUE_SIZE, VERSION, Buffer, key_seed, parse_header,
                     stored_checksum)

__all__ = [
    "Codec",
    "CodecLike",
    "CodecSelectionError",
    "Dictionary",
    "backend",
    "backends",
    "decode",
    "decode_many",
    "encode",
    "encode_many",
    "get_backend",
    "hash64",
    "use",
    "parse_header",
    "stored_checksum",
    "HEADER_SIZE",
    "MAX_VALUE_SIZE",
    "VERSION",
    "KEYED_VERSION",
    "key_seed",
]

ENV_VAR = "KVSTORE_CODEC"
CHOICES = ("auto", "native", "python")
NAMES = ("native", "python")


class CodecLike(Protocol):
    """What a `Codec` of either backend offers (pycodec.Codec, nativecodec.Codec)."""

    backend: str
    compress: bool
    level: int
    min_size: int
    max_value_size: int
    split: tuple[int, int]

    def serialize(self, value: Any) -> tuple[int, bytes]: ...

    # key / keys: the key each record is stored under. Given, encoding
    # writes version 3 records (checksum seeded with the key's hash) and
    # decoding checks version 3 records against it; None: version 1 records,
    # and version 3 ones are refused (format.py).

    def frame(self, flags: int, raw: bytes, dictionary: Dictionary | None = None, *,
              key: bytes | None = None) -> bytes: ...

    def encode(self, value: Any, *, dictionary: Dictionary | None = None,
               key: bytes | None = None) -> bytes: ...

    def encode_many(self, values: Iterable[Any], *, dictionary: Dictionary | None = None,
                    keys: Iterable[bytes] | None = None) -> list[bytes]: ...

    def frame_many(self, items: Iterable[tuple[int, bytes]], *,
                   dictionary: Dictionary | None = None,
                   keys: Iterable[bytes] | None = None) -> list[bytes]: ...

    def decode(self, data: Buffer, *, dictionaries: Mapping[int, Dictionary] | None = None,
               key: bytes | None = None) -> Any: ...

    def decode_many(self, records: Iterable[Any], *,
                    dictionaries: Mapping[int, Dictionary] | None = None,
                    keys: Iterable[bytes] | None = None) -> list[Any]: ...

    def unframe_many(self, records: Iterable[Any], *,
                     dictionaries: Mapping[int, Dictionary] | None = None,
                     keys: Iterable[bytes] | None = None) -> list[tuple[int, bytes]]: ...


_native_module: ModuleType | None = None
_native_error: ImportError | None = None


def _load_native() -> ModuleType:
    """The native backend's module; ImportError (cached) if it is unavailable."""
    global _native_module, _native_error
    if _native_module is not None:
        return _native_module
    if _native_error is None:
        try:
            from . import nativecodec
        except ImportError as exc:
            _native_error = exc
        except Exception as exc:  # a broken build must not break `import kvstore`
            _native_error = ImportError(f"the native codec failed to load: {type(exc).__name__}: {exc}")
        else:
            _native_module = nativecodec
            return nativecodec
    raise ImportError(str(_native_error)) from _native_error


def get_backend(name: str) -> ModuleType:
    """The module of backend `name` ("native" or "python"), which has `Codec`,
    `hash64` and `NAME`. ImportError if the native backend is not available."""
    if name == "python":
        return pycodec
    if name == "native":
        return _load_native()
    raise CodecSelectionError(f"unknown codec backend {name!r}; valid backends: {', '.join(NAMES)}")


def backends() -> list[str]:
    """Names of the backends that work in this process, preferred first."""
    names: list[str] = []
    try:
        _load_native()
        names.append("native")
    except ImportError:
        pass
    names.append("python")
    return names


def _select() -> ModuleType:
    choice = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if choice not in CHOICES:
        raise CodecSelectionError(
            f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not a codec backend; valid values: "
            f"{', '.join(CHOICES)} (unset means auto)"
        )
    if choice == "python":
        return pycodec
    try:
        return _load_native()
    except ImportError as exc:
        if choice == "native":
            raise ImportError(
                f"{ENV_VAR}=native but the native codec is not available: {exc}. Reinstall "
                f"kvstore where a C compiler and the Python headers are present, or set "
                f"{ENV_VAR}=auto or python"
            ) from exc
        warnings.warn(
            f"kvstore: using the slower pure-Python codec because the native one is not "
            f"available ({exc}); set {ENV_VAR}=python to choose it explicitly",
            RuntimeWarning,
            stacklevel=2,
        )
        return pycodec


def use(name: str) -> None:
    """Make backend `name` the process default: stores opened afterwards, and
    this module's functions, use it. (The test suite runs once per backend
    this way.) ImportError if it is not available."""
    global backend, Codec, hash64, encode, decode, encode_many, decode_many
    module = get_backend(name)
    default: CodecLike = module.Codec()
    backend, Codec, hash64 = module.NAME, module.Codec, module.hash64
    encode, decode = default.encode, default.decode
    encode_many, decode_many = default.encode_many, default.decode_many


backend: str
Codec: Callable[..., CodecLike]  # the active backend's Codec class
hash64: Callable[[Buffer], int]
encode: Callable[..., bytes]
decode: Callable[..., Any]
encode_many: Callable[..., list[bytes]]
decode_many: Callable[..., list[Any]]
use(_select().NAME)
