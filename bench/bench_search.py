"""KVStore's semantic search (kvstore/integrations/langgraph/vectors.py) over
100,000 items: latency of ``search(query=...)`` and recall@10 of the HNSW
graph against the exact search, in the same run.

Run from the repository root (about 2-3 minutes on a shared 2-core VM; needs
the langgraph and search extras):

    python bench/bench_search.py [--items 100000] [--dims 128] [--queries 200]

Data: items {"text": ...} of 12 words drawn from a 5,000-word vocabulary
with Zipf weights (so texts share common words), in 100 namespaces
("docs", "n00".."n99"); queries of 3 words drawn the same way. Embedding:
tests/support/hash_embeddings.py (each token hashed to 4 signed
coordinates, normalised): deterministic, no model. Items are put through
KVStore.batch, 500 per batch, non-durable, one flush at the end.

  put                 items/s through KVStore.batch (embedding included)
  cold load           a new KVStore's first search: reading every stored vector
  exact search        search(("docs",), query=q, limit=10) scoring every vector (numpy)
  hnsw build          a new KVStore's first search and the graph's build in the background
                      (one core), until the graph is ready: searches are exact meanwhile
  hnsw search         the same searches through the HNSW graph (hnswlib)
  exact, one ns       search(("docs", "n07"), ...): 1% of the vectors, scored exactly
  recall@10           the share of the exact top 10 the graph returns; "with ties":
                      a result counts when it scores at least the exact 10th score
                      (the hash embedding gives many equal scores)
  catch-up            a search right after another KVStore put one item (log read,
                      one vector reloaded)

Latencies are wall-clock (time.perf_counter) per search, embedding of the
query included; p50 and p99 over --queries searches.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

import kvstore  # noqa: E402
from kvstore.integrations.langgraph import KVStore, vectors  # noqa: E402
from langgraph.store.base import PutOp  # noqa: E402
from support.hash_embeddings import HashEmbeddings  # noqa: E402


def _words(rng: random.Random, vocab: list[str], weights: list[float], n: int) -> str:
    return " ".join(rng.choices(vocab, weights=weights, k=n))


def _latencies(store: KVStore, prefix: tuple, queries: list[str]) -> tuple[list, list[float]]:
    results, times = [], []
    for q in queries:
        start = time.perf_counter()
        results.append(store.search(prefix, query=q, limit=10))
        times.append(time.perf_counter() - start)
    return results, times


def _ms(times: list[float]) -> str:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(times) * 1e3:7.2f} ms   p99 {p99 * 1e3:7.2f} ms"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args(argv)
    rng = random.Random(18)
    vocab = [f"w{i}" for i in range(5000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]
    embeddings = HashEmbeddings(args.dims)
    index = {"dims": args.dims, "embed": embeddings, "fields": ["text"]}
    queries = [_words(rng, vocab, weights, 3) for _ in range(args.queries)]

    with tempfile.TemporaryDirectory() as path, kvstore.open(path) as db:
        writer = KVStore(db, durable=False, index=index)
        start = time.perf_counter()
        for first in range(0, args.items, 500):
            writer.batch([PutOp(("docs", f"n{i % 100:02d}"), f"item{i}",
                                {"text": _words(rng, vocab, weights, 12)})
                          for i in range(first, min(first + 500, args.items))])
        db.flush()
        took = time.perf_counter() - start
        print(f"{args.items} items, {args.dims} dims, {args.queries} queries, limit 10; hnswlib "
              f"M {vectors.HNSW_M}, ef_construction {vectors.HNSW_EF_CONSTRUCTION}, "
              f"ef {vectors.HNSW_EF_MIN}")
        print(f"put                 {args.items / took:9.0f} items/s ({took:.1f} s)")

        exact = KVStore(db, index=index, exact_max=10 ** 9)
        start = time.perf_counter()
        exact.search(("docs",), query="warm up", limit=1)
        print(f"cold load           {time.perf_counter() - start:9.2f} s")
        truth, times = _latencies(exact, ("docs",), queries)
        print(f"exact search        {_ms(times)}")
        exact_p50 = statistics.median(times)

        graph = KVStore(db, index=index, exact_max=0)
        start = time.perf_counter()
        graph.search(("docs",), query="warm up", limit=1)  # loads, answers exactly, starts the build
        graph._semantic.index.wait_for_graph()
        print(f"hnsw build          {time.perf_counter() - start:9.2f} s (in the background; "
              f"load included)")
        found, times = _latencies(graph, ("docs",), queries)
        print(f"hnsw search         {_ms(times)}   ({exact_p50 / statistics.median(times):.1f}x "
              f"faster than exact)")
        _, times = _latencies(exact, ("docs", "n07"), queries)
        print(f"exact, one ns       {_ms(times)}")

        strict = tied = 0
        for want, got in zip(truth, found):
            strict += len({r.key for r in want} & {r.key for r in got})
            tied += sum(r.score >= want[-1].score - 1e-6 for r in got)
        n = 10 * len(truth)
        print(f"recall@10           {strict / n:9.3f}   with ties {tied / n:.3f}")

        times = []
        for i in range(50):
            writer.put(("docs", "n00"), f"new{i}", {"text": queries[i]})
            start = time.perf_counter()
            graph.search(("docs",), query=queries[i], limit=10)
            times.append(time.perf_counter() - start)
        print(f"catch-up + hnsw     {_ms(times)}")


if __name__ == "__main__":
    main()
