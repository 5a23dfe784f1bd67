"""`kvstore --help` and every `kvstore COMMAND --help` stand on their own: the
installed package has no docs/ directory to point to."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from kvstore import commands
from kvstore.cli import build_parser


def help_text(argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == 0
    return out.getvalue()


def points_elsewhere(text) -> bool:
    """A docs/ path or a Markdown file name (data.mdb, LMDB's file, is neither)."""
    return "docs/" in text or re.search(r"\.md\b", text) is not None


def command_names():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


def test_the_help_explains_keys_values_and_exit_statuses_without_pointing_elsewhere():
    text = help_text(["--help"])
    for needed in ("COMMAND --help", "\\xNN", '{"$bytes": BASE64}', '{"$map": [[k, v], ...]}',
                   '{"$float": "nan"|"inf"|"-inf"}', "Exit status: 0 success; 1 a key or namespace not found",
                   "open it read-only", "kvstore: error: MESSAGE"):
        assert needed in text
    assert not points_elsewhere(text)


@pytest.mark.parametrize("name", command_names())
def test_no_command_help_points_to_a_file_the_package_does_not_ship(name):
    text = help_text([name, "--help"])
    assert text.startswith("usage: kvstore " + name)
    assert not points_elsewhere(text)


def test_every_command_module_is_in_the_help():
    assert len(command_names()) == len(commands.COMMANDS)
