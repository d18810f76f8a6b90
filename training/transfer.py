"""Transfer learning: which parameters a fine-tune freezes, and where initial weights come from.

Parts of a :class:`~fringelive.engine.models.ResUNet` (module attribute names):

* ``encoder`` = ``downs`` (the encoder residual blocks) + ``bottleneck``; the max-pools have no
  parameters. Freezing it keeps the learned features and retrains the decoder.
* ``decoder`` = ``ups`` (the decoder residual blocks) + ``final_conv``; the nearest upsamplings
  have no parameters. Freezing it adapts only the feature extractor.
* ``none``: everything trains.

A frozen part's parameters get ``requires_grad = False`` (the optimiser never sees them) and its
BatchNorm layers stay in eval mode during training (:func:`set_frozen_eval`), so their running
statistics stay those of the source model too.

Initial weights (:func:`load_initial_weights`): a bundle directory (each member's torch
``state_dict`` file, ``Member.weights``; the architecture from the card), a training checkpoint
written by :mod:`fringelive.training.trainer` (``last.pt``/``best.pt``; the architecture stored
in it), or a plain ``state_dict`` ``.pt`` file (architecture given by the caller).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fringelive.bundle.bundle_io import load_bundle
from fringelive.engine.models import UNetSpec, build_model

__all__ = [
    "FREEZE_CHOICES",
    "FREEZE_PARTS",
    "frozen_prefixes",
    "freeze",
    "set_frozen_eval",
    "InitialWeights",
    "load_initial_weights",
]

FREEZE_PARTS: dict[str, tuple[str, ...]] = {
    "none": (),
    "encoder": ("downs", "bottleneck"),
    "decoder": ("ups", "final_conv"),
}
FREEZE_CHOICES = tuple(FREEZE_PARTS)


def frozen_prefixes(part: str) -> tuple[str, ...]:
    if part not in FREEZE_PARTS:
        raise ValueError(f"freeze must be one of {FREEZE_CHOICES}, got {part!r}")
    return FREEZE_PARTS[part]


def _is_frozen(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze(model: nn.Module, part: str) -> list[str]:
    """Set ``requires_grad = False`` on the parameters of ``part`` (and True elsewhere);
    returns the frozen parameter names. ValueError if the model lacks the part's modules."""
    prefixes = frozen_prefixes(part)
    for p in prefixes:
        if not hasattr(model, p):
            raise ValueError(f"model {type(model).__name__} has no module {p!r} to freeze for {part!r}")
    frozen = []
    for name, param in model.named_parameters():
        f = _is_frozen(name, prefixes)
        param.requires_grad_(not f)
        if f:
            frozen.append(name)
    return frozen


def set_frozen_eval(model: nn.Module, part: str) -> None:
    """Put the frozen part's modules in eval mode (after ``model.train()``)."""
    for p in frozen_prefixes(part):
        getattr(model, p).eval()


class InitialWeights:
    """State dicts to start from (one per source member) and the architecture they fit.

    arch: registry name; spec: ``UNetSpec`` fields; states: list of ``state_dict``; source:
    description for provenance; preprocessing: the source bundle's card preprocessing (None for
    checkpoints)."""

    def __init__(self, arch: str, spec: dict[str, Any] | None, states: list[dict[str, torch.Tensor]], source: str,
                 preprocessing: Any = None, card: Any = None) -> None:
        self.arch = arch
        self.spec = spec
        self.states = states
        self.source = source
        self.preprocessing = preprocessing
        self.card = card

    def build(self, member: int = 0) -> nn.Module:
        """A network of the architecture with member ``member``'s weights loaded (strict)."""

        overrides = UNetSpec.from_dict(self.spec).to_dict() if self.spec else {}
        model = build_model(self.arch, **overrides) if overrides else build_model(self.arch)
        model.load_state_dict(self.states[member % len(self.states)], strict=True)
        return model


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types
        raise ValueError(f"{path}: not a torch weights file readable with weights_only=True: {e}") from None


def load_initial_weights(source: str | os.PathLike[str], *, arch: str = "resunet-seed",
                         spec: dict[str, Any] | None = None) -> InitialWeights:
    """Weights from a bundle directory, a training checkpoint or a plain state-dict file."""
    p = Path(source)
    if p.is_dir():
        bundle = load_bundle(p)
        missing = [m.file for m in bundle.card.members if not m.weights]
        if missing:
            raise ValueError(f"bundle {p}: members {missing} carry no torch weights (Member.weights); "
                             "export it with weights or fine-tune from a checkpoint")
        states = [_torch_load(p / m.weights) for m in bundle.card.members]
        return InitialWeights(bundle.card.architecture.name, dict(bundle.card.architecture.spec), states,
                              f"bundle {bundle.card.name} ({p})", bundle.card.preprocessing, bundle.card)
    if not p.is_file():
        raise ValueError(f"{source}: neither a bundle directory nor a weights file")
    obj = _torch_load(p)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):  # last.pt / best.pt
        return InitialWeights(obj.get("arch", arch), obj.get("spec", spec), [obj["model"]], f"checkpoint {p}")
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return InitialWeights(arch, spec, [obj], f"state dict {p}")
    raise ValueError(f"{p}: holds neither a state dict nor a fringelive training checkpoint")
