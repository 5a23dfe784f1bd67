"""The commands on an etcd URL (a real 3-member cluster: the session's
`etcd_cluster` fixture): what each prints, what each refuses, and `kvstore
copy` from a local store to etcd and back."""

from __future__ import annotations

import json
import re
import time

import pytest

import kvstore

from test_cli_copy import contents, fill, same
from test_cli_keys import Clock, run


@pytest.fixture
def clock():
    """A clock the test moves, starting at the wall clock's time: the local
    stores' expiries must mean the same moments as etcd's leases."""
    c = Clock()
    c.now = time.time()
    return c


def _put(remote, full, record):
    """Write a raw record under an etcd key, around kvstore's codec."""
    from kvstore.etcd.client import rpc

    remote.client.call("KV", "Put", rpc.PutRequest(key=full, value=record), doing="a test's damage", write=True)


def test_copy_moves_a_store_to_etcd_and_back(tmp_path, clock, etcd_url):
    src, back = str(tmp_path / "src"), str(tmp_path / "back")
    fill(src, clock)
    status, text = run(["copy", src, etcd_url], clock)
    assert status == 0, text
    lines = text.splitlines()
    assert lines[:3] == ["  namespace 'agents': 301 records, " + lines[0].split(", ")[1],
                         "  namespace 'default': 300 records, " + lines[1].split(", ")[1],
                         "  namespace 'empty': 0 records, 0 B"]
    assert re.fullmatch(rf"copied 3 namespaces, 601 records \([0-9.]+ KiB of values\) from {src} to "
                        rf"{re.escape(etcd_url)} in [0-9.]+ s \([0-9,]+ records/s; writing [0-9.]+ s, checking "
                        r"[0-9.]+ s\)", lines[3])
    assert lines[4:] == [f"read back 601 records from {etcd_url} and compared with the source: all match"]
    status, text = run(["copy", etcd_url, back], clock)
    assert status == 0 and text.splitlines()[-1].endswith("all match"), text
    original = contents(src, clock)
    same(original, contents(etcd_url, clock), slack=2.0)
    same(original, contents(back, clock), slack=2.0)
    assert contents(back, clock)["agents"][1] == 600.0


def test_copy_into_a_store_on_etcd_that_holds_records_backs_it_up_as_a_dump(tmp_path, clock, etcd_url, capsys):
    src, saved = str(tmp_path / "src"), tmp_path / "saved"
    fill(src, clock, n=5)
    assert run(["put", etcd_url, "mine", "before the copy"], clock) == (0, "")
    assert run(["copy", src, etcd_url], clock)[0] == 2
    assert "holds 1 record in 1 namespace; give --backup DIR" in capsys.readouterr().err
    status, text = run(["copy", src, etcd_url, "--backup", saved], clock)
    assert status == 0
    assert text.splitlines()[0] == (f"backed up {etcd_url} (1 record) to {saved / 'dump.jsonl'} (jsonl; "
                                    f"`kvstore load` restores it)")
    lines = (saved / "dump.jsonl").read_text().splitlines()
    assert json.loads(lines[-1]) == {"k": "mine", "v": "before the copy"}


def test_put_get_keys_ls_del_on_an_etcd_url(clock, etcd_url, capsys):
    assert run(["put", etcd_url, "session:1", '{"turn": 1}', "--json"], clock) == (0, "")
    assert run(["put", etcd_url, "session:2", "two", "--ttl", "600"], clock) == (0, "")
    assert run(["put", etcd_url, "-n", "notes", "n1", "a note"], clock) == (0, "")
    assert run(["get", etcd_url, "session:1"], clock) == (0, '{"turn": 1}\n')
    status, text = run(["get", etcd_url, "session:2", "--ttl"], clock)
    doc = json.loads(text)
    assert status == 0 and doc["ttl"] == 600 and 595 < doc["expires_in"] <= 600 and doc["expired"] is False
    assert run(["get", etcd_url, "--prefix", "session:"], clock) == (
        0, '{"k":"session:1","v":{"turn":1}}\n{"k":"session:2","v":"two"}\n')
    assert run(["keys", etcd_url, "session:*"], clock) == (0, "session:1\nsession:2\n")
    assert run(["keys", etcd_url, "--count"], clock) == (0, "2\n")
    assert run(["ls", etcd_url], clock) == (0, "default           2\nnotes             1\n")
    assert run(["get", etcd_url, "-n", "nowhere", "x"], clock)[0] == 1
    assert "no namespace 'nowhere'" in capsys.readouterr().err
    assert run(["del", etcd_url, "session:1", "session:2", "absent"], clock) == (
        1, "deleted 2 keys from namespace 'default'\n")
    assert "key 'absent' not found" in capsys.readouterr().err
    assert run(["get", etcd_url, "session:1"], clock)[0] == 1
    assert run(["ls", etcd_url, "--json"], clock) == (
        0, '[\n  {\n    "namespace": "default",\n    "entries": 0\n  },\n  {\n    "namespace": "notes",\n'
           '    "entries": 1\n  }\n]\n')


def test_stat_on_an_etcd_url(clock, etcd_url, capsys):
    with kvstore.open(etcd_url) as db:
        db.namespace("agents", ttl=60).put_many({f"a{i}": i for i in range(3)}, durable=True)
        db.put("k", "v", durable=True)
    status, text = run(["stat", etcd_url], clock)
    assert status == 0
    assert text == (f"store       {etcd_url}\n"
                    "engine      etcd (read through the Store API: no pages, files or log of its own to show)\n"
                    "entries     4 in 2 namespaces\n\n"
                    "namespace  entries  default ttl\n"
                    "agents           3         60 s\n"
                    "default          1            -\n")
    status, text = run(["stat", etcd_url, "--json"], clock)
    doc = json.loads(text)
    assert doc["namespaces"] == {"agents": {"entries": 3, "default_ttl": 60.0},
                                 "default": {"entries": 1, "default_ttl": None}}
    assert doc["engine"] == "etcd" and doc["dictionaries"] == []
    assert run(["stat", etcd_url, "--watch", "1"], clock)[0] == 2
    assert "etcdctl endpoint status" in capsys.readouterr().err


def test_dump_and_load_on_an_etcd_url_are_the_local_dump_and_load(tmp_path, clock, etcd_url):
    local = str(tmp_path / "local")
    with kvstore.open(local, clock=clock) as db:
        db.put_many({f"k{i:02d}": {"i": i, "raw": b"\x00\xff", "nan": float("nan")} for i in range(30)})
        db.namespace("notes").put("n", ["x"], durable=True)
    dump = tmp_path / "local.jsonl"
    assert run(["dump", local, "-o", dump], clock)[0] == 0
    status, text = run(["load", etcd_url, "-i", dump], clock)
    assert (status, text) == (0, "loaded 30 records into namespace 'default'\nloaded 1 record into namespace 'notes'\n")
    assert run(["dump", etcd_url], clock) == run(["dump", local], clock)
    status, text = run(["dump", etcd_url, "-n", "notes", "-o", tmp_path / "notes.jsonl"], clock)
    assert (status, text) == (0, f"dumped 1 record of namespace 'notes' to {tmp_path / 'notes.jsonl'} (jsonl)\n")
    status, text = run(["load", etcd_url, "-i", dump, "--no-overwrite"], clock)
    assert text.splitlines()[0] == "loaded 0 records into namespace 'default'; 30 keys already present kept (--no-overwrite)"


def test_dump_and_load_keep_ttls_on_an_etcd_url(tmp_path, clock, etcd_url):
    with kvstore.open(etcd_url) as db:
        db.namespace("agents", ttl=600).put("a", 1, durable=True)
        db.put("t", "x", ttl=300, durable=True)
        db.put("p", "y", durable=True)
    status, text = run(["dump", etcd_url], clock)
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0] == {"kvstore": "kvstore-jsonl", "version": 2, "namespace": "agents", "count": 1, "default_ttl": 600.0}
    assert lines[1]["k"] == "a" and lines[1]["ttl"] == 600.0
    assert lines[3]["k"] == "p" and "ttl" not in lines[3]
    assert lines[4]["k"] == "t" and lines[4]["ttl"] == 300.0 and abs(lines[4]["expires_at"] - time.time() - 300) < 5
    local = str(tmp_path / "local")
    (tmp_path / "d.jsonl").write_text(text)
    assert run(["load", local, "-i", tmp_path / "d.jsonl"], clock)[1].splitlines()[-1] == \
        "namespace 'agents': default TTL 600 s, from the dump"
    with kvstore.open(local, readonly=True, clock=clock) as db:
        assert abs(db.expiry("t")[0] - time.time() - 300) < 5 and db.expiry("p") is None


def test_check_on_an_etcd_url_names_each_damaged_record(clock, etcd_url):
    with kvstore.open(etcd_url) as db:
        db.put_many({f"k{i}": {"i": i} for i in range(10)}, durable=True)
        db.namespace("other").put("x", "fine", ttl=60, durable=True)
        _put(db._remote, db._remote.keys.key("default", b"k3"), b"\x01not a record at all")
    status, text = run(["check", etcd_url], clock)
    lines = text.splitlines()
    assert status == 1
    assert lines[0].startswith("BAD  namespace 'default'  key 'k3': CorruptionError: ")
    assert lines[1].startswith("not checked: pages, log and metadata database")
    assert lines[2] == "checked 11 values (1 with a TTL) in 2 namespaces: 1 bad value"
    status, text = run(["check", etcd_url, "--json"], clock)
    doc = json.loads(text)
    assert doc["ok"] is False and doc["values"] == 11 and doc["bad"][0]["key"] == "k3" and doc["pages"] is None
    with kvstore.open(etcd_url) as db:
        db.put("k3", "repaired", durable=True)
    assert run(["check", etcd_url], clock)[1].splitlines()[-1] == "checked 11 values (1 with a TTL) in 2 namespaces: all good"


@pytest.mark.parametrize("argv, says", [
    (["dump", "URL", "--format", "mdb"], "--format mdb writes LMDB's stored records"),
    (["inspect", "URL", "k"], "kvstore inspect works on a local store directory"),
    (["compact", "URL", "-o", "OUT"], "kvstore compact works on a local store directory"),
])
def test_what_needs_lmdb_files_is_refused_on_an_etcd_url(argv, says, clock, etcd_url, tmp_path, capsys):
    argv = [etcd_url if a == "URL" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert run(argv, clock) == (2, "")
    assert says in capsys.readouterr().err


def test_load_of_an_mdb_dump_is_refused_on_an_etcd_url(tmp_path, clock, etcd_url, capsys):
    local = str(tmp_path / "local")
    with kvstore.open(local) as db:
        db.put("k", "v", durable=True)
    assert run(["dump", local, "--format", "mdb", "-o", tmp_path / "d.mdb"], clock)[0] == 0
    assert run(["load", etcd_url, "-i", tmp_path / "d.mdb"], clock) == (2, "")
    assert "load a jsonl dump" in capsys.readouterr().err


def test_del_of_more_keys_than_one_etcd_transaction_holds(clock, etcd_url):
    with kvstore.open(etcd_url) as db:
        for i in range(300):
            db.put(f"k{i:03d}", i)
        db.put("other", 1, durable=True)
    assert run(["del", etcd_url, "--prefix", "k"], clock) == (
        0, "deleted 300 keys from namespace 'default' in 3 etcd transactions (max_txn_ops=128)\n")
    assert run(["keys", etcd_url], clock) == (0, "other\n")


def test_an_unreachable_cluster_is_an_error_that_says_what_to_check(clock, capsys):
    pytest.importorskip("pyetcd", reason="the etcd extra is not installed: pip install -e '.[etcd]'")
    assert run(["ls", "etcd://127.0.0.1:1/x"], clock) == (2, "")
    err = capsys.readouterr().err
    assert err.startswith("kvstore: error: opening etcd://127.0.0.1:1/x: ") and "majority of its members" in err
