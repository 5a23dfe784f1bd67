"""`kvstore dump PATH`: every record of a store (or of one namespace) as text,
from one read transaction (a consistent snapshot, even while others write).

Formats (docs/cli.md has the details):

- jsonl: per namespace, a header line then one line per record, with the
  tagged JSON encoding of `_encoding`; lossless, readable, decoded values,
  with the expiry of those that have a TTL (expired values are left out).
- mdb: the text format of LMDB's mdb_dump, the stored records verbatim; with
  all namespaces it is what `mdb_dump -a` writes, `__kvstore__` included, so
  `mdb_load -f FILE DIR` makes a kvstore store of it.
"""

from __future__ import annotations

from kvstore import engine
from kvstore.codec.format import TTL_VERSION, inner_record, parse_ttl
from kvstore.layout import META_DB
from kvstore.errors import CorruptionError, FormatError

from . import _mdbtext
from ._common import CommandError, Progress, namespace_dbi, namespace_handle, now_of, open_readonly, plural, quote_key
from ._encoding import dumps, key_to_json, to_json
from ._output import AtomicOutput
from ._portable import dump_jsonl, handle_of, is_local
from ._records import namespaces, snapshot_meta

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import lmdb

    from kvstore.engine import Engine
    from kvstore.store import Store

    Write = Callable[[str], Any]
    Sections = list[tuple[str, Any]]
    from ._common import Args, Out, Parser, Subparsers

__all__ = ["add_parser", "run", "JSONL_FORMAT", "JSONL_VERSION"]

JSONL_FORMAT = "kvstore-jsonl"
# 2: a section may carry TTLs (a header's default_ttl, a record's expires_at
# and ttl). A section without them is written as version 1, which kvstore
# versions without TTL read.
JSONL_VERSION = 2


def add_parser(subparsers: Subparsers) -> Parser:
    p = subparsers.add_parser(
        "dump", help="write every record as text (jsonl, or mdb_dump's format)",
        description="Write the records of every namespace (or of one, with -n) as text, from one "
                    "consistent snapshot. jsonl: per namespace a header line {kvstore, version, namespace, "
                    "count, default_ttl}, then a line {k, v, expires_at, ttl} per record, values in the "
                    "tagged encoding of `kvstore --help` (lossless); expired values are left out. mdb: the stored records verbatim in "
                    "the format of LMDB's mdb_dump (-a style with all namespaces, the __kvstore__ "
                    "metadata included).")
    p.add_argument("path", help="store directory, or etcd://HOST:PORT[,...]/PREFIX")
    p.add_argument("-n", "--namespace", help="only this namespace (default: all)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (atomically) instead of stdout")
    p.add_argument("--format", choices=("jsonl", "mdb"), default="jsonl", help="jsonl (default) or mdb")
    return p


def _damaged(key: bytes | memoryview, name: str, exc: Exception) -> CorruptionError:
    return CorruptionError(
        f"cannot dump key {quote_key(key)} of namespace {name!r}: {getattr(exc, 'reason', exc)}; "
        f"`kvstore check` lists every damaged record, and `--format mdb` dumps the stored bytes as "
        f"they are")


def _expiry(key: bytes | memoryview, name: str, record: bytes | memoryview) -> tuple[int, int] | None:
    """(expires_ms, ttl_ms) of a stored record, or None without a TTL."""
    if not len(record) or record[0] != TTL_VERSION:
        return None
    try:
        return parse_ttl(record)
    except CorruptionError as exc:
        raise _damaged(key, name, exc) from None


def _dump_jsonl(txn: lmdb.Transaction, env: Engine, codec: Any, sections: Sections, write: Write,
                progress: Progress, now: int) -> int:
    meta = snapshot_meta(txn, env)
    dictionaries = meta.dictionaries
    total = 0
    for name, dbi in sections:
        count = with_ttl = 0
        if dbi is not None:  # a first pass, reading headers only: the count of what is written
            for key, record in txn.cursor(db=dbi):
                expiry = _expiry(key, name, record)
                count += expiry is None or expiry[0] > now
                with_ttl += expiry is not None
        header = {"kvstore": JSONL_FORMAT, "version": 1, "namespace": name, "count": count}
        default = meta.ttl_defaults.get(name)
        if default:
            header["default_ttl"] = default / 1000
        if default or with_ttl:
            header["version"] = 2
        write(dumps(header, compact=True) + "\n")
        if dbi is None:
            continue
        for key, record in txn.cursor(db=dbi):
            expiry = _expiry(key, name, record)
            if expiry is not None and expiry[0] <= now:
                continue
            try:
                value = codec.decode(inner_record(record), dictionaries=dictionaries, key=bytes(key))
            except (CorruptionError, FormatError) as exc:
                raise _damaged(key, name, exc) from None
            line = {"k": key_to_json(key), "v": to_json(value)}
            if expiry is not None:
                line["expires_at"], line["ttl"] = expiry[0] / 1000, expiry[1] / 1000
            write(dumps(line, compact=True) + "\n")
            progress.update()
            total += 1
    return total


def _dump_mdb(txn: lmdb.Transaction, env: Engine, sections: Sections, write: Write, progress: Progress) -> int:
    info = env.lmdb.info()
    total = 0
    for name, dbi in sections:
        if dbi is None:
            continue
        psize = txn.stat(dbi)["psize"]
        _mdbtext.write_header(write, name.encode("utf-8"), info["map_size"], info["max_readers"], psize)
        record_text = _mdbtext.record_text
        counted = dbi is not env.meta_db
        for key, record in txn.cursor(db=dbi):
            write(record_text(key, record))
            if counted:
                progress.update()
                total += 1
        write(_mdbtext.END)
    return total


def _run_portable(db: Store[Any], args: Args, write: Write) -> tuple[int, list[str]]:
    """dump through the Store API (an etcd URL): jsonl only."""
    if args.format == "mdb":
        raise CommandError(f"--format mdb writes LMDB's stored records, and {args.path!r} is not an LMDB "
                           f"store; use --format jsonl (the default), which `kvstore load` reads into "
                           f"either engine")
    names = [namespace_handle(db, args.namespace).name] if args.namespace is not None else db.namespaces()
    with Progress("dump", sum(len(handle_of(db, name)) for name in names)) as progress:
        return dump_jsonl(db, names, write, progress), names


def run(args: Args, out: Out) -> int:
    with open_readonly(args.path, clock=args.clock) as db:
        if not is_local(db):
            if args.output is None:
                _run_portable(db, args, out.write)
                out.flush()
                return 0
            with AtomicOutput(args.output) as f:
                n, names = _run_portable(db, args, f.write)
            sections: Sections = [(name, None) for name in names]
            return _report(args, out, n, sections)
        env = engine.of(db)
        if args.namespace is not None:
            sections = [(args.namespace, namespace_dbi(db, args.namespace))]
        else:
            sections = namespaces(db)
        if args.format == "mdb":
            # Like mdb_dump -a: every database in the order of their names'
            # bytes, the metadata included (its dictionaries travel along).
            sections = sorted([(META_DB.decode(), env.meta_db)] + sections, key=lambda s: s[0].encode("utf-8"))

        def work(write: Write) -> int:
            def snapshot(txn: lmdb.Transaction) -> int:
                total = sum(txn.stat(dbi)["entries"] for _, dbi in sections
                            if dbi is not None and dbi is not env.meta_db)
                with Progress("dump", total) as progress:
                    if args.format == "mdb":
                        return _dump_mdb(txn, env, sections, write, progress)
                    # one judgement of expiry for the whole dump, on the store's clock
                    return _dump_jsonl(txn, env, engine.codec_of(db), sections, write, progress, now_of(db))

            return env.read(snapshot)

        if args.output is None:
            work(out.write)
            out.flush()
            return 0
        with AtomicOutput(args.output) as f:
            n = work(f.write)
    return _report(args, out, n, sections)


def _report(args: Args, out: Out, n: int, sections: Sections) -> int:
    users = [name for name, _ in sections if name != META_DB.decode()]
    what = f"namespace {users[0]!r}" if args.namespace is not None else plural(len(users), "namespace")
    extra = f", with the {META_DB.decode()} metadata" if args.format == "mdb" else ""
    out.write(f"dumped {plural(n, 'record')} of {what}{extra} to {args.output} ({args.format})\n")
    return 0

