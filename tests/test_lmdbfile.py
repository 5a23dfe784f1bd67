"""kvstore/lmdbfile.py and lmdbwalk.py: the meta pages, the page walk, and
`kvstore check` on damaged pages.

Every store here is a real LMDB file made through kvstore.open, damaged by
flipping bytes of its pages. `kvstore check` runs in a process of its own, so
that a signal (LMDB's assertion, SIGABRT; a fault, SIGBUS) is a result, not
the end of the test run.
"""

import json
import os
import shutil
import struct
import subprocess
import sys

import lmdb
import pytest

import kvstore
import kvstore.codec
from kvstore import lmdbfile, lmdbwalk
from kvstore.cache import LastTxnid as CacheLastTxnid

PSIZE = 4096
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _file_level(codec_backend):
    # Pages, not values: the same for every codec; run once.
    if codec_backend != kvstore.codec.backends()[0]:
        pytest.skip("file-level: run with the first codec backend only")


def _store(path, n=600, other=300):
    """Deterministic content, no compression: a depth-2 tree in 'default'
    (one branch page over ~30 leaves) and in 'other' (one over ~7)."""
    with kvstore.open(path, compression="none", preallocate=False) as db:
        db.put_many({f"k:{i:05d}": bytes([i % 251]) * (i % 300) for i in range(n)}, durable=True)
        db.namespace("other").put_many({f"o:{i:04d}": {"i": i, "pad": "x" * 40} for i in range(other)},
                                       durable=True)
    return path


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = _store(str(tmp_path_factory.mktemp("lmdbfile") / "store"))
    with open(os.path.join(path, "data.mdb"), "rb") as f:
        return path, f.read()


def _copy_with(tmp_path, data, name, at, mask):
    path = str(tmp_path / name)
    os.makedirs(path)
    damaged = bytearray(data)
    damaged[at] ^= mask
    with open(os.path.join(path, "data.mdb"), "wb") as f:
        f.write(damaged)
    return path


def _check(path, *extra):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "kvstore", "check", path, *extra], capture_output=True,
                          text=True, timeout=120, env=env, cwd=ROOT)  # -m imports from the cwd first


def _branch_page(path, db):
    """The page number of the branch page (the root) of namespace db."""
    walk = lmdbwalk.walk(path)
    assert walk.ok, walk.problems
    assert walk.dbs[db].depth == 2 and walk.dbs[db].branch_pages == 1
    with open(os.path.join(path, "data.mdb"), "rb") as f:
        data = f.read()
    pages = [p for p, owner in walk.tree_pages.items() if owner == db
             and struct.unpack_from("<H", data, p * PSIZE + 10)[0] == lmdbfile.P_BRANCH]
    assert len(pages) == 1
    return pages[0]


# ---------------------------------------------------------------- meta pages and a clean walk


def test_newest_meta_agrees_with_lmdb(pristine):
    path, _ = pristine
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=4)
    try:
        info, stat = env.info(), env.stat()
    finally:
        env.close()
    fd = os.open(os.path.join(path, "data.mdb"), os.O_RDONLY)
    try:
        meta = lmdbfile.newest_meta(os.path.join(path, "data.mdb"), fd)
    finally:
        os.close(fd)
    assert meta.psize == stat["psize"] == PSIZE
    assert meta.txnid == info["last_txnid"] and meta.last_pg == info["last_pgno"]
    assert meta.main_db[6] == stat["entries"]  # md_entries of the main database: the named databases
    last = lmdbfile.LastTxnid(path)
    try:
        assert last() == meta.txnid and max(last.view) == meta.txnid
    finally:
        last.close()
    assert CacheLastTxnid is lmdbfile.LastTxnid  # still importable where it was


def test_walk_of_a_clean_store_counts_what_lmdb_counts(pristine):
    path, _ = pristine
    walk = lmdbwalk.walk(path)
    assert walk.ok, walk.problems
    assert walk.dbs["default"].entries == walk.dbs["default"].recorded_entries == 600
    assert walk.dbs["other"].entries == 300 and walk.dbs["other"].depth == 2
    assert walk.dbs["__kvstore__"].entries >= 2
    # every page but the two meta pages is in a tree or on the free list
    assert len(walk.tree_pages) + walk.free_pages + 2 == walk.last_pg + 1


def test_walk_after_overwrites_deletes_and_big_values(tmp_path):
    path = str(tmp_path / "store")
    with kvstore.open(path, compression="none") as db:
        for round_ in range(4):
            db.put_many({f"k:{i:05d}": bytes([round_]) * (i % 500) for i in range(2000)}, durable=True)
            for i in range(round_, 2000, 5):
                db.delete(f"k:{i:05d}")
            db.put("sync", round_, durable=True)  # the deletes committed before the next round
        db.put("big", b"v" * 50_000, durable=True)  # overflow pages
        db.namespace("n2").put("x", 1, durable=True)
        db.namespace("n3").put("y", 2, durable=True)
        expected = len(db)
    walk = lmdbwalk.walk(path)
    assert walk.ok, walk.problems
    assert walk.dbs["default"].entries == expected
    assert walk.dbs["default"].overflow_pages >= 13
    assert walk.free_pages > 0
    with kvstore.open(path, readonly=True) as db:  # the open-time walk agrees
        assert db.get("big") == b"v" * 50_000


def test_walk_reports_a_missing_file_and_a_bad_meta_page(tmp_path):
    with pytest.raises(kvstore.StoreNotFoundError):
        lmdbwalk.walk(str(tmp_path / "none"))
    path = str(tmp_path / "garbage")
    os.makedirs(path)
    with open(os.path.join(path, "data.mdb"), "wb") as f:
        f.write(b"\x00" * 3 * PSIZE)
    with pytest.raises(kvstore.FormatError, match="not an LMDB data file"):
        lmdbwalk.walk(path)


# ---------------------------------------------------------------- damaged branch pages


def test_every_byte_of_a_branch_page_header_and_its_node_pointers(tmp_path, pristine):
    """Flip each byte of the header and of the node pointers of 'other''s
    branch page, and the flags and bounds of 'default''s, two ways each.
    Before the walk, 9 of these 72 copies killed `kvstore check`: 2 with
    SIGABRT (LMDB's `IS_LEAF(mp)` assertion in mdb_cursor_next), 7 with
    SIGBUS (a node pointer past the page). Now each
    ends in a clean report (status 1, the damaged page named with its
    position) or in a full, correct read."""
    src, data = pristine
    failures, reported, read_fully = [], 0, 0
    for db in ("other", "default"):
        page = _branch_page(src, db)
        lower = struct.unpack_from("<H", data, page * PSIZE + 12)[0]
        for at in range(lower) if db == "other" else range(10, 16):
            for mask in (0x01, 0xFF):
                path = _copy_with(tmp_path, data, f"{db}-{at}-{mask}", page * PSIZE + at, mask)
                r = _check(path, "--json")
                case = (db, page, at, hex(mask), r.returncode, r.stderr[-300:])
                if r.returncode < 0 or r.returncode not in (0, 1):
                    failures.append(case)
                    continue
                doc = json.loads(r.stdout)
                if r.returncode == 1:
                    reported += 1
                    if not doc["page_problems"] or doc["ok"]:
                        failures.append(case + ("status 1 without a page problem",))
                    elif not any(p["page"] is not None and p["offset"] is not None for p in doc["page_problems"]):
                        failures.append(case + ("no position",))
                else:
                    read_fully += 1
                    if not doc["ok"] or doc["namespaces"]["default"]["values"] != 600 \
                            or doc["namespaces"]["other"]["values"] != 300:
                        failures.append(case + ("status 0 but not a full read", doc["namespaces"]))
                shutil.rmtree(path)
    assert not failures, failures
    assert reported > read_fully  # most flips are damage LMDB would trip on


def test_silent_loss_of_records_is_reported(tmp_path, pristine):
    """One flipped bit in the first node pointer of 'default''s branch page:
    LMDB still reads the namespace without an error, but scans fewer than
    its 600 records (the pointer now lands inside another node), while its
    own entry count says 600. Before: check said `all good`, status 0."""
    src, data = pristine
    page = _branch_page(src, "default")
    path = _copy_with(tmp_path, data, "silent", page * PSIZE + 16, 0x80)
    # LMDB's view, in a process of its own: fewer records, no error
    probe = ("import lmdb, sys; env = lmdb.open(sys.argv[1], readonly=True, lock=False, max_dbs=8); "
             "db = env.open_db(b'default', create=False); txn = env.begin(); "
             "print(sum(1 for _ in txn.cursor(db=db)), txn.stat(db)['entries'])")
    r = subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    scanned, counted = map(int, r.stdout.split())
    assert scanned < counted == 600
    r = _check(path)
    assert r.returncode == 1, r.stdout
    assert f"database 'default', page {page}" in r.stdout or "database 'default'" in r.stdout
    assert "all good" not in r.stdout and "the records were not read" in r.stdout
    doc = json.loads(_check(path, "--json").stdout)
    assert doc["ok"] is False and doc["records_checked"] is False
    assert {p["db"] for p in doc["page_problems"]} == {"default"}
    # and the library refuses to read it (a small store: the whole walk runs at open)
    with pytest.raises(kvstore.FormatError, match="kvstore check"):
        kvstore.open(path, readonly=True)


def test_check_of_a_clean_store_reports_its_pages(pristine):
    path, _ = pristine
    r = _check(path, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and doc["page_problems"] == [] and doc["records_checked"] is True
    # no value here needs overflow pages: every page is read once, or is free, or a meta page
    assert doc["pages"]["total"] == doc["pages"]["read"] + doc["pages"]["free"] + 2
    assert doc["pages"]["page_size"] == PSIZE


# ---------------------------------------------------------------- what open catches


def test_open_walks_only_the_roots_of_a_big_store(tmp_path, pristine, monkeypatch):
    """Above _OPEN_WALK_PAGES the open reads the root page of each
    namespace: damage there is refused, damage below it is left to check."""
    src, data = pristine
    monkeypatch.setattr(lmdbfile, "_OPEN_WALK_PAGES", 8)  # this store counts as big
    root = _branch_page(src, "default")
    damaged_root = _copy_with(tmp_path, data, "root", root * PSIZE + 16, 0x80)
    with pytest.raises(kvstore.FormatError, match="page"):
        kvstore.open(damaged_root, readonly=True)
    # a leaf of 'other': a key moved out of order, found by check only
    walk = lmdbwalk.walk(src)
    leaf = min(p for p, owner in walk.tree_pages.items() if owner == "other"
               and struct.unpack_from("<H", data, p * PSIZE + 10)[0] == lmdbfile.P_LEAF)
    first = struct.unpack_from("<H", data, leaf * PSIZE + 16)[0]
    key_at = leaf * PSIZE + first + 8
    assert data[key_at:key_at + 2] == b"o:"
    damaged_leaf = _copy_with(tmp_path, data, "leaf", key_at + 5, 0x08)  # o:0000 -> o:0800
    with kvstore.open(damaged_leaf, readonly=True):
        pass  # not found at open (documented)
    r = _check(damaged_leaf)
    assert r.returncode == 1 and "database 'other'" in r.stdout and f"page {leaf}" in r.stdout, r.stdout
