"""An output file written whole or not at all: a temporary file beside it,
fsynced and renamed into place when the command succeeds."""

from __future__ import annotations

import os
import tempfile


class AtomicOutput:
    """`with AtomicOutput(path) as f:` writes text to path, atomically for a
    regular file; a device or FIFO (/dev/stdout, a named pipe) is written
    directly."""

    def __init__(self, path: str):
        self.path = path
        self._tmp = None
        self.file = None

    def __enter__(self):
        if os.path.exists(self.path) and not os.path.isfile(self.path):
            self.file = open(self.path, "w", encoding="utf-8", newline="\n")
            return self.file
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, self._tmp = tempfile.mkstemp(prefix="." + os.path.basename(self.path) + ".", suffix=".tmp",
                                         dir=directory)
        self.file = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        f = self.file
        if self._tmp is None:
            f.close()
            return
        try:
            if exc_type is None:
                f.flush()
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
        finally:
            if self._tmp is not None:
                try:
                    os.unlink(self._tmp)
                except OSError:
                    pass
