"""What the native codec's C calls take: a context per thread, and arguments in C's shape.

Each thread that encodes or decodes gets a `Thread` (nativecodec.py keeps
it in a `threading.local`): a kvc_ctx (zstd contexts, the codec's settings,
an error slot), the output buffer C writes into, and a msgpack packer; none
of it is shared, so the C calls need no lock. The buffer starts at
INITIAL_CAP bytes and grows on demand up to KEEP_CAP; a larger output gets
a buffer of its own for one call (`Thread.room`).

The helpers below turn Python arguments into what C takes (keys as one
blob and an array of lengths, a key as pointer and length, the room an
encode may need) and unpack serialized values with the codec's refusal
messages.
"""

from __future__ import annotations

from typing import Any, Iterable

import msgpack

from ..errors import CorruptionError
from .._native import ffi, lib  # nativecodec.py imported it first, or refused to load
from .format import HEADER_SIZE, Buffer, group_keys
from .nativeerrors import CData, msgpack_refusal
from .serial import unpack

__all__ = ["Thread", "alloc", "key_arrays", "key_arg", "encode_room", "unpack_value", "new_packer",
           "INITIAL_CAP", "KEEP_CAP"]

_NULL = ffi.NULL

# Output buffers: each thread keeps one of INITIAL_CAP bytes, grown up to
# KEEP_CAP on demand; larger outputs get a buffer of their own for one call.
INITIAL_CAP = 64 << 10
KEEP_CAP = 4 << 20
# Buffers that C fills completely need no zeroing.
alloc = ffi.new_allocator(should_clear_after_alloc=False)


def key_arrays(keys: Iterable[bytes] | None, n: int) -> tuple[Any, Any]:
    """(keys end to end, their lengths) for a group call of n records, as
    C takes them; (NULL, NULL) without keys (version 1 records)."""
    if keys is None:
        return _NULL, _NULL
    keys = [k if type(k) is bytes else bytes(k) for k in group_keys(keys, n)]
    return b"".join(keys), alloc("size_t[]", list(map(len, keys)))


def key_arg(key: Buffer | None) -> tuple[Any, int]:
    """(pointer or bytes, length) of a key as C takes it; (NULL, 0): none."""
    if key is None:
        return _NULL, 0
    if type(key) is not bytes:
        key = bytes(key)
    return key, len(key)


def encode_room(size: int, count: int = 1) -> int:
    """Output room for `count` values of `size` bytes in all: header plus
    zstd's worst case (ZSTD_compressBound <= n + n/256 + 64) each."""
    return size + (size >> 8) + (HEADER_SIZE + 64) * count


def unpack_value(raw: Buffer) -> Any:
    try:
        return unpack(raw)
    except CorruptionError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise msgpack_refusal(exc) from None


def new_packer() -> Any:  # a msgpack.Packer (msgpack has no type stubs)
    return msgpack.Packer(use_bin_type=True, autoreset=True)


class Thread:
    """What one thread needs: a kvc_ctx (zstd contexts, the codec's settings,
    an error slot), the output buffer it writes to, a msgpack packer."""

    __slots__ = ("ctx", "err", "out", "cap", "buf", "packer")
    ctx: CData  # kvc_ctx *
    err: CData  # kvc_err *, inside ctx
    out: CData  # char[cap]: the output buffer
    cap: int
    buf: CData  # ffi.buffer(out)
    packer: Any  # msgpack.Packer

    def __init__(self, level: int, min_size: int, max_value_size: int, split: tuple[int, int]):
        ctx = lib.kvc_ctx_new(level, min_size, max_value_size)
        if ctx == _NULL:
            raise MemoryError("cannot create zstd contexts")
        self.ctx = ffi.gc(ctx, lib.kvc_ctx_free)
        self.err = lib.kvc_ctx_err(ctx)  # inside ctx: lives as long as it
        lib.kvc_ctx_set_split(ctx, split[0], split[1])
        self.packer = new_packer()
        self._set_buffer(INITIAL_CAP)

    def _set_buffer(self, cap: int) -> None:
        self.out = alloc("char[]", cap)
        self.cap = cap
        self.buf = ffi.buffer(self.out)
        lib.kvc_ctx_set_output(self.ctx, self.out, cap)

    def room(self, need: int) -> tuple[CData, int, CData]:
        """(pointer, capacity, buffer) with at least `need` bytes."""
        if need <= self.cap:
            return self.out, self.cap, self.buf
        if need <= KEEP_CAP:
            self._set_buffer(max(need, min(2 * self.cap, KEEP_CAP)))
            return self.out, self.cap, self.buf
        out = alloc("char[]", need)
        return out, need, ffi.buffer(out)
