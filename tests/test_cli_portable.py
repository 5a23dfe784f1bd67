"""The commands' paths through the public Store API (kvstore/commands/
_portable.py), which they take for an etcd URL, run here on a local store
beside the LMDB paths: where both can say the same, they must."""

from __future__ import annotations

import io
import json
import math

import pytest

import kvstore
from kvstore.cli import main
from kvstore.commands import _portable
from kvstore.commands._common import Progress
from kvstore.commands._loadplan import open_input, route, scan_jsonl
from kvstore.commands.load import jsonl_records

from test_cli import _corrupt

NOW = 1_800_000_000.0


def clock():
    return NOW


def run(argv):
    out = io.StringIO()
    status = main([str(a) for a in argv], out=out, clock=clock)
    return status, out.getvalue()


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "store")
    with kvstore.open(path, clock=clock) as db:
        db.put_many({f"k{i:03d}": {"i": i, "nan": math.nan, "raw": b"\x00\xff"} for i in range(40)})
        db.put("soon", "gone", ttl=30)
        db.put("later", [1, 2], ttl=3600)
        agents = db.namespace("agents", ttl=600)
        agents.put("a1", "default ttl")
        agents.put("a2", "kept forever", ttl=math.inf)
        db.namespace("empty")
        db.flush()
    return path


def test_dump_through_the_api_writes_the_local_dumps_lines(store):
    status, local = run(["dump", store])
    assert status == 0
    out = io.StringIO()
    with kvstore.open(store, readonly=True, clock=clock) as db:
        n = _portable.dump_jsonl(db, db.namespaces(), out.write, Progress("dump", stream=io.StringIO()))
    assert out.getvalue() == local
    assert n == 44


def test_counts_through_the_api_are_ls_counts(store):
    status, text = run(["ls", store, "--json"])
    with kvstore.open(store, readonly=True, clock=clock) as db:
        assert [{"namespace": n, "entries": c} for n, c in _portable.counts(db)] == json.loads(text)


def test_check_through_the_api_names_each_damaged_key(store):
    _corrupt(store, b"k007")
    _corrupt(store, b"a1", namespace="agents")
    with kvstore.open(store, readonly=True, clock=clock, cache_entries=0) as db:
        per_ns, bad = _portable.check_records(db, Progress("check", stream=io.StringIO()))
    assert per_ns["default"] == {"values": 42, "bad": 1, "ttl_values": 2, "expired": 0}
    assert per_ns["agents"]["values"] == 2 and per_ns["empty"]["values"] == 0
    assert sorted((ns, key) for ns, key, _ in bad) == [("agents", b"a1"), ("default", b"k007")]
    assert all("checksum mismatch" in reason for _, _, reason in bad)


def test_load_through_the_api_restores_values_ttls_and_default_ttls(store, tmp_path):
    status, _ = run(["dump", store, "-o", tmp_path / "all.jsonl"])
    assert status == 0
    binary = open_input(str(tmp_path / "all.jsonl"))
    plan = scan_jsonl(binary)
    route(plan, None)
    copy = str(tmp_path / "copy")
    with kvstore.open(copy, clock=clock) as db:
        for s in plan.sections:
            if s.default_ttl:
                _portable.handle_of(db, s.dest).set_default_ttl(s.default_ttl / 1000)
        items = ((dest, key, value, None if e is None else e[0] / 1000)
                 for _, dest, key, value, e in jsonl_records(binary, plan))
        tally = _portable.load_records(db, [s.dest for s in plan.sections], items, True,
                                       Progress("load", stream=io.StringIO()))
    binary.close()
    assert tally.loaded == {"agents": 2, "default": 42, "empty": 0}
    assert run(["dump", copy]) == run(["dump", store])


def test_commands_that_read_lmdb_refuse_an_etcd_url(capsys):
    assert run(["inspect", "etcd://127.0.0.1:1/x", "k"])[0] == 2
    err = capsys.readouterr().err
    assert "kvstore inspect works on a local store directory" in err and "check, copy, del, dump" in err
