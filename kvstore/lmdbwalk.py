"""The page walker: every page of the newest snapshot of a store's data.mdb,
read and verified against the layout in `kvstore.lmdbfile` (whose docstring
gives the grammar and what makes a snapshot consistent).

- `walk(path)`: `kvstore check`'s first step, every page (reads the whole file).
- `_Walker`: the walk itself; `lmdbfile.check_data_file` runs it at every
  open, over every page of a small snapshot or the roots of a big one.
- `Walk`, `Problem`, `DBStats`: what it found.

Like lmdbfile, it reads with os.pread (never a mapping of the file) and
imports nothing of kvstore but lmdbfile and the errors. It imports lmdbfile
(the grammar's structs, the meta pages); lmdbfile imports it only where it
runs the walk at open.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import FormatError, StoreNotFoundError
from .lmdbfile import (
    _DATA_VERSION,
    _DB_FULL,
    _INTEGERKEY,
    _LMDB_MAGIC,
    _MAX_DEPTH,
    _MAX_KEY,
    _META,
    _NO_PAGE,
    _NODE,
    _OVERFLOW,
    _PAGE,
    _PAGE_BOUNDS,
    _PAGE_HEADER,
    _REVERSEKEY,
    _U64,
    F_BIGDATA,
    F_DUPDATA,
    F_SUBDATA,
    FREE_DB,
    MAIN_DB,
    META,
    P_BRANCH,
    P_LEAF,
    P_META,
    P_OVERFLOW,
    Meta,
    _newest_txnid,
    newest_meta,
)

__all__ = ["walk", "Walk", "Problem", "DBStats", "FREE_DB", "MAIN_DB", "META"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong in the file: where (database, page, byte offset in the
    file) and what."""

    db: str  # FREE_DB, MAIN_DB, META (pages 0, 1) or a named database's name
    page: int | None
    offset: int | None  # byte offset in data.mdb
    what: str

    def __str__(self) -> str:
        where = {FREE_DB: "the free list", MAIN_DB: "the main database",
                 META: "the meta pages"}.get(self.db, f"database {self.db!r}")
        if self.page is not None:
            where += f", page {self.page}"
        if self.offset is not None:
            where += f" (byte {self.offset})"
        return f"{where}: {self.what}"

    def to_json(self) -> dict[str, Any]:
        return {"db": self.db, "page": self.page, "offset": self.offset, "problem": self.what}


@dataclass
class DBStats:
    """What the walk counted in one tree, and what its db record says."""

    entries: int = 0
    branch_pages: int = 0
    leaf_pages: int = 0
    overflow_pages: int = 0
    depth: int = 0
    recorded_entries: int = 0
    complete: bool = True  # False when the walk stopped short (a budget, damage)
    # how full the pages are (kvstore stat): bytes between the node pointers
    # and the nodes of its branch and leaf pages, and bytes past the end of
    # each value in the last page of its overflow run
    unused_bytes: int = 0
    overflow_unused_bytes: int = 0


@dataclass
class Walk:
    """The result of walk(): problems (empty: the file is consistent)."""

    psize: int = 0
    txnid: int = 0
    last_pg: int = 0
    meta_page: int = 0
    problems: list[Problem] = field(default_factory=list)
    dbs: dict[str, DBStats] = field(default_factory=dict)  # name -> DBStats
    free_pages: int = 0
    pages_read: int = 0
    changing: bool = False  # commits happened during every attempt (see walk())
    tree_pages: dict[int, str] = field(default_factory=dict)  # page number -> name of the tree it is in

    @property
    def ok(self) -> bool:
        return not self.problems


def walk(path: str, attempts: int = 5) -> Walk:
    """Walk every page of the newest snapshot of the store at `path` (a
    directory holding data.mdb) and verify it (the layout in lmdbfile's
    docstring). Never maps the file. Raises FormatError when the meta pages or the file's
    length are wrong (what check_data_file refuses), StoreNotFoundError when
    there is no data.mdb; every other damage is a Problem in the result.
    Damage is believed only if no commit happened during the walk (another
    process may reuse pages meanwhile): else the walk starts again, up to
    `attempts` times; after that the problems are returned with `changing`
    set (they may be a commit's doing)."""
    data_path = os.path.join(path, "data.mdb")
    try:
        fd = os.open(data_path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        raise StoreNotFoundError(f"no kvstore store at {path!r} (no data.mdb)") from None
    except OSError as exc:
        raise FormatError(f"cannot read {data_path} ({exc.strerror}); check that this user may "
                          f"read it") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FormatError(f"{data_path} is not a regular file; {path!r} is not a kvstore store")
        for attempt in range(attempts):
            txnid = _newest_txnid(fd)
            meta = newest_meta(data_path, fd)
            if meta is None:
                return Walk()
            result = _Walker(fd, meta).run()
            if result.ok or _newest_txnid(fd) == txnid:
                return result
        result.changing = True
        return result
    finally:
        os.close(fd)


class _Walker:
    def __init__(self, fd: int, meta: Meta, roots_only: bool = False) -> None:
        self.fd = fd
        self.meta = meta
        self.psize = meta.psize
        self.last_pg = meta.last_pg
        self.roots_only = roots_only  # of named databases; else every page is read
        self.seen: dict[int, str] = {}  # pgno -> db name of every page reached from a tree
        self.free: dict[int, int] = {}  # pgno -> txnid of the free-list record that names it
        self.free_records: list[tuple[Any, ...]] = []  # (key, IDL bytes, page, offset) of each free-list record
        self.result = Walk(psize=meta.psize, txnid=meta.txnid, last_pg=meta.last_pg, meta_page=meta.page)

    def problem(self, db: str, page: int | None, at: int | None, what: str) -> None:
        offset = None if page is None else page * self.psize + (at or 0)
        self.result.problems.append(Problem(db, page, offset, what))

    def run(self) -> Walk:
        self._check_meta_pages()
        subdbs: list[tuple[Any, ...]] = []
        if not self.roots_only:
            self._tree(FREE_DB, self.meta.free_db, _INTEGERKEY, None)
        self._tree(MAIN_DB, self.meta.main_db, 0, subdbs)
        for name, record, pgno, at in subdbs:
            self._tree(name, record, None, None, where=(pgno, at))
        self._free_list(self.free_records)
        if not self.roots_only and not self.result.problems:
            reached = len(self.seen) + len(self.free) + 2
            if reached != self.last_pg + 1:
                self.problem(FREE_DB, None, None,
                             f"{self.last_pg + 1 - reached} of the snapshot's {self.last_pg + 1} pages "
                             f"are in no tree and not on the free list")
        self.result.free_pages = len(self.free)
        self.result.tree_pages = self.seen
        return self.result

    def _check_meta_pages(self) -> None:
        head = os.pread(self.fd, 2 * self.psize, 0)
        for page in (0, 1):
            pgno, _pad, flags = _PAGE.unpack_from(head, page * self.psize)
            magic, version, _ = _META.unpack_from(head, page * self.psize + _PAGE_HEADER)
            if magic != _LMDB_MAGIC or version != _DATA_VERSION or pgno != page or flags & P_META == 0:
                self.problem(META, page, 0, f"meta page {page} is damaged (magic {magic:#x}, version "
                             f"{version}, page number {pgno}, flags {flags:#x})")

    def _read(self, pgno: int, db: str) -> bytes | None:
        page = os.pread(self.fd, self.psize, pgno * self.psize)
        self.result.pages_read += 1
        if len(page) < self.psize:
            self.problem(db, pgno, 0, "the page is past the end of the file")
            return None
        return page

    # -------------------------------------------------------- one tree

    def _tree(self, db: str, record: tuple[int, ...], flags_override: int | None,
              subdbs: list[tuple[Any, ...]] | None, where: tuple[int, int] | None = None) -> None:
        _pad, flags, depth, branch, leaf, overflow, entries, root = record
        stats = DBStats(recorded_entries=entries)
        self.result.dbs[db] = stats
        if flags_override is None:  # a named database: flags from its record
            if flags & ~(_REVERSEKEY | _INTEGERKEY):
                self.problem(db, *(where or (None, None)),  # type: ignore[call-arg]  # where, blame: (page, offset)
                             f"its database record has flags {flags:#x} (DUPSORT or unknown), which "
                             f"kvstore never writes; its pages are not checked")
                stats.complete = False
                return
        else:
            flags = flags_override
        if root == _NO_PAGE:
            if depth or branch or leaf or overflow or entries:
                self.problem(db, *(where or (None, None)),  # type: ignore[call-arg]  # where, blame: (page, offset)
                             f"an empty database (no root page) whose record says depth {depth}, "
                             f"{entries} entries, {branch + leaf + overflow} pages")
            return
        if not 1 <= depth <= _MAX_DEPTH:
            self.problem(db, *(where or (None, None)), f"its database record says depth {depth}")  # type: ignore[call-arg]  # where, blame: (page, offset)
            stats.complete = False
            return
        stats.depth = depth
        order: Callable[[bytes], Any]
        if flags & _INTEGERKEY:
            def order(key: bytes) -> Any:
                return int.from_bytes(key, "little") if len(key) in (4, 8) else None
        elif flags & _REVERSEKEY:
            def order(key: bytes) -> Any:
                return key[::-1]
        else:
            def order(key: bytes) -> Any:
                return key
        # depth-first, children in key order: (pgno, level, low bound, high
        # bound, parent page, offset of the pointing node in it)
        todo: list[tuple[Any, ...]] = [(root, 1, None, None, None, None)]
        prev = None  # the last leaf key seen, in order form
        while todo:
            pgno, level, low, high, parent, from_at = todo.pop()
            blame = (parent, from_at) if parent is not None else (where or (None, None))
            if not 2 <= pgno <= self.last_pg:
                self.problem(db, *blame, f"points to page {pgno}, outside the snapshot's pages 2 to "  # type: ignore[call-arg]  # where, blame: (page, offset)
                             f"{self.last_pg}")
                stats.complete = False
                continue
            if pgno in self.seen:
                self.problem(db, *blame, f"points to page {pgno}, already reached from database "  # type: ignore[call-arg]  # where, blame: (page, offset)
                             f"{self.seen[pgno]!r}")
                stats.complete = False
                continue
            leaf_level = level == depth
            if level > 1 and self.roots_only and db != MAIN_DB:
                stats.complete = False  # an open-time walk: only the root is read
                continue
            self.seen[pgno] = db
            page = self._read(pgno, db)
            if page is None:
                stats.complete = False
                continue
            own, _pad, pflags, lower, upper = _PAGE_BOUNDS.unpack_from(page)
            want = P_LEAF if leaf_level else P_BRANCH
            if own != pgno:
                self.problem(db, pgno, 0, f"the page says it is page {own}")
                stats.complete = False
                continue
            if pflags != want:
                kind = "leaf" if leaf_level else "branch"
                self.problem(db, pgno, 10, f"page flags {pflags:#x}, not those of a {kind} page "
                             f"(level {level} of {depth})")
                stats.complete = False
                continue
            if not (_PAGE_HEADER <= lower <= upper <= self.psize) or (lower - _PAGE_HEADER) & 1:
                self.problem(db, pgno, 12, f"free space bounds lower {lower}, upper {upper} are not "
                             f"within the page")
                stats.complete = False
                continue
            n = (lower - _PAGE_HEADER) >> 1
            if n == 0:
                self.problem(db, pgno, 12, f"a {'leaf' if leaf_level else 'branch'} page without nodes")
                stats.complete = False
                continue
            if leaf_level:
                stats.leaf_pages += 1
            else:
                stats.branch_pages += 1
            stats.unused_bytes += upper - lower
            nodes = self._nodes(db, pgno, page, n, upper, leaf_level)
            if nodes is None:
                stats.complete = False
                continue
            # keys: ascending, inside the bounds the parent gave
            keys: list[Any] | None = []
            outside: list[tuple[int, bytes]] = []  # (offset, key) of the keys outside the parent's range
            for i, (at, _lo, _hi, _nf, key) in enumerate(nodes):
                if not leaf_level and i == 0:
                    keys.append(None)  # type: ignore[union-attr]  # a list here
                    continue
                k = order(key)
                if k is None:
                    self.problem(db, pgno, at, f"key of {len(key)} bytes in an integer-keyed database")
                    stats.complete = False
                    keys = None
                    break
                if (low is not None and k < low) or (high is not None and k >= high):
                    outside.append((at, key))
                if keys and keys[-1] is not None and k <= keys[-1]:
                    self.problem(db, pgno, at, f"key {_show(key)} does not sort after the key before it")
                    stats.complete = False
                keys.append(k)  # type: ignore[union-attr]  # None only after a break
            if keys is None:
                continue
            if outside:
                at, key = outside[0]
                more = f" (and {len(outside) - 1} more of its {n} keys)" if len(outside) > 1 else ""
                self.problem(db, pgno, at, f"key {_show(key)}{more} is outside the key range the parent "
                             f"page {parent} gives this page: a damaged pointer or page")
                stats.complete = False
            if not leaf_level:
                for i in range(len(nodes) - 1, -1, -1):
                    at, lo, hi, nf, _key = nodes[i]
                    child = lo | hi << 16 | nf << 32
                    child_low = low if i == 0 else keys[i]
                    child_high = high if i == len(nodes) - 1 else keys[i + 1]
                    todo.append((child, level + 1, child_low, child_high, pgno, at))
                continue
            if prev is not None and keys[0] <= prev:
                self.problem(db, pgno, nodes[0][0], "the first key of the page does not sort after the "
                             "last key of the page before it")
                stats.complete = False
            prev = keys[-1]
            for at, lo, hi, nf, key in nodes:
                stats.entries += 1
                self._leaf_data(db, pgno, page, at, lo | hi << 16, nf, key, stats, subdbs)
        self._compare(db, record, stats, where)

    def _nodes(self, db: str, pgno: int, page: bytes, n: int, upper: int, leaf_level: bool
               ) -> list[tuple[int, int, int, int, bytes]] | None:
        """[(offset, lo, hi, flags, key)] of a page's nodes, or None if one
        lies outside the page."""
        nodes, spans = [], []
        psize = self.psize
        ptrs = struct.unpack_from(f"<{n}H", page, _PAGE_HEADER)
        for i, at in enumerate(ptrs):
            if not upper <= at <= psize - 8 or at & 1:
                what = "an odd offset (nodes are 2-byte aligned)" if at & 1 else \
                    f"outside its node area ({upper} to {psize - 8})"
                self.problem(db, pgno, _PAGE_HEADER + 2 * i, f"node {i} is at byte {at} of the page, {what}")
                return None
            lo, hi, nf, ksize = _NODE.unpack_from(page, at)
            end = at + 8 + ksize
            if leaf_level:
                end += 8 if nf & F_BIGDATA else lo | hi << 16
            if end > psize:
                self.problem(db, pgno, at, f"node {i} ({ksize}-byte key) runs {end - psize} bytes past "
                             f"the end of the page")
                return None
            if leaf_level and not 1 <= ksize <= _MAX_KEY:
                self.problem(db, pgno, at, f"node {i} has a key of {ksize} bytes (LMDB keys are 1 to "
                             f"{_MAX_KEY})")
                return None
            nodes.append((at, lo, hi, nf, page[at + 8:at + 8 + ksize]))
            spans.append((at, end + (end & 1), i))  # LMDB gives each node an even size
        # LMDB keeps the nodes packed from upper to the end of the page
        # (a deletion moves the others up): a pointer into another node, or
        # past a gap, is damage even when the bytes it lands on parse.
        spans.sort()
        before: Any
        expect, before = upper, None
        for at, end, i in spans:
            if at != expect:
                what = (f"overlaps node {before[2]} (bytes {before[0]} to {before[1]})" if at < expect
                        else f"leaves a gap of {at - expect} bytes before it")
                self.problem(db, pgno, _PAGE_HEADER + 2 * i, f"node {i} at byte {at} of the page {what}; "
                             f"LMDB packs nodes from byte {upper} on: a damaged node pointer")
                return None
            expect, before = end, (at, end, i)
        if expect != psize:
            self.problem(db, pgno, 14, f"the nodes end at byte {expect} of the page, not at its end "
                         f"({psize}): damaged free-space bounds or node sizes")
            return None
        return nodes

    def _leaf_data(self, db: str, pgno: int, page: bytes, at: int, size: int, nflags: int, key: bytes,
                   stats: DBStats, out: list[tuple[Any, ...]] | None) -> None:
        data_at = at + 8 + len(key)
        if nflags & ~(F_BIGDATA | F_SUBDATA | F_DUPDATA):
            self.problem(db, pgno, at + 4, f"node flags {nflags:#x}: not a known kind of node")
            return
        if nflags & F_DUPDATA:
            self.problem(db, pgno, at + 4, f"key {_show(key)} holds duplicate data (DUPSORT), which "
                         f"kvstore never writes")
            return
        if nflags & F_SUBDATA:
            if db != MAIN_DB or nflags & F_BIGDATA or size != _DB_FULL.size:
                self.problem(db, pgno, at + 4, f"key {_show(key)} is marked a named database, which "
                             f"only the main database holds, in a {_DB_FULL.size}-byte record")
                return
            name = key.decode("utf-8", "backslashreplace")
            if out is not None:
                out.append((name, _DB_FULL.unpack_from(page, data_at), pgno, data_at))
            return
        if nflags & F_BIGDATA:
            (first,) = _U64.unpack_from(page, data_at)
            pages = (_PAGE_HEADER - 1 + size) // self.psize + 1
            self._overflow(db, pgno, at, first, pages, size, stats, key)
        elif db == FREE_DB:
            self.free_records.append((key, page[data_at:data_at + size], pgno, data_at))

    def _overflow(self, db: str, pgno: int, at: int, first: int, pages: int, size: int, stats: DBStats,
                  key: bytes) -> None:
        if not 2 <= first or first + pages - 1 > self.last_pg:
            self.problem(db, pgno, at, f"key {_show(key)}: its value's overflow pages {first} to "
                         f"{first + pages - 1} are outside the snapshot's pages 2 to {self.last_pg}")
            stats.complete = False
            return
        twice = [p for p in range(first, first + pages) if p in self.seen]
        if twice:
            self.problem(db, pgno, at, f"key {_show(key)}: its value's overflow page {twice[0]} is "
                         f"already reached from database {self.seen[twice[0]]!r}")
            stats.complete = False
            return
        for p in range(first, first + pages):
            self.seen[p] = db
        head = os.pread(self.fd, _OVERFLOW.size, first * self.psize)
        self.result.pages_read += 1
        own, _pad, flags, count = _OVERFLOW.unpack_from(head)
        if own != first or flags != P_OVERFLOW or count != pages:
            self.problem(db, first, 0, f"key {_show(key)}: its {size}-byte value should start an "
                         f"overflow run of {pages} pages here; the page says page {own}, flags "
                         f"{flags:#x}, {count} pages")
            stats.complete = False
        stats.overflow_pages += pages
        stats.overflow_unused_bytes += pages * self.psize - _PAGE_HEADER - size
        if db == FREE_DB:  # the list of pages is on the overflow run
            body = os.pread(self.fd, size, first * self.psize + _PAGE_HEADER)
            self.free_records.append((key, body, first, _PAGE_HEADER))

    def _compare(self, db: str, record: tuple[int, ...], stats: DBStats, where: tuple[int, int] | None) -> None:
        """The counts the walk made against those of the db record."""
        if not stats.complete:
            return
        _pad, _flags, depth, branch, leaf, overflow, entries, _root = record
        blame = where or (None, None)
        for what, counted, recorded in (("entries", stats.entries, entries),
                                        ("branch pages", stats.branch_pages, branch),
                                        ("leaf pages", stats.leaf_pages, leaf),
                                        ("overflow pages", stats.overflow_pages, overflow)):
            if counted != recorded:
                self.problem(db, *blame, f"the tree holds {counted} {what}; its database record "  # type: ignore[call-arg]  # where, blame: (page, offset)
                             f"says {recorded}")

    # -------------------------------------------------------- the free list

    def _free_list(self, records: list[tuple[Any, ...]]) -> None:
        for key, body, pgno, at in records:
            txnid = int.from_bytes(key, "little")
            if len(body) < 8:
                self.problem(FREE_DB, pgno, at, f"the free-list record of txn {txnid} is "
                             f"{len(body)} bytes, too short for its page count")
                continue
            (count,) = _U64.unpack_from(body)
            if 8 * (count + 1) > len(body):
                self.problem(FREE_DB, pgno, at, f"the free-list record of txn {txnid} lists "
                             f"{count} pages in {len(body)} bytes")
                continue
            for i, free in enumerate(struct.unpack_from(f"<{count}Q", body, 8)):
                where = at + 8 + 8 * i
                if not 2 <= free <= self.last_pg:
                    self.problem(FREE_DB, pgno, where, f"free page {free} (txn {txnid}) is outside "
                                 f"the snapshot's pages 2 to {self.last_pg}")
                elif free in self.seen:
                    self.problem(FREE_DB, pgno, where, f"free page {free} (txn {txnid}) is in use "
                                 f"by database {self.seen[free]!r}")
                elif free in self.free:
                    self.problem(FREE_DB, pgno, where, f"page {free} is on the free list twice "
                                 f"(txns {self.free[free]} and {txnid})")
                else:
                    self.free[free] = txnid


def _show(key: bytes) -> str:
    text = repr(bytes(key[:40]))
    return text + ("..." if len(key) > 40 else "")
