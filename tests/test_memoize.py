"""@db.memoize(): results cached by a call's arguments, with keys that are
the same in every process, shared by threads and processes."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import textwrap
import threading

import pytest

import kvstore
from kvstore.errors import InvalidArgumentTypeError, InvalidTTLError, ReadOnlyError


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


def counted(db, **options):
    calls = []

    @db.memoize(**options)
    def tool(query, top_k=5, *extra, **flags):
        calls.append((query, top_k, extra, flags))
        return {"query": query, "hits": list(range(top_k)), "extra": extra, "flags": sorted(flags)}

    return tool, calls


def test_a_second_call_with_the_same_arguments_is_read_from_the_store(db):
    tool, calls = counted(db)
    first = tool("lmdb", 3)
    assert first == {"query": "lmdb", "hits": [0, 1, 2], "extra": [], "flags": []}
    assert tool("lmdb", 3) == first
    assert tool("lmdb", top_k=3) == first  # bound to the signature: the same call
    assert tool(query="lmdb", top_k=3) == first
    assert len(calls) == 1
    tool("lmdb")  # top_k=5: another call
    tool("lmdb", 5)
    assert len(calls) == 2


def test_argument_types_make_different_calls_and_containers_are_compared_by_content(db):
    tool, calls = counted(db)
    for query in (1, 1.0, True, "1", b"1", None):
        tool(query)
    assert len(calls) == 6
    tool([1, 2])
    tool((1, 2))  # a list and a tuple with the same items: one call
    tool("q", flag={"b": 1, "a": {2, 1}})
    tool("q", flag={"a": frozenset({1, 2}), "b": 1})  # dict order and set order do not count
    assert len(calls) == 8
    assert tool.key(-0.0) != tool.key(0.0) and tool.key(math.nan) == tool.key(float("nan"))


def test_results_expire_with_the_ttl(tmp_path):
    clock = Clock()
    with kvstore.open(str(tmp_path / "s"), clock=clock) as db:
        tool, calls = counted(db, ttl=60)
        tool("a")
        clock.now += 59
        tool("a")
        assert len(calls) == 1
        clock.now += 2
        tool("a")
        assert len(calls) == 2
        assert db.expiry(tool.key("a"))[1] == 60


def test_results_live_in_the_namespace_given_or_the_handles_own(db):
    tool, _ = counted(db, namespace="tools", name="search")
    tool("x")
    assert list(db.namespace("tools").keys()) == [tool.key("x")]
    assert tool.key("x").startswith(b"search:") and list(db.keys()) == []
    notes = db.namespace("notes")

    @notes.memoize()
    def summarize(text):
        return text.upper()

    assert summarize("hi") == "HI"
    assert list(notes.keys()) == [summarize.key("hi")]
    assert summarize.key("hi").startswith(b"test_memoize.test_results_live_in_the_namespace_given")


def test_forget_and_clear_delete_stored_results(db):
    tool, calls = counted(db)
    tool("a"), tool("b"), tool("c")
    tool.forget("a")
    tool("a")
    assert len(calls) == 4
    assert tool.clear() == 3
    tool("b")
    assert len(calls) == 5


def test_an_argument_without_a_stable_key_is_refused_unless_key_says_how(db):
    tool, calls = counted(db)
    with pytest.raises(InvalidArgumentTypeError, match="type object: its repr or hash may differ"):
        tool(object())
    assert calls == []

    class Client:  # e.g. an HTTP client passed along: not part of the answer
        pass

    @db.memoize(key=lambda client, query: query)
    def fetch(client, query):
        calls.append(query)
        return query * 2

    assert fetch(Client(), "ab") == fetch(Client(), "ab") == "abab"
    assert calls == ["ab"]


def test_the_decorator_is_refused_without_parentheses_and_with_a_bad_ttl(db):
    with pytest.raises(InvalidArgumentTypeError, match=r"@db.memoize\(\)"):
        @db.memoize
        def f(x):
            return x
    with pytest.raises(InvalidTTLError):
        db.memoize(ttl=-1)


def test_a_readonly_store_reads_results_but_refuses_to_store_new_ones(store_path):
    with kvstore.open(store_path) as db:
        tool, _ = counted(db, name="tool")
        tool("a")
    with kvstore.open(store_path, readonly=True) as ro:
        tool, calls = counted(ro, name="tool")
        assert tool("a")["query"] == "a" and calls == []
        with pytest.raises(ReadOnlyError):
            tool("b")


def test_threads_calling_with_the_same_arguments_compute_once(db):
    calls = []
    started = threading.Barrier(8)

    @db.memoize()
    def slow(x):
        calls.append(x)
        return x + 1

    def worker():
        started.wait()
        assert slow(41) == 42

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [41]


def test_coroutine_functions_are_memoized(db):
    calls = []

    @db.memoize(ttl=30)
    async def model(prompt):
        calls.append(prompt)
        await asyncio.sleep(0)
        return {"completion": prompt[::-1]}

    async def main():
        return [await model("abc"), await model("abc")]

    assert asyncio.run(main()) == [{"completion": "cba"}] * 2
    assert calls == ["abc"]


# ---------------------------------------------------------------- across processes

_CHILD = textwrap.dedent("""
    import json, os, sys, kvstore
    path, log, start, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with kvstore.open(path) as db:
        @db.memoize(name="square", namespace="memo")
        def square(n, label="sq"):
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {n}\\n")
            return {"n": n, "square": n * n, "label": label}

        keys = {}
        for n in range(start, stop):
            assert square(n) == {"n": n, "square": n * n, "label": "sq"}
            keys[n] = square.key(n).decode()
    print(json.dumps(keys))
""")


def _child(path, log, start, stop, seed):
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    return subprocess.Popen([sys.executable, "-c", _CHILD, path, str(log), str(start), str(stop)],
                            stdout=subprocess.PIPE, text=True, env=env)


def test_processes_share_results_under_keys_that_do_not_depend_on_the_process(store_path, tmp_path):
    import json

    log = tmp_path / "calls.log"
    first, second = _child(store_path, log, 0, 60, 1), _child(store_path, log, 30, 90, 2)
    keys = {}
    for proc in (first, second):
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        for n, k in json.loads(out).items():
            assert keys.setdefault(n, k) == k  # both processes made the same key for the same call
    computed = log.read_text().splitlines()
    assert 90 <= len(computed) <= 120  # the overlap may be computed by both, never more
    third = _child(store_path, log, 0, 90, 3)
    out, _ = third.communicate(timeout=120)
    assert third.returncode == 0 and json.loads(out) == keys
    assert len(log.read_text().splitlines()) == len(computed)  # all read from the store
    # and the key of a call is pinned: a change of the encoding would orphan every stored result
    assert keys["7"] == "square:" + _golden_digest()


def _golden_digest():
    # square(7): the arguments bound to (n, label="sq"), [["n", 7], ["label", "sq"]], encoded
    # as kvstore/memoize.py defines it, then BLAKE2b-128
    import hashlib

    encoded = b"l2:" + b"l2:" + b"s1:n" + b"i7;" + b"l2:" + b"s5:label" + b"s2:sq"
    digest = hashlib.blake2b(encoded, digest_size=16).hexdigest()
    assert digest == "1266919f20393026cae59f753ec7256f"
    return digest
