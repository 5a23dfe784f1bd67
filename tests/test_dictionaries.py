"""Trained zstd dictionaries stored inside the store."""

import random
import subprocess
import sys
import textwrap

import pytest

import kvstore
from kvstore import demo


def records(n, seed=0):
    rng = random.Random(seed)
    out = {}
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out[f"msg:{i:06d}"] = demo.message(rng, i // 10, i)
        elif kind == 1:
            out[f"ep:{i:06d}"] = demo.episode(rng, i // 10, i)
        else:
            out[f"meta:{i:06d}"] = demo.session_meta(rng, i // 10, i % 20, [{"turn": t} for t in range(5)])
    return out


def stored_ratio(db, items):
    before = db.stats()
    db.put_many(items, durable=True)
    after = db.stats()
    return (after["bytes_stored"] - before["bytes_stored"]) / (after["bytes_in"] - before["bytes_in"])


def test_dictionary_improves_the_ratio_and_old_values_still_decode(store_path):
    data = records(3000)
    items = list(data.items())
    with kvstore.open(store_path) as db:
        plain = stored_ratio(db, dict(items[:1500]))
        did = db.train_dictionary(samples=1500)
        assert did == 1
        with_dict = stored_ratio(db, dict(items[1500:]))
        assert with_dict < plain - 0.05, (plain, with_dict)
        info = db.dictionaries()
        assert [d["id"] for d in info] == [1] and info[0]["current"] and info[0]["namespace"] == "default"
        did2 = db.train_dictionary(samples=500)
        assert did2 == 2
        assert [d["current"] for d in db.dictionaries()] == [False, True]
        for k, v in items[::97]:
            assert db.get(k) == v
    with kvstore.open(store_path, readonly=True) as db:  # a fresh process view: loaded from the store
        assert all(db.get(k) == v for k, v in items[::31])


def test_dictionaries_are_per_namespace(store_path):
    with kvstore.open(store_path) as db:
        eps = db.namespace("episodes")
        eps.put_many(records(600, seed=1))
        eps.train_dictionary()
        assert db.dictionaries()[0]["namespace"] == "episodes"
        db.put("k", {"text": "plain " * 50}, durable=True)
        db.flush()  # in LMDB, read raw below (with a log: applied)
        raw = db._engine.lmdb
        with raw.begin(db=db._engine.dbi("default", create=False)) as txn:
            assert txn.get(b"k")[1] & 0x04 == 0  # default namespace: no dictionary flag
        eps.put("k", {"text": "dict " * 50}, durable=True)
        db.flush()
        with raw.begin(db=db._engine.dbi("episodes", create=False)) as txn:
            assert txn.get(b"k")[1] & 0x04  # episodes: compressed with the dictionary
        assert eps.get("k") == {"text": "dict " * 50}


def test_dictionary_trained_by_another_process_is_picked_up(store_path):
    data = records(800, seed=2)
    with kvstore.open(store_path) as db:
        db.put_many(data, durable=True)
        assert db.get("msg:000000") == data["msg:000000"]
        subprocess.run([sys.executable, "-c", textwrap.dedent("""
            import sys, kvstore
            with kvstore.open(sys.argv[1]) as db:
                db.train_dictionary()
                db.put("new", {"content": "written with the new dictionary " * 20}, durable=True)
        """), store_path], check=True, timeout=120)
        # This process never saw dictionary 1, and reads a record that needs it.
        assert db.get("new") == {"content": "written with the new dictionary " * 20}


def test_too_few_values_is_a_clear_error(store_path):
    with kvstore.open(store_path) as db:
        db.put("a", {"x": 1})
        with pytest.raises(kvstore.KVStoreError, match="at least"):
            db.train_dictionary()
        with pytest.raises(ValueError, match="samples"):
            db.train_dictionary(samples=1)
        assert db.dictionaries() == []


def test_readonly_store_cannot_train(store_path):
    with kvstore.open(store_path) as db:
        db.put_many(records(100))
    with kvstore.open(store_path, readonly=True) as db:
        with pytest.raises(kvstore.ReadOnlyError):
            db.train_dictionary()


def test_unknown_dictionary_id_is_corruption(store_path):
    with kvstore.open(store_path) as db:
        db.put("k", {"text": "x" * 400}, durable=True)
    import lmdb
    import struct

    env = lmdb.open(store_path, max_dbs=10)
    dbi = env.open_db(b"default")
    with env.begin(write=True, db=dbi) as txn:
        rec = bytearray(txn.get(b"k"))
        rec[1] |= 0x04  # claim a dictionary
        rec[6:10] = struct.pack("<I", 77)
        txn.put(b"k", bytes(rec))
    env.close()
    with kvstore.open(store_path) as db:
        with pytest.raises(kvstore.CorruptionError, match="77"):
            db.get("k")
