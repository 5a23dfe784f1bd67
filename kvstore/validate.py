"""Checks of the arguments of public calls, shared by the modules that take them.

Each function checks one argument and returns it in the form the caller
uses, or raises the kvstore error for it: `InvalidArgumentTypeError` (also a
``TypeError``) for an object of the wrong type, `InvalidArgumentError` (a
``ValueError``) for a value out of range. Messages name the call and the
argument, and say what is accepted.

    check_count(value, name, what, minimum, maximum=None) -> int
    check_timeout(timeout, what="flush") -> float | None
    check_keys_iterable(keys, what) -> list
"""

from __future__ import annotations

import math
import operator
import threading
from typing import Any

from .errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["check_count", "check_timeout", "check_keys_iterable"]

# Longer waits than this are refused by threading (OverflowError); such a
# timeout (over 290 years) means "no timeout".
_LONGEST_WAIT = threading.TIMEOUT_MAX

_SINGLE_KEY = (str, bytes, bytearray, memoryview)


def _type_name(value: object) -> str:
    return type(value).__name__


def check_count(value: Any, name: str, what: str, minimum: int, maximum: int | None = None) -> int:
    """An integer argument (an int, or an object with __index__; not a bool)
    within minimum .. maximum (no upper bound when maximum is None)."""
    if isinstance(value, bool):
        raise InvalidArgumentTypeError(f"{what}: {name} must be an integer, not a bool ({value!r})")
    try:
        number = operator.index(value)
    except TypeError:
        raise InvalidArgumentTypeError(
            f"{what}: {name} must be an integer, not {_type_name(value)} ({value!r:.60})") from None
    if number < minimum or (maximum is not None and number > maximum):
        accepted = f"at least {minimum}" if maximum is None else f"{minimum} .. {maximum}"
        raise InvalidArgumentError(f"{what}: {name} must be {accepted}, not {number}")
    return number


def check_timeout(timeout: Any, what: str = "flush") -> float | None:
    """A timeout in seconds: None (wait as long as it takes) or a number >= 0.

    Returns None for None, for math.inf and for any wait longer than threading
    can do (over 290 years), else the timeout as a float.
    """
    if timeout is None:
        return None
    # float() would take "1" or b"1": a timeout is a number, never text.
    if isinstance(timeout, (bool, str, bytes, bytearray, memoryview)):
        seconds = None
    else:
        try:
            seconds = float(timeout)  # int, float, and real numbers (Decimal, Fraction, numpy)
        except OverflowError:  # an int too large for a float: longer than any wait, or negative
            if timeout < 0:
                _negative(timeout, what)
            return None
        except (TypeError, ValueError):
            seconds = None
    if seconds is None:
        raise InvalidArgumentTypeError(
            f"{what}: timeout must be a number of seconds or None, not "
            f"{_type_name(timeout)} ({timeout!r:.60})")
    if math.isnan(seconds) or seconds < 0:
        _negative(timeout, what)
    if seconds >= _LONGEST_WAIT:
        return None
    return seconds


def _negative(timeout: float, what: str) -> None:
    raise InvalidArgumentError(
        f"{what}: timeout must be >= 0 seconds (or None to wait as long as it takes), not {timeout!r}")


def check_keys_iterable(keys: Any, what: str) -> list[Any]:
    """The keys of an iterable of keys, as a list (the keys themselves are
    checked by the caller). A single str or bytes is refused: iterating it
    would look up its characters or byte values one by one."""
    if isinstance(keys, _SINGLE_KEY):
        raise InvalidArgumentTypeError(
            f"{what}: keys must be an iterable of keys (a list or tuple of str or bytes), not a "
            f"single {_type_name(keys)}; for one key pass [key]")
    try:
        it = iter(keys)
    except TypeError:
        raise InvalidArgumentTypeError(
            f"{what}: keys must be an iterable of keys (a list or tuple of str or bytes), not "
            f"{_type_name(keys)}") from None
    return list(it)
