"""`kvstore demo PATH`: an agent-memory workload through the batching layer.

Several threads each play agent sessions turn by turn, as an agent-memory
process does: every turn appends messages (buffered), sometimes an embedding
and an episode (buffered), and rewrites the session's metadata durably at
the end of the turn (the point the agent must not lose). Afterwards every
record is read back and compared with what was written.

Records are generated here in the shapes of real agent memory (sessions,
messages, episodes, session metadata, embeddings); the text is built from a
small vocabulary, so it compresses like prose rather than like random bytes.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .store import Store

_WORDS = (
    "the request returns a list of resources for the account in the region when the caller has "
    "permission to read them each item includes its identifier name status and the time it was "
    "created if the token is expired the service rejects the call and the client must refresh "
    "credentials before retrying use pagination to fetch more results than fit in one response "
    "the maximum number of items is set by the limit parameter values outside the range are "
    "rejected with a validation error the user asked to update the draft with their latest "
    "experience and to confirm the contact details before the document is generated again "
    "summarize the previous conversation and keep only the decisions that still apply the tool "
    "call failed because the file was not found so the assistant asked for the correct path"
).split()
_ROLES = ("user", "assistant", "assistant", "tool")
_STAGES = ("INTAKE", "DRAFT", "REVIEW", "FINAL")
_ACTIONS = ("search", "http_get", "summarize", "write_file", "ask_user")


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    n = rng.randint(lo, hi)
    start = rng.randrange(len(_WORDS))
    words = [_WORDS[(start + i * rng.choice((1, 1, 1, 2, 3))) % len(_WORDS)] for i in range(n)]
    return " ".join(words).capitalize() + "."


def message(rng: random.Random, session: int, turn: int) -> dict[str, Any]:
    msg = {
        "kind": "message",
        "session": f"s-{session:06d}",
        "turn": turn,
        "role": rng.choice(_ROLES),
        "content": " ".join(_sentence(rng, 6, 30) for _ in range(rng.randint(1, 4))),
        "ts": 1732000000.0 + session * 1000 + turn * 7.25,
        "tokens": rng.randint(8, 600),
    }
    if msg["role"] == "assistant" and rng.random() < 0.2:
        msg["tool_calls"] = [{"name": rng.choice(_ACTIONS), "args": {"q": _sentence(rng, 3, 8)}}]
    return msg


def episode(rng: random.Random, session: int, n: int) -> dict[str, Any]:
    return {
        "kind": "episode",
        "id": f"ep-{session:06d}-{n}",
        "session": f"s-{session:06d}",
        "goal": _sentence(rng, 8, 30),
        "steps": [{"action": rng.choice(_ACTIONS), "observation": _sentence(rng, 5, 20),
                   "ok": rng.random() < 0.85} for _ in range(rng.randint(1, 6))],
        "outcome": rng.choice(("success", "partial", "failure")),
        "reward": round(rng.random(), 3),
    }


def session_meta(rng: random.Random, session: int, turn: int, events: list[Any]) -> dict[str, Any]:
    return {
        "kind": "session_meta",
        "session": f"s-{session:06d}",
        "stage": _STAGES[min(turn // 4, 3)],
        "turns": turn,
        "confirmed_flags": {k: rng.random() < 0.5 for k in ("contact", "education", "experience", "skills")},
        "pdf_refs": {f"ref{i}": {"hash": hashlib.sha256(f"{session}:{i}".encode()).hexdigest(),
                                  "size": rng.randint(20_000, 500_000)} for i in range(rng.randint(0, 3))},
        "events": events[-20:],
    }


def embedding(rng: random.Random, session: int, turn: int) -> dict[str, Any]:
    return {"kind": "embedding", "of": f"session:{session:06d}:msg:{turn:05d}", "model": "minilm-l6-v2",
            "dim": 64, "vector": [round(rng.uniform(-0.1, 0.1), 6) for _ in range(64)]}


def run(path: str, threads: int = 4, sessions: int = 8, turns: int = 12,
        out: Callable[..., Any] = print) -> bool:
    """Run the demo workload against a store at path; True when every record reads back."""
    import kvstore

    written: dict[bytes, object] = {}
    written_lock = threading.Lock()
    latencies: dict[str, list[float]] = {"buffered": [], "durable": []}

    def play(worker: int, db: Store[Any]) -> None:
        rng = random.Random(worker)
        mine: dict[bytes, object] = {}
        lat_b, lat_d = [], []
        for s in range(sessions):
            session = worker * 1000 + s
            events: list[Any] = []
            msgs = 0
            for turn in range(1, turns + 1):
                for _ in range(rng.randint(1, 3)):
                    msgs += 1
                    key = f"session:{session:06d}:msg:{msgs:05d}"
                    value = message(rng, session, msgs)
                    t = time.perf_counter()
                    db.put(key, value)
                    lat_b.append(time.perf_counter() - t)
                    mine[key.encode()] = value
                if rng.random() < 0.3:
                    key = f"emb:{session:06d}:{msgs:05d}"
                    value = embedding(rng, session, msgs)
                    db.put(key, value)
                    mine[key.encode()] = value
                if turn % 4 == 0:
                    key = f"episode:{session:06d}:{turn:03d}"
                    value = episode(rng, session, turn)
                    db.put(key, value)
                    mine[key.encode()] = value
                events.append({"turn": turn, "event": rng.choice(("edit", "confirm", "render", "ask"))})
                key = f"meta:{session:06d}"
                value = session_meta(rng, session, turn, events)
                t = time.perf_counter()
                db.put(key, value, durable=True)  # end of turn: must survive a crash
                lat_d.append(time.perf_counter() - t)
                mine[key.encode()] = value
        with written_lock:
            written.update(mine)
            latencies["buffered"].extend(lat_b)
            latencies["durable"].extend(lat_d)

    db = kvstore.open(path)
    try:
        before = db.stats()
        out(f"kvstore demo: {threads} threads x {sessions} sessions x {turns} turns into {db.path}")
        out(f"  codec backend: {kvstore.codec.backend}")
        t0 = time.perf_counter()
        workers = [threading.Thread(target=play, args=(i, db)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        db.flush()
        elapsed = time.perf_counter() - t0
        after = db.stats()

        t1 = time.perf_counter()
        keys = sorted(written)
        got = db.get_many(keys)
        read_s = time.perf_counter() - t1
        bad = [k for k, v in zip(keys, got) if v != _normalise(written[k])]
        t2 = time.perf_counter()
        scanned = sum(1 for _ in db.scan(prefix="session:"))
        scan_s = time.perf_counter() - t2
    finally:
        db.close()

    ops = after["ops_committed"] - before["ops_committed"]
    commits = after["commits"] - before["commits"]
    out(f"  writes:  {ops} ops in {commits} commits = {ops / max(commits, 1):.1f} ops per commit "
        f"(max {after['ops_per_commit']['max']}), {elapsed:.2f} s, {ops / elapsed:,.0f} ops/s")
    out(f"  durable: {len(latencies['durable'])} synced writes (session metadata), "
        f"p50 {_pct(latencies['durable'], 50) * 1e3:.2f} ms, p99 {_pct(latencies['durable'], 99) * 1e3:.2f} ms; "
        f"buffered: {len(latencies['buffered'])} writes, p50 {_pct(latencies['buffered'], 50) * 1e6:.0f} us")
    out(f"  commits: p50 {after['commit_seconds']['p50'] * 1e3:.2f} ms, "
        f"p99 {after['commit_seconds']['p99'] * 1e3:.2f} ms (each one fsynced)")
    if after["bytes_in"]:
        out(f"  stored:  {after['bytes_in'] - before['bytes_in']:,} bytes serialized -> "
            f"{after['bytes_stored'] - before['bytes_stored']:,} stored "
            f"({after['compression_ratio']:.2f} of msgpack size)")
    out(f"  reads:   {len(keys)} keys with get_many in {read_s * 1e3:.1f} ms; "
        f"scan of {scanned} messages in {scan_s * 1e3:.1f} ms")
    if bad:
        out(f"  FAILED: {len(bad)} records read back differently, e.g. {bad[0]!r}")
        return False
    out(f"  verified: all {len(keys)} records read back exactly as written")
    return True


def _normalise(value: Any) -> Any:
    # msgpack carries tuples as lists
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p / 100))]
