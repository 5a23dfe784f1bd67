"""The benchmark runner (bench/run.py) runs, reports and skips as it says.

No timing is asserted: these tests check that workloads run on a tiny data
set, write their JSON, skip a missing peer or a missing kvstore feature with
a note, and that kvstore and sqlite3 play the same agent turns. They must
pass without the bench extra installed (CI does not install it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

import kvstore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
sys.path.insert(0, BENCH)

import data as bench_data  # noqa: E402
import run as bench_run  # noqa: E402
import sessions  # noqa: E402
from harness import WORKLOADS, Context, Unavailable, Workload  # noqa: E402

RECORDS = 300


@pytest.fixture(scope="module")
def records():
    return bench_data.generate(RECORDS, seed=3)


@pytest.fixture(scope="module")
def data_file(records, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench-data") / "records.jsonl"
    with open(path, "w") as f:
        for key, value in records:
            f.write(json.dumps({"key": key, "value": value}) + "\n")
    return str(path)


def run_bench(tmp_path, data_file, *args):
    out = tmp_path / "out.json"
    cmd = [sys.executable, os.path.join(BENCH, "run.py"), "--quick", "--repeats", "1", "--data", data_file,
           "--records", str(RECORDS), "--sync-ops", "20", "--tmpdir", str(tmp_path), "--json", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out) as f:
        return json.load(f), proc.stdout


def by_name(doc):
    return {r["name"]: r for r in doc["results"]}


def test_fillseq_runs_and_writes_json(tmp_path, data_file):
    doc, stdout = run_bench(tmp_path, data_file, "--only", "fillseq")
    r = by_name(doc)["fillseq"]
    assert r["ops"] == RECORDS and r["skipped"] is None and r["ops_per_sec"] > 0
    assert r["latency_us"]["calls"] == RECORDS
    assert doc["data"]["records"] == RECORDS and doc["mode"] == "quick"
    assert "TARGETS" in stdout
    assert not [p for p in os.listdir(tmp_path) if p.startswith("kvbench-")], "temporary stores left behind"


def test_peers_run_or_skip_with_a_note(tmp_path, data_file):
    names = ["diskcache-set", "sqlitedict-set", "lmdbm-set", "dbm-set"]
    doc, _ = run_bench(tmp_path, data_file, "--only", ",".join(names))
    results = by_name(doc)
    for name in names:
        r = results[name]
        assert (r["skipped"] is None and r["ops"] > 0) or "not installed" in r["skipped"], r


def test_readhot_needs_the_cache_and_keeps_within_it(tmp_path, data_file):
    doc, _ = run_bench(tmp_path, data_file, "--only", "readhot,readhot-uncached")
    results = by_name(doc)
    assert results["readhot-uncached"]["ops"] == doc["data"]["reads"]
    hot = results["readhot"]
    if "cache_entries" in {f.name for f in dataclasses.fields(kvstore.Options)}:
        assert hot["skipped"] is None, hot["skipped"]
        assert hot["extra"]["within_limit"] is True
    else:  # never run uncached in place of the cached reads
        assert "no read cache" in hot["skipped"]


def test_hotset_reads_both_data_sets_cached_and_uncached(tmp_path, data_file):
    doc, stdout = run_bench(tmp_path, data_file, "--only", "hotset")
    results = by_name(doc)
    for data_set in ("corpus", "shapes"):
        hit, uncached = results[f"hotset-hit-{data_set}"], results[f"hotset-uncached-{data_set}"]
        assert hit["ops"] == uncached["ops"] == doc["data"]["reads"]
        assert hit["extra"]["found"] == hit["ops"]
        assert hit["extra"]["timed"]["hit_ratio"] == 1.0
    assert "hotset-hit-shapes >= 3x hotset-uncached-shapes" in stdout


def test_sections_on_tiny_data(tmp_path, data_file):
    doc, stdout = run_bench(tmp_path, data_file, "--only", "scan,mixed,codec,ratio,scale", "--scale", "200,400")
    results = by_name(doc)
    assert results["scan"]["extra"]["rows"] > 0
    assert results["mixed"]["ops"] == doc["data"]["turns"]
    assert {"native", "python", "zstandard"} >= {c["backend"] for c in doc["codec"]} >= {"python", "zstandard"}
    assert [s["records"] for s in doc["scale"]] == [200, 400]
    assert "SCALE" in stdout and "SIZE" in stdout


def tiny_context(records, tmp_path) -> Context:
    return Context(records=records, random_order=records, sorted_order=records, sync_records=records[:20],
                   group_records=records[:20], threads=2, seed=1, tmp_root=str(tmp_path), quick=True,
                   base=records, reads=50, turns=30, sync_turns=10, scans=20)


def test_missing_module_and_unavailable_are_skipped_not_failed(records, tmp_path):
    def unavailable(ctx):
        raise Unavailable("not here")

    ws = [Workload("needs-a-module", lambda ctx: None, "doc", "peer", ("no_such_module_for_bench_tests",)),
          Workload("cannot-run", unavailable, "doc", "kvstore")]
    final, _ = bench_run.run_all(ws, tiny_context(records, tmp_path), repeats=2)
    skipped = {r.name: r.skipped for r in final}
    assert skipped == {"needs-a-module": "no_such_module_for_bench_tests not installed",
                       "cannot-run": "NOT RUN: not here"}


def test_kvstore_and_sqlite_play_the_same_turns(records, tmp_path):
    """The mixed workloads compare like with like: after the same turns, both stores hold the same data."""
    import msgpack

    import peers
    import workloads

    ctx = tiny_context(records, tmp_path)
    plan = sessions.turns(ctx)
    assert len(plan) == 30 and len({t.episode[0] for t in plan}) == 30

    with kvstore.open(str(tmp_path / "kv")) as db:
        db.put_many(records)
        read = [workloads._kv_turn(db, t, durable=False) for t in plan]
        db.flush()
        kv = {k.decode(): v for k, v in db.scan()}

    con = peers._sqlite(str(tmp_path), "NORMAL")
    con.executemany("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", ((k, msgpack.packb(v)) for k, v in records))
    read_sq = [peers._sqlite_turn(con, t, False, msgpack.packb, msgpack.unpackb) for t in plan]
    sq = {k: msgpack.unpackb(v, raw=False) for k, v in con.execute("SELECT k, v FROM kv ORDER BY k")}
    con.close()
    assert read == read_sq and 0 < max(read) <= sessions.LAST_MESSAGES
    assert kv == sq
    metas = [v for k, v in kv.items() if k.startswith("meta:")]
    assert any(e.get("event") == "turn" for m in metas for e in m.get("event_log", []))


def test_every_workload_is_in_the_docstring():
    import peers  # noqa: F401 - registers the peers

    for w in WORKLOADS.values():
        assert w.name.replace("{T}", "8") in bench_run.__doc__, w.name
