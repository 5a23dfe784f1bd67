"""Counts of what the crash and property suites ran and checked.

Tests call `record(...)`; each call appends one JSON line to the file named
by KVSTORE_CRASH_REPORT (tests/conftest.py points it at a fresh file when it
is unset, and prints this run's totals at the end of the pytest run). With
no KVSTORE_CRASH_REPORT, `record` does nothing.

The counters only report. The properties behind "writes lost", "partial
batches seen" and "checksum failures" are asserted by the tests that count
them: a count above 0 comes with a failed test.

    python tests/support/crash_report.py FILE    # the totals of every run recorded in FILE
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

__all__ = ["COUNTERS", "record", "totals", "format_totals", "counting_examples"]

ENV = "KVSTORE_CRASH_REPORT"
RUN_ENV = "KVSTORE_CRASH_REPORT_RUN"  # set per pytest run: the summary counts that run's lines

# key: what it counts (the summary's wording)
COUNTERS = {
    "crash_trials": "crash trials run (processes SIGKILLed, store checked after)",
    "kill_points": "kill points covered",
    "simulated_crashes": "simulated crashes (crash model, in process)",
    "examples": "hypothesis examples run",
    "acked_writes_checked": "acknowledged writes checked",
    "writes_lost": "writes lost",
    "partial_batches": "partial batches seen",
    "checksum_failures": "checksum failures",
    "values_checksummed": "stored values checksummed after crashes (kvstore check)",
}


def record(**counts) -> None:
    """Add counts (names from COUNTERS; kill_points is a list of point names)."""
    path = os.environ.get(ENV)
    if not path:
        return
    unknown = set(counts) - set(COUNTERS)
    if unknown:
        raise ValueError(f"unknown counter(s) {sorted(unknown)}; known: {sorted(COUNTERS)}")
    line = json.dumps({"run": os.environ.get(RUN_ENV, ""), **counts}, separators=(",", ":"))
    with open(path, "a", encoding="utf-8") as f:  # one write of one line: O_APPEND keeps lines whole
        f.write(line + "\n")


def totals(path: str, run: str | None = None) -> dict:
    """Sum the lines of path (only those of `run`, if given)."""
    out: dict = {k: 0 for k in COUNTERS}
    out["kill_points"] = set()
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        if not line.strip():
            continue
        entry = json.loads(line)
        if run is not None and entry.get("run") != run:
            continue
        for key, value in entry.items():
            if key == "kill_points":
                out[key] |= set(value)
            elif key in COUNTERS:
                out[key] += value
    return out


def format_totals(t: dict) -> list[str]:
    from kvstore.killpoints import POINTS

    width = max(len(v) for v in COUNTERS.values())
    lines = []
    for key, what in COUNTERS.items():
        if key == "kill_points":
            covered = sorted(t[key])
            value = f"{len(set(covered) & set(POINTS))} of {len(POINTS)} ({', '.join(covered) or 'none'})"
        else:
            value = f"{t[key]:,}"
        lines.append(f"{what:<{width}}  {value}")
    return lines


@contextlib.contextmanager
def counting_examples():
    """Count every hypothesis test case run inside (@given tests and state
    machines alike, every phase), through hypothesis's statistics hook
    (the one behind --hypothesis-show-statistics), chaining to whoever set it."""
    try:
        from hypothesis.statistics import collector
    except ImportError:  # a hypothesis without the hook: no count
        yield
        return
    outer = collector.value

    def note(stats):
        record(examples=sum(len(v.get("test-cases", ())) for k, v in stats.items()
                            if k.endswith("-phase") and isinstance(v, dict)))
        if outer is not None:
            outer(stats)

    with collector.with_value(note):
        yield


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    for line in format_totals(totals(argv[0])):
        print(line)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    sys.exit(main(sys.argv[1:]))
