"""`kvstore inspect PATH KEY`: one stored record, decoded layer by layer."""

from __future__ import annotations

from kvstore import engine
from kvstore.codec.format import HEADER_SIZE

from ._common import NotFound, expiry_doc, expiry_text, namespace_dbi, now_of, open_readonly, quote_key, write_json
from ._encoding import dumps, key_to_json, to_json
from ._records import examine, flag_names, inner_dict_id
from .get import parse_key_arg

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._common import Args, Out, Parser, Subparsers


def add_parser(subparsers: Subparsers) -> Parser:
    p = subparsers.add_parser(
        "inspect", help="show how a value is stored: header, sizes, checksum, value",
        description="Show the record stored under KEY layer by layer: its expiry if it has a TTL "
                    "(an expired record is still shown, marked EXPIRED), the header's fields, the "
                    "stored and decoded sizes, the checksum as stored and as recomputed, then the "
                    "value. Exit status 1 when the key is missing or the record is damaged.")
    p.add_argument("path", help="store directory")
    p.add_argument("key", help="the key (escaped form)")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def _hex64(n: int | None) -> str | None:
    return None if n is None else f"0x{n:016x}"


def run(args: Args, out: Out) -> int:
    key = parse_key_arg(args.key)
    with open_readonly(args.path, clock=args.clock) as db:
        env = engine.of(db)
        dbi = namespace_dbi(db, args.namespace)
        record = None
        if dbi is not None:
            record = env.read(lambda txn: (lambda r: None if r is None else bytes(r))(txn.get(key, db=dbi)))
        if record is None:
            raise NotFound(f"key {quote_key(key)} not found in namespace {args.namespace!r}")
        dict_id = inner_dict_id(record)
        dictionaries = env.dicts.for_decoding(dict_id) if dict_id else env.dicts.by_id
        ex: Any = examine(record, engine.codec_of(db), dictionaries, key=key)  # its fields are set by the layers read
        now = now_of(db)
    doc = {
        "namespace": args.namespace,
        "key": key_to_json(key),
        "stored_size": ex.size,
        "ttl_prefix_size": ex.prefix_size,
        "header_size": HEADER_SIZE,
        "payload_size": ex.payload_size,
        "expiry": expiry_doc(ex.expires_ms, ex.ttl_ms, now),
        "header": None if ex.version is None else {
            "version": ex.version,
            "flags": ex.flags,
            "flag_names": flag_names(ex.flags),
            "raw_len": ex.raw_len,
            "dict_id": ex.dict_id,
        },
        "decoded_size": ex.raw_len,
        "checksum": {"stored": _hex64(ex.checksum_stored), "computed": _hex64(ex.checksum_computed),
                     "match": ex.checksum_stored is not None and ex.checksum_stored == ex.checksum_computed},
        "ratio": (ex.size / ex.raw_len) if ex.raw_len else None,
        "ok": ex.ok,
        "problem": ex.problem,
        "type": type(ex.value).__name__ if ex.ok else None,
        "value": to_json(ex.value) if ex.ok else None,
    }
    if args.json:
        write_json(out, doc)
        return 0 if ex.ok else 1
    prefix = f"{ex.prefix_size}-byte TTL prefix + " if ex.prefix_size else ""
    rows = [("namespace", args.namespace), ("key", quote_key(key)),
            ("stored", f"{ex.size} bytes = {prefix}{HEADER_SIZE}-byte header + {ex.payload_size}-byte payload"
             if ex.size >= ex.prefix_size + HEADER_SIZE else f"{ex.size} bytes (shorter than a header)")]
    if ex.prefix_size:
        rows.append(("expires", expiry_text(ex.expires_ms, ex.ttl_ms, now) if ex.expires_ms is not None
                     else "unknown: the TTL prefix is damaged"))
    if ex.version is not None:
        names = flag_names(ex.flags)
        layers = "msgpack" if ex.flags & 1 else "raw bytes"
        if ex.flags & 2:
            layers += f" in zstd (dictionary {ex.dict_id})" if ex.flags & 4 else " in zstd"
        rows += [
            ("version", str(ex.version)),
            ("flags", f"0x{ex.flags:02x} {'|'.join(names) if names else '(none)'}: {layers}"),
            ("raw_len", f"{ex.raw_len} bytes (the decoded payload)"),
            ("dict_id", f"{ex.dict_id}" + ("" if ex.dict_id else " (no dictionary)")),
            ("checksum", f"stored {_hex64(ex.checksum_stored)}, computed {_hex64(ex.checksum_computed)}: "
                         + ("match" if doc["checksum"]["match"] else "MISMATCH")),
        ]
        if ex.raw_len:
            rows.append(("ratio", f"{doc['ratio']:.3f} (stored / decoded)"))
    if ex.ok:
        rows.append(("type", doc["type"]))
    else:
        rows.append(("problem", ex.problem))
    width = max(len(label) for label, _ in rows)
    for label, text in rows:
        out.write(f"{label:<{width}}  {text}\n")
    if ex.ok:
        out.write("value:\n" + dumps(doc["value"], indent=2) + "\n")
    return 0 if ex.ok else 1
