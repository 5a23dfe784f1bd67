"""Key patterns on the command line: globs (`keys PATTERN`, `--match`) and
prefixes (`--prefix`), and the keys of a namespace they select.

A glob is written in the escaped key form (`\\\\` a backslash, `\\xNN` any
byte) with three wildcards, as in redis-cli's KEYS and MATCH:

    *        any run of bytes, the empty one included
    ?        exactly one byte
    [abc]    one byte of the set; [a-z] a range; [!abc] or [^abc] any other

A literal `*`, `?` or `[` is written `\\x2a`, `\\x3f`, `\\x5b`. The glob
matches the whole key. The scan reads only the keys that start with the
glob's literal beginning (`session:*` reads the keys under `session:`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import argparse

    from kvstore.store import Store

from ._common import CommandError
from ._encoding import parse_key

__all__ = ["Glob", "compile_glob", "selected_keys", "add_pattern_arguments", "patterns_of"]

_WILD = "*?["


@dataclass(frozen=True)
class Glob:
    text: str  # as the user wrote it
    prefix: bytes  # the literal bytes before the first wildcard
    regex: re.Pattern[bytes]  # matches whole keys

    def matches(self, key: bytes) -> bool:
        return self.regex.fullmatch(key) is not None


def _literal(text: str, what: str) -> bytes:
    try:
        return parse_key(text, what)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _class(text: str, at: int, what: str) -> tuple[bytes, int]:
    """The regex of the [...] class starting at text[at] ('['), and the
    index after its ']'."""
    i = at + 1
    negate = i < len(text) and text[i] in "!^"
    i += negate
    end = text.find("]", i + 1 if text[i:i + 1] == "]" else i)  # a leading ] is a member
    if end < 0:
        raise CommandError(f"unclosed [ in {what} {text!r}: close the class with ], or write a literal "
                           f"[ as \\x5b")
    members = _literal(text[i:end], what)
    out = bytearray()
    j = 0
    while j < len(members):
        if j + 2 < len(members) and members[j + 1] == 0x2D:  # a-z
            lo, hi = members[j], members[j + 2]
            if lo > hi:
                raise CommandError(f"empty range {chr(lo)}-{chr(hi)} in {what} {text!r}")
            out += re.escape(bytes([lo])) + b"-" + re.escape(bytes([hi]))
            j += 3
        else:
            out += re.escape(members[j:j + 1])
            j += 1
    if not out:
        raise CommandError(f"empty [] class in {what} {text!r}")
    return b"[" + (b"^" if negate else b"") + bytes(out) + b"]", end + 1


def compile_glob(text: str, what: str = "pattern") -> Glob:
    """The Glob a command-line pattern stands for; CommandError if it is
    not one. A member of a [...] class is one byte: a character that is
    several bytes in UTF-8 is several members."""
    parts: list[bytes] = []
    prefix = None
    i = 0
    while i < len(text):
        j = i
        while j < len(text) and text[j] not in _WILD:
            j += 2 if text[j] == "\\" else 1  # an escape's next character is never a wildcard
        if j > i:
            parts.append(re.escape(_literal(text[i:j], what)))
        if j >= len(text):
            break
        if prefix is None:
            prefix = _literal(text[:j], what)
        ch = text[j]
        if ch == "*":
            parts.append(b".*")
            i = j + 1
        elif ch == "?":
            parts.append(b".")
            i = j + 1
        else:
            regex, i = _class(text, j, what)
            parts.append(regex)
    if prefix is None:
        prefix = _literal(text, what)
    return Glob(text, prefix, re.compile(b"".join(parts), re.DOTALL))


def add_pattern_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    """--match GLOB and --prefix P, for commands that take keys by pattern."""
    p.add_argument("--match", metavar="GLOB", action="append", default=[],
                   help=f"{verb} every key matching GLOB (escaped form; * any bytes, ? one byte, [a-z] "
                        f"one byte of a set); repeatable")
    p.add_argument("--prefix", metavar="P", action="append", default=[],
                   help=f"{verb} every key starting with P (escaped form); repeatable")


def patterns_of(args: argparse.Namespace) -> list[Glob]:
    """The patterns of --match and --prefix, as Globs."""
    globs = [compile_glob(g, "--match") for g in args.match]
    for p in args.prefix:
        literal = _literal(p, "--prefix")
        globs.append(Glob(p, literal, re.compile(re.escape(literal) + b".*", re.DOTALL)))
    return globs


def selected_keys(handle: Store[Any], globs: list[Glob]) -> Iterator[bytes]:
    """The keys of a namespace handle matching any of globs, in key order,
    each once."""
    if not globs:
        return
    prefixes = sorted({g.prefix for g in globs})
    # Scan each prefix that no shorter one covers, in key order.
    scans = [p for i, p in enumerate(prefixes) if not any(p.startswith(q) for q in prefixes[:i])]
    for prefix in scans:
        for key in handle.scan(prefix=prefix or None, keys_only=True):
            if any(g.matches(key) for g in globs):
                yield key
