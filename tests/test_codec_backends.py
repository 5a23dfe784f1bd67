"""The codec backends agree byte for byte and refuse the same bad records.

Every test runs over `kvstore.codec.backends()` (native and python where the
native extension is built; python alone otherwise), and the cross tests over
every (writer, reader) pair.
"""

import os
import random
import struct
import subprocess
import sys
import threading

import msgpack
import pytest
import xxhash
import zstandard
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import kvstore.codec as codec
from kvstore.codec import Dictionary, format
from kvstore.errors import CorruptionError, EncodeError, FormatError

BACKENDS = codec.backends()
PAIRS = [(w, r) for w in BACKENDS for r in BACKENDS]
BAD = (CorruptionError, FormatError)

# (compression, level, min_size): the default, compress everything, never.
SETTINGS = [("zstd", 3, 128), ("zstd", 1, 0), ("none", 3, 128)]

_WORDS = ("agent memory session tool call result observation episode reward the a of "
          "to summarise user assistant plan step goal outcome vector").split()


def make(name, compression="zstd", level=3, min_size=128, max_value_size=format.MAX_VALUE_SIZE):
    return codec.get_backend(name).Codec(compression, level, min_size, max_value_size)


def _samples(seed=7, n=800):
    rng = random.Random(seed)
    return [
        msgpack.packb({
            "role": rng.choice(["user", "assistant", "tool"]),
            "content": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 80))),
            "ts": rng.randint(0, 2**40),
            "tokens": rng.randint(1, 4000),
        }, use_bin_type=True)
        for _ in range(n)
    ]


TRAINED = Dictionary(11, zstandard.train_dictionary(4096, _samples()).as_bytes())
RAW_CONTENT = Dictionary(12, " ".join(_WORDS).encode() * 4)  # a raw-content dictionary
DICTS = {TRAINED.id: TRAINED, RAW_CONTENT.id: RAW_CONTENT}

# ------------------------------------------------------------------ values

_keys = st.text(max_size=12) | st.integers(-1000, 1000)
_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=False) | st.text(max_size=80) | st.binary(max_size=80))
_nested = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(_keys, inner, max_size=6),
    max_leaves=25,
)
# Values long and repetitive enough that zstd shrinks them.
_compressible = st.builds(
    lambda words, times, n: {"content": " ".join(words) * times, "n": n, "tags": words},
    st.lists(st.sampled_from(_WORDS), min_size=1, max_size=20),
    st.integers(1, 40),
    st.integers(-(2**63), 2**63 - 1),
)
_raw_bytes = st.binary(max_size=600) | st.builds(lambda b, k: b * k, st.binary(min_size=1, max_size=40),
                                                 st.integers(1, 60))
VALUES = _nested | _compressible | _raw_bytes | st.text(max_size=400)


def _dict_choice():
    return st.sampled_from([None, TRAINED, RAW_CONTENT])


# -------------------------------------------------------------- helpers


def _restamp(record: bytes) -> bytes:
    """The record with its checksum recomputed (to get past it on purpose)."""
    payload = record[format.HEADER_SIZE:]
    return record[:10] + struct.pack("<Q", xxhash.xxh64_intdigest(payload)) + payload


def _record(flags, raw_len, dict_id, payload, version=1, checksum=None):
    if checksum is None:
        checksum = xxhash.xxh64_intdigest(payload)
    return format.HEADER.pack(version, flags, raw_len, dict_id, checksum) + payload


def _outcome(c, record, dictionaries=None):
    """('ok', value) or ('error', exception class); anything else escapes."""
    try:
        return "ok", c.decode(record, dictionaries=dictionaries)
    except BAD as exc:
        return "error", type(exc)


def _assert_refused_alike(record, dictionaries=None, **settings):
    """Every backend raises CorruptionError/FormatError, the same class."""
    kinds = set()
    for name in BACKENDS:
        with pytest.raises(BAD) as info:
            make(name, **settings).decode(record, dictionaries=dictionaries)
        kinds.add(type(info.value))
        with pytest.raises(BAD):
            make(name, **settings).decode_many([None, record], dictionaries=dictionaries)
    assert len(kinds) == 1, kinds


def _assert_agree(record, dictionaries=None):
    """Every backend gives the same value, or the same refusal."""
    outcomes = [_outcome(make(name), record, dictionaries) for name in BACKENDS]
    assert all(o == outcomes[0] for o in outcomes), outcomes


def _fcs_field(frame: bytes):
    """(offset, size) of the Frame_Content_Size field of a zstd frame header
    (zstd format spec, "Frame_Header"); size 0 when absent."""
    fhd = frame[4]
    fcs_flag, single_segment, did_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    offset = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[did_flag]
    size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    return offset, size


# ------------------------------------------------------------ selection


def test_backends_listed():
    assert BACKENDS[-1] == "python"
    assert codec.backend in BACKENDS
    for name in BACKENDS:
        module = codec.get_backend(name)
        assert module.NAME == name and module.Codec.backend == name
    with pytest.raises(ValueError):
        codec.get_backend("fortran")


def test_module_functions_round_trip():
    value = {"content": "module level " * 20, "n": 1}
    assert codec.decode(codec.encode(value)) == value
    assert codec.decode_many(codec.encode_many([value, b"raw"]) + [None]) == [value, b"raw", None]
    assert codec.hash64(b"abc") == xxhash.xxh64_intdigest(b"abc")
    assert codec.Codec.backend == codec.backend


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "KVSTORE_CODEC"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                          text=True, timeout=120)


def test_env_var_rejects_unknown_value():
    proc = _run("import kvstore", KVSTORE_CODEC="turbo")
    assert proc.returncode != 0
    assert "CodecSelectionError" in proc.stderr
    assert "auto, native, python" in proc.stderr


def test_env_var_python():
    proc = _run("import kvstore.codec as c; print(c.backend)", KVSTORE_CODEC="python")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["python"]


_HIDE_NATIVE = """
import sys, warnings
sys.modules["kvstore._native"] = None  # as if the extension were not built
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import kvstore.codec as c
print(c.backend, c.backends(), sum(issubclass(w.category, RuntimeWarning) for w in caught))
"""


def test_auto_falls_back_with_one_warning():
    proc = _run(_HIDE_NATIVE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["python", "['python']", "1"]


def test_native_required_but_missing():
    proc = _run(_HIDE_NATIVE, KVSTORE_CODEC="native")
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "KVSTORE_CODEC=native" in proc.stderr


@pytest.mark.skipif("native" not in BACKENDS, reason="native codec not built")
def test_auto_picks_native_when_built():
    proc = _run("import warnings; warnings.simplefilter('error'); import kvstore.codec as c; "
                "print(c.backend)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["native"]


@pytest.mark.skipif("native" not in BACKENDS, reason="native codec not built")
def test_native_with_system_libzstd():
    # KVSTORE_ZSTD_LIBRARY names the zstd to load instead of the usual candidates.
    code = """
import ctypes, sys
try:
    ctypes.CDLL("libzstd.so.1")
except OSError:
    print("skip"); sys.exit(0)
from kvstore.codec import nativecodec, pycodec, Dictionary
assert nativecodec.zstd_library == "libzstd.so.1", nativecodec.zstd_library
n, p = nativecodec.Codec(min_size=0), pycodec.Codec(min_size=0)
d = Dictionary(3, b"system zstd dictionary " * 20)
for v in ({"text": "system zstd " * 50}, b"x" * 300, 1):
    for dictionary in (None, d):
        assert p.decode(n.encode(v, dictionary=dictionary), dictionaries={3: d}) == v
        assert n.decode(p.encode(v, dictionary=dictionary), dictionaries={3: d}) == v
print("ok", nativecodec.zstd_version)
"""
    proc = _run(code, KVSTORE_CODEC="native", KVSTORE_ZSTD_LIBRARY="libzstd.so.1")
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.startswith("skip"):
        pytest.skip("no system libzstd.so.1")
    assert proc.stdout.startswith("ok")


# ------------------------------------------------------------ agreement


@pytest.mark.parametrize("writer,reader", PAIRS)
@pytest.mark.parametrize("compression,level,min_size", SETTINGS)
@given(value=VALUES, dictionary=_dict_choice())
def test_cross_decode(writer, reader, compression, level, min_size, value, dictionary):
    w = make(writer, compression, level, min_size)
    r = make(reader, compression, level, min_size)
    record = w.encode(value, dictionary=dictionary)
    expected = w.decode(record, dictionaries=DICTS)
    assert r.decode(record, dictionaries=DICTS) == expected
    assert r.decode_many([record, None, record], dictionaries=DICTS) == [expected, None, expected]
    if isinstance(value, (bytes, bytearray)):
        assert expected == bytes(value)
    if dictionary is not None and record[1] & format.FLAG_DICT:
        assert struct.unpack_from("<I", record, 6)[0] == dictionary.id


@pytest.mark.parametrize("writer,reader", PAIRS)
@given(values=st.lists(VALUES, max_size=12), dictionary=_dict_choice())
def test_cross_decode_batches(writer, reader, values, dictionary):
    w, r = make(writer, min_size=0), make(reader, min_size=0)
    records = w.encode_many(values, dictionary=dictionary)
    assert records == [w.encode(v, dictionary=dictionary) for v in values]
    expected = [w.decode(rec, dictionaries=DICTS) for rec in records]
    mixed = [x for rec in records for x in (None, rec)]
    assert r.decode_many(mixed, dictionaries=DICTS) == [x for e in expected for x in (None, e)]
    assert r.decode_many(iter(records), dictionaries=DICTS) == expected


@given(value=VALUES)
def test_uncompressed_records_identical(value):
    records = {name: make(name, "none").encode(value) for name in BACKENDS}
    assert len(set(records.values())) == 1
    # Values under min_size stay uncompressed with compression on, too.
    small = {name: make(name, min_size=1 << 30).encode(value) for name in BACKENDS}
    assert set(small.values()) == set(records.values())
    flags, raw = codec.get_backend(BACKENDS[0]).Codec().serialize(value)
    assert records[BACKENDS[0]] == _record(flags, len(raw), 0, raw)


def _same_zstd():
    if "native" not in BACKENDS:
        return False
    native = codec.get_backend("native")
    return native.zstd_version == tuple(int(x) for x in zstandard.ZSTD_VERSION[:3])


@pytest.mark.skipif(not _same_zstd(), reason="needs the native codec on the zstd of `zstandard`")
@given(value=VALUES, dictionary=_dict_choice())
def test_compressed_records_identical_on_same_zstd(value, dictionary):
    # Not a format promise (another zstd may compress differently), but on
    # the same zstd with the same frame parameters the bytes must match.
    records = {name: make(name, min_size=0).encode(value, dictionary=dictionary)
               for name in BACKENDS}
    assert len(set(records.values())) == 1


@pytest.mark.parametrize("name", BACKENDS)
def test_compression_semantics(name):
    c = make(name)
    text = {"content": "abc " * 100}
    rec = c.encode(text)
    assert rec[1] == format.FLAG_MSGPACK | format.FLAG_ZSTD
    frame = rec[format.HEADER_SIZE:]
    params = zstandard.get_frame_parameters(frame)
    assert params.content_size == struct.unpack_from("<I", rec, 2)[0]
    assert not params.has_checksum and params.dict_id == 0
    rec = c.encode(text, dictionary=TRAINED)
    assert rec[1] == format.FLAG_MSGPACK | format.FLAG_ZSTD | format.FLAG_DICT
    assert struct.unpack_from("<I", rec, 6)[0] == TRAINED.id
    assert zstandard.get_frame_parameters(rec[format.HEADER_SIZE:]).dict_id == 0
    # Incompressible: stored raw even above min_size.
    noise = random.Random(3).randbytes(5000)
    rec = c.encode(noise)
    assert rec[1] == 0 and rec[format.HEADER_SIZE:] == noise
    # min_size boundary: 127 bytes stay raw, 128 may compress.
    assert c.encode(b"a" * 127)[1] == 0
    assert c.encode(b"a" * 128)[1] == format.FLAG_ZSTD


@pytest.mark.parametrize("name", BACKENDS)
def test_large_values_and_buffers(name):
    c = make(name)
    big = {"blob": b"\x00" * (6 << 20), "text": "x" * (5 << 20)}
    rec = c.encode(big)
    assert rec[1] & format.FLAG_ZSTD
    assert c.decode(rec) == big
    raw = random.Random(5).randbytes(9 << 20)
    recs = c.encode_many([raw, big, b"", raw[:10]])
    assert c.decode_many(recs) == [raw, big, b"", raw[:10]]
    for other in BACKENDS:
        assert make(other).decode_many(recs) == [raw, big, b"", raw[:10]]
    # Any bytes-like record and value.
    assert c.decode(memoryview(rec)) == big
    assert c.decode(bytearray(c.encode(bytearray(b"xy")))) == b"xy"
    assert c.encode(memoryview(b"abc")) == c.encode(b"abc")
    assert c.frame(0, b"abc") == c.encode(b"abc")


@pytest.mark.parametrize("name", BACKENDS)
def test_encode_errors(name):
    c = make(name, max_value_size=100)
    with pytest.raises(EncodeError):
        c.encode(b"x" * 101)
    with pytest.raises(EncodeError):
        c.encode_many([b"ok", b"x" * 101])
    assert c.decode(c.encode(b"x" * 100)) == b"x" * 100
    with pytest.raises(EncodeError):
        c.encode(object())
    with pytest.raises(EncodeError):
        c.encode_many([1, {1, 2}])
    with pytest.raises(EncodeError):
        c.encode(2**64)
    # The packer is usable after a failed pack.
    assert c.decode(c.encode({"after": "failure"})) == {"after": "failure"}
    assert c.decode_many(c.encode_many([[1], "two"])) == [[1], "two"]


@pytest.mark.parametrize("name", BACKENDS)
def test_threads(name):
    c = make(name, min_size=0)
    values = [{"i": i, "content": " ".join(_WORDS[: i % 20]) * (i % 7 + 1)} for i in range(300)]
    expected = make("python", min_size=0).encode_many(values)
    failures = []

    def work(k):
        try:
            for _ in range(5):
                dictionary = TRAINED if k % 2 else None
                recs = c.encode_many(values, dictionary=dictionary)
                one = [c.encode(v, dictionary=dictionary) for v in values]
                if recs != one:
                    failures.append("batch != single")
                if dictionary is None and recs != expected and _same_zstd():
                    failures.append("differs from python")
                if c.decode_many(recs, dictionaries=DICTS) != values:
                    failures.append("decode_many")
                if [c.decode(r, dictionaries=DICTS) for r in one] != values:
                    failures.append("decode")
                # The error path, raced too.
                try:
                    c.decode_many([recs[0], b"\x01" * 30], dictionaries=DICTS)
                    failures.append("no error")
                except CorruptionError:
                    pass
        except Exception as exc:  # pragma: no cover - reported below
            failures.append(repr(exc))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:5]


def test_native_thread_states_outlive_their_threads():
    # LangGraph runs each graph invocation in threads of its own: a thread
    # that ends leaves its codec state (zstd contexts, buffer) to the next
    # new thread, made with the settings of the day, never older ones.
    if "native" not in BACKENDS:
        pytest.skip("the native codec is not built here")
    c = make("native", min_size=0)
    value = {"content": "reused " * 60}
    states = []

    def work(expect_zstd):
        record = c.encode(value)
        states.append((c._thread(), bool(record[1] & format.FLAG_ZSTD) == expect_zstd,
                       c.decode(record) == value))

    def in_thread(*args):
        t = threading.Thread(target=work, args=args)
        t.start()
        t.join()

    for _ in range(3):
        in_thread(True)
    assert len({id(state) for state, _, _ in states}) == 1  # one state, three threads
    c.compress = False  # a state made before this must not serve again
    in_thread(False)
    in_thread(False)
    assert all(ok and same for _, ok, same in states), states
    assert states[3][0] is not states[0][0] and states[4][0] is states[3][0]


# ---------------------------------------------------------------- hash64

_FUNCS = [codec.get_backend(name).hash64 for name in BACKENDS]


@pytest.mark.parametrize("h", _FUNCS, ids=BACKENDS)
def test_hash64_small(h):
    assert h(b"") == xxhash.xxh64_intdigest(b"") == 0xEF46DB3751D8E999
    for b in range(256):
        assert h(bytes([b])) == xxhash.xxh64_intdigest(bytes([b]))
    rng = random.Random(1)
    for n in range(65):
        data = rng.randbytes(n)
        assert h(data) == xxhash.xxh64_intdigest(data), n
    with pytest.raises(TypeError):
        h("text")


@pytest.mark.parametrize("h", _FUNCS, ids=BACKENDS)
@given(n=st.integers(0, 1 << 20), seed=st.integers(0, 2**32))
@settings(max_examples=25)
def test_hash64_random(h, n, seed):
    data = random.Random(seed).randbytes(n)
    assert h(data) == xxhash.xxh64_intdigest(data)
    assert h(bytearray(data)) == xxhash.xxh64_intdigest(data)


@pytest.mark.parametrize("h", _FUNCS, ids=BACKENDS)
@given(data=st.binary(min_size=0, max_size=300), start=st.integers(0, 15), cut=st.integers(0, 15))
def test_hash64_unaligned_views(h, data, start, cut):
    buf = bytearray(b"\xaa" * 16 + data + b"\x55" * 16)
    view = memoryview(buf)[start: len(buf) - cut]
    assert h(view) == xxhash.xxh64_intdigest(bytes(view))
    assert h(memoryview(bytes(buf))[start + 1:]) == xxhash.xxh64_intdigest(bytes(buf[start + 1:]))


# ----------------------------------------------------------- bad records


def _good_records():
    c = make("python", min_size=0)
    return [
        c.encode({"content": "good record " * 30}),            # msgpack + zstd
        c.encode(b"raw bytes value " * 10),                     # raw + zstd
        c.encode({"short": 1}),                                 # msgpack, stored
        make("python").encode(b"tiny"),                         # raw, stored
        c.encode({"content": "dict record " * 30}, dictionary=TRAINED),
    ]


GOOD = _good_records()


@pytest.mark.parametrize("cut", range(0, 19))
def test_truncated_header(cut):
    for record in GOOD:
        _assert_refused_alike(record[:cut], DICTS)


@given(data=st.data())
def test_truncated_payload(data):
    record = data.draw(st.sampled_from(GOOD))
    cut = data.draw(st.integers(format.HEADER_SIZE, len(record) - 1))
    _assert_refused_alike(record[:cut], DICTS)
    _assert_refused_alike(_restamp(record[:cut]), DICTS)


@given(data=st.data())
def test_flipped_bits(data):
    record = bytearray(data.draw(st.sampled_from(GOOD)))
    bit = data.draw(st.integers(0, 8 * len(record) - 1))
    record[bit // 8] ^= 1 << (bit % 8)
    record = bytes(record)
    if bit >= 8 * 10:  # checksum or payload: the checksum catches it
        _assert_refused_alike(record, DICTS)
    else:  # header fields: refused or (a flipped msgpack flag) read alike
        _assert_agree(record, DICTS)
    # Past the checksum on purpose: zstd and msgpack must still fail cleanly.
    _assert_agree(_restamp(record), DICTS)


@given(checksum=st.integers(0, 2**64 - 1))
def test_wrong_checksum(checksum):
    for record in GOOD:
        assume(checksum != struct.unpack_from("<Q", record, 10)[0])
        _assert_refused_alike(record[:10] + struct.pack("<Q", checksum) + record[18:], DICTS)


@pytest.mark.parametrize("version", [0, 2, 4, 255])
def test_unknown_versions(version):
    # 1 and 3 are the record versions; 2 is the TTL prefix's first byte,
    # refused as newer (as a version 1 reader does); above 3, a newer kvstore's
    for record in GOOD:
        bad = bytes([version]) + record[1:]
        _assert_refused_alike(bad, DICTS)
        for name in BACKENDS:
            with pytest.raises(FormatError if version > 1 else CorruptionError):
                make(name).decode(bad, dictionaries=DICTS)


@pytest.mark.parametrize("flag", [0x08, 0x10, 0x20, 0x40, 0x80])
def test_unknown_flags(flag):
    for record in GOOD:
        bad = record[:1] + bytes([record[1] | flag]) + record[2:]
        for name in BACKENDS:
            with pytest.raises(CorruptionError, match="unknown flags"):
                make(name).decode(bad)


def test_inconsistent_dictionary_fields():
    payload = GOOD[0][18:]
    raw_len = struct.unpack_from("<I", GOOD[0], 2)[0]
    for record in [
        _record(format.FLAG_DICT | format.FLAG_MSGPACK, raw_len, 11, payload),  # dict without zstd
        _record(format.FLAG_DICT | format.FLAG_ZSTD | 1, raw_len, 0, payload),  # dict id 0
        _record(format.FLAG_ZSTD | 1, raw_len, 11, payload),                     # id without flag
    ]:
        _assert_refused_alike(record, DICTS)


def test_unknown_dictionary():
    record = GOOD[4]
    _assert_refused_alike(record, None)
    _assert_refused_alike(record, {})
    _assert_refused_alike(record, {RAW_CONTENT.id: RAW_CONTENT})
    # The id names a dictionary, but the wrong one: zstd refuses or garbles.
    _assert_agree(record, {TRAINED.id: RAW_CONTENT})
    for name in BACKENDS:
        with pytest.raises(CorruptionError, match="dictionary 11"):
            make(name).decode(record, dictionaries={})
        assert make(name).decode(record, dictionaries=DICTS) == {"content": "dict record " * 30}


def test_frame_size_disagrees_with_header():
    raw = msgpack.packb({"content": "frame size " * 40})
    frame = zstandard.ZstdCompressor().compress(raw)
    for raw_len in (len(raw) - 1, len(raw) + 1, 0, 5):
        _assert_refused_alike(_record(format.FLAG_ZSTD | 1, raw_len, 0, frame))
    # A frame that does not declare its size at all.
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    _assert_refused_alike(_record(format.FLAG_ZSTD | 1, len(raw), 0, unsized))
    # Not a zstd frame.
    _assert_refused_alike(_record(format.FLAG_ZSTD | 1, len(raw), 0, raw))
    _assert_refused_alike(_record(format.FLAG_ZSTD, 0, 0, b""))


def test_frame_lies_about_its_size():
    # The frame header claims 100 bytes; its blocks hold 1 MiB. Decoding must
    # stop at 100 bytes of output and refuse the record.
    frame = bytearray(zstandard.ZstdCompressor().compress(b"\x00" * (1 << 20)))
    offset, size = _fcs_field(frame)
    assert size in (4, 8)
    frame[offset:offset + size] = (100).to_bytes(size, "little")
    _assert_refused_alike(_record(format.FLAG_ZSTD, 100, 0, bytes(frame)))


@pytest.mark.parametrize("declared", [(1 << 20) + 1, 1 << 30, 0xFFFFFFFF])
def test_decompression_bomb_over_limit(declared):
    # A small frame of zeros declaring more than max_value_size: refused from
    # the header alone, before anything that size is allocated.
    size = min(declared, 64 << 20)
    frame = zstandard.ZstdCompressor(level=1).compress(b"\x00" * size)
    assert len(frame) < 1 << 20
    record = _record(format.FLAG_ZSTD, declared, 0, frame)
    _assert_refused_alike(record, max_value_size=1 << 20)
    for name in BACKENDS:
        with pytest.raises(CorruptionError, match="max_value_size"):
            make(name, max_value_size=1 << 20).decode(record)


def test_raw_len_over_max_value_size():
    for record in GOOD[:4]:
        raw_len = struct.unpack_from("<I", record, 2)[0]
        _assert_refused_alike(record, max_value_size=raw_len - 1)
        for name in BACKENDS:
            assert make(name, max_value_size=raw_len).decode(record) is not None
    # Uncompressed: raw_len must equal the payload's length.
    raw = b"stored as is"
    for raw_len in (len(raw) - 1, len(raw) + 1):
        _assert_refused_alike(_record(0, raw_len, 0, raw))


def test_bad_msgpack_and_extension_types():
    for payload in (b"\xc1", b"\x92\x01", b"\x01\x02", msgpack.packb(msgpack.ExtType(5, b"x"))):
        _assert_refused_alike(_record(format.FLAG_MSGPACK, len(payload), 0, payload))


def test_batch_reports_first_bad_record():
    good = GOOD[0]
    newer = bytes([2]) + GOOD[1][1:]
    bad_msgpack = _record(format.FLAG_MSGPACK, 1, 0, b"\xc1")
    for name in BACKENDS:
        c = make(name)
        with pytest.raises(FormatError):
            c.decode_many([good, newer, bad_msgpack])
        with pytest.raises(CorruptionError, match="msgpack"):
            c.decode_many([good, bad_msgpack, newer])
        with pytest.raises(CorruptionError, match="checksum"):
            c.decode_many([good, good[:-1] + b"\x00", newer])


@given(data=st.binary(max_size=300))
def test_random_bytes(data):
    _assert_refused_alike(data, DICTS)


@given(flags=st.sampled_from([2, 3, 6, 7]), payload=st.binary(max_size=200),
       raw_len=st.integers(0, 400))
def test_random_zstd_payloads(flags, payload, raw_len):
    # Random bytes behind a valid header and checksum: zstd must refuse them
    # (or, improbably, both backends read the same value).
    _assert_agree(_record(flags, raw_len, 11 if flags & 4 else 0, payload), DICTS)
    _assert_agree(_record(flags, raw_len, 11 if flags & 4 else 0,
                          b"\x28\xb5\x2f\xfd" + payload), DICTS)


@given(data=st.data())
def test_damaged_frames_past_the_checksum(data):
    record = bytearray(data.draw(st.sampled_from([GOOD[0], GOOD[1], GOOD[4]])))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(format.HEADER_SIZE, len(record) - 1))
        record[i] = data.draw(st.integers(0, 255))
    _assert_agree(_restamp(bytes(record)), DICTS)


@pytest.mark.parametrize("name", BACKENDS)
def test_settings_are_attributes(name):
    c = make(name)
    value = {"content": "settings " * 40}
    assert c.encode(value)[1] & format.FLAG_ZSTD
    c.compress = False
    assert not c.encode(value)[1] & format.FLAG_ZSTD
    c.compress = True
    c.min_size = 1 << 20
    assert not c.encode(value)[1] & format.FLAG_ZSTD
    c.min_size = 0
    c.level = 19
    assert c.decode(c.encode(value, dictionary=TRAINED), dictionaries=DICTS) == value
    c.max_value_size = 10
    with pytest.raises(EncodeError):
        c.encode(value)
    assert (c.compress, c.level, c.min_size, c.max_value_size) == (True, 19, 0, 10)


# ------------------------------------------------------- group calls (issue 16)
#
# encode_many, frame_many, decode_many and unframe_many are one C call per
# group in the native backend (shared with its worker thread when the group
# is large: "split" below forces that for any group of two or more) and a
# per-value loop in the python one. Both must give what the per-value calls
# give, and refuse a damaged record in a group as decoding one by one would.

GROUP_MODES = [(name, split) for name in BACKENDS for split in ((False, True) if name == "native" else (False,))]


def make_group(name, split, **settings):
    """A codec whose group calls in this thread split their work (native) or not."""
    c = make(name, **settings)
    c.split = (1, 1) if split else (0, 0)
    return c


def _first_refusal(c, records, dictionaries):
    """(class, message) of the first record that c.decode refuses, or None."""
    for record in records:
        if record is None:
            continue
        try:
            c.decode(record, dictionaries=dictionaries)
        except BAD as exc:
            return type(exc), str(exc)
    return None


def _refusal(call):
    try:
        call()
    except BAD as exc:
        return type(exc), str(exc)
    return None


@pytest.mark.parametrize("name,split", GROUP_MODES)
@pytest.mark.parametrize("compression,level,min_size", SETTINGS)
@settings(max_examples=60)
@given(values=st.lists(VALUES | st.binary(max_size=20), max_size=40), dictionary=_dict_choice())
def test_group_calls_equal_per_value_calls(name, split, compression, level, min_size, values, dictionary):
    c = make_group(name, split, compression=compression, level=level, min_size=min_size)
    one = make(name, compression, level, min_size)
    records = [one.encode(v, dictionary=dictionary) for v in values]
    assert c.encode_many(values, dictionary=dictionary) == records
    pairs = [one.serialize(v) for v in values]
    assert c.frame_many(pairs, dictionary=dictionary) == records
    expected = [one.decode(r, dictionaries=DICTS) for r in records]
    assert c.decode_many(records, dictionaries=DICTS) == expected
    assert c.decode_many([None] + records + [None], dictionaries=DICTS) == [None] + expected + [None]
    # unframe_many: the serialized bytes and the header's flags, no msgpack
    assert c.unframe_many(records, dictionaries=DICTS) == [(r[1], raw) for r, (_, raw) in zip(records, pairs)]
    views = [memoryview(r) for r in records]  # as a store reads them
    assert c.decode_many(views, dictionaries=DICTS) == expected


@pytest.mark.parametrize("compression,level,min_size", SETTINGS)
@given(values=st.lists(VALUES, max_size=30), dictionary=_dict_choice())
def test_group_records_identical_across_backends(compression, level, min_size, values, dictionary):
    if compression == "zstd" and not _same_zstd() and len(BACKENDS) > 1:
        assume(False)  # compressed bytes are promised equal on the same zstd only
    out = {(n, s): make_group(n, s, compression=compression, level=level, min_size=min_size)
           .encode_many(values, dictionary=dictionary) for n, s in GROUP_MODES}
    assert len({tuple(v) for v in out.values()}) == 1


def _damage(data, record):
    """record, damaged in one of the ways a store's bytes go bad."""
    how = data.draw(st.sampled_from(["flip", "truncate", "restamp", "header", "version"]))
    b = bytearray(record)
    if len(b) < format.HEADER_SIZE:  # already cut short (damaged twice)
        return bytes(b[:-1]) + b"\x01"
    if how == "truncate":
        return bytes(b[:data.draw(st.integers(0, len(b) - 1))])
    if how == "version":
        b[0] = data.draw(st.sampled_from([0, 2, 200]))
        return bytes(b)
    if how == "header":
        i = data.draw(st.integers(1, format.HEADER_SIZE - 1))
    else:
        i = data.draw(st.integers(0, len(b) - 1))
    b[i] ^= data.draw(st.integers(1, 255))
    return _restamp(bytes(b)) if how == "restamp" and len(b) >= format.HEADER_SIZE else bytes(b)


@pytest.mark.parametrize("name,split", GROUP_MODES)
@settings(max_examples=80)
@given(data=st.data())
def test_group_refuses_damage_like_one_by_one(name, split, data):
    values = data.draw(st.lists(VALUES, min_size=1, max_size=24))
    dictionary = data.draw(_dict_choice())
    c = make_group(name, split, min_size=0)
    records = c.encode_many(values, dictionary=dictionary)
    for _ in range(data.draw(st.integers(1, 2))):
        i = data.draw(st.integers(0, len(records) - 1))
        records[i] = _damage(data, records[i])
    expected = _first_refusal(make(name, min_size=0), records, DICTS)
    got = _refusal(lambda: c.decode_many(records, dictionaries=DICTS))
    if expected is None:
        assert got is None
        return
    assert got is not None and got[0] is expected[0]
    assert got[1] == expected[1]
    # Every backend refuses the group with the same class.
    for other, other_split in GROUP_MODES:
        refused = _refusal(lambda: make_group(other, other_split, min_size=0).decode_many(records, dictionaries=DICTS))
        assert refused is not None and refused[0] is expected[0], (other, refused, expected)
    # unframe_many: the first refusal below msgpack, the same on every backend
    below = {n: _refusal(lambda: make_group(n, s, min_size=0).unframe_many(records, dictionaries=DICTS))
             for n, s in GROUP_MODES}
    assert len({None if v is None else v[0] for v in below.values()}) == 1, below


@pytest.mark.parametrize("name,split", GROUP_MODES)
def test_group_encode_errors_name_the_same_value(name, split):
    c = make_group(name, split, max_value_size=1000)
    values = [{"content": "fine " * 50}] * 30 + [b"x" * 1001] + [{"content": "fine"}] * 30
    expected = _refusal_encode(make(name, max_value_size=1000), values[30])
    with pytest.raises(EncodeError) as info:
        c.encode_many(values)
    assert str(info.value) == expected
    with pytest.raises(EncodeError):
        c.frame_many([c.serialize(v) for v in values])


def _refusal_encode(c, value):
    with pytest.raises(EncodeError) as info:
        c.encode(value)
    return str(info.value)


@pytest.mark.skipif("native" not in BACKENDS, reason="native codec not built")
def test_group_split_large_and_concurrent():
    # Groups big enough to split at SPLIT_LARGE, from several threads at
    # once (one worker: the others run their halves themselves).
    rng = random.Random(5)
    values = [{"content": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(20, 400))), "n": i}
              for i in range(300)]
    python = make("python")
    expected = python.encode_many(values, dictionary=TRAINED)
    failures = []

    def work():
        c = make("native")
        c.split = codec.get_backend("native").SPLIT_LARGE
        for _ in range(5):
            if c.encode_many(values, dictionary=TRAINED) != expected:
                failures.append("encode_many")
            if c.decode_many(expected, dictionaries=DICTS) != values:
                failures.append("decode_many")
            with pytest.raises(CorruptionError):
                c.decode_many(expected[:200] + [expected[200][:-1] + b"\x00"] + expected[201:],
                              dictionaries=DICTS)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


@pytest.mark.skipif("native" not in BACKENDS or not hasattr(os, "fork"), reason="native codec, fork")
def test_group_split_after_fork():
    # The worker thread does not survive a fork: the child's group calls
    # run their halves themselves, and must not wait for it.
    code = """
import os, sys, time
from kvstore.codec import nativecodec
c = nativecodec.Codec()
c.split = (1, 1)
values = [{"content": "fork " * 200, "n": i} for i in range(200)]
records = c.encode_many(values)
pid = os.fork()
if pid == 0:
    ok = c.decode_many(records) == values and c.encode_many(values) == records
    os._exit(0 if ok else 3)
deadline = time.time() + 60
while time.time() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(os.waitstatus_to_exitcode(status))
    time.sleep(0.05)
os.kill(pid, 9)
sys.exit(4)
"""
    proc = _run(code, KVSTORE_CODEC="native")
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
