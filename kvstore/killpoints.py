"""Named points in the commit path where a crash test can kill the process.

Arm one with the environment variable ``KVSTORE_KILL_POINT=NAME`` (die the
first time NAME is reached) or ``NAME:N`` (the N-th time). The process then
sends itself SIGKILL on the spot: no atexit, no flush, no cleanup, as in a
real crash. Unarmed, each point costs one global lookup.

Points (in the order a commit reaches them). Without a write-ahead log the
LMDB commit is the writer's; with one (wal.py) it is the applier's, and the
log's own points come first:

    log-mid-append    half of a leader's records written into the log, the
                      index not yet moved (nothing of them acknowledged)
    log-after-append  records written and published in the index (visible to
                      every process, buffered writes not yet acknowledged),
                      not synced
    log-after-sync    a durable group's records synced, not yet acknowledged
    mid-apply         half of the commit's operations written into the LMDB
                      transaction, not committed
    before-commit     every operation written, transaction not yet committed
    after-commit      committed and synced, no writer acknowledged yet (with
                      a log: the index does not say it is applied yet)
    after-apply       with a log: the apply published, the log's space not
                      yet reused
"""

from __future__ import annotations

import os
import signal
from typing import Any

__all__ = ["POINTS", "armed", "reached"]

POINTS = ("log-mid-append", "log-after-append", "log-after-sync", "mid-apply", "before-commit",
          "after-commit", "after-apply")


def _parse(spec: str | None) -> list[Any] | None:
    if not spec:
        return None
    name, _, count = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"KVSTORE_KILL_POINT names an unknown point {name!r}; known: {', '.join(POINTS)}")
    return [name, int(count) if count else 1]


armed = _parse(os.environ.get("KVSTORE_KILL_POINT"))


def reached(name: str) -> None:
    """Kill the process if `name` is the armed point (call only when `armed`)."""
    if armed is None or armed[0] != name:
        return
    armed[1] -= 1
    if armed[1] <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
