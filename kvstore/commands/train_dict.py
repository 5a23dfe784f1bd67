"""`kvstore train-dict PATH`: train a zstd dictionary for a namespace and
show what it saves on a sample of its values."""

from __future__ import annotations

import random

from kvstore import engine
from kvstore.dictionaries import DEFAULT_SAMPLES, MIN_SAMPLES

from ._common import CommandError, Progress, human_size, namespace_dbi, open_writable, write_json
from ._records import examine

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lmdb

    from kvstore.store import Store

    from ._common import Args, Out, Parser, Subparsers

EVAL_SAMPLES = 1000  # values re-encoded to measure the ratio


def add_parser(subparsers: Subparsers) -> Parser:
    p = subparsers.add_parser(
        "train-dict", help="train a zstd dictionary for a namespace; show the size it saves",
        description="Train a zstd dictionary on values of a namespace and store it: new values of "
                    "the namespace are compressed with it (values already stored keep theirs). "
                    "Prints the stored size of a sample of values encoded without and with it.")
    p.add_argument("path", help="store directory")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                   help=f"values to train on (default {DEFAULT_SAMPLES}, at least {MIN_SAMPLES})")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def _sample_values(db: Store[Any], dbi: Any, limit: int) -> list[Any]:
    """Up to `limit` values of the namespace, chosen uniformly."""
    env = engine.of(db)

    def read(txn: lmdb.Transaction) -> list[tuple[bytes, bytes]]:
        n = txn.stat(dbi)["entries"]
        keep = set(random.Random(0x6B76).sample(range(n), limit)) if n > limit else None
        records = []
        for i, (key, record) in enumerate(txn.cursor(db=dbi)):
            if keep is None or i in keep:
                records.append((bytes(key), bytes(record)))
        return records

    values = []
    dictionaries = env.dicts.by_id
    for key, record in env.read(read):
        ex = examine(record, engine.codec_of(db), dictionaries, key=key)
        if ex.ok:
            values.append(ex.value)
    return values


def run(args: Args, out: Out) -> int:
    if args.samples < MIN_SAMPLES:
        raise CommandError(f"--samples must be at least {MIN_SAMPLES}")
    db = open_writable(args.path, create=False, clock=args.clock)
    try:
        dbi = namespace_dbi(db, args.namespace)
        if dbi is None:
            raise CommandError(f"namespace {args.namespace!r} holds no values")
        # zstd's training reports nothing while it runs: the bar shows the time it takes
        with Progress(f"train-dict: sampling up to {args.samples:,} values and training", poll=lambda: None):
            dict_id = db.train_dictionary(args.namespace, samples=args.samples)
        dictionary = engine.of(db).dicts.by_id[dict_id]
        codec = engine.codec_of(db)
        values = _sample_values(db, dbi, EVAL_SAMPLES)
        serialized = without = with_dict = 0
        with Progress("train-dict: measuring", len(values)) as progress:
            for v in values:
                serialized += len(codec.serialize(v)[1])
                without += len(codec.encode(v))
                with_dict += len(codec.encode(v, dictionary=dictionary))
                progress.update()
        info = next(d for d in db.dictionaries() if d["id"] == dict_id)
    finally:
        db.close()
    doc = {
        "namespace": args.namespace,
        "dictionary_id": dict_id,
        "dictionary_size": info["size"],
        "trained_on": info["samples"],
        "sample_values": len(values),
        "serialized_bytes": serialized,
        "stored_bytes_without": without,
        "stored_bytes_with": with_dict,
        "ratio_without": without / serialized if serialized else None,
        "ratio_with": with_dict / serialized if serialized else None,
    }
    if args.json:
        write_json(out, doc)
        return 0
    out.write(f"trained dictionary {dict_id} for namespace {args.namespace!r} on {info['samples']:,} values "
              f"({human_size(info['size'])}); new values of the namespace use it\n")
    if serialized:
        out.write(f"sample of {len(values):,} values, {human_size(serialized)} serialized; stored size "
                  f"(headers included):\n"
                  f"  without the dictionary  {human_size(without):>10}  ratio {doc['ratio_without']:.3f}\n"
                  f"  with dictionary {dict_id:<7} {human_size(with_dict):>10}  ratio {doc['ratio_with']:.3f}\n")
    return 0
