"""`kvstore load` of data that was never a kvstore store: JSON lines as other
tools write them (--key, --value) and mdb_dump text of any LMDB environment
(--raw), and the message that says how to import such an environment."""

from __future__ import annotations

import io
import shutil
import subprocess

import lmdb
import pytest

import kvstore
from kvstore.cli import main
from kvstore.errors import FormatError


def run(argv):
    out = io.StringIO()
    status = main([str(a) for a in argv], out=out)
    return status, out.getvalue()


LINES = (
    '{"id": "u1", "name": "Ada", "score": 1.0, "ratio": 0.5, "visits": 3, "tags": ["a"]}\n'
    '\n'
    '{"id": 2, "name": "Bob", "score": 2.5e3, "ratio": 1e-7, "visits": 0, "meta": {"$ref": "#/x"}}\n'
)


@pytest.fixture
def objects(tmp_path):
    path = tmp_path / "users.jsonl"
    path.write_text(LINES)
    return path


def test_whole_objects_load_under_their_key_field_with_floats_kept(objects, tmp_path):
    status, out = run(["load", tmp_path / "s", "-i", objects, "--key", "id", "-n", "users"])
    assert (status, out) == (0, "loaded 2 records into namespace 'users'\n")
    with kvstore.open(str(tmp_path / "s"), readonly=True) as db:
        users = db.namespace("users")
        ada, bob = users.get("u1"), users.get("2")  # an integer key is stored as its decimal text
    assert ada == {"id": "u1", "name": "Ada", "score": 1.0, "ratio": 0.5, "visits": 3, "tags": ["a"]}
    assert type(ada["score"]) is float and type(ada["visits"]) is int
    assert type(bob["score"]) is float and bob["score"] == 2500.0 and bob["ratio"] == 1e-7
    assert bob["meta"] == {"$ref": "#/x"}  # plain JSON: a $ member is no kvstore tag here


def test_one_field_as_the_value(objects, tmp_path):
    status, out = run(["load", tmp_path / "s", "-i", objects, "--key", "name", "--value", "score"])
    assert (status, out) == (0, "loaded 2 records into namespace 'default'\n")
    assert run(["get", tmp_path / "s", "Ada", "Bob", "--format", "repr"]) == (0, "Ada\t1.0\nBob\t2500.0\n")


@pytest.mark.parametrize("line, message", [
    ('{"name": "x"}', "line 2: no member 'id' (--key) in this object; its members: 'name'"),
    ('{"id": [1]}', "line 2: member 'id' (--key) is a list; a key is a string or an integer"),
    ('[1, 2]', "line 2: --key takes lines that are JSON objects, not a list"),
    ('{"id": "a", "n": 18446744073709551616}', "line 2: cannot store a value of type dict"),
])
def test_a_bad_line_is_refused_before_anything_is_written(tmp_path, capsys, line, message):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "first", "n": 1}\n' + line + "\n")
    assert run(["load", tmp_path / "s", "-i", path, "--key", "id"])[0] == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_value_without_key_and_key_with_mdb_are_refused(objects, tmp_path, capsys):
    assert run(["load", tmp_path / "s", "-i", objects, "--value", "score"])[0] == 2
    assert run(["load", tmp_path / "s", "-i", objects, "--key", "id", "--format", "mdb"])[0] == 2
    err = capsys.readouterr().err
    assert "--value FIELD goes with --key FIELD" in err and "--key and --value read JSON lines" in err


# ---------------------------------------------------------------- raw LMDB environments


@pytest.fixture
def raw_env(tmp_path):
    """An LMDB environment made by another program: a named database and
    values that are not kvstore records."""
    path = str(tmp_path / "raw")
    env = lmdb.open(path, max_dbs=4)
    users = env.open_db(b"users")
    with env.begin(write=True) as txn:
        txn.put(b"u1", b'{"name": "x"}', db=users)
        txn.put(b"u2", b"\x00\xff", db=users)
    env.close()
    return path


def test_opening_a_raw_lmdb_environment_says_how_to_import_it(raw_env, capsys):
    with pytest.raises(FormatError) as exc:
        kvstore.open(raw_env, readonly=True)
    assert f"`mdb_dump -a {raw_env} | kvstore load NEW --raw`" in str(exc.value)
    assert run(["keys", raw_env])[0] == 2
    assert "kvstore load NEW --raw" in capsys.readouterr().err


needs_mdb_dump = pytest.mark.skipif(shutil.which("mdb_dump") is None,
                                    reason="LMDB's mdb_dump is not installed (apt-get install lmdb-utils)")


@needs_mdb_dump
def test_the_import_the_message_gives_works(raw_env, tmp_path):
    text = subprocess.run(["mdb_dump", "-a", raw_env], check=True, capture_output=True).stdout
    dump = tmp_path / "raw.mdb"
    dump.write_bytes(text)
    status, out = run(["load", tmp_path / "imported", "-i", dump, "--raw"])
    assert (status, out) == (0, "loaded 2 records into namespace 'users'\n")
    with kvstore.open(str(tmp_path / "imported"), readonly=True) as db:
        assert dict(db.namespace("users").items()) == {b"u1": b'{"name": "x"}', b"u2": b"\x00\xff"}


def test_raw_refuses_a_kvstore_dump(tmp_path, capsys):
    src = str(tmp_path / "src")
    with kvstore.open(src) as db:
        db.put("k", 1)
    assert run(["dump", src, "--format", "mdb", "-o", tmp_path / "all.mdb"])[0] == 0
    assert run(["load", tmp_path / "s", "-i", tmp_path / "all.mdb", "--raw"])[0] == 2
    assert "the dump holds the __kvstore__ database: it is a kvstore store's; load it without --raw" in (
        capsys.readouterr().err)
