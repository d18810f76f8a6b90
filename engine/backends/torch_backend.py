"""The ``torch`` backend: the network rebuilt from the card's architecture and the member's
``state_dict``, on the CPU or a CUDA GPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fringelive.bundle.bundle_io import Bundle
from fringelive.bundle.card import Member
from fringelive.engine.backends.base import Backend, BackendUnavailable, register_backend
from fringelive.engine.backends.cuda_staging import CudaStager, cuda_device
from fringelive.engine.models import build_model

__all__ = ["TorchBackend"]


@register_backend("torch")
class TorchBackend(Backend):
    """The network rebuilt with ``fringelive.engine.models.build_model`` from the card's
    architecture and the member's ``state_dict`` (``torch.load(weights_only=True)``), in eval
    mode under ``torch.inference_mode``. ``device`` "cpu" (default) or "cuda[:N]"."""

    name = "torch"

    def __init__(self, architecture_name: str, spec: dict[str, Any], weights_path: str | os.PathLike[str], *,
                 device: str | None = None, intra_op_threads: int | None = None, chunk: int = 1) -> None:
        if intra_op_threads is not None and (isinstance(intra_op_threads, bool) or not isinstance(intra_op_threads, int) or intra_op_threads < 1):
            raise ValueError(f"intra_op_threads must be a positive integer or None, got {intra_op_threads!r}")
        dev = "cpu" if device in (None, "cpu") else cuda_device("torch", device)
        path = Path(weights_path)
        if not path.is_file():
            raise BackendUnavailable("torch", f"weights file {path} does not exist")
        super().__init__(dev, str(path))
        model = build_model(architecture_name, **dict(spec))
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"weights {path} do not fit architecture {architecture_name!r} {spec}: {e}") from None
        self.model = model.eval().to(dev)
        if intra_op_threads is not None:
            torch.set_num_threads(intra_op_threads)  # process-wide in torch
        self._stager = CudaStager(dev, self._forward, chunk=chunk) if dev != "cpu" else None

    def _forward(self, x: "torch.Tensor") -> "torch.Tensor":
        with torch.inference_mode():
            return self.model(x)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._stager is not None:
            return self._stager(batch)
        with torch.inference_mode():
            y = self.model(torch.from_numpy(batch))
        return y.numpy()

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        if self._stager is not None:
            self._stager.close()
            self._stager = None
        self.model = None

    @classmethod
    def from_file(cls, kind: str, path: Path, **_: Any) -> "TorchBackend":
        raise ValueError(f"backend 'torch' needs a bundle (architecture + weights), got the file {path}")

    @classmethod
    def from_member(cls, kind: str, bundle: Bundle, index: int, member: Member, *, device: str | None = None,
                    intra_op_threads: int | None = None, chunk: int = 1, **_: Any) -> "TorchBackend":
        if not member.weights:
            raise BackendUnavailable("torch", f"bundle {bundle.path} member {member.file!r} has no torch weights "
                                     "(Member.weights); re-export the bundle with its state_dict")
        arch = bundle.card.architecture
        return cls(arch.name, arch.spec, bundle.path / member.weights, device=device,
                   intra_op_threads=intra_op_threads, chunk=chunk)
