"""Helpers shared by the test suites, importable as `support` (tests/ is on
sys.path: pytest puts it there for tests/conftest.py, and
tests/property/conftest.py does too).

    crash_driver   writer processes that get killed, and the oracle that
                   checks what survived (tests/property/)
    crash_report   the counts printed at the end of a pytest run
    profiles       HYPOTHESIS_PROFILE=dev|ci|deep: how much the property
                   and crash suites run
"""
