"""Trained zstd dictionaries, stored inside the store.

Small agent-memory records (a few hundred bytes) share most of their
structure with each other but little with themselves, so plain zstd saves
only about 20% on them; a dictionary trained on a namespace's own values
saves about 40%. Layout, in the reserved ``__kvstore__`` database:

    b"dict:" + id (u32 big-endian)   -> msgpack {"namespace", "created", "samples", "data"}
    b"dict-current:" + namespace      -> id (u32 big-endian): the one new values use

Ids are allocated in the write transaction that stores the dictionary (one
more than the largest), so they are unique across processes. A dictionary is
never deleted: old values keep decoding with the id in their header. Another
process's new dictionary is picked up when a record names an id this
process does not know, and, for encoding, on the next check of the current
ids (at most every `RECHECK_SECONDS`).
"""

from __future__ import annotations

import random
import struct
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import msgpack
import zstandard

from .codec.dictionary import Dictionary
from .errors import KVStoreError
from .layout import CURRENT_PREFIX, DICT_PREFIX
from .options import DICT_RECHECK_SECONDS
from .validate import check_count

if TYPE_CHECKING:
    import lmdb

    from .environment import Environment
    from .writer import Writer

__all__ = ["Dictionaries", "DEFAULT_DICT_SIZE", "DEFAULT_SAMPLES"]

DEFAULT_DICT_SIZE = 110 * 1024  # zstd's own default; measured: 0.56 of msgpack size on the corpus
DEFAULT_SAMPLES = 5000
MIN_SAMPLES = 20
# zstd's trainer: a dictionary is at least ZDICT_DICTSIZE_MIN (256) bytes;
# it allocates dict_size up front, and a dictionary of more than 1 GiB is
# never worth it (the default is 110 KiB).
MIN_DICT_SIZE = 256
MAX_DICT_SIZE = 1 << 30
RECHECK_SECONDS = DICT_RECHECK_SECONDS
_ID = struct.Struct(">I")


class Dictionaries:
    """The dictionaries of one store, as this process knows them."""

    def __init__(self, env: Environment) -> None:
        self._env = env
        self._lock = threading.Lock()
        self.by_id: dict[int, Dictionary] = {}  # replaced whole, never mutated: read without the lock
        self.current: dict[str, Dictionary] = {}  # namespace -> dictionary for new values; same
        self._checked = 0.0
        self.reload()

    def reload(self) -> None:
        """Read every dictionary and current pointer from the store."""
        meta = self._env.meta_db

        def read(txn: lmdb.Transaction) -> tuple[dict[int, bytes], dict[str, int]]:
            found: dict[int, bytes] = {}
            current: dict[str, int] = {}
            cur = txn.cursor(db=meta)
            if cur.set_range(DICT_PREFIX):
                for key, value in cur:
                    key = bytes(key)
                    if not key.startswith(DICT_PREFIX):
                        break
                    (did,) = _ID.unpack(key[len(DICT_PREFIX):])
                    found[did] = bytes(value)
            if cur.set_range(CURRENT_PREFIX):
                for key, value in cur:
                    key = bytes(key)
                    if not key.startswith(CURRENT_PREFIX):
                        break
                    current[key[len(CURRENT_PREFIX):].decode("utf-8")] = _ID.unpack(bytes(value))[0]
            return found, current

        found, current = self._env.read(read)
        with self._lock:
            by_id = dict(self.by_id)
            for did, raw in found.items():
                if did not in by_id:
                    try:
                        by_id[did] = Dictionary(did, msgpack.unpackb(raw, raw=False)["data"])
                    except Exception:  # damaged entry: its records fail as "unknown dictionary"
                        continue
            self.by_id = by_id
            self.current = {ns: by_id[did] for ns, did in current.items() if did in by_id}
            self._checked = time.monotonic()

    def for_encoding(self, namespace: str) -> Dictionary | None:
        """The dictionary new values of namespace use, or None."""
        if time.monotonic() - self._checked > RECHECK_SECONDS:
            self.reload()
        return self.current.get(namespace)

    def for_decoding(self, dict_id: int) -> dict[int, Dictionary]:
        """The id -> Dictionary mapping, reloaded if dict_id is unknown."""
        if dict_id not in self.by_id:
            self.reload()
        return self.by_id

    def info(self) -> list[dict[str, Any]]:
        """[{id, namespace, size, created, samples, current}] of every dictionary."""
        meta = self._env.meta_db

        def read(txn: lmdb.Transaction) -> list[dict[str, Any]]:
            out = []
            cur = txn.cursor(db=meta)
            if cur.set_range(DICT_PREFIX):
                for key, value in cur:
                    key = bytes(key)
                    if not key.startswith(DICT_PREFIX):
                        break
                    doc = msgpack.unpackb(bytes(value), raw=False)
                    out.append({"id": _ID.unpack(key[len(DICT_PREFIX):])[0], "namespace": doc["namespace"],
                                "size": len(doc["data"]), "created": doc["created"],
                                "samples": doc["samples"]})
            return out

        current_ids = {d.id for d in self.current.values()}
        rows = self._env.read(read)
        for row in rows:
            row["current"] = row["id"] in current_ids
        return rows

    def train(self, namespace: str, dbi: Any, samples: int, dict_size: int,
              serialize: Callable[[bytes, bytes], bytes], writer: Writer) -> int:
        """Train a dictionary on up to `samples` values of namespace, store it
        through writer (Writer.run), make it current for the namespace;
        return its id.

        serialize(key, record) -> the serialized (uncompressed) bytes of the
        record stored under key.
        """
        samples = check_count(samples, "samples", "train_dictionary", MIN_SAMPLES)
        dict_size = check_count(dict_size, "dict_size", "train_dictionary", MIN_DICT_SIZE, MAX_DICT_SIZE)

        def sample(txn: lmdb.Transaction) -> list[tuple[bytes, bytes]]:
            n = txn.stat(dbi)["entries"]
            rng = random.Random(n)
            keep = set(rng.sample(range(n), samples)) if n > samples else None
            out = []
            for i, (key, record) in enumerate(txn.cursor(db=dbi)):
                if keep is None or i in keep:
                    out.append((bytes(key), bytes(record)))
            return out

        records = self._env.read(sample)
        if len(records) < MIN_SAMPLES:
            raise KVStoreError(
                f"namespace {namespace!r} holds {len(records)} values; a dictionary needs at least "
                f"{MIN_SAMPLES} (a few thousand give the best ratio)")
        # zstd refuses to train on empty samples ("Src size is incorrect"):
        # empty values carry nothing to learn, leave them out and count the rest.
        payloads: list[Any] = [p for p in (serialize(k, r) for k, r in records) if len(p)]
        if len(payloads) < MIN_SAMPLES:
            raise KVStoreError(
                f"namespace {namespace!r}: {len(payloads)} of the {len(records)} values sampled are "
                f"not empty; a dictionary needs at least {MIN_SAMPLES} non-empty values (a few "
                f"thousand give the best ratio): store more values, or pass a larger samples")
        try:
            trained = zstandard.train_dictionary(dict_size, payloads)
        except (zstandard.ZstdError, MemoryError) as exc:
            raise KVStoreError(
                f"zstd could not train a dictionary of {dict_size} bytes on {len(payloads)} values "
                f"({sum(map(len, payloads))} bytes) of namespace {namespace!r}: {exc}; it needs at "
                f"least {MIN_SAMPLES} values, a few thousand give the best ratio: store more values, "
                f"pass a larger samples, or a smaller dict_size") from None
        data = trained.as_bytes()
        doc = msgpack.packb({"namespace": namespace, "created": time.time(), "samples": len(payloads),
                             "data": data}, use_bin_type=True)
        meta = self._env.meta_db

        def store(txn: lmdb.Transaction) -> int:
            cur = txn.cursor(db=meta)
            last = 0
            if cur.set_range(DICT_PREFIX):
                for key, _ in cur:
                    key = bytes(key)
                    if not key.startswith(DICT_PREFIX):
                        break
                    last = max(last, _ID.unpack(key[len(DICT_PREFIX):])[0])
            new_id = last + 1
            txn.put(DICT_PREFIX + _ID.pack(new_id), doc, db=meta)
            txn.put(CURRENT_PREFIX + namespace.encode("utf-8"), _ID.pack(new_id), db=meta)
            return new_id

        new_id: int = writer.run(store)
        self.reload()
        return new_id
