"""`kvstore compact`: the copy is rewritten in key order so that its pages
are full (issue 17), and holds the same records. Real stores; no timing."""

import io
import json
import os
import random

import lmdb

import kvstore
from kvstore.cli import main


def cli(*argv):
    out = io.StringIO()
    assert main([str(a) for a in argv], out=out) == 0
    return out.getvalue()


def randomly_filled(path, n=3000, commits=6):
    """A store filled in random key order over several commits: half-empty
    leaf pages from the splits, and free pages from copy-on-write."""
    keys = [f"session:{i:06d}:msg:{j:03d}" for i in range(n // 10) for j in range(10)]
    random.Random(5).shuffle(keys)
    with kvstore.open(str(path)) as db:
        for c in range(commits):
            for key in keys[c::commits]:
                db.put(key, {"text": f"message {key} " * 8, "n": len(key)})
            db.flush()
        db.namespace("other").put("k", [1, 2, 3])
    return keys


def test_compact_fills_the_pages_that_random_inserts_left_half_empty(tmp_path):
    src, dest, plain = tmp_path / "src", tmp_path / "dest", tmp_path / "plain"
    keys = randomly_filled(src)
    before = json.loads(cli("stat", src, "--json"))
    cli("compact", src, "-o", dest)
    after = json.loads(cli("stat", dest, "--json"))
    assert after["pages"]["fill"] > 0.9 > before["pages"]["fill"]
    assert after["pages"]["free"] <= 4
    # LMDB's own compacting copy keeps the pages as they are
    plain.mkdir()
    env = lmdb.open(str(src), readonly=True, max_dbs=8, lock=False)
    env.copy(str(plain), compact=True)
    env.close()
    assert os.path.getsize(dest / "data.mdb") < 0.8 * os.path.getsize(plain / "data.mdb")
    with kvstore.open(str(src), readonly=True) as a, kvstore.open(str(dest), readonly=True) as b:
        assert list(a.items()) == list(b.items())
        assert len(b) == len(keys)
        assert b.namespace("other").get("k") == [1, 2, 3]
    with kvstore.open(str(dest)) as b:  # the copy is a store kvstore writes to
        b.put("new", 1, durable=True)
        assert b.get("new") == 1
