"""How much the property and crash suites run: HYPOTHESIS_PROFILE=dev|ci|deep.

    dev   the default: fast, for the edit-and-test loop
    ci    more examples and crash trials; .ci/run sets it
    deep  long, for manual runs; README "Reliability" has its command and figures

Each profile sets hypothesis's examples per property and steps per state
machine, and the number of random-SIGKILL crash trials and kill counts per
kill point of tests/property/test_process_crash.py. An unknown name is an
error (hypothesis refuses to load it), never a quiet default.

Every profile prints a failing example's reproduction: hypothesis shows the
failing steps (or arguments) and, with print_blob, the
``@reproduce_failure(...)`` line to paste above the test.

Overrides for one run: KVSTORE_EXAMPLES=N (examples per property, to bound
a deep run's time), KVSTORE_CRASH_TRIALS=N (seeds 0..N-1 of the random
crash test) or KVSTORE_CRASH_SEEDS=a,b,c (exactly those seeds, to replay a
failure: the seed is in the test id).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = ["NAME", "CURRENT", "crash_seeds", "kill_counts"]

PROFILES = {
    # max_examples: examples per @given test and per state machine;
    # stateful_step_count: most steps in one state-machine example;
    # crash_seeds: random-SIGKILL trials (each: 2 rounds of 3 writer processes);
    # kill_counts: which commit (N-th arrival) each kill point fires at.
    "dev": {"max_examples": 20, "stateful_step_count": 30, "crash_seeds": 3, "kill_counts": (1, 17)},
    "ci": {"max_examples": 100, "stateful_step_count": 50, "crash_seeds": 8, "kill_counts": (1, 4, 17)},
    "deep": {"max_examples": 1000, "stateful_step_count": 80, "crash_seeds": 40,
             "kill_counts": (1, 2, 3, 4, 6, 9, 17, 30, 60, 120)},
}

for _name, _p in PROFILES.items():
    settings.register_profile(_name, max_examples=_p["max_examples"],
                              stateful_step_count=_p["stateful_step_count"], deadline=None,
                              print_blob=True, suppress_health_check=[HealthCheck.too_slow])

NAME = os.environ.get("HYPOTHESIS_PROFILE") or "dev"
settings.load_profile(NAME)  # an unknown name raises InvalidArgument here
CURRENT = PROFILES[NAME]
if os.environ.get("KVSTORE_EXAMPLES"):
    settings.register_profile(f"{NAME}+examples", settings.get_profile(NAME),
                              max_examples=int(os.environ["KVSTORE_EXAMPLES"]))
    settings.load_profile(f"{NAME}+examples")


def crash_seeds() -> list[int]:
    """Seeds of the random-SIGKILL trials of this run."""
    if os.environ.get("KVSTORE_CRASH_SEEDS"):
        return [int(s) for s in os.environ["KVSTORE_CRASH_SEEDS"].split(",")]
    n = int(os.environ.get("KVSTORE_CRASH_TRIALS") or CURRENT["crash_seeds"])
    return list(range(n))


def kill_counts() -> tuple[int, ...]:
    return CURRENT["kill_counts"]
