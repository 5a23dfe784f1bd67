"""The agent-memory model behind the scan and mixed workloads.

The corpus keys sessions the way an agent-memory store does:

    session:NNNNNN:msg:NNNNN   a message of a session, numbered in order
    meta:NNNNNN                the session's metadata (stage, flags, event log)
    episode:NNNNNNN            an episode (goal, steps, outcome), numbered globally

A *turn* of an agent reads the session's metadata and its last
`LAST_MESSAGES` messages, then appends `NEW_MESSAGES` messages and one
episode and rewrites the metadata (one more event in its log). The turns
are planned here, outside the timed loops, so that kvstore and sqlite3 do
exactly the same reads and writes, with the same keys and values.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from harness import Result, Unavailable, time_gets

LAST_MESSAGES = 20
NEW_MESSAGES = 3
EVENT_LOG_KEEP = 20  # the rewritten metadata keeps its last 20 events, so its size stays put

_MSG = re.compile(r"^session:(\d+):msg:(\d+)$")
_EPISODE = re.compile(r"^episode:(\d+)$")


def msg_prefix(session: str) -> str:
    return f"session:{session}:msg:"


def prefix_end(prefix: str) -> str:
    """The least string greater than every string starting with prefix."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _sessions(records) -> dict[str, int]:
    """session id -> highest message number, for the sessions with messages."""
    last: dict[str, int] = {}
    for key, _ in records:
        m = _MSG.match(key)
        if m:
            sid, n = m.group(1), int(m.group(2))
            if n > last.get(sid, -1):
                last[sid] = n
    return last


def scan_prefixes(ctx) -> list[str]:
    """ctx.scans message prefixes of the sessions in the data, in a seeded random order."""

    def make():
        sessions = sorted(_sessions(ctx.records))
        if not sessions:
            raise Unavailable("the data has no session:N:msg:N keys to scan")
        rng = random.Random(ctx.seed + 1)
        out = []
        while len(out) < ctx.scans:
            rng.shuffle(sessions)
            out.extend(msg_prefix(s) for s in sessions)
        return out[:ctx.scans]

    return ctx.shared("scan-prefixes", make)


def time_scans(scan_one, prefixes) -> tuple[float, list, int]:
    """scan_one(prefix) -> rows, for each prefix, each call timed: (seconds, latencies, rows)."""
    counts: list = []
    seconds, lat, _ = time_gets(lambda p: counts.append(scan_one(p)), prefixes)
    return seconds, lat, sum(counts)


def scan_result(name: str, system: str, prefixes: list, seconds: float, lat: list, rows: int,
                note: str = "") -> Result:
    per_sec = rows / seconds if seconds else 0.0
    return Result(name, system, len(prefixes), seconds, 1, lat,
                  extra={"rows": rows, "rows_per_sec": per_sec},
                  note="; ".join(x for x in (f"ops = scans of {rows / len(prefixes):.1f} records, "
                                             f"{per_sec:,.0f} records/s", note) if x))


@dataclass(frozen=True)
class Turn:
    meta_key: str
    prefix: str  # of the session's message keys
    messages: tuple  # NEW_MESSAGES (key, value) pairs to append
    episode: tuple  # (key, value)
    event: dict  # appended to the metadata's event log


def updated_meta(meta, turn: Turn):
    """The session metadata after `turn`: its event log gains turn.event."""
    if not isinstance(meta, dict):
        return meta  # data of another shape: write it back as it is
    out = dict(meta)
    log = meta.get("event_log")
    log = list(log[-(EVENT_LOG_KEEP - 1):]) if isinstance(log, list) else []
    out["event_log"] = log + [turn.event]
    out["updated"] = turn.event["ts"]
    return out


def turns(ctx) -> list[Turn]:
    """max(ctx.turns, ctx.sync_turns) turns on sessions that have metadata and
    messages, chosen at random (seeded); the workloads take a prefix of the
    list, so every system plays the same turns."""

    def make():
        keys = {k for k, _ in ctx.records}
        last = {s: n for s, n in _sessions(ctx.records).items() if f"meta:{s}" in keys}
        if not last:
            raise Unavailable("the data has no session with both meta:N and session:N:msg:N keys")
        messages = [v for k, v in ctx.records if _MSG.match(k)]
        episodes = [v for k, v in ctx.records if _EPISODE.match(k)] or messages
        next_episode = 1 + max((int(m.group(1)) for k, _ in ctx.records if (m := _EPISODE.match(k))),
                               default=0)
        rng = random.Random(ctx.seed + 2)
        sessions = sorted(last)
        out = []
        for i in range(max(ctx.turns, ctx.sync_turns)):
            s = rng.choice(sessions)
            new = []
            for _ in range(NEW_MESSAGES):
                last[s] += 1
                new.append((f"session:{s}:msg:{last[s]:05d}", messages[rng.randrange(len(messages))]))
            episode = (f"episode:{next_episode + i:07d}", episodes[rng.randrange(len(episodes))])
            event = {"ts": 1_800_000_000.0 + i, "event": "turn", "detail": f"bench turn {i}"}
            out.append(Turn(f"meta:{s}", msg_prefix(s), tuple(new), episode, event))
        return out

    return ctx.shared("turns", make)
