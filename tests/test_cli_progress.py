"""Progress bars of the long commands: drawn on stderr with a count, a rate
and an ETA when stderr is a terminal (a real pty here), and nothing at all
otherwise."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

import kvstore


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    top = tmp_path_factory.mktemp("progress")
    path = str(top / "store")
    with kvstore.open(path) as db:
        for start in range(0, 3000, 500):
            db.put_many({f"k{i:05d}": {"text": f"value {i} " * 8, "n": i} for i in range(start, start + 500)})
    subprocess.run([sys.executable, "-m", "kvstore", "dump", path, "-o", str(top / "all.jsonl")], check=True)
    return top


def on_a_terminal(*argv):
    """(status, stdout, stderr) of `kvstore ARGV` whose stderr is a pty."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    proc = subprocess.Popen([sys.executable, "-m", "kvstore", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the pty
            break
        if not chunk:
            break
        chunks.append(chunk)
    out = proc.stdout.read().decode()
    proc.wait(timeout=120)
    os.close(leader)
    return proc.returncode, out, b"".join(chunks).decode("utf-8", "replace")


RATE = re.compile(r"\d+(\.\d+)?\s?(records|[kMG]?B)/s")
ETA = re.compile(r"\[\d\d:\d\d<\d\d:\d\d")


@pytest.mark.parametrize("argv, label", [
    (["dump", "{store}", "-o", "{top}/again.jsonl"], "dump"),
    (["check", "{store}"], "check"),
    (["backup", "{store}", "{top}/backup-{n}"], "backup"),
    (["load", "{top}/loaded-{n}", "-i", "{top}/all.jsonl"], "load: checking"),
    (["load", "{top}/loaded2-{n}", "-i", "{top}/all.jsonl"], "load:"),
    (["copy", "{store}", "{top}/copied-{n}"], "copy:"),
    (["copy", "{store}", "{top}/copied2-{n}"], "copy: checking"),
])
def test_long_commands_draw_progress_with_rate_and_eta_on_a_terminal(big, argv, label, request):
    n = request.node.callspec.id.replace("-", "_").replace("/", "_")[:40]
    argv = [a.format(store=big / "store", top=big, n=abs(hash(n))) for a in argv]
    status, _, err = on_a_terminal(*argv)
    assert status == 0, err
    assert label in err
    assert "100%" in err and RATE.search(err) and ETA.search(err), err


def test_load_shows_its_checking_pass_and_its_writing_pass(big):
    status, _, err = on_a_terminal("load", big / "loaded-both", "-i", big / "all.jsonl")
    assert status == 0
    assert "load: checking" in err and re.search(r"load:\s+100%\|.*3000/3000", err), err


def test_train_dict_shows_its_training_and_its_measuring(big):
    status, out, err = on_a_terminal("train-dict", big / "store", "--samples", "500")
    assert status == 0 and out.startswith("trained dictionary ")
    assert "train-dict: sampling up to 500 values and training" in err and "train-dict: measuring" in err


def test_nothing_is_drawn_when_stderr_is_not_a_terminal(big):
    proc = subprocess.run([sys.executable, "-m", "kvstore", "check", str(big / "store")], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and proc.stderr == ""
    assert "tqdm" not in subprocess.run(
        [sys.executable, "-c", "import sys; from kvstore.cli import main; main(['check', sys.argv[1]]); "
                               "print(sorted(m for m in sys.modules if 'tqdm' in m))", str(big / "store")],
        capture_output=True, text=True).stdout.splitlines()[-1].replace("[]", "")
