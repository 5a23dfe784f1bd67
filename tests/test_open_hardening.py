"""Opening a store whose files were tampered with, raced for, or sit on a
file system that refuses writes (issue 21, findings 4, 5, 6a-c).

Real processes, real LMDB files, real tmpfs mounts."""

import os
import subprocess
import sys
import textwrap

import pytest

import kvstore
from kvstore.errors import ReadOnlyError, StoreFailedError

# ---------------------------------------------------------------- 6b, 6c: file systems


def test_writable_open_on_a_read_only_file_system(small_tmpfs):
    path = os.path.join(small_tmpfs, "store")
    with kvstore.open(path) as db:
        db.put("a", 1, durable=True)
    subprocess.run(["mount", "-o", "remount,ro", small_tmpfs], check=True)
    with pytest.raises(ReadOnlyError, match="read-only file system") as info:
        kvstore.open(path)
    assert "readonly=True" in str(info.value)
    with pytest.raises(ReadOnlyError, match="read-only"):
        kvstore.open(os.path.join(small_tmpfs, "new"))
    with kvstore.open(path, readonly=True) as db:
        assert db.get("a") == 1


def test_a_full_disk_is_named(small_tmpfs):
    path = os.path.join(small_tmpfs, "store")
    with kvstore.open(path) as db:
        db.put("base", 1, durable=True)
        with pytest.raises(StoreFailedError) as info:
            for i in range(2000):
                db.put_many({f"k{i}:{j}": os.urandom(3000) for j in range(20)}, durable=True)
        message = str(info.value)
        assert "disk is full" in message and f"free space on the file system holding {path}" in message
        assert "nothing of it was written" in message
        with pytest.raises(StoreFailedError):  # refused until reopened, as before
            db.put("more", 1, durable=True)
        with pytest.raises(StoreFailedError):
            db.close()
    with kvstore.open(path, readonly=True) as db:
        assert db.get("base") == 1


FSIZE = textwrap.dedent("""
    import os, resource, signal, sys
    import kvstore
    path = sys.argv[1]
    with kvstore.open(path) as db:
        db.put("base", 1, durable=True)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = os.path.getsize(os.path.join(path, "data.mdb")) + 200_000
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        try:
            for i in range(2000):
                db.put_many({f"k{i}:{j}": os.urandom(3000) for j in range(20)}, durable=True)
            print("no error")
        except kvstore.StoreFailedError as exc:
            print(exc)
        try:
            db.close()
        except kvstore.StoreFailedError:
            pass
""")


def test_the_file_size_limit_is_named(tmp_path):
    path = str(tmp_path / "store")
    out = subprocess.run([sys.executable, "-c", FSIZE, path], capture_output=True, text=True, timeout=120)
    message = out.stdout.strip()
    assert out.returncode == 0, out.stderr
    assert "file-size limit" in message and "ulimit -f" in message, message
    assert "nothing of it was written" in message
    with kvstore.open(path, readonly=True) as db:
        assert db.get("base") == 1
