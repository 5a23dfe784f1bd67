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
never an older one: kvstore commits in order). Async methods never block
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

Channel values are stored once per channel version (a checkpoint that
changes one channel writes one blob), checkpoint ids are time-ordered
uuid6 strings, so the newest checkpoint of a thread is the last key of its
range. A checkpoint and its blobs, and the writes of one `put_writes`, are
each one atomic kvstore batch.

Requires the `langgraph` extra: ``pip install 'kvstore[langgraph]'``.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

try:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import (
        WRITES_IDX_MAP,
        BaseCheckpointSaver,
        ChannelVersions,
        Checkpoint,
        CheckpointMetadata,
        CheckpointTuple,
        SerializerProtocol,
        get_checkpoint_id,
        get_checkpoint_metadata,
    )
    from langgraph.store.base import (
        BaseStore,
        GetOp,
        InvalidNamespaceError as _LangGraphNamespaceError,
        Item,
        ListNamespacesOp,
        MatchCondition,
        Op,
        PutOp,
        Result,
        SearchItem,
        SearchOp,
        TTLConfig,
        validate_op_namespace,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"kvstore.integrations.langgraph needs LangGraph ({exc}); install it with "
        f"pip install 'kvstore[langgraph]'") from exc

from .. import errors
from ..aio import AsyncStore
from ..errors import InvalidArgumentError, InvalidTTLError
from ..store import MAX_KEY_SIZE, Store, open as _open_store
from ..ttl import MAX_TTL

__all__ = ["KVStoreSaver", "KVStore", "InvalidStoreNamespaceError"]

_SEP = "\x00"
_EMPTY = "empty"  # blob type of a channel that has a version but no value


class InvalidStoreNamespaceError(errors.InvalidNamespaceError, _LangGraphNamespaceError):
    """A LangGraph store namespace kvstore cannot hold: empty, or a label that
    is empty, not a str, or contains "." or NUL. Both a kvstore error and
    LangGraph's own InvalidNamespaceError."""


def _key(*parts: str) -> str:
    for part in parts:
        if _SEP in part:
            raise InvalidArgumentError(
                f"{part!r} contains a NUL character, which kvstore's LangGraph keys use as a "
                f"separator: use ids and names without NUL")
    return _check_length(_SEP.join(parts))


def _check_length(key: str) -> str:
    if len(key) > MAX_KEY_SIZE // 4 and len(key.encode("utf-8")) > MAX_KEY_SIZE:
        raise InvalidArgumentError(
            f"thread id, checkpoint namespace and ids add up to more than {MAX_KEY_SIZE} bytes "
            f"({key[:60]!r}...); kvstore keys hold at most {MAX_KEY_SIZE}: use shorter ids")
    return key


def _parts(key: bytes) -> list[str]:
    return key.decode("utf-8").split(_SEP)


def _apply(batch, ops: list) -> None:
    """Fill a kvstore Batch or AsyncBatch with ops: [(namespace, key, value or
    None to delete[, ttl in seconds, as for kvstore's put])]."""
    for ns, key, value, *ttl in ops:
        if value is None:
            batch.delete(key, namespace=ns)
        else:
            batch.put(key, value, namespace=ns, ttl=ttl[0] if ttl else None)


class _Owner:
    """What the saver and the store share: the kvstore handles, how they write,
    and closing a store they opened themselves."""

    def _attach(self, db, durable: bool) -> Store:
        if isinstance(db, AsyncStore):
            db = db.store
        if not isinstance(db, Store):
            raise InvalidArgumentError(
                f"{type(self).__name__} takes an open kvstore store (kvstore.open() or "
                f"kvstore.aio.open()), not {type(db).__name__}; or use {type(self).__name__}"
                f".from_path(path)")
        self._db = db
        self._adb = AsyncStore(db)
        self._durable = bool(durable)
        self._owned = False
        return db

    @property
    def db(self) -> Store:
        """The kvstore store this object reads and writes."""
        return self._db

    def _write(self, ops: list) -> None:
        if ops:
            with self._db.batch(self._durable) as batch:
                _apply(batch, ops)

    async def _awrite(self, ops: list) -> None:
        if ops:
            async with self._adb.abatch(self._durable) as batch:
                _apply(batch, ops)

    @classmethod
    def _from_path(cls, path, options: dict, **kwargs):
        db = _open_store(path, **options)
        try:
            owner = cls(db, **kwargs)
        except BaseException:
            db.close()
            raise
        owner._owned = True
        return owner

    def close(self) -> None:
        """Close the store if it was opened by from_path() (committing pending writes)."""
        if self._owned:
            self._db.close()

    async def aclose(self) -> None:
        if self._owned:
            await self._adb.aclose()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


# ==================================================================== checkpointer


def _config(thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns,
                             "checkpoint_id": checkpoint_id}}


def _ids(config: RunnableConfig) -> tuple[str, str, str | None]:
    """(thread_id, checkpoint_ns, checkpoint_id or None) of a config."""
    conf = config.get("configurable") or {}
    thread_id = conf.get("thread_id")
    if thread_id is None:
        raise InvalidArgumentError(
            "the config has no thread_id: pass {'configurable': {'thread_id': ...}}")
    return str(thread_id), conf.get("checkpoint_ns", "") or "", conf.get("checkpoint_id") or None


class KVStoreSaver(_Owner, BaseCheckpointSaver[str]):
    """A LangGraph checkpointer storing checkpoints, channel values, pending
    writes and metadata in a kvstore store.

    :param db: an open `kvstore.Store` (or `kvstore.aio.AsyncStore`); the saver
        does not close it
    :param durable: True (default): put/put_writes return once synced to disk;
        False: at once, committed within the store's flush_interval
    :param prefix: names of the kvstore namespaces used (``<prefix>:checkpoints``...)
    :param serde: LangGraph serializer (default: LangGraph's JsonPlusSerializer)

    Every capability of LangGraph's conformance suite is implemented: put,
    put_writes, get_tuple, list, delete_thread, delete_for_runs, copy_thread
    and prune. delete_for_runs scans every checkpoint of the store (there is
    no index by run); copy_thread adds the source's checkpoints to the target
    thread, leaving what the target already holds.
    """

    def __init__(self, db, *, durable: bool = True, prefix: str = "langgraph",
                 serde: SerializerProtocol | None = None) -> None:
        BaseCheckpointSaver.__init__(self, serde=serde)
        store = self._attach(db, durable)
        self._ns_checkpoints = f"{prefix}:checkpoints"
        self._ns_blobs = f"{prefix}:blobs"
        self._ns_writes = f"{prefix}:writes"
        self._checkpoints = store.namespace(self._ns_checkpoints)
        self._blobs = store.namespace(self._ns_blobs)
        self._writes = store.namespace(self._ns_writes)

    @classmethod
    def from_path(cls, path, *, durable: bool = True, prefix: str = "langgraph",
                  serde: SerializerProtocol | None = None, **options) -> "KVStoreSaver":
        """A saver on the store at `path` (created if missing), which it owns:
        `close()` or ``with``/``async with`` closes the store.

        :param options: options of `kvstore.open()`
        """
        return cls._from_path(path, options, durable=durable, prefix=prefix, serde=serde)

    def get_next_version(self, current: str | None, channel: None) -> str:
        # A random fraction after the counter, as LangGraph's own savers do: two
        # branches of a forked thread never give one channel the same version,
        # so they never overwrite each other's blobs.
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"

    # ------------------------------------------------------------ writes

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        """Store a checkpoint and the channel values of `new_versions`, atomically."""
        ops, stored = self._put_ops(config, checkpoint, metadata, new_versions)
        self._write(ops)
        return stored

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint,
                   metadata: CheckpointMetadata, new_versions: ChannelVersions) -> RunnableConfig:
        ops, stored = self._put_ops(config, checkpoint, metadata, new_versions)
        await self._awrite(ops)
        return stored

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        """Store a task's pending writes for the checkpoint of `config`, atomically."""
        self._write(self._put_writes_ops(config, writes, task_id, task_path))

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        await self._awrite(self._put_writes_ops(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint, blob and write of a thread, in every namespace."""
        self._write(self._delete_thread_ops(str(thread_id)))

    async def adelete_thread(self, thread_id: str) -> None:
        await self._awrite(self._delete_thread_ops(str(thread_id)))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints made by the given runs (metadata run_id), with
        their writes and the blobs no other checkpoint uses."""
        self._write(self._delete_for_runs_ops(run_ids))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._awrite(self._delete_for_runs_ops(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint (the whole parent chain), blob and write of a thread to another."""
        self._write(self._copy_thread_ops(str(source_thread_id), str(target_thread_id)))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._awrite(self._copy_thread_ops(str(source_thread_id), str(target_thread_id)))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Prune threads: "keep_latest" keeps the newest checkpoint of each
        checkpoint namespace (and, for DeltaChannel state, the ancestors back
        to a snapshot of every delta channel); "delete" deletes the threads."""
        self._write(self._prune_ops(thread_ids, strategy))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._awrite(self._prune_ops(thread_ids, strategy))

    # ------------------------------------------------------------ reads (inline: microseconds)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint of `config` (its checkpoint_id, or the newest of its
        thread and namespace), with its channel values and pending writes."""
        thread_id, checkpoint_ns, checkpoint_id = _ids(config)
        if checkpoint_id is not None:
            record = self._checkpoints.get(_key(thread_id, checkpoint_ns, checkpoint_id))
        else:
            newest = next(self._checkpoints.scan(_key(thread_id, checkpoint_ns) + _SEP,
                                                 reverse=True), None)
            if newest is None:
                return None
            checkpoint_id, record = _parts(newest[0])[2], newest[1]
        if record is None:
            return None
        return self._tuple(thread_id, checkpoint_ns, checkpoint_id, record)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self.get_tuple(config)

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None
             ) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first: of config's thread (and checkpoint_ns, if
        given; and checkpoint_id, if given), or of every thread for None;
        metadata equal to every `filter` item; ids below `before`'s."""
        return self._list(config, filter, before, limit)

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None
                    ) -> AsyncIterator[CheckpointTuple]:
        for found in self._list(config, filter, before, limit):
            yield found
            await asyncio.sleep(0)  # one checkpoint at a time: hand the loop back

    # ------------------------------------------------------------ building the ops

    def _put_ops(self, config, checkpoint, metadata, new_versions) -> tuple[list, RunnableConfig]:
        thread_id, checkpoint_ns, parent_id = _ids(config)
        checkpoint_id = checkpoint["id"]
        body = checkpoint.copy()
        values = body.pop("channel_values", {})
        dumps = self.serde.dumps_typed
        ops = []
        for channel, version in new_versions.items():
            blob = dumps(values[channel]) if channel in values else (_EMPTY, b"")
            ops.append((self._ns_blobs, _key(thread_id, checkpoint_ns, channel, str(version)),
                        list(blob)))
        metadata = get_checkpoint_metadata(config, metadata)
        run_id = metadata.get("run_id")
        ctype, cbytes = dumps(body)
        mtype, mbytes = dumps(metadata)
        ops.append((self._ns_checkpoints, _key(thread_id, checkpoint_ns, checkpoint_id),
                    [ctype, cbytes, mtype, mbytes, parent_id,
                     str(run_id) if run_id is not None else None]))
        return ops, _config(thread_id, checkpoint_ns, checkpoint_id)

    def _put_writes_ops(self, config, writes, task_id: str, task_path: str) -> list:
        thread_id, checkpoint_ns, checkpoint_id = _ids(config)
        if checkpoint_id is None:
            raise InvalidArgumentError(
                "put_writes needs the config of a stored checkpoint "
                "({'configurable': {'thread_id': ..., 'checkpoint_id': ...}}), as put() returns it")
        task_id = str(task_id)
        entries = []
        for i, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, i)
            entries.append((idx, _key(thread_id, checkpoint_ns, checkpoint_id, task_id, str(idx)),
                            channel, value))
        # A regular write (idx >= 0) is stored once: a task run again does not
        # replace it. Special writes (error, interrupt, ...) replace.
        regular = [key for idx, key, _, _ in entries if idx >= 0]
        stored = {key for key, old in zip(regular, self._writes.get_many(regular)) if old is not None}
        ops = []
        for idx, key, channel, value in entries:
            if key not in stored:
                wtype, wbytes = self.serde.dumps_typed(value)
                ops.append((self._ns_writes, key, [task_id, channel, wtype, wbytes, task_path, idx]))
        return ops

    def _delete_thread_ops(self, thread_id: str) -> list:
        prefix = _key(thread_id) + _SEP
        return [(ns, key, None)
                for ns, handle in ((self._ns_checkpoints, self._checkpoints),
                                   (self._ns_blobs, self._blobs), (self._ns_writes, self._writes))
                for key in handle.scan(prefix, keys_only=True)]

    def _delete_for_runs_ops(self, run_ids: Sequence[str]) -> list:
        runs = {str(r) for r in run_ids}
        if not runs:
            return []
        doomed: dict[tuple[str, str], set[str]] = {}
        for key, record in self._checkpoints.scan():
            if record[5] in runs:
                thread_id, checkpoint_ns, checkpoint_id = _parts(key)
                doomed.setdefault((thread_id, checkpoint_ns), set()).add(checkpoint_id)
        ops = []
        for (thread_id, checkpoint_ns), ids in doomed.items():
            ops += self._drop_ops(thread_id, checkpoint_ns, ids)
        return ops

    def _copy_thread_ops(self, source: str, target: str) -> list:
        prefix = _key(source) + _SEP
        target_prefix = _key(target) + _SEP
        ops = []
        for ns, handle in ((self._ns_checkpoints, self._checkpoints), (self._ns_blobs, self._blobs),
                           (self._ns_writes, self._writes)):
            for key, value in handle.scan(prefix):
                ops.append((ns, _check_length(target_prefix + key.decode("utf-8")[len(prefix):]),
                            value))
        return ops

    def _prune_ops(self, thread_ids: Sequence[str], strategy: str) -> list:
        if strategy == "delete":
            return [op for t in thread_ids for op in self._delete_thread_ops(str(t))]
        if strategy != "keep_latest":
            raise InvalidArgumentError(
                f"unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'")
        ops = []
        for thread_id in map(str, thread_ids):
            by_ns: dict[str, dict[str, list]] = {}
            for key, record in self._checkpoints.scan(_key(thread_id) + _SEP):
                _, checkpoint_ns, checkpoint_id = _parts(key)
                by_ns.setdefault(checkpoint_ns, {})[checkpoint_id] = record
            for checkpoint_ns, records in by_ns.items():
                keep = self._kept_by_keep_latest(thread_id, checkpoint_ns, records)
                drop = set(records) - keep
                if drop:
                    ops += self._drop_ops(thread_id, checkpoint_ns, drop)
        return ops

    def _kept_by_keep_latest(self, thread_id: str, checkpoint_ns: str, records: dict) -> set[str]:
        """The newest checkpoint, and the ancestors DeltaChannel state needs.

        A delta channel (named in the metadata's counters_since_delta_snapshot)
        stores no value at most checkpoints: its state is rebuilt from the
        writes of the ancestors back to the nearest one holding a snapshot.
        Those ancestors are kept, with their writes.
        """
        newest = max(records)
        keep = {newest}
        record = records[newest]
        metadata = self.serde.loads_typed((record[2], record[3]))
        waiting = set((metadata.get("counters_since_delta_snapshot") or {}))
        checkpoint_id = newest
        while waiting and checkpoint_id in records:
            keep.add(checkpoint_id)
            record = records[checkpoint_id]
            versions = self.serde.loads_typed((record[0], record[1]))["channel_versions"]
            channels = [ch for ch in waiting if ch in versions]
            blobs = self._blobs.get_many(
                [_key(thread_id, checkpoint_ns, ch, str(versions[ch])) for ch in channels])
            waiting -= {ch for ch, blob in zip(channels, blobs)
                        if blob is not None and blob[0] != _EMPTY}
            checkpoint_id = record[4]
        return keep

    def _drop_ops(self, thread_id: str, checkpoint_ns: str, drop: set[str]) -> list:
        """Delete checkpoints `drop` of one thread and namespace, their writes,
        and the blobs that no remaining checkpoint of it uses."""
        ops = []
        dropped: set[tuple[str, str]] = set()
        kept: set[tuple[str, str]] = set()
        for key, record in self._checkpoints.scan(_key(thread_id, checkpoint_ns) + _SEP):
            checkpoint_id = _parts(key)[2]
            versions = self.serde.loads_typed((record[0], record[1]))["channel_versions"]
            used = {(ch, str(v)) for ch, v in versions.items()}
            if checkpoint_id in drop:
                dropped |= used
                ops.append((self._ns_checkpoints, key, None))
                prefix = _key(thread_id, checkpoint_ns, checkpoint_id) + _SEP
                ops += [(self._ns_writes, k, None) for k in self._writes.scan(prefix, keys_only=True)]
            else:
                kept |= used
        ops += [(self._ns_blobs, _key(thread_id, checkpoint_ns, ch, v), None)
                for ch, v in sorted(dropped - kept)]
        return ops

    # ------------------------------------------------------------ reading the records

    def _tuple(self, thread_id: str, checkpoint_ns: str, checkpoint_id: str, record: list,
               metadata=None) -> CheckpointTuple:
        loads = self.serde.loads_typed
        ctype, cbytes, mtype, mbytes, parent_id, _run_id = record
        checkpoint = loads((ctype, cbytes))
        versions = checkpoint.get("channel_versions") or {}
        channels = list(versions)
        blobs = self._blobs.get_many(
            [_key(thread_id, checkpoint_ns, ch, str(versions[ch])) for ch in channels]
        ) if channels else []
        checkpoint["channel_values"] = {
            ch: loads((blob[0], blob[1])) for ch, blob in zip(channels, blobs)
            if blob is not None and blob[0] != _EMPTY}
        return CheckpointTuple(
            config=_config(thread_id, checkpoint_ns, checkpoint_id),
            checkpoint=checkpoint,
            metadata=metadata if metadata is not None else loads((mtype, mbytes)),
            parent_config=_config(thread_id, checkpoint_ns, parent_id) if parent_id else None,
            pending_writes=self._pending_writes(thread_id, checkpoint_ns, checkpoint_id),
        )

    def _pending_writes(self, thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> list:
        prefix = _key(thread_id, checkpoint_ns, checkpoint_id) + _SEP
        records = [record for _, record in self._writes.scan(prefix)]
        records.sort(key=lambda r: (r[4], r[0], r[5]))  # LangGraph's writes_sort_key
        loads = self.serde.loads_typed
        return [(task_id, channel, loads((wtype, wbytes)))
                for task_id, channel, wtype, wbytes, _path, _idx in records]

    def _list(self, config, filter, before, limit) -> Iterator[CheckpointTuple]:
        if limit is not None and limit <= 0:
            return
        before_id = get_checkpoint_id(before) if before else None
        thread_id = checkpoint_ns = only_id = None
        if config is not None:
            conf = config.get("configurable") or {}
            if conf.get("thread_id") is not None:
                thread_id = str(conf["thread_id"])
            checkpoint_ns = conf.get("checkpoint_ns")
            only_id = conf.get("checkpoint_id") or None
        if thread_id is not None and checkpoint_ns is not None:
            # one thread and namespace: its keys are already in checkpoint-id order
            prefix = _key(thread_id, checkpoint_ns) + _SEP
            found = self._checkpoints.scan(prefix, reverse=True,
                                           stop=prefix + before_id if before_id else None)
        else:
            # several namespaces or threads: order their keys by checkpoint id
            prefix = _key(thread_id) + _SEP if thread_id is not None else None
            keys = [k for k in self._checkpoints.scan(prefix, keys_only=True)
                    if checkpoint_ns is None or _parts(k)[1] == checkpoint_ns]
            keys.sort(key=lambda k: k.rsplit(b"\x00", 1)[1], reverse=True)
            found = ((k, self._checkpoints.get(k)) for k in keys)
        n = 0
        for key, record in found:
            if record is None:  # deleted since the keys were read
                continue
            t, ns, checkpoint_id = _parts(key)
            if (only_id is not None and checkpoint_id != only_id) or \
                    (before_id is not None and checkpoint_id >= before_id):
                continue
            metadata = None
            if filter:
                metadata = self.serde.loads_typed((record[2], record[3]))
                if not all(metadata.get(k) == v for k, v in filter.items()):
                    continue
            yield self._tuple(t, ns, checkpoint_id, record, metadata)
            n += 1
            if limit is not None and n >= limit:
                return


# ==================================================================== long-term memory store


def _namespace(labels) -> tuple[str, ...]:
    return tuple(labels)


def _ns_prefix(namespace: tuple[str, ...]) -> str:
    """Keys of a namespace and of every namespace under it start with this."""
    return "".join(label + _SEP for label in namespace)


def _item_key(namespace: tuple[str, ...], key: str) -> str:
    if not namespace:
        raise InvalidStoreNamespaceError("a namespace cannot be empty: give at least one label")
    full = _ns_prefix(namespace) + _SEP + key
    if len(full) > MAX_KEY_SIZE // 4 and len(full.encode("utf-8")) > MAX_KEY_SIZE:
        raise InvalidArgumentError(
            f"namespace {namespace!r} and key {key[:40]!r} add up to more than {MAX_KEY_SIZE} "
            f"bytes, the longest key kvstore holds: use shorter labels or keys")
    return full


def _split_item_key(raw: bytes) -> tuple[tuple[str, ...], str]:
    text = raw.decode("utf-8")
    end = text.index(_SEP + _SEP)  # labels are never empty: the first NUL NUL ends the namespace
    return tuple(text[:end].split(_SEP)), text[end + 2:]


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _ttl_seconds(minutes) -> float:
    """A LangGraph TTL (minutes; None: never expires) as a kvstore one
    (seconds; math.inf: never expires, whatever default the kvstore
    namespace may have). InvalidTTLError for anything else."""
    if minutes is None or minutes == math.inf:
        return math.inf
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) \
            or not 0 < minutes <= MAX_TTL / 60:  # also refuses nan
        raise InvalidTTLError(
            f"a LangGraph ttl is a number of minutes > 0 and at most {MAX_TTL // 60} (100 years), "
            f"not {minutes!r}; pass ttl=None for an item that never expires")
    return minutes * 60


def _ns_matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        part = namespace[:len(path)]
    elif condition.match_type == "suffix":
        part = namespace[len(namespace) - len(path):]
    else:
        raise InvalidArgumentError(
            f"unknown namespace match type {condition.match_type!r}: use 'prefix' or 'suffix'")
    return all(p == "*" or p == label for p, label in zip(path, part))


_OPERATORS = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def _compare(op: str, actual, expected) -> bool:
    fn = _OPERATORS.get(op)
    if fn is None:
        raise InvalidArgumentError(
            f"unknown filter operator {op!r}: use {', '.join(_OPERATORS)} or a plain value")
    if op in ("$eq", "$ne"):
        return fn(actual, expected)
    try:  # an ordering between values that have none (a str and a number) is no match
        return fn(actual, expected)
    except TypeError:
        return False


def _matches(actual, expected) -> bool:
    """Whether a stored value matches a filter value: equality, {"$op": v}
    comparisons, nested mappings and sequences compared member by member."""
    if isinstance(expected, dict):
        if any(isinstance(k, str) and k.startswith("$") for k in expected):
            return all(_compare(op, actual, v) for op, v in expected.items())
        return isinstance(actual, dict) and all(_matches(actual.get(k), v)
                                                for k, v in expected.items())
    if isinstance(expected, (list, tuple)):
        return isinstance(actual, (list, tuple)) and len(actual) == len(expected) and all(
            _matches(a, e) for a, e in zip(actual, expected))
    return actual == expected


class KVStore(_Owner, BaseStore):
    """A LangGraph long-term memory store (`BaseStore`) on kvstore.

    :param db: an open `kvstore.Store` (or `kvstore.aio.AsyncStore`); not closed by this object
    :param durable: True (default): a put/delete returns once synced; False: at once
    :param namespace: the kvstore namespace holding the items
    :param ttl: LangGraph's TTLConfig: ``default_ttl`` (minutes) for puts
        that give no ttl, ``refresh_on_read`` (default True) for reads that
        do not say whether to refresh. ``sweep_interval_minutes`` is not
        used: kvstore's own background sweep deletes expired items
        (the store's ``ttl_sweep_interval``), and reads never see them.

    Supported: get, put (a value that msgpack carries: JSON-like data, bytes),
    delete, search by namespace prefix with equality / ``$eq $ne $gt $gte $lt
    $lte`` filters (nested mappings compared member by member), limit and
    offset, list_namespaces with prefix, suffix (``"*"`` wildcards),
    max_depth, limit and offset. Search returns items in namespace-then-key
    order. An update keeps the item's created_at.

    TTL, as in LangGraph's PostgresStore: a put's ``ttl`` is in minutes
    (None: never expires; ``put()`` without one uses the config's
    default_ttl), and an item expires that long after its last put or
    refreshing read. A get or search with ``refresh_ttl`` (GetOp/SearchOp's
    default, or the config's refresh_on_read through get()/search()) pushes
    the expiry of the items it returns to now + their TTL. Expired items are
    invisible to get, search and list_namespaces at once, as TTLConfig's
    ``omit_expired`` asks. Not supported: semantic search (no vector index:
    a search's ``query`` is ignored, as in LangGraph's InMemoryStore without
    an index).
    """

    supports_ttl = True

    def __init__(self, db, *, durable: bool = True, namespace: str = "langgraph:store",
                 ttl: TTLConfig | None = None) -> None:
        store = self._attach(db, durable)
        if ttl is not None:
            if not isinstance(ttl, dict):
                raise InvalidArgumentError(
                    f"ttl takes LangGraph's TTLConfig, a dict such as {{'default_ttl': 60}} "
                    f"(minutes), not {type(ttl).__name__}")
            _ttl_seconds(ttl.get("default_ttl"))  # a bad default raises now, not at a put
        self.ttl_config = ttl
        self._ns_items = namespace
        self._items = store.namespace(namespace)
        self._refreshable = not store.readonly  # a refresh is a write

    @classmethod
    def from_path(cls, path, *, durable: bool = True, namespace: str = "langgraph:store",
                  ttl: TTLConfig | None = None, **options) -> "KVStore":
        """A store on the kvstore store at `path` (created if missing), which it
        owns: `close()` or ``with``/``async with`` closes it."""
        return cls._from_path(path, options, durable=durable, namespace=namespace, ttl=ttl)

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ops; reads see the store before the batch, and the batch's puts
        (the last one per item wins) commit together, atomically."""
        results, writes = self._run(ops)
        self._write(writes)
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        results, writes = self._run(ops)
        await self._awrite(writes)
        return results

    def _run(self, ops: Iterable[Op]) -> tuple[list, list]:
        results: list = []
        puts: dict[tuple, PutOp] = {}
        for op in ops:
            try:
                validate_op_namespace(op)
            except _LangGraphNamespaceError as exc:
                raise InvalidStoreNamespaceError(str(exc)) from None
            if isinstance(op, GetOp):
                results.append(self._get(_namespace(op.namespace), str(op.key),
                                         op.refresh_ttl))
            elif isinstance(op, SearchOp):
                results.append(self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._list_namespaces(op))
            elif isinstance(op, PutOp):
                puts[(_namespace(op.namespace), str(op.key))] = op
                results.append(None)
            else:
                raise InvalidArgumentError(f"unknown store operation {type(op).__name__}")
        return results, self._put_ops(puts)

    def _put_ops(self, puts: dict) -> list:
        if not puts:
            return []
        keys = [_item_key(ns, key) for ns, key in puts]
        previous = self._items.get_many(keys)
        now = time.time()
        ops = []
        for key, old, op in zip(keys, previous, puts.values()):
            if op.value is None:
                ops.append((self._ns_items, key, None))
            else:
                created = old[1] if old is not None else now
                ops.append((self._ns_items, key, [dict(op.value), created, now],
                            _ttl_seconds(op.ttl)))  # a bad ttl raises before any write
        return ops

    def _get(self, namespace: tuple[str, ...], key: str, refresh: bool) -> Item | None:
        if not namespace:
            return None
        record = self._items.get(_item_key(namespace, key),
                                 refresh_ttl=bool(refresh) and self._refreshable)
        if record is None:
            return None
        value, created, updated = record
        return Item(value=value, key=key, namespace=namespace, created_at=_when(created),
                    updated_at=_when(updated))

    def _search(self, op: SearchOp) -> list[SearchItem]:
        out: list[SearchItem] = []
        found: list[bytes] = []  # their keys
        if op.limit <= 0:
            return out
        skip = max(op.offset, 0)
        for raw, (value, created, updated) in self._items.scan(
                _ns_prefix(_namespace(op.namespace_prefix)) or None):
            if op.filter and not all(_matches(value.get(k), v) for k, v in op.filter.items()):
                continue
            if skip:
                skip -= 1
                continue
            namespace, key = _split_item_key(raw)
            out.append(SearchItem(namespace=namespace, key=key, value=value,
                                  created_at=_when(created), updated_at=_when(updated)))
            found.append(raw)
            if len(out) >= op.limit:
                break
        if op.refresh_ttl and self._refreshable:
            for raw in found:  # the items returned, as PostgresStore refreshes them
                self._items.get(raw, refresh_ttl=True)
        return out

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        conditions = op.match_conditions or ()
        # The fixed leading labels of a prefix condition narrow the scan.
        lead: tuple[str, ...] = ()
        for c in conditions:
            if c.match_type == "prefix":
                fixed = []
                for label in c.path:
                    if label == "*":
                        break
                    fixed.append(label)
                if len(fixed) > len(lead):
                    lead = tuple(fixed)
        prefix = _ns_prefix(lead) or None
        wanted = max(op.offset, 0) + op.limit
        found: list[tuple[str, ...]] = []
        start = None
        # Skip scan: read the first key of each namespace only, then jump past it.
        while len(found) < wanted:
            raw = next(self._items.scan(prefix, start=start, keys_only=True), None)
            if raw is None:
                break
            namespace, _ = _split_item_key(raw)
            encoded = _ns_prefix(namespace)
            if all(_ns_matches(c, namespace) for c in conditions):
                if op.max_depth is not None and len(namespace) > op.max_depth:
                    namespace = namespace[:op.max_depth]
                    encoded = _ns_prefix(namespace)
                    start = encoded[:-1] + "\x01"  # past every namespace under the truncated one
                else:
                    start = encoded + "\x01"  # past this namespace's own items
                if not found or found[-1] != namespace:
                    found.append(namespace)
            else:
                start = encoded + "\x01"
        return found[max(op.offset, 0):wanted]
