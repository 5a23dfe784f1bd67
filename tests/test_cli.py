"""The `kvstore` command: every subcommand, its output, exit statuses and
messages; dump/load round trips; read-only behaviour; the console script."""

import io
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time

import lmdb
import pytest
import xxhash

import kvstore
from kvstore.cli import main
from kvstore.commands import _encoding
from kvstore.commands._common import Progress

# Every kind of value a store holds, under keys that need escaping.
VALUES = {
    "str": "hello",
    "unicode": "héllo wörld ✓ 🎉 日本語",
    "control": "bell\x07 esc\x1b[31m nul\x00 del\x7f c1\x85 zwsp\u200b",
    "bytes": b"\x00\xff raw \x1b[2J bytes",
    "empty-bytes": b"",
    "empty-str": "",
    "int": 42,
    "neg": -7,
    "u64": 2**64 - 1,
    "i64min": -(2**63),
    "float": 3.141592653589793,
    "tiny": 5e-324,
    "negzero": -0.0,
    "inf": float("inf"),
    "ninf": float("-inf"),
    "nan": float("nan"),
    "none": None,
    "true": True,
    "list": [1, "two", b"\x03", [4.0, None], {"five": 5}],
    "int-keys": {1: "one", 2: {3: [b"x"], -4: None}},
    "mixed-keys": {"s": 1, 2: "two", 2.5: "float", None: "none", True: "bool", b"\xfe": "bytes"},
    "dollar-keys": {"$bytes": "not a tag", "$map": [1], "plain": {"$float": "nan"}},
    "nested": {"a": {"b": {"c": [1, {"d": b"deep"}]}}},
    "long": "agent memory record " * 200,  # compressed
    "long-bytes": bytes(range(256)) * 8,
}
KEYS = {
    b"\xff\xfe\x00 not utf-8": "binary key",
    "back\\slash".encode(): "a backslash",
    "tab\tand\nnewline".encode(): "control characters",
    "ünïcödé".encode(): "unicode key",
    b"x" * 511: "longest key",
}


def raw_records(path, namespace="default") -> dict:
    """{key: stored record} of a namespace, read with py-lmdb through the store."""
    with kvstore.open(path, readonly=True) as db:
        dbi = db._engine.dbi(namespace, False)
        return db._engine.read(lambda txn: {bytes(k): bytes(v) for k, v in txn.cursor(db=dbi)})


def run(argv, out=None):
    """(status, stdout) of main(argv) in this process."""
    out = out if out is not None else io.StringIO()
    status = main([str(a) for a in argv], out=out)
    return status, out.getvalue() if isinstance(out, io.StringIO) else None


def same(a, b) -> bool:
    """Equal, with types, nan and -0.0 told apart (repr is exact for these)."""
    return type(a) is type(b) and repr(a) == repr(b)


def contents(path) -> dict:
    """{(namespace, key): repr(value)} of every record of the store."""
    out = {}
    with kvstore.open(path, readonly=True) as db:
        for ns in db.namespaces():
            handle = db if ns == "default" else db.namespace(ns)
            for key, value in handle.items():
                out[(ns, key)] = (type(value).__name__, repr(value))
    return out


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "store")
    with kvstore.open(path) as db:
        for name, value in VALUES.items():
            db.put(name, value)
        for key, value in KEYS.items():
            db.put(key, value)
        eps = db.namespace("episodes")
        for i in range(30):
            eps.put(f"ep:{i:03d}", {"goal": f"goal {i}", "steps": list(range(i % 5)), "score": i / 7})
        db.namespace("empty")
        db.flush()
    return path


# ---------------------------------------------------------------- stat, ls


def test_stat_text(store):
    status, text = run(["stat", store])
    assert status == 0
    for label in ("codec", "map", "page size", "last txn", "readers"):
        assert label in text
    assert kvstore.codec.backend in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert lines["episodes"].split()[1] == "30"
    assert lines["default"].split()[1] == str(len(VALUES) + len(KEYS))


def test_stat_json(store):
    status, text = run(["stat", store, "--json"])
    assert status == 0
    doc = json.loads(text)
    assert doc["codec"] == kvstore.codec.backend
    env = doc["environment"]
    assert env["page_size"] in (4096, 8192, 16384, 65536)
    assert 0 < env["map_used"] <= env["map_size"]
    assert env["last_txnid"] >= 1 and env["max_readers"] >= 1
    assert set(doc["namespaces"]) == {"default", "episodes", "empty"}
    d = doc["namespaces"]["default"]
    assert d["entries"] == len(VALUES) + len(KEYS)
    assert d["depth"] >= 1 and d["pages"]["leaf"] >= 1
    records = list(raw_records(store).values())
    assert d["stored_bytes"] == sum(len(r) for r in records)
    assert d["decoded_bytes"] == sum(int.from_bytes(r[2:6], "little") for r in records)
    assert d["compression_ratio"] == pytest.approx(d["stored_bytes"] / d["decoded_bytes"])
    assert doc["namespaces"]["empty"]["entries"] == 0
    assert doc["namespaces"]["empty"]["compression_ratio"] is None


def test_ls(store):
    status, text = run(["ls", store])
    assert status == 0
    rows = [line.split() for line in text.splitlines()]
    assert [r[0] for r in rows] == ["default", "empty", "episodes"]
    assert rows[2][1] == "30"
    status, text = run(["ls", store, "--json"])
    assert json.loads(text) == [{"namespace": "default", "entries": len(VALUES) + len(KEYS)},
                                {"namespace": "empty", "entries": 0},
                                {"namespace": "episodes", "entries": 30}]


# ---------------------------------------------------------------- keys


def test_keys_are_escaped_and_paste_back(store):
    status, text = run(["keys", store])
    assert status == 0
    lines = text.splitlines()
    assert len(lines) == len(VALUES) + len(KEYS)
    assert text.isprintable() or all(line.isprintable() for line in lines)
    assert "\\xff\\xfe\\x00 not utf-8" in lines
    assert "back\\\\slash" in lines
    assert "tab\\x09and\\x0anewline" in lines
    assert "ünïcödé" in lines
    # every printed key is accepted back by get, and names the right value
    for line in lines:
        key = _encoding.parse_key(line)
        status, value = run(["get", store, line])
        assert status == 0, line
        expected = VALUES.get(key.decode("utf-8", "replace"), KEYS.get(key))
        assert same(_encoding.from_json(json.loads(value)), expected), line


def test_keys_prefix_range_limit_reverse(store):
    _, text = run(["keys", store, "-n", "episodes", "--prefix", "ep:00"])
    assert text.split() == [f"ep:00{i}" for i in range(10)]
    _, text = run(["keys", store, "-n", "episodes", "--start", "ep:010", "--stop", "ep:013"])
    assert text.split() == ["ep:010", "ep:011", "ep:012"]
    _, text = run(["keys", store, "-n", "episodes", "--limit", "2", "--reverse"])
    assert text.split() == ["ep:029", "ep:028"]
    _, text = run(["keys", store, "-n", "episodes", "--limit", "0"])
    assert text == ""
    _, text = run(["keys", store, "--prefix", "\\xff"])
    assert text.splitlines() == ["\\xff\\xfe\\x00 not utf-8"]


def test_keys_json(store):
    status, text = run(["keys", store, "--json"])
    assert status == 0
    keys = [_encoding.key_from_json(k) for k in json.loads(text)]
    with kvstore.open(store, readonly=True) as db:
        assert keys == list(db.keys())
    assert {"$bytes": "//4AIG5vdCB1dGYtOA=="} in json.loads(text)
    _, text = run(["keys", store, "-n", "empty", "--json"])
    assert json.loads(text) == []


def test_keys_bad_escape_and_missing_namespace(store, capsys):
    assert run(["keys", store, "--prefix", "a\\q"])[0] == 2
    assert "bad escape" in capsys.readouterr().err
    assert run(["keys", store, "-n", "nope"])[0] == 1
    err = capsys.readouterr().err
    assert "no namespace 'nope'" in err and "episodes" in err


# ---------------------------------------------------------------- get


@pytest.mark.parametrize("name", sorted(VALUES))
def test_get_json_is_lossless(store, name):
    status, text = run(["get", store, name])
    assert status == 0
    assert text.endswith("\n") and text.count("\n") == 1
    assert same(_encoding.from_json(json.loads(text)), VALUES[name])


def test_get_output_is_safe_for_a_terminal(store):
    for fmt in ("json", "repr"):
        for name in ("control", "bytes", "unicode"):
            _, text = run(["get", store, name, "--format", fmt])
            body = text[:-1]
            assert body.isprintable(), (fmt, name, body)
            assert "\x1b" not in body and "\x00" not in body
    _, text = run(["get", store, "unicode"])
    assert "日本語" in text and "🎉" in text  # printable text stays readable


def test_get_repr_and_hex(store):
    assert run(["get", store, "int-keys", "--format", "repr"])[1] == repr(VALUES["int-keys"]) + "\n"
    assert run(["get", store, "bytes", "--format", "hex"])[1] == VALUES["bytes"].hex() + "\n"
    assert run(["get", store, "unicode", "--format", "hex"])[1] == VALUES["unicode"].encode().hex() + "\n"


def test_get_raw(store, capsys):
    buf = io.BytesIO()
    out = io.TextIOWrapper(buf, encoding="utf-8")
    assert main(["get", store, "bytes", "--format", "raw"], out=out) == 0
    out.flush()
    assert buf.getvalue() == VALUES["bytes"]

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert main(["get", store, "bytes", "--format", "raw"], out=Terminal()) == 2
    assert "--format hex" in capsys.readouterr().err
    assert run(["get", store, "list", "--format", "raw"])[0] == 2
    assert "use --format json" in capsys.readouterr().err


def test_get_missing_key_and_namespace(store, capsys):
    assert run(["get", store, "absent"]) == (1, "")
    assert "kvstore: error: key 'absent' not found in namespace 'default'" in capsys.readouterr().err
    assert run(["get", store, "absent\\x00", "-n", "episodes"])[0] == 1
    assert "key 'absent\\x00' not found in namespace 'episodes'" in capsys.readouterr().err
    assert run(["get", store, "x", "-n", "nope"])[0] == 1
    assert "no namespace 'nope'" in capsys.readouterr().err
    assert run(["get", store, "x", "-n", "__kvstore__"])[0] == 2
    assert "reserved" in capsys.readouterr().err


def test_get_non_utf8_key_from_the_command_line(store):
    # a raw argument with bytes that are not UTF-8 arrives surrogate-escaped
    arg = os.fsdecode(b"\xff\xfe\x00 not utf-8".replace(b"\x00", b"\\x00"))
    assert run(["get", store, arg, "--format", "repr"])[1] == "'binary key'\n"


# ---------------------------------------------------------------- inspection never creates a store


@pytest.mark.parametrize("argv", [
    ["stat", "{p}"], ["ls", "{p}"], ["keys", "{p}"], ["get", "{p}", "k"], ["inspect", "{p}", "k"],
    ["dump", "{p}"], ["check", "{p}"], ["compact", "{p}", "-o", "{p}-copy"], ["backup", "{p}", "{p}-copy"],
    ["del", "{p}", "k"], ["train-dict", "{p}"],
])
def test_no_store_is_an_error_and_nothing_is_created(tmp_path, capsys, argv):
    path = str(tmp_path / "absent")
    status, text = run([a.format(p=path) for a in argv])
    assert status == 2 and text == ""
    err = capsys.readouterr().err
    assert err.startswith("kvstore: error: ") and "no kvstore store" in err
    assert not os.path.exists(path) and not os.path.exists(path + "-copy")


def test_not_a_store(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("hello")
    assert run(["stat", f])[0] == 2
    assert "kvstore: error:" in capsys.readouterr().err
    assert f.read_text() == "hello"


# ---------------------------------------------------------------- put, del


def test_put_and_del(tmp_path, capsys):
    path = str(tmp_path / "new")
    assert run(["put", path, "greeting", "hello world"]) == (0, "")  # creates the store
    assert run(["put", path, "doc", '{"n": [1, 2.5, null], "b": {"$bytes": "AAE="}}', "--json"])[0] == 0
    assert run(["put", path, "k\\xff", "42", "--json", "-n", "new-ns"])[0] == 0
    assert run(["put", path, "text", "42"])[0] == 0
    with kvstore.open(path, readonly=True) as db:
        assert db["greeting"] == "hello world"
        assert db["doc"] == {"n": [1, 2.5, None], "b": b"\x00\x01"}
        assert db.namespace("new-ns")[b"k\xff"] == 42
        assert db["text"] == "42"
    assert run(["del", path, "greeting"]) == (0, "")
    assert run(["del", path, "greeting"])[0] == 1
    assert "key 'greeting' not found" in capsys.readouterr().err
    assert run(["del", path, "k\\xff", "-n", "new-ns"])[0] == 0
    with kvstore.open(path, readonly=True) as db:
        assert "greeting" not in db and b"k\xff" not in db.namespace("new-ns")


def test_put_errors(tmp_path, capsys):
    path = str(tmp_path / "s")
    assert run(["put", path, "k", "{not json", "--json"])[0] == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert run(["put", path, "k", '{"$nope": 1}', "--json"])[0] == 2
    assert "unknown tag" in capsys.readouterr().err
    assert run(["put", path, "k", "18446744073709551616", "--json"])[0] == 2
    assert "kvstore: error:" in capsys.readouterr().err
    assert run(["put", path, "x" * 512, "v"])[0] == 2
    assert "1 to 511 bytes" in capsys.readouterr().err
    assert run(["put", path, "k", "v", "-n", "__x"])[0] == 2
    assert "reserved" in capsys.readouterr().err


# ---------------------------------------------------------------- inspect


def test_inspect_text(store):
    status, text = run(["inspect", store, "long"])
    assert status == 0
    fields = dict(line.split(None, 1) for line in text.splitlines()[:10] if "  " in line)
    assert fields["version"] == "3"  # a store with a log: the key in the checksum
    assert "MSGPACK|ZSTD" in fields["flags"]
    assert "match" in fields["checksum"] and "MISMATCH" not in fields["checksum"]
    assert text.split("value:\n", 1)[1] == json.dumps(VALUES["long"]) + "\n"


def test_inspect_json(store):
    record = raw_records(store)[b"bytes"]
    status, text = run(["inspect", store, "bytes", "--json"])
    assert status == 0
    doc = json.loads(text)
    assert doc["ok"] is True and doc["problem"] is None
    assert doc["stored_size"] == len(record) and doc["payload_size"] == len(record) - 18
    assert doc["header"] == {"version": 3, "flags": 0, "flag_names": [], "raw_len": len(VALUES["bytes"]),
                             "dict_id": 0}
    expected = f"0x{xxhash.xxh64_intdigest(record[18:], kvstore.codec.key_seed(b'bytes')):016x}"
    assert doc["checksum"] == {"stored": expected, "computed": expected, "match": True}
    assert doc["type"] == "bytes"
    assert _encoding.from_json(doc["value"]) == VALUES["bytes"]


def test_inspect_missing(store, capsys):
    assert run(["inspect", store, "absent"])[0] == 1
    assert "not found" in capsys.readouterr().err


# ---------------------------------------------------------------- check


def _corrupt(path, key: bytes, namespace="default", how="flip"):
    """Damage one stored record with py-lmdb, under kvstore's feet."""
    env = lmdb.open(path, max_dbs=8)
    try:
        dbi = env.open_db(namespace.encode())
        with env.begin(write=True) as txn:
            record = bytearray(txn.get(key, db=dbi))
            if how == "flip":
                record[-1] ^= 0x5A
            elif how == "short":
                record = record[:7]
            elif how == "dict":  # names dictionary 9, with a valid checksum
                record[1] |= 0x06
                record[6:10] = (9).to_bytes(4, "little")
            txn.put(key, bytes(record), db=dbi)
    finally:
        env.close()


def test_check_good(store):
    status, text = run(["check", store])
    assert status == 0
    assert text.splitlines()[-1].startswith(f"checked {len(VALUES) + len(KEYS) + 30} values in 3 namespaces")
    assert text.rstrip().endswith("all good")
    status, text = run(["check", store, "--json"])
    doc = json.loads(text)
    assert status == 0 and doc["ok"] is True and doc["bad"] == [] and doc["values"] == len(VALUES) + len(KEYS) + 30
    assert doc["page_problems"] == [] and doc["records_checked"] is True and doc["pages"]["page_size"] == 4096


def test_check_walks_the_pages_before_reading_records(store):
    # A damaged page is reported with its position, and no record is read
    # through LMDB (which aborts or faults on such pages).
    from kvstore import lmdbwalk
    walk = lmdbwalk.walk(store)
    leaf = next(p for p, owner in sorted(walk.tree_pages.items()) if owner == "episodes")
    with open(os.path.join(store, "data.mdb"), "r+b") as f:
        f.seek(leaf * 4096 + 12)  # the page's lower bound: two more node pointers than it has
        lower = int.from_bytes(f.read(2), "little")
        f.seek(leaf * 4096 + 12)
        f.write((lower + 4).to_bytes(2, "little"))
    status, text = run(["check", store])
    assert status == 1
    assert text.splitlines()[0].startswith(f"BAD  database 'episodes', page {leaf} (byte ")
    assert "the records were not read" in text.splitlines()[-1]
    status, text = run(["check", store, "--json"])
    doc = json.loads(text)
    assert status == 1 and doc["ok"] is False and doc["records_checked"] is False
    assert doc["page_problems"][0]["db"] == "episodes" and doc["page_problems"][0]["page"] == leaf


def test_check_names_each_damaged_key(store, capsys):
    _corrupt(store, b"long")
    _corrupt(store, b"\xff\xfe\x00 not utf-8", how="short")
    _corrupt(store, b"ep:007", namespace="episodes")
    _corrupt(store, b"int", how="dict")
    status, text = run(["check", store])
    assert status == 1
    bad = [line for line in text.splitlines() if line.startswith("BAD")]
    assert len(bad) == 4
    assert any("'long'" in line and "checksum mismatch" in line for line in bad)
    assert any("'\\xff\\xfe\\x00 not utf-8'" in line and "header" in line for line in bad)
    assert any("'episodes'" in line and "'ep:007'" in line for line in bad)
    assert any("'int'" in line and "dictionary 9" in line for line in bad)
    assert "4 bad values" in text.splitlines()[-1]
    status, text = run(["check", store, "--json"])
    doc = json.loads(text)
    assert status == 1 and doc["ok"] is False and doc["bad_values"] == 4
    assert {"namespace": "episodes", "key": "ep:007"} in [{k: b[k] for k in ("namespace", "key")} for b in doc["bad"]]
    assert doc["dictionaries_missing"] == [9]
    # inspect shows the damage, get refuses it
    assert run(["inspect", store, "long"])[0] == 1
    capsys.readouterr()
    assert run(["get", store, "long"])[0] == 2
    assert "checksum mismatch" in capsys.readouterr().err
    # a jsonl dump refuses a damaged record, an mdb dump carries it as it is
    assert run(["dump", store, "-n", "episodes"])[0] == 2
    assert "'ep:007'" in capsys.readouterr().err
    assert run(["dump", store, "-n", "episodes", "--format", "mdb"])[0] == 0


# ---------------------------------------------------------------- dump / load


@pytest.mark.parametrize("fmt", ["jsonl", "mdb"])
def test_dump_load_round_trip(store, tmp_path, fmt):
    out = str(tmp_path / f"dump.{fmt}")
    status, text = run(["dump", store, "--format", fmt, "-o", out])
    assert status == 0
    assert f"{len(VALUES) + len(KEYS) + 30} records of 3 namespaces" in text
    target = str(tmp_path / "copy")
    status, text = run(["load", target, "-i", out])  # format recognised
    assert status == 0
    assert f"loaded {len(VALUES) + len(KEYS)} records into namespace 'default'" in text
    assert "loaded 30 records into namespace 'episodes'" in text
    assert contents(target) == contents(store)
    with kvstore.open(target, readonly=True) as db:
        assert db.namespaces() == ["default", "empty", "episodes"]
        assert math.isnan(db["nan"]) and math.copysign(1, db["negzero"]) == -1
        assert db["u64"] == 2**64 - 1 and db[b"x" * 511] == "longest key"
    assert run(["check", target])[0] == 0


def test_dump_jsonl_format(store):
    status, text = run(["dump", store, "-n", "episodes"])
    assert status == 0
    lines = text.splitlines()
    assert json.loads(lines[0]) == {"kvstore": "kvstore-jsonl", "version": 1, "namespace": "episodes", "count": 30}
    assert json.loads(lines[1]) == {"k": "ep:000", "v": {"goal": "goal 0", "steps": [], "score": 0.0}}
    assert len(lines) == 31
    _, text = run(["dump", store])
    headers = [json.loads(line) for line in text.splitlines() if line.startswith('{"kvstore"')]
    assert [(h["namespace"], h["count"]) for h in headers] == [
        ("default", len(VALUES) + len(KEYS)), ("empty", 0), ("episodes", 30)]
    assert all(line.isprintable() for line in text.splitlines())
    assert '{"k":"mixed-keys","v":{"$map":[["s",1],[2,"two"],[2.5,"float"],[null,"none"],[true,"bool"],' \
           '[{"$bytes":"/g=="},"bytes"]]}}' in text


def test_dump_mdb_format(store):
    status, text = run(["dump", store, "--format", "mdb"])
    assert status == 0
    sections = text.split("DATA=END\n")
    assert sections[-1] == ""
    names = [s.split("database=", 1)[1].split("\n", 1)[0] for s in sections[:-1]]
    assert names == ["__kvstore__", "default", "empty", "episodes"]
    head = sections[1].split("HEADER=END\n")[0].splitlines()
    assert head[:4] == ["VERSION=3", "format=bytevalue", "database=default", "type=btree"]
    assert [h.split("=")[0] for h in head[4:]] == ["mapsize", "maxreaders", "db_pagesize"]
    raw = raw_records(store)[b"long"]
    assert f" {b'long'.hex()}\n {raw.hex()}\n" in sections[1]
    # one namespace: its database and the metadata (dictionaries travel along)
    _, text = run(["dump", store, "--format", "mdb", "-n", "episodes"])
    assert [line for line in text.splitlines() if line.startswith("database=")] == [
        "database=__kvstore__", "database=episodes"]


def test_load_namespace_selection_and_no_overwrite(store, tmp_path, capsys):
    dump = str(tmp_path / "all.jsonl")
    run(["dump", store, "-o", dump])
    one = str(tmp_path / "one.jsonl")
    run(["dump", store, "-n", "episodes", "-o", one])
    target = str(tmp_path / "t")
    # one namespace of a dump of several
    assert run(["load", target, "-i", dump, "-n", "episodes"]) == (
        0, "loaded 30 records into namespace 'episodes'\n")
    # a dump of one namespace, loaded under another name
    assert run(["load", target, "-i", one, "-n", "renamed"])[1] == "loaded 30 records into namespace 'renamed'\n"
    assert run(["load", target, "-i", dump, "-n", "nope"])[0] == 2
    assert "none of them is 'nope'" in capsys.readouterr().err
    # --no-overwrite keeps what is there
    with kvstore.open(target) as db:
        db.namespace("episodes").put("ep:001", "changed", durable=True)
        db.namespace("episodes").put("extra", 1, durable=True)
        db.namespace("episodes").delete("ep:002", durable=True)
    status, text = run(["load", target, "-i", one, "--no-overwrite"])
    assert (status, text) == (0, "loaded 1 record into namespace 'episodes'; 29 keys already present kept "
                                 "(--no-overwrite)\n")
    with kvstore.open(target, readonly=True) as db:
        assert db.namespace("episodes")["ep:001"] == "changed"
        assert db.namespace("episodes")["ep:002"]["goal"] == "goal 2"
    assert run(["load", target, "-i", one])[0] == 0
    with kvstore.open(target, readonly=True) as db:
        assert db.namespace("episodes")["ep:001"]["goal"] == "goal 1"
        assert db.namespace("episodes")["extra"] == 1  # load adds; it never deletes


def test_load_from_stdin(store, tmp_path, monkeypatch):
    _, text = run(["dump", store, "-n", "episodes"])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    target = str(tmp_path / "t")
    assert run(["load", target])[0] == 0
    assert len(contents(target)) == 30


def test_load_refuses_bad_input_before_writing(store, tmp_path, capsys):
    _, text = run(["dump", store])
    lines = text.splitlines(keepends=True)
    target = str(tmp_path / "t")
    cases = {
        "truncated.jsonl": "".join(lines[:-3]),  # the last section is short
        "garbage.jsonl": "".join(lines[:5]) + "{not json\n" + "".join(lines[5:]),
        "badtag.jsonl": "".join(lines[:5]) + '{"k":"z","v":{"$bytes":"***"}}\n',
        "newer.jsonl": '{"kvstore":"kvstore-jsonl","version":99,"namespace":"default","count":0}\n',
        "reserved.jsonl": '{"kvstore":"kvstore-jsonl","version":1,"namespace":"__x","count":0}\n',
        "nothing.txt": "hello\n",
        "empty.txt": "",
    }
    _, mdb = run(["dump", store, "--format", "mdb"])
    # cut at a line's end: the text stops in the middle of a section (a cut
    # inside a line of hex is refused too, as "not hex data")
    cases["truncated.mdb"] = mdb[: mdb.index("\n", len(mdb) // 2) + 1]
    cases["odd.mdb"] = mdb.replace("DATA=END\n", " 00\nDATA=END\n", 2)
    raw = raw_records(store)[b"long"]
    cases["damaged.mdb"] = mdb.replace(raw.hex(), raw[:-1].hex() + "00")
    for name, body in cases.items():
        p = tmp_path / name
        p.write_text(body)
        status, out = run(["load", target, "-i", p])
        err = capsys.readouterr().err
        assert status == 2, name
        assert err.startswith("kvstore: error: "), (name, err)
        assert not os.path.exists(target), name  # refused before the store was created
    assert "declares" in run_err(capsys, ["load", target, "-i", tmp_path / "truncated.jsonl"])
    assert "no DATA=END" in run_err(capsys, ["load", target, "-i", tmp_path / "truncated.mdb"])
    assert "checksum" in run_err(capsys, ["load", target, "-i", tmp_path / "damaged.mdb"])
    assert "-n" in run_err(capsys, ["load", target, "-i", tmp_path / "reserved.jsonl"])
    # and into an existing store, nothing is written either
    run(["put", target, "keep", "me"])
    before = contents(target)
    assert run(["load", target, "-i", tmp_path / "damaged.mdb"])[0] == 2
    assert contents(target) == before
    assert run(["load", target, "-i", tmp_path / "missing-file"])[0] == 2
    assert "missing-file" in capsys.readouterr().err


def run_err(capsys, argv) -> str:
    run(argv)
    return capsys.readouterr().err


def test_load_headerless_jsonl(tmp_path):
    p = tmp_path / "plain.jsonl"
    p.write_text('{"k": "a", "v": 1}\n\n{"k": {"$bytes": "/w=="}, "v": {"$bytes": "AA=="}}\n')
    target = str(tmp_path / "t")
    assert run(["load", target, "-i", p, "-n", "ns"]) == (0, "loaded 2 records into namespace 'ns'\n")
    with kvstore.open(target, readonly=True) as db:
        assert dict(db.namespace("ns").items()) == {b"a": 1, b"\xff": b"\x00"}


def test_dictionaries_travel_with_mdb_dumps(tmp_path):
    src = str(tmp_path / "src")
    with kvstore.open(src) as db:
        for i in range(60):
            db.put(f"m{i:03d}", {"role": "user", "content": f"the request returns a list of resources {i}" * 4})
        db.train_dictionary(samples=50)
        for i in range(20):
            db.put(f"n{i:03d}", {"role": "assistant", "content": f"the request returns a list of resources {i}" * 4})
        db.flush()
    dump = str(tmp_path / "d.mdb")
    assert run(["dump", src, "--format", "mdb", "-o", dump])[0] == 0
    fresh = str(tmp_path / "fresh")
    assert run(["load", fresh, "-i", dump])[0] == 0
    assert contents(fresh) == contents(src)
    with kvstore.open(fresh, readonly=True) as db:
        assert [d["id"] for d in db.dictionaries()] == [1]
    _, text = run(["stat", fresh, "--json"])
    assert json.loads(text)["namespaces"]["default"]["dictionaries_in_use"] == {"1": 20}
    # a store whose dictionary 1 is another one: those records are encoded again
    other = str(tmp_path / "other")
    with kvstore.open(other) as db:
        for i in range(40):
            db.put(f"o{i:03d}", {"x": "completely different content here " * 5, "i": i})
        db.train_dictionary(samples=30)
        db.flush()
    assert run(["load", other, "-i", dump])[0] == 0
    assert run(["check", other])[0] == 0
    got = contents(other)
    assert all(got[k] == v for k, v in contents(src).items())


# ---------------------------------------------------------------- a dump is one snapshot

WRITER = textwrap.dedent("""
    import sys, time, kvstore
    db = kvstore.open(sys.argv[1])
    n = 0
    deadline = time.monotonic() + float(sys.argv[2])
    print("ready", flush=True)
    while time.monotonic() < deadline:
        n += 1
        with db.batch(durable=True) as b:   # one atomic commit across namespaces
            b.put("counter", n)
            b.put("counter", n, namespace="mirror")
            for i in range(50):
                b.put(f"row:{i:03d}", {"n": n, "i": i})
    db.close()
""")


def test_dump_and_check_are_consistent_while_another_process_writes(tmp_path):
    path = str(tmp_path / "busy")
    with kvstore.open(path) as db:
        db.namespace("mirror")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, path, "4"], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "ready\n"
        seen = set()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            status, text = run(["dump", path])
            assert status == 0
            docs = [json.loads(line) for line in text.splitlines()]
            counters = [d["v"] for d in docs if d.get("k") == "counter"]
            rows = {d["v"]["n"] for d in docs if str(d.get("k", "")).startswith("row:")}
            if counters:
                assert len(counters) == 2 and counters[0] == counters[1]
                assert rows == {counters[0]}
                seen.add(counters[0])
            assert run(["check", path])[0] == 0
        assert len(seen) > 1  # the writer made progress while we read
    finally:
        writer.wait(timeout=30)
    assert writer.returncode == 0


def test_backup_while_another_process_writes(tmp_path):
    path = str(tmp_path / "busy")
    with kvstore.open(path) as db:
        db.namespace("mirror")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, path, "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "ready\n"
        time.sleep(0.3)
        for i in range(3):
            dest = str(tmp_path / f"backup{i}")
            status, text = run(["backup", path, dest])
            assert status == 0 and text.startswith(f"backed up {path} to {dest}")
            with kvstore.open(dest, readonly=True) as db:
                n = db.get("counter")
                assert db.namespace("mirror").get("counter") == n
                assert all(v["n"] == n for _, v in db.scan(prefix="row:"))
            assert run(["check", dest])[0] == 0
    finally:
        writer.wait(timeout=30)
    assert writer.returncode == 0


# ---------------------------------------------------------------- compact, backup


def test_compact(store, tmp_path, capsys):
    with kvstore.open(store) as db:  # make free pages
        for i in range(2000):
            db.put(f"tmp:{i:05d}", "x" * 200)
        db.flush()
        for i in range(2000):
            db.delete(f"tmp:{i:05d}")
    dest = str(tmp_path / "compacted")
    status, text = run(["compact", store, "-o", dest])
    assert status == 0
    assert text.startswith(f"compacted {store} (") and "saved" in text
    assert contents(dest) == contents(store)
    assert os.path.getsize(os.path.join(dest, "data.mdb")) < os.path.getsize(os.path.join(store, "data.mdb"))
    assert sorted(os.listdir(tmp_path)) == ["compacted", "store"]  # no temporary left
    dest2 = str(tmp_path / "c2")
    status, text = run(["compact", store, "-o", dest2, "--json"])
    doc = json.loads(text)
    assert doc["saved_bytes"] == doc["source_bytes"] - doc["dest_bytes"] > 0
    # DEST must not already hold a store
    assert run(["compact", store, "-o", dest])[0] == 2
    assert "already holds a store" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert run(["compact", store, "-o", tmp_path / "full"])[0] == 2
    assert "not empty" in capsys.readouterr().err
    (tmp_path / "empty-dir").mkdir()
    assert run(["compact", store, "-o", tmp_path / "empty-dir"])[0] == 0
    assert contents(str(tmp_path / "empty-dir")) == contents(store)


def test_backup(store, tmp_path, capsys):
    dest = str(tmp_path / "bk")
    status, text = run(["backup", store, dest, "--json"])
    assert status == 0 and json.loads(text)["bytes"] == os.path.getsize(os.path.join(dest, "data.mdb"))
    assert contents(dest) == contents(store)
    assert run(["backup", store, dest])[0] == 2
    assert "already holds a store" in capsys.readouterr().err
    assert run(["backup", store, tmp_path / "nodir" / "x"])[0] == 2


# ---------------------------------------------------------------- train-dict


def test_train_dict(tmp_path, capsys):
    path = str(tmp_path / "s")
    with kvstore.open(path) as db:
        notes = db.namespace("notes")
        for i in range(200):
            notes.put(f"n{i:04d}", {"kind": "message", "role": "assistant", "session": f"s-{i % 7:06d}",
                                    "content": f"the user asked to update the draft with item {i} and to "
                                               f"confirm the contact details before the document is generated"})
    assert run(["train-dict", path, "-n", "notes", "--samples", "10"])[0] == 2
    assert "at least 20" in capsys.readouterr().err
    status, text = run(["train-dict", path, "-n", "notes", "--samples", "150", "--json"])
    assert status == 0
    doc = json.loads(text)
    assert doc["dictionary_id"] == 1 and doc["trained_on"] == 150 and doc["sample_values"] == 200
    assert doc["stored_bytes_with"] < doc["stored_bytes_without"]
    assert doc["ratio_with"] < doc["ratio_without"]
    status, text = run(["train-dict", path, "-n", "notes"])
    assert status == 0 and text.startswith("trained dictionary 2 for namespace 'notes' on 200 values")
    assert "without the dictionary" in text and "with dictionary 2" in text
    with kvstore.open(path) as db:
        assert [d["id"] for d in db.dictionaries() if d["current"]] == [2]
    # too few values
    assert run(["train-dict", path])[0] == 2
    assert "at least 20" in capsys.readouterr().err
    assert run(["train-dict", path, "-n", "nope"])[0] == 1


# ---------------------------------------------------------------- demo, arguments, progress


def test_demo(tmp_path):
    status, text = run(["demo", tmp_path / "demo", "--threads", "2", "--sessions", "2", "--turns", "3"])
    assert status == 0 and "verified" in text


@pytest.mark.parametrize("argv", [[], ["nope"], ["get", "only-path"], ["keys", "p", "--limit", "x"],
                                  ["dump", "p", "--format", "xml"], ["compact", "p"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv, out=io.StringIO())
    assert exc.value.code == 2
    assert "usage: kvstore" in capsys.readouterr().err


def test_progress_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    quiet = io.StringIO()
    with Progress("dump", 10, stream=quiet) as p:
        p.update(10)
    assert quiet.getvalue() == ""
    term = Terminal()
    with Progress("dump", 10, stream=term) as p:
        p.update(5)
    text = term.getvalue()
    assert "dump:  50%" in text and "5/10" in text and "records/s" in text and text.endswith("\n")


# ---------------------------------------------------------------- the tagged JSON encoding


@pytest.mark.parametrize("name", sorted(VALUES))
def test_tagged_json_round_trip(name):
    value = VALUES[name]
    text = _encoding.dumps(_encoding.to_json(value))
    assert text.isprintable()
    assert same(_encoding.from_json(json.loads(text)), value)


def test_tagged_json_details():
    assert _encoding.to_json({"a": b"\x00"}) == {"a": {"$bytes": "AA=="}}
    assert _encoding.to_json({1: 2}) == {"$map": [[1, 2]]}
    assert _encoding.to_json({"$x": 1}) == {"$map": [["$x", 1]]}
    assert _encoding.to_json((1, 2)) == [1, 2]
    assert _encoding.from_json({"$map": [[[1, 2], "tuple key"]]}) == {(1, 2): "tuple key"}
    for bad in ({"$bytes": 1}, {"$bytes": "a"}, {"$map": [[1]]}, {"$float": "x"}, {"$x": 1}, {"$bytes": "", "a": 1}):
        with pytest.raises(_encoding.TagError):
            _encoding.from_json(bad)
    for key in (b"", b"a\\b", b"\x00\x7f\x80\xff", "é\u200b".encode(), b"\\x41"):
        assert _encoding.parse_key(_encoding.escape_key(key)) == key
    assert _encoding.escape_key(b"a\\x41") == "a\\\\x41"
    with pytest.raises(ValueError):
        _encoding.parse_key("\\x4")


# ---------------------------------------------------------------- the real console script


def _script():
    exe = shutil.which("kvstore", path=os.path.dirname(sys.executable)) or shutil.which("kvstore")
    return [exe] if exe else [sys.executable, "-m", "kvstore"]


def test_console_script(store, tmp_path):
    def cli(*argv, stdin=None):
        return subprocess.run(_script() + [str(a) for a in argv], capture_output=True, text=True, timeout=120,
                              input=stdin)

    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"kvstore {kvstore.__version__}"
    r = cli("ls", store)
    assert r.returncode == 0 and r.stdout.split()[0] == "default" and r.stderr == ""
    r = cli("get", store, "absent")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == "kvstore: error: key 'absent' not found in namespace 'default'\n"
    r = cli("stat", tmp_path / "none")
    assert r.returncode == 2 and r.stderr.startswith("kvstore: error: no kvstore store")
    r = cli("get", store)
    assert r.returncode == 2 and "usage:" in r.stderr
    # writes are synced before the process exits
    new = tmp_path / "new"
    assert cli("put", new, "k", '{"v": [1, 2]}', "--json").returncode == 0
    assert cli("get", new, "k").stdout == '{"v": [1, 2]}\n'
    # raw bytes to a pipe
    r = subprocess.run(_script() + ["get", store, "bytes", "--format", "raw"], capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout == VALUES["bytes"]
    # a dump through a pipe, loaded from stdin
    dump = cli("dump", store)
    assert dump.returncode == 0 and dump.stderr == ""  # no progress bar when stderr is not a terminal
    r = cli("load", tmp_path / "piped", stdin=dump.stdout)
    assert r.returncode == 0, r.stderr
    assert contents(str(tmp_path / "piped")) == contents(store)
    r = subprocess.run([sys.executable, "-m", "kvstore", "check", store], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "all good" in r.stdout


def test_damaged_metadata_is_a_clear_error(store, capsys):
    env = lmdb.open(store, max_dbs=8)
    meta = env.open_db(b"__kvstore__")
    with env.begin(write=True) as txn:
        txn.put(b"dict:\x00\x00\x00\x07", b"\xc1 not msgpack", db=meta)
    env.close()
    # The store still opens (its values do not need the damaged entry), and
    # check names the damaged metadata and fails.
    code, output = run(["check", store])
    assert code == 1
    assert "BAD" in output and "dict" in output
