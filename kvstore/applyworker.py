"""The apply worker: a process that applies this process's log to LMDB.

With a log, every writable process applies the log to LMDB from a thread
of its own (applythread.py). That thread shares the process's GIL with the
callers' threads: py-lmdb gives the GIL up around every put and every
append gives it up around its system calls, so a busy writer and its
applies hand the GIL back and forth thousands of times a second, and each
hand-over costs more than the work around it (a fill of corpus records
measured 24 us a put with the applies held off, 34 us with them running;
bench/README.md). A second process has a GIL of its own and runs on the
second core.

So when this process's applies take a noticeable share of its time
(`BUSY_SHARE` of a window of `WINDOW` seconds, Options.apply_worker
"auto"), or at open ("always"), the writer starts one worker:

    python -m kvstore.applyworker PATH OPTIONS-JSON   (through _BOOT)

which opens the store writable with its own apply thread and nothing else
(no read cache, no TTL sweep, never a worker of its own), writes one line
`ready` on its stdout, and then only applies: every apply_interval or
apply_bytes, as any writable process does, through the apply lock that
makes applies of several processes take turns. The writer's apply thread
then leaves the periodic applies to it (`serving`); it still does the
checkpoints flush() and close ask for, exclusive groups, and the apply of
a full log, and it takes the applies back if the worker dies, fails to
open, or falls behind (`Appender.apply_upkeep`).

The worker closes the store and exits when its stdin reaches end of file:
when the writer closes the store (`stop`), or when the writer's process
dies, however it dies (the kernel closes the pipe); it also checks every
second that its parent is still the one that started it. Killing the
worker at any moment loses nothing: an apply is one LMDB transaction, and
what it had not committed is applied again by the next one.

Only this module knows the protocol; the writer sees `start`, `serving`,
`stop` and `abandon` (in a forked child).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from . import killpoints
from .errors import KVStoreError

if TYPE_CHECKING:
    from .options import Options

__all__ = ["ApplyWorker", "Handover", "MODES", "BUSY_SHARE", "WINDOW", "worker_options"]

MODES = ("auto", "always", "never")

# "auto": start the worker once applies took at least this share of the
# wall time over a window of WINDOW seconds (a few applies). An apply costs about 5-7 us a
# record here, so 5% is about 8,000 records a second.
BUSY_SHARE = 0.05
WINDOW = 0.25

# How long stop() waits for the worker to close the store and exit before
# it kills it (killing it loses nothing, it only wastes its last apply).
STOP_TIMEOUT = 30.0

# The options the worker takes from the writer's: those that shape the
# files and the applies. The rest are the worker's own (WORKER_OWN).
SHARED = ("max_namespaces", "max_readers", "map_size", "max_map_size", "preallocate", "flush_interval",
          "log_size", "log_initial_size", "apply_interval", "apply_bytes", "max_value_size")
WORKER_OWN = {"cache_entries": 0, "ttl_sweep_interval": 0, "apply_worker": "never", "wal": True}

# A kill point for the worker alone (tests): the writer's own
# KVSTORE_KILL_POINT is never passed on to it.
WORKER_KILL_POINT = "KVSTORE_WORKER_KILL_POINT"


def available() -> bool:
    """Whether this process can start a worker: `sys.executable -c` must
    be a Python that runs code (not a frozen application or an embedding
    host, whose executable is the application itself)."""
    return bool(sys.executable) and not getattr(sys, "frozen", False)


def worker_options(options: Options) -> dict[str, Any]:
    """The keyword arguments the worker opens the store with."""
    opts = {name: getattr(options, name) for name in SHARED}
    opts.update(WORKER_OWN)
    return opts


# The worker's first lines: an import that fails (another environment, a
# broken install) is reported like any other failure to open.
_BOOT = (
    "import sys\n"
    "try:\n"
    "    from kvstore.applyworker import main\n"
    "except BaseException as exc:\n"
    "    print(('the apply worker could not open the store: cannot import kvstore: %r' % (exc,))"
    ".replace(chr(10), ' '), flush=True)\n"
    "    sys.exit(1)\n"
    "sys.exit(main(['kvstore.applyworker'] + sys.argv[1:]))\n"
)


class ApplyWorker:
    """The writer's handle on its worker process (started at once)."""

    def __init__(self, path: str, options: dict[str, Any]):
        env = dict(os.environ)
        # this process's kvstore, wherever it was imported from
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        env.pop("KVSTORE_KILL_POINT", None)
        if env.get(WORKER_KILL_POINT):
            env["KVSTORE_KILL_POINT"] = env[WORKER_KILL_POINT]
        self.error: str | None = None  # why it stopped serving, if it did
        self.ready = False
        self.gone = False
        self._buf = b""
        self._reading = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-c", _BOOT, path, json.dumps(options)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            close_fds=True, env=env)
        assert self._proc.stdout is not None
        os.set_blocking(self._proc.stdout.fileno(), False)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def serving(self) -> bool:
        """Whether the worker is up and applying (no system call once it
        said so, but one waitpid to see it is still alive)."""
        proc = self._proc  # once: stop() may clear it meanwhile (stats() from another thread)
        if self.gone or proc is None:
            return False
        if not self.ready:
            with self._reading:  # the apply thread and stats() may both ask
                if not self.ready and not self.gone:
                    self._read(proc)
            return self.ready and not self.gone
        if proc.poll() is not None:
            self._lost(f"the apply worker (pid {proc.pid}) exited with status {proc.returncode}")
            return False
        return True

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        try:
            data = os.read(proc.stdout.fileno(), 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(f"the apply worker's pipe failed: {exc}")
            return
        if not data:
            self._lost(f"the apply worker (pid {proc.pid}) exited before it was ready "
                       f"(status {_reap(proc)})")
            return
        self._buf += data
        line, sep, rest = self._buf.partition(b"\n")
        if not sep:
            return
        self._buf = rest
        if line == b"ready":
            self.ready = True
        else:  # why it could not open the store; it exits next
            self._lost(line.decode("utf-8", "replace"))
            _reap(proc)

    def _lost(self, why: str) -> None:
        self.gone = True
        self.error = why

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the worker to close the store and exit; wait for it (kill it
        after timeout seconds). Idempotent."""
        proc, self._proc = self._proc, None
        self.gone = True
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            _reap(proc, timeout)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def abandon(self) -> None:
        """In a child forked from the writer's process: let go of the
        pipes without touching the worker, which stays the parent's."""
        proc, self._proc = self._proc, None
        self.gone = True
        if proc is None:
            return
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                try:
                    os.close(f.fileno())
                except OSError:
                    pass
        proc.returncode = 0  # never waited for here: the parent reaps it


def _reap(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int | None:
    """Wait for a worker that is exiting (no zombie left), killing it after
    timeout seconds; its status."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class Handover:
    """One writer's side of the worker: when it starts one, and whether
    the worker holds the periodic applies now (the Appender's apply upkeep
    asks). Without a worker the writer applies; it takes the applies back
    when the worker is gone, or falls behind: `applied` still for `stale`
    seconds while records wait, or `behind` bytes waiting."""

    def __init__(self, path: str, options: Options):
        self._path = path
        self._options = worker_options(options)
        self._mode = options.apply_worker if available() else "never"
        self.worker: ApplyWorker | None = None
        self._window_start = time.monotonic()  # "auto": the applies' share of this window
        self._window_busy = 0.0
        self._seen_applied = -1  # the worker's progress: `applied` as last seen move, and when
        self._seen_at = 0.0
        self._stale = max(1.0, 20 * options.apply_interval)
        self.behind = 2 * options.apply_bytes
        if self._mode == "always":
            self._start()

    def _start(self) -> None:
        try:
            self.worker = ApplyWorker(self._path, self._options)
        except OSError:  # no process to spare: the writer keeps applying
            self._mode = "never"
            return
        self._seen_at = time.monotonic()

    def serving(self) -> bool:
        """The worker is up and applying (it may still have fallen behind)."""
        return self.worker is not None and self.worker.serving()

    def holds(self, applied: int, unapplied: int) -> bool:
        """Whether the worker holds the periodic applies now, given the
        log's `applied` and its unapplied bytes."""
        if not self.serving():
            return False
        now = time.monotonic()
        if applied != self._seen_applied or not unapplied:
            self._seen_applied, self._seen_at = applied, now
            return unapplied < self.behind
        return now - self._seen_at < self._stale and unapplied < self.behind

    def applied_here(self, applied: int, periodic_seconds: float | None) -> None:
        """The writer applied the log itself, up to `applied` (not the
        worker's progress); periodic_seconds: how long a periodic apply
        took (None for a checkpoint flush() asked for). In "auto", the
        worker starts once periodic applies take BUSY_SHARE of a WINDOW."""
        self._seen_applied = applied
        if periodic_seconds is None or self._mode != "auto" or self.worker is not None:
            return
        self._window_busy += periodic_seconds
        now = time.monotonic()
        if now - self._window_start < WINDOW:
            return
        share = self._window_busy / (now - self._window_start)
        self._window_start, self._window_busy = now, 0.0
        if share >= BUSY_SHARE and not killpoints.armed:  # a crash test kills this process's applies
            self._start()

    def stats(self) -> dict[str, Any]:
        """stats()["log"]'s apply_worker (its pid while it applies) and
        apply_worker_error (why it stopped, if it did)."""
        worker = self.worker
        if worker is None:
            return {"apply_worker": None, "apply_worker_error": None}
        return {"apply_worker": worker.pid if worker.serving() else None,
                "apply_worker_error": worker.error}

    def stop(self) -> None:
        """Writer.close, before its last checkpoint: the worker closes the
        store and exits."""
        if self.worker is not None:
            self.worker.stop()

    def abandon(self) -> None:
        """In a forked child: the worker stays the parent's."""
        if self.worker is not None:
            self.worker.abandon()


# ---------------------------------------------------------------- the worker


def main(argv: list[str]) -> int:
    """The worker process: python -m kvstore.applyworker PATH OPTIONS-JSON."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the writer's to handle
    parent = os.getppid()
    out = sys.stdout
    try:
        path, opts = argv[1], json.loads(argv[2])
        import kvstore

        db = kvstore.open(path, **opts)
    except BaseException as exc:  # tell the writer why, in one line, and stop
        out.write(f"the apply worker could not open the store: {exc!r}".replace("\n", " ") + "\n")
        out.flush()
        return 1
    try:
        out.write("ready\n")
        out.flush()
        stdin = sys.stdin.fileno()
        while os.getppid() == parent:
            readable, _, _ = select.select([stdin], [], [], 1.0)
            if readable and not os.read(stdin, 4096):
                break  # the writer closed the store, or its process died
            if db.stats()["failed"] is not None:
                return 2  # a failed apply: the writer sees the exit and applies again itself
    finally:
        try:
            db.close()
        except KVStoreError:
            pass  # failed: the writer applies what is left
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
