"""Agent benchmark: the LangGraph checkpointer against LangGraph's SQLite one,
and durable asyncio writes from many tasks.

Run from the repository root, with the langgraph extra installed
(pip install -e '.[langgraph]')::

    python bench/bench_agent.py [--quick] [--repeats N] [--tmpdir DIR] [--json FILE]
                                [--only checkpoint,asyncio,graph,trace]

Data: agent states built from the sessions of
../shared/corpus/agent_memory.jsonl.zst (relative to the repository root; the
records kvstore.demo generates when it is missing, as bench/run.py does).

1. Checkpoint put + get_tuple. Each op stores the next checkpoint of a
   conversation and reads the thread's newest checkpoint back, as a graph
   does between steps. The state is what a tool-using chat agent carries:
   its LangChain messages (user, assistant with tool calls, tool results;
   up to 90), the session metadata, the latest episodes, a plan and a
   scratchpad; the messages channel changes every step, the others now and
   then. The peer is langgraph-checkpoint-sqlite's SqliteSaver on a file, as
   LangGraph sets it up (WAL; the bench prints its synchronous setting).
   Scenarios:
     1t-durable   one thread; every put synced to disk by both
     16t-durable  16 threads, one conversation each, sharing one saver;
                  every put synced (kvstore shares commits between the
                  threads; SqliteSaver serialises them on its lock)
     1t-buffered  one thread; kvstore durable=False (committed within 0.1 s)
                  against SqliteSaver unchanged: different guarantees, for
                  information only
2. asyncio: 100 tasks doing durable `aput` (corpus records) on one
   AsyncStore, against one task doing the same: ops/s, commits, and the
   event loop's lag while they run (a probe task sleeping 1 ms measures how
   late it wakes up).

3. A realistic graph (issue 18; --only graph): StateGraph(MessagesState)
   with a deterministic fake LLM node (replies of 500-1,500 characters, a
   tool call in 45% of turns), LangGraph's prebuilt ToolNode, and a node
   writing a memory to the injected store (the LLM node searches the
   thread's memories first). Conversations of 10-30 turns. KVStoreSaver +
   KVStore on one kvstore store against SqliteSaver + SqliteStore (a file
   each, as their from_conn_string opens them); sync graph.invoke one
   conversation at a time, and asyncio graph.ainvoke of 32 conversations at
   once (AsyncSqliteSaver + AsyncSqliteStore), in each durability mode
   ("sync", "async", "exit"). A third contender, kv-allsync, is
   KVStoreSaver with every call synced by itself (as before a task's writes
   could wait for the next put's sync): the before/after of that change in
   the same rounds. A fourth, memory, is LangGraph's InMemorySaver +
   InMemoryStore (nothing on disk): the ceiling any saver could reach. One
   conversation at a time, a fifth, floor, is memory with one 512-byte
   append and fdatasync a checkpoint put: the most a saver whose
   checkpoints are durable when put returns could reach. Each round plays
   them all (each leading a round in turn); a ratio is the median of the
   rounds' ratios. Each run also reports the process's CPU
   time a turn, and one conversation at a time the storage it left a turn.
   Targets: invoke >= 1.5x ("sync", "exit"), 32 conversations >= 3x. Then
   where a kvstore turn goes ("sync", "async", "exit"): the saver's and the
   store's calls timed, their batches, serializer, kvstore's encodes and
   decodes, commits, syncs (kvstore's fdatasync calls, counted in the
   process) and durable and buffered write groups.
   --only trace (not run by default) prints one turn's saver calls in each
   mode: when, how long, from which thread, for which checkpoint.

Repetitions alternate kvstore and its peer, so a slow spell of the shared
machine hits both; the table shows the median run. The targets (issue 8):
checkpoint put + get_tuple >= 5x SqliteSaver; 100 tasks: loop lag p99 < 5 ms
and >= 5x the throughput of one task.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import zlib
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import data  # noqa: E402  (bench/data.py)
import harness  # noqa: E402  (bench/harness.py)

import kvstore  # noqa: E402
import kvstore.aio  # noqa: E402

try:
    import sqlite3

    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langgraph.checkpoint.base.id import uuid6
    from langgraph.checkpoint.sqlite import SqliteSaver

    from kvstore.integrations.langgraph import KVStoreSaver
except ImportError as exc:
    sys.exit(f"bench_agent.py needs the langgraph extra ({exc}): pip install -e '.[langgraph]'")

CHECKPOINT_TARGET = 5.0
LAG_TARGET_MS = 5.0
TASKS_TARGET = 5.0
MAX_MESSAGES = 90
THREADS = 16
TASKS = 100


# ---------------------------------------------------------------- agent states


def conversations(records) -> list[list]:
    """The corpus's sessions as lists of LangChain messages, in turn order."""
    sessions: dict[str, list] = {}
    for _key, value in records:
        if isinstance(value, dict) and value.get("kind") == "message":
            sessions.setdefault(value["session"], []).append(value)
    out = []
    for msgs in sessions.values():
        msgs.sort(key=lambda m: m["turn"])
        convo, call = [], 0
        for m in msgs:
            if m["role"] == "user":
                convo.append(HumanMessage(content=m["content"], id=f"{m['session']}-{m['turn']}"))
            elif m["role"] == "assistant":
                call += 1
                convo.append(AIMessage(
                    content=m["content"], id=f"{m['session']}-{m['turn']}",
                    tool_calls=[{"name": "search", "args": {"query": m["content"][:60]},
                                 "id": f"call-{call}"}],
                    usage_metadata={"input_tokens": m["tokens"], "output_tokens": 40,
                                    "total_tokens": m["tokens"] + 40}))
            else:
                convo.append(ToolMessage(content=m["content"], tool_call_id=f"call-{call}",
                                         id=f"{m['session']}-{m['turn']}"))
        if len(convo) >= 10:
            out.append(convo[:MAX_MESSAGES])
    return out


def as_dicts(convo: list) -> list[dict]:
    """The same conversation as plain dicts (OpenAI-style), as agents that
    keep their messages in a list[dict] state channel store them."""
    out = []
    for m in convo:
        d = {"role": {"human": "user", "ai": "assistant"}.get(m.type, m.type), "content": m.content,
             "id": m.id}
        if getattr(m, "tool_calls", None):
            d["tool_calls"] = [{"id": c["id"], "name": c["name"], "args": c["args"]}
                               for c in m.tool_calls]
        if getattr(m, "tool_call_id", None):
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out


def side_channels(records) -> tuple[list, list]:
    metas = [v for _, v in records if isinstance(v, dict) and v.get("kind") == "session_meta"]
    episodes = [v for _, v in records if isinstance(v, dict) and v.get("kind") == "episode"]
    return metas, episodes


def _text(message) -> str:
    return message["content"] if isinstance(message, dict) else message.content


class Script:
    """The checkpoints of one conversation, step by step, ready to put."""

    def __init__(self, thread_id: str, convo: list, meta: dict, episodes: list):
        self.thread_id = thread_id
        self.steps = []
        versions: dict[str, str] = {}
        values: dict = {"profile": {"user": thread_id, "locale": "en", "tier": "pro"}}
        parent = None
        for i in range(1, len(convo) + 1):
            changed = {"messages": convo[:i]}
            if i == 1:
                changed["profile"] = values["profile"]
            if i % 3 == 1:
                changed["plan"] = [f"step {j}: {_text(convo[j - 1])[:40]}"
                                   for j in range(max(1, i - 4), i + 1)]
            if i % 5 == 1:
                changed["session_meta"] = dict(meta, turn=i)
                changed["episodes"] = episodes[:1 + i // 10]
            changed["scratchpad"] = {"last_tool": "search", "step": i,
                                     "notes": _text(convo[i - 1])[:80]}
            values.update(changed)
            new_versions = {}
            for ch in changed:
                n = int(versions.get(ch, "0").split(".")[0]) + 1
                versions[ch] = new_versions[ch] = f"{n:032}.{0.5:016}"
            checkpoint_id = str(uuid6(clock_seq=i))
            checkpoint = {"v": 4, "id": checkpoint_id, "ts": datetime.now(timezone.utc).isoformat(),
                          "channel_values": dict(values), "channel_versions": dict(versions),
                          "versions_seen": {"agent": dict(versions)}, "updated_channels": list(changed)}
            metadata = {"source": "loop", "step": i, "parents": {}, "run_id": f"run-{thread_id}"}
            self.steps.append((parent, checkpoint, metadata, new_versions))
            parent = checkpoint_id

    def config(self, parent):
        configurable = {"thread_id": self.thread_id, "checkpoint_ns": ""}
        if parent is not None:
            configurable["checkpoint_id"] = parent
        return {"configurable": configurable}


def make_scripts(convos, metas, episodes, n_ops: int, tag: str) -> list[Script]:
    scripts, total, i = [], 0, 0
    while total < n_ops:
        convo = convos[i % len(convos)]
        script = Script(f"{tag}-{i}", convo, metas[i % len(metas)], episodes[i:i + 5])
        scripts.append(script)
        total += len(script.steps)
        i += 1
    return scripts


def ops_of(scripts, n_ops):
    ops = [(s, step) for s in scripts for step in s.steps]
    return ops[:n_ops]


def play(saver, ops, latencies: list) -> None:
    for script, (parent, checkpoint, metadata, new_versions) in ops:
        t = time.perf_counter()
        stored = saver.put(script.config(parent), checkpoint, metadata, new_versions)
        got = saver.get_tuple({"configurable": {"thread_id": script.thread_id, "checkpoint_ns": ""}})
        latencies.append(time.perf_counter() - t)
        assert got.config["configurable"]["checkpoint_id"] == stored["configurable"]["checkpoint_id"]


class Peer:
    """A fresh saver in a fresh directory, closed and removed afterwards."""

    def __init__(self, system: str, tmpdir: str, durable: bool = True):
        self.dir = tempfile.mkdtemp(prefix=f"bench-{system}-", dir=tmpdir)
        if system == "kvstore":
            self.saver = KVStoreSaver.from_path(os.path.join(self.dir, "store"), durable=durable)
        else:
            self.conn = sqlite3.connect(os.path.join(self.dir, "checkpoints.sqlite"),
                                        check_same_thread=False)
            self.saver = SqliteSaver(self.conn)
            self.saver.setup()

    def close(self):
        if isinstance(self.saver, KVStoreSaver):
            self.saver.close()
        else:
            self.conn.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def checkpoint_run(system, scenario, scripts_by_thread, n_ops, tmpdir) -> dict:
    peer = Peer(system, tmpdir, durable=not scenario.endswith("1t-buffered"))
    try:
        per_thread = [ops_of(s, n_ops // len(scripts_by_thread)) for s in scripts_by_thread]
        seconds, _ = harness.run_threads(per_thread, lambda ops, lat: play(peer.saver, ops, lat))
        ops = sum(len(p) for p in per_thread)
        out = {"ops": ops, "seconds": seconds, "ops_per_sec": ops / seconds}
        if system == "kvstore":
            st = peer.saver.db.stats()
            out["commits"] = st["commits"]
        return out
    finally:
        peer.close()


# ---------------------------------------------------------------- asyncio


async def aput_run(path: str, values: list, tasks: int, per_task: int) -> dict:
    async with kvstore.aio.open(path) as db:
        await db.aput("warm", 0, durable=True)
        lags: list = []
        running = True

        async def probe():
            while running:
                t = time.perf_counter()
                await asyncio.sleep(0.001)
                lags.append(time.perf_counter() - t - 0.001)

        async def writer(t):
            for i in range(per_task):
                await db.aput(f"t{t:03d}:{i:05d}", values[(t * per_task + i) % len(values)],
                              durable=True)

        before = db.stats()
        p = asyncio.create_task(probe())
        start = time.perf_counter()
        if tasks:
            await asyncio.gather(*(writer(t) for t in range(tasks)))
        else:
            await asyncio.sleep(per_task)  # the probe alone, per_task seconds: the machine's own lag
        seconds = time.perf_counter() - start
        running = False
        await p
        after = db.stats()
        ops = tasks * per_task
        lags.sort()
        return {"ops": ops, "seconds": seconds, "ops_per_sec": ops / seconds if ops else 0.0,
                "commits": after["commits"] - before["commits"],
                "lag_p50_ms": lags[len(lags) // 2] * 1e3,
                "lag_p99_ms": lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1e3,
                "lag_max_ms": lags[-1] * 1e3, "lag_samples": len(lags)}


def aput_case(tmpdir, values, tasks, per_task) -> dict:
    d = tempfile.mkdtemp(prefix="bench-aio-", dir=tmpdir)
    try:
        return asyncio.run(aput_run(os.path.join(d, "store"), values, tasks, per_task))
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- main


def median(runs: list[dict]) -> dict:
    ordered = sorted(runs, key=lambda r: r["ops_per_sec"])
    out = dict(ordered[len(ordered) // 2])
    out["runs"] = [round(r["ops_per_sec"], 1) for r in runs]
    return out


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"



# ---------------------------------------------------------------- a realistic graph (issue 18)

GRAPH_TOOL_SHARE = 0.45  # turns in which the fake LLM calls a tool
GRAPH_CONCURRENT = 32  # conversations at once in the asyncio case
_WORDS = ("the agent checks the booking and the user wants a window seat on the morning flight "
          "to Lisbon with a late checkout at the hotel near the river and a table for two at "
          "eight tonight please confirm the price in euros and send the receipt").split()


def _seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def _reply(rng: random.Random) -> str:
    """A deterministic LLM reply of 500-1,500 characters."""
    n = rng.randint(500, 1500)
    text = " ".join(rng.choices(_WORDS, k=n // 4))
    return (text * 2)[:n]


def build_graph(checkpointer, store):
    """MessagesState (add_messages), a fake LLM node calling a tool in 45% of
    turns, LangGraph's prebuilt ToolNode, and a node that writes a memory to
    the injected store; the LLM node reads the thread's memories first."""
    from langchain_core.tools import tool
    from langgraph.graph import END, START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition
    from langgraph.store.base import BaseStore

    @tool
    def lookup(topic: str) -> str:
        """Look a topic up in the travel knowledge base."""
        rng = random.Random(_seed("tool", topic))
        return _reply(rng)[:rng.randint(200, 600)]

    def llm(state: MessagesState, config, *, store: BaseStore) -> dict:
        thread = config["configurable"]["thread_id"]
        n = len(state["messages"])
        store.search(("memories", thread), limit=5)
        rng = random.Random(_seed(thread, n))
        last = state["messages"][-1]
        if isinstance(last, HumanMessage) and rng.random() < GRAPH_TOOL_SHARE:
            return {"messages": [AIMessage("", tool_calls=[
                {"name": "lookup", "args": {"topic": f"t{rng.randint(0, 999)}"},
                 "id": f"call-{thread}-{n}"}])]}
        return {"messages": [AIMessage(_reply(rng))]}

    def remember(state: MessagesState, config, *, store: BaseStore) -> dict:
        thread = config["configurable"]["thread_id"]
        n = len(state["messages"])
        store.put(("memories", thread), f"m{n}", {"text": state["messages"][-1].content[:300]})
        return {}

    g = StateGraph(MessagesState)
    g.add_node("llm", llm)
    g.add_node("tools", ToolNode([lookup]))
    g.add_node("remember", remember)
    g.add_edge(START, "llm")
    g.add_conditional_edges("llm", tools_condition, {"tools": "tools", END: "remember"})
    g.add_edge("tools", "llm")
    g.add_edge("remember", END)
    return g.compile(checkpointer=checkpointer, store=store)


def graph_conversations(tag: str, n: int, seed: int) -> list[tuple[str, list[str]]]:
    """n conversations (thread id, user messages) of 10-30 turns."""
    rng = random.Random(seed)
    return [(f"{tag}-{i}", [" ".join(rng.choices(_WORDS, k=rng.randint(8, 40)))
                             for _ in range(rng.randint(10, 30))]) for i in range(n)]


class AllSyncSaver(KVStoreSaver):
    """KVStoreSaver as it was before a task's writes could wait for the next
    put's sync: every put and put_writes syncs by itself (the "before" of
    the graph section, played in the same rounds)."""

    def _deferring(self, config, writes):
        return None


class _SyncCounter:
    """kvstore's fdatasync calls (its write-ahead log and data file syncs go
    through os.fdatasync), counted process-wide; SQLite syncs in C, unseen."""

    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()
        self._real = os.fdatasync

    def install(self) -> None:
        real = self._real

        def fdatasync(fd):
            with self._lock:
                self.n += 1
            return real(fd)
        os.fdatasync = fdatasync


SYNCS = _SyncCounter()
KV_SYSTEMS = {"kvstore": KVStoreSaver, "kv-allsync": AllSyncSaver}


def _kv_pair(path: str, saver_cls=KVStoreSaver):
    from kvstore.integrations.langgraph import KVStore
    db = kvstore.open(path)
    return saver_cls(db), KVStore(db), db.close, db


def _sqlite_pair(path: str):
    from langgraph.store.sqlite import SqliteStore
    # a file each (on one file, the saver's commits and the store's
    # transactions from LangGraph's executor threads lock each other out)
    conn = sqlite3.connect(os.path.join(path, "checkpoints.sqlite"), check_same_thread=False)
    store_conn = sqlite3.connect(os.path.join(path, "store.sqlite"), check_same_thread=False,
                                 isolation_level=None)  # as SqliteStore.from_conn_string
    saver, store = SqliteSaver(conn), SqliteStore(store_conn)
    saver.setup()
    store.setup()

    def close() -> None:
        conn.close()
        store_conn.close()
    return saver, store, close, None


def _memory_pair(path: str):
    """LangGraph's InMemorySaver + InMemoryStore: no disk, nothing durable;
    the ceiling a saver could reach (LangGraph's own work alone)."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.store.memory import InMemoryStore
    return InMemorySaver(), InMemoryStore(), lambda: None, None


def _floor_pair(path: str):
    """InMemorySaver + InMemoryStore, with every checkpoint put appending a
    512-byte record to a file and syncing it (fdatasync): the least work of
    a saver whose checkpoints are durable when put returns (a step's
    writes and the store's may wait for that sync, as kvstore's do), with
    nothing serialized to disk. Its ratio against SQLite is the floor's:
    the most such a saver could reach here."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.store.memory import InMemoryStore
    fd = os.open(os.path.join(path, "floor.log"), os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)

    class SyncedMemorySaver(InMemorySaver):
        def put(self, config, checkpoint, metadata, new_versions):
            stored = super().put(config, checkpoint, metadata, new_versions)
            os.write(fd, b"\0" * 512)
            os.fdatasync(fd)
            return stored
    return SyncedMemorySaver(), InMemoryStore(), lambda: os.close(fd), None


def graph_sync_run(system: str, durability: str, convos, tmpdir) -> dict:
    """Play the conversations one at a time through graph.invoke; turns/s."""
    path = tempfile.mkdtemp(prefix=f"graph-{system}-", dir=tmpdir)
    if system in KV_SYSTEMS:
        saver, store, close, db = _kv_pair(path, KV_SYSTEMS[system])
    elif system == "memory":
        saver, store, close, db = _memory_pair(path)
    elif system == "floor":
        saver, store, close, db = _floor_pair(path)
    else:
        saver, store, close, db = _sqlite_pair(path)
    try:
        try:
            graph = build_graph(saver, store)
            before = db.stats() if db is not None else None
            syncs = SYNCS.n
            turns = 0
            cpu = time.process_time()
            start = time.perf_counter()
            for thread, messages in convos:
                config = {"configurable": {"thread_id": thread}}
                for text in messages:
                    graph.invoke({"messages": [HumanMessage(text)]}, config, durability=durability)
                    turns += 1
            out = _turns_result(turns, time.perf_counter() - start, db, before, syncs,
                                time.process_time() - cpu)
            if db is not None:  # the log applied: LMDB's pages in use (records and free pages)
                db.flush()
                out["disk_bytes"] = db.stats()["map_used"]
        finally:
            close()
        if system == "sqlite":  # the files, their WAL checkpointed at close
            out["disk_bytes"] = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return out


def _commits(stats: dict) -> int:
    return int(stats.get("commits", 0))


def _turns_result(turns: int, took: float, db, before, syncs: int, cpu: float) -> dict:
    """A graph run's row: turns, time, the process's CPU time a turn (every
    thread; an apply worker's not included), and for kvstore its commits
    and syncs."""
    out = {"turns": turns, "seconds": took, "turns_per_sec": turns / took,
           "cpu_ms_per_turn": cpu / turns * 1e3}
    if db is not None:
        out["commits"] = _commits(db.stats()) - _commits(before)
        out["syncs"] = SYNCS.n - syncs
    return out


async def graph_async_run(system: str, durability: str, convos, tmpdir) -> dict:
    """Play GRAPH_CONCURRENT conversations at once through graph.ainvoke."""
    path = tempfile.mkdtemp(prefix=f"agraph-{system}-", dir=tmpdir)
    stack = contextlib.AsyncExitStack()
    db = None
    try:
        if system in KV_SYSTEMS:
            from kvstore.integrations.langgraph import KVStore
            db = kvstore.open(path)
            stack.callback(db.close)
            saver, store = KV_SYSTEMS[system](db), KVStore(db)
        elif system == "memory":
            saver, store, _, _ = _memory_pair(path)
        else:
            from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
            from langgraph.store.sqlite.aio import AsyncSqliteStore
            saver = await stack.enter_async_context(
                AsyncSqliteSaver.from_conn_string(os.path.join(path, "checkpoints.sqlite")))
            store = await stack.enter_async_context(
                AsyncSqliteStore.from_conn_string(os.path.join(path, "store.sqlite")))
            await saver.setup()
            await store.setup()
        graph = build_graph(saver, store)
        before = db.stats() if db is not None else None
        syncs = SYNCS.n

        async def play(thread, messages):
            config = {"configurable": {"thread_id": thread}}
            for text in messages:
                await graph.ainvoke({"messages": [HumanMessage(text)]}, config,
                                    durability=durability)
            return len(messages)

        cpu = time.process_time()
        start = time.perf_counter()
        turns = sum(await asyncio.gather(*(play(t, m) for t, m in convos)))
        out = _turns_result(turns, time.perf_counter() - start, db, before, syncs,
                            time.process_time() - cpu)
    finally:
        await stack.aclose()
        shutil.rmtree(path, ignore_errors=True)
    return out


def graph_section(args, repeats: int) -> dict:
    """Rounds alternating the contenders in each case; the ratio of each
    round against SQLite (and of kvstore against kv-allsync, of memory
    against SQLite), and their medians."""
    sync_convos = 2 if args.quick else 4
    contenders = ("kvstore", "sqlite", "kv-allsync", "memory")
    # the floor only one conversation at a time: many at once, a durable
    # saver shares its syncs, and one sync a put would be no floor
    cases = [("sync", d, *contenders, "floor") for d in ("sync", "async", "exit")]
    cases += [("asyncio", d, *contenders) for d in ("sync", "async", "exit")]
    out: dict = {}
    for r in range(repeats):
        for kind, durability, *systems in cases:
            name = f"{kind}/{durability}"
            lead = r % len(systems)
            systems = systems[lead:] + systems[:lead]  # each leads a round in turn
            for system in systems:
                tag = f"{system}{r}"
                if kind == "sync":
                    convos = graph_conversations(tag, sync_convos, seed=r)
                    res = graph_sync_run(system, durability, convos, args.tmpdir)
                else:
                    convos = graph_conversations(tag, GRAPH_CONCURRENT, seed=100 + r)
                    if args.quick:
                        convos = [(t, m[:8]) for t, m in convos]
                    res = asyncio.run(graph_async_run(system, durability, convos, args.tmpdir))
                out.setdefault(name, {}).setdefault(system, []).append(res)
                print(f"  [{r + 1}/{repeats}] graph {name:14s} {system:10s} {res['turns']:5,d} turns "
                      f"{res['turns_per_sec']:8,.1f} turns/s", flush=True)
    for name, runs in out.items():
        ratios = [k["turns_per_sec"] / s["turns_per_sec"]
                  for k, s in zip(runs["kvstore"], runs["sqlite"])]
        runs["ratios"] = ratios
        runs["ratio"] = statistics.median(ratios)
        runs["vs_allsync"] = statistics.median(
            k["turns_per_sec"] / a["turns_per_sec"] for k, a in zip(runs["kvstore"], runs["kv-allsync"]))
        runs["ceiling"] = statistics.median(
            m["turns_per_sec"] / s["turns_per_sec"] for m, s in zip(runs["memory"], runs["sqlite"]))
        if "floor" in runs:
            runs["floor_ratio"] = statistics.median(
                f["turns_per_sec"] / s["turns_per_sec"] for f, s in zip(runs["floor"], runs["sqlite"]))
    return out



def graph_split(durability: str, tmpdir) -> dict:
    """Where a kvstore turn goes: one conversation at a time (two of them,
    after a warm-up turn), the saver's and the store's calls timed (wall
    clock, from LangGraph's executor threads too), and the store's durable
    commits counted. Ms and calls per turn."""
    path = tempfile.mkdtemp(prefix="graph-split-", dir=tmpdir)
    saver, store, close, db = _kv_pair(path)
    spent: dict[str, list[float]] = {}
    lock = threading.Lock()

    def timed(obj, name: str, label: str) -> None:
        call = getattr(obj, name)

        def wrapper(*a, **kw):
            start = time.perf_counter()
            try:
                return call(*a, **kw)
            finally:
                with lock:
                    spent.setdefault(label, []).append(time.perf_counter() - start)
        setattr(obj, name, wrapper)

    for obj, name, label in ((saver, "put", "put"), (saver, "put_writes", "put_writes"),
                             (saver, "_write", "their batches"),
                             (saver.serde, "dumps_typed", "their serializer"),
                             (saver, "get_tuple", "get_tuple"), (store, "batch", "store"),
                             (db._codec, "encode", "kvstore encode"),
                             (db._codec, "decode", "kvstore decode")):
        timed(obj, name, label)
    try:
        graph = build_graph(saver, store)
        graph.invoke({"messages": [HumanMessage("warm up")]},
                     {"configurable": {"thread_id": "warm"}}, durability=durability)
        spent.clear()
        before = db.stats()
        syncs = SYNCS.n
        turns = 0
        start = time.perf_counter()
        for thread, messages in graph_conversations("split", 2, seed=7):
            for text in messages:
                graph.invoke({"messages": [HumanMessage(text)]},
                             {"configurable": {"thread_id": thread}}, durability=durability)
                turns += 1
        took = time.perf_counter() - start
        after = db.stats()
        commits = _commits(after) - _commits(before)
        syncs = SYNCS.n - syncs
        groups = {k: (after[k] - before[k]) / turns for k in ("durable_groups", "buffered_groups")}
    finally:
        close()
        shutil.rmtree(path, ignore_errors=True)
    return {"turns": turns, "turn_ms": took / turns * 1e3, "commits": commits / turns,
            "syncs": syncs / turns, **groups,
            "calls": {k: {"ms": sum(v) / turns * 1e3, "calls": len(v) / turns}
                      for k, v in spent.items()}}


def graph_trace(durability: str, tmpdir) -> list[str]:
    """One turn in which the LLM calls a tool, every put and put_writes
    logged: start and duration (ms from the invoke), thread, checkpoint of
    the config, and the channels written or the put's parent -> id. The
    instrument behind docs/langgraph.md, "What a turn asks of the saver"."""
    path = tempfile.mkdtemp(prefix="graph-trace-", dir=tmpdir)
    saver, store, close, _db = _kv_pair(path)
    log: list[tuple[float, float, str, str, str]] = []
    t0 = [0.0]

    def logged(name: str) -> None:
        call = getattr(saver, name)

        def wrapper(config, *a, **kw):
            start = time.perf_counter()
            try:
                return call(config, *a, **kw)
            finally:
                conf = config["configurable"]
                if name == "put":
                    what = f"parent {str(conf.get('checkpoint_id'))[-6:]} -> {a[0]['id'][-6:]}"
                else:
                    what = (f"for {conf['checkpoint_id'][-6:]}: "
                            + ",".join(channel for channel, _ in a[0]))
                log.append((start - t0[0], time.perf_counter() - start,
                            threading.current_thread().name, name, what))
        setattr(saver, name, wrapper)

    logged("put")
    logged("put_writes")
    try:
        graph = build_graph(saver, store)
        cfg = {"configurable": {"thread_id": "trace"}}
        graph.invoke({"messages": [HumanMessage("warm up")]}, cfg, durability=durability)
        for i in range(50):  # until a turn calls the tool (45% of turns)
            log.clear()
            t0[0] = time.perf_counter()
            graph.invoke({"messages": [HumanMessage(f"turn {i}")]}, cfg, durability=durability)
            took = time.perf_counter() - t0[0]
            if len(log) > 6 or durability == "exit":
                break
    finally:
        close()
        shutil.rmtree(path, ignore_errors=True)
    lines = [f"  {start * 1e3:7.2f} ms {spent * 1e3:6.2f} ms  {thread:26s} {name:10s} {what}"
             for start, spent, thread, name, what in sorted(log)]
    return lines + [f"  invoke returned at {took * 1e3:.2f} ms"]


def print_split(splits: dict) -> None:
    print()
    print("where a kvstore turn goes (one conversation at a time, warm; wall ms per turn, "
          "calls per turn; put/put_writes run in LangGraph's threads and overlap)")
    for durability, out in splits.items():
        print(f"  durability={durability}: {out['turn_ms']:.2f} ms a turn, "
              f"{out['commits']:.1f} commits, {out['syncs']:.1f} syncs (fdatasync), "
              f"{out['durable_groups']:.1f} durable and {out['buffered_groups']:.1f} buffered "
              f"write groups a turn")
        for label in ("get_tuple", "put", "put_writes", "their batches",
                      "their serializer", "store", "kvstore encode", "kvstore decode"):
            if label in out["calls"]:
                c = out["calls"][label]
                print(f"    {label:22s} {c['ms']:6.2f} ms  {c['calls']:5.1f} calls")


def print_graph(results: dict) -> list[tuple[str, str, bool]]:
    print()
    print(f"realistic graph: MessagesState, fake LLM (tool calls in {GRAPH_TOOL_SHARE:.0%} of turns), "
          f"ToolNode, store reads/writes")
    print(f"  {'case/durability':16s} {'kvstore':>9s} {'SQLite':>9s}  {'ratio':>6s}  {'rounds':16s}"
          f" {'all-sync':>9s} {'gain':>6s} {'memory':>9s} {'ceiling':>7s}  commits/turn"
          f"  syncs/turn (all-sync)")
    targets = []

    def per_turn(runs: list, what: str) -> float:
        return sum(x.get(what, 0) for x in runs) / max(1, sum(x["turns"] for x in runs))

    def rate(runs: list) -> float:
        return statistics.median(x["turns_per_sec"] for x in runs)
    for name, runs in results.items():
        rounds = " ".join(f"{x:.2f}" for x in runs["ratios"])
        print(f"  {name:16s} {rate(runs['kvstore']):9.1f} {rate(runs['sqlite']):9.1f}  "
              f"{runs['ratio']:5.2f}x  {rounds:16s} {rate(runs['kv-allsync']):9.1f} "
              f"{runs['vs_allsync']:5.2f}x {rate(runs['memory']):9.1f} {runs['ceiling']:6.2f}x  "
              f"{per_turn(runs['kvstore'], 'commits'):12.1f}  "
              f"{per_turn(runs['kvstore'], 'syncs'):10.1f} ({per_turn(runs['kv-allsync'], 'syncs'):.1f})")
        kind, durability = name.split("/")
        goal = 1.5 if kind == "sync" else 3.0
        if kind == "asyncio" or durability in ("sync", "exit"):
            peer = "SqliteSaver+SqliteStore" if kind == "sync" else "AsyncSqliteSaver+Store"
            what = (f"graph {'invoke' if kind == 'sync' else f'{GRAPH_CONCURRENT} conversations'}, "
                    f"durability={durability} >= {goal:g}x {peer}")
            targets.append((what, f"{runs['ratio']:.2f}x", runs["ratio"] >= goal))
    print("  (turns/s: medians over rounds; ratio: median of the rounds' ratios against SQLite; "
          "all-sync: KVStoreSaver with every call synced by itself, as before, and gain: kvstore "
          "against it, median of the rounds' ratios; memory: LangGraph's InMemorySaver + "
          "InMemoryStore, nothing on disk, and ceiling: it against SQLite, the most any saver "
          "could reach; syncs: kvstore's fdatasync calls)")
    print()
    print("  one conversation at a time, the floor: InMemorySaver + InMemoryStore with one "
          "512-byte append and fdatasync a checkpoint put, the least a saver durable at each "
          "checkpoint does; against SQLite, the most such a saver could reach:")
    for name, runs in results.items():
        if "floor_ratio" in runs:
            print(f"  {name:16s} floor {rate(runs['floor']):7.1f} turns/s {runs['floor_ratio']:5.2f}x"
                  f"   kvstore {runs['ratio']:5.2f}x   memory {runs['ceiling']:5.2f}x")
    print()
    print("  storage a turn, one conversation at a time (kvstore: LMDB's pages in use after its "
          "log is applied; SQLite: its files after close), KB, medians over rounds:")
    for name, runs in results.items():
        if "disk_bytes" not in runs["kvstore"][0]:
            continue
        per = {k: statistics.median(x["disk_bytes"] / x["turns"] for x in runs[k]) / 1024
               for k in ("kvstore", "sqlite")}
        print(f"  {name:16s} kvstore {per['kvstore']:7.1f}  SQLite {per['sqlite']:7.1f}  "
              f"({per['kvstore'] / per['sqlite']:.2f}x)")
    print()
    print("  CPU time of the process a turn, ms (every thread; medians over rounds):")
    print(f"  {'case/durability':16s} {'kvstore':>8s} {'SQLite':>8s} {'memory':>8s}  "
          f"kvstore - memory  SQLite - memory")
    for name, runs in results.items():
        cpu = {k: statistics.median(x["cpu_ms_per_turn"] for x in runs[k])
               for k in ("kvstore", "sqlite", "memory")}
        print(f"  {name:16s} {cpu['kvstore']:8.2f} {cpu['sqlite']:8.2f} {cpu['memory']:8.2f}  "
              f"{cpu['kvstore'] - cpu['memory']:16.2f}  {cpu['sqlite'] - cpu['memory']:15.2f}")
    return targets


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer ops (about a minute)")
    ap.add_argument("--repeats", type=int, default=None, help="runs of each case (default 3)")
    ap.add_argument("--tmpdir", default=None, help="where the temporary stores go")
    ap.add_argument("--json", default=None, help="write the results to this file")
    ap.add_argument("--only", default="checkpoint,asyncio,graph",
                    help="sections to run, separated by commas: checkpoint, asyncio, graph; "
                         "trace (one turn's saver calls, not in the default) "
                         "(default: all)")
    args = ap.parse_args(argv)
    SYNCS.install()
    sections = set(args.only.split(","))
    unknown = sections - {"checkpoint", "asyncio", "graph", "trace"}
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}: use checkpoint, asyncio, graph, trace")
    repeats = args.repeats or 3
    sync_ops = 200 if args.quick else 400
    thread_ops = 640 if args.quick else 1280
    single_aputs = 200 if args.quick else 400
    per_task = 20 if args.quick else 100  # enough probe samples for a p99 (a few hundred)

    records, source = data.load(None)
    convos = conversations(records)
    metas, episodes = side_channels(records)
    sqlite_sync = sqlite3.connect(":memory:").execute("PRAGMA synchronous").fetchone()[0]
    print(f"kvstore agent benchmark{' (QUICK)' if args.quick else ''}, "
          f"{datetime.now().strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"data:     {source}; {len(convos)} conversations of up to {MAX_MESSAGES} messages")
    print(f"machine:  {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}")
    print(f"versions: kvstore {kvstore.__version__} (codec {kvstore.codec.backend}), "
          f"sqlite {sqlite3.sqlite_version} (SqliteSaver: WAL, synchronous={sqlite_sync} "
          f"{ {0: 'OFF', 1: 'NORMAL', 2: 'FULL', 3: 'EXTRA'}.get(sqlite_sync, '?') })")
    probe = Script("probe", convos[0][:45], metas[0], episodes[:5]).steps[-1][1]
    size = len(KVStoreSaver.serde.dumps_typed(probe["channel_values"])[1])
    print(f"state:    {size / 1024:.1f} KiB serialized at 45 messages "
          f"(channels: {', '.join(sorted(probe['channel_values']))})")
    print()

    results: dict = {"checkpoint": {}, "asyncio": {}}
    targets: list[tuple[str, str, bool]] = []
    if "trace" in sections:
        for durability in ("sync", "async", "exit"):
            print(f"one turn of the graph, durability={durability}: the saver's calls "
                  f"(start, duration, thread, call, what)")
            print("\n".join(graph_trace(durability, args.tmpdir)))
        print()
    if "graph" in sections:
        results["graph"] = graph_section(args, repeats)
        results["graph_split"] = {d: graph_split(d, args.tmpdir) for d in ("sync", "async", "exit")}
        targets += print_graph(results["graph"])
        print_split(results["graph_split"])
        print()
    kinds = {"messages": convos, "dicts": [as_dicts(c) for c in convos]}
    scenarios = [(f"{kind}/{name}", kind, threads, n_ops) for kind in kinds
                 for name, threads, n_ops in (("1t-durable", 1, sync_ops),
                                              (f"{THREADS}t-durable", THREADS, thread_ops),
                                              ("1t-buffered", 1, sync_ops))]
    if "checkpoint" in sections:
        for name, kind, threads, n_ops in scenarios:
            runs = {"kvstore": [], "sqlite": []}
            for r in range(repeats):
                for system in ("kvstore", "sqlite"):
                    scripts = [make_scripts(kinds[kind], metas, episodes, n_ops // threads,
                                            f"{system}{r}-{t}") for t in range(threads)]
                    out = checkpoint_run(system, name, scripts, n_ops, args.tmpdir)
                    runs[system].append(out)
                    print(f"  [{r + 1}/{repeats}] {name:21s} {system:8s} {out['ops']:6,d} ops "
                          f"{out['ops_per_sec']:9,.0f} ops/s", flush=True)
            results["checkpoint"][name] = {s: median(v) for s, v in runs.items()}

    if "asyncio" in sections:
        values = [v for _, v in records[:2000]]
        runs = {"idle loop": [], "1 task": [], f"{TASKS} tasks": []}
        for r in range(repeats):
            runs["idle loop"].append(aput_case(args.tmpdir, values, 0, 2))
            runs["1 task"].append(aput_case(args.tmpdir, values, 1, single_aputs))
            runs[f"{TASKS} tasks"].append(aput_case(args.tmpdir, values, TASKS, per_task))
            for k in runs:
                print(f"  [{r + 1}/{repeats}] aput {k:10s} {runs[k][-1]['ops']:6,d} ops "
                      f"{runs[k][-1]['ops_per_sec']:9,.0f} ops/s", flush=True)
        results["asyncio"] = {k: median(v) for k, v in runs.items() if k != "idle loop"}
        results["asyncio"]["idle loop"] = sorted(runs["idle loop"], key=lambda r: r["lag_p99_ms"])[
            len(runs["idle loop"]) // 2]

    if "checkpoint" in sections:
        print()
        print("checkpoint put + get_tuple (ops/s, median run)")
        print(f"  {'state/scenario':21s} {'kvstore':>10s} {'SqliteSaver':>12s} {'ratio':>7s}   kvstore commits")
        for name, *_ in scenarios:
            k, s = results["checkpoint"][name]["kvstore"], results["checkpoint"][name]["sqlite"]
            ratio = k["ops_per_sec"] / s["ops_per_sec"]
            results["checkpoint"][name]["ratio"] = ratio
            print(f"  {name:21s} {k['ops_per_sec']:10,.0f} {s['ops_per_sec']:12,.0f} {ratio:6.2f}x   "
                  f"{k['commits']:,} for {k['ops']:,} puts")
    if "asyncio" in sections:
        one, many = results["asyncio"]["1 task"], results["asyncio"][f"{TASKS} tasks"]
        print()
        print("durable aput from asyncio tasks (median run)")
        for k in ("idle loop", "1 task", f"{TASKS} tasks"):
            v = results["asyncio"][k]
            work = (f"{v['ops_per_sec']:9,.0f} ops/s  {v['commits']:5,d} commits for {v['ops']:5,d} aputs"
                    if v["ops"] else f"{'(no writes: the machine and the probe alone)':43s}")
            print(f"  {k:10s} {work}   loop lag p50 {v['lag_p50_ms']:.2f} ms  p99 "
                  f"{v['lag_p99_ms']:.2f} ms  max {v['lag_max_ms']:.2f} ms ({v['lag_samples']} samples)")

    cp = results["checkpoint"]
    if "checkpoint" in sections:
        targets += [
            (f"checkpoint put+get_tuple, {name.replace('/', ', ')} >= {CHECKPOINT_TARGET:g}x "
             f"SqliteSaver", f"{cp[name]['ratio']:.2f}x", cp[name]["ratio"] >= CHECKPOINT_TARGET)
            for name, *_ in scenarios if "durable" in name and "buffered" not in name]
    if "asyncio" in sections:
        targets += [
            (f"{TASKS} tasks durable aput: loop lag p99 < {LAG_TARGET_MS:g} ms",
             f"{many['lag_p99_ms']:.2f} ms", many["lag_p99_ms"] < LAG_TARGET_MS),
            (f"{TASKS} tasks durable aput >= {TASKS_TARGET:g}x one task",
             f"{many['ops_per_sec'] / one['ops_per_sec']:.2f}x",
             many["ops_per_sec"] / one["ops_per_sec"] >= TASKS_TARGET),
        ]
    print()
    print("TARGETS (ratios measured in this run)")
    for what, value, ok in targets:
        print(f"  {what:72s} {value:>9s}  {verdict(ok)}")
    if "checkpoint" in sections:
        print(f"  (for information, 1t-buffered: {cp['messages/1t-buffered']['ratio']:.2f}x and "
              f"{cp['dicts/1t-buffered']['ratio']:.2f}x: kvstore commits within 0.1 s there, "
              f"SqliteSaver syncs every put)")
    results["targets"] = [{"target": w, "value": v, "met": ok} for w, v, ok in targets]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
