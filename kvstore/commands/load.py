"""`kvstore load PATH`: load a dump made by `kvstore dump` (jsonl or mdb) or by
LMDB's `mdb_dump -a`, into a new or existing store.

Also data that was never a kvstore store: JSON lines as other tools write
them (--key FIELD [--value FIELD]: one object per line, plain JSON), and
`mdb_dump` text of any LMDB environment (--raw: its values stored as
bytes).

The input is read twice: a first pass (commands/_loadplan.py) checks all of
it (structure, counts, keys, namespaces; for mdb each record's header and
checksum, and that every dictionary a record names is in the dump or the
store) before anything is written, so a truncated or damaged dump is
refused whole. The second pass
writes, in transactions of up to BATCH_RECORDS records, each synced.

jsonl values are encoded afresh with the store's codec (and the namespace's
current dictionary). mdb records are written as they are, and the dump's
dictionaries (from its `__kvstore__` section) are copied into the store
under their ids; a dump dictionary whose id the store already uses for a
different dictionary is not copied, and the records using it are decoded
and encoded again with the store's own settings.

Values keep their expiry (jsonl: a record's expires_at and ttl; mdb: the
TTL prefix, as it is); values already expired are left out. A namespace's
default TTL (a jsonl header's default_ttl, the ttl: keys of an mdb dump's
`__kvstore__`) is given to the destination namespace when it has none.
"""

from __future__ import annotations

import os

from kvstore import engine
from kvstore import codec as _codec
from kvstore.codec.format import TTL_HEADER_SIZE, TTL_VERSION, inner_record, parse_ttl, wrap_ttl
from kvstore.layout import CURRENT_PREFIX, DEFAULT_NAMESPACE, DICT_PREFIX, META_DB
from kvstore.errors import KVStoreError
from kvstore.options import LOAD_BATCH_BYTES, LOAD_BATCH_RECORDS
from kvstore.writer import Group

from . import _mdbtext
from ._common import CommandError, Progress, is_url, now_of, open_writable, plural, quote_key
from ._portable import Tally, handle_of, load_records
from ._loadplan import DICT_ID as _ID
from ._loadplan import (Plan, check_mdb_records, detect_format, input_lines, jsonl_header, open_input,
                        record_from_jsonl, record_from_object, route, scan_jsonl, scan_mdb, scan_objects)
from ._records import inner_dict_id

from typing import TYPE_CHECKING, Any, BinaryIO, Iterator

if TYPE_CHECKING:
    import lmdb

    from kvstore.store import Store

    from ._loadplan import Section

    from ._common import Args, Out, Parser, Subparsers

__all__ = ["add_parser", "run"]

BATCH_RECORDS, BATCH_BYTES = LOAD_BATCH_RECORDS, LOAD_BATCH_BYTES  # tunables (options.py)


def add_parser(subparsers: Subparsers) -> Parser:
    p = subparsers.add_parser(
        "load", help="load a dump (jsonl, or mdb_dump's format) into a store",
        description="Load a dump into the store at PATH (created if missing). The whole input is "
                    "checked before anything is written. Without -n every section goes to the "
                    "namespace it names; with -n NS, a dump of one namespace is loaded into NS, "
                    "and from a dump of several only the section named NS is loaded.")
    p.add_argument("path", help="store directory (created if missing), or etcd://HOST:PORT[,...]/PREFIX")
    p.add_argument("-i", "--input", metavar="FILE", help="read FILE instead of stdin")
    p.add_argument("-n", "--namespace", help="destination namespace (see above)")
    p.add_argument("--format", choices=("jsonl", "mdb"),
                   help="input format (default: recognised from the first line)")
    p.add_argument("--no-overwrite", action="store_true", help="keep the value of keys the store already holds")
    p.add_argument("--key", metavar="FIELD", dest="key_field",
                   help="the input is JSON lines as other tools write them, one object per line: FIELD is "
                        "the key (a string or an integer); plain JSON, numbers keep their type")
    p.add_argument("--value", metavar="FIELD", dest="value_field",
                   help="with --key: FIELD is the value (default: the whole object)")
    p.add_argument("--raw", action="store_true",
                   help="with mdb: the input is mdb_dump text of an LMDB environment that is not a kvstore "
                        "store; each value is stored as bytes, as it is")
    return p


# ---------------------------------------------------------------- pass 2


class _Loader:
    """Writes (namespace, key, record) in synced transactions of BATCH_RECORDS."""

    def __init__(self, db: Store, overwrite: bool, progress: Progress) -> None:
        self.db = db
        self.env = engine.of(db)
        self.overwrite = overwrite
        self.progress = progress
        self.batch: list[tuple[str, Any, bytes, bytes]] = []
        self.nbytes = 0
        self.loaded: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.expired: dict[str, int] = {}
        self.now = now_of(db)  # one judgement of expiry for the whole load
        self._dbis: dict[str, object] = {}

    def dbi(self, namespace: str) -> Any:
        dbi = self._dbis.get(namespace)
        if dbi is None:
            dbi = self._dbis[namespace] = self.env.dbi(namespace, create=True)
            self.loaded.setdefault(namespace, 0)
            self.skipped.setdefault(namespace, 0)
            self.expired.setdefault(namespace, 0)
        return dbi

    def add(self, namespace: str, key: bytes, record: bytes) -> None:
        """Queue a stored record; one whose TTL has run out is left out."""
        dbi = self.dbi(namespace)
        if record[:1] == bytes([TTL_VERSION]):
            if parse_ttl(record)[0] <= self.now:
                self.expired[namespace] += 1
                self.progress.update()
                return
            step = self.env.ttl.step_for(namespace)
            if step is not None:  # committed before any TTL value of it
                self.env.writer.submit(Group([], True, 0, before=step))  # type: ignore[union-attr]  # writable
        self.batch.append((namespace, dbi, key, record))
        self.nbytes += len(record)
        if len(self.batch) >= BATCH_RECORDS or self.nbytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        batch, overwrite, env = self.batch, self.overwrite, self.env
        if not batch:
            return

        def write(txn: lmdb.Transaction) -> list[bool]:  # replayed from the start if the map must grow
            done = []
            for namespace, dbi, key, record in batch:
                done.append(txn.put(key, record, db=dbi, overwrite=overwrite))
            return done

        done = env.writer.run(write, count=True)  # type: ignore[union-attr]  # a commit of the writer's, in order with any other
        for (namespace, _, _, _), put in zip(batch, done):
            if put:
                self.loaded[namespace] += 1
            else:
                self.skipped[namespace] += 1
        self.progress.update(len(batch))
        self.batch, self.nbytes = [], 0


def jsonl_records(binary: BinaryIO, plan: Plan, fields: tuple[str, str | None] | None = None
                  ) -> Iterator[tuple[int, str, bytes, Any, tuple[int, int] | None]]:
    """Pass 2's records of jsonl input: (line number, destination namespace,
    key, value, (expires_ms, ttl_ms) or None), of the sections loaded. With
    fields (key, value): JSON lines of other tools."""
    dest = None
    section_iter = iter(plan.sections)
    started = False
    for lineno, line in enumerate(input_lines(binary), 1):
        if not line.strip():
            continue
        if fields is None and jsonl_header(line, lineno) is not None:
            dest = next(section_iter).dest
            started = True
            continue
        if not started:
            dest = next(section_iter).dest
            started = True
        if dest is None:
            continue
        if fields is None:
            key, value, expiry = record_from_jsonl(line, lineno)
        else:
            key, value, expiry = record_from_object(line, lineno, *fields)
        yield lineno, dest, key, value, expiry


def _load_jsonl(binary: BinaryIO, plan: Plan, db: Store, loader: _Loader,
                fields: tuple[str, str | None] | None = None) -> None:
    """Pass 2 for jsonl: a kvstore dump, or with fields (key, value) JSON
    lines of other tools."""
    codec = engine.codec_of(db)
    dicts = engine.of(db).dicts
    keyed = engine.of(db).keyed  # version 3 records (the key in their checksum)
    for lineno, dest, key, value, expiry in jsonl_records(binary, plan, fields):
        try:
            record = codec.encode(value, dictionary=dicts.for_encoding(dest), key=key if keyed else None)
        except KVStoreError as exc:
            raise CommandError(f"line {lineno}: key {quote_key(key)}: {exc}") from None
        if expiry is not None:
            record = wrap_ttl(record, *expiry)
        loader.add(dest, key, record)


def _merge_dictionaries(db: Store, plan: Plan) -> set[int]:
    """Copy the dump's dictionaries into the store, in one transaction; return
    the ids whose records must be encoded again (the store uses the id for
    another dictionary)."""
    env = engine.of(db)
    if not plan.dump_dicts:
        return set()
    wanted_current = {}
    for s in plan.sections:
        did = plan.dump_current.get(s.source)
        if s.dest is not None and did is not None:
            wanted_current[s.dest] = did

    def merge(txn: lmdb.Transaction) -> set[int]:
        conflicts = set()
        for did, (doc, _dictionary) in sorted(plan.dump_dicts.items()):
            key = DICT_PREFIX + _ID.pack(did)
            have = txn.get(key, db=env.meta_db)
            if have is None:
                txn.put(key, doc, db=env.meta_db)
            elif bytes(have) != doc:
                conflicts.add(did)
        for namespace, did in wanted_current.items():
            key = CURRENT_PREFIX + namespace.encode("utf-8")
            if did not in conflicts and txn.get(key, db=env.meta_db) is None:
                txn.put(key, _ID.pack(did), db=env.meta_db)
        return conflicts

    conflicts: set[int] = env.writer.run(merge, count=True)  # type: ignore[union-attr]  # writable
    env.dicts.reload()
    return conflicts


def _load_mdb(binary: BinaryIO, plan: Plan, db: Store, loader: _Loader, conflicts: set[int],
              raw: bool = False) -> None:
    """Pass 2 for mdb: the records as they are (pass 1 checked them), except
    those compressed with a dump dictionary whose id the store uses for
    another: decoded with the dump's and encoded again with the store's.
    raw: each value is bytes to store (encoded as a bytes value)."""
    codec = engine.codec_of(db)
    env = engine.of(db)
    keyed = env.keyed  # records encoded here are version 3 (the key in their checksum)
    dump_dicts = {did: d for did, (_, d) in plan.dump_dicts.items()}
    sections = iter(plan.sections)
    dest = None
    for event in _mdbtext.parse(input_lines(binary)):
        kind = event[0]
        if kind == "section":
            dest = None if event[1] == META_DB else next(sections).dest
        elif kind == "record" and dest is not None:
            _, key, record, lineno = event
            if raw:
                try:
                    record = codec.encode(bytes(record), dictionary=env.dicts.for_encoding(dest),
                                          key=key if keyed else None)
                except KVStoreError as exc:
                    raise CommandError(f"line {lineno}: key {quote_key(key)}: {exc}") from None
            elif conflicts and inner_dict_id(record) in conflicts:
                value = codec.decode(inner_record(record), dictionaries=dump_dicts, key=key)
                prefix = record[:TTL_HEADER_SIZE] if record[0] == TTL_VERSION else b""  # kept as it is
                record = prefix + codec.encode(value, dictionary=env.dicts.for_encoding(dest),
                                               key=key if keyed else None)
            loader.add(dest, key, record)


def _options(args: Args) -> tuple[str | None, tuple[str, str | None] | None]:
    """(format, (key field, value field) or None): the input the options ask for."""
    if args.value_field is not None and args.key_field is None:
        raise CommandError("--value FIELD goes with --key FIELD (which member of each object is the key)")
    if args.key_field is not None:
        if args.format == "mdb" or args.raw:
            raise CommandError("--key and --value read JSON lines; --format mdb and --raw read mdb_dump text")
        return "jsonl", (args.key_field, args.value_field)
    if args.raw:
        if args.format == "jsonl":
            raise CommandError("--raw reads mdb_dump text; for JSON lines of other tools give --key FIELD")
        return "mdb", None
    return args.format, None


def run(args: Args, out: Out) -> int:
    fmt, fields = _options(args)
    binary = open_input(args.input)
    try:
        fmt = fmt or detect_format(binary)
        size = os.fstat(binary.fileno()).st_size
        with Progress("load: checking", size, unit="bytes") as progress:
            if fields is not None:
                plan = scan_objects(binary, *fields, progress=progress)
            elif fmt == "jsonl":
                plan = scan_jsonl(binary, progress)
            else:
                plan = scan_mdb(binary, args.raw, progress)
        route(plan, args.namespace)
        chosen = [s for s in plan.sections if s.dest is not None]
        loader: Tally | _Loader
        if is_url(args.path):
            loader, defaults = _load_portable(binary, plan, chosen, args, fmt, fields)
        else:
            loader, defaults = _load_local(binary, plan, chosen, args, fmt, fields, size)
    finally:
        binary.close()
    if not loader.loaded:
        out.write("the dump holds no namespace: nothing loaded\n")
    for namespace in loader.loaded:
        line = f"loaded {plural(loader.loaded[namespace], 'record')} into namespace {namespace!r}"
        if loader.skipped[namespace]:
            line += f"; {plural(loader.skipped[namespace], 'key')} already present kept (--no-overwrite)"
        if loader.expired[namespace]:
            line += f"; {plural(loader.expired[namespace], 'expired value')} left out"
        out.write(line + "\n")
    for line in defaults:
        out.write(line + "\n")
    return 0


def _load_portable(binary: BinaryIO, plan: Plan, chosen: list[Section], args: Args, fmt: str,
                   fields: tuple[str, str | None] | None) -> tuple[Tally, list[str]]:
    """Pass 2 into a store reached through the API (an etcd URL): each value
    put with what is left of its TTL, buffered, then flushed (durable)."""
    if fmt == "mdb":
        raise CommandError(f"{args.path!r} is not an LMDB store, and an mdb dump holds LMDB's stored "
                           f"records: load a jsonl dump (`kvstore dump --format jsonl`) instead")
    db = open_writable(args.path, create=True, clock=args.clock)
    try:
        defaults = []
        for s in chosen:
            handle = handle_of(db, s.dest)  # type: ignore[arg-type]  # chosen: dest set
            have, wanted = handle.default_ttl, s.default_ttl / 1000 if s.default_ttl else None
            if wanted and not have:
                handle.set_default_ttl(wanted)
                defaults.append(f"namespace {s.dest!r}: default TTL {wanted:g} s, from the dump")
            elif wanted and have != wanted:
                defaults.append(f"namespace {s.dest!r}: kept its default TTL of {have:g} s (the dump's is "
                                f"{wanted:g} s; change it with set_default_ttl)")
        items = ((dest, key, value, None if expiry is None else expiry[0] / 1000)
                 for _, dest, key, value, expiry in jsonl_records(binary, plan, fields))
        with Progress("load", sum(s.count for s in chosen)) as progress:
            tally = load_records(db, [s.dest for s in chosen], items,  # type: ignore[misc]  # chosen: dest set
                                 not args.no_overwrite, progress)
    finally:
        db.close()
    return tally, defaults


def _load_local(binary: BinaryIO, plan: Plan, chosen: list[Section], args: Args, fmt: str,
                fields: tuple[str, str | None] | None, size: int) -> tuple[_Loader, list[str]]:
    """Pass 2 into a local store: records in synced LMDB transactions."""
    exists = os.path.exists(os.path.join(args.path, "data.mdb"))
    if fmt == "mdb" and not exists and not args.raw:
        with Progress("load: checking records", size, unit="bytes") as progress:
            check_mdb_records(binary, plan, _codec.Codec(), {}, progress)  # set by codec.use()
    db = open_writable(args.path, create=True, clock=args.clock)
    try:
        if fmt == "mdb" and exists and not args.raw:
            with Progress("load: checking records", size, unit="bytes") as progress:
                check_mdb_records(binary, plan, engine.codec_of(db), engine.of(db).dicts.by_id, progress)
        for s in chosen:  # create every destination, even for an empty section
            if s.dest != DEFAULT_NAMESPACE:
                db.namespace(s.dest)  # type: ignore[arg-type]  # chosen: dest set
        defaults = _give_default_ttls(db, chosen)
        with Progress("load", sum(s.count for s in chosen)) as progress:
            loader = _Loader(db, not args.no_overwrite, progress)
            for s in chosen:
                loader.dbi(s.dest)  # type: ignore[arg-type]  # chosen: dest set
            if fmt == "jsonl":
                _load_jsonl(binary, plan, db, loader, fields)
            else:
                _load_mdb(binary, plan, db, loader, _merge_dictionaries(db, plan), args.raw)
            loader.flush()
    finally:
        db.close()
    return loader, defaults


def _give_default_ttls(db: Store, chosen: list[Section]) -> list[str]:
    """Give each destination the default TTL its dump section has, unless it
    has one already; lines saying what was done."""
    lines = []
    env = engine.of(db)
    for s in chosen:
        if not s.default_ttl:
            continue
        have = env.ttl.default(s.dest)  # type: ignore[arg-type]  # chosen: dest set
        if not have:
            env.ttl.set_default(s.dest, s.default_ttl, env.writer)  # type: ignore[arg-type]  # writable
            lines.append(f"namespace {s.dest!r}: default TTL {s.default_ttl / 1000:g} s, from the dump")
        elif have != s.default_ttl:
            lines.append(f"namespace {s.dest!r}: kept its default TTL of {have / 1000:g} s (the dump's is "
                         f"{s.default_ttl / 1000:g} s; change it with set_default_ttl)")
    return lines
