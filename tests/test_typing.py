"""The package is typed (py.typed): mypy --strict passes on it and on a
script using the API as an application does, and flags misuse.

tests/typing/user_script.py must type-check cleanly (its assert_type calls
pin what mypy infers); tests/typing/wrong_types.py holds misuse, each line
with a `# type: ignore[...]`: under --warn-unused-ignores (part of --strict)
an unused ignore is an error, so a misuse mypy stops flagging fails here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import kvstore
from kvstore.options import Options, OptionsDict

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"

needs_mypy = pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                                reason="mypy is not installed (it is in the test extra: pip install -e '.[test]')")


@pytest.fixture(autouse=True)
def _once(codec_backend):
    # Annotations, not values: the same for every codec; run once.
    if codec_backend != kvstore.codec.backends()[0]:
        pytest.skip("typing: run with the first codec backend only")


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory):
    """One cache for the module's runs: the second checks the package from it."""
    return tmp_path_factory.mktemp("mypy-cache")


def _mypy(cache: Path, *targets: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(cache), "--no-error-summary", *targets],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MYPY_FORCE_COLOR": "0"})


@needs_mypy
def test_package_and_user_script_pass_mypy_strict(mypy_cache):
    run = _mypy(mypy_cache, "kvstore", str(TYPING / "user_script.py"))
    assert run.returncode == 0, run.stdout + run.stderr


@needs_mypy
def test_misuse_is_flagged(mypy_cache):
    run = _mypy(mypy_cache, "--warn-unused-ignores", str(TYPING / "wrong_types.py"))
    assert run.returncode == 0, ("a misuse in wrong_types.py is no longer flagged (its ignore is unused), "
                                 "or the file has another error:\n" + run.stdout + run.stderr)
    text = (TYPING / "wrong_types.py").read_text()
    assert text.count("# type: ignore[") >= 20  # the file still holds its misuse


def test_no_module_of_the_package_is_exempt():
    """mypy --strict checks every module: no override ignores a module's
    errors or lets typed code call into an untyped one."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert "untyped_calls_exclude" not in config
    for override in config.get("overrides", []):
        modules = override["module"] if isinstance(override["module"], list) else [override["module"]]
        exempt = override.get("ignore_errors") or override.get("disallow_untyped_defs") is False
        assert not (exempt and any(m.startswith("kvstore") for m in modules)), override


def test_py_typed_is_shipped():
    assert (Path(kvstore.__file__).parent / "py.typed").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'kvstore = ["py.typed"]' in pyproject


def test_options_dict_matches_options():
    """open()'s keyword arguments, as type checkers see them (OptionsDict),
    are exactly Options' fields, with the same types (compression narrowed
    to its two values, apply_worker to its three)."""
    fields = typing.get_type_hints(Options)
    assert set(fields) == {f.name for f in dataclasses.fields(Options)}
    typed = typing.get_type_hints(OptionsDict)
    assert typed.pop("compression") == typing.Literal["zstd", "none"]
    assert fields.pop("compression") is str
    assert typed.pop("apply_worker") == typing.Literal["auto", "always", "never"]
    assert fields.pop("apply_worker") is str
    assert typed == fields
    assert OptionsDict.__total__ is False


def test_user_script_runs(tmp_path):
    """The script type-checked above is real use: it runs."""
    pytest.importorskip("langgraph", reason="the script's LangGraph part needs the langgraph extra")
    spec = importlib.util.spec_from_file_location("kvstore_user_script", TYPING / "user_script.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(str(tmp_path))
