"""The default bundle shipped with fringelive (``card.json``, ``member0.onnx``, ``member0.pt``) as
package data: a small network fine-tuned on simulated frames, served when ``[model] bundle`` is
not set. Built by ``python -m fringelive.training.build_default_bundle``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["directory"]


def directory() -> Path:
    """The directory of the installed default bundle (it may lack ``card.json`` in a stripped install)."""
    return Path(str(resources.files(__name__)))
