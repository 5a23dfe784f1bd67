"""Build script: project metadata lives in pyproject.toml.

setup.py exists for what pyproject.toml cannot say: the cffi extension of the
native codec (registered here with `cffi_modules` once native/ provides it).
"""

from setuptools import setup

setup()
