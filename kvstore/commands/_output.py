"""An output file written whole or not at all: a temporary file beside it,
fsynced and renamed into place when the command succeeds.

The temporary file is private (mkstemp makes it 0600) until it is complete;
then it gets the mode a plain `open(path, "w")` would have given: that of
the file it replaces, else 0666 less the umask. Errors name the path the
user gave, never the temporary file.
"""

from __future__ import annotations

import os
import tempfile

from ._common import CommandError
from types import TracebackType
from typing import Any, Optional, TextIO, Type

__all__ = ["AtomicOutput", "umask", "write_error"]


def umask() -> int:
    """This process's umask, read without changing it (Linux's
    /proc/self/status; elsewhere set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_error(path: str, exc: OSError, what: str = "write") -> CommandError:
    """A failure to write path (the user's name for it), whatever internal
    file the failing call was on."""
    reason = exc.strerror or str(exc)
    hint = ""
    if exc.errno in (28, 122):  # ENOSPC, EDQUOT
        hint = f"; free space on the file system holding {os.path.dirname(os.path.abspath(path))!r}"
    elif exc.errno in (1, 13, 30):  # EPERM, EACCES, EROFS
        hint = "; choose a place you may write to"
    return CommandError(f"cannot {what} {path!r}: {reason}{hint}")


class AtomicOutput:
    """`with AtomicOutput(path) as f:` writes text to path, atomically for a
    regular file; a device or FIFO (/dev/stdout, a named pipe) is written
    directly."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._tmp: str | None = None
        self.file: TextIO | None = None

    def __enter__(self) -> TextIO:
        if os.path.exists(self.path) and not os.path.isfile(self.path):
            self.file = open(self.path, "w", encoding="utf-8", newline="\n")
            return self.file
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            fd, self._tmp = tempfile.mkstemp(prefix="." + os.path.basename(self.path) + ".",
                                             suffix=".tmp", dir=directory)
        except OSError as exc:
            raise write_error(self.path, exc) from None
        self.file = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        return self.file

    def _mode(self) -> int:
        try:
            return os.stat(self.path).st_mode & 0o7777  # the file it replaces keeps its mode
        except OSError:
            return 0o666 & ~umask()

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        f: Any = self.file  # set by __enter__
        if self._tmp is None:
            f.close()
            return
        if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
            self._discard(f)  # a write to the temporary file failed (a full disk)
            raise write_error(self.path, exc) from None
        try:
            if exc_type is None:
                f.flush()
                os.fchmod(f.fileno(), self._mode())
                os.fsync(f.fileno())
            f.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
                self._tmp = None
                dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as failed:  # flushing, syncing or renaming the temporary file
            raise write_error(self.path, failed) from None
        finally:
            self._discard(f)

    def _discard(self, f: TextIO) -> None:
        if self._tmp is not None:
            try:
                f.close()
            except OSError:
                pass  # the same full disk, flushing what is left: the file goes anyway
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            self._tmp = None
