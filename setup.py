"""Build script: project metadata lives in pyproject.toml.

setup.py exists for what pyproject.toml cannot say: the cffi extension of the
native codec, `kvstore._native`, built from native/kvcodec.c by the
`cffi_modules` hook below (native/build_native.py). Building it needs a C
compiler and the Python headers only; zstd is loaded at run time.
"""

from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
