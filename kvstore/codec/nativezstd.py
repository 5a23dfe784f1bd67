"""Which zstd the native codec uses: found and loaded when this module is
imported (by nativecodec), or ImportError.

`kvstore._native` does not link zstd: `kvc_load_zstd(path)` opens a shared
object and binds the ZSTD_* functions it needs (docs/native.md). zstd
comes from the zstandard package's own extension, else the system's
libzstd.so.1; the environment variable KVSTORE_ZSTD_LIBRARY names another
shared object to use instead.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from .._native import ffi, lib

__all__ = ["zstd_library", "zstd_version"]


def _zstd_candidates() -> list[str]:
    """Shared objects that may provide zstd, best first."""
    chosen = os.environ.get("KVSTORE_ZSTD_LIBRARY")
    if chosen:  # an explicit choice, tried alone
        return [chosen]
    found = []
    # The zstandard package (a dependency) builds libzstd statically into its
    # cffi extension, which exports the whole ZSTD_* API: the exact zstd the
    # Python backend uses, present wherever kvstore is installed.
    try:
        spec = importlib.util.find_spec("zstandard._cffi")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        found.append(spec.origin)
    if sys.platform == "darwin":
        found.append("libzstd.1.dylib")
    elif sys.platform != "win32":
        found.append("libzstd.so.1")
    return found


def _load_zstd() -> str:
    msg = ffi.new("char[]", 512)
    tried = []
    for path in _zstd_candidates():
        if lib.kvc_load_zstd(path.encode(sys.getfilesystemencoding()), msg, len(msg)) == 0:
            return path
        tried.append(ffi.string(msg).decode("utf-8", "replace"))
    raise ImportError(
        "the native codec found no usable zstd library: "
        + ("; ".join(tried) if tried else "no candidate (zstandard._cffi, libzstd.so.1)")
    )


zstd_library: str = _load_zstd()
"""The shared object zstd was loaded from."""

_v = lib.kvc_zstd_version()
zstd_version: tuple[int, int, int] = (_v // 10000, _v // 100 % 100, _v % 100)
del _v
