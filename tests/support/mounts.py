"""File systems and file attributes for tests of what the disk refuses: a
tmpfs (small, or remounted read-only) and chattr's immutable flag, which
stop root too. Each skips the test where the machine does not allow it."""

from __future__ import annotations

import contextlib
import subprocess

import pytest


def _run(*argv) -> None:
    try:
        subprocess.run([str(a) for a in argv], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"`{' '.join(map(str, argv))}` is not allowed here: {exc}")


@contextlib.contextmanager
def tmpfs(where, size: str):
    """A tmpfs of `size` (mount's size=, e.g. "48k") mounted on the
    directory `where` for the block."""
    _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", where)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)


def remount_readonly(where) -> None:
    _run("mount", "-o", "remount,ro", where)


@contextlib.contextmanager
def immutable(path):
    """chattr +i on path for the block: no process may change it, or create
    files in it if it is a directory, root included."""
    _run("chattr", "+i", path)
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
