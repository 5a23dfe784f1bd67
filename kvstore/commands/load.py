"""`kvstore load PATH`: load a dump made by `kvstore dump` (jsonl or mdb) or by
LMDB's `mdb_dump -a`, into a new or existing store.

The input is read twice: a first pass checks all of it (structure, counts,
keys, namespaces; for mdb each record's header and checksum, and that every
dictionary a record names is in the dump or the store) before anything is
written, so a truncated or damaged dump is refused whole. The second pass
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

import io
import json
import os
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass, field

import msgpack

from kvstore import engine
from kvstore import codec as _codec
from kvstore import ttl
from kvstore.codec import Dictionary
from kvstore.codec.format import TTL_HEADER_SIZE, TTL_VERSION, inner_record, parse_ttl, wrap_ttl
from kvstore.layout import (CURRENT_PREFIX, DEFAULT_NAMESPACE, DICT_PREFIX, FORMAT_KEY, META_DB, STORE_FORMAT,
                            TTL_PREFIX, check_key, check_namespace_name)
from kvstore.errors import KVStoreError
from kvstore.options import LOAD_BATCH_BYTES, LOAD_BATCH_RECORDS
from kvstore.writer import Group

from . import _mdbtext
from ._common import CommandError, Progress, now_of, open_writable, plural, quote_key
from ._encoding import TagError, from_json, key_from_json
from ._records import examine, inner_dict_id
from .dump import JSONL_FORMAT, JSONL_VERSION

__all__ = ["add_parser", "run"]

BATCH_RECORDS, BATCH_BYTES = LOAD_BATCH_RECORDS, LOAD_BATCH_BYTES  # tunables (options.py)
_ID = struct.Struct(">I")
_SERIALIZER = _codec.get_backend("python").Codec()  # checks that values can be stored


def add_parser(subparsers):
    p = subparsers.add_parser(
        "load", help="load a dump (jsonl, or mdb_dump's format) into a store",
        description="Load a dump into the store at PATH (created if missing). The whole input is "
                    "checked before anything is written. Without -n every section goes to the "
                    "namespace it names; with -n NS, a dump of one namespace is loaded into NS, "
                    "and from a dump of several only the section named NS is loaded.")
    p.add_argument("path", help="store directory (created if missing)")
    p.add_argument("-i", "--input", metavar="FILE", help="read FILE instead of stdin")
    p.add_argument("-n", "--namespace", help="destination namespace (see above)")
    p.add_argument("--format", choices=("jsonl", "mdb"),
                   help="input format (default: recognised from the first line)")
    p.add_argument("--no-overwrite", action="store_true", help="keep the value of keys the store already holds")
    return p


@dataclass
class Section:
    index: int
    source: str  # the namespace the dump names ("default" for the main database)
    line: int
    raw_name: bytes | None = None  # mdb: the database= name as bytes
    count: int = 0
    declared: int | None = None  # jsonl: the header's count
    dict_ids: set = field(default_factory=set)
    dest: str | None = None  # the namespace it is loaded into; None: skipped
    printable: bool = False  # mdb: format=print
    default_ttl: int = 0  # ms: the namespace's default TTL in the dump (0: none)


@dataclass
class Plan:
    fmt: str
    sections: list
    meta_records: list = field(default_factory=list)  # mdb: (key, value) of __kvstore__
    dump_dicts: dict = field(default_factory=dict)  # id -> (doc bytes, Dictionary)
    dump_current: dict = field(default_factory=dict)  # namespace -> id
    dump_ttl: dict = field(default_factory=dict)  # mdb: namespace -> default TTL in ms (ttl: keys)


# ---------------------------------------------------------------- input


def _open_input(path):
    """A seekable binary file of the input (stdin or a pipe is spooled to a
    temporary file, since the input is read twice)."""
    if path is not None and path != "-":
        f = open(path, "rb")
        if f.seekable():
            return f
        source, close = f, True
    else:
        source, close = sys.stdin.buffer, False
    spool = tempfile.TemporaryFile()
    try:
        shutil.copyfileobj(source, spool, 1 << 20)
    finally:
        if close:
            source.close()
    spool.seek(0)
    return spool


def _lines(binary):
    """The lines of the input from its start, as text (bytes that are not
    UTF-8 kept as surrogate escapes)."""
    binary.seek(0)
    text = io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape", newline="\n")
    try:
        yield from text
    finally:
        try:
            text.detach()  # leave the file open for the next pass
        except ValueError:
            pass  # the file was closed already (the load stopped on an error)


def _detect(binary) -> str:
    binary.seek(0)
    for raw in binary:
        line = raw.strip()
        if not line:
            continue
        if line.startswith(b"VERSION="):
            return "mdb"
        if line.startswith(b"{"):
            return "jsonl"
        raise CommandError(f"the input is neither a jsonl dump nor mdb_dump text (it starts with "
                           f"{line[:30]!r}); give --format")
    raise CommandError("the input is empty")


# ---------------------------------------------------------------- pass 1


def _seconds(doc, name: str, lineno: int) -> int:
    """A time field of a jsonl line (seconds, a JSON number) in ms."""
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 2**53 / 1000:
        raise CommandError(f"line {lineno}: {name} must be a positive number of seconds, not {value!r}")
    return max(1, round(value * 1000))


def _record_from_jsonl(line: str, lineno: int):
    """(key bytes, value, expiry) of a jsonl record line: expiry is None, or
    (expires_ms, ttl_ms) from its expires_at and ttl."""
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CommandError(f"line {lineno}: not valid JSON ({exc})") from None
    if type(doc) is not dict or "k" not in doc or "v" not in doc:
        raise CommandError(f"line {lineno}: a record line is {{\"k\": KEY, \"v\": VALUE}}")
    expiry = None
    if "expires_at" in doc or "ttl" in doc:
        expiry = (_seconds(doc, "expires_at", lineno), _seconds(doc, "ttl", lineno))
    try:
        key = key_from_json(doc["k"])
        value = from_json(doc["v"])
    except TagError as exc:
        raise CommandError(f"line {lineno}: {exc}") from None
    try:
        key = check_key(key)
        _SERIALIZER.serialize(value)  # a value msgpack cannot carry (an int over 64 bits)
    except KVStoreError as exc:
        raise CommandError(f"line {lineno}: {exc}") from None
    return key, value, expiry


def _header(line: str, lineno: int):
    """The header document of a jsonl header line, or None for a record line."""
    if line.lstrip().startswith('{"k":'):
        return None
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CommandError(f"line {lineno}: not valid JSON ({exc})") from None
    return doc if type(doc) is dict and "kvstore" in doc else None


def _scan_jsonl(binary) -> Plan:
    sections: list[Section] = []
    current = None
    for lineno, line in enumerate(_lines(binary), 1):
        if not line.strip():
            continue
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            raise CommandError(f"line {lineno}: not UTF-8 text") from None
        doc = _header(line, lineno)
        if doc is not None:
            if doc.get("kvstore") != JSONL_FORMAT:
                raise CommandError(f"line {lineno}: a header line of an unknown format ({doc.get('kvstore')!r})")
            version = doc.get("version")
            if type(version) is not int or version > JSONL_VERSION:
                raise CommandError(f"line {lineno}: jsonl dump version {version!r}; this kvstore reads "
                                   f"version {JSONL_VERSION} (upgrade kvstore)")
            name = doc.get("namespace")
            if type(name) is not str:
                raise CommandError(f"line {lineno}: the header names no namespace")
            count = doc.get("count")
            default_ttl = 0
            if doc.get("default_ttl") is not None:
                default_ttl = _seconds(doc, "default_ttl", lineno)
            _close_jsonl_section(current)
            current = Section(len(sections), name, lineno,
                              declared=count if type(count) is int else None, default_ttl=default_ttl)
            sections.append(current)
            continue
        if current is None:  # a file of records without a header: one section
            current = Section(0, DEFAULT_NAMESPACE, lineno)
            sections.append(current)
        _record_from_jsonl(line, lineno)
        current.count += 1
    _close_jsonl_section(current)
    return Plan("jsonl", sections)


def _close_jsonl_section(section) -> None:
    if section is not None and section.declared is not None and section.declared != section.count:
        raise CommandError(
            f"line {section.line}: the section of namespace {section.source!r} declares "
            f"{section.declared} records but holds {section.count}: the dump is truncated or edited")


def _scan_mdb(binary) -> Plan:
    plan = Plan("mdb", [])
    section = None
    meta = False
    try:
        for event in _mdbtext.parse(_lines(binary)):
            kind = event[0]
            if kind == "section":
                _, name, header, lineno = event
                meta = name == META_DB
                if not meta:
                    try:
                        source = DEFAULT_NAMESPACE if name is None else name.decode("utf-8")
                    except UnicodeDecodeError:
                        source = name.decode("utf-8", "replace")
                    section = Section(len(plan.sections), source, lineno, raw_name=name,
                                      printable=header.get("format") == "print")
                    plan.sections.append(section)
            elif kind == "record":
                _, key, value, lineno = event
                if meta:
                    plan.meta_records.append((key, value))
                    continue
                section.count += 1
                dict_id = inner_dict_id(value)
                if dict_id:
                    section.dict_ids.add(dict_id)
    except _mdbtext.MdbFormatError as exc:
        raise CommandError(f"not mdb_dump text: {exc}") from None
    _read_meta(plan)
    return plan


def _read_meta(plan: Plan) -> None:
    """The dump's store format and dictionaries, from its __kvstore__ section."""
    for key, value in plan.meta_records:
        if key == FORMAT_KEY:
            try:
                version = int(value)
            except ValueError:
                raise CommandError(f"the dump's {META_DB.decode()} section has a damaged "
                                   f"format_version {value!r}") from None
            if version > STORE_FORMAT:
                raise CommandError(f"the dump was made from a store of format {version}; this kvstore "
                                   f"reads format {STORE_FORMAT} (upgrade kvstore)")
        elif key.startswith(DICT_PREFIX) and len(key) == len(DICT_PREFIX) + 4:
            (did,) = _ID.unpack(key[len(DICT_PREFIX):])
            try:
                doc = msgpack.unpackb(value, raw=False)
                dictionary = Dictionary(did, doc["data"])
                if not isinstance(doc["data"], bytes) or not isinstance(doc["namespace"], str):
                    raise TypeError("not a dictionary entry")
            except Exception as exc:  # msgpack, KeyError, TypeError, ValueError
                raise CommandError(f"dictionary {did} in the dump is damaged "
                                   f"({type(exc).__name__}: {exc})") from None
            plan.dump_dicts[did] = (value, dictionary)
        elif key.startswith(CURRENT_PREFIX) and len(value) == 4:
            plan.dump_current[key[len(CURRENT_PREFIX):].decode("utf-8", "replace")] = _ID.unpack(value)[0]
        elif key.startswith(TTL_PREFIX) and ttl.ttl_of(value):
            plan.dump_ttl[key[len(TTL_PREFIX):].decode("utf-8", "replace")] = ttl.ttl_of(value)
    for s in plan.sections:
        s.default_ttl = plan.dump_ttl.get(s.source, 0)


# ---------------------------------------------------------------- where each section goes


def _route(plan: Plan, namespace: str | None) -> None:
    sections = plan.sections
    if namespace is not None:
        if len(sections) == 1:
            sections[0].dest = namespace
        else:
            chosen = [s for s in sections if s.source == namespace]
            if not chosen:
                names = ", ".join(repr(s.source) for s in sections) or "none"
                raise CommandError(f"-n {namespace!r}: the dump holds several namespaces ({names}) "
                                   f"and none of them is {namespace!r}")
            for s in chosen:
                s.dest = namespace
    else:
        for s in sections:
            s.dest = s.source
    for s in sections:
        if s.dest is None or s.dest == DEFAULT_NAMESPACE:
            continue
        if s.raw_name is not None and s.dest == s.source and s.raw_name != s.source.encode("utf-8"):
            raise CommandError(f"line {s.line}: database {s.raw_name!r} has a name that is not UTF-8; "
                               f"load it alone under a namespace name with -n")
        try:
            check_namespace_name(s.dest)
        except KVStoreError as exc:
            hint = "; load it under another name with -n" if namespace is None else ""
            raise CommandError(f"line {s.line}: the dump's namespace {s.source!r}: {exc}{hint}") from None


# ---------------------------------------------------------------- pass 2


class _Loader:
    """Writes (namespace, key, record) in synced transactions of BATCH_RECORDS."""

    def __init__(self, db, overwrite: bool, progress: Progress):
        self.db = db
        self.env = engine.of(db)
        self.overwrite = overwrite
        self.progress = progress
        self.batch: list = []
        self.nbytes = 0
        self.loaded: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.expired: dict[str, int] = {}
        self.now = now_of(db)  # one judgement of expiry for the whole load
        self._dbis: dict[str, object] = {}

    def dbi(self, namespace: str):
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
                self.env.writer.submit(Group([], True, 0, before=step))
        self.batch.append((namespace, dbi, key, record))
        self.nbytes += len(record)
        if len(self.batch) >= BATCH_RECORDS or self.nbytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        batch, overwrite, env = self.batch, self.overwrite, self.env
        if not batch:
            return

        def write(txn):  # replayed from the start if the map must grow
            done = []
            for namespace, dbi, key, record in batch:
                done.append(txn.put(key, record, db=dbi, overwrite=overwrite))
            return done

        done = env.writer.run(write, count=True)  # a commit of the writer's, in order with any other
        for (namespace, _, _, _), put in zip(batch, done):
            if put:
                self.loaded[namespace] += 1
            else:
                self.skipped[namespace] += 1
        self.progress.update(len(batch))
        self.batch, self.nbytes = [], 0


def _load_jsonl(binary, plan: Plan, db, loader: _Loader) -> None:
    codec = engine.codec_of(db)
    dicts = engine.of(db).dicts
    dest = None
    section_iter = iter(plan.sections)
    started = False
    for lineno, line in enumerate(_lines(binary), 1):
        if not line.strip():
            continue
        if _header(line, lineno) is not None:
            dest = next(section_iter).dest
            started = True
            continue
        if not started:
            dest = next(section_iter).dest
            started = True
        if dest is None:
            continue
        key, value, expiry = _record_from_jsonl(line, lineno)
        try:
            record = codec.encode(value, dictionary=dicts.for_encoding(dest))
        except KVStoreError as exc:
            raise CommandError(f"line {lineno}: key {quote_key(key)}: {exc}") from None
        if expiry is not None:
            record = wrap_ttl(record, *expiry)
        loader.add(dest, key, record)


def _merge_dictionaries(db, plan: Plan) -> set:
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

    def merge(txn):
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

    conflicts = env.writer.run(merge, count=True)
    env.dicts.reload()
    return conflicts


def _load_mdb(binary, plan: Plan, db, loader: _Loader, conflicts: set) -> None:
    """Pass 2 for mdb: the records as they are (pass 1 checked them), except
    those compressed with a dump dictionary whose id the store uses for
    another: decoded with the dump's and encoded again with the store's."""
    codec = engine.codec_of(db)
    env = engine.of(db)
    dump_dicts = {did: d for did, (_, d) in plan.dump_dicts.items()}
    sections = iter(plan.sections)
    dest = None
    for event in _mdbtext.parse(_lines(binary)):
        kind = event[0]
        if kind == "section":
            dest = None if event[1] == META_DB else next(sections).dest
        elif kind == "record" and dest is not None:
            _, key, record, _lineno = event
            if conflicts and inner_dict_id(record) in conflicts:
                value = codec.decode(inner_record(record), dictionaries=dump_dicts)
                prefix = record[:TTL_HEADER_SIZE] if record[0] == TTL_VERSION else b""  # kept as it is
                record = prefix + codec.encode(value, dictionary=env.dicts.for_encoding(dest))
            loader.add(dest, key, record)


def _check_mdb_records(binary, plan: Plan, codec, store_dicts: dict) -> None:
    """Pass 1 for mdb, the part that needs the dictionaries: every record's
    header and checksum, and every dictionary id known."""
    known = set(store_dicts) | set(plan.dump_dicts)
    for s in plan.sections:
        missing = s.dict_ids - known if s.dest is not None else set()
        if missing:
            raise CommandError(
                f"namespace {s.source!r} of the dump has records compressed with dictionaries "
                f"{sorted(missing)}, which neither the dump nor the store holds (dump the "
                f"{META_DB.decode()} database along: `mdb_dump -a` or `kvstore dump --format mdb`)")
    sections = iter(plan.sections)
    section = None
    dictionaries = dict.fromkeys(known)
    for event in _mdbtext.parse(_lines(binary)):
        if event[0] == "section":
            section = None if event[1] == META_DB else next(sections)
        elif event[0] == "record" and section is not None and section.dest is not None:
            _, key, record, lineno = event
            try:
                check_key(key)
            except KVStoreError as exc:
                raise CommandError(f"line {lineno}: {exc}") from None
            ex = examine(record, codec, dictionaries, decode=False)
            if ex.problem is not None:
                hint = ""
                if section.printable:
                    hint = ("; this is a format=print dump, where LMDB 0.9.24's mdb_dump -p leaves "
                            "backslashes unescaped: dump without -p")
                raise CommandError(f"line {lineno}: the record of key {quote_key(key)} is not a valid "
                                   f"kvstore record ({ex.problem}); nothing was loaded{hint}")


def run(args, out) -> int:
    binary = _open_input(args.input)
    try:
        fmt = args.format or _detect(binary)
        plan = _scan_jsonl(binary) if fmt == "jsonl" else _scan_mdb(binary)
        _route(plan, args.namespace)
        chosen = [s for s in plan.sections if s.dest is not None]
        exists = os.path.exists(os.path.join(args.path, "data.mdb"))
        if fmt == "mdb" and not exists:
            _check_mdb_records(binary, plan, _codec.Codec(), {})
        db = open_writable(args.path, create=True, clock=args.clock)
        try:
            if fmt == "mdb" and exists:
                _check_mdb_records(binary, plan, engine.codec_of(db), engine.of(db).dicts.by_id)
            for s in chosen:  # create every destination, even for an empty section
                if s.dest != DEFAULT_NAMESPACE:
                    db.namespace(s.dest)
            defaults = _give_default_ttls(db, chosen)
            with Progress("load", sum(s.count for s in chosen)) as progress:
                loader = _Loader(db, not args.no_overwrite, progress)
                for s in chosen:
                    loader.dbi(s.dest)
                if fmt == "jsonl":
                    _load_jsonl(binary, plan, db, loader)
                else:
                    _load_mdb(binary, plan, db, loader, _merge_dictionaries(db, plan))
                loader.flush()
        finally:
            db.close()
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


def _give_default_ttls(db, chosen) -> list[str]:
    """Give each destination the default TTL its dump section has, unless it
    has one already; lines saying what was done."""
    lines = []
    env = engine.of(db)
    for s in chosen:
        if not s.default_ttl:
            continue
        have = env.ttl.default(s.dest)
        if not have:
            env.ttl.set_default(s.dest, s.default_ttl, env.writer)
            lines.append(f"namespace {s.dest!r}: default TTL {s.default_ttl / 1000:g} s, from the dump")
        elif have != s.default_ttl:
            lines.append(f"namespace {s.dest!r}: kept its default TTL of {have / 1000:g} s (the dump's is "
                         f"{s.default_ttl / 1000:g} s; change it with set_default_ttl)")
    return lines
