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

from kvstore import codec as _codec
from kvstore.codec import Dictionary
from kvstore.dictionaries import CURRENT_PREFIX, DICT_PREFIX
from kvstore.environment import DEFAULT_NAMESPACE, FORMAT_KEY, META_DB, STORE_FORMAT, check_namespace_name
from kvstore.errors import KVStoreError
from kvstore.store import _check_key

from . import _mdbtext
from ._common import CommandError, Progress, open_writable, plural, quote_key
from ._encoding import TagError, from_json, key_from_json
from ._records import examine
from .dump import JSONL_FORMAT, JSONL_VERSION

__all__ = ["add_parser", "run"]

BATCH_RECORDS = 1000
BATCH_BYTES = 8 << 20
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


@dataclass
class Plan:
    fmt: str
    sections: list
    meta_records: list = field(default_factory=list)  # mdb: (key, value) of __kvstore__
    dump_dicts: dict = field(default_factory=dict)  # id -> (doc bytes, Dictionary)
    dump_current: dict = field(default_factory=dict)  # namespace -> id


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


def _record_from_jsonl(line: str, lineno: int):
    """(key bytes, value) of a jsonl record line."""
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CommandError(f"line {lineno}: not valid JSON ({exc})") from None
    if type(doc) is not dict or "k" not in doc or "v" not in doc:
        raise CommandError(f"line {lineno}: a record line is {{\"k\": KEY, \"v\": VALUE}}")
    try:
        key = key_from_json(doc["k"])
        value = from_json(doc["v"])
    except TagError as exc:
        raise CommandError(f"line {lineno}: {exc}") from None
    try:
        key = _check_key(key)
        _SERIALIZER.serialize(value)  # a value msgpack cannot carry (an int over 64 bits)
    except KVStoreError as exc:
        raise CommandError(f"line {lineno}: {exc}") from None
    return key, value


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
            _close_jsonl_section(current)
            current = Section(len(sections), name, lineno,
                              declared=count if type(count) is int else None)
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
                if len(value) >= 10 and value[1] & 0x04:
                    section.dict_ids.add(int.from_bytes(value[6:10], "little"))
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
        self.env = db._env
        self.overwrite = overwrite
        self.progress = progress
        self.batch: list = []
        self.nbytes = 0
        self.loaded: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self._dbis: dict[str, object] = {}

    def dbi(self, namespace: str):
        dbi = self._dbis.get(namespace)
        if dbi is None:
            dbi = self._dbis[namespace] = self.env.dbi(namespace, create=True)
            self.loaded.setdefault(namespace, 0)
            self.skipped.setdefault(namespace, 0)
        return dbi

    def add(self, namespace: str, key: bytes, record: bytes) -> None:
        self.batch.append((namespace, self.dbi(namespace), key, record))
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
            env.bump_seq(txn)
            return done

        done = env.write(write, "loading")
        for (namespace, _, _, _), put in zip(batch, done):
            if put:
                self.loaded[namespace] += 1
            else:
                self.skipped[namespace] += 1
        self.progress.update(len(batch))
        self.batch, self.nbytes = [], 0


def _load_jsonl(binary, plan: Plan, db, loader: _Loader) -> None:
    codec = db._codec
    dicts = db._env.dicts
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
        key, value = _record_from_jsonl(line, lineno)
        try:
            record = codec.encode(value, dictionary=dicts.for_encoding(dest))
        except KVStoreError as exc:
            raise CommandError(f"line {lineno}: key {quote_key(key)}: {exc}") from None
        loader.add(dest, key, record)


def _merge_dictionaries(db, plan: Plan) -> set:
    """Copy the dump's dictionaries into the store, in one transaction; return
    the ids whose records must be encoded again (the store uses the id for
    another dictionary)."""
    env = db._env
    if not plan.dump_dicts:
        return set()
    wanted_current = {}
    for s in plan.sections:
        did = plan.dump_current.get(s.source)
        if s.dest is not None and did is not None:
            wanted_current[s.dest] = did

    def merge(txn):
        conflicts, changed = set(), False
        for did, (doc, _dictionary) in sorted(plan.dump_dicts.items()):
            key = DICT_PREFIX + _ID.pack(did)
            have = txn.get(key, db=env.meta_db)
            if have is None:
                txn.put(key, doc, db=env.meta_db)
                changed = True
            elif bytes(have) != doc:
                conflicts.add(did)
        for namespace, did in wanted_current.items():
            key = CURRENT_PREFIX + namespace.encode("utf-8")
            if did not in conflicts and txn.get(key, db=env.meta_db) is None:
                txn.put(key, _ID.pack(did), db=env.meta_db)
                changed = True
        if changed:
            env.bump_seq(txn)
        return conflicts

    conflicts = env.write(merge, "copying the dump's dictionaries")
    env.dicts.reload()
    return conflicts


def _load_mdb(binary, plan: Plan, db, loader: _Loader, conflicts: set) -> None:
    """Pass 2 for mdb: the records as they are (pass 1 checked them), except
    those compressed with a dump dictionary whose id the store uses for
    another: decoded with the dump's and encoded again with the store's."""
    codec = db._codec
    env = db._env
    dump_dicts = {did: d for did, (_, d) in plan.dump_dicts.items()}
    sections = iter(plan.sections)
    dest = None
    for event in _mdbtext.parse(_lines(binary)):
        kind = event[0]
        if kind == "section":
            dest = None if event[1] == META_DB else next(sections).dest
        elif kind == "record" and dest is not None:
            _, key, record, _lineno = event
            if conflicts and len(record) >= 10 and int.from_bytes(record[6:10], "little") in conflicts:
                value = codec.decode(record, dictionaries=dump_dicts)
                record = codec.encode(value, dictionary=env.dicts.for_encoding(dest))
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
                _check_key(key)
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
        db = open_writable(args.path, create=True)
        try:
            if fmt == "mdb" and exists:
                _check_mdb_records(binary, plan, db._codec, db._env.dicts.by_id)
            for s in chosen:  # create every destination, even for an empty section
                if s.dest != DEFAULT_NAMESPACE:
                    db.namespace(s.dest)
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
        out.write(line + "\n")
    return 0
