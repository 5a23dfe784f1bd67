"""A deterministic fake embedding for tests and benchmarks: each token of a
text is hashed (blake2b) to a few signed coordinates, and the sum is
normalised. Needs langchain_core (the langgraph extra). Texts sharing words get similar vectors; no model, no network."""

from __future__ import annotations

import hashlib
import math
import re

from langchain_core.embeddings import Embeddings

_TOKEN = re.compile(r"\w+")


class HashEmbeddings(Embeddings):
    """A LangChain-style `Embeddings` (embed_documents / embed_query) hashing
    each lowercased token of a text to `per_token` signed coordinates of a
    `dims`-dimensional vector, then normalising it (a text without tokens:
    the zero vector)."""

    def __init__(self, dims: int = 64, per_token: int = 4) -> None:
        self.dims = dims
        self.per_token = per_token
        self.calls = 0  # embed_documents / embed_query calls made, for tests

    def _embed(self, text: str) -> list[float]:
        vector = [0.0] * self.dims
        for token in _TOKEN.findall(text.lower()):
            digest = hashlib.blake2b(token.encode("utf-8"), digest_size=4 * self.per_token).digest()
            for i in range(self.per_token):
                word = int.from_bytes(digest[4 * i:4 * i + 4], "little")
                vector[word % self.dims] += 1.0 if word & 0x80000000 else -1.0
        norm = math.sqrt(sum(x * x for x in vector))
        return [x / norm for x in vector] if norm else vector

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        return [self._embed(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        self.calls += 1
        return self._embed(text)
