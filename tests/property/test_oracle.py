"""The crash oracle can fail: damage a real store the way a broken engine
would (an acknowledged write gone, half a batch gone, a value's bytes
flipped, an old value back) and the checks of
tests/support/crash_driver.py must say so, each with its own message.

The damage is done with py-lmdb on the store's files, after the writer
closed it. These checks' counts are kept out of the run's report
(KVSTORE_CRASH_REPORT unset here): they are meant to find something.
"""

import os
import shutil
import time

import lmdb
import pytest

import kvstore
from support import crash_report
from support.crash_driver import (LineLog, check_every_record, check_owner, open_handles, read_everything,
                                  run_owner, verify_store)

NAMESPACES = ["default", "side"]


@pytest.fixture
def written(tmp_path, monkeypatch):
    """A store written by one durable owner and one buffered owner (every
    op ends committed: the store is closed cleanly), and their log."""
    monkeypatch.delenv(crash_report.ENV, raising=False)
    path = str(tmp_path / "store")
    log = LineLog()
    with kvstore.open(path, flush_interval=0.002) as db:
        handles = open_handles(db, NAMESPACES)
        for owner, mix in (("d0", "durable"), ("b0", "buffered")):
            run_owner(db, handles, {"owner": owner, "mix": mix, "ops": 120}, {"seed": 3, "nkeys": 40}, log,
                      time.monotonic() + 60)
    parsed = log.parsed()
    verify_store(path, [parsed], clean={"b0"})  # undamaged, it passes
    return path, parsed


def _raw(path, fn):
    env = lmdb.open(path, max_dbs=70)
    try:
        with env.begin(write=True) as txn:
            fn(env, txn)
    finally:
        env.close()


def _untouched_batch(parsed, owner):
    """The last put_many/batch of owner that puts 2+ keys none of which a
    later op writes: what is stored under them is that op's, and its keys."""
    ops = parsed.ops[owner]
    for i in range(len(ops) - 1, -1, -1):
        op = ops[i]
        keys = {(ns, key) for ns, key, _ in op["w"]}
        later = {(ns, key) for o in ops[i + 1:] for ns, key, _ in o["w"]}
        if (op["k"] in ("put_many", "batch") and not op["x"] and len(keys) >= 2 and not keys & later
                and all(live for *_, live in op["w"])):
            return op, sorted(keys)
    raise AssertionError(f"{owner} has no put_many/batch left alone by later ops")


def _delete(path, ns, key):
    _raw(path, lambda env, txn: txn.delete(key.encode(), db=env.open_db(ns.encode(), txn=txn)))


def test_a_lost_acknowledged_write_is_found(written):
    path, parsed = written
    _op, keys = _untouched_batch(parsed, "d0")
    _delete(path, *keys[0])
    with kvstore.open(path) as db:
        actual = read_everything(db)
    with pytest.raises(AssertionError, match="acknowledged writes lost"):
        check_owner("d0", parsed, actual.get("d0", {}), exited_cleanly=True)


def test_half_a_batch_is_found(written):
    """b0 wrote buffered only: nothing of it was acknowledged as durable, so
    only the atomicity check can object to half a batch, and must."""
    path, parsed = written
    op, keys = _untouched_batch(parsed, "b0")
    _delete(path, *keys[-1])
    with kvstore.open(path) as db:
        actual = read_everything(db)
    with pytest.raises(AssertionError, match=rf"partly in the store: \[{op['n']}\]"):
        check_owner("b0", parsed, actual.get("b0", {}))


def test_a_flipped_value_byte_is_found_by_both_readers(written):
    path, parsed = written
    _op, keys = _untouched_batch(parsed, "d0")
    ns, key = keys[0]

    def damage(env, txn):
        dbi = env.open_db(ns.encode(), txn=txn)
        record = bytearray(txn.get(key.encode(), db=dbi))
        record[-1] ^= 0x01
        txn.put(key.encode(), bytes(record), db=dbi)

    _raw(path, damage)
    with kvstore.open(path) as db:
        with pytest.raises(AssertionError, match="fail to decode"):
            read_everything(db)
    with pytest.raises(AssertionError, match="kvstore check"):
        check_every_record(path)


def test_a_store_gone_back_in_time_is_found(written, tmp_path):
    """The files of an older snapshot put back (what undoing acknowledged
    commits would leave): checked again, the later owner's acknowledged
    writes are missing."""
    path, parsed = written
    old = str(tmp_path / "old.mdb")
    shutil.copy(os.path.join(path, "data.mdb"), old)
    log = LineLog()
    with kvstore.open(path) as db:
        handles = open_handles(db, NAMESPACES)
        run_owner(db, handles, {"owner": "d1", "mix": "durable", "ops": 30}, {"seed": 4, "nkeys": 10}, log,
                  time.monotonic() + 60)
    known = verify_store(path, [parsed, log.parsed()], clean={"b0"})
    shutil.copy(old, os.path.join(path, "data.mdb"))
    os.unlink(os.path.join(path, "lock.mdb"))
    with pytest.raises(AssertionError, match="acknowledged writes lost"):
        verify_store(path, [], known)
