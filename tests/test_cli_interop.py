"""`kvstore dump/load --format mdb` against LMDB's own tools (mdb_dump,
mdb_load, mdb_stat from Debian's lmdb-utils): a store moves out through
the standard tools and back, byte for byte.

Needs the tools on PATH:  apt-get update && apt-get install -y lmdb-utils
"""

import os
import shutil
import subprocess

import pytest

import kvstore
from kvstore.cli import main

from test_cli import KEYS, VALUES, contents, run

pytestmark = pytest.mark.skipif(
    not (shutil.which("mdb_dump") and shutil.which("mdb_load")),
    reason="LMDB's tools are not installed (mdb_dump, mdb_load: apt-get install -y lmdb-utils)")


def tool(*argv, **kwargs):
    r = subprocess.run([str(a) for a in argv], capture_output=True, timeout=120, **kwargs)
    assert r.returncode == 0, (argv, r.stderr)
    return r


@pytest.fixture
def store(tmp_path):
    """Every kind of value and key, three namespaces, records compressed with
    a trained dictionary, and a namespace whose name sorts before __kvstore__."""
    path = str(tmp_path / "store")
    with kvstore.open(path) as db:
        for name, value in VALUES.items():
            db.put(name, value)
        for key, value in KEYS.items():
            db.put(key, value)
        msgs = db.namespace("messages")
        for i in range(60):
            msgs.put(f"m{i:04d}", {"role": "user", "content": f"please update the draft, item {i}, and "
                                                              f"confirm the contact details " * 3})
        db.train_dictionary("messages", samples=50)
        for i in range(60, 90):
            msgs.put(f"m{i:04d}", {"role": "assistant", "content": f"the draft is updated, item {i}; the "
                                                                   f"contact details are confirmed " * 3})
        db.namespace("Upper").put("k", "sorts before __kvstore__")
        db.flush()
    return path


def uses_dictionary(path) -> bool:
    _, text = run(["stat", path, "--json"])
    import json

    return json.loads(text)["namespaces"]["messages"]["dictionaries_in_use"] == {"1": 30}


def test_kvstore_mdb_dump_is_what_mdb_dump_writes(store, tmp_path):
    ours = tmp_path / "ours.txt"
    assert run(["dump", store, "--format", "mdb", "-o", ours])[0] == 0
    theirs = tool("mdb_dump", "-a", store).stdout
    assert ours.read_bytes() == theirs


def test_kvstore_dump_loads_with_mdb_load(store, tmp_path):
    dump = tmp_path / "d.txt"
    assert run(["dump", store, "--format", "mdb", "-o", dump])[0] == 0
    target = tmp_path / "loaded"
    target.mkdir()
    # a dump of several databases (mdb_dump -a style): -f FILE, no -s, no -n
    # (-n would mean a data file without its directory)
    tool("mdb_load", "-f", dump, target)
    assert sorted(os.listdir(target)) == ["data.mdb", "lock.mdb"]
    assert contents(str(target)) == contents(store)
    assert uses_dictionary(str(target))
    assert run(["check", target])[0] == 0
    _, ours = run(["dump", target])
    _, theirs = run(["dump", store])
    assert ours == theirs
    # and the loaded store is writable by kvstore
    with kvstore.open(str(target)) as db:
        db.namespace("messages").put("new", {"role": "user", "content": "hi"}, durable=True)
    assert run(["check", target])[0] == 0


def test_one_namespace_dump_loads_with_mdb_load(store, tmp_path):
    dump = tmp_path / "d.txt"
    assert run(["dump", store, "--format", "mdb", "-n", "messages", "-o", dump])[0] == 0
    target = tmp_path / "loaded"
    target.mkdir()
    tool("mdb_load", "-f", dump, target)
    with kvstore.open(str(target), readonly=True) as db:
        assert db.namespaces() == ["default", "messages"]
    expected = {k: v for k, v in contents(store).items() if k[0] == "messages"}
    assert contents(str(target)) == expected


def test_mdb_dump_loads_with_kvstore_load(store, tmp_path):
    dump = tmp_path / "d.txt"
    tool("mdb_dump", "-a", "-f", dump, store)
    target = str(tmp_path / "fresh")
    status, text = run(["load", target, "--format", "mdb", "-i", dump])
    assert status == 0
    assert text.splitlines() == [
        "loaded 1 record into namespace 'Upper'",
        f"loaded {len(VALUES) + len(KEYS)} records into namespace 'default'",
        "loaded 90 records into namespace 'messages'",
    ]
    assert contents(target) == contents(store)
    assert uses_dictionary(target)
    assert run(["check", target])[0] == 0


def test_mdb_dump_print_format_loads_with_kvstore_load(tmp_path):
    # Printable bytes as they are, others \xx. (LMDB 0.9.24's mdb_dump -p
    # leaves backslashes unescaped; the records here hold no backslash
    # followed by two hex digits, which that format cannot tell apart.)
    path = str(tmp_path / "store")
    with kvstore.open(path) as db:
        for name, value in VALUES.items():
            db.put(name, value)
        for key, value in KEYS.items():
            db.put(key, value)
        db.namespace("episodes").put("e1", {"goal": "a \\ backslash"})
    dump = tmp_path / "d.txt"
    tool("mdb_dump", "-a", "-p", "-f", dump, path)
    assert "format=print" in dump.read_text()
    target = str(tmp_path / "fresh")
    assert run(["load", target, "-i", dump])[0] == 0
    assert contents(target) == contents(path)


def test_mdb_dump_of_one_database_loads_into_a_namespace(store, tmp_path):
    dump = tmp_path / "d.txt"
    tool("mdb_dump", "-s", "Upper", "-f", dump, store)
    target = str(tmp_path / "fresh")
    assert run(["load", target, "-i", dump, "-n", "renamed"]) == (0, "loaded 1 record into namespace 'renamed'\n")
    with kvstore.open(target, readonly=True) as db:
        assert db.namespace("renamed")["k"] == "sorts before __kvstore__"
    # its records name a dictionary that neither the dump nor the store holds
    tool("mdb_dump", "-s", "messages", "-f", dump, store)
    status = main(["load", str(tmp_path / "other"), "-i", str(dump)])
    assert status == 2
    assert not os.path.exists(tmp_path / "other")


def test_a_store_moves_out_and_back(store, tmp_path):
    """kvstore -> mdb_load -> mdb_dump -a -> kvstore load: nothing changes."""
    first = tmp_path / "1.txt"
    assert run(["dump", store, "--format", "mdb", "-o", first])[0] == 0
    middle = tmp_path / "middle"
    middle.mkdir()
    tool("mdb_load", "-f", first, middle)
    second = tool("mdb_dump", "-a", middle).stdout
    back = str(tmp_path / "back")
    (tmp_path / "2.txt").write_bytes(second)
    assert run(["load", back, "-i", tmp_path / "2.txt"])[0] == 0
    assert contents(back) == contents(store)
    assert run(["check", back])[0] == 0


def test_mdb_stat_reads_a_store(store):
    if not shutil.which("mdb_stat"):
        pytest.skip("mdb_stat is not installed (apt-get install -y lmdb-utils)")
    out = tool("mdb_stat", "-a", store).stdout.decode()
    assert "Status of messages" in out and "Entries: 90" in out
