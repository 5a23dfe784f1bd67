"""The LangGraph checkpointer, KVStoreSaver: layout and guarantees in
kvstore.integrations.langgraph's docstring."""

from __future__ import annotations

import asyncio
import builtins
import os
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from ...errors import InvalidArgumentError
from ...store import MAX_KEY_SIZE, Store
from ..._types import Key
from ...ttl import MAX_TTL
from ._durability import DEFERRING, Ordering, run_mode
from ._owner import _SEP, Handle, Op, _Owner, _check_ttl_config, _langgraph_missing, _ttl_seconds

try:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import (
        WRITES_IDX_MAP,
        BaseCheckpointSaver,
        ChannelVersions,
        Checkpoint,
        CheckpointMetadata,
        CheckpointTuple,
        get_checkpoint_id,
        get_checkpoint_metadata,
    )
    from langgraph.checkpoint.serde.base import SerializerProtocol
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise _langgraph_missing(exc) from exc

__all__ = ["KVStoreSaver"]

# Module level: in the class, `list` is the saver's method.
_Ops = list[Op]
_Keys = Sequence[Key]

_EMPTY = "empty"  # blob type of a channel that has a version but no value
# The blobs and writes of a checkpoint live this much longer than its TTL:
# refreshed when they would expire before it, they then outlive it even
# though kvstore skips a refresh that would move an expiry by under 1%.
_LINGER = 1.02

# A checkpoint's record: [checkpoint type, bytes, metadata type, bytes,
# parent id, run id]; a write's: [task id, channel, type, bytes, task path, idx].
_Record = list[Any]


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
    :param durable: True (default): put/put_writes return once synced to disk
        (in a graph run under durability "sync"/"async", a task's put_writes
        once appended, synced by the run's next put: docs/langgraph.md);
        False: at once, committed within the store's flush_interval
    :param prefix: names of the kvstore namespaces used (``<prefix>:checkpoints``...)
    :param serde: LangGraph serializer (default: LangGraph's JsonPlusSerializer)
    :param ttl: a dict as langgraph-redis takes it: ``default_ttl`` (MINUTES)
        after which a checkpoint expires, with its pending writes and the
        channel values no live checkpoint uses; ``refresh_on_read`` (default
        True): get_tuple pushes the checkpoint it returns (and its values and
        writes) to now + default_ttl. None (default): nothing expires.
    :param keep_latest: keep only the N newest checkpoints of each thread and
        checkpoint namespace: each put deletes older ones, in its batch, with
        their writes and the values no kept checkpoint uses (as prune()
        keep_latest does, DeltaChannel ancestors included). None: keep all.

    Every capability of LangGraph's conformance suite is implemented: put,
    put_writes, get_tuple, list, delete_thread, delete_for_runs, copy_thread
    and prune. delete_for_runs scans every checkpoint of the store (there is
    no index by run); copy_thread adds the source's checkpoints to the target
    thread, leaving what the target already holds.

    Expiry (kvstore's engine TTL, swept by the store): a checkpoint expires
    `default_ttl` after its put (or its last refreshing read); its values
    and writes expire no earlier. A put refreshes the values it reuses from
    older checkpoints; a read never returns a checkpoint one of whose values
    is gone (it is expired, whatever its own record says).
    """

    def __init__(self, db: Handle, *, durable: bool = True, prefix: str = "langgraph",
                 serde: SerializerProtocol | None = None, ttl: dict[str, Any] | None = None,
                 keep_latest: int | None = None) -> None:
        BaseCheckpointSaver.__init__(self, serde=serde)
        store = self._attach(db, durable)
        self._ttl: float | None = None  # seconds: the TTL of checkpoints, or None
        self._refresh_on_read = False
        if ttl is not None:
            _check_ttl_config(ttl)
            seconds = _ttl_seconds(ttl.get("default_ttl"))
            self._ttl = seconds if seconds != float("inf") else None
            self._refresh_on_read = bool(ttl.get("refresh_on_read", True)) and not store.readonly
        if keep_latest is not None and (isinstance(keep_latest, bool) or
                                        not isinstance(keep_latest, int) or keep_latest < 1):
            raise InvalidArgumentError(
                f"keep_latest is the number of checkpoints to keep per thread and namespace, "
                f"an int >= 1 (or None: keep all), not {keep_latest!r}")
        self.ttl_config = ttl
        self._keep_latest = keep_latest
        self._clock = store.options.clock
        self._ns_checkpoints = f"{prefix}:checkpoints"
        self._ns_blobs = f"{prefix}:blobs"
        self._ns_writes = f"{prefix}:writes"
        self._checkpoints = store.namespace(self._ns_checkpoints)
        self._blobs = store.namespace(self._ns_blobs)
        self._writes = store.namespace(self._ns_writes)
        self._order = Ordering()  # which pending writes a later put syncs

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], *, durable: bool = True, prefix: str = "langgraph",
                  serde: SerializerProtocol | None = None, ttl: dict[str, Any] | None = None,
                  keep_latest: int | None = None, **options: Any) -> KVStoreSaver:
        """A saver on the store at `path` (created if missing), which it owns:
        `close()` or ``with``/``async with`` closes the store.

        :param options: options of `kvstore.open()`
        """
        return cls._from_path(path, options, durable=durable, prefix=prefix, serde=serde, ttl=ttl,
                              keep_latest=keep_latest)

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

    def _syncs_writes_to(self, db: Store[Any]) -> bool:
        """Whether the syncs of this saver's puts make a write to `db`
        durable: it syncs them, and db is the same kvstore store (one log)."""
        if not self._durable:
            return False
        if db is self._db:
            return True
        try:
            return os.path.samefile(db.path, self._db.path)
        except OSError:
            return False

    # ------------------------------------------------------------ writes

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        """Store a checkpoint and the channel values of `new_versions`, atomically."""
        ops, stored = self._put_ops(config, checkpoint, metadata, new_versions)
        self._order.supersede(*_ids(config))
        self._write(ops)
        return stored

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint,
                   metadata: CheckpointMetadata, new_versions: ChannelVersions) -> RunnableConfig:
        ops, stored = self._put_ops(config, checkpoint, metadata, new_versions)
        self._order.supersede(*_ids(config))
        await self._awrite(ops)
        return stored

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        """Store a task's pending writes for the checkpoint of `config`,
        atomically; synced, or, in a graph run, buffered when the run's next
        put will sync them (_durability.py)."""
        ids = self._deferring(config, writes)
        if ids is None:
            self._write(self._put_writes_ops(config, writes, task_id, task_path))
            return
        # locked from the start: a put of the next checkpoint arriving
        # meanwhile is submitted after these writes, and syncs them
        with self._order.lock(ids[0], ids[1]):
            ops = self._put_writes_ops(config, writes, task_id, task_path)
            if self._order.deferrable(*ids):
                self._write(ops, durable=False)
                return
        self._write(ops)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        ops = self._put_writes_ops(config, writes, task_id, task_path)
        ids = self._deferring(config, writes)
        # no await between the check and the submission (in _awrite): no lock
        await self._awrite(ops, durable=ids is None or not self._order.deferrable(*ids))

    def _deferring(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]]
                   ) -> tuple[str, str, str] | None:
        """(thread, namespace, checkpoint id) of writes that may wait for the
        run's next put; None if they must sync by themselves. A special
        write (error, interrupt...) ends the step: it syncs, and writes for
        its checkpoint arriving after it sync too."""
        thread_id, checkpoint_ns, checkpoint_id = _ids(config)
        if checkpoint_id is None or run_mode(config) not in DEFERRING:
            return None
        if any(channel in WRITES_IDX_MAP for channel, _ in writes):
            self._order.supersede(thread_id, checkpoint_ns, checkpoint_id)
            return None
        return thread_id, checkpoint_ns, checkpoint_id

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
        refresh = self._refresh_on_read
        if checkpoint_id is not None:
            record = self._checkpoints.get(_key(thread_id, checkpoint_ns, checkpoint_id))
            return self._tuple(thread_id, checkpoint_ns, checkpoint_id, record,
                               refresh=refresh) if record is not None else None
        for key, record in self._checkpoints.scan(_key(thread_id, checkpoint_ns) + _SEP,
                                                  reverse=True):
            found = self._tuple(thread_id, checkpoint_ns, _parts(key)[2], record, refresh=refresh)
            if found is not None:  # else expired (a value is gone): the next newest
                return found
        return None

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

    def _put_ops(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                 new_versions: ChannelVersions) -> tuple[_Ops, RunnableConfig]:
        thread_id, checkpoint_ns, parent_id = _ids(config)
        checkpoint_id = checkpoint["id"]
        body = checkpoint.copy()
        values = body.pop("channel_values", {})  # type: ignore[misc]  # a copy
        dumps = self.serde.dumps_typed
        ops: _Ops = []
        linger = self._ttls(linger=True)
        for channel, version in new_versions.items():
            blob = dumps(values[channel]) if channel in values else (_EMPTY, b"")
            ops.append((self._ns_blobs, _key(thread_id, checkpoint_ns, channel, str(version)),
                        list(blob), *linger))
        metadata = get_checkpoint_metadata(config, metadata)
        run_id = metadata.get("run_id")
        ctype, cbytes = dumps(body)
        mtype, mbytes = dumps(metadata)
        record = [ctype, cbytes, mtype, mbytes, parent_id, str(run_id) if run_id is not None else None]
        ops.append((self._ns_checkpoints, _key(thread_id, checkpoint_ns, checkpoint_id), record,
                    *self._ttls(linger=False)))
        versions = body.get("channel_versions") or {}
        self._keep_alive(self._blobs, [_key(thread_id, checkpoint_ns, ch, str(v))
                                       for ch, v in versions.items() if ch not in new_versions])
        if self._keep_latest is not None:
            ops += self._keep_latest_ops(thread_id, checkpoint_ns, checkpoint_id, record,
                                         {(ch, str(v)) for ch, v in versions.items()})
        return ops, _config(thread_id, checkpoint_ns, checkpoint_id)

    # ------------------------------------------------------------ expiry and retention

    def _ttls(self, linger: bool) -> tuple[float, ...]:
        """The ttl of an op (after its value), in seconds: () without a TTL
        config; a checkpoint's TTL, or, for values and writes (linger), a little more."""
        if self._ttl is None:
            return ()
        return (min(self._ttl * _LINGER, MAX_TTL) if linger else self._ttl,)

    def _keep_alive(self, handle: Store[Any], keys: _Keys) -> None:
        """Make records (values, writes) of a checkpoint put or refreshed now
        expire no earlier than it: refresh those that would (a buffered
        write), rewrite those stored with a shorter TTL than today's config."""
        if self._ttl is None or not keys:
            return
        deadline = self._clock() + self._ttl
        for key in keys:
            try:
                found = handle.expiry(key)
            except KeyError:  # gone: the checkpoint reads as expired
                continue
            if found is None or found[0] >= deadline:
                continue
            if found[1] >= self._ttl:
                handle.get(key, refresh_ttl=True)
            else:
                value = handle.get(key)
                if value is not None:
                    handle.put(key, value, ttl=self._ttls(linger=True)[0], durable=False)

    def _keep_latest_ops(self, thread_id: str, checkpoint_ns: str, checkpoint_id: str,
                         record: _Record, used: set[tuple[str, str]]) -> _Ops:
        """Ops deleting what keep_latest drops once checkpoint_id (record,
        using the (channel, version) values `used`) is stored."""
        prefix = _key(thread_id, checkpoint_ns) + _SEP
        records = {_parts(k)[2]: r for k, r in self._checkpoints.scan(prefix)}
        records[checkpoint_id] = record
        latest = self._keep_latest
        if latest is None or len(records) <= latest:  # None: not called then
            return []
        keep = set(sorted(records)[-latest:])
        keep |= self._kept_by_keep_latest(thread_id, checkpoint_ns, records)
        drop = set(records) - keep - {checkpoint_id}
        return self._drop_ops(thread_id, checkpoint_ns, drop, used) if drop else []

    def _put_writes_ops(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                        task_path: str) -> _Ops:
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
        ops: _Ops = []
        for idx, key, channel, value in entries:
            if key not in stored:
                wtype, wbytes = self.serde.dumps_typed(value)
                ops.append((self._ns_writes, key, [task_id, channel, wtype, wbytes, task_path, idx],
                            *self._ttls(linger=True)))
        return ops

    def _delete_thread_ops(self, thread_id: str) -> _Ops:
        prefix = _key(thread_id) + _SEP
        return [(ns, key, None)
                for ns, handle in ((self._ns_checkpoints, self._checkpoints),
                                   (self._ns_blobs, self._blobs), (self._ns_writes, self._writes))
                for key in handle.scan(prefix, keys_only=True)]

    def _delete_for_runs_ops(self, run_ids: Sequence[str]) -> _Ops:
        runs = {str(r) for r in run_ids}
        if not runs:
            return []
        doomed: dict[tuple[str, str], set[str]] = {}
        for key, record in self._checkpoints.scan():
            if record[5] in runs:
                thread_id, checkpoint_ns, checkpoint_id = _parts(key)
                doomed.setdefault((thread_id, checkpoint_ns), set()).add(checkpoint_id)
        ops: _Ops = []
        for (thread_id, checkpoint_ns), ids in doomed.items():
            ops += self._drop_ops(thread_id, checkpoint_ns, ids)
        return ops

    def _copy_thread_ops(self, source: str, target: str) -> _Ops:
        prefix = _key(source) + _SEP
        target_prefix = _key(target) + _SEP
        ops: _Ops = []
        for ns, handle in ((self._ns_checkpoints, self._checkpoints), (self._ns_blobs, self._blobs),
                           (self._ns_writes, self._writes)):
            ttl = self._ttls(linger=handle is not self._checkpoints)  # the copy's own expiry
            for key, value in handle.scan(prefix):
                ops.append((ns, _check_length(target_prefix + key.decode("utf-8")[len(prefix):]),
                            value, *ttl))
        return ops

    def _prune_ops(self, thread_ids: Sequence[str], strategy: str) -> _Ops:
        if strategy == "delete":
            return [op for t in thread_ids for op in self._delete_thread_ops(str(t))]
        if strategy != "keep_latest":
            raise InvalidArgumentError(
                f"unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'")
        ops: _Ops = []
        for thread_id in map(str, thread_ids):
            by_ns: dict[str, dict[str, _Record]] = {}
            for key, record in self._checkpoints.scan(_key(thread_id) + _SEP):
                _, checkpoint_ns, checkpoint_id = _parts(key)
                by_ns.setdefault(checkpoint_ns, {})[checkpoint_id] = record
            for checkpoint_ns, records in by_ns.items():
                keep = self._kept_by_keep_latest(thread_id, checkpoint_ns, records)
                drop = set(records) - keep
                if drop:
                    ops += self._drop_ops(thread_id, checkpoint_ns, drop)
        return ops

    def _kept_by_keep_latest(self, thread_id: str, checkpoint_ns: str,
                             records: dict[str, _Record]) -> set[str]:
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

    def _drop_ops(self, thread_id: str, checkpoint_ns: str, drop: set[str],
                  also_used: AbstractSet[tuple[str, str]] = frozenset()) -> _Ops:
        """Delete checkpoints `drop` of one thread and namespace, their writes,
        and the blobs that no remaining checkpoint of it uses (nor `also_used`:
        (channel, version) of a checkpoint not stored yet)."""
        ops: _Ops = []
        dropped: set[tuple[str, str]] = set()
        kept: set[tuple[str, str]] = set(also_used)
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

    def _tuple(self, thread_id: str, checkpoint_ns: str, checkpoint_id: str, record: _Record,
               metadata: CheckpointMetadata | None = None, refresh: bool = False) -> CheckpointTuple | None:
        """The checkpoint of a record; None when, with a TTL config, one of
        its values is gone (it has expired with them). `refresh`: push its
        expiry, and its values' and writes', to now + the TTL."""
        loads = self.serde.loads_typed
        ctype, cbytes, mtype, mbytes, parent_id, _run_id = record
        checkpoint = loads((ctype, cbytes))
        versions = checkpoint.get("channel_versions") or {}
        channels = list(versions)
        blob_keys = [_key(thread_id, checkpoint_ns, ch, str(versions[ch])) for ch in channels]
        blobs = self._blobs.get_many(blob_keys) if channels else []
        if self._ttl is not None and any(blob is None for blob in blobs):
            return None
        checkpoint["channel_values"] = {
            ch: loads((blob[0], blob[1])) for ch, blob in zip(channels, blobs)
            if blob is not None and blob[0] != _EMPTY}
        prefix = _key(thread_id, checkpoint_ns, checkpoint_id) + _SEP
        writes = list(self._writes.scan(prefix))
        if refresh and self._ttl is not None:
            self._checkpoints.get(prefix[:-1], refresh_ttl=True)
            self._keep_alive(self._blobs, blob_keys)
            self._keep_alive(self._writes, [key for key, _ in writes])
        return CheckpointTuple(
            config=_config(thread_id, checkpoint_ns, checkpoint_id),
            checkpoint=checkpoint,
            metadata=metadata if metadata is not None else loads((mtype, mbytes)),
            parent_config=_config(thread_id, checkpoint_ns, parent_id) if parent_id else None,
            pending_writes=self._pending_writes([record for _, record in writes]),
        )

    def _pending_writes(self, records: builtins.list[_Record]) -> builtins.list[tuple[str, str, Any]]:
        records.sort(key=lambda r: (r[4], r[0], r[5]))  # LangGraph's writes_sort_key
        loads = self.serde.loads_typed
        return [(task_id, channel, loads((wtype, wbytes)))
                for task_id, channel, wtype, wbytes, _path, _idx in records]

    def _list(self, config: RunnableConfig | None, filter: dict[str, Any] | None,
              before: RunnableConfig | None, limit: int | None) -> Iterator[CheckpointTuple]:
        if limit is not None and limit <= 0:
            return
        before_id = get_checkpoint_id(before) if before else None
        thread_id: str | None = None
        checkpoint_ns: str | None = None
        only_id: str | None = None
        if config is not None:
            conf = config.get("configurable") or {}
            if conf.get("thread_id") is not None:
                thread_id = str(conf["thread_id"])
            checkpoint_ns = conf.get("checkpoint_ns")
            only_id = conf.get("checkpoint_id") or None
        if thread_id is not None and checkpoint_ns is not None:
            # one thread and namespace: its keys are already in checkpoint-id order
            prefix = _key(thread_id, checkpoint_ns) + _SEP
            found: Iterator[tuple[bytes, Any]] = self._checkpoints.scan(
                prefix, reverse=True, stop=prefix + before_id if before_id else None)
        else:
            # several namespaces or threads: order their keys by checkpoint id
            within = _key(thread_id) + _SEP if thread_id is not None else None
            keys = [k for k in self._checkpoints.scan(within, keys_only=True)
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
            checkpoint = self._tuple(t, ns, checkpoint_id, record, metadata)
            if checkpoint is None:  # expired with one of its values
                continue
            yield checkpoint
            n += 1
            if limit is not None and n >= limit:
                return

