"""Agent benchmark: the LangGraph checkpointer against LangGraph's SQLite one,
and durable asyncio writes from many tasks.

Run from the repository root, with the langgraph extra installed
(pip install -e '.[langgraph]')::

    python bench/bench_agent.py [--quick] [--repeats N] [--tmpdir DIR] [--json FILE]

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

Repetitions alternate kvstore and its peer, so a slow spell of the shared
machine hits both; the table shows the median run. The targets (issue 8):
checkpoint put + get_tuple >= 5x SqliteSaver; 100 tasks: loop lag p99 < 5 ms
and >= 5x the throughput of one task.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer ops (about a minute)")
    ap.add_argument("--repeats", type=int, default=None, help="runs of each case (default 3)")
    ap.add_argument("--tmpdir", default=None, help="where the temporary stores go")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args(argv)
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
    kinds = {"messages": convos, "dicts": [as_dicts(c) for c in convos]}
    scenarios = [(f"{kind}/{name}", kind, threads, n_ops) for kind in kinds
                 for name, threads, n_ops in (("1t-durable", 1, sync_ops),
                                              (f"{THREADS}t-durable", THREADS, thread_ops),
                                              ("1t-buffered", 1, sync_ops))]
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

    print()
    print("checkpoint put + get_tuple (ops/s, median run)")
    print(f"  {'state/scenario':21s} {'kvstore':>10s} {'SqliteSaver':>12s} {'ratio':>7s}   kvstore commits")
    for name, *_ in scenarios:
        k, s = results["checkpoint"][name]["kvstore"], results["checkpoint"][name]["sqlite"]
        ratio = k["ops_per_sec"] / s["ops_per_sec"]
        results["checkpoint"][name]["ratio"] = ratio
        print(f"  {name:21s} {k['ops_per_sec']:10,.0f} {s['ops_per_sec']:12,.0f} {ratio:6.2f}x   "
              f"{k['commits']:,} for {k['ops']:,} puts")
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
    targets = [
        (f"checkpoint put+get_tuple, {name.replace('/', ', ')} >= {CHECKPOINT_TARGET:g}x SqliteSaver",
         f"{cp[name]['ratio']:.2f}x", cp[name]["ratio"] >= CHECKPOINT_TARGET)
        for name, *_ in scenarios if "durable" in name and "buffered" not in name
    ] + [
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
