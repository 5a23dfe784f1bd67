import os

import pytest
from hypothesis import HealthCheck, settings

import kvstore.codec

# Profiles: "ci" (default) and "fuzz" (HYPOTHESIS_PROFILE=fuzz, for the fuzzing
# job). print_blob makes a failing example print the @reproduce_failure line.
settings.register_profile("ci", max_examples=60, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=3000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The whole suite runs once per codec backend built here (test modules that
# parametrise over the backends themselves are left alone).
BACKENDS = kvstore.codec.backends()
_OWN_BACKEND_PARAMS = {"test_codec_backends"}


def pytest_generate_tests(metafunc):
    if "codec_backend" in metafunc.fixturenames:
        if metafunc.module.__name__.rpartition(".")[2] not in _OWN_BACKEND_PARAMS:
            metafunc.parametrize("codec_backend", BACKENDS, indirect=True)


@pytest.fixture(autouse=True)
def codec_backend(request, monkeypatch):
    """The codec backend stores use in this test (and in its child processes)."""
    name = getattr(request, "param", None)
    if name is None:  # unittest-style tests (hypothesis state machines): the process default
        yield kvstore.codec.backend
        return
    previous = kvstore.codec.backend
    kvstore.codec.use(name)
    monkeypatch.setenv("KVSTORE_CODEC", name)
    try:
        yield name
    finally:
        kvstore.codec.use(previous)


@pytest.fixture
def store_path(tmp_path):
    return str(tmp_path / "store")


@pytest.fixture
def db(store_path):
    import kvstore

    store = kvstore.open(store_path)
    yield store
    store.close()
