"""`kvstore stat`: the map size and readers it reports (issue 20), and where
the file's bytes go (pages by kind, fill, free pages, preallocated room;
issue 17). Real stores; no timing asserted."""

import io
import json
import os
import subprocess
import sys
import textwrap

import kvstore
from kvstore import engine
from kvstore.cli import main

MiB = 1 << 20
RECORDS = 2500


def stat(path, *more):
    out = io.StringIO()
    status = main(["stat", str(path), *more], out=out)
    assert status == 0
    return out.getvalue()


def grown_store(path) -> int:
    """A store that outgrew a 2 MiB map: closed, and the map size its writer had."""
    db = kvstore.open(str(path), map_size=2 * MiB)
    for i in range(RECORDS):
        db.put(b"k%05d" % i, os.urandom(1000).hex())  # ~2,000 bytes of msgpack, ~1,100 stored
    db.flush()
    map_size = engine.of(db).info()["map_size"]
    db.close()
    assert 2 * MiB < map_size < 64 * MiB  # it grew, and stays below a read-only open's default
    return map_size


def test_stat_shows_the_map_size_the_store_was_written_with(tmp_path):
    path = tmp_path / "store"
    map_size = grown_store(path)
    env = json.loads(stat(path, "--json"))["environment"]
    assert env["map_size"] == map_size
    assert env["map_used"] <= env["map_size"]
    pct = 100.0 * env["map_used"] / map_size
    assert f"{kvstore.commands._common.human_size(map_size)}, " in stat(path)
    assert f"({pct:.1f}%)" in stat(path)


def test_stat_counts_open_read_transactions_not_its_own_reader_slots(tmp_path):
    path = tmp_path / "store"
    with kvstore.open(str(path)) as db:
        db.put("k", "v", durable=True)
        db.get("k")
    assert json.loads(stat(path, "--json"))["environment"]["readers"] == 0
    assert "0 read transactions open" in stat(path)
    # another process holds a read transaction open while stat runs
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, lmdb
        env = lmdb.open({str(path)!r}, readonly=True, max_dbs=8, lock=True)
        txn = env.begin()
        print("reading", flush=True)
        sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "reading"
        assert json.loads(stat(path, "--json"))["environment"]["readers"] == 1
    finally:
        holder.communicate("")


def test_stat_accounts_for_every_page_of_the_file(tmp_path):
    path = tmp_path / "store"
    grown_store(path)
    doc = json.loads(stat(path, "--json"))
    env, pages = doc["environment"], doc["pages"]
    assert pages["total"] * env["page_size"] == env["map_used"]
    assert pages["total"] == pages["meta"] + pages["branch"] + pages["leaf"] + pages["overflow"] + pages["free"]
    assert pages["problems"] == 0
    assert 0 < pages["fill"] <= 1 and pages["overflow_fill"] is None  # no value needs an overflow run
    assert pages["bytes_per_entry"] == env["map_used"] / RECORDS
    assert env["preallocated_bytes"] == env["file_size"] - env["map_used"]
    assert 0 < doc["namespaces"]["default"]["fill"] <= 1
    text = stat(path)
    assert f"{pages['leaf']:,} leaf (" in text and "zero-filled past the last page" in text


def test_stat_counts_overflow_pages_and_how_full_they_are(tmp_path):
    path = tmp_path / "store"
    with kvstore.open(str(path), compression="none") as db:
        db.put("big", b"x" * 5000, durable=True)  # 5,018 stored bytes: a run of 2 pages of 4 KiB
    pages = json.loads(stat(path, "--json"))["pages"]
    assert pages["overflow"] == 2
    assert pages["overflow_fill"] == 1 - (2 * 4096 - 16 - 5018) / (2 * 4096)
