"""The value codec: turns values into stored records and back.

The record layout (value format v1) is defined, as a byte grammar, in
`kvstore.codec.format`; `docs/format.md` explains it. This module picks the
backend and exposes its functions:

    encode(value, *, dictionary=None) -> bytes     one record, header included
    decode(data, *, dictionaries=None) -> value    CorruptionError if damaged
    encode_many(values) / decode_many(records)     batch forms
    hash64(data) -> int                            XXH64, seed 0
    backend                                        name of the active backend

Module-level functions use the default settings of a store (zstd level 3,
values under 128 bytes uncompressed); a store uses a `Codec` built from its
options.
"""

from __future__ import annotations

from . import pycodec as _backend
from .dictionary import Dictionary
from .format import HEADER_SIZE, MAX_VALUE_SIZE, VERSION, parse_header, stored_checksum

__all__ = [
    "Codec",
    "Dictionary",
    "backend",
    "decode",
    "decode_many",
    "encode",
    "encode_many",
    "hash64",
    "parse_header",
    "stored_checksum",
    "HEADER_SIZE",
    "MAX_VALUE_SIZE",
    "VERSION",
]

backend: str = _backend.NAME
Codec = _backend.Codec
hash64 = _backend.hash64

_default = Codec()
encode = _default.encode
decode = _default.decode
encode_many = _default.encode_many
decode_many = _default.decode_many
