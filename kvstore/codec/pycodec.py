"""The Python codec backend: value formats v1 and v3 (see format.py) with msgpack,
zstandard and xxhash. The native backend reads and writes the same bytes.

zstd contexts and msgpack packers are not thread-safe, so each thread gets
its own (a `threading.local`), created on first use and then reused.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Mapping

import msgpack
import xxhash
import zstandard

from ..errors import CorruptionError
from .dictionary import Dictionary
from .serial import unpack
from .format import (
    FLAG_DICT,
    FLAG_MSGPACK,
    FLAG_ZSTD,
    HEADER,
    HEADER_SIZE,
    KEYED_VERSION,
    MAX_VALUE_SIZE,
    VERSION,
    Buffer,
    Reason,
    group_keys,
    parse_header,
    refusal,
)

__all__ = ["Codec", "hash64", "NAME"]

NAME = "python"

hash64 = xxhash.xxh64_intdigest

_BYTES_LIKE = (bytearray, memoryview)
_EMPTY: Mapping[int, Dictionary] = {}


def _keys(keys: Iterable[bytes] | None, n: int) -> list[bytes] | list[None]:
    """The key of each of n items of a group call (None each: no keys)."""
    return [None] * n if keys is None else group_keys(keys, n)


class Codec:
    """Encodes values into records and back, with one set of settings.

    :param compression: "zstd" or "none"
    :param level: zstd compression level
    :param min_size: serialized values shorter than this stay uncompressed
    :param max_value_size: largest serialized value accepted or decoded
    """

    backend = NAME

    def __init__(self, compression: str = "zstd", level: int = 3, min_size: int = 128,
                 max_value_size: int = MAX_VALUE_SIZE):
        self.compress = compression == "zstd"
        self.level = level
        self.min_size = min_size
        self.max_value_size = max_value_size
        # the native backend's option (group calls shared with a second
        # CPU); group calls here are loops, with nothing to share
        self.split = (0, 0)
        self._local = threading.local()

    # ------------------------------------------------------------ per thread

    def _compressor(self, dictionary: Dictionary | None) -> zstandard.ZstdCompressor:
        local = self._local
        cache: dict[int, zstandard.ZstdCompressor]
        try:
            cache = local.compressors
        except AttributeError:
            cache = local.compressors = {}
        key = dictionary.id if dictionary is not None else 0
        c = cache.get(key)
        if c is None:
            if dictionary is None:
                c = zstandard.ZstdCompressor(level=self.level, write_content_size=True,
                                             write_checksum=False)
            else:
                c = zstandard.ZstdCompressor(level=self.level, dict_data=dictionary.zstd_dict,
                                             write_content_size=True, write_checksum=False,
                                             write_dict_id=False)
            cache[key] = c
        return c

    def _decompressor(self, dict_id: int, dictionaries: Mapping[int, Dictionary]) -> zstandard.ZstdDecompressor:
        local = self._local
        cache: dict[int, tuple[Dictionary | None, zstandard.ZstdDecompressor]]
        try:
            cache = local.decompressors
        except AttributeError:
            cache = local.decompressors = {}
        d = cache.get(dict_id)
        if d is None or (dict_id and d[0] is not dictionaries.get(dict_id)):
            if dict_id:
                dictionary = dictionaries.get(dict_id)
                if dictionary is None:
                    raise refusal(Reason.NO_DICT, dict_id)
                d = (dictionary, zstandard.ZstdDecompressor(dict_data=dictionary.zstd_dict))
            else:
                d = (None, zstandard.ZstdDecompressor())
            cache[dict_id] = d
        return d[1]

    def _packer(self) -> Any:  # a msgpack.Packer (msgpack has no type stubs)
        try:
            return self._local.packer
        except AttributeError:
            p = self._local.packer = msgpack.Packer(use_bin_type=True, autoreset=True)
            return p

    # ---------------------------------------------------------------- encode

    def serialize(self, value: Any) -> tuple[int, bytes]:
        """(flags, serialized bytes) for a value, before compression."""
        if type(value) is bytes:
            return 0, value
        if isinstance(value, _BYTES_LIKE):
            return 0, bytes(value)
        try:
            return FLAG_MSGPACK, self._packer().pack(value)
        except (TypeError, ValueError, OverflowError) as exc:
            # A failed pack leaves the packer's buffer half-written.
            del self._local.packer
            raise refusal(Reason.ENCODE_TYPE, type(value).__name__, detail=str(exc)) from None

    def encode(self, value: Any, *, dictionary: Dictionary | None = None,
               key: bytes | None = None) -> bytes:
        """One stored record (header included) for `value`: version 3, its
        checksum bound to `key`, when a key is given, else version 1."""
        flags, raw = self.serialize(value)
        return self.frame(flags, raw, dictionary, key=key)

    def frame(self, flags: int, raw: bytes, dictionary: Dictionary | None = None, *,
              key: bytes | None = None) -> bytes:
        """Compress (when worth it), checksum and frame serialized bytes
        (version 3 with `key`, else version 1)."""
        raw_len = len(raw)
        if raw_len > self.max_value_size:
            raise refusal(Reason.ENCODE_SIZE, raw_len, self.max_value_size)
        payload = raw
        dict_id = 0
        if self.compress and raw_len >= self.min_size:
            z = self._compressor(dictionary).compress(raw)
            if len(z) < raw_len:
                payload = z
                flags |= FLAG_ZSTD
                if dictionary is not None:
                    flags |= FLAG_DICT
                    dict_id = dictionary.id
        if key is None:
            return HEADER.pack(VERSION, flags, raw_len, dict_id, hash64(payload)) + payload
        return HEADER.pack(KEYED_VERSION, flags, raw_len, dict_id,
                           hash64(payload, hash64(key))) + payload

    def encode_many(self, values: Iterable[Any], *, dictionary: Dictionary | None = None,
                    keys: Iterable[bytes] | None = None) -> list[bytes]:
        """encode() of many values; keys: the key of each (None: version 1)."""
        values = values if type(values) is list else list(values)
        encode = self.encode
        return [encode(v, dictionary=dictionary, key=k) for v, k in zip(values, _keys(keys, len(values)))]

    def frame_many(self, items: Iterable[tuple[int, bytes]], *,
                   dictionary: Dictionary | None = None,
                   keys: Iterable[bytes] | None = None) -> list[bytes]:
        """frame() of many (flags, serialized bytes) pairs, one at a time."""
        frame = self.frame
        pairs = items if type(items) is list else list(items)
        return [frame(flags, raw, dictionary, key=k) for (flags, raw), k in zip(pairs, _keys(keys, len(pairs)))]

    # ---------------------------------------------------------------- decode

    def _unframe(self, data: Buffer, dictionaries: Mapping[int, Dictionary],
                 key: bytes | None) -> tuple[int, Buffer]:
        """(flags, serialized bytes or a view of them) of a checked record."""
        flags, raw_len, dict_id, checksum = parse_header(data, self.max_value_size)
        payload = memoryview(data)[HEADER_SIZE:]
        if data[0] == KEYED_VERSION:
            if key is None:
                raise refusal(Reason.NO_KEY)
            if hash64(payload, hash64(key)) != checksum:
                raise refusal(Reason.KEY_CHECKSUM)
        elif hash64(payload) != checksum:
            raise refusal(Reason.CHECKSUM)
        if flags & FLAG_ZSTD:
            return flags, self._inflate(payload, raw_len, dict_id, dictionaries)
        return flags, payload

    def unframe_many(self, records: Iterable[Any], *,
                     dictionaries: Mapping[int, Dictionary] | None = None,
                     keys: Iterable[bytes] | None = None) -> list[tuple[int, bytes]]:
        """(flags, serialized bytes) of many records, one at a time, without
        msgpack. CorruptionError/FormatError for the first damaged record.
        keys: the key each record is stored under (None: none given)."""
        unframe = self._unframe
        dicts = dictionaries or _EMPTY
        out: list[tuple[int, bytes]] = []
        records = records if type(records) is list else list(records)
        for record, key in zip(records, _keys(keys, len(records))):
            flags, raw = unframe(record, dicts, key)
            out.append((flags, raw if type(raw) is bytes else bytes(raw)))
        return out

    def decode(self, data: Buffer, *, dictionaries: Mapping[int, Dictionary] | None = None,
               key: bytes | None = None) -> Any:
        """The value of a record stored under `key`. CorruptionError/FormatError
        if it is damaged (or is a version 3 record of another key, or of none)."""
        flags, raw = self._unframe(data, dictionaries or _EMPTY, key)
        if not flags & FLAG_MSGPACK:
            return bytes(raw)
        try:
            return unpack(raw)
        except CorruptionError:
            raise
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            raise refusal(Reason.MSGPACK, detail=f"{type(exc).__name__}: {exc}") from None

    def _inflate(self, payload: memoryview, raw_len: int, dict_id: int,
                 dictionaries: Mapping[int, Dictionary]) -> bytes:
        try:
            declared = zstandard.frame_content_size(payload)
        except zstandard.ZstdError as exc:
            raise refusal(Reason.NOT_FRAME, detail=str(exc)) from None
        if declared != raw_len:
            raise refusal(Reason.FRAME_SIZE, declared, raw_len)
        d = self._decompressor(dict_id, dictionaries)
        try:
            raw = d.decompress(payload, max_output_size=raw_len)
        except zstandard.ZstdError as exc:
            raise refusal(Reason.INFLATE, detail=str(exc)) from None
        if len(raw) != raw_len:
            raise refusal(Reason.INFLATE_SIZE, len(raw), raw_len)
        return raw

    def decode_many(self, records: Iterable[Any], *,
                    dictionaries: Mapping[int, Dictionary] | None = None,
                    keys: Iterable[bytes] | None = None) -> list[Any]:
        """Values of many records; None stays None (a missing key). keys: the
        key each record is stored under (None: none given)."""
        decode = self.decode
        records = records if type(records) is list else list(records)
        return [None if r is None else decode(r, dictionaries=dictionaries, key=k)
                for r, k in zip(records, _keys(keys, len(records)))]
