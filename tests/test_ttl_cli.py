"""The commands with TTL values: inspect and get show the expiry, check
accepts TTL records, stat counts them, dump/load keep TTLs and namespace
defaults (jsonl and mdb), compact drops expired values. The commands run
in this process, on a fake clock: kvstore.cli.main(..., clock=fake) opens
the stores with it, and so does every kvstore.open here."""

import io
import json
import os

import lmdb
import pytest

import kvstore
from kvstore.cli import main
from kvstore.layout import KEYED_STORE_FORMAT, TTL_STORE_FORMAT

T0 = 1_800_000_000.0


class FakeClock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


def run(clock, argv):
    """(exit status, report) of the command argv, run here on clock."""
    out = io.StringIO()
    status = main([str(a) for a in argv], out=out, clock=clock)
    return status, out.getvalue()


@pytest.fixture
def store(tmp_path, clock):
    """default: 'soon' (ttl 10 s), 'later' (ttl 100 s, big), 'plain'; sessions
    (default TTL 60 s): 's1'."""
    path = str(tmp_path / "store")
    with kvstore.open(path, clock=clock, ttl_sweep_interval=0) as db:
        db.put("soon", {"v": 1}, ttl=10)
        db.put("later", {"text": "agent memory " * 100}, ttl=100)
        db.put("plain", [1, 2])
        db.namespace("sessions", ttl=60).put("s1", "hello")
    return path


def contents(clock, path):
    """{(namespace, key): (value, expiry)} of every live value, on clock."""
    out = {}
    with kvstore.open(path, readonly=True, clock=clock) as db:
        for ns in db.namespaces():
            handle = db if ns == "default" else db.namespace(ns)
            for key, value in handle.items():
                out[(ns, key)] = (value, handle.expiry(key))
    return out


def test_inspect_shows_the_ttl_prefix_and_expiry(store, clock):
    status, text = run(clock, ["inspect", store, "soon"])
    assert status == 0
    assert "22-byte TTL prefix + 18-byte header" in text
    assert "2027-01-15T08:00:10.000Z (1800000010.000), in 10.000 s; ttl 10 s" in text
    status, text = run(clock, ["inspect", store, "soon", "--json"])
    doc = json.loads(text)
    assert doc["ttl_prefix_size"] == 22 and doc["header"]["version"] == 3  # a log: keyed records
    assert doc["expiry"] == {"expires_at": T0 + 10, "expires_at_utc": "2027-01-15T08:00:10.000Z",
                             "expires_in": 10.0, "ttl": 10.0, "expired": False}
    assert doc["value"] == {"v": 1}
    assert json.loads(run(clock, ["inspect", store, "plain", "--json"])[1])["expiry"] is None
    clock.now += 10
    status, text = run(clock, ["inspect", store, "soon"])  # the stored record, still there until swept
    assert status == 0 and "EXPIRED 0.000 s ago" in text


def test_get_ttl(store, clock, capsys):
    assert json.loads(run(clock, ["get", store, "soon", "--ttl"])[1])["expires_in"] == 10.0
    assert run(clock, ["get", store, "plain", "--ttl"]) == (0, "null\n")
    assert json.loads(run(clock, ["get", store, "-n", "sessions", "s1", "--ttl"])[1])["ttl"] == 60.0
    clock.now += 10
    assert run(clock, ["get", store, "soon", "--ttl"])[0] == 1
    assert run(clock, ["get", store, "soon"])[0] == 1
    assert "not found" in capsys.readouterr().err


def test_put_ttl(store, clock, capsys):
    assert run(clock, ["put", store, "k", "v", "--ttl", "5"])[0] == 0
    assert run(clock, ["put", store, "-n", "sessions", "d", "v"])[0] == 0  # the namespace's default
    assert run(clock, ["put", store, "-n", "sessions", "f", "v", "--ttl", "inf"])[0] == 0
    assert run(clock, ["put", store, "k2", "v", "--ttl", "-1"])[0] == 2
    assert "ttl must be > 0" in capsys.readouterr().err
    got = contents(clock, store)
    assert got[("default", b"k")] == ("v", (T0 + 5, 5))
    assert got[("sessions", b"d")] == ("v", (T0 + 60, 60))
    assert got[("sessions", b"f")] == ("v", None)
    assert ("default", b"k2") not in got


def test_check_and_stat_count_ttl_values(store, clock):
    clock.now += 10
    status, text = run(clock, ["check", store])
    assert status == 0
    assert text.splitlines()[-1] == ("checked 4 values (3 with a TTL, 1 of them expired) in 2 namespaces, "
                                     "0 dictionaries: all good")
    doc = json.loads(run(clock, ["check", store, "--json"])[1])
    assert doc["ok"] and doc["ttl_values"] == 3 and doc["expired_values"] == 1
    assert doc["namespaces"]["default"] == {"values": 3, "bad": 0, "ttl_values": 2, "expired": 1}
    doc = json.loads(run(clock, ["stat", store, "--json"])[1])
    d, s = doc["namespaces"]["default"], doc["namespaces"]["sessions"]
    assert (d["entries"], d["ttl_values"], d["expired_values"], d["default_ttl"]) == (3, 2, 1, None)
    assert (s["ttl_values"], s["default_ttl"]) == (1, 60.0)
    assert d["unreadable_headers"] == 0
    with kvstore.open(store, clock=clock, readonly=True) as db:  # decoded: the headers' raw_len, behind the prefix
        dbi = db._engine.dbi("default", False)
        records = db._engine.read(lambda txn: [bytes(r) for _, r in txn.cursor(db=dbi)])
    at = [22 if r[0] == 2 else 0 for r in records]
    assert d["decoded_bytes"] == sum(int.from_bytes(r[a + 2:a + 6], "little") for r, a in zip(records, at))
    # TTL values need format 2; a store with the write-ahead log (which has
    # TTL values too) is format 4 (3 and keyed records)
    has_log = os.path.exists(os.path.join(store, "data.wal"))
    assert has_log == kvstore.Options().wal
    assert doc["environment"]["format_version"] == str(KEYED_STORE_FORMAT if has_log else TTL_STORE_FORMAT)
    status, text = run(clock, ["stat", store])
    assert status == 0 and "ttl/expired" in text
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert lines["default"][-2:] == ["2/1", "-"] and lines["sessions"][-2:] == ["60", "s"]


def test_check_reports_a_damaged_prefix_and_missing_metadata(store, clock):
    env = lmdb.open(store, max_dbs=10)
    with env.begin(write=True) as txn:
        dbi = env.open_db(b"default", txn=txn)
        record = bytearray(txn.get(b"soon", db=dbi))
        record[4] ^= 0x20
        txn.put(b"soon", bytes(record), db=dbi)
        txn.delete(b"ttl:sessions", db=env.open_db(b"__kvstore__", txn=txn))
    env.close()
    status, text = run(clock, ["check", store])
    assert status == 1
    assert "BAD  namespace 'default'  key 'soon': TTL prefix: the TTL prefix fails its check" in text
    assert "BAD  namespace 'sessions': holds TTL values but has no ttl: key" in text


def test_jsonl_dump_keeps_ttls_and_leaves_expired_values_out(store, clock, tmp_path):
    clock.now += 10  # 'soon' has expired
    status, text = run(clock, ["dump", store])
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0] == {"kvstore": "kvstore-jsonl", "version": 2, "namespace": "default", "count": 2}
    assert lines[1]["k"] == "later" and (lines[1]["expires_at"], lines[1]["ttl"]) == (T0 + 100, 100.0)
    assert lines[2] == {"k": "plain", "v": [1, 2]}
    assert lines[3] == {"kvstore": "kvstore-jsonl", "version": 2, "namespace": "sessions", "count": 1,
                        "default_ttl": 60.0}
    assert (lines[4]["expires_at"], lines[4]["ttl"]) == (T0 + 60, 60.0)
    # a section without TTLs stays version 1: kvstore without TTL loads it
    with kvstore.open(store, clock=clock) as db:
        db.namespace("notes").put("n", 1)
    notes = run(clock, ["dump", store, "-n", "notes"])[1].splitlines()
    assert json.loads(notes[0])["version"] == 1


@pytest.mark.parametrize("fmt", ["jsonl", "mdb"])
def test_dump_load_round_trip_keeps_expiry_and_defaults(store, clock, tmp_path, fmt):
    dump = str(tmp_path / f"dump.{fmt}")
    assert run(clock, ["dump", store, "--format", fmt, "-o", dump])[0] == 0
    want = contents(clock, store)
    copy = str(tmp_path / "copy")
    status, text = run(clock, ["load", copy, "-i", dump])
    assert status == 0 and "namespace 'sessions': default TTL 60 s, from the dump" in text
    assert contents(clock, copy) == want
    with kvstore.open(copy, clock=clock) as db:
        assert db.namespace("sessions").default_ttl == 60
        assert db._engine.ttl.namespaces == {"default", "sessions"}
    clock.now += 10  # loaded later: 'soon' has expired meanwhile and is left out
    later = str(tmp_path / "later")
    status, text = run(clock, ["load", later, "-i", dump])
    assert "loaded 2 records into namespace 'default'; 1 expired value left out" in text
    assert ("default", b"soon") not in contents(clock, later)
    assert run(clock, ["check", later])[0] == 0


def test_load_keeps_the_stores_own_default_ttl(store, clock, tmp_path):
    dump = str(tmp_path / "dump.jsonl")
    run(clock, ["dump", store, "-n", "sessions", "-o", dump])
    other = str(tmp_path / "other")
    with kvstore.open(other, clock=clock) as db:
        db.namespace("sessions", ttl=5)
    status, text = run(clock, ["load", other, "-i", dump])
    assert "namespace 'sessions': kept its default TTL of 5 s (the dump's is 60 s" in text
    with kvstore.open(other, clock=clock) as db:
        sessions = db.namespace("sessions")
        assert sessions.default_ttl == 5 and sessions.expiry("s1") == (T0 + 60, 60)


def test_load_refuses_bad_ttl_fields(tmp_path, clock, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kvstore":"kvstore-jsonl","version":2,"namespace":"default","count":1}\n'
                   '{"k":"a","v":1,"expires_at":1800000100,"ttl":-5}\n')
    assert run(clock, ["load", str(tmp_path / "s"), "-i", str(bad)])[0] == 2
    assert "line 2: ttl must be a positive number of seconds" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before a store was created


def test_compact_drops_expired_values(store, clock, tmp_path):
    with kvstore.open(store, clock=clock, ttl_sweep_interval=0) as db:
        db.put_many({f"bulk{i:04d}": "x" * 300 for i in range(500)}, ttl=5)
    clock.now += 10
    dest = str(tmp_path / "compacted")
    status, text = run(clock, ["compact", store, "-o", dest, "--json"])
    doc = json.loads(text)
    assert status == 0 and doc["expired_dropped"] == 501  # bulk and 'soon'
    assert doc["dest_bytes"] < doc["source_bytes"] / 2
    assert contents(clock, dest) == contents(clock, store)
    with kvstore.open(dest, clock=clock, readonly=True) as db:
        dbi = db._engine.dbi("default", False)
        records = db._engine.read(lambda txn: txn.stat(dbi)["entries"])
        assert records == 2  # physically gone, not just invisible
        assert db.namespace("sessions").default_ttl == 60
    assert run(clock, ["check", dest])[0] == 0
    status, text = run(clock, ["compact", store, "-o", str(tmp_path / "again")])
    assert "dropped 501 expired values" in text
