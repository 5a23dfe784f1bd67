"""Scans over many pending writes of this process: the writer keeps their
keys in order for range snapshots (Writer._ordered), and a scan must see
exactly what a dict of the same writes holds, before and after commits."""

import random

import pytest

import kvstore


def expected(model, lo, hi, reverse):
    keys = sorted(k for k in model if (lo is None or k >= lo) and (hi is None or k < hi))
    if reverse:
        keys.reverse()
    return [(k, model[k]) for k in keys]


@pytest.mark.parametrize("seed", range(4))
def test_range_scans_over_many_pending_writes_match_a_dict(store_path, seed):
    rng = random.Random(seed)
    keys = [f"s:{rng.randrange(40):02d}:m:{i:04d}".encode() for i in range(1500)]
    model = {}
    with kvstore.open(store_path, flush_interval=3600, max_batch_ops=50_000, max_pending_ops=50_000,
                      cache_entries=0 if seed % 2 else 10_000) as db:
        for step in range(6000):
            key = rng.choice(keys)
            if rng.random() < 0.8:
                value = rng.randrange(1000)
                db.put(key, value)
                model[key] = value
            else:
                db.delete(key)
                model.pop(key, None)
            if step % 40 == 0:
                session = f"s:{rng.randrange(40):02d}:".encode()
                reverse = rng.random() < 0.5
                kind = rng.randrange(3)
                if kind == 0:
                    got = list(db.scan(prefix=session, reverse=reverse))
                    lo, hi = session, session[:-1] + b";"
                elif kind == 1:
                    lo, hi = sorted(rng.sample(keys, 2))
                    got = list(db.scan(start=lo, stop=hi, reverse=reverse))
                else:
                    lo, hi = rng.choice(keys), None
                    got = list(db.scan(start=lo, reverse=reverse))
                assert got == expected(model, lo, hi, reverse), (seed, step, kind)
            if step % 1500 == 1499:
                db.flush()  # the overlay empties; the ordered keys go stale
        db.flush()
        assert list(db.scan()) == expected(model, None, None, False)


@pytest.mark.parametrize("seed", range(3))
def test_scans_across_chunk_boundaries_merge_pending_writes_like_a_dict(store_path, seed):
    """Stored keys spanning several scan chunks (SCAN_FIRST_CHUNK, then
    doubling to SCAN_CHUNK), pending writes and deletes before, inside and
    past them; bounds on and between keys; keys alone and with values."""
    rng = random.Random(100 + seed)
    model = {}
    with kvstore.open(store_path, flush_interval=3600, max_batch_ops=50_000, max_pending_ops=50_000,
                      cache_entries=0 if seed % 2 else 10_000) as db:
        stored = {f"k:{i:05d}".encode(): {"i": i, "tags": [i, str(i)]} for i in range(0, 1400, 2)}
        db.put_many(stored.items())
        db.flush()
        model.update(stored)
        for _ in range(300):  # pending: odd keys between, rewrites, deletes, keys past both ends
            i = rng.randrange(-20, 1420)
            key = f"k:{i:05d}".encode() if i >= 0 else f"a:{-i:03d}".encode()
            if rng.random() < 0.3:
                db.delete(key)
                model.pop(key, None)
            else:
                db.put(key, [i])
                model[key] = [i]
        bounds = [None, b"a:", b"k:", b"k:00033", b"k:00034", b"k:00700", b"k:01399", b"k:9", b"z"]
        for _ in range(60):
            lo, hi = rng.choice(bounds), rng.choice(bounds)
            reverse = rng.random() < 0.5
            want = expected(model, lo, hi, reverse)
            assert list(db.scan(start=lo, stop=hi, reverse=reverse)) == want, (lo, hi, reverse)
            keys = list(db.scan(start=lo, stop=hi, reverse=reverse, keys_only=True))
            assert keys == [k for k, _ in want], (lo, hi, reverse)
        assert list(db.scan(prefix=b"k:000")) == expected(model, b"k:000", b"k:001", False)
        db.flush()
        assert list(db.scan(reverse=True)) == expected(model, None, None, True)
