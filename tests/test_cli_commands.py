"""The CLI's command table: every module registers exactly the commands listed for it, so
``fringelive COMMAND`` (which imports that module only) parses as with every command loaded."""

from __future__ import annotations

import argparse
import importlib

from fringelive.cli import COMMAND_MODULES, _command_of


def test_each_command_module_registers_the_commands_listed_for_it() -> None:
    for module, commands in COMMAND_MODULES.items():
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers(dest="command")
        importlib.import_module(module).register(sub)
        assert tuple(sub.choices) == commands, module


def test_command_of_skips_options_and_their_values() -> None:
    assert _command_of(["--log-level", "DEBUG", "send", "a.npy"]) == "send"
    assert _command_of(["--log-level=DEBUG", "watch"]) == "watch"
    assert _command_of(["--help"]) is None
