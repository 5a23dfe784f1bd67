"""The record checksum covers the key (issue 21, finding 3): version 3
records, written by stores of format 4, have their XXH64 seeded with the
hash of their key, so a record under another key than it was written for
(a flipped key byte in data.mdb, a record moved by hand) is refused with
CorruptionError naming the key; version 1 records still read."""

import io
import json
import struct

import lmdb
import pytest
from hypothesis import given, strategies as st

import kvstore
from kvstore.cli import main
from kvstore.codec import format as fmt, get_backend
from kvstore.errors import CorruptionError, FormatError, InvalidArgumentError
from kvstore.layout import FORMAT_KEY, KEYED_STORE_FORMAT, META_DB

BACKENDS = kvstore.codec.backends()
VALUES = [b"", b"raw", "text", {"a": 1, "b": [1, 2, 3]}, "x" * 400, list(range(200)), None, 7]


def codecs():
    return [get_backend(name).Codec() for name in BACKENDS]


def refusal(codec, record, **kw):
    with pytest.raises((CorruptionError, FormatError)) as info:
        codec.decode(record, **kw)
    return type(info.value), str(info.value)


# ---------------------------------------------------------------- the codec


def test_a_key_makes_a_version_3_record_whose_checksum_is_seeded_with_the_key():
    import xxhash

    for codec in codecs():
        for value in VALUES:
            plain = codec.encode(value)
            keyed = codec.encode(value, key=b"msg:00247")
            assert plain[0] == fmt.VERSION and keyed[0] == fmt.KEYED_VERSION
            assert keyed[1:10] == plain[1:10] and keyed[18:] == plain[18:]  # only the checksum differs
            seed = xxhash.xxh64_intdigest(b"msg:00247")
            assert fmt.stored_checksum(keyed) == xxhash.xxh64_intdigest(keyed[18:], seed)
            assert codec.decode(keyed, key=b"msg:00247") == codec.decode(plain) == codec.decode(plain, key=b"x")


def test_both_backends_write_the_same_bytes_and_refuse_alike():
    for value in VALUES:
        for key in (b"k", b"msg:00247", bytes(range(1, 200)) * 2):
            records = {c.backend: c.encode(value, key=key) for c in codecs()}
            assert len(set(records.values())) == 1, records
            record = records[BACKENDS[0]]
            other = key[:-1] + bytes([key[-1] ^ 1])
            outcomes = {refusal(c, record, key=other) for c in codecs()}
            assert outcomes == {(CorruptionError, "checksum mismatch with the key: the stored bytes or the key "
                                 "were damaged, or the record was written for another key")}
            outcomes = {refusal(c, record) for c in codecs()}  # no key to check it with
            assert len(outcomes) == 1 and next(iter(outcomes))[0] is CorruptionError
            assert "key=" in next(iter(outcomes))[1]


def test_group_calls_take_one_key_per_record():
    keys = [b"a%d" % i for i in range(len(VALUES))]
    expected = [c.encode(v, key=k) for c in codecs()[:1] for v, k in zip(VALUES, keys)]
    for codec in codecs():
        records = codec.encode_many(VALUES, keys=keys)
        assert records == expected
        assert codec.frame_many([codec.serialize(v) for v in VALUES], keys=keys) == expected
        assert codec.decode_many([None] + records, keys=[b"gone"] + keys) == [None] + \
            [codec.decode(r, key=k) for r, k in zip(records, keys)]
        assert [(f & 1, raw) for f, raw in codec.unframe_many(records, keys=keys)] == \
            [codec.serialize(v) for v in VALUES]
        swapped = keys[1:] + keys[:1]
        with pytest.raises(CorruptionError, match="with the key"):
            codec.decode_many(records, keys=swapped)
        with pytest.raises(CorruptionError, match="with the key"):
            codec.unframe_many(records, keys=swapped)
        with pytest.raises(CorruptionError, match="key="):
            codec.decode_many(records)  # version 3 records, no keys
        with pytest.raises(InvalidArgumentError, match="one key per record"):
            codec.encode_many(VALUES, keys=keys[:-1])
        with pytest.raises(InvalidArgumentError, match="one key per record"):
            codec.decode_many(records, keys=keys[:-1])


def test_a_key_may_be_any_bytes_like_object_in_both_backends():
    expected = kvstore.codec.get_backend("python").Codec().encode({"v": 1}, key=b"k:1")
    for codec in codecs():
        for key in (b"k:1", bytearray(b"k:1"), memoryview(b"k:1")):
            assert codec.encode({"v": 1}, key=key) == expected
            assert codec.frame(*codec.serialize({"v": 1}), key=key) == expected
            assert codec.encode_many([{"v": 1}], keys=[key]) == [expected]
            assert codec.decode(expected, key=key) == codec.decode_many([expected], keys=[key])[0] == {"v": 1}
            assert codec.decode(memoryview(expected), key=key) == {"v": 1}


def test_a_ttl_prefix_may_hold_a_version_3_record():
    record = fmt.wrap_ttl(kvstore.codec.encode("v", key=b"k"), 10, 5)
    assert fmt.parse_ttl(record) == (10, 5)
    for bad in (0, 2, 4):
        damaged = record[:fmt.TTL_HEADER_SIZE] + bytes([bad]) + record[fmt.TTL_HEADER_SIZE + 1:]
        with pytest.raises(CorruptionError, match="not 1 or 3"):
            fmt.parse_ttl(damaged)


@given(key=st.binary(min_size=1, max_size=511), other=st.binary(min_size=1, max_size=511),
       value=st.one_of(st.binary(max_size=600), st.text(max_size=300),
                       st.lists(st.integers(-2**63, 2**64 - 1), max_size=50),
                       st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.floats(allow_nan=False)),
                                       max_size=10)))
def test_round_trips_over_keys_and_values_in_both_backends(key, other, value):
    records = [c.encode(value, key=key) for c in codecs()]
    assert len(set(records)) == 1
    decoded = [c.decode(records[0], key=key) for c in codecs()]
    expected = value if isinstance(value, bytes) else kvstore.codec.decode(kvstore.codec.encode(value))
    assert decoded == [expected] * len(decoded)
    if other != key:
        assert len({refusal(c, records[0], key=other) for c in codecs()}) == 1


# ---------------------------------------------------------------- stores


def _lmdb(path, readonly=False):
    return lmdb.open(path, max_dbs=16, readonly=readonly, lock=not readonly, subdir=True)


def _raw(path, ns=b"default"):
    env = _lmdb(path, readonly=True)
    try:
        dbi = env.open_db(ns, create=False)
        with env.begin(db=dbi) as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor()}
    finally:
        env.close()


def _check(path):
    out = io.StringIO()
    status = main(["check", path, "--json"], out=out)
    return status, json.loads(out.getvalue())


def _small_store(path, **options):
    with kvstore.open(path, **options) as db:
        db.put_many({f"msg:{i:05d}": {"i": i, "text": "hello " * (i % 3)} for i in range(240, 250, 2)})
        db.flush()


def test_a_flipped_key_byte_in_data_mdb_is_caught_by_get_scan_and_check(store_path):
    _small_store(store_path)
    assert {r[0] for r in _raw(store_path).values()} == {fmt.KEYED_VERSION}
    # msg:00248 -> msg:00247: still between msg:00246 and msg:00249, so in order
    data_file = f"{store_path}/data.mdb"
    with open(data_file, "rb") as f:
        data = bytearray(f.read())
    at = data.find(b"msg:00248")
    assert at >= 0
    while at >= 0:  # every copy (LMDB keeps older pages, now free)
        data[at + 8] = ord("7")
        at = data.find(b"msg:00248", at + 1)
    with open(data_file, "r+b") as f:
        f.write(data)
    with kvstore.open(store_path) as db:
        assert db.get("msg:00246") == {"i": 246, "text": ""}
        with pytest.raises(CorruptionError) as info:
            db.get("msg:00247")
        assert "msg:00247" in str(info.value) and "with the key" in str(info.value)
        with pytest.raises(CorruptionError, match="msg:00247"):
            list(db.scan())
        with pytest.raises(CorruptionError, match="msg:00247"):
            db.get_many(["msg:00246", "msg:00247"])
        assert list(db.scan(keys_only=True)) == [b"msg:00240", b"msg:00242", b"msg:00244", b"msg:00246",
                                                 b"msg:00247"]
    status, doc = _check(store_path)
    assert status != 0 and doc["ok"] is False
    text = json.dumps(doc)
    assert "msg:00247" in text and "with the key" in text


def test_a_record_moved_to_another_key_is_refused_naming_the_key(store_path):
    _small_store(store_path)
    record = _raw(store_path)[b"msg:00242"]
    env = _lmdb(store_path)
    try:
        dbi = env.open_db(b"default", create=False)
        with env.begin(write=True, db=dbi) as txn:
            txn.put(b"msg:00243", record)  # a second msg:00242, under another key
    finally:
        env.close()
    with kvstore.open(store_path) as db:
        assert db.get("msg:00242") == {"i": 242, "text": "hello hello "}
        with pytest.raises(CorruptionError, match="msg:00243"):
            db.get("msg:00243")
        with pytest.raises(CorruptionError, match="msg:00243"):
            dict(db.items())
    status, doc = _check(store_path)
    assert status != 0 and "msg:00243" in json.dumps(doc)


def test_version_1_records_of_an_older_store_still_read_and_new_ones_are_keyed(store_path):
    # wal=False keeps a store at format 1 with version 1 records (what
    # kvstore wrote before keyed checksums, and still writes there)
    with kvstore.open(store_path, wal=False) as db:
        db.put_many({"old": {"v": 1}, "big": "y" * 1000})
        db.put("ttl", "t", ttl=3600)
    raw = _raw(store_path)
    assert raw[b"old"][0] == raw[b"big"][0] == fmt.VERSION and fmt.inner_record(raw[b"ttl"])[0] == fmt.VERSION
    with kvstore.open(store_path) as db:  # a log: format 4, keyed records from now on
        db.put("new", {"v": 2})
        db.flush()
        assert db.get("old") == {"v": 1} and db.get("big") == "y" * 1000 and db.get("ttl") == "t"
        assert dict(db.items()) == {b"big": "y" * 1000, b"new": {"v": 2}, b"old": {"v": 1}, b"ttl": "t"}
    raw = _raw(store_path)
    assert raw[b"old"][0] == fmt.VERSION and raw[b"new"][0] == fmt.KEYED_VERSION
    meta = _raw(store_path, META_DB)
    assert int(meta[FORMAT_KEY]) == KEYED_STORE_FORMAT
    assert _check(store_path)[0] == 0


def test_every_write_path_writes_keyed_records(store_path):
    with kvstore.open(store_path) as db:
        db.put("put", 1)
        db.put("ttl", 1, ttl=60)
        db.put_many({"many": 1})
        with db.batch() as b:
            b.put("batch", 1)
        with db.transaction() as tx:
            tx.put("txn", 1)
        db.incr("incr")
        assert db.compare_and_set("cas", kvstore.MISSING, 1)
        db.update("update", lambda old: (old or 0) + 1)
        db.flush()
    raw = _raw(store_path)
    for key, stored in raw.items():
        record = fmt.inner_record(stored)
        assert record[0] == fmt.KEYED_VERSION, key
        kvstore.codec.decode(record, key=key)


def test_copies_to_other_keys_are_framed_again(store_path):
    # what the LangGraph integration does when it copies a thread: values
    # read and written again, each record framed for its own key
    with kvstore.open(store_path) as db:
        db.put_many({"src:1": {"a": 1}, "src:2": [1, 2]})
        db.put_many({b"dst:" + k[4:]: v for k, v in db.scan(prefix="src:")})
        db.flush()
        assert db.get("dst:1") == {"a": 1} and db.get("dst:2") == [1, 2]
    raw = _raw(store_path)
    assert raw[b"src:1"][18:] == raw[b"dst:1"][18:] and raw[b"src:1"] != raw[b"dst:1"]


def test_an_older_kvstore_refuses_a_store_of_format_4_at_open(store_path):
    # What this kvstore does with a format above the one it reads is what a
    # kvstore reading format 3 does with format 4: refuse at open.
    with kvstore.open(store_path) as db:
        db.put("k", 1)
    env = _lmdb(store_path)
    try:
        meta = env.open_db(META_DB, create=False)
        with env.begin(write=True, db=meta) as txn:
            txn.put(FORMAT_KEY, str(KEYED_STORE_FORMAT + 1).encode())
    finally:
        env.close()
    with pytest.raises(FormatError, match="newer kvstore"):
        kvstore.open(store_path)


def test_a_version_3_record_of_a_newer_version_number_is_refused_as_newer():
    record = bytearray(kvstore.codec.encode("v", key=b"k"))
    record[0] = 4
    for codec in codecs():
        with pytest.raises(FormatError, match="reads 1 and 3"):
            codec.decode(bytes(record), key=b"k")
    assert struct.unpack_from("<B", record)[0] == 4


def test_dump_and_load_round_trips_keep_records_valid_for_their_keys(store_path, tmp_path):
    import subprocess

    _small_store(store_path)
    original = _raw(store_path)
    dump = tmp_path / "dump.jsonl"
    assert main(["dump", store_path, "-o", str(dump)], out=io.StringIO()) == 0
    loaded = str(tmp_path / "loaded")
    assert main(["load", loaded, "-i", str(dump)], out=io.StringIO()) == 0
    assert _raw(loaded) == original  # encoded again, for the same keys: the same bytes
    text = tmp_path / "dump.mdb.txt"
    assert main(["dump", store_path, "--format", "mdb", "-o", str(text)], out=io.StringIO()) == 0
    copied = tmp_path / "copied"
    copied.mkdir()
    subprocess.run(["mdb_load", "-f", str(text), str(copied)], check=True)
    assert _raw(str(copied)) == original  # LMDB's tools: records and keys byte for byte
    with kvstore.open(str(copied), readonly=True) as db:
        assert db.get("msg:00244") == {"i": 244, "text": "hello "}
    for path in (loaded, str(copied)):
        assert _check(path)[0] == 0
