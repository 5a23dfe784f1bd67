"""When a KVStoreSaver call must sync by itself, given LangGraph's
durability mode (docs/langgraph.md, "What a turn asks of the saver").

Under a graph run in "sync" or "async" mode, LangGraph stores a task's
pending writes for checkpoint X (`put_writes`), then, once the step is
over, the next checkpoint, whose parent is X (`put`), which is synced.
kvstore commits every write in the order it was submitted, and a sync
covers every write submitted before it. So a task's writes may be
buffered if they are submitted before the put of X's child: that put's
sync makes them durable, before LangGraph moves on ("sync") and before
`invoke` returns (both modes). `Ordering` tells which writes come early
enough, and makes sure they are submitted before that put:

- a `put` records, before it submits its batch, that its parent is
  superseded (`supersede`);
- a `put_writes` for X is buffered only if, holding the lock of its
  thread and namespace from its check to its submission, it finds X not
  superseded and its thread known (a put of this saver seen lately);
  otherwise it syncs by itself (a late task, a thread this saver has not
  put yet, a fork from an older checkpoint).

Writes that no put follows sync by themselves: errors, interrupts,
resumes (LangGraph's special channels, which also supersede X so that a
sibling finishing later syncs too), every call under "exit" (the final put
and the writes are submitted together and may arrive in either order), and
calls from outside a graph run (no durability mode in their config).

A KVStore's writes from a task of such a run (a node's `store.put`) are
buffered the same way when the run's checkpointer is a durable KVStoreSaver
on the same kvstore store (`synced_by_run`): the task's writes and the next
checkpoint's put come after them, in every mode (under "exit", the run's
final put, which syncs). Outside a run, or with another checkpointer, they
sync by themselves.

In asyncio the check and the submission run in the event loop's thread
with no await between them (kvstore's AsyncBatch submits before it awaits),
so a deferred write takes no lock there. A put takes it: free unless, in
the same process, a thread submits deferred writes under the same lock
(one of 64, by thread and namespace), which then holds the loop that long.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Mapping

from ._owner import _langgraph_missing

try:
    from langgraph.config import get_config
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise _langgraph_missing(exc) from exc

try:  # LangGraph's config keys (langgraph/_internal/_constants.py)
    from langgraph._internal._constants import (CONFIG_KEY_CHECKPOINTER, CONFIG_KEY_DURABILITY,
                                                CONFIG_KEY_RUNTIME)
except ImportError:  # pragma: no cover - moved in another LangGraph version
    CONFIG_KEY_CHECKPOINTER = "__pregel_checkpointer"
    CONFIG_KEY_DURABILITY = "__pregel_durability"
    CONFIG_KEY_RUNTIME = "__pregel_runtime"

# The modes under which a put follows a step's writes (LangGraph's Durability).
DEFERRING = frozenset({"sync", "async"})
_STRIPES = 64
_KNOWN_THREADS = 100_000  # threads and namespaces remembered (least recently put dropped)


def run_mode(config: Mapping[str, Any]) -> str | None:
    """The durability mode of the graph run a call comes from; None for a
    call from outside a run. A run started without `durability=` has no
    mode in its config and runs "async" (LangGraph's default, pregel/main.py)."""
    conf = config.get("configurable") or {}
    mode = conf.get(CONFIG_KEY_DURABILITY)
    if mode is None and CONFIG_KEY_RUNTIME in conf:
        return "async"
    return str(mode) if mode is not None else None


def synced_by_run(db: Any) -> bool:
    """Whether a store write to `db` (a kvstore Store) made now may be
    buffered because the graph run it comes from syncs it: it runs in a task
    of a run (LangGraph's config, a context variable, is set) whose
    checkpointer is a durable KVStoreSaver on the same kvstore store. The
    task's writes come after it, then the next checkpoint's put (synced), or
    under "exit" the run's final put (synced); a sync of the log covers
    every record appended before it, so those make this write durable,
    before LangGraph moves on ("sync") and before `invoke` returns."""
    try:
        config = get_config()
    except RuntimeError:  # not in a graph run: a plain call
        return False
    if run_mode(config) is None:
        return False
    saver = (config.get("configurable") or {}).get(CONFIG_KEY_CHECKPOINTER)
    syncs = getattr(saver, "_syncs_writes_to", None)  # KVStoreSaver's
    return syncs is not None and bool(syncs(db))


class Ordering:
    """Per thread and namespace: the newest checkpoint a put has superseded."""

    def __init__(self) -> None:
        self._locks = [threading.Lock() for _ in range(_STRIPES)]
        self._guard = threading.Lock()
        self._superseded: OrderedDict[tuple[str, str], str] = OrderedDict()

    def lock(self, thread_id: str, checkpoint_ns: str) -> threading.Lock:
        """The lock a deferred write holds from its check to its submission."""
        return self._locks[hash((thread_id, checkpoint_ns)) % _STRIPES]

    def supersede(self, thread_id: str, checkpoint_ns: str, checkpoint_id: str | None) -> None:
        """A put whose parent is checkpoint_id (None: a new thread) is about to
        be submitted: later writes for it, or for older ones, sync by themselves."""
        key = (thread_id, checkpoint_ns)
        newest = checkpoint_id or ""
        # after any deferred write of the thread still being submitted
        with self.lock(thread_id, checkpoint_ns), self._guard:
            old = self._superseded.get(key)
            if old is not None and old > newest:  # ids are time-ordered (uuid6)
                newest = old
            self._superseded[key] = newest
            self._superseded.move_to_end(key)
            if len(self._superseded) > _KNOWN_THREADS:
                self._superseded.popitem(last=False)

    def deferrable(self, thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> bool:
        """Whether writes for checkpoint_id may be buffered: a put of this
        thread was seen, and none whose parent is checkpoint_id (or newer)."""
        with self._guard:
            superseded = self._superseded.get((thread_id, checkpoint_ns))
        return superseded is not None and checkpoint_id > superseded
