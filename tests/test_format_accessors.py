"""The field accessors of kvstore.codec.format (is_ttl, header_at, raw_len,
dict_id, tag_size) against the full parsers, on records of both codec
backends, plain and behind a TTL prefix; and layout's key and bound rules.
"""

from __future__ import annotations

import enum
import random
import time

import msgpack
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

import kvstore
import kvstore.codec as codec
from kvstore import demo
from kvstore.codec import Dictionary, format
from kvstore.errors import InvalidKeyError
from kvstore.layout import MAX_KEY_SIZE, check_bound, check_key, prefix_end

BACKENDS = codec.backends()
# (compression, level, min_size): the default, compress everything, never.
SETTINGS = [("zstd", 3, 128), ("zstd", 1, 0), ("none", 3, 128)]

_WORDS = "agent memory session tool call result observation plan step goal outcome".split()


def _samples(n=600, seed=3):
    rng = random.Random(seed)
    return [msgpack.packb({"role": rng.choice(["user", "assistant"]),
                           "content": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 60))),
                           "n": rng.randint(0, 2**30)}, use_bin_type=True) for _ in range(n)]


TRAINED = Dictionary(77, zstandard.train_dictionary(4096, _samples()).as_bytes())

VALUES = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=300)
          | st.binary(max_size=600)
          | st.builds(lambda w, k: {"content": " ".join(w) * k, "tags": w},
                      st.lists(st.sampled_from(_WORDS), min_size=1, max_size=10), st.integers(1, 30))
          | st.lists(st.integers(-(2**63), 2**63 - 1), max_size=20))


def make(name, compression="zstd", level=3, min_size=128):
    return codec.get_backend(name).Codec(compression, level, min_size, format.MAX_VALUE_SIZE)


def serialized_len(value) -> int:
    """The length raw_len must report: raw bytes stay raw, the rest is msgpack (bin type)."""
    if type(value) is bytes:
        return len(value)
    return len(msgpack.packb(value, use_bin_type=True))


def assert_accessors_agree(stored, ttl=None):
    """Every accessor equals what the full parsers read from the same bytes."""
    wrapped = ttl is not None
    assert format.is_ttl(stored) is wrapped
    at = format.header_at(stored)
    assert at == (format.TTL_HEADER_SIZE if wrapped else 0)
    if wrapped:
        assert format.parse_ttl(stored) == ttl
    flags, raw_len, dict_id, _checksum = format.parse_header(stored[at:])
    assert format.raw_len(stored) == raw_len
    assert format.dict_id(stored) == dict_id
    assert format.tag_size(stored) == at + format.HEADER_SIZE
    assert stored[at:format.tag_size(stored)] == bytes(format.inner_record(stored)[:format.HEADER_SIZE])
    # the same on a memoryview (what a read transaction with buffers=True hands out)
    view = memoryview(stored)
    assert (format.is_ttl(view), format.header_at(view), format.raw_len(view),
            format.dict_id(view), format.tag_size(view)) == (
        wrapped, at, raw_len, dict_id, at + format.HEADER_SIZE)
    return flags, raw_len, dict_id


@settings(max_examples=max(100, settings.default.max_examples), deadline=None)
@given(value=VALUES, setting=st.sampled_from(SETTINGS), use_dict=st.booleans(),
       expires=st.integers(0, 2**64 - 1), ttl_ms=st.integers(1, 2**64 - 1))
def test_accessors_agree_with_parse_header_and_parse_ttl_for_both_backends(
        value, setting, use_dict, expires, ttl_ms):
    for name in BACKENDS:
        record = make(name, *setting).encode(value, dictionary=TRAINED if use_dict else None)
        for stored, ttl in ((record, None), (format.wrap_ttl(record, expires, ttl_ms), (expires, ttl_ms))):
            flags, raw_len, dict_id = assert_accessors_agree(stored, ttl)
            assert raw_len == serialized_len(value)
            assert (dict_id != 0) == bool(flags & format.FLAG_DICT)


def test_records_of_both_backends_have_the_same_fields_for_the_same_value():
    value = {"content": "plan step goal " * 40, "n": 7}
    fields = {name: [(format.raw_len(s), format.dict_id(s), format.tag_size(s))
                     for r in (make(name).encode(value), make(name).encode(value, dictionary=TRAINED))
                     for s in (r, format.wrap_ttl(r, 5, 5))]
              for name in BACKENDS}
    assert all(f == fields["python"] for f in fields.values())
    assert fields["python"][0][1] == 0 and fields["python"][2][1] == TRAINED.id


def test_dict_id_of_a_record_compressed_with_a_dictionary_is_that_dictionarys_id(codec_backend):
    value = {"role": "user", "content": " ".join(_WORDS) * 5, "n": 1}
    record = make(codec_backend).encode(value, dictionary=TRAINED)
    flags, _raw, _did, _sum = format.parse_header(record)
    assert flags & format.FLAG_DICT
    assert format.dict_id(record) == TRAINED.id == 77
    assert format.dict_id(format.wrap_ttl(record, 1, 1)) == 77
    assert format.dict_id(make(codec_backend).encode(value)) == 0  # same value, no dictionary


def test_dict_id_of_values_stored_after_training_is_the_trained_dictionarys_id(store_path, codec_backend):
    rng = random.Random(5)
    with kvstore.open(store_path) as db:
        db.put_many({f"m{i:05d}": demo.message(rng, i // 10, i) for i in range(1500)})
        did = db.train_dictionary(samples=1000)
        assert did > 0
        value = demo.message(rng, 999, 999)
        db.put("plain", value, durable=True)
        db.put("with-ttl", value, durable=True, ttl=3600)
        env = db._engine
        dbi = env.dbi("default", create=False)
        old, plain, with_ttl = env.read(lambda txn: [bytes(txn.get(k, db=dbi))
                                                     for k in (b"m00000", b"plain", b"with-ttl")])
    assert format.dict_id(old) == 0  # stored before training: no dictionary
    assert format.dict_id(plain) == did and not format.is_ttl(plain)
    assert format.is_ttl(with_ttl) and format.dict_id(with_ttl) == did
    expires, ttl = format.parse_ttl(with_ttl)
    assert ttl == 3_600_000 and expires > time.time() * 1000
    for stored in (plain, with_ttl):
        assert format.raw_len(stored) == serialized_len(value)
        assert_accessors_agree(stored, format.parse_ttl(stored) if format.is_ttl(stored) else None)


def test_accessors_on_the_smallest_records():
    empty = make("python").encode(b"")  # a raw value of 0 bytes: the header alone
    assert len(empty) == format.HEADER_SIZE
    assert (format.raw_len(empty), format.dict_id(empty), format.tag_size(empty)) == (0, 0, 18)
    wrapped = format.wrap_ttl(empty, 0, 1)
    assert (format.raw_len(wrapped), format.dict_id(wrapped), format.tag_size(wrapped)) == (0, 0, 40)
    assert not format.is_ttl(b"") and format.header_at(b"") == 0


def test_dict_id_of_bytes_too_short_to_hold_one_is_zero():
    assert format.dict_id(b"") == 0
    assert format.dict_id(bytes([1, 6, 9, 0, 0, 0, 5, 0, 0])) == 0  # one byte short of the field
    assert format.dict_id(bytes([1, 6, 9, 0, 0, 0, 5, 0, 0, 0])) == 5


def test_an_inner_record_starting_with_the_ttl_version_byte_is_read_behind_the_prefix():
    # A wrapped record is recognised by its first byte alone; the inner one starts with 1.
    record = make("python").encode("x")
    assert record[0] == format.VERSION != format.TTL_VERSION
    wrapped = format.wrap_ttl(record, 10, 10)
    assert wrapped[0] == format.TTL_VERSION
    assert format.raw_len(wrapped) == format.raw_len(record) == 2


# ---------------------------------------------------------------- layout: keys


def test_check_key_encodes_str_keys_as_utf8_and_keeps_bytes():
    assert check_key("abc") == b"abc"
    assert check_key("é✓") == "é✓".encode("utf-8") == b"\xc3\xa9\xe2\x9c\x93"
    assert check_key(b"\x00\xff") == b"\x00\xff"
    assert type(check_key("k")) is bytes


def test_check_key_accepts_511_bytes_and_rejects_512():
    assert MAX_KEY_SIZE == 511
    assert check_key(b"k" * 511) == b"k" * 511
    assert check_key("é" * 255 + "a") == ("é" * 255 + "a").encode()  # 511 UTF-8 bytes
    with pytest.raises(InvalidKeyError):
        check_key(b"k" * 512)
    with pytest.raises(InvalidKeyError):
        check_key("é" * 256)  # 256 characters, 512 bytes
    with pytest.raises(InvalidKeyError):
        check_key("✓" * 171)  # 171 characters, 513 bytes


def test_check_key_rejects_empty_keys():
    for key in (b"", ""):
        with pytest.raises(InvalidKeyError):
            check_key(key)


def test_check_key_rejects_lone_surrogates():
    for key in ("\ud800", "a\udfffb", "\udc80"):
        with pytest.raises(InvalidKeyError):
            check_key(key)


def test_check_key_rejects_what_is_neither_bytes_nor_str():
    for key in (1, None, 1.5, bytearray(b"k"), memoryview(b"k"), ["k"]):
        with pytest.raises(InvalidKeyError):
            check_key(key)


def test_check_key_takes_a_bytes_or_str_subclass_as_plain_bytes():
    class K(bytes):
        pass

    class S(str):
        pass

    assert check_key(K(b"ab")) == b"ab" and type(check_key(K(b"ab"))) is bytes
    assert check_key(S("ab")) == b"ab" and type(check_key(S("ab"))) is bytes
    with pytest.raises(InvalidKeyError):
        check_key(S(""))


class Colour(str, enum.Enum):
    RED = "red"


def test_check_key_of_a_str_enum_member_is_its_text_as_check_bound_gives():
    assert Colour.RED == "red"
    assert check_bound(Colour.RED, "prefix") == b"red"
    assert check_key(Colour.RED) == b"red"


# ---------------------------------------------------------------- layout: bounds


def test_check_bound_passes_none_encodes_str_and_copies_bytes():
    assert check_bound(None, "start") is None
    assert check_bound("é", "start") == b"\xc3\xa9"
    assert check_bound(b"", "prefix") == b""  # an empty bound is allowed (unlike a key)
    assert check_bound(b"x" * 600, "stop") == b"x" * 600  # and not limited to MAX_KEY_SIZE

    class K(bytes):
        pass

    assert type(check_bound(K(b"ab"), "start")) is bytes


def test_check_bound_rejects_lone_surrogates_and_other_types_naming_the_bound():
    with pytest.raises(InvalidKeyError, match="prefix"):
        check_bound("\ud800", "prefix")
    for value in (1, bytearray(b"a"), memoryview(b"a"), 2.0):
        with pytest.raises(InvalidKeyError, match="stop"):
            check_bound(value, "stop")


def test_prefix_end_is_the_smallest_key_past_every_key_with_the_prefix():
    assert prefix_end(b"a") == b"b"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"ab\xff\xff") == b"ac"
    assert prefix_end(b"\x00") == b"\x01"
    assert prefix_end(b"\xfe") == b"\xff"
    assert prefix_end(b"a\x00\xff") == b"a\x01"


def test_prefix_end_of_only_ff_bytes_or_nothing_is_none():
    assert prefix_end(b"\xff\xff") is None
    assert prefix_end(b"\xff") is None
    assert prefix_end(b"") is None


@given(st.binary(min_size=1, max_size=6), st.binary(max_size=4))
def test_prefix_end_bounds_exactly_the_keys_with_the_prefix(prefix, rest):
    end = prefix_end(prefix)
    key = prefix + rest
    assert end is None or prefix <= key < end
    if end is not None:
        assert not end.startswith(prefix)
        # end is the prefix without its trailing 0xff bytes, last byte + 1
        assert end[:-1] == prefix.rstrip(b"\xff")[:-1]
