"""Benchmark of the etcd engine (issue 19): kvstore's grouping and cache
against the etcd client called directly, on a 3-member cluster on 127.0.0.1.

Run from the repository root (a few minutes on a shared 2-core VM; needs the
`etcd` binary and the `etcd` extra, `pip install -e '.[etcd]'`):

    python bench/bench_etcd.py [--ops N] [--rounds N] [--copy-records N]

The bench starts its own cluster (tests/support/etcd_cluster.py: 3 members,
fsync on, temporary data directories) and stops it by its PIDs at the end.
Each round runs every contender once, in alternating order, each under a
prefix of its own; each figure is the median round's ops/s (wall clock),
each ratio the median of the per-round ratios. The values are the agent
corpus's (bench/data.py), cycled.

  kvstore buffered puts       put(k, v, durable=False) of N records, timed until
                              flush(): kvstore groups them into etcd Txns
  etcd put per call           one Put per record, from one client (gRPC stubs of
                              etcd-sdk-python, the library kvstore uses), the value
                              msgpack-packed; target: buffered puts >= 10x this
  kvstore durable, 16 threads put(k, v, durable=True) from 16 threads, N in all:
                              concurrent callers share Txns
  etcd client, 16 threads     16 threads calling Put on one client, N in all;
                              target: kvstore durable >= 2x this
  etcd Txns of 16, 1 sender   the bound of kvstore durable: a hand-written loop
                              sending Txns of 16 Puts (what 16 durable writers
                              make at best) one at a time, built beforehand; its
                              note has the members' CPU per Txn
  kvstore cache hit           get(k) of one key read before (the read cache)
  etcd get                    a Range of one key (serializable=False: linearizable,
                              what a get that must see every write costs);
                              target: cache hit >= 50x this
  copy local -> etcd          `kvstore copy` of the first --copy-records corpus
  copy etcd -> local          records (20,000: the whole corpus) and back: time,
                              records/s, with the read-back check included

What bounds each figure, printed beside it (the last round's): the CPU per
op of this process (client: kvstore or the bare client, gRPC's threads
included) and of the three members together, and how many cores both kept
busy (this machine has 2, shared: near 2, the CPU is the bound, not the
network or the fsyncs); for kvstore's writes, the writes per etcd Txn it
made (its stats). `etcd put per call` is one round trip and one Raft commit
(an fsync on each member) per write.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "bench"))

import msgpack  # noqa: E402

import data  # noqa: E402
import kvstore  # noqa: E402
from bench_txn import threaded  # noqa: E402
from harness import alternated_rounds, ratio_line  # noqa: E402
from kvstore.cli import main as cli_main  # noqa: E402

THREADS = 16
HASLEADER = (("hasleader", "true"),)  # what kvstore's client sends with every call


class Direct:
    """The etcd client without kvstore: one gRPC channel to the first member."""

    def __init__(self, endpoint: str):
        import grpc
        from pyetcd import etcdrpc as rpc

        self.rpc = rpc
        self.channel = grpc.insecure_channel(endpoint)
        self.kv = rpc.KVStub(self.channel)

    def put(self, key: bytes, value: bytes) -> None:
        self.kv.Put(self.rpc.PutRequest(key=key, value=value), timeout=10, metadata=HASLEADER)

    def txn(self, request) -> None:
        self.kv.Txn(request, timeout=10, metadata=HASLEADER)

    def get(self, key: bytes) -> bytes | None:
        kvs = self.kv.Range(self.rpc.RangeRequest(key=key), timeout=10, metadata=HASLEADER).kvs
        return kvs[0].value if kvs else None

    def close(self) -> None:
        self.channel.close()


def member_cpu(cluster) -> float:
    """CPU seconds the cluster's members have used (user + system, /proc)."""
    total = 0.0
    for m in cluster.members:
        with open(f"/proc/{m.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def contenders(cluster, direct: Direct, records: list, ops: int, hits: int):
    """name -> fn(prefix) returning (ops/s, note)."""

    def rate(fn, n: int) -> tuple[float, str]:
        """(ops/s, where the CPU went): this process's and the members', per
        op, and the cores both kept busy (2 here: near 2, the CPU bounds it)."""
        c0, e0, t0 = time.process_time(), member_cpu(cluster), time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        client, members = time.process_time() - c0, member_cpu(cluster) - e0
        return n / wall, (f"CPU per op: client {1e6 * client / n:,.0f} us, etcd {1e6 * members / n:,.0f} us; "
                          f"{(client + members) / wall:.2f} cores busy")

    def with_groups(measured: tuple[float, str], db) -> tuple[float, str]:
        per = db.stats().get("ops_per_commit") or {}
        extra = f"; {per['mean']:.1f} writes per etcd Txn (mean)" if per.get("mean") else ""
        return measured[0], measured[1] + extra

    def per_txn(fn, n: int, txns: int) -> tuple[float, str]:
        e0 = member_cpu(cluster)
        measured = rate(fn, n)
        return measured[0], measured[1] + f"; etcd CPU per Txn {1e6 * (member_cpu(cluster) - e0) / txns:,.0f} us"

    items = [(k.encode(), v) for k, v in (records[i % len(records)] for i in range(ops))]

    def kv_buffered(prefix):
        with kvstore.open(cluster.url(prefix)) as db:
            def run():
                for k, v in items:
                    db.put(k, v, durable=False)
                db.flush()
            return with_groups(rate(run, ops), db)

    def etcd_per_call(prefix):
        p = prefix.encode() + b"/"
        return rate(lambda: [direct.put(p + k, msgpack.packb(v, use_bin_type=True)) for k, v in items], ops)

    def kv_durable_threads(prefix):
        with kvstore.open(cluster.url(prefix)) as db:
            parts = [items[i::THREADS] for i in range(THREADS)]
            e0 = member_cpu(cluster)
            measured = with_groups(rate(lambda: threaded(THREADS, lambda i: [db.put(k, v, durable=True)
                                                                             for k, v in parts[i]]), ops), db)
            txns = db.stats()["commits"] or 1
            return measured[0], measured[1] + f"; etcd CPU per Txn {1e6 * (member_cpu(cluster) - e0) / txns:,.0f} us"

    def etcd_threads(prefix):
        p = prefix.encode() + b"/"
        parts = [items[i::THREADS] for i in range(THREADS)]
        return rate(lambda: threaded(THREADS, lambda i: [direct.put(p + k, msgpack.packb(v, use_bin_type=True))
                                                         for k, v in parts[i]]), ops)

    def etcd_txns_of_16(prefix):
        p = prefix.encode() + b"/"
        packed = [(p + b"%d/" % i + k, msgpack.packb(v, use_bin_type=True)) for i, (k, v) in enumerate(items)]
        rpc = direct.rpc
        txns = [rpc.TxnRequest(success=[rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v))
                                        for k, v in packed[i:i + THREADS]]) for i in range(0, ops, THREADS)]
        return per_txn(lambda: [direct.txn(t) for t in txns], ops, len(txns))

    key, value = items[0]

    def kv_cache_hit(prefix):
        with kvstore.open(cluster.url(prefix)) as db:
            db.put(key, value, durable=True)
            db.get(key)
            return rate(lambda: [db.get(key) for _ in range(hits)], hits)

    def etcd_get(prefix):
        k = prefix.encode() + b"/" + key
        direct.put(k, msgpack.packb(value, use_bin_type=True))
        n = max(1, hits // 20)  # a round trip each: fewer of them
        return rate(lambda: [direct.get(k) for _ in range(n)], n)

    return {
        "kvstore buffered puts": kv_buffered,
        "etcd put per call": etcd_per_call,
        "kvstore durable, 16 threads": kv_durable_threads,
        "etcd client, 16 threads": etcd_threads,
        "etcd Txns of 16, 1 sender": etcd_txns_of_16,
        "kvstore cache hit": kv_cache_hit,
        "etcd get": etcd_get,
    }


RATIOS = [("kvstore buffered puts", "etcd put per call", 10.0),
          ("kvstore durable, 16 threads", "etcd client, 16 threads", 2.0),
          ("kvstore cache hit", "etcd get", 50.0)]


def copy_round(cluster, records: list, n: int, tmp: str, r: int) -> tuple[dict, dict]:
    """`kvstore copy` of n corpus records, local -> etcd -> local: (there, back) --json reports."""
    src, back = os.path.join(tmp, f"src{r}"), os.path.join(tmp, f"back{r}")
    with kvstore.open(src) as db:
        db.put_many({k: v for k, v in data.distinct(records, n)}, durable=True)
    url = cluster.url(f"copy{r}")
    reports = []
    for a, b in ((src, url), (url, back)):
        out = io.StringIO()
        status = cli_main(["copy", a, b, "--json"], out=out)
        if status != 0:
            raise SystemExit(f"kvstore copy {a} {b} failed (exit {status}): {out.getvalue()}")
        reports.append(json.loads(out.getvalue()))
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(back, ignore_errors=True)
    return reports[0], reports[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=1600, help="puts per write contender per round")
    ap.add_argument("--hits", type=int, default=20000, help="gets of the cache-hit contender per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--copy-records", type=int, default=20000, help="records of `kvstore copy` (0: no copy rows)")
    args = ap.parse_args(argv)
    from support.etcd_cluster import ETCD, EtcdCluster

    if ETCD is None:
        raise SystemExit("bench_etcd: no etcd binary on PATH (Debian: apt-get install etcd-server)")
    records, where = data.load(None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed: still stop the cluster (finally)
    tmp = tempfile.mkdtemp(prefix="kvstore-bench-etcd-")
    cluster = EtcdCluster.start(tmp)  # member directories and logs under tmp
    direct = Direct(cluster.members[0].endpoint)
    try:
        runs = contenders(cluster, direct, records, args.ops, args.hits)
        names = list(runs)
        print(f"bench_etcd: 3 etcd members on 127.0.0.1 ({os.path.basename(ETCD)} "
              f"{_etcd_version(ETCD)}), {args.ops} puts per write contender, {args.hits} cache hits, "
              f"{args.rounds} rounds; data {where}; load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} cores at the start")
        copies: list[tuple[dict, dict]] = []

        def copy_after(r):
            if args.copy_records:
                copies.append(copy_round(cluster, records, args.copy_records, tmp, r))

        rates, notes = alternated_rounds({name: lambda r, name: runs[name](f"r{r}-{names.index(name)}")
                                          for name in names}, args.rounds, copy_after)
        print(f"\n(load average now {os.getloadavg()[0]:.1f})")
        for name in names:
            print(f"  {name:<28} {statistics.median(rates[name]):>12,.0f} ops/s  {notes.get(name, '')}")
        for a, b, target in RATIOS:
            print("  " + ratio_line(rates, a, b, target, digits=1))
        bound = statistics.median(x / y for x, y in zip(rates["etcd Txns of 16, 1 sender"],
                                                        rates["etcd client, 16 threads"]))
        print(f"  etcd Txns of 16, 1 sender / etcd client, 16 threads: {bound:.1f}x (the bound of kvstore "
              f"durable's ratio: one Txn of 16 writes in flight, nothing else done)")
        for label, i in (("copy local -> etcd", 0), ("copy etcd -> local", 1)):
            if not copies:
                break
            docs = [c[i] for c in copies]
            secs = statistics.median(d["seconds"] for d in docs)
            print(f"  {label:<28} {docs[0]['records']:,} records, {statistics.median(d['records_per_s'] for d in docs):>8,.0f} "
                  f"records/s, {secs:.2f} s (writing {statistics.median(d['copy_seconds'] for d in docs):.2f} s, "
                  f"the rest checking); mismatches {sum(len(d['mismatches']) for d in docs)}")
    finally:
        direct.close()
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _etcd_version(binary: str) -> str:
    import subprocess

    try:
        text = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("etcd Version")), "?")


if __name__ == "__main__":
    sys.exit(main())
