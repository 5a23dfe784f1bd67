import os
import subprocess
import tempfile
import uuid

import pytest

import kvstore.codec
from support import crash_report
from support import profiles  # registers and loads the hypothesis profile (HYPOTHESIS_PROFILE)

# The whole suite runs once per codec backend built here (test modules that
# parametrise over the backends themselves are left alone).
BACKENDS = kvstore.codec.backends()
# test_etcd: the etcd engine's own behaviours (failover, limits, the cache's
# watch), which do not depend on the codec; tests/test_engines.py runs the
# API on etcd with both.
_OWN_BACKEND_PARAMS = {"test_codec_backends", "test_etcd"}


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


# What `pytest -m "not slow"` leaves out (README: "Install, run, test"):
# the property, crash and fault suites of tests/property (hypothesis state
# machines, SIGKILLed writer processes, page flips) and the tests elsewhere
# that took over 3 s each in a full run (`pytest --durations=60`).
SLOW_DIRS = ("tests/property/",)
SLOW_TESTS = {
    "tests/test_lmdbfile.py::test_every_byte_of_a_branch_page_header_and_its_node_pointers",
    "tests/test_close.py::test_close_while_durable_writers_run_always_returns_and_loses_nothing",
    "tests/test_cli.py::test_dump_and_check_are_consistent_while_another_process_writes",
    "tests/test_cli.py::test_backup_while_another_process_writes",
    "tests/test_open_hardening.py::test_processes_creating_the_same_store_at_once",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        test = item.nodeid.split("[", 1)[0]
        if test.startswith(SLOW_DIRS) or test in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def store_path(tmp_path):
    return str(tmp_path / "store")


@pytest.fixture
def db(store_path, request):
    """A store at store_path; on the test's `clock` fixture (Options.clock)
    when the test takes one (tests/test_langgraph_store.py's TTL tests)."""
    import kvstore

    options = {"clock": request.getfixturevalue("clock")} if "clock" in request.fixturenames else {}
    store = kvstore.open(store_path, **options)
    yield store
    store.close()


# ---------------------------------------------------------------- reliability counts

_OWNED_REPORT = pytest.StashKey[str]()  # the report file this run made (and removes)


def pytest_configure(config):
    # Tests append their counts to KVSTORE_CRASH_REPORT (a fresh file unless
    # one is named); the lines of this run carry its id.
    if not os.environ.get(crash_report.ENV):
        fd, path = tempfile.mkstemp(prefix="kvstore-crash-report-", suffix=".jsonl")
        os.close(fd)
        os.environ[crash_report.ENV] = path
        config.stash[_OWNED_REPORT] = path
    os.environ[crash_report.RUN_ENV] = uuid.uuid4().hex


def pytest_unconfigure(config):
    owned = config.stash.get(_OWNED_REPORT, None)
    if owned:
        os.unlink(owned)
        os.environ.pop(crash_report.ENV, None)


@pytest.hookimpl(wrapper=True, trylast=True)  # inside hypothesis's own wrapper: its hook is chained
def pytest_runtest_call(item):
    with crash_report.counting_examples():
        return (yield)


def pytest_terminal_summary(terminalreporter):
    t = crash_report.totals(os.environ[crash_report.ENV], os.environ[crash_report.RUN_ENV])
    if not any(t.values()):
        return
    sizes = " ".join(f"{k}={os.environ[k]}" for k in ("KVSTORE_EXAMPLES", "KVSTORE_CRASH_TRIALS",
                                                       "KVSTORE_CRASH_SEEDS") if os.environ.get(k))
    terminalreporter.write_sep("=", f"reliability counts (HYPOTHESIS_PROFILE={profiles.NAME}{' ' + sizes if sizes else ''})")
    for line in crash_report.format_totals(t):
        terminalreporter.write_line(line)


# ---------------------------------------------------------------- a small real file system


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot run mount here: {exc}")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a 4 MiB tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield str(mnt)
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ---------------------------------------------------------------- etcd (kvstore/etcd/)


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory):
    """A real 3-member etcd cluster on 127.0.0.1 for the whole session
    (tests/support/etcd_cluster.py), stopped by its PIDs at the end.
    Skips only when the etcd binary is missing (.ci/run installs it) or
    the extra is not installed."""
    from support import etcd_cluster

    if etcd_cluster.ETCD is None:
        pytest.skip("no etcd binary on PATH: install Debian's etcd-server (.ci/run does)")
    pytest.importorskip("pyetcd", reason="the etcd extra is not installed: pip install -e '.[etcd]'")
    cluster = etcd_cluster.EtcdCluster.start(str(tmp_path_factory.mktemp("etcd")))
    yield cluster
    cluster.stop()


@pytest.fixture
def etcd_url(etcd_cluster):
    """The URL of a store of its own (a fresh prefix) on the session's cluster."""
    return etcd_cluster.url(f"t-{uuid.uuid4().hex[:12]}")
