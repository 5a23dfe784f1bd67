"""The text format of LMDB's `mdb_dump` / `mdb_load` (format VERSION=3).

One section per database::

    VERSION=3
    format=bytevalue            (or "print": printable bytes as they are, others \\xx in hex)
    database=NAME               (absent for the main database)
    type=btree
    mapsize=N
    maxreaders=N
    db_pagesize=N
    HEADER=END
     6b6579                     one space, the key in hex
     76616c7565                 one space, the value in hex
    DATA=END

`mdb_dump -a` writes one such section per named database, one after the
other; `mdb_load -f FILE DIR` loads them all. The writer here writes what
`mdb_dump` writes, byte for byte; the reader reads both formats.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Iterator

__all__ = ["write_header", "record_text", "END", "parse", "MdbFormatError"]

END = "DATA=END\n"

# LMDB database flags a dump may declare; kvstore databases never use them.
_FLAG_KEYWORDS = ("reversekey", "dupsort", "integerkey", "dupfixed", "integerdup", "reversedup",
                  "duplicates")


class MdbFormatError(ValueError):
    """Input that is not mdb_dump text; the message names the line."""


def write_header(write: Callable[[str], Any], name: bytes | None, mapsize: int, maxreaders: int,
                 pagesize: int) -> None:
    lines = ["VERSION=3", "format=bytevalue"]
    if name is not None:
        if b"\n" in name or b"\0" in name:
            raise ValueError(f"database name {name!r} cannot be written in mdb_dump format")
        lines.append("database=" + name.decode("utf-8", "surrogateescape"))
    lines += ["type=btree", f"mapsize={mapsize}", f"maxreaders={maxreaders}",
              f"db_pagesize={pagesize}", "HEADER=END"]
    write("\n".join(lines) + "\n")


def record_text(key: bytes | memoryview, value: bytes | memoryview) -> str:
    return f" {key.hex()}\n {value.hex()}\n"


_PRINT_ESCAPE = re.compile(r"\\(\\|[0-9a-fA-F]{2})?")


def _unprint(text: str) -> bytes:
    # format=print: printable characters stand for themselves, "\\xx" (two hex
    # digits) for any other byte, "\\\\" for a backslash. mdb_dump of LMDB
    # 0.9.24 and older writes a backslash unescaped: a backslash followed by
    # anything else is taken as itself. (Such a dump cannot tell a backslash
    # followed by two hex digits from an escape: when it holds one, the
    # record's checksum no longer matches and the load refuses it.)
    out = bytearray()
    pos = 0
    for m in _PRINT_ESCAPE.finditer(text):
        out += text[pos:m.start()].encode("utf-8", "surrogateescape")
        esc = m.group(1)
        out.append(0x5C if esc is None or esc == "\\" else int(esc, 16))
        pos = m.end()
    out += text[pos:].encode("utf-8", "surrogateescape")
    return bytes(out)


def parse(lines: Iterable[str]) -> Iterator[tuple[Any, ...]]:
    """Events from mdb_dump text (an iterable of lines, newline included):

        ("section", name, header, lineno)   name: bytes, or None for the main database
        ("record", key, value, lineno)      bytes, bytes
        ("end", name, count, lineno)        after DATA=END

    Raises MdbFormatError at the first line that does not fit.
    """
    state = "start"  # start -> header -> data -> (after) start
    header: dict[str, str] = {}
    name = None
    printable = False
    key = None
    count = 0
    lineno = 0
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\n").rstrip("\r")
        if state == "start":
            if not line:
                continue
            if not line.startswith("VERSION="):
                raise MdbFormatError(f"line {lineno}: expected VERSION=3 to start a section, got {line[:40]!r}")
            if line != "VERSION=3":
                raise MdbFormatError(f"line {lineno}: unsupported dump {line!r} (this reads VERSION=3)")
            header, name, state = {}, None, "header"
        elif state == "header":
            if line == "HEADER=END":
                fmt = header.get("format", "bytevalue")
                if fmt not in ("bytevalue", "print"):
                    raise MdbFormatError(f"line {lineno}: unknown format={fmt}")
                if header.get("type", "btree") != "btree":
                    raise MdbFormatError(f"line {lineno}: unsupported type={header['type']}")
                for flag in _FLAG_KEYWORDS:
                    if header.get(flag, "0") != "0":
                        where = f"database {name!r}" if name is not None else "the main database"
                        raise MdbFormatError(
                            f"line {lineno}: {where} uses LMDB's {flag} flag, which kvstore "
                            f"namespaces never use; it is not a kvstore dump")
                printable = fmt == "print"
                state, key, count = "data", None, 0
                yield ("section", name, header, lineno)
                continue
            keyword, sep, value = line.partition("=")
            if not sep:
                raise MdbFormatError(f"line {lineno}: expected KEYWORD=VALUE in the header, got {line[:40]!r}")
            if keyword == "database":
                name = value.encode("utf-8", "surrogateescape")
            header[keyword] = value
        else:  # data
            if line.startswith(" "):
                text = line[1:]
                if printable:
                    data = _unprint(text)
                else:
                    try:
                        data = bytes.fromhex(text)
                    except ValueError:
                        raise MdbFormatError(f"line {lineno}: not hex data") from None
                if key is None:
                    key = data
                else:
                    yield ("record", key, data, lineno)
                    key = None
                    count += 1
            elif line == "DATA=END":
                if key is not None:
                    raise MdbFormatError(f"line {lineno}: DATA=END after a key without its value")
                yield ("end", name, count, lineno)
                state = "start"
            else:
                raise MdbFormatError(f"line {lineno}: expected a data line (one space, then hex) or "
                                     f"DATA=END, got {line[:40]!r}")
    if state != "start":
        raise MdbFormatError(f"line {lineno}: the input ends inside a section (no DATA=END): truncated?")
