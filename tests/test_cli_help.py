"""``fringelive --help`` lists every command from the static table in ``fringelive.cli`` and
imports no command module (so no torch); ``fringelive COMMAND --help`` imports that command's
module only. Each import check runs ``main`` in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fringelive.cli import COMMANDS, _command_of, build_parser

_RUN = """
import contextlib, io, json, sys
from fringelive.cli import main
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = main({argv!r})
    except SystemExit as e:
        code = e.code
print(json.dumps({{"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                  "torch": "torch" in sys.modules,
                  "cli": sorted(m for m in sys.modules if m.startswith("fringelive.cli."))}}))
"""


def _main_in_fresh_interpreter(argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", _RUN.format(argv=argv)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def _listed(text: str) -> set[str]:
    """The commands named at the start of the help's command lines."""
    return {line.split()[0] for line in text.splitlines() if line.startswith("    ") and line.split()[0] in COMMANDS}


def test_top_level_help_lists_every_command_without_importing_a_command_module() -> None:
    r = _main_in_fresh_interpreter(["--help"])
    assert r["code"] == 0
    assert not r["torch"]
    assert r["cli"] == []
    assert _listed(r["stdout"]) == set(COMMANDS)
    for name, (_, text) in COMMANDS.items():
        assert text.split()[0] in r["stdout"], name


@pytest.mark.parametrize("argv", [[], ["--log-level", "DEBUG"]])
def test_no_command_prints_the_help_and_exits_2(argv: list[str]) -> None:
    r = _main_in_fresh_interpreter(argv)
    assert r["code"] == 2
    assert not r["torch"] and r["cli"] == []
    assert _listed(r["stdout"]) == set(COMMANDS)


def test_unknown_command_names_it_and_every_known_one() -> None:
    r = _main_in_fresh_interpreter(["no-such-command"])
    assert r["code"] == 2
    assert not r["torch"] and r["cli"] == []
    assert "invalid choice: 'no-such-command'" in r["stderr"]
    for name in COMMANDS:
        assert f"'{name}'" in r["stderr"]


@pytest.mark.parametrize("command", ["send", "watch"])
def test_light_command_help_imports_its_module_only(command: str) -> None:
    r = _main_in_fresh_interpreter([command, "--help"])
    assert r["code"] == 0
    assert not r["torch"]
    assert f"usage: fringelive {command}" in r["stdout"]
    assert set(r["cli"]) & {module for module, _ in COMMANDS.values()} == {COMMANDS[command][0]}


def test_each_command_registers_the_summary_of_the_table() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert helps == {name: text for name, (_, text) in COMMANDS.items()}


def test_command_of_skips_an_abbreviated_log_level_and_its_value() -> None:
    assert _command_of(["--log", "DEBUG", "send"]) == "send"
    assert _command_of(["--log-l", "DEBUG", "--help"]) is None
