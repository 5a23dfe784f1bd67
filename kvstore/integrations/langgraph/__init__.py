"""LangGraph on kvstore: a checkpointer and a long-term memory store.

    from kvstore.integrations.langgraph import KVStore, KVStoreSaver

    saver = KVStoreSaver.from_path("./agent-memory")        # or KVStoreSaver(db)
    graph = builder.compile(checkpointer=saver, store=KVStore(saver.db))

`KVStoreSaver` is a `BaseCheckpointSaver` (sync and async methods) and
`KVStore` a `BaseStore` (`batch`/`abatch`). Both take an open kvstore
`Store` (or `kvstore.aio.AsyncStore`), or a path through `from_path()`,
which opens a store they own and close. Both write durably by default:
a `put` returns once its commit is synced, as LangGraph's SQL savers do;
``durable=False`` returns at once and commits within the store's
``flush_interval`` (a crash then loses the last moments of checkpoints,
never an older one: kvstore commits in order). In a graph run under
durability "sync" or "async", a task's `put_writes` is synced by the run's
next checkpoint instead of by itself, and in any mode so is a task's
`KVStore` write when the run's checkpointer is a durable KVStoreSaver on the
same kvstore store (_durability.py). Async methods never block
the event loop on a commit, and concurrent ones share commits (kvstore.aio).

Layout (kvstore namespaces; key parts joined by NUL, which LangGraph's ids
and namespace labels never contain):

    <prefix>:checkpoints  thread, checkpoint_ns, checkpoint_id
                          -> [checkpoint type, bytes (no channel values),
                              metadata type, bytes, parent id, run id]
    <prefix>:blobs        thread, checkpoint_ns, channel, version -> [type, bytes]
    <prefix>:writes       thread, checkpoint_ns, checkpoint_id, task_id, idx
                          -> [task_id, channel, type, bytes, task_path, idx]
    langgraph:store       label, ..., label, "", key -> [value, created, updated]
                          (an item with a TTL expires in the engine: kvstore/ttl.py)
    langgraph:store:vectors    item key -> [paths, float32 bytes]  (with index=)
    langgraph:store:vectorlog  writers' seq keys and change log   (vectors.py)

With a ttl config, a checkpoint's blobs and writes carry a TTL 2% longer
than its own and are refreshed with it, so none expires before it.

Channel values are stored once per channel version (a checkpoint that
changes one channel writes one blob), checkpoint ids are time-ordered
uuid6 strings, so the newest checkpoint of a thread is the last key of its
range. A checkpoint and its blobs, and the writes of one `put_writes`, are
each one atomic kvstore batch.

Requires the `langgraph` extra: ``pip install 'kvstore[langgraph]'``;
semantic search (KVStore(index=...)) also the `search` extra.
"""

from .checkpoint import KVStoreSaver
from .store import InvalidStoreNamespaceError, KVStore, SearchNotInstalledError

__all__ = ["KVStoreSaver", "KVStore", "InvalidStoreNamespaceError", "SearchNotInstalledError"]
