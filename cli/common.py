"""Helpers shared by the data and training commands (``synth``, ``dataset``, ``train``,
``finetune``, ``evaluate``): the error they raise, the command line they record, the card
preprocessing from the shared options."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from fringelive.bundle.card import CardError
from fringelive.cli import CLIError
from fringelive.cli.preprocessing import preprocessing_from_args

__all__ = ["cli_error", "command_line", "card_preprocessing"]


def cli_error(message: str, code: int = 2) -> Exception:
    """A :class:`CLIError`, by default a usage error (exit code 2)."""
    return CLIError(message, code)


def command_line(args: argparse.Namespace) -> str:
    """The command line as typed (``args.argv``, set by :func:`fringelive.cli.main`), shell-quoted,
    for provenance records."""
    return shlex.join(getattr(args, "argv", None) or ["fringelive", args.command])


def card_preprocessing(args: argparse.Namespace, base: Any = None) -> Any:
    """Card Preprocessing from the options (None when no option was given and ``base`` is None)."""

    try:
        return preprocessing_from_args(args, base)
    except CardError as e:
        raise cli_error(str(e)) from None
