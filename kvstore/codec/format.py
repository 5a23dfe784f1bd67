"""Value format v1, and the TTL record around it: the bytes kvstore stores
for each value. Frozen.

Every value in every namespace is one record, plain or with an expiry::

    stored     := record | ttl_record
    record     := header payload
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

A value written with a time to live is a v1 record behind a 22-byte prefix::

    ttl_record := ttl_header record
    ttl_header := version flags expires ttl check               (22 bytes)
    version    := u8      = 2 (TTL_VERSION): what a v1 reader sees first, so
                          it refuses the record as newer instead of misreading it
    flags      := u8      = 0; any bit set is corruption (reserved)
    expires    := u64le   wall-clock time the value expires at, milliseconds
                          since the Unix epoch: gone once time.time() * 1000 >= expires
    ttl        := u64le   the time to live it was written with, milliseconds
                          (>= 1): get(refresh_ttl=True) sets expires to now + ttl
    check      := u32le   XXH32, seed 0, of the 18 bytes before it

The inner record is exactly what the value would be without a TTL (version
1); the codec backends never see the prefix: `wrap_ttl` and `parse_ttl` here
add and check it, in Python, for both. `check` exists because nothing else
covers the times: a flipped bit must not make a live value look expired to
the background sweep, which would delete it.

The flag values and the header layouts reach disk: never change their
meaning. A new layout gets a new version number; readers refuse versions they
do not know with `FormatError`.
"""

from __future__ import annotations

import struct

import xxhash

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
    "TTL_VERSION",
    "TTL_HEADER",
    "TTL_HEADER_SIZE",
    "wrap_ttl",
    "parse_ttl",
    "ttl_expired",
    "inner_record",
    "is_ttl",
    "header_at",
    "raw_len",
    "dict_id",
    "tag_size",
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

TTL_VERSION = 2  # frozen: the first byte of a ttl_record
TTL_HEADER = struct.Struct("<BBQQI")  # version, flags, expires (ms), ttl (ms), check
TTL_HEADER_SIZE = TTL_HEADER.size  # 22
_TTL_CHECKED = struct.Struct("<BBQQ")  # the 18 bytes check covers
_CHECK = struct.Struct("<I")
_EXPIRES = struct.Struct("<Q")  # at offset 2
_xxh32 = xxhash.xxh32_intdigest


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


def wrap_ttl(record: bytes, expires_ms: int, ttl_ms: int) -> bytes:
    """The ttl_record of a v1 record that expires at expires_ms (Unix epoch,
    milliseconds) and was given ttl_ms to live."""
    head = _TTL_CHECKED.pack(TTL_VERSION, 0, expires_ms, ttl_ms)
    return head + _CHECK.pack(_xxh32(head)) + record


def parse_ttl(data) -> tuple[int, int]:
    """(expires_ms, ttl_ms) of a ttl_record; CorruptionError if its prefix is
    damaged. Does not look at the inner record past its version byte."""
    if len(data) < TTL_HEADER_SIZE + HEADER_SIZE:
        raise CorruptionError(f"TTL record is {len(data)} bytes, shorter than its "
                              f"{TTL_HEADER_SIZE}-byte prefix and a {HEADER_SIZE}-byte header")
    _version, flags, expires, ttl, check = TTL_HEADER.unpack_from(data)
    if check != _xxh32(data[:_TTL_CHECKED.size]):
        raise CorruptionError("the TTL prefix fails its check: the stored expiry was damaged")
    if flags:
        raise CorruptionError(f"unknown flags 0x{flags:02x} in the TTL prefix")
    if ttl == 0:
        raise CorruptionError("the TTL prefix holds a time to live of 0")
    if data[TTL_HEADER_SIZE] != VERSION:
        raise CorruptionError(f"the record inside the TTL prefix has version {data[TTL_HEADER_SIZE]}, "
                              f"not {VERSION}")
    return expires, ttl


def ttl_expired(data, now_ms: int) -> bool:
    """Whether a ttl_record has expired at now_ms; CorruptionError if its
    prefix is damaged. Its check is verified only when the expiry field says
    expired: a live-looking value costs no hash (a damaged one is caught when
    it is decoded, by parse_ttl, or by `kvstore check`); a value is never
    taken for expired on a damaged field."""
    if len(data) >= TTL_HEADER_SIZE and _EXPIRES.unpack_from(data, 2)[0] > now_ms:
        return False
    return parse_ttl(data)[0] <= now_ms


def inner_record(data):
    """The v1 record of a stored value: data itself, or what follows the TTL
    prefix (a slice: a memoryview stays a memoryview). Checks nothing."""
    if len(data) and data[0] == TTL_VERSION:
        return data[TTL_HEADER_SIZE:]
    return data


# ---------------------------------------------------------------- field accessors
# Read one field of stored bytes (a record, or a ttl_record: they look behind
# the prefix). They check nothing: use them on bytes already stored by this
# format, or after parse_header/parse_ttl for bytes of unknown origin.

_U32 = struct.Struct("<I")


def is_ttl(stored) -> bool:
    """Whether stored bytes are a ttl_record (an expiry prefix, then a record)."""
    return len(stored) > 0 and stored[0] == TTL_VERSION


def header_at(stored) -> int:
    """The offset of the v1 record's header in stored bytes."""
    return TTL_HEADER_SIZE if len(stored) and stored[0] == TTL_VERSION else 0


def raw_len(stored) -> int:
    """The serialized (msgpack or raw) length of the value, from the header."""
    return _U32.unpack_from(stored, header_at(stored) + 2)[0]


def dict_id(stored) -> int:
    """The dictionary id in the header (0: none, or bytes too short to hold one)."""
    at = header_at(stored) + 6
    return _U32.unpack_from(stored, at)[0] if len(stored) >= at + 4 else 0


def tag_size(stored) -> int:
    """How many leading bytes identify the stored content without reading the
    payload: the header, and the TTL prefix before it if any (the read
    cache's tag: kvstore/cache.py)."""
    return header_at(stored) + HEADER_SIZE
