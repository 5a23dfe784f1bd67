"""Bad input at every entry point gets a clear KVStoreError, and changes nothing."""

import os
import struct

import lmdb
import pytest

import kvstore
from kvstore import (
    CorruptionError,
    EncodeError,
    FormatError,
    InvalidKeyError,
    KVStoreError,
)

BAD_KEYS = [b"", "", b"x" * 512, "é" * 256, 1, 1.5, None, ["a"], ("a",), bytearray(b"a"), "\ud800"]
BAD_VALUES = [object(), {1, 2}, frozenset(), 2**64, -(2**63) - 1, lambda: 1, {"a": object()},
              [1, [2, [3, {4}]]], {("tuple", "key"): [object()]}]


def _entry_points(db):
    ns = db.namespace("ns")
    return {
        "put": lambda k: db.put(k, 1),
        "get": lambda k: db.get(k),
        "delete": lambda k: db.delete(k),
        "getitem": lambda k: db[k],
        "setitem": lambda k: db.__setitem__(k, 1),
        "contains": lambda k: k in db,
        "get_many": lambda k: db.get_many(["ok", k]),
        "put_many": lambda k: db.put_many([("ok", 1), (k, 1)]),
        "batch.put": lambda k: db.batch().put(k, 1),
        "batch.delete": lambda k: db.batch().delete(k),
        "ns.put": lambda k: ns.put(k, 1),
        "ns.get": lambda k: ns.get(k),
    }


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_bad_keys_raise_invalid_key_everywhere(db, key):
    for name, call in _entry_points(db).items():
        with pytest.raises(InvalidKeyError) as info:
            call(key)
        assert isinstance(info.value, ValueError), name
        assert "key" in str(info.value)
    db.flush()
    assert len(db) == 0  # nothing was queued


def test_max_length_key_is_fine(db):
    db.put(b"k" * 511, 1, durable=True)
    assert db.get(b"k" * 511) == 1


@pytest.mark.parametrize("value", BAD_VALUES, ids=lambda v: type(v).__name__)
def test_bad_values_raise_encode_error(db, value):
    for call in (lambda: db.put("k", value), lambda: db.put_many({"k": value}),
                 lambda: db.batch().put("k", value), lambda: db.__setitem__("k", value)):
        with pytest.raises(EncodeError) as info:
            call()
        assert isinstance(info.value, TypeError)
    db.put("after", "fine", durable=True)  # the writer was not poisoned
    assert db.get("after") == "fine" and db.get("k") is None


def _corrupt_value(path, key: bytes, mutate):
    env = lmdb.open(path, max_dbs=10)
    dbi = env.open_db(b"default")
    with env.begin(write=True, db=dbi) as txn:
        txn.put(key, mutate(bytes(txn.get(key))))
    env.close()


@pytest.mark.parametrize("how", ["flip-payload", "truncate", "bad-version", "bad-flags", "huge-length",
                                 "empty", "newer-version"])
def test_corrupted_value_names_the_key(store_path, how):
    with kvstore.open(store_path) as db:
        db.put("good", {"text": "x" * 500})
        db.put("bad", {"text": "y" * 500})
    mutations = {
        "flip-payload": lambda r: r[:30] + bytes([r[30] ^ 0x40]) + r[31:],
        "truncate": lambda r: r[:10],
        "bad-version": lambda r: b"\x00" + r[1:],
        "bad-flags": lambda r: r[:1] + b"\x80" + r[2:],
        "huge-length": lambda r: r[:2] + struct.pack("<I", 0xFFFFFFF0) + r[6:],
        "empty": lambda r: b"",
        "newer-version": lambda r: b"\x09" + r[1:],
    }
    _corrupt_value(store_path, b"bad", mutations[how])
    with kvstore.open(store_path) as db:
        expected = FormatError if how == "newer-version" else CorruptionError
        with pytest.raises(expected, match="bad"):
            db.get("bad")
        with pytest.raises(expected):
            db.get_many(["good", "bad"])
        with pytest.raises(expected):
            dict(db.scan())
        if expected is CorruptionError:
            with pytest.raises(CorruptionError) as info:
                db["bad"]
            assert info.value.key == b"bad"
        assert db.get("good") == {"text": "x" * 500}
        assert "bad" in db  # presence needs no decoding
        db.put("bad", "repaired", durable=True)  # overwriting a damaged value works
        assert db.get("bad") == "repaired"


def test_path_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"hello")
    with pytest.raises(FormatError, match="file"):
        kvstore.open(str(f))
    assert f.read_bytes() == b"hello"


def test_directory_with_other_files_is_not_a_store(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FormatError, match="not|other files"):
        kvstore.open(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_random_bytes_as_data_file(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "data.mdb").write_bytes(os.urandom(20000))
    with pytest.raises(FormatError, match="not an LMDB"):
        kvstore.open(str(d))


@pytest.mark.parametrize("keep", [100, 4096, 5000, 12288])
def test_truncated_data_file_is_refused_not_sigbus(store_path, keep):
    with kvstore.open(store_path) as db:
        db.put_many({f"k{i}": "v" * 200 for i in range(2000)}, durable=True)
    data = os.path.join(store_path, "data.mdb")
    with open(data, "r+b") as f:
        f.truncate(keep)
    with pytest.raises(FormatError, match="truncated|too short"):
        kvstore.open(store_path)


def test_plain_lmdb_environment_is_not_a_store(tmp_path):
    env = lmdb.open(str(tmp_path / "plain"))
    with env.begin(write=True) as txn:
        txn.put(b"a", b"b")
    env.close()
    with pytest.raises(FormatError, match="not a kvstore"):
        kvstore.open(str(tmp_path / "plain"))


def test_newer_store_format_is_refused(store_path):
    kvstore.open(store_path).close()
    env = lmdb.open(store_path, max_dbs=10)
    meta = env.open_db(b"__kvstore__")
    with env.begin(write=True, db=meta) as txn:
        txn.put(b"format_version", str(kvstore.environment.STORE_FORMAT + 1).encode())
    env.close()
    with pytest.raises(FormatError, match="newer"):
        kvstore.open(store_path)


def test_no_bare_lmdb_errors_escape(store_path):
    # Every error class kvstore raises is a KVStoreError.
    for name in kvstore.errors.__all__:
        obj = getattr(kvstore.errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, KVStoreError)
    assert not issubclass(KVStoreError, lmdb.Error)


def test_error_classes_are_exported_at_top_level():
    for name in ("KVStoreError", "InvalidKeyError", "EncodeError", "CorruptionError", "StoreClosedError",
                 "StoreFailedError", "ReadOnlyError", "FormatError", "TimeoutError"):
        assert getattr(kvstore, name) is getattr(kvstore.errors, name)
    assert issubclass(kvstore.TimeoutError, TimeoutError)
