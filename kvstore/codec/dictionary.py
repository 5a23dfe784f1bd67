"""A zstd dictionary as the codec uses it: an id (as recorded in record
headers) and the dictionary's bytes."""

from __future__ import annotations

import functools

import zstandard

__all__ = ["Dictionary"]


class Dictionary:
    """A trained zstd dictionary, immutable. `id` is never 0."""

    __slots__ = ("id", "data", "__dict__")

    def __init__(self, id: int, data: bytes):
        if not 0 < id <= 0xFFFFFFFF:
            raise ValueError(f"dictionary id must be 1 .. 2**32-1, not {id!r}")
        self.id = id
        self.data = bytes(data)

    @functools.cached_property
    def zstd_dict(self) -> zstandard.ZstdCompressionDict:
        return zstandard.ZstdCompressionDict(self.data)

    def __repr__(self) -> str:
        return f"Dictionary(id={self.id}, {len(self.data)} bytes)"
