"""`kvstore get PATH KEY [KEY...]`: the values stored under keys, named or
matched by --match/--prefix."""

from __future__ import annotations

import sys


from ._common import (CommandError, NotFound, expiry_doc, is_terminal, namespace_handle, now_of, open_readonly,
                      quote_key, write_json)
from ._encoding import dumps, escape_key, key_to_json, parse_key, to_json
from ._patterns import add_pattern_arguments, patterns_of, selected_keys
from ._records import MISSING

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvstore.store import Store

    from ._patterns import Glob
    from ._common import Args, Out, Parser, Subparsers

FORMATS = ("json", "repr", "raw", "hex")


def add_parser(subparsers: Subparsers) -> Parser:
    p = subparsers.add_parser(
        "get", help="print the value of a key",
        description="Print the value stored under KEY (escaped form: \\\\ for a backslash, \\xNN for "
                    "a byte), or with --ttl when it expires. Exit status 1 when the key is missing "
                    "(an expired value is missing). With several KEYs, --match or --prefix, one line "
                    "per key found, in the order named then key order: with --format json a JSON "
                    "object {\"k\": KEY, \"v\": VALUE} (dump's record line, which load reads), "
                    "otherwise the escaped key, a tab and the value; a named key that is missing is "
                    "reported on stderr, and the exit status is then 1.")
    p.add_argument("path", help="store directory, or etcd://HOST:PORT[,...]/PREFIX")
    p.add_argument("key", nargs="*", help="the key (several: one line each)")
    add_pattern_arguments(p, "print")
    p.set_defaults(keys_dest="key")  # KEYs may follow the options (cli._parse)
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument("--format", choices=FORMATS, default="json",
                   help="json (default; the tagged encoding of `kvstore --help`), repr (Python), raw (the "
                        "bytes of a bytes or str value; never to a terminal), hex")
    p.add_argument("--json", action="store_const", dest="format", const="json", help="same as --format json")
    p.add_argument("--ttl", action="store_true",
                   help="print when the value expires instead of the value, as JSON: {expires_at, "
                        "expires_at_utc, expires_in, ttl, expired}, or null when it has no TTL")
    return p


def parse_key_arg(text: str) -> bytes:
    try:
        return parse_key(text)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _as_bytes(value: Any, fmt: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise CommandError(f"--format {fmt} shows bytes and str values; this one is a "
                       f"{type(value).__name__}: use --format json or repr")


def write_raw(out: Any, data: bytes) -> None:
    buffer = getattr(out, "buffer", None)
    if buffer is None:
        if hasattr(out, "write") and not hasattr(out, "encoding"):
            out.write(data)  # a binary stream
            return
        raise CommandError("--format raw needs a binary output stream")
    out.flush()
    buffer.write(data)
    buffer.flush()


def _show_expiry(handle: Store[Any], key: bytes, args: Args, out: Out) -> int:
    try:
        expiry = handle.expiry(key)
    except KeyError:
        raise NotFound(f"key {quote_key(key)} not found in namespace {args.namespace!r}") from None
    if expiry is None:
        out.write("null\n")
    else:
        write_json(out, expiry_doc(round(expiry[0] * 1000), round(expiry[1] * 1000), now_of(handle)))
    return 0


def run(args: Args, out: Out) -> int:
    globs = patterns_of(args)
    if len(args.key) > 1 or globs:
        return _run_many(args, [parse_key_arg(k) for k in args.key], globs, out)
    key = parse_key_arg(args.key[0])
    with open_readonly(args.path, clock=args.clock) as db:
        handle = namespace_handle(db, args.namespace)
        if args.ttl:
            return _show_expiry(handle, key, args, out)
        value = handle.get(key, MISSING)
    if value is MISSING:
        raise NotFound(f"key {quote_key(key)} not found in namespace {args.namespace!r}")
    if args.format == "json":
        out.write(dumps(to_json(value)) + "\n")
    elif args.format == "repr":
        out.write(repr(value) + "\n")
    elif args.format == "hex":
        out.write(_as_bytes(value, "hex").hex() + "\n")
    else:
        data = _as_bytes(value, "raw")
        if is_terminal(out):
            raise CommandError("refusing to write raw bytes to a terminal; use --format hex, or "
                               "redirect the output to a file or a pipe")
        write_raw(out, data)
    return 0


def _line(key: bytes, value: Any, fmt: str) -> str:
    if fmt == "json":
        return dumps({"k": key_to_json(key), "v": to_json(value)}, compact=True)
    shown = repr(value) if fmt == "repr" else _as_bytes(value, fmt).hex()
    return f"{escape_key(key)}\t{shown}"


def _run_many(args: Args, keys: list[bytes], globs: list[Glob], out: Out) -> int:
    """Several keys: one line each (see the description)."""
    if args.format == "raw":
        raise CommandError("--format raw prints one value; with several keys use --format json, repr or hex")
    missing = []
    with open_readonly(args.path, clock=args.clock) as db:
        handle = namespace_handle(db, args.namespace)
        named = set(keys)
        matched = (k for k in selected_keys(handle, globs) if k not in named)
        for key, was_named in [(k, True) for k in keys] + [(k, False) for k in matched]:
            if args.ttl:
                expiry: Any
                try:
                    expiry = handle.expiry(key)
                except KeyError:
                    expiry = MISSING
                if expiry is not MISSING:
                    doc = None if expiry is None else expiry_doc(
                        round(expiry[0] * 1000), round(expiry[1] * 1000), now_of(handle))
                    out.write(dumps({"k": key_to_json(key), "ttl": doc}, compact=True) + "\n")
                    continue
            else:
                value = handle.get(key, MISSING)
                if value is not MISSING:
                    out.write(_line(key, value, args.format) + "\n")
                    continue
            if was_named:  # a matched key that expired or went meanwhile is no longer there: skip it
                missing.append(key)
    for key in missing:
        print(f"kvstore: key {quote_key(key)} not found in namespace {args.namespace!r}", file=sys.stderr)
    return 1 if missing else 0
