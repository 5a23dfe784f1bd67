"""Copying a live store (LMDB's mdb_env_copy2) into a new directory,
atomically: into a temporary directory beside DEST, synced, then renamed.

The temporary directory is private (mkdtemp makes it 0700) while the copy
is made; DEST then gets the mode `mkdir` would have given it (0777 less
the umask). Errors name DEST, never the temporary directory."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

from typing import TYPE_CHECKING, Any, Callable

import lmdb

from kvstore import engine
from kvstore.errors import translate

from ._common import CommandError, Progress
from ._output import umask, write_error

if TYPE_CHECKING:
    from kvstore.engine import Engine
    from kvstore.store import Store

__all__ = ["check_dest", "copy_store"]


def check_dest(dest: str) -> None:
    """DEST must be new, or an empty directory."""
    if os.path.isdir(dest):
        if os.path.exists(os.path.join(dest, "data.mdb")):
            raise CommandError(f"{dest!r} already holds a store; give a new directory")
        if os.listdir(dest):
            raise CommandError(f"{dest!r} is a directory that is not empty; give a new or empty directory")
    elif os.path.lexists(dest):
        raise CommandError(f"{dest!r} exists and is not a directory; give a new directory")


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(env: Engine, tmp: str, target: str, compact: bool, dest: str) -> None:
    while True:
        env.map_lock.acquire_shared()  # no map resize in this process meanwhile
        try:
            env.lmdb.copy(tmp, compact=compact)
            return
        except lmdb.MapResizedError:
            pass  # another process grew the map: adopt its size, start again
        except lmdb.Error as exc:
            code = next((c for c in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)
                         if str(exc).endswith(os.strerror(c))), None)
            if code is not None:  # the copy's side: LMDB's text names the temporary directory
                raise write_error(dest, OSError(code, os.strerror(code)), "copy the store to") from None
            raise translate(exc, f"copying the store to {dest!r}") from None
        finally:
            env.map_lock.release_shared()
        if os.path.exists(target):
            os.unlink(target)
        env.adopt_map_size()


def copy_store(db: Store[Any], dest: str, compact: bool, label: str,
               rewrite: Callable[[str], Any] | None = None) -> int:
    """Copy db's environment into dest; return the size of the new data.mdb.

    rewrite(directory), if given, may change the copy (a private one, in a
    temporary directory) before it is synced and renamed into place."""
    check_dest(dest)
    env = engine.of(db)
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise CommandError(f"cannot create {dest!r}: {parent!r} is not a directory")
    try:
        tmp = tempfile.mkdtemp(prefix="." + os.path.basename(os.path.abspath(dest)) + ".", suffix=".tmp",
                               dir=parent)
    except OSError as exc:
        raise write_error(dest, exc, "create") from None
    try:
        target = os.path.join(tmp, "data.mdb")
        expected = env.info()["map_used"]
        with Progress(label, expected, unit="bytes", poll=lambda: os.path.getsize(target)) as progress:
            _copy(env, tmp, target, compact, dest)
            if rewrite is not None:
                rewrite(tmp)
            size = os.path.getsize(target)
            progress.set(size)
        try:
            _fsync_path(target)
        except OSError as exc:
            raise write_error(dest, exc, "copy the store to") from None
        if os.path.isdir(dest):  # an empty directory: move the file in
            os.replace(target, os.path.join(dest, "data.mdb"))
            _fsync_path(dest)
            os.rmdir(tmp)
        else:
            os.chmod(tmp, 0o777 & ~umask())
            os.rename(tmp, dest)
        _fsync_path(parent)
        return size
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
