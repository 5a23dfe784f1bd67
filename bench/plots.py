"""PNG plots of a benchmark run (matplotlib; the caller skips them when it is missing)."""

from __future__ import annotations

import os

from harness import family

COLORS = {"kvstore": "#1f77b4", "lmdb": "#ff7f0e", "sqlite3": "#2ca02c", "diskcache": "#9467bd",
          "dbm": "#8c564b", "sqlitedict": "#e377c2", "lmdbm": "#bcbd22", "zstandard": "#7f7f7f"}


def make_plots(results: list, outdir: str, title: str) -> list[str]:
    """Write throughput.png, latency.png and, when measured, batchsize.png and
    scale.png; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(outdir, exist_ok=True)
    written = []
    ok = [r for r in results if not r.skipped and r.ops]
    rows = sorted((r for r in ok if not r.name.startswith(("batchsize-", "ratio-", "scale-"))),
                  key=lambda r: (family(r.name), r.order))
    batch = [r for r in ok if r.name.startswith("batchsize-")]
    scale = [r for r in ok if r.name.startswith("scale-")]

    if rows:
        fig, ax = plt.subplots(figsize=(10, 0.38 * len(rows) + 1.6))
        names = [f"{r.name} ({r.ops:,} ops)" for r in rows][::-1]
        vals = [r.ops_per_sec for r in rows][::-1]
        cols = [COLORS.get(r.system, "gray") for r in rows][::-1]
        ax.barh(names, vals, color=cols)
        ax.set_xscale("log")
        ax.set_xlim(right=max(vals) * 4)  # room for the labels
        ax.set_xlabel("operations per second (log scale; higher is better)")
        ax.set_title(f"Throughput per workload\n{title}", fontsize=10)
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
        shown = [s for s in COLORS if any(r.system == s for r in rows)]
        handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[s]) for s in shown]
        ax.legend(handles, shown, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        ax.grid(axis="x", which="both", alpha=0.3)
        fig.tight_layout()
        path = os.path.join(outdir, "throughput.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    lat_rows = [r for r in rows if r.latencies]
    if lat_rows:
        fig, ax = plt.subplots(figsize=(10, 0.42 * len(lat_rows) + 1.6))
        names = [r.name for r in lat_rows][::-1]
        p50 = [r.percentile(50) * 1e6 for r in lat_rows][::-1]
        p99 = [r.percentile(99) * 1e6 for r in lat_rows][::-1]
        ys = range(len(names))
        ax.barh([y + 0.2 for y in ys], p99, height=0.4, label="p99", color="#d62728")
        ax.barh([y - 0.2 for y in ys], p50, height=0.4, label="p50", color="#1f77b4")
        ax.set_yticks(list(ys))
        ax.set_yticklabels(names)
        ax.set_xscale("log")
        ax.set_xlabel("latency per call, microseconds (log scale; lower is better)")
        ax.set_title(f"Latency per call (p50, p99)\n{title}", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="x", which="both", alpha=0.3)
        fig.tight_layout()
        path = os.path.join(outdir, "latency.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    if batch:
        batch = sorted(batch, key=lambda r: r.extra.get("max_batch_ops", 0))
        xs = [r.extra.get("max_batch_ops", 0) for r in batch]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.plot(xs, [r.ops_per_sec for r in batch], "o-", label="ops/s")
        ax.set_xscale("log")
        ax.set_xlabel("max_batch_ops")
        ax.set_ylabel("buffered fill, ops/s")
        ax.set_ylim(bottom=0)
        ax2 = ax.twinx()
        ax2.plot(xs, [r.extra.get("ops_per_commit_mean", 0) for r in batch], "s--", color="gray",
                 label="mean ops per commit")
        ax2.set_ylabel("mean ops per commit")
        ax2.set_yscale("log")
        ax.set_title(f"Buffered fill vs max_batch_ops\n{title}", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        ax2.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(outdir, "batchsize.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    if scale:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for kind, marker in (("fillrandom", "o-"), ("readrandom", "s-")):
            pts = sorted((r.extra["records"], r.ops_per_sec) for r in scale if r.name.split("-")[1] == kind)
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker, label=kind)
        ax.set_xscale("log")
        ax.set_xlabel("records in the store (log scale)")
        ax.set_ylabel("ops/s (flat is good)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"kvstore throughput as the store grows\n{title}", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        path = os.path.join(outdir, "scale.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
