"""Value formats v1 and v3, and the TTL record around them: the bytes
kvstore stores for each value. Frozen.

Every value in every namespace is one record, plain or with an expiry::

    stored     := record | ttl_record
    record     := header payload
    header   := version flags raw_len dict_id checksum          (18 bytes)
    version  := u8      = 1 (VERSION) or 3 (KEYED_VERSION), which says what
                        checksum covers; 0 is corruption; 2 is the TTL prefix's first
                        byte (below), refused as newer, as version 1 readers
                        do; a larger number was written by a newer kvstore
    flags    := u8      bit 0 FLAG_MSGPACK   payload decodes with msgpack
                                             (clear: the value is raw bytes)
                        bit 1 FLAG_ZSTD      payload is one zstd frame
                        bit 2 FLAG_DICT      ... compressed with dictionary dict_id
                        bits 3-7             zero; any other bit set is corruption
    raw_len  := u32le   length of the payload after decompression (equal to
                        len(payload) when FLAG_ZSTD is clear); at most the
                        reader's max_value_size, checked before allocating
    dict_id  := u32le   id of the zstd dictionary; 0 unless FLAG_DICT is set
    checksum := u64le   version 1: XXH64, seed 0, of the stored payload bytes;
                        version 3: XXH64 of the stored payload bytes, seeded
                        with XXH64 (seed 0) of the key the record is stored
                        under (key_seed): a record moved to another key, or
                        whose key's bytes changed, fails its checksum
    payload  := bytes   the rest of the record

Version 3 differs from version 1 in the checksum's seed only. Writers of a
store whose format is 4 or more (layout.py) write version 3; version 1 is
read forever (stores written before, and stores kept at format 1 to 3). A
version 3 record cannot be checked without its key: the codec's encode and
decode take it (`key=`), and refuse to decode a version 3 record without one.

A zstd payload is a single frame whose header declares its content size, equal
to raw_len. FLAG_DICT implies FLAG_ZSTD. Values are msgpack'd with the bin type
(bytes stay bytes, str stays str); a top-level `bytes` value is stored raw so
that LMDB's own tools see it verbatim.

A value written with a time to live is a record behind a 22-byte prefix::

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
1 or 3); the codec backends never see the prefix: `wrap_ttl` and `parse_ttl` here
add and check it, in Python, for both. `check` exists because nothing else
covers the times: a flipped bit must not make a live value look expired to
the background sweep, which would delete it.

The flag values and the header layouts reach disk: never change their
meaning. A new layout gets a new version number; readers refuse versions they
do not know with `FormatError`.
"""

from __future__ import annotations

import enum
import struct
from typing import Any, Iterable, TypeAlias, Union

import xxhash

from ..errors import CorruptionError, EncodeError, FormatError, InvalidArgumentError, KVStoreError

__all__ = [
    "VERSION",
    "KEYED_VERSION",
    "VERSIONS",
    "key_seed",
    "group_keys",
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
    "Reason",
    "refusal",
]

VERSION = 1  # frozen: checksum seed 0
KEYED_VERSION = 3  # frozen: checksum seeded with key_seed(key)
VERSIONS = (VERSION, KEYED_VERSION)  # what this kvstore reads

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
_xxh64 = xxhash.xxh64_intdigest

# What records are read from: bytes, or buffers of an LMDB transaction.
Buffer: TypeAlias = Union[bytes, bytearray, memoryview]


# ---------------------------------------------------------------- refusals
# Every message either backend gives for bytes that break the grammar above
# (and for a value it cannot encode), written once: the Python backend and
# the checks here raise `refusal(Reason.X, ...)`, the native one maps each
# KVC_E_* code of native/kvcodec.h onto a Reason and passes kvc_err's numbers
# `a` and `b`, in the order the fields are listed below. So both backends
# word the same refusal the same way.


class Reason(enum.Enum):
    """Why a record (or a value) is refused: one member per check."""

    SHORT = enum.auto()           # KVC_E_SHORT
    NEWER = enum.auto()           # KVC_E_NEWER
    VERSION = enum.auto()         # KVC_E_VERSION
    FLAGS = enum.auto()           # KVC_E_FLAGS
    DICT_NO_ZSTD = enum.auto()    # KVC_E_DICT_NO_ZSTD
    DICT_ZERO = enum.auto()       # KVC_E_DICT_ZERO
    DICT_ID = enum.auto()         # KVC_E_DICT_ID
    TOO_LARGE = enum.auto()       # KVC_E_TOO_LARGE
    RAW_LEN = enum.auto()         # KVC_E_RAW_LEN
    CHECKSUM = enum.auto()        # KVC_E_CHECKSUM
    KEY_CHECKSUM = enum.auto()    # KVC_E_KEY_CHECKSUM
    NO_KEY = enum.auto()          # KVC_E_NO_KEY
    NOT_FRAME = enum.auto()       # KVC_E_NOT_FRAME
    FRAME_SIZE = enum.auto()      # KVC_E_FRAME_SIZE
    NO_DICT = enum.auto()         # KVC_E_NO_DICT
    INFLATE = enum.auto()         # KVC_E_INFLATE
    INFLATE_SIZE = enum.auto()    # KVC_E_INFLATE_SIZE
    MSGPACK = enum.auto()         # the payload does not unpack
    EXT_TYPE = enum.auto()        # a msgpack extension type
    CLAIMS = enum.auto()          # a msgpack container longer than its payload
    TTL_SHORT = enum.auto()
    TTL_CHECK = enum.auto()
    TTL_FLAGS = enum.auto()
    TTL_ZERO = enum.auto()
    TTL_INNER = enum.auto()
    ENCODE_SIZE = enum.auto()     # KVC_E_ENCODE_SIZE
    ENCODE_TYPE = enum.auto()     # msgpack cannot carry the value


# reason: (error class, message, the numbers it takes, in order). {detail} is
# text from elsewhere (zstd's or msgpack's error); {HEADER_SIZE},
# {TTL_HEADER_SIZE}, {VERSION} and {KEYED_VERSION} are this module's constants.
_REFUSALS: dict[Reason, tuple[type[KVStoreError], str, tuple[str, ...]]] = {
    Reason.SHORT: (CorruptionError,
                   "record is {length} bytes, shorter than the {HEADER_SIZE}-byte header",
                   ("length",)),
    Reason.NEWER: (FormatError,
                   "value written by a newer kvstore (format version {version}, this one reads "
                   "{VERSION} and {KEYED_VERSION}); upgrade kvstore to read it",
                   ("version",)),
    Reason.VERSION: (CorruptionError, "bad format version {version} in record header",
                     ("version",)),
    Reason.FLAGS: (CorruptionError, "unknown flags 0x{flags:02x} in record header", ("flags",)),
    Reason.DICT_NO_ZSTD: (CorruptionError,
                          "record header has the dictionary flag without the zstd flag", ()),
    Reason.DICT_ZERO: (CorruptionError,
                       "record header has the dictionary flag but dictionary id 0", ()),
    Reason.DICT_ID: (CorruptionError,
                     "record header names dictionary {dict_id} without the dictionary flag",
                     ("dict_id",)),
    Reason.TOO_LARGE: (CorruptionError,
                       "record declares {raw_len} bytes, over the {limit}-byte limit "
                       "(max_value_size)",
                       ("raw_len", "limit")),
    Reason.RAW_LEN: (CorruptionError,
                     "record declares {raw_len} bytes but holds {held} uncompressed",
                     ("raw_len", "held")),
    Reason.CHECKSUM: (CorruptionError, "checksum mismatch: the stored bytes were damaged", ()),
    Reason.KEY_CHECKSUM: (CorruptionError,
                          "checksum mismatch with the key: the stored bytes or the key were "
                          "damaged, or the record was written for another key", ()),
    Reason.NO_KEY: (CorruptionError,
                    "a version {KEYED_VERSION} record is checked against its key, and none was "
                    "given; decode it with key= (the key it is stored under)", ()),
    Reason.NOT_FRAME: (CorruptionError, "payload is not a zstd frame ({detail})", ()),
    Reason.FRAME_SIZE: (CorruptionError,
                        "zstd frame declares {declared} bytes, the record header {raw_len}",
                        ("declared", "raw_len")),
    Reason.NO_DICT: (CorruptionError,
                     "record uses zstd dictionary {dict_id}, which this store does not hold",
                     ("dict_id",)),
    Reason.INFLATE: (CorruptionError, "zstd payload does not decompress ({detail})", ()),
    Reason.INFLATE_SIZE: (CorruptionError,
                          "decompressed to {got} bytes, the header declares {raw_len}",
                          ("got", "raw_len")),
    Reason.MSGPACK: (CorruptionError, "payload is not valid msgpack ({detail})", ()),
    Reason.EXT_TYPE: (CorruptionError,
                      "msgpack extension type {code} is not part of the kvstore format",
                      ("code",)),
    Reason.CLAIMS: (CorruptionError,
                    "the msgpack payload claims more than its {length} bytes can hold ({detail}): "
                    "the stored bytes are damaged or were not written by kvstore",
                    ("length",)),
    Reason.TTL_SHORT: (CorruptionError,
                       "TTL record is {length} bytes, shorter than its {TTL_HEADER_SIZE}-byte "
                       "prefix and a {HEADER_SIZE}-byte header",
                       ("length",)),
    Reason.TTL_CHECK: (CorruptionError,
                       "the TTL prefix fails its check: the stored expiry was damaged", ()),
    Reason.TTL_FLAGS: (CorruptionError, "unknown flags 0x{flags:02x} in the TTL prefix",
                       ("flags",)),
    Reason.TTL_ZERO: (CorruptionError, "the TTL prefix holds a time to live of 0", ()),
    Reason.TTL_INNER: (CorruptionError,
                       "the record inside the TTL prefix has version {version}, not {VERSION} "
                       "or {KEYED_VERSION}",
                       ("version",)),
    Reason.ENCODE_SIZE: (EncodeError,
                         "value is {length} bytes serialized, over max_value_size ({limit}); "
                         "split it or reopen the store with a larger max_value_size",
                         ("length", "limit")),
    Reason.ENCODE_TYPE: (EncodeError,
                         "cannot store a value of type {type}: {detail}; values may be None, "
                         "bool, int (64-bit), float, str, bytes, list, tuple or dict of those",
                         ("type",)),
}

_CONSTANTS = {"HEADER_SIZE": HEADER_SIZE, "TTL_HEADER_SIZE": TTL_HEADER_SIZE, "VERSION": VERSION,
              "KEYED_VERSION": KEYED_VERSION}


def refusal(reason: Reason, *values: Any, detail: str = "") -> KVStoreError:
    """The error (not raised) for `reason`, its message filled with `values`,
    one for each of the reason's fields in order, and `detail`. Extra values
    are ignored: the native backend passes kvc_err's a and b for any code."""
    error, message, fields = _REFUSALS[reason]
    return error(message.format(**dict(zip(fields, values)), detail=detail, **_CONSTANTS))


def parse_header(data: Buffer, max_value_size: int = MAX_VALUE_SIZE) -> tuple[int, int, int, int]:
    """Check a record's header; return (flags, raw_len, dict_id, checksum).

    Raises CorruptionError for a damaged header and FormatError for a record
    written by a newer format version. Does not look at the payload.
    """
    if len(data) < HEADER_SIZE:
        raise refusal(Reason.SHORT, len(data))
    version, flags, raw_len, dict_id, checksum = HEADER.unpack_from(data)
    if version != VERSION and version != KEYED_VERSION:
        raise refusal(Reason.NEWER if version > VERSION else Reason.VERSION, version)
    if flags & ~KNOWN_FLAGS:
        raise refusal(Reason.FLAGS, flags)
    if flags & FLAG_DICT:
        if not flags & FLAG_ZSTD:
            raise refusal(Reason.DICT_NO_ZSTD)
        if dict_id == 0:
            raise refusal(Reason.DICT_ZERO)
    elif dict_id != 0:
        raise refusal(Reason.DICT_ID, dict_id)
    if raw_len > max_value_size:
        raise refusal(Reason.TOO_LARGE, raw_len, max_value_size)
    if not flags & FLAG_ZSTD and raw_len != len(data) - HEADER_SIZE:
        raise refusal(Reason.RAW_LEN, raw_len, len(data) - HEADER_SIZE)
    return flags, raw_len, dict_id, checksum


def key_seed(key: bytes) -> int:
    """The seed of a version 3 record's checksum: XXH64 (seed 0) of its key."""
    return _xxh64(key)


def group_keys(keys: Iterable[bytes], n: int) -> list[bytes]:
    """The keys of a group call's n records as a list (the codecs' keys=)."""
    keys = keys if type(keys) is list else list(keys)
    if len(keys) != n:
        raise InvalidArgumentError(f"a group call was given {len(keys)} keys for {n} records; "
                                   f"pass one key per record")
    return keys


def stored_checksum(data: Buffer) -> int:
    """The checksum field of a record, without checking anything else."""
    if len(data) < HEADER_SIZE:
        raise refusal(Reason.SHORT, len(data))
    checksum: int = _CHECKSUM.unpack_from(data, _CHECKSUM_OFFSET)[0]
    return checksum


def wrap_ttl(record: bytes, expires_ms: int, ttl_ms: int) -> bytes:
    """The ttl_record of a record that expires at expires_ms (Unix epoch,
    milliseconds) and was given ttl_ms to live."""
    head = _TTL_CHECKED.pack(TTL_VERSION, 0, expires_ms, ttl_ms)
    return head + _CHECK.pack(_xxh32(head)) + record


def parse_ttl(data: Buffer) -> tuple[int, int]:
    """(expires_ms, ttl_ms) of a ttl_record; CorruptionError if its prefix is
    damaged. Does not look at the inner record past its version byte."""
    if len(data) < TTL_HEADER_SIZE + HEADER_SIZE:
        raise refusal(Reason.TTL_SHORT, len(data))
    _version, flags, expires, ttl, check = TTL_HEADER.unpack_from(data)
    if check != _xxh32(data[:_TTL_CHECKED.size]):
        raise refusal(Reason.TTL_CHECK)
    if flags:
        raise refusal(Reason.TTL_FLAGS, flags)
    if ttl == 0:
        raise refusal(Reason.TTL_ZERO)
    if data[TTL_HEADER_SIZE] not in VERSIONS:
        raise refusal(Reason.TTL_INNER, data[TTL_HEADER_SIZE])
    return expires, ttl


def ttl_expired(data: Buffer, now_ms: int) -> bool:
    """Whether a ttl_record has expired at now_ms; CorruptionError if its
    prefix is damaged. Its check is verified only when the expiry field says
    expired: a live-looking value costs no hash (a damaged one is caught when
    it is decoded, by parse_ttl, or by `kvstore check`); a value is never
    taken for expired on a damaged field."""
    if len(data) >= TTL_HEADER_SIZE and _EXPIRES.unpack_from(data, 2)[0] > now_ms:
        return False
    return parse_ttl(data)[0] <= now_ms


def inner_record(data: Buffer) -> Buffer:
    """The record of a stored value: data itself, or what follows the TTL
    prefix (a slice: a memoryview stays a memoryview). Checks nothing."""
    if len(data) and data[0] == TTL_VERSION:
        return data[TTL_HEADER_SIZE:]
    return data


# ---------------------------------------------------------------- field accessors
# Read one field of stored bytes (a record, or a ttl_record: they look behind
# the prefix). They check nothing: use them on bytes already stored by this
# format, or after parse_header/parse_ttl for bytes of unknown origin.

_U32 = struct.Struct("<I")


def is_ttl(stored: Buffer) -> bool:
    """Whether stored bytes are a ttl_record (an expiry prefix, then a record)."""
    return len(stored) > 0 and stored[0] == TTL_VERSION


def header_at(stored: Buffer) -> int:
    """The offset of the record's header in stored bytes."""
    return TTL_HEADER_SIZE if len(stored) and stored[0] == TTL_VERSION else 0


def raw_len(stored: Buffer) -> int:
    """The serialized (msgpack or raw) length of the value, from the header."""
    length: int = _U32.unpack_from(stored, header_at(stored) + 2)[0]
    return length


def dict_id(stored: Buffer) -> int:
    """The dictionary id in the header (0: none, or bytes too short to hold one)."""
    at = header_at(stored) + 6
    return _U32.unpack_from(stored, at)[0] if len(stored) >= at + 4 else 0


def tag_size(stored: Buffer) -> int:
    """How many leading bytes identify the stored content without reading the
    payload: the header, and the TTL prefix before it if any (the read
    cache's tag: kvstore/cache.py)."""
    return header_at(stored) + HEADER_SIZE
