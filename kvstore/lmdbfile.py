"""The only parser of LMDB's file (data.mdb), with kvstore/lmdbwalk.py: here
the file's grammar, the meta pages, the last-txnid view and the checks at
open; in lmdbwalk the walk over every page of the newest snapshot.

kvstore hands the file to LMDB, which trusts it: a damaged page makes LMDB
read past the map (SIGBUS), fail an assertion (SIGABRT) or silently skip
records. What can be known without LMDB is read here, with os.pread (never
a mapping of the whole file, so a file shorter than it claims cannot fault),
and nothing in this module imports more of kvstore than its errors (and
lmdbwalk, when check_data_file runs the walk).

The layout kvstore reads (LMDB 0.9, MDB_DATA_VERSION 1, 64-bit, little-endian;
`u16`, `u32`, `u64` little-endian words; offsets in bytes):

    file      := meta_page meta_page page*             page n at n * psize
    page      := header body                           psize bytes
    header    := pgno:u64 pad:u16 flags:u16 bounds     16 bytes (PAGEHDRSZ)
    bounds    := lower:u16 upper:u16                   branch and leaf pages
               | pages:u32                             first overflow page
    flags     := P_BRANCH 0x01 | P_LEAF 0x02 | P_OVERFLOW 0x04 | P_META 0x08
                 (P_LEAF2 0x20, P_SUBP 0x40: DUPSORT only, which kvstore never uses)

    meta_page := header meta                           pages 0 and 1
    meta      := magic:u32 (0xBEEFC0DE) version:u32 (1) address:u64 mapsize:u64
                 free_db:db main_db:db last_pg:u64 txnid:u64      136 bytes
                 (free_db.pad is the page size; the newer txnid is the snapshot)
    db        := pad:u32 flags:u16 depth:u16 branch_pages:u64 leaf_pages:u64
                 overflow_pages:u64 entries:u64 root:u64          48 bytes (MDB_db)
                 (root 0xFFFF_FFFF_FFFF_FFFF: an empty tree; depth 0)

    body of a branch or leaf page:
              := ptr:u16 * n  free  node * n            n = (lower - 16) / 2
                 ptr[i]: offset of node i in the page, upper <= ptr[i];
                 ptr order is key order; nodes sit anywhere in [upper, psize)
    node      := lo:u16 hi:u16 flags:u16 ksize:u16 key[ksize] data   (MDB_node)
      branch:    child pgno = lo | hi << 16 | flags << 32; no data; the key
                 of node 0 is not used (keys below node 1 go to child 0)
      leaf:      data size = lo | hi << 16; flags:
                 0           data[size] inline
                 F_BIGDATA 1 data = first overflow pgno:u64; the value fills
                             OVPAGES = (16 - 1 + size) // psize + 1 pages,
                             only the first with a header (pages = OVPAGES)
                 F_SUBDATA 2 main db only: key = a named database's name,
                             data = its db record (48 bytes)
                 F_DUPDATA 4 DUPSORT data: never written by kvstore
    free_db tree: key = txnid:u64 (MDB_INTEGERKEY), data = count:u64 pgno:u64*count,
                 the pages that txn freed.

A snapshot is consistent when every page from 2 to last_pg is reached once,
either from a tree or from the free list; each tree's depth and page counts
and entries are those of its db record, and keys ascend strictly (bytes order;
integers for the free list) within pages and across the tree.

What runs where:

- `check_data_file(path)`, at every kvstore.open(): the meta pages, that the
  file holds the pages they name, the two db records, the free list (as far
  as _MAX_FREE_LIST_PAGES), then `walk()` itself when the snapshot has at
  most _OPEN_WALK_PAGES pages, else the main database's pages and the root
  page of every named database (its header, nodes, key order and the range
  of its children's page numbers). See docs/format.md for the cost measured.
  Damage below the root page of a bigger store is not found at open
  (reading it would slow every open down in proportion to the store):
  `kvstore check` walks every page.
- `walk(path)` (kvstore/lmdbwalk.py, importable from here too): `kvstore
  check`'s first step, every page (reads the whole file).
- `LastTxnid`: the read cache's view of the two meta pages' txnids.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass

from .errors import FormatError, StoreNotFoundError

__all__ = ["check_data_file", "LastTxnid", "newest_meta", "Meta"]

_LMDB_MAGIC = 0xBEEFC0DE
_DATA_VERSION = 1
_META = struct.Struct("<II8xQ")  # magic, version, (address), mapsize
_META_TAIL = struct.Struct("<QQ")  # last_pg, txnid, at offset 120 of the meta
_PAGE_HEADER = 16
_PAGE = struct.Struct("<QHH")  # a page header: pgno, pad, flags (P_BRANCH 1, P_LEAF 2, ...)
_PAGE_BOUNDS = struct.Struct("<QHHHH")  # ... then lower and upper (ends of the free space)
_OVERFLOW = struct.Struct("<QHHI")  # ... or the page count of an overflow run
_NODE = struct.Struct("<HHHH")  # an MDB_node: lo, hi (data size or child pgno), flags, key size
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")
_DB_RECORD = struct.Struct("<4xHH32xQ")  # an MDB_db: (pad), flags, depth, (counts), root
_DB_FULL = struct.Struct("<IHHQQQQQ")  # an MDB_db: pad, flags, depth, branch, leaf, overflow, entries, root
_NO_PAGE = 0xFFFFFFFFFFFFFFFF  # P_INVALID: an empty database has no root
_FREE_DB_FLAGS = (0x08,)  # MDB_INTEGERKEY, what LMDB always gives the free list
_MAIN_DB_FLAGS = (0x00,)  # kvstore opens the main database without flags

P_BRANCH, P_LEAF, P_OVERFLOW, P_META = 0x01, 0x02, 0x04, 0x08
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
_REVERSEKEY, _DUPSORT, _INTEGERKEY = 0x02, 0x04, 0x08
_MAX_KEY = 511  # MDB_MAXKEYSIZE of the LMDB py-lmdb builds
_MAX_DEPTH = 32  # LMDB's CURSOR_STACK: no tree is deeper
# The walk's (kvstore/lmdbwalk.py) names of the two databases of the meta page (namespace names
# never start with "__", so no named database takes them).
FREE_DB, MAIN_DB, META = "__free_list__", "__main__", "__meta__"

# At open: the whole walk for a snapshot of at most this many pages (1 MiB
# of 4 KiB pages, a few ms), else only the roots (module docstring).
_OPEN_WALK_PAGES = 256


# ---------------------------------------------------------------- meta pages


@dataclass
class Meta:
    """The newest valid meta page: what a snapshot starts from."""

    psize: int
    page: int  # 0 or 1
    txnid: int
    last_pg: int
    free_db: tuple[int, ...]  # _DB_FULL fields
    main_db: tuple[int, ...]
    mapsize: int = 0  # the map size its writer had: the store's, whatever a reader opens it with


def _newest_txnid(fd: int) -> int:
    """The larger txnid of the two meta pages (0 if unreadable)."""
    head = os.pread(fd, 64 * 1024 * 2, 0)
    try:
        (psize,) = struct.unpack_from("<I", head, _PAGE_HEADER + 24)
        newest: int = max(_META_TAIL.unpack_from(head, off + _PAGE_HEADER + 120)[1] for off in (0, psize))
        return newest
    except struct.error:
        return 0


def newest_meta(data_path: str, fd: int) -> Meta | None:
    """The newest valid meta page of the open file `fd` (None for an empty
    file), after the checks of check_data_file; raises FormatError."""
    _check_meta(data_path, fd)
    head = os.pread(fd, 64 * 1024 * 2, 0)
    if not head:
        return None
    (psize,) = struct.unpack_from("<I", head, _PAGE_HEADER + 24)
    best = None
    for page in (0, 1):
        base = page * psize + _PAGE_HEADER
        magic, _version, mapsize = _META.unpack_from(head, base)
        if magic != _LMDB_MAGIC:
            continue
        last_pg, txnid = _META_TAIL.unpack_from(head, base + 120)
        if best is None or txnid > best.txnid:
            best = Meta(psize, page, txnid, last_pg, _DB_FULL.unpack_from(head, base + 24),
                        _DB_FULL.unpack_from(head, base + 72), mapsize)
    return best


def check_data_file(path: str) -> None:
    """Refuse a data.mdb that LMDB would map and then fault on, or abort on.

    Reads both meta pages; the newer valid one says how many pages the file
    must hold. A file shorter than that is truncated: mapping it and touching
    a page past its end would kill the process with SIGBUS. The database
    records of that meta page must hold flags kvstore writes and root pages
    that exist and are tree pages: LMDB trusts them and aborts the process
    (an assertion) on the first write otherwise. Then the pages themselves,
    as far as is cheap (the module docstring: all of them in a small store,
    the branch pages of a big one): a damaged branch page makes LMDB abort
    or silently skip records on a scan.

    The meta pages are read before the file's size: another process may
    commit meanwhile, but a file only grows and a meta page is written after
    the pages it names, so the size read second is never too small for the
    meta page read first.
    """
    data_path = os.path.join(path, "data.mdb")
    try:
        fd = os.open(data_path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise StoreNotFoundError(f"{path!r} is below a file, not a directory; give kvstore.open() "
                                 f"a directory path") from None
    except OSError as exc:
        raise FormatError(f"cannot read {data_path} ({exc.strerror}); check that it is a store's "
                          f"data file and that this user may read it") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FormatError(f"{data_path} is not a regular file; {path!r} is not a kvstore store")
        for attempt in range(3):
            txnid = _newest_txnid(fd)
            try:
                _check_meta(data_path, fd)
                _check_pages_at_open(data_path, fd)
                return
            except FormatError as exc:
                # Pages read without a transaction can be reused by a commit
                # of another process meanwhile: damage is only believed if no
                # commit happened while the file was read. A page walk that
                # commits overlapped three times is not believed at all: LMDB
                # itself reads the store next, and a busy store is not refused.
                if _newest_txnid(fd) == txnid:
                    raise
                if attempt == 2:
                    if getattr(exc, "from_page_walk", False):
                        return
                    raise
    finally:
        os.close(fd)


def _check_meta(data_path: str, fd: int) -> None:
    head = os.pread(fd, 64 * 1024 * 2, 0)
    size = os.fstat(fd).st_size
    if size == 0:
        return  # LMDB initialises an empty file as a new environment
    if len(head) < _PAGE_HEADER + 136:
        raise FormatError(f"{data_path} is {size} bytes: too short to be an LMDB file (truncated?)")
    magic, version, _mapsize = _META.unpack_from(head, _PAGE_HEADER)
    if magic != _LMDB_MAGIC:
        raise FormatError(f"{data_path} is not an LMDB data file; it is not a kvstore store")
    (psize,) = struct.unpack_from("<I", head, _PAGE_HEADER + 24)  # md_pad of the free DB
    if psize < 512 or psize > 64 * 1024 or psize & (psize - 1):
        raise FormatError(f"{data_path} has a damaged meta page (page size {psize})")
    best = None
    for off in (0, psize):
        base = off + _PAGE_HEADER
        if len(head) < base + 136:
            raise FormatError(f"{data_path} is {size} bytes: truncated inside its meta pages")
        m, _v, _ = _META.unpack_from(head, base)
        if m != _LMDB_MAGIC:
            continue
        last_pg, txnid = _META_TAIL.unpack_from(head, base + 120)
        if best is None or txnid > best[1]:
            best = (last_pg, txnid, base)
    if best is None:
        raise FormatError(f"{data_path} has no valid meta page; it is not a kvstore store")
    last_pg, _txnid, base = best
    needed = (last_pg + 1) * psize
    if size < needed:
        raise FormatError(
            f"{data_path} is truncated: {size} bytes, but its last commit uses {needed}; "
            f"restore it from a backup (opening it would crash the process)"
        )
    roots = {}
    for name, at, flags_allowed in (("free-list", base + 24, _FREE_DB_FLAGS),
                                    ("main", base + 72, _MAIN_DB_FLAGS)):
        flags, depth, root = _DB_RECORD.unpack_from(head, at)
        if flags not in flags_allowed:
            raise FormatError(f"{data_path}: the {name} database record of the newest meta page has "
                              f"flags {flags:#x} that kvstore never writes (damaged file, or not a "
                              f"kvstore store); restore it from a backup")
        if root == _NO_PAGE:
            continue
        if not 2 <= root <= last_pg or not 1 <= depth <= 64:
            raise FormatError(f"{data_path}: the {name} database's root page {root} (depth {depth}) is "
                              f"outside the file's {last_pg + 1} pages; the file is damaged, restore "
                              f"it from a backup")
        roots[name] = root
    if "main" in roots:
        try:
            free = _free_pages(fd, psize, last_pg, roots.get("free-list"))
        except _Damaged as exc:
            raise FormatError(f"{data_path}: the free list is damaged (page {exc.args[0]}); restore "
                              f"the store from a backup") from None
        if roots["main"] in free:
            raise FormatError(f"{data_path}: the main database's root page {roots['main']} is on the "
                              f"free list (damaged file); restore it from a backup")
    for name, root in roots.items():
        pgno, _pad, page_flags = _PAGE.unpack_from(os.pread(fd, _PAGE_HEADER, root * psize))
        if pgno != root or page_flags & 0x03 in (0, 0x03):
            raise FormatError(f"{data_path}: the {name} database's root page {root} is not a tree page "
                              f"(damaged file); restore it from a backup")


# At most this many pages of the free-list tree are read at open; a bigger
# free list is not checked (reading it would slow the open down).
_MAX_FREE_LIST_PAGES = 256


class _Damaged(Exception):
    pass


def _free_pages(fd: int, psize: int, last_pg: int, root: int | None) -> set[int]:
    """Page numbers on the free list whose tree starts at page `root`, as far
    as _MAX_FREE_LIST_PAGES pages of it go. Raises _Damaged if the tree is
    not well formed."""
    free: set[int] = set()
    if root is None:
        return free
    todo = [root]
    seen = 0
    try:
        while todo and seen < _MAX_FREE_LIST_PAGES:
            pgno = todo.pop()
            seen += 1
            page = os.pread(fd, psize, pgno * psize)
            if len(page) < psize:
                raise _Damaged(pgno)
            own, _pad, flags, lower, upper = _PAGE_BOUNDS.unpack_from(page)
            if own != pgno or not _PAGE_HEADER <= lower <= upper <= psize:
                raise _Damaged(pgno)
            for i in range((lower - _PAGE_HEADER) >> 1):
                (at,) = _U16.unpack_from(page, _PAGE_HEADER + 2 * i)
                if not upper <= at <= psize - 8:
                    raise _Damaged(pgno)
                lo, hi, nflags, ksize = _NODE.unpack_from(page, at)
                if flags & 0x03 == 0x01:  # a branch page: children
                    child = lo | hi << 16 | nflags << 32
                    if not 2 <= child <= last_pg:
                        raise _Damaged(pgno)
                    todo.append(child)
                    continue
                if flags & 0x03 != 0x02:
                    raise _Damaged(pgno)
                data_at = at + 8 + ksize
                if nflags & 0x01:  # F_BIGDATA: the IDL is on an overflow page
                    if data_at + 8 > psize:
                        raise _Damaged(pgno)
                    (over,) = _U64.unpack_from(page, data_at)
                    if not 2 <= over <= last_pg:
                        raise _Damaged(pgno)
                    size = lo | hi << 16
                    idl = os.pread(fd, _PAGE_HEADER + size, over * psize)[_PAGE_HEADER:]
                    seen += 1 + size // psize
                else:
                    idl = page[data_at:data_at + (lo | hi << 16)]
                if len(idl) < 8:
                    raise _Damaged(pgno)
                (count,) = _U64.unpack_from(idl)
                if 8 * (count + 1) > len(idl):
                    raise _Damaged(pgno)
                free.update(struct.unpack_from(f"<{count}Q", idl, 8))
    except struct.error:
        raise _Damaged(pgno) from None
    return free


def _check_pages_at_open(data_path: str, fd: int) -> None:
    """The part of walk() that is cheap enough for every open (module docstring)."""
    from .lmdbwalk import _Walker  # here, not at the top: lmdbwalk imports this module

    meta = newest_meta(data_path, fd)
    if meta is None:
        return
    if meta.last_pg + 1 <= _OPEN_WALK_PAGES:
        result = _Walker(fd, meta).run()
    else:
        result = _Walker(fd, meta, roots_only=True).run()
    if result.problems:
        first = result.problems[0]
        more = len(result.problems) - 1
        exc = FormatError(
            f"{data_path} is damaged: {first}{f' (and {more} more problems)' if more else ''}; "
            f"run `kvstore check` for the full list and restore the store from a backup"
        )
        exc.from_page_walk = True  # type: ignore[attr-defined]  # for `kvstore check`
        raise exc


# ---------------------------------------------------------------- the txnid view


class LastTxnid:
    """The last committed LMDB txnid of the store at `path`, read from the two
    meta pages of its data.mdb (the layout in this module's docstring)
    through a read-only mapping of their own.

    `view`: the txnids of the two meta pages as a live sequence of two
    64-bit words (a strided memoryview of the mapping): `view[0]` and
    `view[1]` read them, each a subscript at C speed with no call (what
    ReadCache.lookup and contains take); calling the object: their max.
    Independent of LMDB's map, so safe while the map is resized, without a
    lock or a transaction. close() drops the object's references (the
    mapping goes once no reader or cache still holds `view`)."""

    _META_TXNID = 16 + 128  # page header, then mm_txnid in MDB_meta (64-bit)

    def __init__(self, path: str) -> None:
        fd = os.open(os.path.join(path, "data.mdb"), os.O_RDONLY)
        try:
            head = os.pread(fd, 64, 0)
            (psize,) = struct.unpack_from("<I", head, 16 + 24)  # md_pad of the free DB
            self._map = mmap.mmap(fd, 2 * psize, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        if psize % 8 or psize < 2 * self._META_TXNID:
            raise ValueError(f"unexpected LMDB page size {psize}")
        words = memoryview(self._map).cast("Q")  # native order: LMDB's, on this machine
        self.view = words[self._META_TXNID // 8::psize // 8]
        if len(self.view) != 2:
            raise ValueError(f"unexpected LMDB page size {psize}")

    def __call__(self) -> int:
        return max(self.view)

    def close(self) -> None:
        self.view = self._map = None  # type: ignore[assignment]  # closed: not used again

