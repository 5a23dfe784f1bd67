"""The agent turn of `mixed`, played through a LangGraph checkpointer.

An agent built on LangGraph keeps its session in the graph's state and the
checkpointer persists that state after each step, instead of writing keys
itself. Here a session's state has three channels: `meta` (the session
metadata), `messages` (the last LAST_MESSAGES messages) and `episode` (the
latest episode). A turn reads the thread's newest checkpoint (`get_tuple`),
appends the turn's NEW_MESSAGES messages (keeping the last LAST_MESSAGES),
replaces the episode, adds the event to the metadata's log, and stores the
new checkpoint (`put`): one read and one durable write per turn, the same
turns (sessions, messages, episodes, events) as `mixed` plays
(sessions.turns).

Both savers sync every put: KVStoreSaver with its default durable=True,
langgraph-checkpoint-sqlite's SqliteSaver as LangGraph sets it up (WAL,
sqlite's default synchronous=FULL). Each session's first checkpoint (its
metadata and last messages from the data) is stored before the timed loop.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

import sessions
from harness import Result, Unavailable, time_gets

REQUIRES = ("langgraph.checkpoint.base", "langgraph.checkpoint.sqlite")


def _version(previous: str | None) -> str:
    n = int(previous.split(".")[0]) if previous else 0
    return f"{n + 1:032}.{0.5:016}"


class _Plan:
    """First checkpoints of the sessions the turns visit, and checkpoint ids
    for every turn (uuid6, increasing), made before any timing."""

    def __init__(self, ctx, count: int):
        from langgraph.checkpoint.base.id import uuid6

        self.turns = sessions.turns(ctx)[:count]
        wanted = {t.meta_key for t in self.turns}
        values = dict(ctx.records)
        messages: dict[str, list] = {}
        for key, value in ctx.sorted_order:
            m = sessions._MSG.match(key)
            if m and f"meta:{m.group(1)}" in wanted:
                messages.setdefault(f"meta:{m.group(1)}", []).append(value)
        self.first = {}
        for i, meta_key in enumerate(sorted(wanted)):
            state = {"meta": values[meta_key],
                     "messages": messages.get(meta_key, [])[-sessions.LAST_MESSAGES:],
                     "episode": None}
            versions = {ch: _version(None) for ch in state}
            checkpoint = {"v": 4, "id": str(uuid6(clock_seq=i)), "ts": _now(),
                          "channel_values": state, "channel_versions": versions,
                          "versions_seen": {}, "updated_channels": list(state)}
            self.first[meta_key] = (checkpoint, versions)
        base = len(wanted)
        self.ids = [str(uuid6(clock_seq=base + i)) for i in range(len(self.turns))]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _config(thread: str, checkpoint_id: str | None = None) -> dict:
    configurable = {"thread_id": thread, "checkpoint_ns": ""}
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def _seed(saver, plan: _Plan) -> None:
    for thread, (checkpoint, versions) in plan.first.items():
        saver.put(_config(thread), checkpoint, {"source": "input", "step": 0, "parents": {}},
                  versions)


def _turn(saver, turn, checkpoint_id: str, step: int) -> int:
    """One turn; returns how many messages it read."""
    got = saver.get_tuple(_config(turn.meta_key))
    values = got.checkpoint["channel_values"]
    read = len(values["messages"])
    state = {
        "meta": sessions.updated_meta(values["meta"], turn),
        "messages": (values["messages"] + [v for _, v in turn.messages])[-sessions.LAST_MESSAGES:],
        "episode": turn.episode[1],
    }
    old = got.checkpoint["channel_versions"]
    versions = {ch: _version(old.get(ch)) for ch in state}
    checkpoint = {"v": 4, "id": checkpoint_id, "ts": _now(), "channel_values": state,
                  "channel_versions": versions, "versions_seen": {"agent": dict(old)},
                  "updated_channels": list(state)}
    saver.put(got.config, checkpoint, {"source": "loop", "step": step, "parents": {}}, versions)
    return read


def play(ctx, name: str, system: str, open_saver) -> Result:
    """Seed, then time ctx.sync_turns turns on the saver open_saver(dir) returns
    (with a close() of its own)."""
    try:
        plan = ctx.shared(f"graph-plan-{ctx.sync_turns}", lambda: _Plan(ctx, ctx.sync_turns))
    except ImportError as exc:
        raise Unavailable(f"LangGraph is not installed ({exc}): pip install -e '.[langgraph]'")
    if not plan.turns:
        raise Unavailable("no agent turns in this data")
    with ctx.tmpdir() as d:
        saver, close = open_saver(d)
        try:
            _seed(saver, plan)
            steps = iter(range(1, len(plan.turns) + 1))
            work = list(zip(plan.turns, plan.ids))
            t0 = time.perf_counter()
            _, lat, _ = time_gets(lambda w: _turn(saver, w[0], w[1], next(steps)), work)
            seconds = time.perf_counter() - t0
        finally:
            close()
    return Result(name, system, len(plan.turns), seconds, 1, lat,
                  note="ops = turns: get_tuple + a durable put of the session's state; fewer turns")


def open_kvstore(d):
    from kvstore.integrations.langgraph import KVStoreSaver

    saver = KVStoreSaver.from_path(os.path.join(d, "store"))
    return saver, saver.close


def open_sqlite(d):
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(os.path.join(d, "checkpoints.sqlite"), check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    return saver, conn.close
