"""Pass 1 of `kvstore load` (commands/load.py): the input read and checked
whole before anything is written, into a `Plan`.

The input (a file, or stdin spooled to a temporary file: it is read twice)
is recognised as a jsonl dump of `kvstore dump` or as mdb_dump text
(`_mdbtext`). A jsonl dump's headers and record lines are parsed and
checked (keys, values msgpack can carry, time fields, declared counts); an
mdb dump's sections are counted, its `__kvstore__` section read (store
format, dictionaries, current dictionaries, default TTLs) and, once the
destination's dictionaries are known, every record's header and checksum
checked (`check_mdb_records`). `route` decides which namespace each section
goes to. Pass 2, in load.py, reads the input again through `input_lines`,
`jsonl_header` and `record_from_jsonl`.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Iterator

import msgpack

from kvstore import codec as _codec
from kvstore import ttl
from kvstore.codec import Dictionary
from kvstore.layout import (CURRENT_PREFIX, DEFAULT_NAMESPACE, DICT_PREFIX, FORMAT_KEY, META_DB, STORE_FORMAT,
                            TTL_PREFIX, check_key, check_namespace_name)
from kvstore.errors import KVStoreError

from . import _mdbtext
from ._common import CommandError, quote_key
from ._encoding import TagError, from_json, key_from_json
from ._records import examine, inner_dict_id
from .dump import JSONL_FORMAT, JSONL_VERSION

if TYPE_CHECKING:
    from ._common import Progress

# (key bytes, value, expiry: None or (expires_ms, ttl_ms)) of one input record
Record = tuple[bytes, Any, "tuple[int, int] | None"]

__all__ = ["Section", "Plan", "DICT_ID", "open_input", "input_lines", "detect_format", "record_from_jsonl",
           "record_from_object", "jsonl_header", "scan_jsonl", "scan_objects", "scan_mdb", "route",
           "check_mdb_records"]

DICT_ID = struct.Struct(">I")  # a dictionary id, in the keys and values of the metadata database
_SERIALIZER = _codec.get_backend("python").Codec()  # checks that values can be stored


@dataclass
class Section:
    index: int
    source: str  # the namespace the dump names ("default" for the main database)
    line: int
    raw_name: bytes | None = None  # mdb: the database= name as bytes
    count: int = 0
    declared: int | None = None  # jsonl: the header's count
    dict_ids: set[int] = field(default_factory=set)
    dest: str | None = None  # the namespace it is loaded into; None: skipped
    printable: bool = False  # mdb: format=print
    default_ttl: int = 0  # ms: the namespace's default TTL in the dump (0: none)


@dataclass
class Plan:
    fmt: str
    sections: list[Section]
    meta_records: list[tuple[bytes, bytes]] = field(default_factory=list)  # mdb: (key, value) of __kvstore__
    dump_dicts: dict[int, tuple[bytes, Dictionary]] = field(default_factory=dict)  # id -> (doc bytes, Dictionary)
    dump_current: dict[str, int] = field(default_factory=dict)  # namespace -> id
    dump_ttl: dict[str, int] = field(default_factory=dict)  # mdb: namespace -> default TTL in ms (ttl: keys)


# ---------------------------------------------------------------- input


def open_input(path: str | None) -> BinaryIO:
    """A seekable binary file of the input (stdin or a pipe is spooled to a
    temporary file, since the input is read twice)."""
    if path is not None and path != "-":
        f = open(path, "rb")
        if f.seekable():
            return f
        source: Any = f
        close = True
    else:
        source, close = sys.stdin.buffer, False
    try:
        spool = tempfile.TemporaryFile()
        try:
            shutil.copyfileobj(source, spool, 1 << 20)
        except OSError:
            spool.close()
            raise
    except OSError as exc:
        if exc.filename is not None:  # reading the input (a named pipe): its own name
            raise
        raise CommandError(
            f"cannot keep a copy of the input ({'stdin' if path in (None, '-') else path}) in the "
            f"temporary directory {tempfile.gettempdir()!r} ({exc.strerror or exc}), which load needs "
            f"to read it twice; point TMPDIR at a file system with room, or give the input as a file "
            f"with -i FILE") from None
    finally:
        if close:
            source.close()
    spool.seek(0)
    return spool


def input_lines(binary: BinaryIO, progress: Progress | None = None) -> Iterator[str]:
    """The lines of the input from its start, as text (bytes that are not
    UTF-8 kept as surrogate escapes). progress: a Progress in bytes, set to
    how far the input has been read."""
    binary.seek(0)
    text = io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape", newline="\n")
    try:
        if progress is None:
            yield from text
        else:
            for n, line in enumerate(text):
                if not n & 0x3FF:
                    progress.set(binary.tell())
                yield line
            progress.set(binary.tell())
    finally:
        try:
            text.detach()  # leave the file open for the next pass
        except ValueError:
            pass  # the file was closed already (the load stopped on an error)


def detect_format(binary: BinaryIO) -> str:
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


def _seconds(doc: dict[str, Any], name: str, lineno: int) -> int:
    """A time field of a jsonl line (seconds, a JSON number) in ms."""
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 2**53 / 1000:
        raise CommandError(f"line {lineno}: {name} must be a positive number of seconds, not {value!r}")
    return max(1, round(value * 1000))


def record_from_jsonl(line: str, lineno: int) -> Record:
    """(key bytes, value, expiry) of a jsonl record line: expiry is None, or
    (expires_ms, ttl_ms) from its expires_at and ttl."""
    doc = _json_line(line, lineno)
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


def record_from_object(line: str, lineno: int, key_field: str, value_field: str | None) -> Record:
    """(key bytes, value, None) of a JSON line as other tools write them: an
    object whose member key_field is the key (a string, or an integer taken
    as its decimal text) and whose member value_field is the value (None:
    the whole object is). Plain JSON: numbers keep their type (1.0 stays a
    float), and no member is a kvstore tag ($bytes, $map)."""
    doc = _json_line(line, lineno)
    if type(doc) is not dict:
        raise CommandError(f"line {lineno}: --key takes lines that are JSON objects, not a "
                           f"{type(doc).__name__}")
    if key_field not in doc:
        raise CommandError(f"line {lineno}: no member {key_field!r} (--key) in this object; its members: "
                           f"{', '.join(map(repr, list(doc)[:8]))}")
    key = doc[key_field]
    if type(key) is int:
        key = str(key)
    if type(key) is not str:
        raise CommandError(f"line {lineno}: member {key_field!r} (--key) is a {type(key).__name__}; a key "
                           f"is a string or an integer")
    if value_field is None:
        value = doc
    elif value_field in doc:
        value = doc[value_field]
    else:
        raise CommandError(f"line {lineno}: no member {value_field!r} (--value) in this object")
    try:
        key = check_key(key)
        _SERIALIZER.serialize(value)  # a value msgpack cannot carry (an int over 64 bits)
    except KVStoreError as exc:
        raise CommandError(f"line {lineno}: {exc}") from None
    return key, value, None


def text_lines(binary: BinaryIO, progress: Progress | None = None) -> Iterator[tuple[int, str]]:
    """(line number, line) of the input's lines that are not blank, each
    checked to be UTF-8 text."""
    for lineno, line in enumerate(input_lines(binary, progress), 1):
        if not line.strip():
            continue
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            raise CommandError(f"line {lineno}: not UTF-8 text") from None
        yield lineno, line


def _json_line(line: str, lineno: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise CommandError(f"line {lineno}: not valid JSON ({exc})") from None


def scan_objects(binary: BinaryIO, key_field: str, value_field: str | None,
                 progress: Progress | None = None) -> Plan:
    """Pass 1 of JSON lines from other tools (--key): one section, for the
    default namespace (or -n), every line checked."""
    section = Section(0, DEFAULT_NAMESPACE, 1)
    for lineno, line in text_lines(binary, progress):
        record_from_object(line, lineno, key_field, value_field)
        section.count += 1
    return Plan("jsonl", [section])


def jsonl_header(line: str, lineno: int) -> dict[str, Any] | None:
    """The header document of a jsonl header line, or None for a record line."""
    if line.lstrip().startswith('{"k":'):
        return None
    doc = _json_line(line, lineno)
    return doc if type(doc) is dict and "kvstore" in doc else None


def scan_jsonl(binary: BinaryIO, progress: Progress | None = None) -> Plan:
    sections: list[Section] = []
    current = None
    for lineno, line in text_lines(binary, progress):
        doc = jsonl_header(line, lineno)
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
        record_from_jsonl(line, lineno)
        current.count += 1
    _close_jsonl_section(current)
    return Plan("jsonl", sections)


def _close_jsonl_section(section: Section | None) -> None:
    if section is not None and section.declared is not None and section.declared != section.count:
        raise CommandError(
            f"line {section.line}: the section of namespace {section.source!r} declares "
            f"{section.declared} records but holds {section.count}: the dump is truncated or edited")


def scan_mdb(binary: BinaryIO, raw: bool = False, progress: Progress | None = None) -> Plan:
    """Pass 1 for mdb. raw: the dump of an LMDB environment that is not a
    kvstore store (load --raw): its values are bytes to store as they are,
    with no kvstore record to check; its keys are checked here."""
    plan = Plan("mdb", [])
    section: Any = None  # a Section after the first "section" event
    meta = False
    try:
        for event in _mdbtext.parse(input_lines(binary, progress)):
            kind = event[0]
            if kind == "section":
                _, name, header, lineno = event
                meta = name == META_DB
                if meta and raw:
                    raise CommandError(f"line {lineno}: the dump holds the {META_DB.decode()} database: "
                                       f"it is a kvstore store's; load it without --raw")
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
                if raw:
                    try:
                        check_key(key)
                    except KVStoreError as exc:
                        raise CommandError(f"line {lineno}: {exc}") from None
                    continue
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
            (did,) = DICT_ID.unpack(key[len(DICT_PREFIX):])
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
            plan.dump_current[key[len(CURRENT_PREFIX):].decode("utf-8", "replace")] = DICT_ID.unpack(value)[0]
        elif key.startswith(TTL_PREFIX) and ttl.ttl_of(value):
            plan.dump_ttl[key[len(TTL_PREFIX):].decode("utf-8", "replace")] = ttl.ttl_of(value)
    for s in plan.sections:
        s.default_ttl = plan.dump_ttl.get(s.source, 0)


# ---------------------------------------------------------------- where each section goes


def route(plan: Plan, namespace: str | None) -> None:
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


# ---------------------------------------------------------------- pass 1, mdb: the records


def check_mdb_records(binary: BinaryIO, plan: Plan, codec: Any, store_dicts: dict[int, Dictionary],
                      progress: Progress | None = None) -> None:
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
    dictionaries: Any = dict.fromkeys(known)
    for event in _mdbtext.parse(input_lines(binary, progress)):
        if event[0] == "section":
            section = None if event[1] == META_DB else next(sections)
        elif event[0] == "record" and section is not None and section.dest is not None:
            _, key, record, lineno = event
            try:
                check_key(key)
            except KVStoreError as exc:
                raise CommandError(f"line {lineno}: {exc}") from None
            ex = examine(record, codec, dictionaries, decode=False, key=key)
            if ex.problem is not None:
                hint = ""
                if section.printable:
                    hint = ("; this is a format=print dump, where LMDB 0.9.24's mdb_dump -p leaves "
                            "backslashes unescaped: dump without -p")
                raise CommandError(f"line {lineno}: the record of key {quote_key(key)} is not a valid "
                                   f"kvstore record ({ex.problem}); nothing was loaded{hint}")
