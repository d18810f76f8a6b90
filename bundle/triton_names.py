"""Triton model naming shared by the exporter (``fringelive export triton``) and the ``triton``
backend: member ``i`` of a bundle is the model ``<prefix>_m<i>``, the prefix being the bundle name
with characters outside ``[A-Za-z0-9_.-]`` replaced by ``_``."""

from __future__ import annotations

import re

__all__ = ["TritonExportError", "default_model_prefix", "model_name", "check_prefix"]

_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]+")


class TritonExportError(ValueError):
    """A bundle that cannot be exported as asked; the message names the value or file."""


def default_model_prefix(bundle_name: str) -> str:
    """The model-name prefix of a bundle: its name with characters outside ``[A-Za-z0-9_.-]``
    replaced by ``_`` (``"Au 5nm/x"`` → ``"Au_5nm_x"``)."""
    if not bundle_name:
        raise TritonExportError("bundle name must not be empty")
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", bundle_name)
    return "_" + prefix if prefix.startswith(".") else prefix


def model_name(prefix: str, index: int) -> str:
    """Triton model name of ensemble member ``index``: ``<prefix>_m<index>``."""
    check_prefix(prefix)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"member index must be an integer >= 0, got {index!r}")
    return f"{prefix}_m{index}"


def check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix) or prefix.startswith("."):
        raise TritonExportError(f"prefix must be non-empty, use only A-Z a-z 0-9 _ . - and not start with '.', "
                                f"got {prefix!r}")
