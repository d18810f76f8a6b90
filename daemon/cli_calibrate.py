"""Subcommands (placeholder; replaced by the module's owner)."""
from __future__ import annotations


def register(sub) -> None:  # noqa: ANN001
    return None
