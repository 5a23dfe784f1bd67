"""close() while other threads write: it always returns, and what it reports done is on disk."""

import json
import subprocess
import sys
import textwrap

import kvstore

# Runs in a child process: a close() that hangs must fail the test, not hang
# the suite (interpreter exit would wait on the same writer again).
_CLOSE_WHILE_WRITING = textwrap.dedent("""
    import json, os, random, shutil, sys, threading, time
    import kvstore

    root, rounds = sys.argv[1], int(sys.argv[2])
    rng = random.Random(int(sys.argv[3]))
    slow = []
    for r in range(rounds):
        path = os.path.join(root, f"s{r}")
        db = kvstore.open(path)
        acked = [[] for _ in range(4)]

        def work(t):
            i = 0
            while True:
                try:
                    db.put(f"t{t}:{i}", i, durable=True)
                except kvstore.KVStoreError:
                    return  # closed under us: this write was not acknowledged
                acked[t].append(i)
                i += 1

        threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(4)]
        for th in threads:
            th.start()
        time.sleep(rng.uniform(0.0, 0.03))
        closer = threading.Thread(target=db.close, daemon=True)
        started = time.monotonic()
        closer.start()
        closer.join(10)
        if closer.is_alive():
            print(json.dumps({"hung": r}), flush=True)
            os._exit(3)  # the hung writer would also hang interpreter exit
        slow.append(time.monotonic() - started)
        for th in threads:
            th.join(10)
        with kvstore.open(path, readonly=True) as check:
            for t, done in enumerate(acked):
                missing = [i for i in done if check.get(f"t{t}:{i}") != i]
                if missing:
                    print(json.dumps({"lost": [t, missing[:5]], "round": r}), flush=True)
                    os._exit(4)
        shutil.rmtree(path)
    print(json.dumps({"rounds": rounds, "slowest_close": max(slow)}), flush=True)
""")


def test_close_while_durable_writers_run_always_returns_and_loses_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _CLOSE_WHILE_WRITING, str(tmp_path), "200", "7"],
                          capture_output=True, text=True, timeout=600)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, f"close-while-writing failed ({proc.returncode}): {last}\n{proc.stderr[-2000:]}"
    result = json.loads(last)
    assert result["rounds"] == 200
    assert result["slowest_close"] < 10


def test_close_is_idempotent_and_later_writes_raise_store_closed(store_path):
    db = kvstore.open(store_path)
    db.put("a", 1, durable=True)
    db.close()
    db.close()
    try:
        db.put("b", 2)
    except kvstore.StoreClosedError:
        pass
    else:
        raise AssertionError("a write after close() must raise StoreClosedError")
    with kvstore.open(store_path) as again:
        assert again.get("a") == 1 and again.get("b") is None
