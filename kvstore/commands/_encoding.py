"""Text forms of keys and values: lossless, and safe to show on a terminal.

Keys on the command line and in plain output
--------------------------------------------
`escape_key` turns a key (bytes) into text that can be pasted back as a KEY
argument, which `parse_key` reads:

- a printable character stays as it is (UTF-8 keys read naturally);
- a backslash is written ``\\\\``;
- any other byte (non-printable, or part of invalid UTF-8) is ``\\xNN``.

Values (and keys) in JSON: the tagged encoding
----------------------------------------------
JSON cannot carry every value a store holds. `to_json` maps a value onto
JSON, tagging what JSON lacks as a one-member object whose name starts
with ``$``; `from_json` reverses it exactly:

- ``{"$bytes": BASE64}``: bytes (standard alphabet, padded);
- ``{"$map": [[K, V], ...]}``: a map with a key that is not a str, or a str
  key starting with ``$`` (keys and values encoded recursively, in order);
- ``{"$float": "nan" | "inf" | "-inf"}``: the floats JSON has no literal for.

Everything else is plain JSON: null, true/false, integers (exact, any size),
floats (shortest repr, which reads back to the same float), strings,
arrays, and objects whose names are str not starting with ``$``.
`dumps` writes JSON with every non-printable character escaped.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

__all__ = ["escape_key", "parse_key", "to_json", "from_json", "key_to_json", "key_from_json",
           "dumps", "safe_text", "TagError"]

BYTES = "$bytes"
MAP = "$map"
FLOAT = "$float"


class TagError(ValueError):
    """A JSON document that is not a valid tagged encoding."""


# ---------------------------------------------------------------- keys as text


def escape_key(key: bytes | memoryview) -> str:
    """Printable, pasteable text for a key (bytes); `parse_key` reverses it."""
    text = bytes(key).decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif "\udc80" <= ch <= "\udcff":  # a byte that is not valid UTF-8
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


def parse_key(text: str, what: str = "key") -> bytes:
    """The bytes of a key written as `escape_key` writes it.

    A command-line argument holding bytes that are not UTF-8 arrives as
    surrogate escapes (Python's os.fsdecode), which map back to those bytes.
    """
    try:
        if "\\" not in text:
            return text.encode("utf-8", "surrogateescape")
        out = bytearray()
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if ch != "\\":
                j = text.find("\\", i)
                j = n if j < 0 else j
                out += text[i:j].encode("utf-8", "surrogateescape")
                i = j
                continue
            nxt = text[i + 1:i + 2]
            if nxt == "\\":
                out.append(0x5C)
                i += 2
            elif nxt == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", text[i + 2:i + 4]):
                out.append(int(text[i + 2:i + 4], 16))
                i += 4
            else:
                raise ValueError(
                    f"bad escape {text[i:i + 4]!r} in {what} {text!r}: write a backslash as \\\\ "
                    f"and any byte as \\xNN (two hex digits)")
        return bytes(out)
    except UnicodeEncodeError:
        raise ValueError(f"{what} {text!r} cannot be encoded as UTF-8") from None


# ---------------------------------------------------------------- values as JSON


def to_json(value: Any) -> Any:
    """A JSON-able form of a stored value (see the module's docstring)."""
    t = type(value)
    if value is None or t is bool or t is str or t is int:
        return value
    if t is float:
        if math.isfinite(value):
            return value
        return {FLOAT: "nan" if value != value else ("inf" if value > 0 else "-inf")}
    if t in (bytes, bytearray, memoryview):
        return {BYTES: base64.b64encode(value).decode("ascii")}
    if t in (list, tuple):
        return [to_json(v) for v in value]
    if t is dict:
        if all(type(k) is str and not k.startswith("$") for k in value):
            return {k: to_json(v) for k, v in value.items()}
        return {MAP: [[to_json(k), to_json(v)] for k, v in value.items()]}
    # Subclasses (bool is handled above): by their base type.
    for base in (int, float, str, bytes, list, tuple, dict):
        if isinstance(value, base):
            return to_json(base(value))  # type: ignore[arg-type]  # value is a base
    raise TypeError(f"a value of type {t.__name__} has no JSON form")


def _hashable(key: Any) -> Any:
    """A map key read from JSON: arrays become tuples (msgpack's rule)."""
    if type(key) is list:
        return tuple(_hashable(k) for k in key)
    if type(key) is dict:
        raise TagError("a map key cannot be a map")
    return key


def from_json(doc: Any) -> Any:
    """The value a JSON document (tagged encoding) stands for; TagError if malformed."""
    t = type(doc)
    if t is list:
        return [from_json(v) for v in doc]
    if t is not dict:
        return doc
    tags = [name for name in doc if name.startswith("$")]
    if not tags:
        return {k: from_json(v) for k, v in doc.items()}
    if len(doc) != 1:
        raise TagError(
            f"an object with a member starting with '$' must be a tag alone ({', '.join(map(repr, tags))}); "
            f"write a map with such keys as {{\"$map\": [[key, value], ...]}}")
    ((tag, arg),) = doc.items()
    if tag == BYTES:
        if type(arg) is not str:
            raise TagError(f"{BYTES} takes a base64 string, not {type(arg).__name__}")
        try:
            return base64.b64decode(arg, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise TagError(f"{BYTES}: not valid base64 ({exc})") from None
    if tag == MAP:
        if type(arg) is not list or not all(type(p) is list and len(p) == 2 for p in arg):
            raise TagError(f"{MAP} takes a list of [key, value] pairs")
        try:
            return {_hashable(from_json(k)): from_json(v) for k, v in arg}
        except TypeError as exc:
            raise TagError(f"{MAP}: unusable key ({exc})") from None
    if tag == FLOAT:
        if arg not in ("nan", "inf", "-inf"):
            raise TagError(f"{FLOAT} takes \"nan\", \"inf\" or \"-inf\", not {arg!r}")
        return float(arg)
    raise TagError(f"unknown tag {tag!r} (known: {BYTES}, {MAP}, {FLOAT})")


def key_to_json(key: bytes | memoryview) -> Any:
    """A key (bytes) in JSON: a str when it is valid UTF-8, else {"$bytes": ...}."""
    key = bytes(key)
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return {BYTES: base64.b64encode(key).decode("ascii")}


def key_from_json(doc: Any) -> bytes:
    if type(doc) is str:
        return doc.encode("utf-8")
    if type(doc) is dict and len(doc) == 1 and BYTES in doc:
        return from_json(doc)  # type: ignore[no-any-return]
    raise TagError(f"a key must be a string or {{\"{BYTES}\": BASE64}}, not {json.dumps(doc)[:60]}")


# ---------------------------------------------------------------- safe output

_NOT_PLAIN = re.compile(r"[^\n\x20-\x7e]+")


def _escape_char(ch: str) -> str:
    cp = ord(ch)
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    cp -= 0x10000
    return f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}"


def _escape_run(match: re.Match[str]) -> str:
    run = match.group()
    if run.isprintable():
        return run
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in run)


def safe_text(json_text: str) -> str:
    """JSON text with every non-printable character \\u-escaped. JSON puts such
    characters only inside strings, where the escape means the same."""
    return _NOT_PLAIN.sub(_escape_run, json_text)


def dumps(doc: Any, *, indent: int | None = None, compact: bool = False) -> str:
    """JSON text of an already JSON-able document, safe on a terminal."""
    text = json.dumps(doc, ensure_ascii=False, allow_nan=False, indent=indent,
                      separators=(",", ":") if compact else None)
    return safe_text(text)
