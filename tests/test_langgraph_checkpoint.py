"""KVStoreSaver: LangGraph's conformance suite, real graphs, and what kvstore adds."""

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

from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402
from langgraph.checkpoint.conformance import checkpointer_test, validate  # noqa: E402
from langgraph.checkpoint.conformance.test_utils import (  # noqa: E402
    generate_checkpoint,
    generate_config,
    generate_metadata,
)
from langgraph.graph import END, START, StateGraph  # noqa: E402
from langgraph.graph.message import add_messages  # noqa: E402
from langgraph.types import Command, interrupt  # noqa: E402

import kvstore  # noqa: E402
import kvstore.aio  # noqa: E402
from kvstore.integrations.langgraph import KVStoreSaver  # noqa: E402


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------- conformance


def conformance(tmp_path, **kwargs):
    n = iter(range(100))

    @checkpointer_test(name="KVStoreSaver")
    async def factory():
        async with KVStoreSaver.from_path(str(tmp_path / f"s{next(n)}"), **kwargs) as saver:
            yield saver

    report = run(validate(factory))
    failures = {cap: r.failures for cap, r in report.results.items() if r.failures}
    return report, failures


def test_conformance_every_capability(tmp_path):
    report, failures = conformance(tmp_path)
    assert report.passed_all_base(), failures
    assert report.passed_all(), failures
    assert report.conformance_level() == "FULL"
    detected = {cap for cap, r in report.results.items() if r.detected}
    assert detected == {"put", "put_writes", "get_tuple", "list", "delete_thread",
                        "delete_for_runs", "copy_thread", "prune"}


def test_conformance_buffered_writes(tmp_path):
    # durable=False: reads see the writes before they are committed
    report, failures = conformance(tmp_path, durable=False, flush_interval=3600)
    assert report.passed_all(), failures


# ---------------------------------------------------------------- real graphs


class State(TypedDict):
    messages: Annotated[list, add_messages]
    steps: Annotated[int, operator.add]


def build_graph():
    def agent(state: State):
        return {"messages": [AIMessage(content=f"answer {len(state['messages'])}")], "steps": 1}

    def review(state: State):
        approved = interrupt({"question": "approve?"})
        return {"messages": [AIMessage(content=f"review: {approved}")], "steps": 1}

    builder = StateGraph(State)
    builder.add_node("agent", agent)
    builder.add_node("review", review)
    builder.add_edge(START, "agent")
    builder.add_edge("agent", "review")
    builder.add_edge("review", END)
    return builder


def test_graph_resumes_from_an_interrupt_after_a_reopen(store_path):
    cfg = {"configurable": {"thread_id": "session-1"}}
    with KVStoreSaver.from_path(store_path) as saver:
        graph = build_graph().compile(checkpointer=saver)
        graph.invoke({"messages": [HumanMessage(content="hi")], "steps": 0}, cfg)
        state = graph.get_state(cfg)
        assert state.next == ("review",)
        assert state.tasks[0].interrupts[0].value == {"question": "approve?"}
    with KVStoreSaver.from_path(store_path) as saver:  # a new process would see the same
        graph = build_graph().compile(checkpointer=saver)
        out = graph.invoke(Command(resume="yes"), cfg)
        assert [m.content for m in out["messages"]] == ["hi", "answer 1", "review: yes"]
        assert out["steps"] == 2
        history = list(graph.get_state_history(cfg))
        assert len(history) >= 4
        assert [h.config["configurable"]["checkpoint_id"] for h in history] == \
            sorted((h.config["configurable"]["checkpoint_id"] for h in history), reverse=True)


def test_many_async_graph_runs_share_commits(store_path):
    async def main():
        async with kvstore.aio.open(store_path) as db:
            saver = KVStoreSaver(db)
            graph = build_graph().compile(checkpointer=saver)
            before = db.stats()
            n = 30
            await asyncio.gather(*(
                graph.ainvoke({"messages": [HumanMessage(content=f"q{i}")], "steps": 0},
                              {"configurable": {"thread_id": f"t{i}"}}) for i in range(n)))
            after = db.stats()
            groups = after["durable_groups"] - before["durable_groups"]
            commits = after["commits"] - before["commits"]
            assert groups >= 3 * n  # several checkpoints and writes per run, all durable
            assert commits < groups, (commits, groups)
            for i in (0, n - 1):
                state = await graph.aget_state({"configurable": {"thread_id": f"t{i}"}})
                assert state.values["messages"][0].content == f"q{i}"
                assert state.next == ("review",)

    run(main())


def test_forked_thread_keeps_both_branches(store_path):
    # update_state from an old checkpoint forks the thread: the channel
    # versions of the two branches must not overwrite each other's values.
    with KVStoreSaver.from_path(store_path) as saver:
        graph = build_graph().compile(checkpointer=saver)
        cfg = {"configurable": {"thread_id": "fork"}}
        graph.invoke({"messages": [HumanMessage(content="one")], "steps": 0}, cfg)
        head = graph.get_state(cfg)
        first = [h for h in graph.get_state_history(cfg) if h.next == ("agent",)][0]
        graph.update_state(first.config, {"messages": [HumanMessage(content="branch")]})
        newest = graph.get_state(cfg)
        assert [m.content for m in newest.values["messages"]] == ["one", "branch"]
        old = graph.get_state(head.config)  # the other branch, untouched
        assert [m.content for m in old.values["messages"]] == ["one", "answer 1"]
        assert [m.content for m in graph.get_state(first.config).values["messages"]] == ["one"]


# ---------------------------------------------------------------- durability


def test_acknowledged_checkpoints_survive_sigkill(store_path):
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys
        from langgraph.checkpoint.conformance.test_utils import (
            generate_checkpoint, generate_config, generate_metadata)
        from kvstore.integrations.langgraph import KVStoreSaver
        saver = KVStoreSaver.from_path(sys.argv[1], flush_interval=3600)
        parent = generate_config("t")
        i = 0
        while True:
            cp = generate_checkpoint(channel_values={"n": i}, channel_versions={"n": i + 1})
            parent = saver.put(parent, cp, generate_metadata(step=i), {"n": i + 1})
            print(cp["id"], flush=True)
            i += 1
    """), store_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked = []
    while len(acked) < 50:
        line = p.stdout.readline()
        assert line, p.stderr.read()
        acked.append(line.strip())
    os.kill(p.pid, signal.SIGKILL)
    p.wait(30)
    with KVStoreSaver.from_path(store_path) as saver:
        for i, checkpoint_id in enumerate(acked):
            found = saver.get_tuple(generate_config("t", checkpoint_id=checkpoint_id))
            assert found is not None and found.checkpoint["channel_values"] == {"n": i}


# ---------------------------------------------------------------- kvstore specifics


def put(saver, thread_id, *, parent=None, values=None, versions=None, metadata=None, ns=""):
    config = generate_config(thread_id, checkpoint_ns=ns)
    if parent is not None:
        config["configurable"]["checkpoint_id"] = parent["configurable"]["checkpoint_id"]
    cp = generate_checkpoint(channel_values=values or {}, channel_versions=versions or {})
    return saver.put(config, cp, metadata or generate_metadata(), versions or {})


def test_unchanged_channels_are_stored_once(db):
    saver = KVStoreSaver(db)
    blobs = db.namespace("langgraph:blobs")
    first = put(saver, "t", values={"big": "x" * 1000, "small": 1}, versions={"big": 1, "small": 1})
    assert len(blobs) == 2
    cp = generate_checkpoint(channel_values={"big": "x" * 1000, "small": 2},
                             channel_versions={"big": 1, "small": 2})
    config = generate_config("t", checkpoint_id=first["configurable"]["checkpoint_id"])
    second = saver.put(config, cp, generate_metadata(step=1), {"small": 2})
    assert len(blobs) == 3  # only the new version of "small"
    assert saver.get_tuple(second).checkpoint["channel_values"] == {"big": "x" * 1000, "small": 2}


def test_list_across_namespaces_and_threads_newest_first(db):
    saver = KVStoreSaver(db)
    made = []
    for thread_id, ns in [("a", ""), ("b", ""), ("a", "child:1"), ("b", "child:2"), ("a", "")]:
        made.append((thread_id, ns, put(saver, thread_id, ns=ns,
                                        metadata=generate_metadata(step=len(made)))))
    ids = [c["configurable"]["checkpoint_id"] for _, _, c in made]

    def listed(config, **kw):
        return [t.config["configurable"]["checkpoint_id"] for t in saver.list(config, **kw)]

    assert listed(None) == ids[::-1]
    assert listed({"configurable": {"thread_id": "a"}}) == [ids[4], ids[2], ids[0]]
    assert listed({"configurable": {"thread_id": "a"}}, limit=2) == [ids[4], ids[2]]
    assert listed(None, filter={"step": 3}) == [ids[3]]
    assert listed(None, before={"configurable": {"checkpoint_id": ids[2]}}) == [ids[1], ids[0]]
    assert listed({"configurable": {"thread_id": "a", "checkpoint_ns": "child:1"}}) == [ids[2]]
    assert listed({"configurable": {"thread_id": "a", "checkpoint_id": ids[0]}}) == [ids[0]]


def test_prune_keeps_delta_channel_ancestors_back_to_a_snapshot(db):
    saver = KVStoreSaver(db)
    # c1 stores the delta channel's value (a snapshot); c2 and c3 store none
    c1 = put(saver, "d", values={"log": ["a"]}, versions={"log": 1})
    c2 = put(saver, "d", parent=c1, versions={"log": 2},
             metadata=generate_metadata(step=1, counters_since_delta_snapshot={"log": [1, 1]}))
    saver.put_writes(c2, [("log", "b")], "task")
    c3 = put(saver, "d", parent=c2, versions={"log": 3},
             metadata=generate_metadata(step=2, counters_since_delta_snapshot={"log": [2, 2]}))
    plain = [put(saver, "p")]
    plain.append(put(saver, "p", parent=plain[0]))
    saver.prune(["d", "p"], strategy="keep_latest")
    kept = [t.config["configurable"]["checkpoint_id"] for t in saver.list(generate_config("d"))]
    assert kept == [c["configurable"]["checkpoint_id"] for c in (c3, c2, c1)]
    assert saver.get_tuple(c2).pending_writes == [("task", "log", "b")]
    history = saver.get_delta_channel_history(config=c3, channels=["log"])
    assert history["log"]["seed"] == ["a"] and [w[2] for w in history["log"]["writes"]] == ["b"]
    assert len(list(saver.list(generate_config("p")))) == 1


def test_prune_and_delete_remove_unused_blobs_only(db):
    saver = KVStoreSaver(db)
    blobs = db.namespace("langgraph:blobs")
    c1 = put(saver, "t", values={"a": 1, "b": 2}, versions={"a": 1, "b": 1})
    put(saver, "t", parent=c1, values={"a": 3, "b": 2}, versions={"a": 2, "b": 1})
    assert len(blobs) == 3
    saver.prune(["t"])
    assert len(blobs) == 2  # a@1 went with c1; b@1 is still used
    assert saver.get_tuple(generate_config("t")).checkpoint["channel_values"] == {"a": 3, "b": 2}
    saver.delete_thread("t")
    assert len(blobs) == 0 and len(db.namespace("langgraph:checkpoints")) == 0


def test_bad_arguments_raise_kvstore_errors(db):
    saver = KVStoreSaver(db)
    with pytest.raises(kvstore.InvalidArgumentError, match="thread_id"):
        saver.get_tuple({"configurable": {}})
    with pytest.raises(kvstore.InvalidArgumentError, match="checkpoint_id"):
        saver.put_writes(generate_config("t"), [("ch", 1)], "task")
    with pytest.raises(kvstore.InvalidArgumentError, match="NUL"):
        put(saver, "bad\x00thread")
    with pytest.raises(kvstore.InvalidArgumentError, match="shorter ids"):
        put(saver, "t" * 600)
    with pytest.raises(kvstore.InvalidArgumentError, match="strategy"):
        saver.prune(["t"], strategy="everything")
    with pytest.raises(kvstore.InvalidArgumentError, match="from_path"):
        KVStoreSaver("./some/path")


def test_from_path_owns_its_store_and_a_given_store_stays_open(store_path):
    with KVStoreSaver.from_path(store_path) as saver:
        stored = put(saver, "t")
    with pytest.raises(kvstore.StoreClosedError):
        saver.get_tuple(stored)
    db = kvstore.open(store_path)
    with KVStoreSaver(db) as saver:
        assert saver.get_tuple(stored) is not None
    assert db.get("anything") is None  # still open
    db.close()


def test_buffered_saver_commits_within_the_flush_interval(store_path):
    with KVStoreSaver.from_path(store_path, durable=False) as saver:
        stored = put(saver, "t")
        assert saver.get_tuple(stored) is not None  # read-your-writes before the commit
        before = saver.db.stats()["durable_groups"]
        saver.db.flush()
        assert saver.db.stats()["durable_groups"] == before
        assert saver.db.stats()["buffered_groups"] >= 1
