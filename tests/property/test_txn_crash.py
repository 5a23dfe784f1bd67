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
log (there the transaction is checked and appended at the log; LMDB gets it
from the applier).
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


# Without the log a transaction is written by an LMDB commit of its own;
# with it, it is checked and appended to the log (a torn append, a
# published but unsynced one), and LMDB gets it in the applier's commits.
LMDB_POINTS = ["mid-apply:1", "mid-apply:5", "before-commit:3", "after-commit:1", "after-commit:4"]
LOG_POINTS = ["log-mid-append:1", "log-mid-append:5", "log-after-append:3", "mid-apply:1",
              "after-commit:1", "after-apply:1"]


@pytest.mark.parametrize("wal,point", [(False, p) for p in LMDB_POINTS] + [(True, p) for p in LOG_POINTS],
                         ids=[f"lmdb-{p}" for p in LMDB_POINTS] + [f"wal-{p}" for p in LOG_POINTS])
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
