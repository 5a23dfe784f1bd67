"""Bad and hostile files where a store should be.

Each open runs in a process of its own (crash_driver.Prober forks one per
open), so a crash (SIGBUS, SIGSEGV, SIGABRT) or a hang shows up as a result
instead of killing the test run. Every case must end in a normal exit with
either a working store or a KVStoreError subclass that says what is wrong;
within a time limit; without changing the files it was given.

(Fuzzing kvstore.codec.decode with random bytes is in tests/test_codec_backends.py.)
"""

import hashlib
import os
import random
import shutil
import struct

import lmdb
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kvstore
from support.crash_driver import Prober

PSIZE = 4096
# Errors that describe a bad file (the class and a message naming the path).
FILE_ERRORS = {"FormatError", "CorruptionError", "StoreNotFoundError", "ReadOnlyError", "StoreFailedError"}


@pytest.fixture(scope="module")
def _probers():
    made = {}
    yield made
    for p in made.values():
        p.close()


@pytest.fixture
def probe(_probers, codec_backend):
    """probe(path, **req) -> result of opening path in a forked process."""
    if codec_backend not in _probers:
        _probers[codec_backend] = Prober({"KVSTORE_CODEC": codec_backend})
    return _probers[codec_backend].probe


def _digest(path):
    """What a failed open must leave alone: every file's bytes (lock.mdb may appear)."""
    out = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full) and not os.path.islink(full) and name != "lock.mdb":
            with open(full, "rb") as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
        else:
            out[name] = "special"
    return out


def _assert_clean_failure(result, path, before, stages=("open",)):
    assert result["status"] == "error", result
    assert result["type"] in FILE_ERRORS, result
    assert result["stage"] in stages, result
    after = _digest(path)
    after.pop("lock.mdb", None) if "lock.mdb" not in before else None
    assert after == before, f"a failed open changed the files: {before} -> {after}"


def _real_store(path, n=3000, preallocate=False):
    """A store with deterministic content (no compression: the same bytes
    whatever the codec), several pages deep, in two namespaces. Without
    preallocated room by default, so that data.mdb ends at its last page
    and every cut below removes pages."""
    with kvstore.open(path, compression="none", preallocate=preallocate) as db:
        db.put_many({f"k:{i:05d}": bytes([i % 251]) * (i % 300) for i in range(n)}, durable=True)
        db.namespace("other").put_many({f"o:{i:04d}": {"i": i} for i in range(300)}, durable=True)
    return path


class _RealFiles(dict):
    def __repr__(self):  # hypothesis prints the arguments of a failing example
        return f"<the files of a real store: data.mdb of {len(self['data'])} bytes>"


@pytest.fixture(scope="module")
def real_files(tmp_path_factory):
    path = _real_store(str(tmp_path_factory.mktemp("real") / "store"))
    with open(os.path.join(path, "data.mdb"), "rb") as f:
        data = f.read()
    with open(os.path.join(path, "lock.mdb"), "rb") as f:
        lock = f.read()
    return _RealFiles(path=path, data=data, lock=lock, keys=3300)


def _newest_meta(data) -> int:
    txnids = [struct.unpack_from("<Q", data, p * PSIZE + 16 + 128)[0] for p in (0, 1)]
    return txnids.index(max(txnids))


def _write(path, name, data):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- data.mdb


def _garbage(kind, size, seed=0):
    rng = random.Random(f"{kind}:{size}:{seed}")
    if kind == "zeros":
        return bytes(size)
    data = bytearray(rng.randbytes(size))
    if kind == "lmdb-magic":
        # valid magic, version and page size on both meta pages, garbage elsewhere
        for base in (16, PSIZE + 16):
            if len(data) >= base + 28:
                struct.pack_into("<II", data, base, 0xBEEFC0DE, 1)
                struct.pack_into("<I", data, base + 24, PSIZE)
    return bytes(data)


@pytest.mark.parametrize("kind", ["random", "zeros", "lmdb-magic"])
@pytest.mark.parametrize("size", [1, 100, 4095, PSIZE, 2 * PSIZE, 3 * PSIZE, 3 * PSIZE + 1, 65536])
def test_garbage_data_file(tmp_path, probe, kind, size):
    path = str(tmp_path / "store")
    _write(path, "data.mdb", _garbage(kind, size))
    before = _digest(path)
    for req in ({"write": True}, {"readonly": True}):
        result = probe(path, **req)
        _assert_clean_failure(result, path, before)
        if size < 16 + 136:
            assert "too short" in result["msg"], result
        elif kind != "lmdb-magic":
            assert "not an LMDB data file" in result["msg"], result


@pytest.mark.parametrize("cut", ["1 page", "2 pages", "3 pages", "2 pages + 1", "middle", "last page short",
                                 "1 byte short"])
@pytest.mark.parametrize("with_lock", [False, True])
def test_real_data_file_truncated(tmp_path, probe, real_files, cut, with_lock):
    data = real_files["data"]
    keep = {"1 page": PSIZE, "2 pages": 2 * PSIZE, "3 pages": 3 * PSIZE, "2 pages + 1": 2 * PSIZE + 1,
            "middle": len(data) // 2, "last page short": len(data) - PSIZE, "1 byte short": len(data) - 1}[cut]
    path = str(tmp_path / "store")
    _write(path, "data.mdb", data[:keep])
    if with_lock:
        _write(path, "lock.mdb", real_files["lock"])
    before = _digest(path)
    for req in ({"write": True}, {"readonly": True}):
        result = probe(path, **req)
        _assert_clean_failure(result, path, before)
        assert result["type"] == "FormatError" and ("truncated" in result["msg"] or "short" in result["msg"])


def test_preallocated_room_cut_anywhere_loses_nothing(tmp_path, probe):
    # The zeroed room past LMDB's last page (Options.preallocate) is not
    # part of the store: cutting the file anywhere in it leaves every key.
    path = _real_store(str(tmp_path / "full"), preallocate=True)
    with kvstore.open(path, readonly=True) as db:
        used = db.stats()["map_used"]
    with open(os.path.join(path, "data.mdb"), "rb") as f:
        data = f.read()
    assert len(data) > used + PSIZE, "no room was preallocated"
    for keep in (used, used + PSIZE, (used + len(data)) // 2 + 1):
        cut = str(tmp_path / f"cut{keep}")
        _write(cut, "data.mdb", data[:keep])
        result = probe(cut, readonly=True)
        assert result == {"status": "ok", "keys": 3300, "bad_keys": []}, (keep, result)


# Offsets inside the two meta records (LMDB's MDB_meta: 136 bytes after the
# 16-byte page header), except the flags and root page number of its two
# database records (the free list at meta offset 24, the main database at
# 72): damage there can make LMDB abort the process, see
# test_damaged_database_flags_in_the_meta_page and
# test_meta_root_pointer_to_any_page below.
_DB_RECORD_FIELDS_THAT_CRASH = {o for db in (24, 72) for o in (*range(db + 4, db + 6), *range(db + 40, db + 48))}
_META_OFFSETS = st.sampled_from([0, PSIZE]).flatmap(
    lambda page: st.integers(0, 135).filter(lambda o: o not in _DB_RECORD_FIELDS_THAT_CRASH)
    .map(lambda o: page + 16 + o))


@given(patches=st.lists(st.tuples(_META_OFFSETS, st.binary(min_size=1, max_size=8)), min_size=1, max_size=4),
       write=st.booleans())
def test_damaged_meta_pages(tmp_path_factory, _probers, real_files, patches, write):
    backend = kvstore.codec.backend  # set for this test by the autouse codec_backend fixture
    if backend != kvstore.codec.backends()[0]:
        pytest.skip("file-level: run with the first codec backend only")
    if backend not in _probers:
        _probers[backend] = Prober({"KVSTORE_CODEC": backend})
    probe = _probers[backend].probe
    data = bytearray(real_files["data"])
    for off, chunk in patches:
        for i, byte in enumerate(chunk):
            if (off + i) % PSIZE - 16 not in _DB_RECORD_FIELDS_THAT_CRASH:
                data[off + i] = byte
    path = str(tmp_path_factory.mktemp("meta") / "store")
    _write(path, "data.mdb", bytes(data))
    before = _digest(path)
    result = probe(path, write=write, timeout=10)
    assert result["status"] in ("ok", "error"), result  # never a signal, a hang or a stray exception
    if result["status"] == "error":
        assert result["type"] in FILE_ERRORS, result
        if result["stage"] == "open":
            after = _digest(path)
            after.pop("lock.mdb", None)
            assert after == before, "a refused open changed data.mdb"
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


# ---------------------------------------------------------------- lock.mdb


@pytest.mark.parametrize("kind", ["random", "zeros"])
@pytest.mark.parametrize("size", [1, 100, PSIZE, 2 * PSIZE, 3 * PSIZE, 50000])
def test_garbage_lock_file_is_rebuilt_and_data_kept(tmp_path, probe, real_files, kind, size):
    path = str(tmp_path / "store")
    _write(path, "data.mdb", real_files["data"])
    _write(path, "lock.mdb", _garbage(kind, size))
    ro = probe(path, readonly=True)
    assert ro["status"] == "ok" and ro["keys"] == real_files["keys"] and not ro["bad_keys"], ro
    rw = probe(path, write=True)
    assert rw["status"] == "ok" and rw["keys"] == real_files["keys"], rw
    with kvstore.open(path, readonly=True) as db:
        assert db.get("k:02999") == bytes([2999 % 251]) * (2999 % 300)
        assert db.get("probe:0") == "written"


@pytest.mark.parametrize("what", ["lock.mdb is a directory", "lock.mdb is a FIFO", "only a garbage lock.mdb"])
def test_odd_lock_files(tmp_path, probe, real_files, what):
    path = str(tmp_path / "store")
    if what == "only a garbage lock.mdb":
        _write(path, "lock.mdb", _garbage("random", 5000))
        result = probe(path, write=True)  # no data.mdb: a new store, the lock file rebuilt
        assert result["status"] == "ok" and result["keys"] == 0, result
        return
    _write(path, "data.mdb", real_files["data"])
    if what == "lock.mdb is a directory":
        os.mkdir(os.path.join(path, "lock.mdb"))
    else:
        os.mkfifo(os.path.join(path, "lock.mdb"))
    before = _digest(path)
    for req in ({"write": True}, {"readonly": True}):
        _assert_clean_failure(probe(path, timeout=10, **req), path, before)


# ---------------------------------------------------------------- not a store


@pytest.mark.parametrize("what", ["a subdirectory", "other files", "data.mdb dangling symlink",
                                  "data.mdb -> /dev/null", "path is a file", "plain LMDB environment"])
def test_paths_that_are_not_a_store(tmp_path, probe, what):
    path = str(tmp_path / "store")
    if what == "a subdirectory":
        os.makedirs(os.path.join(path, "sub"))
    elif what == "other files":
        _write(path, "notes.txt", b"mine")
        _write(path, "data.mdb.bak", b"x" * 5000)
    elif what == "data.mdb dangling symlink":
        os.makedirs(path)
        os.symlink(os.path.join(path, "nowhere"), os.path.join(path, "data.mdb"))
    elif what == "data.mdb -> /dev/null":
        os.makedirs(path)
        os.symlink("/dev/null", os.path.join(path, "data.mdb"))
    elif what == "path is a file":
        with open(path, "wb") as f:
            f.write(b"hello")
    else:
        env = lmdb.open(path, max_dbs=4)
        with env.begin(write=True) as txn:
            txn.put(b"a", b"b")
        env.close()
    top = path
    while not os.path.isdir(top):
        top = os.path.dirname(top)
    before = _digest(top)
    # what the message must say, for the write open (the read-only one may
    # say "no store" first)
    said = {"other files": "other files", "path is a file": "is a file",
            "plain LMDB environment": "not a kvstore store"}.get(what)
    for req in ({"write": True}, {"readonly": True}):
        result = probe(path, **req)
        assert result["status"] == "error" and result["type"] in FILE_ERRORS, result
        if said and "write" in req:
            assert said in result["msg"], result
        after = _digest(top)
        after.pop("lock.mdb", None) if "lock.mdb" not in before else None
        assert after == before


# ---------------------------------------------------------------- versions


def _set_format(path, value):
    env = lmdb.open(path, max_dbs=70)
    meta = env.open_db(b"__kvstore__")
    with env.begin(write=True, db=meta) as txn:
        if value is None:
            txn.delete(b"format_version")
        else:
            txn.put(b"format_version", value)
    env.close()


@pytest.mark.parametrize("value", [b"5", b"999", b"18446744073709551616", b"abc", b"", b"1\x00", b"-1", None])
def test_newer_or_damaged_store_format(tmp_path, probe, value):
    path = _real_store(str(tmp_path / "store"), n=200)
    _set_format(path, value)
    before = _digest(path)
    for req in ({"write": True}, {"readonly": True}):
        result = probe(path, **req)
        if value == b"-1":  # an older format than any: nothing says it is refused
            assert result["status"] in ("ok", "error"), result
            continue
        _assert_clean_failure(result, path, before)
        assert result["type"] == "FormatError", result
        assert ("newer kvstore" in result["msg"]) == (value in (b"5", b"999", b"18446744073709551616")), result


# 2 is the TTL prefix's version byte (a v1 record with it is a damaged TTL
# record: tests/test_ttl.py); 3 is a record version (tests/test_keyed_checksum.py)
@pytest.mark.parametrize("version", [4, 9, 255])
def test_value_with_a_newer_record_version(tmp_path, probe, version):
    path = _real_store(str(tmp_path / "store"), n=200)
    env = lmdb.open(path, max_dbs=70)
    dbi = env.open_db(b"other")
    with env.begin(write=True, db=dbi) as txn:
        record = bytes(txn.get(b"o:0007"))
        txn.put(b"o:0007", bytes([version]) + record[1:])
    env.close()
    before = _digest(path)
    result = probe(path, readonly=True)
    # the store opens; that value, and only it, is refused as a newer format
    assert result["status"] == "ok" and result["bad_keys"] == [["other", "o:0007", "FormatError"]], result
    assert _digest(path) == before
    with kvstore.open(path, readonly=True) as db:
        ns = db.namespace("other")
        with pytest.raises(kvstore.FormatError, match="o:0007"):
            ns.get("o:0007")
        assert ns.get("o:0008") == {"i": 8}
        assert db.get("k:00199") == bytes([199 % 251]) * (199 % 300)


# ---------------------------------------------------------------- found here: crashes and hangs


@pytest.mark.parametrize("what", ["data.mdb is a directory", "path below a file"])
def test_odd_paths_raise_a_kvstore_error(tmp_path, one_backend, probe, what):
    path = str(tmp_path / "store")
    if what == "data.mdb is a directory":
        os.makedirs(os.path.join(path, "data.mdb"))
    else:
        with open(path, "wb") as f:
            f.write(b"hello")
        path = os.path.join(path, "inner")
    result = probe(path, write=True)
    assert result["status"] == "error" and result["type"] in FILE_ERRORS, result


def test_data_mdb_that_is_a_fifo(tmp_path, one_backend, probe):
    path = str(tmp_path / "store")
    os.makedirs(path)
    os.mkfifo(os.path.join(path, "data.mdb"))
    result = probe(path, write=True, timeout=2)
    assert result["status"] == "error" and result["type"] in FILE_ERRORS, result


def test_damaged_database_flags_in_the_meta_page(tmp_path, one_backend, probe, real_files):
    data = bytearray(real_files["data"])
    flags_at = _newest_meta(data) * PSIZE + 16 + 24 + 4  # mm_dbs[FREE_DBI].md_flags
    struct.pack_into("<H", data, flags_at, struct.unpack_from("<H", data, flags_at)[0] | 0x04)
    path = str(tmp_path / "store")
    _write(path, "data.mdb", bytes(data))
    result = probe(path, write=True)
    assert result["status"] == "error" and result["type"] in FILE_ERRORS, result


def _free_list_pages(data, newest):
    """Page numbers on the free list of the newest meta page (its free-list
    database is one leaf page in these small stores)."""
    root = struct.unpack_from("<Q", data, newest * PSIZE + 16 + 24 + 40)[0]
    off = root * PSIZE
    _pgno, _pad, flags, lower, _upper = struct.unpack_from("<QHHHH", data, off)
    assert flags == 0x02, "the free list is not a single leaf page"
    pages = []
    for i in range((lower - 16) // 2):
        node = off + struct.unpack_from("<H", data, off + 16 + 2 * i)[0]
        ksize = struct.unpack_from("<H", data, node + 6)[0]
        ids = node + 8 + ksize  # an IDL: a count, then the page numbers
        count = struct.unpack_from("<Q", data, ids)[0]
        pages += struct.unpack_from(f"<{count}Q", data, ids + 8)
    return pages


def test_meta_root_pointing_at_a_free_page(tmp_path, one_backend, probe, real_files):
    data = real_files["data"]
    newest = _newest_meta(data)
    free = _free_list_pages(data, newest)
    assert free
    crashes = []
    for page in free:
        damaged = bytearray(data)
        struct.pack_into("<Q", damaged, newest * PSIZE + 16 + 72 + 40, page)  # mm_dbs[MAIN_DBI].md_root
        path = str(tmp_path / f"root-{page}")
        _write(path, "data.mdb", bytes(damaged))
        result = probe(path, write=True)
        # ok (an older copy of the root, still intact) or a clear error; never a crash
        if result["status"] not in ("ok", "error") or result.get("type", "FormatError") not in FILE_ERRORS:
            crashes.append((page, result))
    assert not crashes, crashes


def test_damaged_leaf_page_node_offset(tmp_path, one_backend, probe, real_files):
    # LMDB does not bound-check nodes inside a page: a damaged node offset in
    # a leaf page makes a read touch the map past the end of data.mdb, SIGBUS
    # (found by random byte patches; 1 in ~400 patches of a real store did
    # it). This store is small enough for the whole page walk at open
    # (kvstore/lmdbfile.py), which finds the offset; in a bigger store only
    # `kvstore check` would (test_lmdbfile.py).
    data = bytearray(real_files["data"])
    pages = len(data) // PSIZE
    last_leaf = None
    for pg in range(2, pages):
        off = pg * PSIZE
        pgno, _pad, flags, lower, _upper = struct.unpack_from("<QHHHH", data, off)
        if pgno == pg and flags == 0x02 and lower > 16:  # P_LEAF with nodes
            node = struct.unpack_from("<H", data, off + 16)[0]
            if data[off + node + 8: off + node + 10] == b"k:":
                last_leaf = pg
    assert last_leaf is not None and last_leaf + 16 > pages
    struct.pack_into("<H", data, last_leaf * PSIZE + 16, 0xFFF0)  # first node: 15 pages further on
    path = str(tmp_path / "store")
    _write(path, "data.mdb", bytes(data))
    result = probe(path, readonly=True)
    assert result["status"] == "error" and result["type"] in FILE_ERRORS, result
    assert f"page {last_leaf}" in result["msg"] and "kvstore check" in result["msg"], result
