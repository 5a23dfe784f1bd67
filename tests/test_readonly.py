"""A handle opened with readonly=True never writes, whatever else is open in
the process, and a store whose files this process may not write can still be
read with readonly=True (or is refused with the real cause)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

import kvstore
import kvstore.aio
from kvstore.errors import ReadOnlyError, StoreInUseError
from support import mounts


def _writes(handle):
    """Every write entry point of a handle, each a zero-argument call."""
    def batch():
        with handle.batch() as b:
            b.put("k", 1)

    return {
        "put": lambda: handle.put("k", 1),
        "setitem": lambda: handle.__setitem__("k", 1),
        "delete": lambda: handle.delete("k"),
        "delitem": lambda: handle.__delitem__("k"),
        "put_many": lambda: handle.put_many({"k": 1}),
        "batch": batch,
        "new namespace with ttl": lambda: handle.namespace("brand-new-ttl", ttl=60),
        "set_default_ttl": lambda: handle.set_default_ttl(60),
        "train_dictionary": lambda: handle.train_dictionary(),
        "refresh_ttl": lambda: handle.get("k", refresh_ttl=True),
    }


@pytest.mark.parametrize("entry", sorted(_writes(None)))
@pytest.mark.parametrize("where", ["default", "namespace"])
def test_a_readonly_handle_refuses_every_write_while_a_writable_one_is_open(store_path, entry, where):
    with kvstore.open(store_path) as writable:
        writable.put("k", 0, durable=True)
        writable.namespace("ns").put("k", 0, durable=True)
        with kvstore.open(store_path, readonly=True) as ro:
            handle = ro if where == "default" else ro.namespace("ns")
            with pytest.raises(ReadOnlyError, match="read-only"):
                _writes(handle)[entry]()
        writable.flush()
        assert writable.get("k") == 0
        assert writable.namespace("ns").get("k") == 0
        assert writable.namespaces() == ["default", "ns"]


def test_a_readonly_handle_never_creates_a_namespace_while_a_writable_one_is_open(store_path):
    # As with no writable handle open (test_store_api): a missing namespace
    # reads as empty through a read-only handle, and is not created.
    with kvstore.open(store_path) as writable:
        with kvstore.open(store_path, readonly=True) as ro:
            missing = ro.namespace("brand-new")
            assert missing.get("k") is None and list(missing.scan()) == []
            with pytest.raises(ReadOnlyError):
                missing.put("k", 1)
        assert writable.namespaces() == ["default"]


def test_a_writable_handle_still_writes_beside_a_readonly_one(store_path):
    with kvstore.open(store_path) as writable, kvstore.open(store_path, readonly=True) as ro:
        writable.put("k", 1, durable=True)
        assert ro.get("k") == 1


def test_an_async_readonly_handle_refuses_writes_while_a_writable_one_is_open(store_path):
    async def main():
        async with kvstore.aio.open(store_path) as writable:
            await writable.aput("k", 0, durable=True)
            async with kvstore.aio.open(store_path, readonly=True) as ro:
                for call in (lambda: ro.aput("k", 1), lambda: ro.adelete("k"),
                             lambda: ro.aput_many({"k": 1}),
                             lambda: ro.atrain_dictionary()):
                    with pytest.raises(ReadOnlyError):
                        await call()
                with pytest.raises(ReadOnlyError):
                    async with ro.abatch() as b:
                        b.put("k", 1)
                await ro.anamespace("brand-new")
            assert await writable.aget("k") == 0
            assert await writable.anamespaces() == ["default"]

    asyncio.run(main())


# ---------------------------------------------------------------- files this process may not write


NOBODY = 65534
_ROOT = os.geteuid() == 0


def _make_store(path):
    with kvstore.open(path) as db:
        db.put("k", {"v": 1}, durable=True)
        db.namespace("notes").put("n1", "hello", durable=True)


@pytest.fixture
def shared_store():
    """A store owned by root, mode 0644 files in 0755 directories, which
    the user nobody can read but not write (another user's store)."""
    top = tempfile.mkdtemp(prefix="kvstore-shared-")
    os.chmod(top, 0o755)
    path = os.path.join(top, "store")
    _make_store(path)
    os.chmod(path, 0o755)
    for name in ("data.mdb", "lock.mdb"):
        os.chmod(os.path.join(path, name), 0o644)
    yield path
    shutil.rmtree(top, ignore_errors=True)


# The child starts as root and becomes nobody once kvstore is imported: the
# interpreter may live in a directory nobody may enter (/root).
_BECOME_NOBODY = f"""
import os, kvstore, kvstore.cli
kvstore.cli.build_parser().format_help()  # its lazy imports too
os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})
"""


def _as_nobody(code, *args, wait=True):
    """Run python code as the user nobody (a process that may read the store
    but not write it)."""
    proc = subprocess.Popen([sys.executable, "-c", _BECOME_NOBODY + code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HOME": "/tmp"},
                            cwd="/")
    if not wait:
        return proc
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


_READ = """
import sys, kvstore
try:
    with kvstore.open(sys.argv[1], readonly=True) as db:
        print(db.get("k"), db.namespace("notes").get("n1"), sorted(db.keys()))
except kvstore.KVStoreError as exc:
    print(type(exc).__name__, exc)
"""


needs_root = pytest.mark.skipif(not _ROOT, reason="switching to another user needs root")


@needs_root
def test_another_users_store_reads_with_readonly_true(shared_store):
    status, out, err = _as_nobody(_READ, shared_store)
    assert (status, err) == (0, "")
    assert out == "{'v': 1} hello [b'k']\n"


@needs_root
def test_the_cli_reads_another_users_store(shared_store):
    status, out, err = _as_nobody("import sys; from kvstore.cli import main; sys.exit(main())",
                                  "get", shared_store, "k")
    assert (status, out, err) == (0, '{"v": 1}\n', "")
    status, out, err = _as_nobody("import sys; from kvstore.cli import main; sys.exit(main())",
                                  "check", shared_store)
    assert status == 0 and "all good" in out


@needs_root
def test_writing_another_users_store_names_the_permission(shared_store):
    status, out, err = _as_nobody(_READ.replace(", readonly=True", ""), shared_store)
    assert out.startswith("ReadOnlyError ")
    assert "Permission denied" in out and "may not write the store's files" in out


@needs_root
def test_another_users_store_in_use_is_refused_with_the_real_cause(shared_store):
    with kvstore.open(shared_store) as writer:  # root, the owner, has it open
        writer.put("k", 2, durable=True)
        status, out, err = _as_nobody(_READ, shared_store)
    assert out.startswith("StoreAccessError ")
    assert "may not write" in out and "lock.mdb" in out and "other processes have the store open" in out
    assert "readonly=True" not in out  # it was given: never the advice


@needs_root
def test_a_writer_waits_out_a_reader_without_the_lock(shared_store):
    reader = _as_nobody("""
import sys, kvstore
with kvstore.open(sys.argv[1], readonly=True) as db:
    print(db.get("k"), flush=True)
    __import__("time").sleep(30)
""", shared_store, wait=False)
    try:
        assert reader.stdout.readline() == "{'v': 1}\n"
        with pytest.raises(StoreInUseError, match="without LMDB's lock"):
            kvstore.open(shared_store)
        with kvstore.open(shared_store, readonly=True) as ro:  # readers are welcome
            assert ro.get("k") == {"v": 1}
    finally:
        reader.kill()
        reader.wait()
    with kvstore.open(shared_store) as db:  # once it is gone
        db.put("k", 3, durable=True)


def test_a_store_whose_lock_file_is_immutable_reads_with_readonly_true(store_path):
    # An immutable lock.mdb (chattr +i): not writable even by root.
    _make_store(store_path)
    with mounts.immutable(os.path.join(store_path, "lock.mdb")):
        with kvstore.open(store_path, readonly=True) as db:
            assert db.get("k") == {"v": 1}
            assert db.namespace("notes").get("n1") == "hello"
            with pytest.raises(ReadOnlyError):
                db.put("k", 2)
        with pytest.raises(ReadOnlyError, match="Operation not permitted.*readonly=True"):
            kvstore.open(store_path)


@pytest.fixture
def readonly_mount(tmp_path):
    """A tmpfs holding a store, remounted read-only."""
    where = tmp_path / "mnt"
    where.mkdir()
    with mounts.tmpfs(where, "8m"):
        _make_store(str(where / "store"))
        mounts.remount_readonly(where)
        yield str(where / "store")


def test_a_store_on_a_readonly_mount_reads_and_refuses_writes_by_cause(readonly_mount):
    with kvstore.open(readonly_mount, readonly=True) as db:
        assert db.get("k") == {"v": 1}
    with pytest.raises(ReadOnlyError, match="read-only file system.*readonly=True"):
        kvstore.open(readonly_mount)


def test_cli_reads_a_store_on_a_readonly_mount(readonly_mount, capsys):
    from kvstore.cli import main

    assert main(["get", readonly_mount, "k"]) == 0
    assert main(["keys", readonly_mount, "-n", "notes"]) == 0
    assert main(["dump", readonly_mount, "-n", "notes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ['{"v": 1}', "n1"]
    assert out[-1] == '{"k":"n1","v":"hello"}'
