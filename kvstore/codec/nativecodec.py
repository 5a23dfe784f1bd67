"""The native codec backend: value formats v1 and v3 (see format.py) done in C.

`kvstore._native` (native/kvcodec.c, built by cffi when kvstore is installed)
builds and checks record headers, computes XXH64 and drives zstd; Python
keeps msgpack, with the same options as the Python backend, so both backends
read and write the same bytes. docs/native.md describes the design.

Importing this module raises ImportError when the extension is not built or
no usable libzstd can be loaded (nativezstd.py finds and loads it);
`kvstore.codec` then falls back to the Python backend.

Thread safety: zstd contexts, msgpack packers and the output buffer belong to
one thread each (a `threading.local` of nativethread.Thread, with the helpers
that put arguments in C's shape); digested dictionaries are read-only
and shared. The C calls release the GIL (cffi's default) and touch no Python
object.
"""

from __future__ import annotations

import threading
from itertools import accumulate
from typing import Any, Iterable, Mapping


from ..errors import CorruptionError, EncodeError
from .serial import unpack
from .dictionary import Dictionary
from .format import MAX_VALUE_SIZE, Buffer, group_keys

try:
    from .._native import ffi, lib
except ImportError as exc:  # not built (no C compiler at install time)
    raise ImportError(
        f"the native codec extension kvstore._native is not built ({exc}); reinstall kvstore "
        f"with a C compiler and the Python headers available (pip install -e .)"
    ) from exc
from .nativeerrors import CData, decode_error as _decode_error, encode_error as _encode_error
from .nativeerrors import encode_type_error as _encode_type_error, msgpack_refusal as _msgpack_refusal
from .nativezstd import zstd_library, zstd_version  # loads zstd, or raises ImportError
from .nativethread import Thread as _Thread, alloc as _alloc, encode_room as _encode_room
from .nativethread import key_arg as _key_arg, key_arrays as _key_arrays, new_packer as _new_packer
from .nativethread import unpack_value as _unpack

__all__ = ["Codec", "hash64", "NAME", "zstd_library", "zstd_version"]

NAME = "native"

_BYTES_LIKE = (bytearray, memoryview)
_NULL = ffi.NULL
_SIZE_MAX = (1 << (8 * ffi.sizeof("size_t"))) - 1
_FLAG_DICT = lib.KVC_FLAG_DICT
_E_SPACE = lib.KVC_E_SPACE

# decode() copies memoryview records up to this size rather than pass a
# pointer into them (cheaper than ffi.from_buffer for small records).
_COPY_MAX = 4096
# Batch decodes pass every dictionary to C when there are at most this many,
# else only those the batch's records name.
_MAX_DICTS_PASSED = 32

# Group calls (encode_many, frame_many, decode_many, unframe_many) can share
# their work with the native worker thread, a second CPU: Codec.split, the
# least bytes to compress / to decompress into for a group to be split.
# Off by default: it makes back-to-back group calls up to 1.8x faster when
# the second CPU is free, but not the store's reads and writes, whose other
# work (msgpack, the writer thread) keeps the second CPU busy or the worker
# asleep (bench/README.md, issue 16; bench/bench_groups.py measures it).
SPLIT_OFF = (0, 0)
SPLIT_LARGE = (32 << 10, 64 << 10)  # the least sizes where a sleeping worker paid, in most runs


_xxh64 = lib.kvc_xxh64
_encode = lib.kvc_encode
_encode_into = lib.kvc_encode_into
_encode_many = lib.kvc_encode_many
_decode = lib.kvc_decode
_decode_into = lib.kvc_decode_into
_decode_many = lib.kvc_decode_many


# -------------------------------------------------------------- hashing


def hash64(data: Buffer) -> int:
    """XXH64 (seed 0) of a bytes-like object, as xxhash.xxh64_intdigest."""
    h: int
    if type(data) is bytes:
        h = _xxh64(data, len(data))
        return h
    if isinstance(data, str):
        raise TypeError("Strings must be encoded before hashing")
    buf = ffi.from_buffer(data)
    h = _xxh64(buf, len(buf))
    return h


# Most idle thread states a codec keeps for threads yet to come.
_IDLE_MAX = 16


class _Lease:
    """Held in a thread's locals beside its codec state: when the thread
    ends and its locals are dropped, the state goes to the codec's idle
    list (the one of the settings it was made with), for the next new thread."""

    __slots__ = ("idle", "t")

    def __init__(self, idle: list[_Thread], t: _Thread):
        self.idle = idle
        self.t = t

    def __del__(self, _max: int = _IDLE_MAX) -> None:  # a default: no global needed at exit
        if len(self.idle) < _max:
            self.idle.append(self.t)


class Codec:
    """Encodes values into records and back, with one set of settings.

    Same interface and same bytes as `kvstore.codec.pycodec.Codec`.

    :param compression: "zstd" or "none"
    :param level: zstd compression level
    :param min_size: serialized values shorter than this stay uncompressed
    :param max_value_size: largest serialized value accepted or decoded
    """

    backend = NAME

    def __init__(self, compression: str = "zstd", level: int = 3, min_size: int = 128,
                 max_value_size: int = MAX_VALUE_SIZE):
        self._split = SPLIT_OFF
        self._compress = compression == "zstd"
        self._min_size = min_size
        self._level = level
        self._max_value_size = max_value_size
        self._local = threading.local()
        self._idle: list[_Thread] = []  # states of threads that ended, for new threads
        self._lock = threading.Lock()
        self._cdicts: dict[int, tuple[Dictionary, CData]] = {}  # id(Dictionary) -> (it, kvc_cdict)
        self._ddicts: dict[int, tuple[Dictionary, CData]] = {}  # id(Dictionary) -> (it, kvc_ddict)

    # The settings are attributes, as in the Python backend. Each thread's
    # C context holds a copy: changing one starts every thread afresh.

    def _reset(self, level: int | None = None) -> None:
        """Every thread starts afresh (a new context on its next call, and no
        idle context of the old settings); a new level also drops the
        digested dictionaries, which carry it."""
        with self._lock:
            if level is not None:
                self._level = level
                self._cdicts = {}
            self._local = threading.local()
            self._idle = []

    @property
    def split(self) -> tuple[int, int]:
        """(encode_min, decode_min): group calls with at least encode_min
        bytes of serialized values to compress, or decode_min bytes to
        decompress into, share the work with the worker thread (0: never;
        SPLIT_OFF, the default, or SPLIT_LARGE). The bytes are the same."""
        return self._split

    @split.setter
    def split(self, value: tuple[int, int]) -> None:
        encode_min, decode_min = value
        self._split = (max(0, int(encode_min)), max(0, int(decode_min)))
        self._reset()

    @property
    def compress(self) -> bool:
        return self._compress

    @compress.setter
    def compress(self, value: bool) -> None:
        self._compress = bool(value)
        self._reset()

    @property
    def min_size(self) -> int:
        return self._min_size

    @min_size.setter
    def min_size(self, value: int) -> None:
        self._min_size = value
        self._reset()

    @property
    def max_value_size(self) -> int:
        return self._max_value_size

    @max_value_size.setter
    def max_value_size(self, value: int) -> None:
        self._max_value_size = value
        self._reset()

    @property
    def level(self) -> int:
        return self._level

    @level.setter
    def level(self, value: int) -> None:
        self._reset(level=value)

    # ------------------------------------------------------------ per thread

    def _thread(self) -> _Thread:
        try:
            t: _Thread = self._local.t
            return t
        except AttributeError:
            pass
        # A thread's first call: the state of a thread that ended, if one
        # waits (LangGraph, for one, runs each graph invocation in threads of
        # its own: a new state each time costs 50 us, and its zstd contexts'
        # first use more), else a new one.
        with self._lock:
            local, idle = self._local, self._idle
            reused = idle.pop() if idle else None
        t = reused if reused is not None else _Thread(
            self._level, self._min_size if self._compress else _SIZE_MAX, self._max_value_size,
            self._split)
        local.t = t
        local.lease = _Lease(idle, t)
        return t

    def _cdict(self, dictionary: Dictionary) -> CData:
        entry = self._cdicts.get(id(dictionary))
        if entry is None or entry[0] is not dictionary:
            with self._lock:
                entry = self._cdicts.get(id(dictionary))
                if entry is None or entry[0] is not dictionary:
                    data = dictionary.data
                    c = lib.kvc_cdict_new(data, len(data), self._level)
                    if c == _NULL:
                        raise EncodeError(f"zstd cannot use {dictionary!r} as a compression dictionary")
                    entry = (dictionary, ffi.gc(c, lib.kvc_cdict_free))
                    self._cdicts[id(dictionary)] = entry
        return entry[1]

    def _ddict(self, dictionary: Dictionary) -> CData:
        entry = self._ddicts.get(id(dictionary))
        if entry is None or entry[0] is not dictionary:
            with self._lock:
                entry = self._ddicts.get(id(dictionary))
                if entry is None or entry[0] is not dictionary:
                    data = dictionary.data
                    d = lib.kvc_ddict_new(data, len(data))
                    if d == _NULL:
                        raise CorruptionError(
                            f"zstd cannot use {dictionary!r} as a decompression dictionary"
                        )
                    entry = (dictionary, ffi.gc(d, lib.kvc_ddict_free))
                    self._ddicts[id(dictionary)] = entry
        return entry[1]

    # ---------------------------------------------------------------- encode

    def serialize(self, value: Any) -> tuple[int, bytes]:
        """(flags, serialized bytes) for a value, before compression."""
        if type(value) is bytes:
            return 0, value
        if isinstance(value, _BYTES_LIKE):
            return 0, bytes(value)
        t = self._thread()
        try:
            return 1, t.packer.pack(value)
        except (TypeError, ValueError, OverflowError) as exc:
            # A failed pack leaves the packer's buffer half-written.
            t.packer = _new_packer()
            raise _encode_type_error(value, exc) from None

    def encode(self, value: Any, *, dictionary: Dictionary | None = None,
               key: bytes | None = None) -> bytes:
        """One stored record (header included) for `value`: version 3, its
        checksum bound to `key`, when a key is given, else version 1."""
        t: _Thread
        raw: bytes
        try:
            t = self._local.t
        except AttributeError:
            t = self._thread()
        if type(value) is bytes:
            flags = 0
            raw = value
        elif isinstance(value, _BYTES_LIKE):
            flags = 0
            raw = bytes(value)
        else:
            flags = 1
            try:
                raw = t.packer.pack(value)
            except (TypeError, ValueError, OverflowError) as exc:
                t.packer = _new_packer()
                raise _encode_type_error(value, exc) from None
        if dictionary is None:
            if key is None:
                r = _encode(t.ctx, flags, raw, len(raw), _NULL, 0)
            else:
                if type(key) is not bytes:
                    key = bytes(key)  # a bytearray or memoryview, as the Python backend takes
                r = _encode(t.ctx, flags, raw, len(raw), key, len(key))
            if r >= 0:
                record: bytes = t.buf[:r]
                return record
        return self._frame(t, flags, raw, dictionary, key)

    def frame(self, flags: int, raw: bytes, dictionary: Dictionary | None = None, *,
              key: bytes | None = None) -> bytes:
        """Compress (when worth it), checksum and frame serialized bytes
        (version 3 with `key`, else version 1)."""
        t: _Thread
        if type(raw) is not bytes:
            raw = bytes(raw)
        try:
            t = self._local.t
        except AttributeError:
            t = self._thread()
        return self._frame(t, flags, raw, dictionary, key)

    def _frame(self, t: _Thread, flags: int, raw: bytes, dictionary: Dictionary | None,
               key: bytes | None) -> bytes:
        if dictionary is None:
            cdict, dict_id = _NULL, 0
        else:
            cdict, dict_id = self._cdict(dictionary), dictionary.id
        n = len(raw)
        c_key, key_len = _key_arg(key)
        out, cap, buf = t.room(_encode_room(n) if n <= self._max_value_size else 0)
        r = _encode_into(t.ctx, flags, raw, n, cdict, dict_id, c_key, key_len, out, cap)
        if r == _E_SPACE:  # a zstd whose compressBound exceeds our estimate
            out, cap, buf = t.room(t.err.a)
            r = _encode_into(t.ctx, flags, raw, n, cdict, dict_id, c_key, key_len, out, cap)
        if r < 0:
            raise _encode_error(r, t.err, self._max_value_size)
        record: bytes = buf[:r]
        return record

    def encode_many(self, values: Iterable[Any], *, dictionary: Dictionary | None = None,
                    keys: Iterable[bytes] | None = None) -> list[bytes]:
        """Records for many values; the C work is one call for all of them.
        keys: the key of each (version 3 records), None: version 1."""
        t = self._thread()
        raws: list[bytes] = []
        flags = bytearray()
        add_raw = raws.append
        add_flag = flags.append
        pack = t.packer.pack
        value = None
        try:
            for value in values:
                if type(value) is bytes:
                    add_raw(value)
                    add_flag(0)
                elif isinstance(value, _BYTES_LIKE):
                    add_raw(bytes(value))
                    add_flag(0)
                else:
                    add_raw(pack(value))
                    add_flag(1)
        except (TypeError, ValueError, OverflowError) as exc:
            t.packer = _new_packer()
            raise _encode_type_error(value, exc) from None
        return self._frame_group(t, bytes(flags), raws, dictionary, keys)

    def frame_many(self, items: Iterable[tuple[int, bytes]], *,
                   dictionary: Dictionary | None = None,
                   keys: Iterable[bytes] | None = None) -> list[bytes]:
        """frame() of many (flags, serialized bytes) pairs, as serialize()
        gives them: compressed, checksummed and framed in one C call."""
        pairs = items if type(items) is list else list(items)
        raws = [raw if type(raw) is bytes else bytes(raw) for _, raw in pairs]
        return self._frame_group(self._thread(), bytes(f for f, _ in pairs), raws, dictionary, keys)

    def _frame_group(self, t: _Thread, flags: bytes, raws: list[bytes],
                     dictionary: Dictionary | None, keys: Iterable[bytes] | None) -> list[bytes]:
        n = len(raws)
        c_keys, c_key_lens = _key_arrays(keys, n)
        if n == 0:
            return []
        if dictionary is None:
            cdict, dict_id = _NULL, 0
        else:
            cdict, dict_id = self._cdict(dictionary), dictionary.id
        lens = list(map(len, raws))
        blob = b"".join(raws)
        c_lens = _alloc("size_t[]", lens)
        out_lens = _alloc("size_t[]", n)
        out, cap, buf = t.room(_encode_room(len(blob), n))
        r = _encode_many(t.ctx, n, flags, blob, c_lens, cdict, dict_id, c_keys, c_key_lens,
                         out, cap, out_lens)
        if r == _E_SPACE:
            out, cap, buf = t.room(t.err.a)
            r = _encode_many(t.ctx, n, flags, blob, c_lens, cdict, dict_id, c_keys, c_key_lens,
                             out, cap, out_lens)
        if r < 0:
            raise _encode_error(r, t.err, self._max_value_size)
        records = buf[:r]
        ends = list(accumulate(ffi.unpack(out_lens, n)))
        return [records[s:e] for s, e in zip([0] + ends, ends)]

    # ---------------------------------------------------------------- decode

    def decode(self, data: Buffer, *, dictionaries: Mapping[int, Dictionary] | None = None,
               key: bytes | None = None) -> Any:
        """The value of a record stored under `key`. CorruptionError/FormatError
        if it is damaged (or is a version 3 record of another key, or of none)."""
        t: _Thread
        try:
            t = self._local.t
        except AttributeError:
            t = self._thread()
        if dictionaries:
            return self._decode(t, data, dictionaries, key)
        if type(data) is not bytes:
            # Stores read with buffers=True: memoryviews. Copying a small
            # one costs less than ffi.from_buffer.
            if type(data) is not memoryview or data.nbytes > _COPY_MAX:
                return self._decode(t, data, None, key)
            data = data.tobytes()
        if key is None:
            r = _decode(t.ctx, data, len(data), _NULL, 0)
        else:
            if type(key) is not bytes:
                key = bytes(key)
            r = _decode(t.ctx, data, len(data), key, len(key))
        if r < 0:  # an error, or a value larger than the buffer
            return self._decode(t, data, dictionaries, key)
        raw = t.buf[:r >> 8]
        if not r & 1:
            return raw
        try:  # unpack_value (nativethread.py) inline: one call fewer on the read path
            return unpack(raw)
        except CorruptionError:
            raise
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            raise _msgpack_refusal(exc) from None

    def _decode(self, t: _Thread, data: Buffer, dictionaries: Mapping[int, Dictionary] | None,
                key: bytes | None) -> Any:
        """decode() for any bytes-like record, dictionaries, large values, errors."""
        if dictionaries:
            dict_id, ddict = self._dict_for(data, dictionaries)
        else:
            dict_id, ddict = 0, _NULL
        rec = data if type(data) is bytes else ffi.from_buffer(data)
        c_key, key_len = _key_arg(key)
        out, cap, buf = t.out, t.cap, t.buf
        r = _decode_into(t.ctx, rec, len(rec), dict_id, ddict, c_key, key_len, out, cap)
        if r == _E_SPACE:
            out, cap, buf = t.room(t.err.a)
            r = _decode_into(t.ctx, rec, len(rec), dict_id, ddict, c_key, key_len, out, cap)
        if r < 0:
            raise _decode_error(r, t.err, self._max_value_size)
        raw = buf[:r >> 8]
        return _unpack(raw) if r & 1 else raw

    def _dict_for(self, data: Buffer, dictionaries: Mapping[int, Dictionary]) -> tuple[int, CData]:
        """(dict_id, kvc_ddict) for a record that names a dictionary we hold."""
        head = data[:10] if type(data) is bytes else bytes(memoryview(data).cast("B")[:10])
        if len(head) == 10 and head[1] & _FLAG_DICT:
            dictionary = dictionaries.get(int.from_bytes(head[6:10], "little"))
            if dictionary is not None:
                return int.from_bytes(head[6:10], "little"), self._ddict(dictionary)
        return 0, _NULL

    def _dict_table(self, recs: list[Any], dictionaries: Mapping[int, Dictionary]) -> tuple[int, CData, Any]:
        """(count, ids, kvc_ddict pointers) of the dictionaries a batch may use."""
        if len(dictionaries) <= _MAX_DICTS_PASSED:
            ids = list(dictionaries)
        else:
            wanted: set[int] = set()
            for rec in recs:
                head = bytes(memoryview(rec).cast("B")[:10])
                if len(head) == 10 and head[1] & _FLAG_DICT:
                    wanted.add(int.from_bytes(head[6:10], "little"))
            ids = [i for i in wanted if i in dictionaries]
        ids = [i for i in ids if type(i) is int and 0 < i <= 0xFFFFFFFF]
        if not ids:
            return 0, _NULL, _NULL
        ddicts = [self._ddict(dictionaries[i]) for i in ids]
        # The pointer array holds no references: keep ddicts alive in the table.
        table = ffi.new("kvc_ddict *[]", ddicts)
        return len(ids), ffi.new("uint32_t[]", ids), (table, ddicts)

    def decode_many(self, records: Iterable[Any], *,
                    dictionaries: Mapping[int, Dictionary] | None = None,
                    keys: Iterable[bytes] | None = None) -> list[Any]:
        """Values of many records; None stays None (a missing key). The C work
        (checks, checksums, decompression) is one call for all of them.
        keys: the key each record is stored under (None: none given)."""
        recs = records if type(records) is list else list(records)
        present = [r for r in recs if r is not None]
        if not present:
            return [None] * len(recs)
        if keys is not None:
            keys = group_keys(keys, len(recs))
            if len(present) != len(recs):
                keys = [k for k, rec in zip(keys, recs) if rec is not None]
        t = self._thread()
        r, infos, buf = self._unframe_group(t, present, dictionaries, keys)
        if r < 0:
            # Records before the bad one decoded: unpack them first, so a
            # msgpack error earlier in the batch wins, as it would one by one.
            bad = t.err.index
            exc = _decode_error(r, t.err, self._max_value_size)
            self._unpack_all(infos[:bad], buf[:sum(i >> 8 for i in infos[:bad])])
            raise exc
        values = self._unpack_all(infos, buf[:r])
        if len(present) == len(recs):
            return values
        it = iter(values)
        return [None if rec is None else next(it) for rec in recs]

    def unframe_many(self, records: Iterable[Any], *,
                     dictionaries: Mapping[int, Dictionary] | None = None,
                     keys: Iterable[bytes] | None = None) -> list[tuple[int, bytes]]:
        """(flags, serialized bytes) of many records: the checks, checksums
        and decompression of decode_many, in one C call, without msgpack.
        CorruptionError/FormatError for the first damaged record. keys: the
        key each record is stored under (None: none given)."""
        present = records if type(records) is list else list(records)
        if not present:
            return []
        t = self._thread()
        r, infos, buf = self._unframe_group(t, present, dictionaries, keys)
        if r < 0:
            raise _decode_error(r, t.err, self._max_value_size)
        raws = buf[:r]
        out: list[tuple[int, bytes]] = []
        add = out.append
        start = 0
        for info in infos:
            end = start + (info >> 8)
            add((info & 0xFF, raws[start:end]))
            start = end
        return out

    def _unframe_group(self, t: _Thread, present: list[Any],
                       dictionaries: Mapping[int, Dictionary] | None,
                       keys: Iterable[bytes] | None) -> tuple[int, list[int], Any]:
        """One kvc_decode_many over records (no None among them): (its
        result, the infos of the records it decoded, the buffer they are in)."""
        n = len(present)
        c_keys, c_key_lens = _key_arrays(keys, n)
        blob = b"".join(present)
        c_lens = _alloc("size_t[]", list(map(len, present)))
        if dictionaries:
            ndicts, c_ids, keep = self._dict_table(present, dictionaries)
            c_ddicts = keep[0] if ndicts else _NULL
        else:
            ndicts, c_ids, c_ddicts = 0, _NULL, _NULL
        info = _alloc("uint64_t[]", n)
        out, cap, buf = t.out, t.cap, t.buf
        r = _decode_many(t.ctx, n, blob, c_lens, ndicts, c_ids, c_ddicts, c_keys, c_key_lens,
                         out, cap, info)
        if r == _E_SPACE:
            out, cap, buf = t.room(t.err.a)
            r = _decode_many(t.ctx, n, blob, c_lens, ndicts, c_ids, c_ddicts, c_keys, c_key_lens,
                             out, cap, info)
        return r, ffi.unpack(info, t.err.index if r < 0 else n), buf

    @staticmethod
    def _unpack_all(infos: list[int], raws: bytes) -> list[Any]:
        view = memoryview(raws)
        values: list[Any] = []
        add = values.append
        start = 0
        try:
            for info in infos:
                end = start + (info >> 8)
                if info & 1:
                    add(unpack(view[start:end]))
                else:
                    add(raws[start:end])
                start = end
        except CorruptionError:
            raise
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            raise _msgpack_refusal(exc) from None
        return values


def _self_test() -> None:
    """Refuse to load if the extension and zstd do not work together."""
    if hash64(b"") != 0xEF46DB3751D8E999 or hash64(bytes(range(100))) != 0x6AC1E58032166597:
        raise ImportError("the native codec's XXH64 gives wrong results")
    codec = Codec()
    value = {"text": "native codec self-test " * 16, "n": [1, 2, 3]}
    record = codec.encode(value)
    if not record[1] & 2 or codec.decode(record) != value:
        raise ImportError(f"the native codec failed its self-test with zstd from {zstd_library}")


_self_test()
