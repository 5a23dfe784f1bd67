"""The clock expiries are judged by, injectable.

A clock is any callable returning wall-clock seconds since the Unix epoch,
as `time.time` does (the default). A store takes one as an option,
`kvstore.open(path, clock=...)` (Options.clock), and hands it to the parts
that judge expiry: TTLMeta (stamping new TTL values), the Sweeper, the
ReadCache and the read paths. So a test or a simulation moves time by
passing its own clock, instead of sleeping or patching a module.

Expiries are stored as wall-clock milliseconds, so every process using a
store must agree on the time: a clock other than the wall clock is for one
process's tests and simulations only.
"""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["now_ms", "check_clock", "DEFAULT_CLOCK"]

DEFAULT_CLOCK = time.time


def now_ms(clock: Callable[[], float]) -> int:
    """The time on clock (a callable returning seconds) in whole milliseconds
    since the Unix epoch: the scale of a TTL record's expiry."""
    return int(clock() * 1000)


def check_clock(clock: object) -> None:
    """TypeError unless clock can be called (the option's check at open)."""
    if not callable(clock):
        raise TypeError(f"option clock must be a callable returning wall-clock seconds, like time.time, "
                        f"not {clock!r}")
