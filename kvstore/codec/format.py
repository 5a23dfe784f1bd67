"""Value format v1: the bytes kvstore stores for each value. Frozen.

Every value in every namespace is one record::

    record   := header payload
    header   := version flags raw_len dict_id checksum          (18 bytes)
    version  := u8      = 1; a larger number was written by a newer kvstore
    flags    := u8      bit 0 FLAG_MSGPACK   payload decodes with msgpack
                                             (clear: the value is raw bytes)
                        bit 1 FLAG_ZSTD      payload is one zstd frame
                        bit 2 FLAG_DICT      ... compressed with dictionary dict_id
                        bits 3-7             zero; any other bit set is corruption
    raw_len  := u32le   length of the payload after decompression (equal to
                        len(payload) when FLAG_ZSTD is clear); at most the
                        reader's max_value_size, checked before allocating
    dict_id  := u32le   id of the zstd dictionary; 0 unless FLAG_DICT is set
    checksum := u64le   XXH64, seed 0, of the stored payload bytes
    payload  := bytes   the rest of the record

A zstd payload is a single frame whose header declares its content size, equal
to raw_len. FLAG_DICT implies FLAG_ZSTD. Values are msgpack'd with the bin type
(bytes stay bytes, str stays str); a top-level `bytes` value is stored raw so
that LMDB's own tools see it verbatim.

The flag values and the header layout reach disk: never change their meaning.
A new layout gets a new version number; readers refuse versions they do not
know with `FormatError`.
"""

from __future__ import annotations

import struct

from ..errors import CorruptionError, FormatError

__all__ = [
    "VERSION",
    "FLAG_MSGPACK",
    "FLAG_ZSTD",
    "FLAG_DICT",
    "KNOWN_FLAGS",
    "HEADER",
    "HEADER_SIZE",
    "MAX_VALUE_SIZE",
    "parse_header",
    "stored_checksum",
]

VERSION = 1

FLAG_MSGPACK = 0x01  # frozen
FLAG_ZSTD = 0x02  # frozen
FLAG_DICT = 0x04  # frozen
KNOWN_FLAGS = FLAG_MSGPACK | FLAG_ZSTD | FLAG_DICT

HEADER = struct.Struct("<BBIIQ")  # version, flags, raw_len, dict_id, checksum
HEADER_SIZE = HEADER.size  # 18

# Default limit on a value's serialized size (Options.max_value_size).
MAX_VALUE_SIZE = 256 << 20

_CHECKSUM = struct.Struct("<Q")
_CHECKSUM_OFFSET = HEADER_SIZE - 8


def parse_header(data, max_value_size: int = MAX_VALUE_SIZE) -> tuple[int, int, int, int]:
    """Check a record's header; return (flags, raw_len, dict_id, checksum).

    Raises CorruptionError for a damaged header and FormatError for a record
    written by a newer format version. Does not look at the payload.
    """
    if len(data) < HEADER_SIZE:
        raise CorruptionError(f"record is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header")
    version, flags, raw_len, dict_id, checksum = HEADER.unpack_from(data)
    if version != VERSION:
        if version > VERSION:
            raise FormatError(
                f"value written by a newer kvstore (format version {version}, this one reads "
                f"{VERSION}); upgrade kvstore to read it"
            )
        raise CorruptionError(f"bad format version {version} in record header")
    if flags & ~KNOWN_FLAGS:
        raise CorruptionError(f"unknown flags 0x{flags:02x} in record header")
    if flags & FLAG_DICT:
        if not flags & FLAG_ZSTD:
            raise CorruptionError("record header has the dictionary flag without the zstd flag")
        if dict_id == 0:
            raise CorruptionError("record header has the dictionary flag but dictionary id 0")
    elif dict_id != 0:
        raise CorruptionError(f"record header names dictionary {dict_id} without the dictionary flag")
    if raw_len > max_value_size:
        raise CorruptionError(
            f"record declares {raw_len} bytes, over the {max_value_size}-byte limit (max_value_size)"
        )
    if not flags & FLAG_ZSTD and raw_len != len(data) - HEADER_SIZE:
        raise CorruptionError(
            f"record declares {raw_len} bytes but holds {len(data) - HEADER_SIZE} uncompressed"
        )
    return flags, raw_len, dict_id, checksum


def stored_checksum(data) -> int:
    """The checksum field of a record, without checking anything else."""
    if len(data) < HEADER_SIZE:
        raise CorruptionError(f"record is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header")
    return _CHECKSUM.unpack_from(data, _CHECKSUM_OFFSET)[0]
