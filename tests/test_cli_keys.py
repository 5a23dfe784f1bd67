"""Keys by pattern and several at once (`keys PATTERN`, `get`/`del` with
several KEYs, --match, --prefix, `del --dry-run`), and `expire`/`persist`,
which change a value's TTL prefix and nothing else."""

from __future__ import annotations

import io
import json

import pytest

import kvstore
from kvstore.cli import main
from kvstore.codec.format import TTL_HEADER_SIZE, is_ttl, parse_ttl

NOW = 1_800_000_000.0


class Clock:
    def __init__(self):
        self.now = NOW

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def run(argv, clock=None):
    out = io.StringIO()
    status = main([str(a) for a in argv], out=out, clock=clock)
    return status, out.getvalue()


@pytest.fixture
def store(tmp_path, clock):
    path = str(tmp_path / "store")
    with kvstore.open(path, clock=clock) as db:
        db.put_many({"session:1:msg:1": "hi", "session:1:msg:2": "there", "session:2:msg:1": {"n": 2},
                     "session:10:meta": [1, 2], "star*key": "literal star", b"blob:\x00\xff": b"\x01"},
                    durable=True)
        db.namespace("notes").put("n1", "note", durable=True)
        db.put("temp", "soon gone", ttl=60, durable=True)
    return path


def raw(path, key, namespace="default"):
    with kvstore.open(path, readonly=True) as db:
        dbi = db._engine.dbi(namespace, False)
        return db._engine.read(lambda txn: bytes(txn.get(key, db=dbi)))


# ---------------------------------------------------------------- keys PATTERN


def test_keys_with_a_glob_lists_the_matching_keys(store):
    assert run(["keys", store, "session:?:msg:*"]) == (0, "session:1:msg:1\nsession:1:msg:2\nsession:2:msg:1\n")
    assert run(["keys", store, "session:1*"]) == (0, "session:10:meta\nsession:1:msg:1\nsession:1:msg:2\n")
    assert run(["keys", store, "session:[!1]:*"]) == (0, "session:2:msg:1\n")
    assert run(["keys", store, "session:[0-9][0-9]:*", "--json"]) == (0, '[\n  "session:10:meta"\n]\n')
    assert run(["keys", store, "blob:\\x00*"]) == (0, "blob:\\x00\\xff\n")
    assert run(["keys", store, "star\\x2a*"]) == (0, "star*key\n")  # a literal *
    assert run(["keys", store, "nothing*"]) == (0, "")


def test_keys_count_counts_the_matching_keys(store):
    assert run(["keys", store, "session:*", "--count"]) == (0, "4\n")
    assert run(["keys", store, "--count"]) == (0, "7\n")


def test_a_bad_glob_is_refused_with_what_to_write(store, capsys):
    assert run(["keys", store, "session:[1"])[0] == 2
    assert "unclosed [ in PATTERN 'session:[1': close the class with ], or write a literal [ as \\x5b" in (
        capsys.readouterr().err)


# ---------------------------------------------------------------- get, several keys


def test_get_with_one_key_prints_the_value_alone(store):
    assert run(["get", store, "session:2:msg:1"]) == (0, '{"n": 2}\n')


def test_get_with_several_keys_prints_a_record_line_each(store, capsys):
    status, out = run(["get", store, "session:1:msg:2", "missing", "session:1:msg:1"])
    assert status == 1
    assert out == '{"k":"session:1:msg:2","v":"there"}\n{"k":"session:1:msg:1","v":"hi"}\n'
    assert capsys.readouterr().err == "kvstore: key 'missing' not found in namespace 'default'\n"


def test_get_by_match_and_prefix_in_key_order(store):
    status, out = run(["get", store, "--match", "session:*:msg:1", "--format", "repr"])
    assert (status, out) == (0, "session:1:msg:1\t'hi'\nsession:2:msg:1\t{'n': 2}\n")
    status, out = run(["get", store, "--prefix", "blob:", "--format", "hex"])
    assert (status, out) == (0, "blob:\\x00\\xff\t01\n")


def test_keys_may_follow_the_options(store):
    status, out = run(["get", store, "-n", "notes", "n1"])
    assert (status, out) == (0, '"note"\n')
    status, out = run(["get", store, "--format", "repr", "session:1:msg:1", "session:1:msg:2"])
    assert (status, out) == (0, "session:1:msg:1\t'hi'\nsession:1:msg:2\t'there'\n")


def test_get_lines_of_several_keys_load_as_a_dump(store, tmp_path):
    _, out = run(["get", store, "--prefix", "session:1:"])
    dump = tmp_path / "some.jsonl"
    dump.write_text(out)
    assert run(["load", tmp_path / "copy", "-i", dump])[0] == 0
    with kvstore.open(str(tmp_path / "copy"), readonly=True) as db:
        assert dict(db.items()) == {b"session:1:msg:1": "hi", b"session:1:msg:2": "there"}


def test_get_ttl_of_several_keys(store, clock):
    status, out = run(["get", store, "temp", "session:1:msg:1", "--ttl"], clock=clock)
    assert status == 0
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["k"] == "temp" and first["ttl"]["expires_in"] == 60.0 and first["ttl"]["ttl"] == 60.0
    assert second == {"k": "session:1:msg:1", "ttl": None}


def test_get_raw_refuses_several_keys(store, capsys):
    assert run(["get", store, "a", "b", "--format", "raw"])[0] == 2
    assert "--format raw prints one value" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["get", "del"])
def test_get_or_del_without_key_or_pattern_says_what_to_give(store, capsys, command):
    with pytest.raises(SystemExit) as stop:
        run([command, store])
    assert stop.value.code == 2
    assert capsys.readouterr().err.endswith(
        f"kvstore: error: {command}: give a KEY, or keys by --match GLOB or --prefix P\n")


# ---------------------------------------------------------------- del, several keys


def test_del_dry_run_lists_and_counts_and_deletes_nothing(store):
    status, out = run(["del", store, "--match", "session:1*", "--dry-run"])
    assert (status, out) == (0, "session:10:meta\nsession:1:msg:1\nsession:1:msg:2\n"
                                "would delete 3 keys from namespace 'default' (dry run: nothing deleted)\n")
    assert run(["keys", store, "--count"]) == (0, "7\n")


def test_del_by_pattern_deletes_in_one_commit_and_counts(store):
    with kvstore.open(store, readonly=True) as db:
        before = db.stats()["commit_seq"]
    status, out = run(["del", store, "--prefix", "session:1:", "--match", "session:2:*"])
    assert (status, out) == (0, "deleted 3 keys from namespace 'default'\n")
    with kvstore.open(store, readonly=True) as db:
        assert db.stats()["commit_seq"] == before + 1
        assert sorted(db.keys()) == [b"blob:\x00\xff", b"session:10:meta", b"star*key", b"temp"]


def test_del_of_several_keys_deletes_those_present_and_names_the_missing(store, capsys):
    status, out = run(["del", store, "star*key", "missing", "temp"])
    assert (status, out) == (1, "deleted 2 keys from namespace 'default'\n")
    assert capsys.readouterr().err == "kvstore: key 'missing' not found in namespace 'default'\n"
    assert run(["keys", store, "--count"]) == (0, "5\n")


def test_del_of_one_key_stays_silent(store, capsys):
    assert run(["del", store, "temp"]) == (0, "")
    assert run(["del", store, "temp"]) == (1, "")
    assert "key 'temp' not found" in capsys.readouterr().err


def test_del_matching_nothing_deletes_nothing(store):
    assert run(["del", store, "--match", "zzz*"]) == (0, "deleted 0 keys from namespace 'default'\n")


# ---------------------------------------------------------------- expire, persist


def test_expire_rewrites_the_ttl_prefix_and_not_the_value(store, clock):
    before = raw(store, b"session:2:msg:1")
    assert not is_ttl(before)
    status, out = run(["expire", store, "session:2:msg:1", "30"], clock=clock)
    assert (status, out) == (0, "'session:2:msg:1' expires at 2027-01-15T08:00:30.000Z; ttl 30 s\n")
    after = raw(store, b"session:2:msg:1")
    assert after[TTL_HEADER_SIZE:] == before  # the stored record, byte for byte
    assert parse_ttl(after) == (int(NOW * 1000) + 30_000, 30_000)
    clock.now += 31
    assert run(["get", store, "session:2:msg:1"], clock=clock)[0] == 1  # expired
    assert run(["check", store], clock=clock)[0] == 0  # the namespace got its ttl: key too


def test_expire_replaces_an_existing_expiry(store, clock):
    inner = raw(store, b"temp")[TTL_HEADER_SIZE:]
    assert run(["expire", store, "temp", "3600"], clock=clock)[0] == 0
    after = raw(store, b"temp")
    assert after[TTL_HEADER_SIZE:] == inner and parse_ttl(after)[1] == 3_600_000


def test_persist_drops_the_ttl_prefix_and_keeps_the_value(store, clock):
    stored = raw(store, b"temp")
    status, out = run(["persist", store, "temp"], clock=clock)
    assert (status, out) == (0, "'temp' never expires\n")
    assert raw(store, b"temp") == stored[TTL_HEADER_SIZE:]
    clock.now += 3600
    assert run(["get", store, "temp"], clock=clock) == (0, '"soon gone"\n')
    assert run(["persist", store, "temp"], clock=clock) == (0, "'temp' never expires\n")  # nothing to do


def test_expire_and_persist_of_a_missing_or_expired_key_exit_1(store, clock, capsys):
    assert run(["expire", store, "missing", "5"], clock=clock)[0] == 1
    clock.now += 61
    assert run(["persist", store, "temp"], clock=clock)[0] == 1
    err = capsys.readouterr().err
    assert "key 'missing' not found" in err and "key 'temp' not found" in err


def test_expire_refuses_a_bad_number_of_seconds(store, capsys):
    assert run(["expire", store, "temp", "0"])[0] == 2
    assert "SECONDS: ttl must be > 0" in capsys.readouterr().err
