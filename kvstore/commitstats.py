"""The writer's counters: commits, ops, bytes and commit times, for stats().

One `CommitStats` per writer. Its fields are guarded by the writer's lock:
the writer updates them in place where it finishes a commit (`committed`)
or appends a group alone (writer.py `_append_alone`, field by field: that
is the log's hot path, and it takes no extra call for them). `report()`
reads them, also under the writer's lock.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

from .codec.format import raw_len

if TYPE_CHECKING:
    from .group import Group

__all__ = ["CommitStats"]


class CommitStats:
    """Counters since the store was opened; guarded by the writer's lock."""

    __slots__ = ("commits", "ops_committed", "max_ops_in_commit", "bytes_in", "bytes_stored",
                 "durable_groups", "buffered_groups", "last_commit_seq", "commit_seconds")

    def __init__(self) -> None:
        self.commits = 0
        self.ops_committed = 0
        self.max_ops_in_commit = 0
        self.bytes_in = 0  # serialized bytes of the values committed
        self.bytes_stored = 0  # their stored bytes (compressed or not)
        self.durable_groups = 0
        self.buffered_groups = 0
        self.last_commit_seq = 0
        self.commit_seconds: collections.deque[float] = collections.deque(maxlen=4096)

    @staticmethod
    def sizes(groups: list[Group]) -> tuple[int, int]:
        """(bytes_in, bytes_stored) of the groups' values; needs no lock."""
        bytes_in = bytes_stored = 0
        for g in groups:
            for _ns, _dbi, _key, record in g.ops:
                if record is not None:
                    bytes_in += raw_len(record)
                    bytes_stored += len(record)
        return bytes_in, bytes_stored

    def committed(self, ops: int, bytes_in: int, bytes_stored: int, seq: int, seconds: float) -> None:
        """Under the writer's lock: one commit of ops writes is done (its
        groups are counted by the writer, which walks them anyway)."""
        self.commits += 1
        self.ops_committed += ops
        self.bytes_in += bytes_in
        self.bytes_stored += bytes_stored
        self.max_ops_in_commit = max(self.max_ops_in_commit, ops)
        self.commit_seconds.append(seconds)
        self.last_commit_seq = seq

    def report(self, failed: str | None, pending: int, hook_error: str | None) -> dict[str, Any]:
        """Under the writer's lock: the counters as Writer.stats() gives
        them, with the writer's own state (failed, pending, hook_error)."""
        times = sorted(self.commit_seconds)
        out: dict[str, Any] = {
            "commits": self.commits,
            "ops_committed": self.ops_committed,
            "ops_per_commit": {"mean": self.ops_committed / self.commits if self.commits else 0.0,
                               "max": self.max_ops_in_commit},
            "durable_groups": self.durable_groups,
            "buffered_groups": self.buffered_groups,
            "bytes_in": self.bytes_in,
            "bytes_stored": self.bytes_stored,
            "failed": failed,
            "pending": pending,
            "hook_error": hook_error,
            "commit_seconds": {"p50": 0.0, "p99": 0.0},
            "compression_ratio": self.bytes_stored / self.bytes_in if self.bytes_in else None,
        }
        if times:
            out["commit_seconds"] = {"p50": times[len(times) // 2],
                                     "p99": times[min(len(times) - 1, int(len(times) * 0.99))]}
        return out
