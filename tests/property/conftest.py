"""tests/property: crash, fault-injection and hostile-file properties.

The hypothesis profiles ("ci" by default, "fuzz" with HYPOTHESIS_PROFILE=fuzz)
come from tests/conftest.py, which pytest loads first. This file only makes
the shared helper module tests/crash_driver.py importable from here (the
test directories are not packages).
"""

import os
import sys

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)
