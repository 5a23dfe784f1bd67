"""Bad input at every entry point gets a clear KVStoreError, and changes nothing."""

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
        "delitem": lambda k: db.__delitem__(k),
        "contains": lambda k: k in db,
        "get_many": lambda k: db.get_many(["ok", k]),
        "put_many": lambda k: db.put_many([("ok", 1), (k, 1)]),
        "put_many(dict)": lambda k: db.put_many({"ok": 1, k: 1}) if isinstance(k, (str, bytes)) else
        db.put_many([("ok", 1), (k, 1)]),
        "batch.put": lambda k: db.batch().put(k, 1),
        "batch.delete": lambda k: db.batch().delete(k),
        "batch.put(namespace)": lambda k: db.batch().put(k, 1, namespace="ns"),
        "ns.put": lambda k: ns.put(k, 1),
        "ns.get": lambda k: ns.get(k),
        "ns.delete": lambda k: ns.delete(k),
        "ns.getitem": lambda k: ns[k],
        "ns.contains": lambda k: k in ns,
        "ns.get_many": lambda k: ns.get_many([k, "ok"]),
        "ns.put_many": lambda k: ns.put_many([("ok", 1), (k, 1)]),
        "ns.batch.put": lambda k: ns.batch().put(k, 1),
    }


def _fill(db) -> dict:
    """Data that bad input must leave alone, in both namespaces."""
    db.put_many({"keep:1": {"a": 1}, "keep:2": [1, 2]}, durable=True)
    db.namespace("ns").put("keep:3", "three", durable=True)
    return _contents(db)


def _contents(db) -> dict:
    db.flush()
    return {name: dict((db if name == "default" else db.namespace(name)).scan()) for name in ("default", "ns")}


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_bad_keys_raise_invalid_key_everywhere(db, key):
    before = _fill(db)
    for name, call in _entry_points(db).items():
        with pytest.raises(InvalidKeyError) as info:
            call(key)
        assert isinstance(info.value, ValueError), name
        assert "key" in str(info.value)
    assert _contents(db) == before  # nothing was queued, nothing changed


@pytest.mark.parametrize("bound", ["prefix", "start", "stop"])
@pytest.mark.parametrize("value", [1, 1.5, ["a"], bytearray(b"a")], ids=repr)
def test_bad_scan_bounds_raise_invalid_key(db, bound, value):
    _fill(db)
    for h in (db, db.namespace("ns")):
        with pytest.raises(InvalidKeyError, match=bound):
            list(h.scan(**{bound: value}))


@pytest.mark.parametrize("bound", ["prefix", "start", "stop"])
def test_scan_bound_that_is_not_utf8(db, bound):
    with pytest.raises(InvalidKeyError):
        list(db.scan(**{bound: "\ud800"}))


BAD_NAMESPACES = ["", "__kvstore__", "__mine", "x" * 256, "\ud800", 1, b"ns", ["ns"]]


@pytest.mark.parametrize("name", BAD_NAMESPACES, ids=repr)
def test_bad_namespace_names(db, name):
    before = _fill(db)
    for call in (lambda: db.namespace(name), lambda: db.batch().put("k", 1, namespace=name),
                 lambda: db.batch().delete("keep:1", namespace=name)):
        with pytest.raises(kvstore.InvalidNamespaceError):
            call()
    assert _contents(db) == before
    assert db.namespaces() == ["default", "ns"]


def test_a_batch_with_one_bad_write_writes_nothing(db):
    """The with-block raises at the bad write: the batch is discarded whole."""
    before = _fill(db)
    for bad in (lambda b: b.put(b"", 1), lambda b: b.put("k", object()),
                lambda b: b.delete(None), lambda b: b.put("k", 1, namespace="__x")):
        with pytest.raises((InvalidKeyError, EncodeError, kvstore.InvalidNamespaceError)):
            with db.batch(durable=True) as b:
                b.put("keep:1", "replaced")
                b.delete("keep:2", namespace=None)
                b.put("new", 1, namespace="ns")
                bad(b)
    assert _contents(db) == before
    db.put("after", 1, durable=True)  # the writer goes on
    assert db.get("after") == 1


def test_max_length_key_is_fine(db):
    db.put(b"k" * 511, 1, durable=True)
    assert db.get(b"k" * 511) == 1


@pytest.mark.parametrize("value", BAD_VALUES, ids=lambda v: type(v).__name__)
def test_bad_values_raise_encode_error(db, value):
    before = _fill(db)
    ns = db.namespace("ns")
    for call in (lambda: db.put("k", value), lambda: db.put_many({"k": value}),
                 lambda: db.put_many([("ok", 1), ("k", value)]), lambda: db.batch().put("k", value),
                 lambda: db.__setitem__("k", value), lambda: ns.put("k", value),
                 lambda: ns.put_many({"k": value}), lambda: ns.__setitem__("k", value),
                 lambda: db.batch().put("k", value, namespace="ns")):
        with pytest.raises(EncodeError) as info:
            call()
        assert isinstance(info.value, TypeError)
    assert _contents(db) == before
    db.put("after", "fine", durable=True)  # the writer was not poisoned
    assert db.get("after") == "fine" and db.get("k") is None


def test_values_too_deep_or_too_big(store_path):
    deep = []
    for _ in range(100_000):
        deep = [deep]
    cyclic: list = []
    cyclic.append(cyclic)
    with kvstore.open(store_path, max_value_size=1000) as db:
        before = _fill(db)
        for value in (deep, {"a": deep}, cyclic, b"x" * 1001, "y" * 2000):
            with pytest.raises(EncodeError):
                db.put("k", value)
            with pytest.raises(EncodeError):
                db.put_many({"ok": 1, "k": value})
        assert _contents(db) == before


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
        with pytest.raises(expected, match="bad"):  # the scan names the key too
            dict(db.scan())
        with pytest.raises(expected, match="bad"):
            list(db.scan(reverse=True))
        if expected is CorruptionError:
            with pytest.raises(CorruptionError) as info:
                db["bad"]
            assert info.value.key == b"bad"
        assert db.get("good") == {"text": "x" * 500}
        assert "bad" in db  # presence needs no decoding
        db.put("bad", "repaired", durable=True)  # overwriting a damaged value works
        assert db.get("bad") == "repaired"


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


@pytest.mark.parametrize("items", [None, 42, object()])
def test_put_many_of_something_that_is_not_pairs(db, items):
    with pytest.raises(kvstore.InvalidArgumentError, match="mapping or an iterable"):
        db.put_many(items)
    assert len(db) == 0
