"""The examples run as a user runs them, and say what they promise."""

import os
import subprocess
import sys

import kvstore

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def test_agent_memory_survives_its_sigkill(store_path):
    p = subprocess.run([sys.executable, os.path.join(EXAMPLES, "agent_memory.py"), store_path],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "killed the agent (SIGKILL) after 48 acknowledged turns" in p.stdout
    assert "all 48 acknowledged turns are in the store" in p.stdout
    assert "OK: every acknowledged write survived the crash" in p.stdout
    with kvstore.open(store_path, readonly=True) as db:
        assert len(db.namespace("messages")) == 8 * 12 * 2
        assert len(db.namespace("episodes")) == 8 * 4
        assert all(db.namespace("sessions").get(f"{s:03d}")["turn"] == 11 for s in range(8))
