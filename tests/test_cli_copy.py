"""`kvstore copy SRC DST`: every namespace and record, with its expiry and
the namespaces' default TTLs, read back and compared; a destination that
holds records refused without --backup or --force; --dry-run writes
nothing."""

from __future__ import annotations

import json
import math
import os
import re

import pytest

import kvstore

from test_cli_keys import NOW, Clock, run



@pytest.fixture
def clock():
    return Clock()


def fill(path, clock, n=300):
    """A store of n records in the default namespace (a third with a TTL),
    n in "agents" (default TTL 600 s; one kept forever) and an empty
    namespace."""
    with kvstore.open(path, clock=clock) as db:
        agents = db.namespace("agents", ttl=600)
        db.namespace("empty")
        for i in range(n):
            db.put(f"mem:{i:04d}".encode(), {"turn": i, "text": "x" * (i % 50), "nan": math.nan, "b": b"\x00"},
                   ttl=120 + i if i % 3 == 0 else None)
            agents.put(f"agent:{i:04d}".encode(), [i, {"k": i}])
        agents.put(b"forever", "no ttl", ttl=math.inf)
        db.put(b"gone", "expires before the copy", ttl=1)
        db.flush()
    clock.now += 5  # "gone" has expired


def contents(target, clock):
    """{namespace: {key: (msgpack-comparable value, expires_at or None)}} and default TTLs."""
    found = {}
    options = {} if target.startswith("etcd://") else {"clock": clock}  # etcd: the cluster's leases
    with kvstore.open(target, readonly=True, **options) as db:
        for name in db.namespaces():
            handle = db if name == "default" else db.namespace(name)
            found[name] = ({k: (json.dumps(v, default=repr), handle.expiry(k)) for k, v in handle.scan()},
                           handle.default_ttl)
    return found


def same(a, b, slack=0.0):
    assert a.keys() == b.keys()
    for name in a:
        (ra, ta), (rb, tb) = a[name], b[name]
        assert ta == tb, name
        assert ra.keys() == rb.keys(), name
        for key in ra:
            (va, ea), (vb, eb) = ra[key], rb[key]
            assert va == vb, key
            assert (ea is None) == (eb is None), key
            if ea is not None:
                assert abs(ea[0] - eb[0]) <= slack, key


def test_copy_moves_every_namespace_record_and_expiry_and_back(tmp_path, clock):
    src, mid, back = str(tmp_path / "src"), str(tmp_path / "mid"), str(tmp_path / "back")
    fill(src, clock)
    status, text = run(["copy", src, mid], clock)
    assert status == 0, text
    lines = text.splitlines()
    assert lines[0] == "  namespace 'agents': 301 records, " + lines[0].split(", ")[1]
    assert lines[1] == "  namespace 'default': 300 records, " + lines[1].split(", ")[1]
    assert lines[2] == "  namespace 'empty': 0 records, 0 B"
    assert re.fullmatch(rf"copied 3 namespaces, 601 records \([0-9.]+ KiB of values\) from {src} to {mid} in "
                        r"[0-9.]+ s \([0-9,]+ records/s; writing [0-9.]+ s, checking [0-9.]+ s\)", lines[3])
    assert lines[4] == f"read back 601 records from {mid} and compared with the source: all match"
    assert len(lines) == 5
    status, text = run(["copy", mid, back, "--json"], clock)
    doc = json.loads(text)
    assert status == 0 and doc["records"] == 601 and doc["mismatches"] == [] and doc["records_per_s"] > 0
    assert doc["namespaces"]["empty"] == {"records": 0, "bytes": 0}
    original = contents(src, clock)
    assert b"gone" not in original["default"][0]
    same(original, contents(mid, clock))
    same(original, contents(back, clock))
    assert contents(back, clock)["agents"][0][b"forever"][1] is None  # not the namespace's default TTL


def test_copy_refuses_a_destination_that_holds_records(tmp_path, clock, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    fill(src, clock, n=10)
    with kvstore.open(dst, clock=clock) as db:
        db.put(b"mine", "kept?", durable=True)
    assert run(["copy", src, dst], clock) == (2, "")
    assert "'" + dst + "' holds 1 record in 1 namespace; give --backup DIR" in capsys.readouterr().err
    with kvstore.open(dst, readonly=True, clock=clock) as db:
        assert db.namespaces() == ["default"] and len(db) == 1


def test_copy_backs_the_destination_up_first(tmp_path, clock):
    src, dst, saved = str(tmp_path / "src"), str(tmp_path / "dst"), str(tmp_path / "saved")
    fill(src, clock, n=10)
    with kvstore.open(dst, clock=clock) as db:
        db.put(b"mine", "before the copy", durable=True)
        db.put(b"mem:0001", "overwritten by the copy", durable=True)
    status, text = run(["copy", src, dst, "--backup", saved], clock)
    assert status == 0
    assert text.splitlines()[0].startswith(f"backed up {dst} to {saved} (")
    assert "a store directory as it was" in text.splitlines()[0]
    with kvstore.open(saved, readonly=True, clock=clock) as db:
        assert dict(db.scan()) == {b"mine": "before the copy", b"mem:0001": "overwritten by the copy"}
    with kvstore.open(dst, readonly=True, clock=clock) as db:
        assert db.get(b"mine") == "before the copy" and db.get(b"mem:0001")["turn"] == 1


def test_copy_with_force_copies_over_the_destination_unsaved(tmp_path, clock):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    fill(src, clock, n=10)
    with kvstore.open(dst, clock=clock) as db:
        db.put(b"mine", "kept", durable=True)
    status, text = run(["copy", src, dst, "--force"], clock)
    assert status == 0 and "all match" in text
    with kvstore.open(dst, readonly=True, clock=clock) as db:
        assert db.get(b"mine") == "kept" and len(db) == 11


def test_a_dry_run_says_what_it_would_do_and_writes_nothing(tmp_path, clock):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    fill(src, clock, n=10)
    status, text = run(["copy", src, dst, "--dry-run"], clock)
    assert status == 0
    assert text.splitlines()[-3:] == [
        f"would copy 3 namespaces, 21 records ({text.split('(')[1].split(' of values')[0]} of values) "
        f"from {src} to {dst}",
        f"{dst} holds no records", "(dry run: nothing written)"]
    assert not os.path.exists(dst)
    run(["copy", src, dst], clock)
    status, text = run(["copy", src, dst, "--dry-run"], clock)
    assert text.splitlines()[-2] == f"would refuse: {dst} holds 21 records; give --backup DIR or --force"
    status, text = run(["copy", src, dst, "--dry-run", "--backup", tmp_path / "b"], clock)
    assert text.splitlines()[-2] == f"would first back up {dst} (21 records) into {tmp_path / 'b'}"
    assert not os.path.exists(tmp_path / "b")


def test_copy_refuses_to_copy_a_store_onto_itself(tmp_path, clock, capsys):
    src = str(tmp_path / "src")
    fill(src, clock, n=2)
    assert run(["copy", src, src + "/"], clock)[0] == 2
    assert "SRC and DST are the same store" in capsys.readouterr().err


def test_the_check_after_a_copy_names_what_differs():
    from kvstore.commands.copy import _compare, _digest

    digest = _digest({"a": [1, math.nan]})[0]
    assert _compare(digest, None, {"a": [1, math.nan]}, None) is None  # a NaN equals itself here
    assert _compare(digest, None, {"a": [1, 2.0]}, None) == "its value differs from the source's"
    assert _compare(digest, None, {"a": [1, math.nan]}, (NOW + 60, 60.0)) == "it expires, and the source's does not"
    assert _compare(digest, NOW + 60, {"a": [1, math.nan]}, None) == "it never expires, and the source's does"
    assert _compare(digest, NOW + 60, {"a": [1, math.nan]}, (NOW + 61.5, 62.0)) is None  # within 2 s
    assert _compare(digest, NOW + 60, {"a": [1, math.nan]}, (NOW + 63, 63.0)) == \
        "it expires +3.000 s from the source's"


def test_copy_says_which_dictionaries_it_leaves_behind(tmp_path, clock):
    from test_dictionaries import records

    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    with kvstore.open(src, clock=clock) as db:
        db.namespace("episodes").put_many(records(600, seed=1), durable=True)
        db.namespace("episodes").train_dictionary()
    status, text = run(["copy", src, dst], clock)
    assert status == 0
    assert (f"namespace 'episodes' was compressed with dictionary 1 at {src}; dictionaries are not copied, so "
            f"{dst} compresses its values without one (`kvstore train-dict {dst} -n episodes` trains one "
            f"there)") in text.splitlines()
    with kvstore.open(dst, readonly=True, clock=clock) as db:
        assert db.dictionaries() == [] and len(db.namespace("episodes")) == 600
