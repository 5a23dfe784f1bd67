"""KVStoreSaver's ttl= (minutes, as langgraph-redis takes it) and keep_latest=,
on a fake clock: a checkpoint expires together with its values and writes."""

import pytest

pytest.importorskip("langgraph.checkpoint.conformance")

from langchain_core.messages import HumanMessage  # noqa: E402
from langgraph.checkpoint.conformance.test_utils import (  # noqa: E402
    generate_checkpoint,
    generate_config,
    generate_metadata,
)

import kvstore  # noqa: E402
from kvstore.integrations.langgraph import KVStoreSaver  # noqa: E402
from test_langgraph_checkpoint import build_graph, conformance  # noqa: E402
from test_ttl import FakeClock  # noqa: E402


@pytest.fixture
def clock():
    return FakeClock()


def put(saver, thread_id, values, new, parent=None, ns="", step=0):
    """A checkpoint holding `values` (channel -> (version, value)); `new`: the
    channels it writes (the others it reuses from its parent)."""
    config = generate_config(thread_id, checkpoint_ns=ns)
    if parent is not None:
        config["configurable"]["checkpoint_id"] = parent["configurable"]["checkpoint_id"]
    cp = generate_checkpoint(channel_values={ch: v for ch, (_, v) in values.items()},
                             channel_versions={ch: ver for ch, (ver, _) in values.items()})
    return saver.put(config, cp, generate_metadata(step=step),
                     {ch: values[ch][0] for ch in new})


def records(db):
    return {name: len(list(db.namespace(f"langgraph:{name}").keys()))
            for name in ("checkpoints", "blobs", "writes")}


def test_ttl_is_in_minutes_and_expires_a_checkpoint_with_its_values_and_writes(db, clock):
    saver = KVStoreSaver(db, ttl={"default_ttl": 1, "refresh_on_read": False})
    c1 = put(saver, "t", {"a": (1, "x" * 100), "b": (1, [1, 2])}, new=["a", "b"])
    saver.put_writes(c1, [("a", "pending")], task_id="task")
    assert records(db) == {"checkpoints": 1, "blobs": 2, "writes": 1}
    checkpoints = db.namespace("langgraph:checkpoints")
    [key] = checkpoints.keys()
    assert checkpoints.expiry(key) == (clock.now + 60, 60)
    clock.advance(59)
    found = saver.get_tuple(generate_config("t"))
    assert found.checkpoint["channel_values"] == {"a": "x" * 100, "b": [1, 2]}
    assert found.pending_writes == [("task", "a", "pending")]
    clock.advance(1)
    assert saver.get_tuple(generate_config("t")) is None
    assert list(saver.list(None)) == []
    assert records(db) == {"checkpoints": 0, "blobs": 2, "writes": 1}  # these outlive it by 2%:
    clock.advance(1.2)
    assert records(db) == {"checkpoints": 0, "blobs": 0, "writes": 0}


def test_a_newer_checkpoint_keeps_the_values_it_reuses_alive(db, clock):
    saver = KVStoreSaver(db, ttl={"default_ttl": 1, "refresh_on_read": False})
    c1 = put(saver, "t", {"a": (1, "old a"), "b": (1, "b, reused")}, new=["a", "b"])
    clock.advance(50)
    c2 = put(saver, "t", {"a": (2, "new a"), "b": (1, "b, reused")}, new=["a"], parent=c1)
    db.flush()  # the refresh of b is a buffered write
    clock.advance(30)  # c1 (and its own value of a) has expired; c2 has 30 s left
    found = saver.get_tuple(generate_config("t"))
    assert found.config == c2
    assert found.checkpoint["channel_values"] == {"a": "new a", "b": "b, reused"}
    assert [t.config for t in saver.list(generate_config("t"))] == [c2]
    clock.advance(30 + 1.2)
    assert saver.get_tuple(generate_config("t")) is None
    assert records(db) == {"checkpoints": 0, "blobs": 0, "writes": 0}


def test_refresh_on_read_pushes_a_checkpoint_its_values_and_writes_together(db, clock):
    saver = KVStoreSaver(db, ttl={"default_ttl": 1})  # refresh_on_read: True by default
    c1 = put(saver, "t", {"a": (1, "a")}, new=["a"])
    saver.put_writes(c1, [("a", "w")], task_id="task")
    for _ in range(5):  # read every 50 s: 250 s in all, a TTL of 60 s
        clock.advance(50)
        assert saver.get_tuple(generate_config("t")).pending_writes == [("task", "a", "w")]
        db.flush()
    deadline = db.namespace("langgraph:checkpoints").expiry(
        next(db.namespace("langgraph:checkpoints").keys()))[0]
    for name in ("blobs", "writes"):
        handle = db.namespace(f"langgraph:{name}")
        assert all(handle.expiry(k)[0] >= deadline for k in handle.keys())
    list(saver.list(generate_config("t")))  # list does not refresh
    clock.advance(60 + 1.2)
    assert saver.get_tuple(generate_config("t")) is None
    assert records(db) == {"checkpoints": 0, "blobs": 0, "writes": 0}


def test_a_checkpoint_whose_value_is_gone_is_never_returned(db, clock):
    saver = KVStoreSaver(db, ttl={"default_ttl": 10})
    c1 = put(saver, "t", {"a": (1, "a")}, new=["a"])
    c2 = put(saver, "t", {"a": (1, "a"), "b": (1, "b")}, new=["b"], parent=c1)
    [blob] = [k for k in db.namespace("langgraph:blobs").keys() if b"\x00b\x00" in k]
    db.namespace("langgraph:blobs").delete(blob)  # as if it had expired before c2
    assert saver.get_tuple(generate_config("t")).config == c1  # the newest whole one
    assert saver.get_tuple(c2) is None
    assert [t.config for t in saver.list(generate_config("t"))] == [c1]


def test_keep_latest_keeps_the_newest_checkpoints_and_the_values_they_use(db):
    saver = KVStoreSaver(db, keep_latest=2)
    parent = None
    made = []
    for i in range(5):  # "a" changes every step, "b" once
        values = {"a": (i + 1, f"a{i}"), "b": (1, "b")}
        parent = put(saver, "t", values, new=["a", "b"] if i == 0 else ["a"], parent=parent, step=i)
        saver.put_writes(parent, [("a", f"w{i}")], task_id="task")
        made.append(parent)
    put(saver, "other", {"a": (1, "x")}, new=["a"])
    assert [t.config for t in saver.list(generate_config("t"))] == made[:2:-1][:2]
    assert records(db) == {"checkpoints": 3, "blobs": 4, "writes": 2}  # t: a4, a5, b; other: a
    newest = saver.get_tuple(generate_config("t"))
    assert newest.checkpoint["channel_values"] == {"a": "a4", "b": "b"}
    assert newest.pending_writes == [("task", "a", "w4")]
    with pytest.raises(kvstore.InvalidArgumentError, match="keep_latest"):
        KVStoreSaver(db, keep_latest=0)


def test_a_graph_with_keep_latest_and_ttl_still_resumes(store_path, clock):
    cfg = {"configurable": {"thread_id": "session-1"}}
    with KVStoreSaver.from_path(store_path, clock=clock, keep_latest=1,
                                ttl={"default_ttl": 30}) as saver:
        graph = build_graph().compile(checkpointer=saver)
        graph.invoke({"messages": [HumanMessage(content="hi")], "steps": 0}, cfg)
        assert graph.get_state(cfg).next == ("review",)
        assert len(list(saver.list(cfg))) == 1
        clock.advance(29 * 60)
        from langgraph.types import Command

        out = graph.invoke(Command(resume="yes"), cfg)
        assert [m.content for m in out["messages"]] == ["hi", "answer 1", "review: yes"]
        clock.advance(30 * 60)
        assert saver.get_tuple(cfg) is None


def test_bad_ttl_configs_say_what_to_do(db):
    with pytest.raises(kvstore.InvalidTTLError, match="minutes"):
        KVStoreSaver(db, ttl={"default_ttl": -1})
    with pytest.raises(kvstore.InvalidArgumentError, match="TTLConfig"):
        KVStoreSaver(db, ttl=60)


def test_conformance_stays_full_with_a_ttl(tmp_path):
    report, failures = conformance(tmp_path, ttl={"default_ttl": 60})
    assert report.passed_all(), failures
    assert report.conformance_level() == "FULL"
