"""Every public call of Store/Namespace/Batch, and its documented behaviour."""

import pytest

import kvstore
from kvstore import (
    EncodeError,
    InvalidKeyError,
    InvalidNamespaceError,
    ReadOnlyError,
    StoreClosedError,
    StoreNotFoundError,
)

VALUES = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1.5,
    float("inf"),
    "",
    "text ünïcode ✓",
    b"",
    b"\x00\xff raw bytes",
    [],
    [1, "two", 3.0, None, b"four"],
    {},
    {"role": "user", "content": "hello " * 200, "nested": {"a": [1, 2, {"b": b"x"}]}},
    {1: "int key", b"bin": "bytes key"},
    {("tuple", 1): [1], "nested": {(1, (2, 3)): "tuple keys come back as tuples"}},
    "x" * 100_000,
    b"\x01" * 300_000,
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: repr(v)[:30])
def test_values_round_trip_before_and_after_commit(db, value):
    db.put("k", value)
    assert db.get("k") == value  # from the overlay (pending)
    db.flush()
    got = db.get("k")
    assert got == value  # from LMDB
    assert type(got) is type(value)


def test_tuple_comes_back_as_list(db):
    db.put("t", (1, (2, 3)), durable=True)
    assert db.get("t") == [1, [2, 3]]


def test_str_and_bytes_keys_are_the_same_key(db):
    db.put("clé", 1)
    assert db.get("clé".encode()) == 1
    assert "clé".encode() in db
    db.flush()
    assert list(db) == ["clé".encode()]


def test_get_default_and_missing(db):
    assert db.get("nope") is None
    assert db.get("nope", 42) == 42
    with pytest.raises(KeyError):
        db["nope"]
    assert "nope" not in db


def test_mapping_protocol(db):
    db["a"] = 1
    db["b"] = {"x": 2}
    assert db["a"] == 1 and db["b"] == {"x": 2}
    assert len(db) == 2
    del db["a"]
    assert "a" not in db and len(db) == 1
    with pytest.raises(KeyError):
        del db["a"]
    db.flush()
    assert list(iter(db)) == [b"b"]
    assert len(db) == 1


def test_delete_missing_is_not_an_error(db):
    db.delete("never-there", durable=True)
    assert db.get("never-there") is None


def test_put_many_mapping_and_pairs(db):
    db.put_many({"a": 1, "b": 2})
    db.put_many([("c", 3), (b"d", 4), ("c", 33)])  # later pair wins
    assert db.get_many(["a", "b", "c", "d", "e"]) == [1, 2, 33, 4, None]
    db.flush()
    assert db.get_many(["d", "a", "zz"]) == [4, 1, None]
    db.put_many({}, durable=True)  # empty: nothing to do


@pytest.mark.parametrize("wal", [False, True])
def test_put_many_is_one_commit(store_path, wal):
    # with a log: one record, one append (counted in commits and the ops per commit)
    with kvstore.open(store_path, wal=wal) as db:
        _put_many_is_one_commit(db)


def _put_many_is_one_commit(db):
    before = db.stats()["commits"]
    db.put_many({f"k{i}": i for i in range(5000)}, durable=True)
    st = db.stats()
    assert st["commits"] == before + 1
    assert st["ops_per_commit"]["max"] >= 5000
    assert len(db) == 5000


def test_put_many_bad_item_queues_nothing(db):
    with pytest.raises(EncodeError):
        db.put_many([("a", 1), ("b", {1, 2}), ("c", 3)])
    with pytest.raises(InvalidKeyError):
        db.put_many([("a", 1), (b"", 2)])
    with pytest.raises(InvalidKeyError):
        db.put_many([("a", 1), "not-a-pair"])
    db.flush()
    assert len(db) == 0 and db.get("a") is None


def test_batch_commits_atomically_on_exit(db):
    db.put("gone", 1, durable=True)
    with db.batch(durable=True) as b:
        b.put("x", 1)
        b.put("y", [2])
        b.delete("gone")
        assert len(b) == 3
        assert db.get("x") is None  # not visible before the block exits
    assert db.get_many(["x", "y", "gone"]) == [1, [2], None]


def test_batch_discarded_on_exception(db):
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with db.batch() as b:
            b.put("x", 1)
            raise Boom()
    db.flush()
    assert db.get("x") is None


def test_batch_cannot_be_reused(db):
    with db.batch() as b:
        b.put("x", 1)
    with pytest.raises(StoreClosedError):
        b.put("y", 2)


def test_batch_across_namespaces(db):
    ns = db.namespace("episodes")
    with db.batch(durable=True) as b:
        b.put("k", "default")
        b.put("k", "episode", namespace="episodes")
    assert db.get("k") == "default"
    assert ns.get("k") == "episode"


def test_batch_bad_value_raises_at_put(db):
    with pytest.raises(EncodeError):
        with db.batch() as b:
            b.put("a", 1)
            b.put("b", object())
    db.flush()
    assert db.get("a") is None


def test_scan_orders_and_ranges(db):
    keys = [f"session:{s}:msg:{m:03d}" for s in (1, 2) for m in range(5)]
    for i, k in enumerate(keys):
        db.put(k, i)
    db.flush()
    assert [k for k, _ in db.scan()] == sorted(k.encode() for k in keys)
    got = list(db.scan(prefix="session:1:"))
    assert [k for k, _ in got] == [f"session:1:msg:{m:03d}".encode() for m in range(5)]
    assert [v for _, v in got] == list(range(5))
    assert list(db.scan(prefix="session:1:", reverse=True, keys_only=True)) == [
        f"session:1:msg:{m:03d}".encode() for m in reversed(range(5))
    ]
    assert list(db.scan(start="session:1:msg:002", stop="session:1:msg:004", keys_only=True)) == [
        b"session:1:msg:002", b"session:1:msg:003"]
    assert list(db.scan(start="session:1:msg:002", stop="session:1:msg:004", reverse=True,
                        keys_only=True)) == [b"session:1:msg:003", b"session:1:msg:002"]
    assert list(db.scan(prefix="nothing")) == []
    assert list(db.scan(prefix="session:2:", start="session:2:msg:003", keys_only=True)) == [
        b"session:2:msg:003", b"session:2:msg:004"]


def test_scan_prefix_of_ff_bytes(db):
    db.put_many({b"\xff\xff": 1, b"\xff\xff\x00": 2, b"\xfe": 3}, durable=True)
    assert list(db.scan(prefix=b"\xff\xff", keys_only=True)) == [b"\xff\xff", b"\xff\xff\x00"]


def test_scan_merges_pending_writes(db):
    db.put_many({f"k{i:04d}": i for i in range(600)}, durable=True)
    db.put("k0005", "new")  # pending overwrite
    db.delete("k0010")  # pending delete
    db.put("k0300x", "inserted")  # pending insert
    got = dict(db.scan())
    assert got[b"k0005"] == "new"
    assert b"k0010" not in got
    assert got[b"k0300x"] == "inserted"
    assert len(got) == 600
    rev = list(db.scan(reverse=True, keys_only=True))
    assert rev == sorted(got, reverse=True)


def test_scan_crosses_chunks_in_both_directions(db):
    n = 1000  # several SCAN_CHUNKs
    db.put_many({f"{i:05d}": i for i in range(n)}, durable=True)
    assert [v for _, v in db.scan()] == list(range(n))
    assert [v for _, v in db.scan(reverse=True)] == list(reversed(range(n)))
    assert len(list(db.scan(start="00100", stop="00900"))) == 800


def test_scan_sees_each_key_once_while_writing(db):
    db.put_many({f"{i:05d}": i for i in range(1000)}, durable=True)
    seen = []
    for k, _ in db.scan():
        seen.append(k)
        db.put(k + b"-copy", 1)  # writes during the scan, into the range
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen)


def test_scan_bad_bounds(db):
    with pytest.raises(InvalidKeyError):
        db.scan(prefix=3)
    with pytest.raises(InvalidKeyError):
        db.scan(start=object())


def test_len_counts_pending_writes(db):
    db.put_many({"a": 1, "b": 2}, durable=True)
    db.put("c", 3)
    db.delete("a")
    db.put("b", 22)
    assert len(db) == 2
    db.flush()
    assert len(db) == 2


def test_namespaces_are_separate(db):
    eps = db.namespace("episodes")
    meta = db.namespace("meta")
    db.put("k", "default")
    eps.put("k", "episode")
    assert meta.get("k") is None
    assert eps.get("k") == "episode"
    assert db.get("k") == "default"
    db.flush()
    assert db.namespaces() == ["default", "episodes", "meta"]
    assert eps.name == "episodes" and db.name == "default"
    assert list(eps.scan(keys_only=True)) == [b"k"]
    assert len(meta) == 0
    assert db.namespace("default").get("k") == "default"


@pytest.mark.parametrize("name", ["", "__kvstore__", "__x", "x" * 300, 3, None])
def test_bad_namespace_names(db, name):
    with pytest.raises(InvalidNamespaceError):
        db.namespace(name)


def test_namespace_limit(store_path):
    from kvstore import NamespaceLimitError

    with kvstore.open(store_path, max_namespaces=2) as db:
        db.namespace("a")
        db.namespace("b")
        with pytest.raises(NamespaceLimitError, match="max_namespaces"):
            db.namespace("c")
        db.put("still", "works", durable=True)
        assert db.get("still") == "works"


def test_namespace_handle_close_leaves_store_open(db):
    ns = db.namespace("x")
    ns.close()
    with pytest.raises(StoreClosedError):
        ns.get("a")
    db.put("a", 1)
    assert db.get("a") == 1


def test_closed_store_refuses_everything(store_path):
    db = kvstore.open(store_path)
    ns = db.namespace("n")
    db.put("a", 1)
    db.close()
    db.close()  # idempotent
    for call in (lambda: db.get("a"), lambda: db.put("a", 1), lambda: len(db), lambda: db.flush(),
                 lambda: db.stats(), lambda: list(db.scan()), lambda: ns.get("a"), lambda: db.batch()):
        with pytest.raises(StoreClosedError):
            call()


def test_close_commits_pending_writes(store_path):
    db = kvstore.open(store_path, flush_interval=60)
    db.put("a", 1)
    db.namespace("n").put("b", 2)
    db.close()
    with kvstore.open(store_path) as db2:
        assert db2.get("a") == 1
        assert db2.namespace("n").get("b") == 2


def test_context_manager(store_path):
    with kvstore.open(store_path) as db:
        db.put("a", 1)
    with kvstore.open(store_path, readonly=True) as db:
        assert db.get("a") == 1


def test_readonly_store(store_path):
    with kvstore.open(store_path) as db:
        db.put("a", 1)
        db.namespace("n").put("b", 2)
    with kvstore.open(store_path, readonly=True) as ro:
        assert ro.readonly
        assert ro.get("a") == 1
        assert ro.namespace("n").get("b") == 2
        assert ro.namespace("missing").get("b") is None
        assert list(ro.namespace("missing").scan()) == []
        assert ro.namespaces() == ["default", "n"]
        for call in (lambda: ro.put("a", 2), lambda: ro.delete("a"), lambda: ro.put_many({"a": 1}),
                     lambda: ro.batch()):
            with pytest.raises(ReadOnlyError, match="readonly"):
                call()
        ro.flush()  # nothing to do
        assert ro.stats()["commits"] == 0


def test_readonly_never_creates(tmp_path):
    with pytest.raises(StoreNotFoundError):
        kvstore.open(str(tmp_path / "none"), readonly=True)
    assert not (tmp_path / "none").exists()


def test_open_creates_nested_directory(tmp_path):
    with kvstore.open(str(tmp_path / "a" / "b" / "c")) as db:
        db.put("x", 1, durable=True)
    assert (tmp_path / "a" / "b" / "c" / "data.mdb").exists()


def test_same_path_twice_in_one_process_shares_the_engine(store_path):
    a = kvstore.open(store_path)
    b = kvstore.open(store_path)
    a.put("k", "from a")  # pending, not committed
    assert b.get("k") == "from a"  # read-your-writes across handles of one process
    a.close()
    b.put("k2", 2, durable=True)  # b still works after a closed
    assert b.get("k") == "from a"
    b.close()


def test_stats_fields(db):
    db.put("a", {"text": "hello " * 100})
    db.put("b", 1, durable=True)
    st = db.stats()
    for field in ("commits", "ops_committed", "ops_per_commit", "commit_seconds", "pending", "map_size",
                  "map_used", "codec", "bytes_in", "bytes_stored"):
        assert field in st, field
    assert st["commits"] >= 1 and st["ops_committed"] == 2
    assert set(st["ops_per_commit"]) == {"mean", "max"}
    assert set(st["commit_seconds"]) == {"p50", "p99"}
    assert st["codec"] == kvstore.codec.backend
    assert 0 < st["bytes_stored"] < st["bytes_in"] + 64  # compressed text
    assert st["pending"] == 0
    assert st["map_used"] <= st["map_size"]


def test_durable_default_option(store_path):
    # without the log, a buffered write stays pending until its commit
    with kvstore.open(store_path, durable=True, flush_interval=3600, wal=False) as db:
        db.put("a", 1)  # durable by default: committed when put returns
        assert db.stats()["pending"] == 0
        db.put("b", 1, durable=False)
        assert db.stats()["pending"] == 1


def test_durable_default_option_with_a_log(store_path):
    # with a log every write is appended when put returns: the groups say
    # which were synced
    with kvstore.open(store_path, durable=True, flush_interval=3600, wal=True) as db:
        db.put("a", 1)  # durable by default
        st = db.stats()
        assert (st["durable_groups"], st["buffered_groups"]) == (1, 0)
        db.put("b", 1, durable=False)
        st = db.stats()
        assert (st["durable_groups"], st["buffered_groups"]) == (1, 1)


def test_unknown_option_is_a_clear_error(store_path):
    with pytest.raises(TypeError, match="unknown option"):
        kvstore.open(store_path, flush_intervall=1)
    with pytest.raises(ValueError, match="compression"):
        kvstore.open(store_path, compression="lz4")
    with pytest.raises(TypeError, match="durable"):
        kvstore.open(store_path, durable="yes")


def test_compression_none_and_min_size(store_path):
    with kvstore.open(store_path, compression="none") as db:
        db.put("a", "x" * 1000, durable=True)
        st = db.stats()
        assert st["bytes_stored"] >= st["bytes_in"]
        assert db.get("a") == "x" * 1000


def test_max_value_size(store_path):
    with kvstore.open(store_path, max_value_size=1000) as db:
        with pytest.raises(EncodeError, match="max_value_size"):
            db.put("a", b"x" * 1001)
        db.put("a", b"x" * 1000, durable=True)
        assert db.get("a") == b"x" * 1000


def test_repr(db):
    assert "open" in repr(db) and db.path in repr(db)
