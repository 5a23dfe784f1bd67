"""What kvstore's record format costs LangGraph's serialized values.

KVStoreSaver stores a channel value as ``[type, bytes]`` (bytes from
LangGraph's serializer): msgpack wraps the bytes in a bin header and copies
them, then the codec compresses and checksums the payload. The alternative,
a top-level ``bytes`` value, is stored raw (no msgpack at all). This script
times both, per value, for the codec backends built here.

Run from the repository root (a few seconds; needs the langgraph extra):

    python bench/bench_langgraph_bytes.py [--rounds N]

Values: a 20-message chat history (LangChain messages, ~7.5 KB serialized),
and a small dict. Figures are the best of --rounds (5) rounds of 3,000
operations, CPU time (time.process_time); the ratio is raw / as stored.
"""

from __future__ import annotations

import argparse
import time

import kvstore.codec
from kvstore.options import Options


def _values():
    from langchain_core.messages import AIMessage, HumanMessage
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    serde = JsonPlusSerializer()
    history = [HumanMessage(content=f"question {i} about the weather in a city " * 3)
               if i % 2 else AIMessage(content=f"a longer answer with details {i} " * 6)
               for i in range(20)]
    return {"chat history": serde.dumps_typed(history), "small dict": serde.dumps_typed({"x": 1})}


def _time(fn, arg, n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        fn(arg)
    return (time.process_time() - start) / n * 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    o = Options()
    for backend in kvstore.codec.backends():
        codec = kvstore.codec.get_backend(backend).Codec(o.compression, o.compression_level, o.compress_min_size, o.max_value_size)
        for name, (kind, data) in _values().items():
            shapes = {"as stored [type, bytes]": [kind, data], "raw bytes": data}
            best = {}
            for _ in range(args.rounds):
                for label, value in shapes.items():
                    record = codec.encode(value)
                    enc = _time(codec.encode, value, 3000)
                    dec = _time(codec.decode, record, 3000)
                    old = best.get(label, (enc, dec, len(record)))
                    best[label] = (min(enc, old[0]), min(dec, old[1]), len(record))
            print(f"{backend:6s} {name} ({len(data)} B serialized)")
            for label, (enc, dec, size) in best.items():
                print(f"  {label:24s} encode {enc:6.2f} us  decode {dec:6.2f} us  record {size} B")
            (e1, d1, _), (e2, d2, _) = best.values()
            print(f"  raw / as stored: encode {e2 / e1:.2f}x, decode {d2 / d1:.2f}x")


if __name__ == "__main__":
    main()
