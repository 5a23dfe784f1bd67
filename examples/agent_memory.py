"""An agent's memory through a crash: what kvstore acknowledged is there after it.

    python examples/agent_memory.py [PATH]

A scripted agent (no LLM: the turns are generated) serves several chat
sessions at once, one asyncio task each, through `kvstore.aio`. Every turn
stores the user's message and the agent's reply (buffered), an episode
summary every third turn (buffered), then rewrites the session's metadata
durably: that write is the turn's acknowledgement, printed as ``ACK``.
Because kvstore commits writes in the order they were queued, an
acknowledged turn carries every write queued before it.

The example runs the agent in a child process and kills it with SIGKILL
halfway through (no chance to flush anything), then restarts: it checks
that every acknowledged turn is in the store, resumes each session from its
metadata, finishes the script and checks the whole memory. Exit status 0
when everything acknowledged was found, 1 otherwise. PATH defaults to a
temporary directory (removed afterwards).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile

import kvstore
import kvstore.aio

SESSIONS = 8
TURNS = 12  # per session
EPISODE_EVERY = 3


def user_text(session: int, turn: int) -> str:
    return f"session {session}, turn {turn}: what changed since the last report?"


def reply_text(session: int, turn: int) -> str:
    return f"Turn {turn}: {session * 7 + turn} items changed; the draft is updated."


async def serve_session(db: kvstore.aio.AsyncStore, session: int, first_turn: int,
                        acknowledge) -> None:
    messages = await db.anamespace("messages")
    episodes = await db.anamespace("episodes")
    sessions = await db.anamespace("sessions")
    for turn in range(first_turn, TURNS):
        await messages.aput(f"{session:03d}:{turn:04d}:user",
                            {"role": "user", "content": user_text(session, turn)})
        await asyncio.sleep(0.002)  # the model "thinks"
        await messages.aput(f"{session:03d}:{turn:04d}:assistant",
                            {"role": "assistant", "content": reply_text(session, turn)})
        if turn % EPISODE_EVERY == EPISODE_EVERY - 1:
            await episodes.aput(f"{session:03d}:{turn:04d}",
                                {"turns": [turn - 2, turn], "summary": f"three turns of {session}"})
        await sessions.aput(f"{session:03d}", {"turn": turn, "stage": "DRAFT"}, durable=True)
        acknowledge(session, turn)


async def run_agent(path: str, acknowledge) -> None:
    """Serve every session from where its metadata says it stopped."""
    async with kvstore.aio.open(path) as db:
        sessions = await db.anamespace("sessions")
        starts = {}
        for session in range(SESSIONS):
            meta = await sessions.aget(f"{session:03d}")
            starts[session] = 0 if meta is None else meta["turn"] + 1
        await asyncio.gather(*(serve_session(db, s, starts[s], acknowledge)
                               for s in range(SESSIONS)))


def missing_turns(db: kvstore.Store, turns) -> list[str]:
    """What the store lacks of the given (session, turn) pairs."""
    messages, episodes, sessions = (db.namespace(n) for n in ("messages", "episodes", "sessions"))
    missing = []
    for session, turn in turns:
        meta = sessions.get(f"{session:03d}")
        if meta is None or meta["turn"] < turn:
            missing.append(f"session {session} metadata at turn {turn}")
        for role, text in (("user", user_text), ("assistant", reply_text)):
            got = messages.get(f"{session:03d}:{turn:04d}:{role}")
            if got != {"role": role, "content": text(session, turn)}:
                missing.append(f"session {session} turn {turn} {role} message")
        if turn % EPISODE_EVERY == EPISODE_EVERY - 1 and episodes.get(f"{session:03d}:{turn:04d}") is None:
            missing.append(f"session {session} episode at turn {turn}")
    return missing


def main(path: str) -> int:
    total = SESSIONS * TURNS
    print(f"agent memory at {path}: {SESSIONS} sessions x {TURNS} turns, one asyncio task each")

    # Run 1: the agent in a child process, killed halfway.
    child = subprocess.Popen([sys.executable, __file__, "--agent", path],
                             stdout=subprocess.PIPE, text=True)
    acked = []
    while len(acked) < total // 2:
        line = child.stdout.readline()
        if not line:
            print("the agent exited before the crash point", file=sys.stderr)
            return 1
        _, session, turn = line.split()
        acked.append((int(session), int(turn)))
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    print(f"[run 1] killed the agent (SIGKILL) after {len(acked)} acknowledged turns")

    # Restart: everything acknowledged must be there.
    with kvstore.open(path) as db:
        missing = missing_turns(db, acked)
        sessions = db.namespace("sessions")
        stored = sum(sessions.get(f"{s:03d}", {"turn": -1})["turn"] + 1 for s in range(SESSIONS))
    if missing:
        print("LOST acknowledged writes:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 1
    print(f"[restart] all {len(acked)} acknowledged turns are in the store; it holds {stored} "
          f"turns (the rest were committed but not yet acknowledged when the agent died)")

    # Run 2: resume every session where its metadata stopped, finish the script.
    asyncio.run(run_agent(path, lambda session, turn: None))
    with kvstore.open(path) as db:
        missing = missing_turns(db, [(s, t) for s in range(SESSIONS) for t in range(TURNS)])
        count = len(db.namespace("messages"))
    if missing:
        print("incomplete after the restart:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 1
    print(f"[run 2] resumed and finished: {total} turns, {count} messages, every session complete")
    print("OK: every acknowledged write survived the crash")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--agent":
        asyncio.run(run_agent(sys.argv[2], lambda s, t: print(f"ACK {s} {t}", flush=True)))
    elif len(sys.argv) == 2:
        sys.exit(main(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            sys.exit(main(os.path.join(tmp, "agent-memory")))
