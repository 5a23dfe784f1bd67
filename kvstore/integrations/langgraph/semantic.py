"""KVStore's semantic search, the LangGraph side: LangGraph's IndexConfig
(dims, embed, fields), which texts of an item are embedded, embedding them
(sync or async), and the ops that store their vectors. How vectors are
stored and searched: vectors.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from ...errors import InvalidArgumentError
from . import vectors

try:
    from langgraph.store.base import IndexConfig, SearchOp
    from langgraph.store.base.embed import ensure_embeddings, get_text_at_path, tokenize_path
except ImportError as exc:  # pragma: no cover - depends on the environment
    from ._owner import _langgraph_missing

    raise _langgraph_missing(exc) from exc

if TYPE_CHECKING:
    from langgraph.store.base import Op, PutOp

    from ..._types import Key
    from ...store import Store
    from ._owner import Op as Write

# An item: (its LangGraph namespace, its key); a text to embed: (item, path, text)
Item = tuple[tuple[str, ...], str]
Text = tuple[Item, str, str]


class Semantic:
    """The index config of a KVStore, and its vectors' `vectors.Index`.

    :param db: the kvstore store
    :param namespace: the items' kvstore namespace; vectors go to
        ``<namespace>:vectors`` and ``<namespace>:vectorlog``
    :param config: LangGraph's IndexConfig: ``dims``, ``embed`` (a LangChain
        Embeddings, a sync or an async function of a list of texts, or a
        provider string for langchain's init_embeddings), ``fields`` (paths
        as LangGraph parses them; default ``["$"]``, the whole value)
    :param exact_max: candidate rows scored exactly; more use the HNSW graph
    """

    def __init__(self, db: Store[Any], namespace: str, config: IndexConfig, exact_max: int) -> None:
        vectors.require()
        if not isinstance(config, dict):
            raise InvalidArgumentError(
                f"index takes LangGraph's IndexConfig, a dict such as {{'dims': 1536, 'embed': "
                f"embeddings}}, not {type(config).__name__}")
        dims = config.get("dims")
        if isinstance(dims, bool) or not isinstance(dims, int) or dims <= 0:
            raise InvalidArgumentError(
                f"index 'dims' is the number of dimensions of the embeddings, an int > 0, "
                f"not {dims!r}")
        if config.get("embed") is None:
            raise InvalidArgumentError(
                "index needs 'embed': a LangChain Embeddings, or a function (sync or async) "
                "from a list of texts to a list of vectors")
        if isinstance(exact_max, bool) or not isinstance(exact_max, int) or exact_max < 0:
            raise InvalidArgumentError(f"exact_max is a number of vectors >= 0, not {exact_max!r}")
        self.config = dict(config)
        self.dims = dims
        self.embeddings = ensure_embeddings(config["embed"])
        fields = config.get("fields") or ["$"]
        self.fields = [(path, path if path == "$" else tokenize_path(path)) for path in fields]
        self.namespaces = (f"{namespace}:vectors", f"{namespace}:vectorlog")
        self.index = vectors.Index(db.namespace(self.namespaces[0]),
                                   db.namespace(self.namespaces[1]), dims, exact_max)

    # ------------------------------------------------------------ what to embed

    def texts(self, puts: dict[Item, PutOp]) -> list[Text]:
        """(item, path, text) to embed for puts {(namespace, key): PutOp}, as
        InMemoryStore extracts them: a path matching several texts gives
        ``path.0``, ``path.1``...; ``index=False`` none; ``index=[...]``
        those paths instead of the config's."""
        out: list[Text] = []
        for item, op in puts.items():
            if op.value is None or op.index is False:
                continue
            paths = self.fields if op.index is None else [
                (path, path if path == "$" else tokenize_path(path)) for path in op.index]
            for path, tokens in paths:
                found = get_text_at_path(op.value, tokens)
                if len(found) == 1:
                    out.append((item, path, found[0]))
                else:
                    out.extend((item, f"{path}.{i}", text) for i, text in enumerate(found))
        return out

    @staticmethod
    def queries(ops: Sequence[Op]) -> list[str]:
        return sorted({op.query for op in ops if isinstance(op, SearchOp) and op.query})

    def embed(self, texts: list[Text], queries: list[str]
              ) -> tuple[list[list[float]], dict[str, list[float]]]:
        """Vectors of the texts (as from `texts()`) and of the queries."""
        docs = self.embeddings.embed_documents([t for _, _, t in texts]) if texts else []
        return docs, {q: self.embeddings.embed_query(q) for q in queries}

    async def aembed(self, texts: list[Text], queries: list[str]
                     ) -> tuple[list[list[float]], dict[str, list[float]]]:
        docs = await self.embeddings.aembed_documents([t for _, _, t in texts]) if texts else []
        found = {q: await self.embeddings.aembed_query(q) for q in queries}
        return docs, found

    # ------------------------------------------------------------ storing

    def ops(self, puts: dict[Item, PutOp], keys: Sequence[bytes | str], texts: list[Text],
            docs: list[list[float]], ttls: list[float | None]) -> list[Write]:
        """The ops storing the vectors of a batch's puts (keys: their item
        keys; ttls: their TTLs in seconds), in _apply's form, the log last."""
        if len(docs) != len(texts):
            raise InvalidArgumentError(
                f"the embedding function returned {len(docs)} vectors for {len(texts)} texts: "
                f"it must return one per text")
        by_item: dict[Item, tuple[list[str], list[list[float]]]] = {}
        for (item, path, _), vector in zip(texts, docs):
            paths, found = by_item.setdefault(item, ([], []))
            paths.append(path)
            found.append(vector)
        ops: list[Write] = []
        for item, key, ttl in zip(puts, keys, ttls):
            if item in by_item:
                paths, found = by_item[item]
                ops.append((self.namespaces[0], key, [paths, vectors.encode(found, self.dims)], ttl))
            else:  # deleted, or no longer indexed: its vectors go
                ops.append((self.namespaces[0], key, None))
        return ops + self.index.log_ops([k if isinstance(k, bytes) else k.encode("utf-8")
                                         for k in keys])

    def refresh(self, keys: Sequence[Key]) -> None:
        """Push the expiry of these items' vectors with theirs (a refreshing read)."""
        self.index.refresh(keys)
