"""Files and directories the CLI writes (dump -o, backup): their modes follow
the umask, and a failure to write names the path the user gave, never the
temporary file or directory the command writes first."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys

import pytest

import kvstore
from support import mounts


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    from kvstore import commands
    from kvstore.cli import build_parser

    args = build_parser().parse_args([str(a) for a in argv])
    args.clock = None
    status = commands.dispatch(args, out, err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "store")
    with kvstore.open(path) as db:
        db.put_many({f"k{i:04d}": "value " * 40 + str(i) for i in range(400)})
    return path


@pytest.fixture
def umask():
    def set_to(mask):
        os.umask(mask)

    old = os.umask(0o022)
    os.umask(old)
    yield set_to
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                        (0o002, 0o664, 0o775)])
def test_dump_files_and_backup_directories_follow_the_umask(store, tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    assert run(["dump", store, "-o", tmp_path / "all.jsonl"])[0] == 0
    assert run(["dump", store, "--format", "mdb", "-o", tmp_path / "all.mdb"])[0] == 0
    assert run(["backup", store, tmp_path / "copy"])[0] == 0
    assert mode(tmp_path / "all.jsonl") == file_mode
    assert mode(tmp_path / "all.mdb") == file_mode
    assert mode(tmp_path / "copy") == dir_mode


def test_a_dump_over_an_existing_file_keeps_its_mode(store, tmp_path, umask):
    umask(0o022)
    target = tmp_path / "all.jsonl"
    target.write_text("old\n")
    os.chmod(target, 0o640)
    assert run(["dump", store, "-o", target])[0] == 0
    assert mode(target) == 0o640
    assert target.read_text().startswith('{"kvstore":"kvstore-jsonl"')


@pytest.fixture
def unwritable_dir(tmp_path):
    """A directory nobody may create files in, root included (chattr +i)."""
    where = tmp_path / "locked"
    where.mkdir()
    with mounts.immutable(where):
        yield where


def test_errors_writing_into_a_directory_one_may_not_write_name_the_given_path(store, unwritable_dir):
    status, out, err = run(["dump", store, "-o", unwritable_dir / "all.jsonl"])
    assert status == 2
    assert err == (f"kvstore: error: cannot write '{unwritable_dir}/all.jsonl': Operation not permitted; "
                   f"choose a place you may write to\n")
    status, out, err = run(["backup", store, unwritable_dir / "copy"])
    assert status == 2
    assert err == (f"kvstore: error: cannot create '{unwritable_dir}/copy': Operation not permitted; "
                   f"choose a place you may write to\n")


@pytest.fixture
def tiny_disk(tmp_path):
    """A 48 KiB tmpfs: a full disk for anything bigger."""
    where = tmp_path / "tiny"
    where.mkdir()
    with mounts.tmpfs(where, "48k"):
        yield where


def test_errors_writing_to_a_full_disk_name_the_given_path_and_leave_nothing(store, tiny_disk):
    status, out, err = run(["dump", store, "-o", tiny_disk / "all.jsonl"])
    assert status == 2
    assert err == (f"kvstore: error: cannot write '{tiny_disk}/all.jsonl': No space left on device; "
                   f"free space on the file system holding '{tiny_disk}'\n")
    status, out, err = run(["backup", store, tiny_disk / "copy"])
    assert status == 2
    assert err == (f"kvstore: error: cannot copy the store to '{tiny_disk}/copy': No space left on device; "
                   f"free space on the file system holding '{tiny_disk}'\n")
    assert os.listdir(tiny_disk) == []


def test_loading_stdin_with_a_full_temporary_directory_says_what_to_do(store, tiny_disk, tmp_path):
    dump = tmp_path / "all.jsonl"
    assert run(["dump", store, "-o", dump])[0] == 0
    with open(dump, "rb") as stdin:
        proc = subprocess.run([sys.executable, "-m", "kvstore", "load", str(tmp_path / "copy")], stdin=stdin,
                              capture_output=True, text=True, env={**os.environ, "TMPDIR": str(tiny_disk)})
    assert proc.returncode == 2
    assert proc.stderr == (
        f"kvstore: error: cannot keep a copy of the input (stdin) in the temporary directory "
        f"'{tiny_disk}' (No space left on device), which load needs to read it twice; point TMPDIR at a "
        f"file system with room, or give the input as a file with -i FILE\n")
    assert not os.path.exists(tmp_path / "copy")
