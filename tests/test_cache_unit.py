"""The read-through cache (kvstore/cache.py) on its own: LRU, admission,
versions, copies. tests/test_cache.py tests it inside a real store."""

import random
import threading

import pytest

from kvstore import codec, copyplan, demo
from kvstore.cache import (ENTRY_OVERHEAD, MISS, OBJECT_FACTOR, SKIP, STALE, ReadCache,
                           record_tag)
from kvstore.codec.format import stored_checksum

NS = "default"


def records(n=40, seed=7):
    """n (key, value, record) of the demo's agent-memory kinds, real encoded records."""
    rng = random.Random(seed)
    out = []
    events = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            value = demo.message(rng, 1, i)
        elif kind == 1:
            value = demo.episode(rng, 1, i)
        elif kind == 2:
            events.append({"turn": i, "event": "edit"})
            value = demo.session_meta(rng, 1, i, list(events))
        else:
            value = demo.embedding(rng, 1, i)
        out.append((f"k{i:03d}".encode(), value, codec.encode(value)))
    return out


def admitted(max_entries=100, max_bytes=1 << 30):
    """A cache that fills on the first miss (most unit tests need no admission)."""
    return ReadCache(max_entries, max_bytes, admit_on_first_miss=True)


def at(txnid):
    """What LastTxnid.view reads when txnid is the last commit."""
    return (txnid - 1, txnid)


def fill(cache, key, value, record, txnid):
    assert cache.lookup(NS, key, at(txnid)) is MISS
    cache.fill(NS, key, value, record, txnid)


# ---------------------------------------------------------------- LRU and counters


def test_eviction_by_entries_is_lru():
    cache = admitted(max_entries=3)
    recs = records(5)
    for key, value, record in recs[:3]:
        fill(cache, key, value, record, 1)
    assert cache.lookup(NS, recs[0][0], at(1)) == recs[0][1]  # k000 is now the most recent
    fill(cache, recs[3][0], recs[3][1], recs[3][2], 1)  # evicts k001
    assert len(cache) == 3
    assert cache.lookup(NS, recs[1][0], at(1)) is MISS
    for i in (0, 2, 3):
        assert cache.lookup(NS, recs[i][0], at(1)) == recs[i][1]
    assert cache.stats()["evictions"] == 1


def test_eviction_by_bytes():
    recs = records(8)
    sizes = [ENTRY_OVERHEAD + len(k) + OBJECT_FACTOR * codec.parse_header(r)[1] for k, _, r in recs]
    cache = admitted(max_entries=100, max_bytes=sum(sizes[:3]))
    for key, value, record in recs[:3]:
        fill(cache, key, value, record, 1)
    st = cache.stats()
    assert st["entries"] == 3 and st["bytes"] == sum(sizes[:3]) and st["evictions"] == 0
    fill(cache, recs[3][0], recs[3][1], recs[3][2], 1)
    st = cache.stats()
    assert st["bytes"] <= cache.max_bytes
    assert st["evictions"] >= 1
    assert cache.lookup(NS, recs[0][0], at(1)) is MISS  # the least recently used went first
    assert cache.lookup(NS, recs[3][0], at(1)) == recs[3][1]


def test_value_bigger_than_the_cache_is_not_cached():
    value = {"blob": "x" * 10_000}
    record = codec.encode(value)
    cache = admitted(max_bytes=1000)
    fill(cache, b"big", value, record, 1)
    assert len(cache) == 0
    assert cache.lookup(NS, b"big", at(1)) is MISS


def test_counters_and_hit_ratio():
    cache = admitted()
    (k1, v1, r1), (k2, v2, r2) = records(2)
    fill(cache, k1, v1, r1, 5)  # miss 1
    assert cache.lookup(NS, k1, at(5)) == v1  # hit
    assert cache.lookup(NS, k1, at(5)) == v1  # hit
    assert cache.lookup(NS, k1, at(6)) is STALE
    assert cache.revalidate(NS, k1, r1, 6) == v1  # revalidation
    assert cache.lookup(NS, k1, at(7)) is STALE
    assert cache.revalidate(NS, k1, r2, 7) is MISS  # changed: miss 2, invalidation
    cache.fill(NS, k1, v2, r2, 7)
    fill(cache, k2, v2, r2, 7)  # miss 3
    cache.invalidate(NS, k2)  # invalidation
    st = cache.stats()
    assert (st["hits"], st["revalidations"], st["misses"], st["invalidations"]) == (2, 1, 3, 2)
    assert st["fills"] == 3 and st["entries"] == 1 and st["evictions"] == 0
    assert st["hit_ratio"] == pytest.approx(3 / 6)
    assert st["bytes"] == ENTRY_OVERHEAD + len(k1) + OBJECT_FACTOR * codec.parse_header(r2)[1]


def test_disabled_cache():
    assert ReadCache.create(0, 1 << 20) is None
    assert ReadCache.create(100, 0) is None
    cache = ReadCache(0, 0)
    (k, v, r), = records(1)
    for _ in range(3):
        assert cache.lookup(NS, k, at(1)) is SKIP
        cache.fill(NS, k, v, r, 1)
    assert len(cache) == 0


def test_admission_fills_on_the_second_miss():
    cache = ReadCache(100, 1 << 30)
    (k, v, r), (k2, v2, r2) = records(2)
    assert cache.lookup(NS, k, at(1)) is SKIP  # first miss: decode, do not fill
    assert cache.lookup(NS, k, at(1)) is MISS  # second: fill
    cache.fill(NS, k, v, r, 1)
    assert cache.lookup(NS, k, at(1)) == v
    # a key that was cached and changed is admitted again at once
    assert cache.lookup(NS, k, at(2)) is STALE
    assert cache.revalidate(NS, k, r2, 2) is MISS
    assert cache.lookup(NS, k, at(2)) is MISS
    cache.fill(NS, k, v2, r2, 2)
    cache.invalidate(NS, k)
    assert cache.lookup(NS, k, at(3)) is MISS
    st = cache.stats()
    assert st["deferred"] == 1 and st["fills"] == 2


def test_admission_history_is_bounded():
    cache = ReadCache(10, 1 << 30)
    assert len(cache._door) <= 64 * 10
    for i in range(1000):
        cache.lookup(NS, b"%d" % i, at(1))
    # the last generation's keys are remembered; old ones are forgotten
    # (but for a key that shares its slot with a recent one)
    assert all(cache.lookup(NS, b"%d" % i, at(1)) is MISS for i in range(995, 1000))
    forgotten = sum(cache.lookup(NS, b"%d" % i, at(1)) is SKIP for i in range(100))
    assert forgotten >= 60
    assert cache.stats()["deferred"] >= 900


def test_admission_of_keys_that_share_a_slot():
    cache = ReadCache(4, 1 << 30)
    mask = cache._door_mask
    first = hash((NS, b"a")) & mask
    other = next(b"b%d" % i for i in range(100_000) if hash((NS, b"b%d" % i)) & mask == first)
    for key in (b"a", other):
        assert cache.lookup(NS, key, at(1)) is SKIP
    for key in (b"a", other):  # the second marks did not erase the first
        assert cache.lookup(NS, key, at(1)) is MISS


def test_too_deep_values_are_not_cached():
    value = []
    inner = value
    for _ in range(150):
        inner.append([])
        inner = inner[0]
    inner.append({"x": 1})
    record = codec.encode(value)
    cache = admitted()
    fill(cache, b"deep", value, record, 1)
    assert len(cache) == 0
    fill(cache, b"flat", [1, 2], codec.encode([1, 2]), 1)
    assert len(cache) == 1


def test_lru_order_and_sizes_follow_a_model():
    """Random lookups, revalidations, fills and invalidations: the cache's
    LRU order, entries and bytes are those of a plain model of an LRU
    bounded by entries and bytes. Also checks that the installed cachetools
    has the layout the lock-free hit reads (kvstore/cache.py, _reads)."""
    recs = records(20)
    size = {k: ENTRY_OVERHEAD + len(k) + OBJECT_FACTOR * codec.parse_header(r)[1] for k, _, r in recs}
    max_bytes = sorted(size.values())[-1] * 5
    cache = ReadCache(8, max_bytes, admit_on_first_miss=True)
    assert cache._get.__self__ is cache._lru._Cache__data  # the fast path is in use
    model = []  # keys, least recently used first
    evictions = 0
    rng = random.Random(3)
    for step in range(3000):
        key, value, record = recs[rng.randrange(len(recs))]
        txnid = 1 + step // 100
        op = rng.random()
        if op < 0.05:
            cache.invalidate(NS, key)
            if key in model:
                model.remove(key)
            continue
        got = cache.lookup(NS, key, at(txnid))
        if key in model:
            model.remove(key)
            model.append(key)
        if got is STALE:
            got = cache.revalidate(NS, key, record if op < 0.9 else recs[0][2], txnid)
            if got is MISS:
                model.remove(key)
        if got is MISS:
            cache.fill(NS, key, value, record, txnid)
            model.append(key)
            while len(model) > 8 or sum(size[k] for k in model) > max_bytes:
                model.pop(0)
                evictions += 1
        else:
            assert got == value, step
        assert [k for _, k in cache._lru._LRUCache__order] == model, step  # cachetools' order
    st = cache.stats()
    assert st["entries"] == len(model) and st["bytes"] == sum(size[k] for k in model)
    assert st["evictions"] == evictions > 0


# ---------------------------------------------------------------- versions


def test_older_fill_never_replaces_a_newer_entry():
    cache = admitted()
    (k, new, r_new), (_, old, r_old) = records(2)
    fill(cache, k, new, r_new, 10)
    cache.fill(NS, k, old, r_old, 9)  # a slow reader of snapshot 9
    assert cache.lookup(NS, k, at(10)) == new
    cache.fill(NS, k, old, r_old, 10)  # as new: the entry in place stays
    assert cache.lookup(NS, k, at(10)) == new
    cache.fill(NS, k, old, r_old, 11)  # newer: replaces
    assert cache.lookup(NS, k, at(11)) == old


def test_old_fill_after_invalidation_is_revalidated():
    cache = admitted()
    (k, v1, r1), (_, v2, r2) = records(2)
    cache.invalidate(NS, k)  # a commit of this process dropped the key...
    fill(cache, k, v1, r1, 4)  # ...then a reader of the older snapshot 4 fills v1
    assert cache.lookup(NS, k, at(5)) is STALE  # txnid 5 holds v2
    assert cache.revalidate(NS, k, r2, 5) is MISS
    assert len(cache) == 0


def test_revalidation_compares_the_stored_header():
    cache = admitted()
    (k, v, r), (_, v2, r2) = records(2)
    fill(cache, k, v, r, 1)
    assert cache.lookup(NS, k, at(2)) is STALE
    # the same value written again makes the same record: served, no decode
    assert cache.revalidate(NS, k, memoryview(codec.encode(v)), 2) == v
    assert cache.lookup(NS, k, at(2)) == v
    assert cache.lookup(NS, k, at(3)) is STALE
    assert cache.revalidate(NS, k, None, 3) is MISS  # deleted
    assert cache.lookup(NS, k, at(3)) is MISS


def test_same_checksum_different_flags_is_a_change():
    # A top-level bytes value is stored raw; 1 is msgpack 0x01: same payload,
    # same checksum, different flags. The checksum alone would serve b"\x01".
    raw, packed = codec.encode(b"\x01"), codec.encode(1)
    assert stored_checksum(raw) == stored_checksum(packed)
    assert record_tag(raw) != record_tag(packed)
    cache = admitted()
    fill(cache, b"k", b"\x01", raw, 1)
    assert cache.lookup(NS, b"k", at(2)) is STALE
    assert cache.revalidate(NS, b"k", packed, 2) is MISS


def test_lookup_at_sees_its_snapshot_only():
    cache = admitted()
    (k, v9, r9), (_, v10, r10) = records(2)
    fill(cache, k, v10, r10, 10)
    assert cache.lookup(NS, k, at(9)) == v10  # a single read may see the later commit
    assert cache.lookup_at(NS, k, 10) == v10
    assert cache.lookup_at(NS, k, 9) is STALE  # get_many at snapshot 9 must not
    assert cache.revalidate(NS, k, r9, 9) is MISS  # ...and decodes its own
    assert cache.lookup_at(NS, k, 10) == v10  # the newer entry stays
    assert cache.lookup_at(NS, k, 9) is STALE
    assert cache.revalidate(NS, k, r10, 9) == v10  # same record at 9: served
    assert cache.lookup_at(NS, k, 10) == v10


def test_contains():
    cache = admitted()
    (k, v, r), = records(1)
    assert not cache.contains(NS, k, at(1))
    fill(cache, k, v, r, 1)
    assert cache.contains(NS, k, at(1))
    assert not cache.contains(NS, k, at(2))  # stale: ask LMDB
    assert not cache.contains("other", k, at(1))


# ---------------------------------------------------------------- copy on read


def mutate(value):
    """Change every dict and list reachable from value, in place."""
    if isinstance(value, dict):
        for x in list(value.values()):
            mutate(x)
        value["__mutated__"] = True
    elif isinstance(value, list):
        for x in value:
            mutate(x)
        value.append("__mutated__")
        if value and isinstance(value[0], (int, float)) and not isinstance(value[0], bool):
            value[0] = -12345


@pytest.mark.parametrize("kind", range(4))
def test_mutating_a_returned_value_does_not_change_the_cache(kind):
    cache = admitted()
    key, value, record = records(8)[4 + kind]
    pristine = codec.decode(record)
    fill(cache, key, value, record, 1)
    mutate(value)  # the caller's own object, after the fill
    first = cache.lookup(NS, key, at(1))
    mutate(first)
    assert cache.lookup(NS, key, at(1)) == pristine
    assert cache.lookup(NS, key, at(2)) is STALE
    second = cache.revalidate(NS, key, record, 2)
    mutate(second)
    assert cache.lookup(NS, key, at(2)) == pristine


def test_nested_and_scalar_values():
    cache = admitted()
    values = [
        {"a": [1, [2, [3, {"b": [4]}]], {"c": {}}], "d": {"e": []}, 7: (1, 2)},
        [[{}], [], [[[]]], "s", b"b", None, True, 1.5],
        "text", b"bytes", 12345678901234, 2.5, True, None, [], {},
    ]
    for i, value in enumerate(values):
        key = b"v%d" % i
        record = codec.encode(value)
        decoded = codec.decode(record)
        fill(cache, key, decoded, record, 1)
        got = cache.lookup(NS, key, at(1))
        assert got == decoded and type(got) is type(decoded)
        if isinstance(got, (dict, list)):
            assert got is not cache.lookup(NS, key, at(1))
            mutate(got)
            assert cache.lookup(NS, key, at(1)) == decoded


def test_each_value_is_copied_by_the_form_that_suits_its_shape():
    """A tree of small containers is kept as marshal bytes, a list of many
    scalars as a plan; both hand out private values equal to the decoded
    one, with the same types (tuple keys stay tuples)."""
    tree = {"root": {"id": "t1", "tags": ["a"], "sub": [{"id": f"t{i}", "tags": [], "sub": [{"x": []}]}
                                                           for i in range(12)]}, (1, 2): [[], {}]}
    vector = {"dim": 384, "vector": [i / 384 for i in range(384)]}
    assert copyplan.snapshot(codec.decode(codec.encode(tree)))[1] is copyplan.LOADS
    assert copyplan.snapshot(codec.decode(codec.encode(vector)))[1] is not copyplan.LOADS
    cache = admitted()
    for key, value in ((b"tree", tree), (b"vector", vector)):
        record = codec.encode(value)
        decoded = codec.decode(record)
        fill(cache, key, decoded, record, 1)
        mutate(decoded)
        for read in (lambda: cache.lookup(NS, key, at(1)), lambda: cache.lookup_at(NS, key, 1)):
            got = read()
            assert got == codec.decode(record) and type(got) is dict
            assert all(type(k) is type(j) for k, j in zip(got, codec.decode(record)))
            mutate(got)


# ---------------------------------------------------------------- threads


def test_threads_smoke():
    recs = records(40)
    by_key = {k: (v, r) for k, v, r in recs}
    cache = ReadCache(16, 1 << 30)
    errors = []
    lookups = [0] * 8
    clock = [1]

    def work(t):
        rng = random.Random(t)
        try:
            for _ in range(3000):
                key, value, record = recs[rng.randrange(len(recs))]
                txnid = clock[0]
                got = cache.lookup(NS, key, at(txnid))
                lookups[t] += 1
                if got is STALE:
                    got = cache.revalidate(NS, key, record, txnid)
                if got is MISS or got is SKIP:
                    fill_ = got is MISS
                    got = codec.decode(record)
                    if fill_:
                        cache.fill(NS, key, got, record, txnid)
                assert got == value, key
                mutate(got)
                roll = rng.random()
                if roll < 0.01:
                    clock[0] += 1  # "a commit": every entry goes stale
                elif roll < 0.02:
                    cache.invalidate_many([(NS, k) for k, _, _ in recs[:5]])
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[0]
    st = cache.stats()
    assert st["entries"] <= 16
    assert st["hits"] + st["revalidations"] + st["misses"] == sum(lookups)
    assert st["bytes"] == sum(e[4] for e in cache._lru.values())
    for (ns, key), entry in cache._lru.items():
        assert entry[0] == by_key[key][0]
