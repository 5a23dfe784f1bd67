"""The commands on a store with a write-ahead log: writes another process
acknowledged and LMDB does not hold yet (they are only in data.wal) are
seen by the commands that read LMDB directly (dump, check, stat, backup,
compact: they apply the log first), `kvstore checkpoint` leaves data.mdb
holding all of them (for LMDB's own tools), and `kvstore stat` shows the
log. Real stores and processes; no timing asserted."""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap

import lmdb
import pytest

import kvstore
from kvstore.cli import main
from kvstore.commands import stat as stat_command
from kvstore.layout import META_DB

from test_cli import contents

# Writes that stay in the log: applies and syncs only when asked. The child
# reports "ready" once every put returned (acknowledged), then waits.
WRITER = textwrap.dedent("""
    import sys, kvstore
    db = kvstore.open(sys.argv[1], wal=True, apply_interval=3600, flush_interval=3600)
    for i in range(40):
        db.put(f"k{i:03d}", {"i": i, "text": "x" * i})
    db.put("k005", "replaced")
    db.delete("k006")
    sessions = db.namespace("sessions")
    for i in range(10):
        sessions.put(f"s{i}", i)
    db.put("last", "durable", durable=True)
    print("ready", flush=True)
    sys.stdin.read()
    db.close()
""")


def expected() -> dict:
    out = {("default", f"k{i:03d}"): {"i": i, "text": "x" * i} for i in range(40)}
    out[("default", "k005")] = "replaced"
    del out[("default", "k006")]
    out.update({("sessions", f"s{i}"): i for i in range(10)})
    out[("default", "last")] = "durable"
    return out


def run(argv):
    out = io.StringIO()
    status = main([str(a) for a in argv], out=out)
    return status, out.getvalue()


def raw_keys(path) -> dict:
    """{namespace: set of keys} in data.mdb, read with py-lmdb alone (as an
    LMDB tool sees the file: without the log)."""
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=64, subdir=True)
    try:
        with env.begin() as txn:
            names = [bytes(k).decode() for k, _ in txn.cursor()
                     if bytes(k) != META_DB]
            out = {}
            for name in names:
                dbi = env.open_db(name.encode(), txn=txn, create=False)
                out[name] = {bytes(k).decode() for k, _ in txn.cursor(db=dbi)}
            return out
    finally:
        env.close()


@pytest.fixture(params=["live", "killed"])
def logged(request, tmp_path):
    """A store whose newest writes are acknowledged and only in the log: its
    writer still runs ("live") or was SIGKILLed ("killed")."""
    path = str(tmp_path / "store")
    with kvstore.open(path, wal=True) as db:
        db.put("before", "applied")
    child = subprocess.Popen([sys.executable, "-c", WRITER, path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        if request.param == "killed":
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        # the premise: LMDB alone does not have them
        assert "last" not in raw_keys(path).get("default", set())
        yield path
    finally:
        if child.poll() is None:
            child.communicate("", timeout=60)


def test_dump_sees_the_writes_still_in_the_log(logged):
    status, text = run(["dump", logged])
    assert status == 0
    got = {}
    ns = "default"
    for line in text.splitlines():
        doc = json.loads(line)
        if "namespace" in doc:
            ns = doc["namespace"]
        else:
            got[(ns, doc["k"])] = doc["v"]
    assert got == {("default", "before"): "applied", **expected()}


def test_check_and_stat_count_the_writes_still_in_the_log(logged):
    status, text = run(["check", logged, "--json"])
    assert status == 0
    doc = json.loads(text)
    assert doc["ok"] and doc["namespaces"]["default"]["values"] == 1 + 40 - 1 + 1
    assert doc["namespaces"]["sessions"]["values"] == 10
    doc = json.loads(run(["stat", logged, "--json"])[1])
    assert doc["namespaces"]["default"]["entries"] == 41
    assert doc["namespaces"]["sessions"]["entries"] == 10


@pytest.mark.parametrize("command", ["backup", "compact"])
def test_copies_hold_the_writes_still_in_the_log(logged, tmp_path, command):
    dest = str(tmp_path / "copy")
    argv = [command, logged, dest] if command == "backup" else [command, logged, "-o", dest]
    assert run(argv)[0] == 0
    assert not os.path.exists(os.path.join(dest, "data.wal"))  # data.mdb alone holds it all
    want = {(ns, k.encode()): (type(v).__name__, repr(v))
            for (ns, k), v in {("default", "before"): "applied", **expected()}.items()}
    assert contents(dest) == want


def test_checkpoint_leaves_data_mdb_holding_every_write(logged):
    status, text = run(["checkpoint", logged])
    assert status == 0 and "data.mdb holds every acknowledged write" in text
    keys = raw_keys(logged)
    assert keys["default"] == {"before"} | {k for ns, k in expected() if ns == "default"}
    assert keys["sessions"] == {f"s{i}" for i in range(10)}
    doc = json.loads(run(["stat", logged, "--json"])[1])["log"]
    assert doc["unapplied_bytes"] == 0 and doc["unapplied_records"] == 0


def test_stat_shows_the_log(tmp_path):
    path = str(tmp_path / "store")
    db = kvstore.open(path, wal=True, apply_interval=3600, flush_interval=3600)
    try:
        db.put("a", 1)
        db.put("b", 2)
        db.put_many({"c": 3, "d": 4})  # one record
        numbers = db.stats()["log"]
        with kvstore.open(path, readonly=True) as ro:
            log = stat_command.collect(ro)["log"]
        assert log["unapplied_records"] == 3
        assert log["unapplied_bytes"] == numbers["log_unapplied_bytes"] > 0
        assert log["unsynced_bytes"] == numbers["log_unsynced_bytes"] > 0
        assert log["generation"] == numbers["log_generation"]
        assert log["file_size"] == numbers["log_bytes"] == os.path.getsize(os.path.join(path, "data.wal"))
        assert log["used_bytes"] == log["unapplied_bytes"]  # nothing of this generation applied yet
        line = stat_command._log_line(log)
        assert "3 records" in line and "not yet applied to data.mdb" in line and "not yet synced" in line
        db.flush()  # syncs and applies
        with kvstore.open(path, readonly=True) as ro:
            log = stat_command.collect(ro)["log"]
        assert (log["unapplied_records"], log["unapplied_bytes"], log["unsynced_bytes"]) == (0, 0, 0)
    finally:
        db.close()
    status, text = run(["stat", path])
    assert status == 0
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert lines["log"].split(None, 1)[1] == (
        "1.0 MiB file, generation 2, 0 B in use; 0 records (0 B) not yet applied to data.mdb; "
        "all of it synced")
    assert lines["format"].split()[1] == "4"  # a log, and keyed records


def test_stat_of_a_store_without_a_log(tmp_path):
    path = str(tmp_path / "store")
    with kvstore.open(path, wal=False) as db:
        db.put("a", 1)
    status, text = run(["stat", path])
    assert status == 0
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert lines["log"].split(None, 1)[1] == "none (format below 3: writes go to data.mdb directly)"
    assert json.loads(run(["stat", path, "--json"])[1])["log"] is None


def test_checkpoint_of_a_store_without_a_log_leaves_it_without_one(tmp_path):
    # checkpoint applies a log; it never adds one (that would make the store
    # format 3, which kvstore versions without the log refuse), whatever the
    # default of Options.wal
    path = str(tmp_path / "store")
    with kvstore.open(path, wal=False) as db:
        db.put("a", 1, ttl=60)  # format 2
    status, text = run(["checkpoint", path])
    assert status == 0
    assert text == f"{path}: no write-ahead log (store format below 3); data.mdb holds everything\n"
    assert sorted(os.listdir(path)) == ["cache.stats", "data.mdb", "lock.mdb"]  # no data.wal
    assert json.loads(run(["stat", path, "--json"])[1])["environment"]["format_version"] == "2"
    assert json.loads(run(["checkpoint", path, "--json"])[1]) == {"path": path, "log": False, "applied_bytes": 0}


def _damage_log_record(path: str, nth: int) -> int:
    """Flip a byte inside the nth unapplied record of the log; its position."""
    from kvstore import wal

    log = wal.Log(path, readonly=True, create=False, initial_size=0, max_size=0)
    try:
        st = log.state()
        at = st.applied
        for i, (end, _sum, _payload) in enumerate(log.records(st.gen, st.applied, st.applied_sum, st.end)):
            if i == nth:
                break
            at = end
        else:
            raise AssertionError("the log holds fewer records")
    finally:
        log.close()
    spot = at + (end - at) // 2
    with open(os.path.join(path, "data.wal"), "r+b") as f:
        f.seek(spot)
        byte = f.read(1)
        f.seek(spot)
        f.write(bytes([byte[0] ^ 0xFF]))
    return spot


def test_check_reports_a_damaged_log_instead_of_failing_on_it(logged):
    _damage_log_record(logged, 7)
    status, text = run(["check", logged])
    assert status == 1
    assert "BAD  write-ahead log" in text and "damaged at byte" in text
    assert "first 7 unapplied records are intact" in text and "were not read" in text
    status, text = run(["check", logged, "--json"])
    doc = json.loads(text)
    assert status == 1 and not doc["ok"] and not doc["records_checked"]
    assert doc["log"]["records"] == 7 and not doc["log"]["ok"] and "damaged at byte" in doc["log"]["problem"]
    # and the store itself refuses to open past it, naming the byte
    with pytest.raises(kvstore.CorruptionError, match="damaged at byte"):
        kvstore.open(logged, readonly=True).close()


def test_check_reports_the_intact_log_it_applied(logged):
    status, text = run(["check", logged, "--json"])
    doc = json.loads(text)
    assert status == 0 and doc["ok"]
    assert doc["log"]["ok"] and doc["log"]["records"] >= 1 and doc["log"]["bytes"] > 0
