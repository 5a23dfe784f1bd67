"""What a record may decode into is bounded by its payload's length (issue
21, finding 6): a container claiming more elements than its payload has
bytes is refused before anything that size is allocated, and the payload's
length is at most the reader's max_value_size (docs/format.md, "Decoded size")."""

import json
import struct
import subprocess
import sys
import textwrap

import lmdb
import msgpack
import pytest

import kvstore
import kvstore.codec
from kvstore.codec import format, serial
from kvstore.errors import CorruptionError

MILLION = 1_000_000
CLAIMS = {
    "array32 of 10M in 105 bytes": b"\xdd" + struct.pack(">I", 10 * MILLION) + b"\x90" * 100,
    "map32 of 10M in 5 bytes": b"\xdf" + struct.pack(">I", 10 * MILLION),
    "array16 of 65535 in 1 KiB": b"\xdc\xff\xff" + b"\xc0" * 1021,
    "nested claim": b"\x92\x01\xdd" + struct.pack(">I", 4 * MILLION) + b"\x00" * 300,
    # 1 MiB of zeros compresses to a few hundred bytes: raw_len, not the
    # stored size, is what the claim is checked against.
    "array32 of 10M in 1 MiB, compressed": b"\xdd" + struct.pack(">I", 10 * MILLION) + b"\x00" * MILLION,
    "map in a dict key (unhashable path)": (b"\x82\x91\x01\x01\x01\xdf"
                                            + struct.pack(">I", 10 * MILLION) + b"\x00" * 50),
}


def _framed(payload: bytes) -> bytes:
    """A valid record (header, checksum, zstd when worth it) around payload."""
    return kvstore.codec.get_backend("python").Codec().frame(format.FLAG_MSGPACK, payload)


def _inject(path: str, key: bytes, record: bytes) -> None:
    env = lmdb.open(path, max_dbs=10)
    with env.begin(write=True, db=env.open_db(b"default")) as txn:
        txn.put(key, record)
    env.close()


@pytest.mark.parametrize("name", list(CLAIMS))
def test_claim_beyond_the_payload_is_refused(codec_backend, name):
    record = _framed(CLAIMS[name])
    assert len(record) < 2000
    with pytest.raises(CorruptionError, match=r"claims more than its \d+ bytes can hold") as info:
        kvstore.codec.get_backend(codec_backend).Codec().decode(record)
    assert "exceeds max_" in str(info.value)
    with pytest.raises(CorruptionError, match="claims more than"):
        kvstore.codec.get_backend(codec_backend).Codec().decode_many([_framed(b"\x01"), record])


def test_claim_read_through_the_store_names_the_key(store_path):
    with kvstore.open(store_path) as db:
        db.put("good", [1, 2], durable=True)
    _inject(store_path, b"bad", _framed(CLAIMS["array32 of 10M in 105 bytes"]))
    with kvstore.open(store_path) as db:
        for read in (lambda: db.get("bad"), lambda: db.get_many(["good", "bad"]), lambda: dict(db.items())):
            with pytest.raises(CorruptionError, match="claims more than its 105 bytes") as info:
                read()
            assert info.value.key == b"bad"
            assert str(info.value).startswith("key b'bad': ")
        assert db.get("good") == [1, 2]


_READER = textwrap.dedent("""
    import json, resource, sys
    import kvstore
    path, key, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with kvstore.open(path, max_value_size=limit) as db:
        db.get("warm")  # everything imported, the store mapped
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            db.get(key)
            outcome = "decoded"
        except kvstore.CorruptionError as exc:
            outcome = str(exc)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"outcome": outcome, "grew_kib": after - before}))
""")


def _read_in_child(path, key, max_value_size):
    out = subprocess.run([sys.executable, "-c", _READER, path, key, str(max_value_size)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out)


def test_claims_are_refused_without_allocating(store_path):
    with kvstore.open(store_path) as db:
        db.put("warm", 1, durable=True)
    _inject(store_path, b"claim", _framed(CLAIMS["array32 of 10M in 1 MiB, compressed"]))
    got = _read_in_child(store_path, "claim", format.MAX_VALUE_SIZE)
    assert got["outcome"].startswith("key b'claim': the msgpack payload claims more than its 1000005 bytes")
    assert got["grew_kib"] < 20 * 1024  # 10M slots would be 80 MB; the payload itself 1 MB


def test_a_genuinely_huge_value_is_bounded_by_max_value_size(store_path):
    # 10M empty dicts: a legitimate value (put accepts it: 10 MB serialized,
    # a few KB stored) that decodes into about 730 MB. A reader bounds that
    # with max_value_size: here 1 MiB, refused from the header.
    with kvstore.open(store_path) as db:
        db.put("warm", 1)
        db.put("huge", [{}] * (10 * MILLION), durable=True)
    env = lmdb.open(store_path, max_dbs=10, readonly=True)
    with env.begin(db=env.open_db(b"default")) as txn:
        record = bytes(txn.get(b"huge"))
    env.close()
    assert len(record) < 4096
    assert struct.unpack_from("<I", record, 2)[0] == 10 * MILLION + 5  # raw_len
    got = _read_in_child(store_path, "huge", 1 << 20)
    assert got["outcome"] == ("key b'huge': record declares 10000005 bytes, over the 1048576-byte "
                              "limit (max_value_size)")
    assert got["grew_kib"] < 20 * 1024


@pytest.mark.parametrize("value", [
    [], {}, "", [0] * 15, [0] * 16, [None] * 65535, [True] * 65536, {i: None for i in range(15)},
    {i: 0 for i in range(16)}, {i: 0 for i in range(65536)}, "a" * 31, "a" * 32, "a" * 65536,
    [b""] * 10, [b"x" * 255, b"y" * 256], [[]] * 1000, [{}] * 70000, [[[[[]]]]], {"": {"": {}}},
], ids=lambda v: f"{type(v).__name__}{len(v)}")
def test_smallest_encodings_still_decode(codec_backend, value):
    # Each element as small as msgpack makes it (1 byte; 2 for a map entry):
    # the limits sit exactly at what a valid payload can hold.
    codec = kvstore.codec.get_backend(codec_backend).Codec()
    for record in (codec.encode(value), codec.frame(format.FLAG_MSGPACK, msgpack.packb(value))):
        assert codec.decode(record) == value
    assert codec.decode_many([codec.encode(value)] * 2) == [value, value]


def test_explicit_limits_match_msgpack_defaults():
    # msgpack bounds unpackb by len(data) itself; the explicit version, used
    # with a msgpack that does not, refuses and accepts the same payloads.
    assert serial._bounded_by_length(msgpack.unpackb)
    assert not serial._bounded_by_length(lambda raw: [])
    assert serial._bounded_by_length(serial._bounded_unpackb)
    for payload in CLAIMS.values():
        for unpackb in (msgpack.unpackb, serial._bounded_unpackb):
            with pytest.raises(ValueError, match="exceeds max_"):
                unpackb(memoryview(payload), strict_map_key=False, object_pairs_hook=list)
    for value in ([0] * 16, {i: 0 for i in range(16)}, "a" * 40, [b"x"] * 3):
        packed = msgpack.packb(value)
        assert serial._bounded_unpackb(memoryview(packed), strict_map_key=False) == value
