"""cffi build script of the native codec: the extension module `kvstore._native`.

Out-of-line API mode: cffi writes a C wrapper around native/kvcodec.c and the
setuptools `cffi_modules` hook (see setup.py) compiles it during
`pip install`, so a plain `pip install -e '.[test]'` builds it. It needs a C
compiler and the Python headers, nothing else: zstd is loaded at run time
with dlopen (docs/native.md explains why), so neither zstd nor xxhash headers
or libraries are needed to build.

Build it by hand into the source tree (for development)::

    python native/build_native.py
"""

import os
import re
import sys

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))
_HEADER = os.path.join(_HERE, "kvcodec.h")
_SOURCE = os.path.join(_HERE, "kvcodec.c")


def _cdef() -> str:
    """The declarations between the CDEF markers of kvcodec.h."""
    with open(_HEADER, encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"/\* CDEF-BEGIN \*/(.*?)/\* CDEF-END \*/", text, re.S)
    if match is None:
        raise RuntimeError(f"{_HEADER} has no CDEF-BEGIN/CDEF-END section")
    return match.group(1)


def _relative(path: str) -> str:
    # setuptools prefers source paths relative to the project root (the
    # working directory of a build); fall back to absolute elsewhere.
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "kvstore._native",
    '#include "kvcodec.h"\n',
    sources=[_relative(_SOURCE)],
    depends=[_relative(_HEADER)],
    include_dirs=[_relative(_HERE)],
    libraries=["dl"] if sys.platform.startswith("linux") else [],
    extra_compile_args=["-O3"] if os.name == "posix" else [],
)


if __name__ == "__main__":
    # Writes kvstore/_native.*.so next to the package sources.
    ffibuilder.compile(tmpdir=os.path.dirname(_HERE), verbose=True)
