"""A writer SIGKILLed in the middle of committing a transaction: the
transaction is all there or not at all, and every acknowledged one is there.

The child (CHILD below) runs transactions that each read a counter and
write counter + 1 and five keys of its own round, and prints each round
once its commit returned. It dies at a kill point (kvstore/killpoints.py):
mid-apply (half of the transaction's writes made in the LMDB transaction),
before-commit, after-commit, at the first or a later transaction. After
the kill, the store is reopened and checked: the counter says how many
rounds committed, every one of them has its five keys, no later round has
any, and no acknowledged round is missing. Without and with the write-ahead
log (there the transaction is written by the applier, after the log).
"""

import os
import subprocess
import sys

import pytest

import kvstore
from support import crash_report

CHILD = r"""
import sys, kvstore
db = kvstore.open(sys.argv[1], wal=sys.argv[2] == "1")
side = db.namespace("side")
for i in range(40):
    with db.transaction() as tx:
        n = tx.get("counter", 0)
        assert n == i, (n, i)
        tx.put("counter", n + 1)
        for j in range(4):
            tx.put(f"round:{i}:{j}", i)
        tx.put(f"round:{i}", i, namespace="side")
    print(i, flush=True)
db.close()
"""


@pytest.mark.parametrize("wal", [False, True], ids=["lmdb", "wal"])
@pytest.mark.parametrize("point", ["mid-apply:1", "mid-apply:5", "before-commit:3", "after-commit:1",
                                   "after-commit:4"])
def test_a_sigkill_mid_commit_leaves_a_transaction_whole_or_absent(store_path, wal, point):
    kvstore.open(store_path, wal=wal).close()
    env = dict(os.environ, KVSTORE_KILL_POINT=point)
    child = subprocess.run([sys.executable, "-c", CHILD, store_path, "1" if wal else "0"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, f"not killed at {point}: {child.returncode} {child.stderr}"
    acknowledged = [int(line) for line in child.stdout.split()]
    crash_report.record(crash_trials=1, kill_points=[point.partition(":")[0]],
                        acked_writes_checked=5 * len(acknowledged))
    with kvstore.open(store_path, wal=wal) as db:
        rounds = db.get("counter", 0)
        assert rounds >= len(acknowledged)  # every acknowledged round is there
        assert rounds <= len(acknowledged) + 1  # and at most the one being committed besides
        side = db.namespace("side")
        for i in range(rounds + 2):
            present = [db.get(f"round:{i}:{j}") for j in range(4)] + [side.get(f"round:{i}")]
            assert present == ([i] * 5 if i < rounds else [None] * 5), (i, rounds, present)
        assert len(db) == (rounds > 0) + 4 * rounds and len(side) == rounds
