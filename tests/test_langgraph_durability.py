"""KVStoreSaver under LangGraph's durability modes: fewer syncs, and still
what each mode promises (docs/langgraph.md, "What a turn asks of the saver").

The stores here never sync on their own (flush_interval and apply_interval
of an hour): the write-ahead log's unsynced bytes are exactly what the
saver's calls left unsynced, and a SIGKILL loses nothing that was appended
(the kernel has it), so the tests look at the log's synced position for
what a power loss would keep."""

import asyncio
import operator
import os
import signal
import subprocess
import sys
import textwrap
from typing import Annotated, TypedDict

import pytest

pytest.importorskip("langgraph.checkpoint.conformance")

from langgraph.checkpoint.conformance.test_utils import (  # noqa: E402
    generate_checkpoint,
    generate_config,
    generate_metadata,
)
from langgraph.graph import END, START, StateGraph  # noqa: E402
from langgraph.types import Command, interrupt  # noqa: E402

import kvstore  # noqa: E402
import kvstore.aio  # noqa: E402
from kvstore.integrations.langgraph import KVStoreSaver  # noqa: E402

QUIET = {"flush_interval": 3600, "apply_interval": 3600}  # nothing syncs but the calls
MODES = ("sync", "async", "exit")


class State(TypedDict):
    log: Annotated[list, operator.add]


def build(ask: bool = False, fail: bool = False):
    """START -> a -> (b, c in parallel) -> d -> END; d asks (interrupt) or
    raises when told to, after b and c have written."""

    def node(name):
        def run(state: State) -> dict:
            if name == "d" and ask:
                return {"log": [f"d:{interrupt('ok?')}"]}
            if name == "d" and fail:
                raise RuntimeError("d failed")
            return {"log": [name]}
        return run

    builder = StateGraph(State)
    for name in "abcd":
        builder.add_node(name, node(name))
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge("a", "c")
    builder.add_edge(["b", "c"], "d")
    builder.add_edge("d", END)
    return builder


def unsynced(db) -> int:
    return db.stats()["log"]["log_unsynced_bytes"]


def groups(db) -> tuple[int, int]:
    stats = db.stats()
    return stats["durable_groups"], stats["buffered_groups"]


@pytest.fixture
def quiet_db(store_path):
    db = kvstore.open(store_path, **QUIET)
    yield db
    db.close()


@pytest.mark.parametrize("mode", MODES + (None,))  # None: LangGraph's default, "async"
def test_everything_is_synced_when_invoke_returns(quiet_db, mode):
    graph = build().compile(checkpointer=KVStoreSaver(quiet_db))
    kw = {"durability": mode} if mode else {}
    graph.invoke({"log": ["in"]}, {"configurable": {"thread_id": "warm"}}, **kw)
    before = groups(quiet_db)
    for i in range(3):
        cfg = {"configurable": {"thread_id": f"t{i}"}}
        out = graph.invoke({"log": ["in"]}, cfg, **kw)
        assert out["log"] == ["in", "a", "b", "c", "d"]
        assert unsynced(quiet_db) == 0, mode  # a power loss now keeps the whole run
    durable, buffered = (b - a for a, b in zip(before, groups(quiet_db)))
    if mode == "exit":  # one put at the end (no task left pending writes)
        assert (durable, buffered) == (3, 0)
    else:
        # a run on a new thread: 5 puts and 5 put_writes (input and 4 tasks),
        # all synced before; the writes now wait for the next put's sync (a
        # few come after that put started and sync by themselves)
        assert durable + buffered == 3 * 10, (durable, buffered)
        assert buffered >= 3 * 3, (durable, buffered)


@pytest.mark.parametrize("mode", ("sync", "async"))
def test_async_runs_sync_everything_by_the_time_they_return(store_path, mode):
    async def main():
        async with kvstore.aio.open(store_path, **QUIET) as adb:
            db = adb.store
            graph = build().compile(checkpointer=KVStoreSaver(adb))
            outs = await asyncio.gather(*(
                graph.ainvoke({"log": [str(i)]}, {"configurable": {"thread_id": f"t{i}"}},
                              durability=mode) for i in range(8)))
            assert all(o["log"][1:] == ["a", "b", "c", "d"] for o in outs)
            assert unsynced(db) == 0
            assert groups(db)[1] >= 8 * 2

    asyncio.run(main())


def test_writes_sync_with_the_next_put_or_by_themselves_when_late(quiet_db):
    saver = KVStoreSaver(quiet_db)
    run = {"__pregel_durability": "sync"}

    def cfg(checkpoint_id=None):
        config = generate_config("t", checkpoint_id=checkpoint_id)
        config["configurable"].update(run)
        return config

    first = saver.put(cfg(), generate_checkpoint(), generate_metadata(), {})
    first_id = first["configurable"]["checkpoint_id"]
    saver.put_writes(cfg(first_id), [("x", 1)], "task-1")
    assert unsynced(quiet_db) > 0  # buffered: the next put syncs it
    second = saver.put(cfg(first_id), generate_checkpoint(), generate_metadata(), {})
    assert unsynced(quiet_db) == 0
    saver.put_writes(cfg(first_id), [("x", 2)], "task-2")  # late: its checkpoint is superseded
    assert unsynced(quiet_db) == 0
    saver.put_writes(cfg(second["configurable"]["checkpoint_id"]), [("__error__", "boom")], "t3")
    assert unsynced(quiet_db) == 0  # no put follows an error: it syncs
    saver.put_writes(cfg(second["configurable"]["checkpoint_id"]), [("x", 3)], "task-4")
    assert unsynced(quiet_db) == 0  # a sibling after the error: its step is over
    # outside a graph run (no mode in the config), every call syncs, as before
    saver.put_writes(generate_config("u", checkpoint_id=first_id), [("x", 1)], "task-1")
    assert unsynced(quiet_db) == 0
    tup = saver.get_tuple(generate_config("t", checkpoint_id=first_id))
    assert sorted(w[2] for w in tup.pending_writes) == [1, 2]


@pytest.mark.parametrize("mode", MODES)
def test_an_interrupted_run_keeps_its_pending_writes_synced(quiet_db, mode):
    graph = build(ask=True).compile(checkpointer=KVStoreSaver(quiet_db))
    cfg = {"configurable": {"thread_id": "ask"}}
    graph.invoke({"log": ["in"]}, cfg, durability=mode)
    assert unsynced(quiet_db) == 0
    state = graph.get_state(cfg)
    assert state.next == ("d",) and state.tasks[0].interrupts[0].value == "ok?"
    out = graph.invoke(Command(resume="yes"), cfg, durability=mode)
    assert out["log"] == ["in", "a", "b", "c", "d:yes"]
    assert unsynced(quiet_db) == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_failed_run_keeps_the_writes_of_the_tasks_that_succeeded(quiet_db, mode):
    saver = KVStoreSaver(quiet_db)
    cfg = {"configurable": {"thread_id": "fail"}}
    with pytest.raises(RuntimeError, match="d failed"):
        build(fail=True).compile(checkpointer=saver).invoke({"log": ["in"]}, cfg,
                                                            durability=mode)
    assert unsynced(quiet_db) == 0
    out = build().compile(checkpointer=saver).invoke(None, cfg, durability=mode)
    assert out["log"] == ["in", "a", "b", "c", "d"]


_CHILD = """
import sys
from kvstore.integrations.langgraph import KVStoreSaver
sys.path.insert(0, sys.argv[3])
from test_langgraph_durability import build
saver = KVStoreSaver.from_path(sys.argv[1], flush_interval=3600, apply_interval=3600)
graph = build().compile(checkpointer=saver)
i = 0
while True:
    out = graph.invoke({"log": [str(i)]}, {"configurable": {"thread_id": "t"}},
                       durability=sys.argv[2])
    print(len(out["log"]), flush=True)
    i += 1
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_sigkilled_process_keeps_every_returned_run(store_path, mode):
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_CHILD), store_path, mode,
                          os.path.dirname(__file__)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    returned = 0
    while returned < 5:
        line = p.stdout.readline()
        assert line, p.stderr.read()
        returned += 1
        assert int(line) == 5 * returned
    os.kill(p.pid, signal.SIGKILL)
    p.wait(30)
    with KVStoreSaver.from_path(store_path) as saver:
        state = build().compile(checkpointer=saver).get_state({"configurable": {"thread_id": "t"}})
        assert len(state.values["log"]) >= 5 * returned  # every run invoke returned, at least


# ---------------------------------------------------------------- the store's writes in a run

def buffered_by(db, put) -> int:
    """How many buffered write groups put() made (under "async" a put of the
    run may sync concurrently, so the log's unsynced bytes cannot tell)."""
    before = groups(db)[1]
    put()
    return groups(db)[1] - before


def build_remembering(store, seen):
    """START -> remember -> END: the node puts an item in `store` and notes
    whether that put was buffered (1) or synced (0)."""

    def remember(state: State) -> dict:
        seen.append(buffered_by(store.db, lambda: store.put(
            ("memories",), f"m{len(state['log'])}", {"text": state["log"][-1]})))
        return {"log": ["remembered"]}

    builder = StateGraph(State)
    builder.add_node("remember", remember)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", END)
    return builder


@pytest.mark.parametrize("mode", MODES)
def test_a_nodes_store_writes_are_synced_by_the_runs_next_put(quiet_db, mode):
    from kvstore.integrations.langgraph import KVStore
    store, seen = KVStore(quiet_db), []
    graph = build_remembering(store, seen).compile(checkpointer=KVStoreSaver(quiet_db))
    for i in range(3):
        cfg = {"configurable": {"thread_id": f"t{i}"}}
        assert graph.invoke({"log": [f"hello {i}"]}, cfg, durability=mode)["log"][-1] == "remembered"
        # the store's put was an append, not a sync (under "async" a task's
        # writes of the run may be buffered meanwhile too)
        assert seen[-1] == 1 if mode != "async" else seen[-1] >= 1, (mode, seen)
        assert unsynced(quiet_db) == 0, mode  # the run's put synced it before invoke returned
        assert store.get(("memories",), "m1").value == {"text": f"hello {i}"}
    # not in a run: synced by itself
    assert buffered_by(quiet_db, lambda: store.put(("memories",), "outside", {"text": "x"})) == 0
    assert unsynced(quiet_db) == 0


def test_async_nodes_store_writes_are_synced_by_the_runs_next_put(store_path):
    from kvstore.integrations.langgraph import KVStore

    async def main():
        async with kvstore.aio.open(store_path, **QUIET) as adb:
            store, seen = KVStore(adb), []

            async def remember(state: State) -> dict:
                before = groups(adb.store)[1]
                await store.aput(("memories",), f"m{len(state['log'])}", {"text": "x"})
                seen.append(groups(adb.store)[1] - before)
                return {"log": ["remembered"]}

            builder = StateGraph(State)
            builder.add_node("remember", remember)
            builder.add_edge(START, "remember")
            builder.add_edge("remember", END)
            graph = builder.compile(checkpointer=KVStoreSaver(adb))
            for mode in MODES:
                await graph.ainvoke({"log": ["in"]}, {"configurable": {"thread_id": mode}},
                                    durability=mode)
                assert seen[-1] == 1 if mode != "async" else seen[-1] >= 1, (mode, seen)
                assert unsynced(adb.store) == 0, mode

    asyncio.run(main())


@pytest.mark.parametrize("how", ("other store", "buffered saver", "other checkpointer"))
def test_a_nodes_store_writes_sync_by_themselves_unless_the_run_syncs_them(quiet_db, tmp_path, how):
    from langgraph.checkpoint.memory import InMemorySaver

    from kvstore.integrations.langgraph import KVStore
    other = kvstore.open(str(tmp_path / "other"), **QUIET)
    try:
        if how == "other store":  # the saver's syncs are of another log
            store, saver = KVStore(other), KVStoreSaver(quiet_db)
        elif how == "buffered saver":  # its puts sync nothing
            store, saver = KVStore(quiet_db), KVStoreSaver(quiet_db, durable=False)
        else:
            store, saver = KVStore(quiet_db), InMemorySaver()
        seen = []
        graph = build_remembering(store, seen).compile(checkpointer=saver)
        graph.invoke({"log": ["in"]}, {"configurable": {"thread_id": "t"}}, durability="sync")
        assert seen == [0]  # synced before the node went on
    finally:
        other.close()
