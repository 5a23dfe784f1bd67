"""tests/property: crash, fault-injection and hostile-file properties.

The hypothesis profiles (HYPOTHESIS_PROFILE=dev, the default, ci or deep:
tests/support/profiles.py) and the counts printed at the end of the run
(tests/support/crash_report.py) come from tests/conftest.py, which pytest
loads first. This file only makes the shared helpers of tests/support/
(crash_driver, profiles, crash_report) importable from here as `support`
(the test directories are not packages).
"""

import os
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)


@pytest.fixture
def one_backend(codec_backend):
    """For tests of LMDB files that decode no value: one codec backend is enough."""
    import kvstore.codec

    if codec_backend != kvstore.codec.backends()[0]:
        pytest.skip("file-level: run with the first codec backend only")
