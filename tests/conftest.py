import os

import pytest
from hypothesis import HealthCheck, settings

# Profiles: "ci" (default) and "fuzz" (HYPOTHESIS_PROFILE=fuzz, for the fuzzing
# job). print_blob makes a failing example print the @reproduce_failure line.
settings.register_profile("ci", max_examples=60, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=3000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def store_path(tmp_path):
    return str(tmp_path / "store")


@pytest.fixture
def db(store_path):
    import kvstore

    store = kvstore.open(store_path)
    yield store
    store.close()
