"""One small array namespace over numpy and torch, so that the array stages (preprocessing,
tiling) are written once: numpy on the CPU (no torch needed), torch for tensors and CUDA.

:func:`namespace_of` gives the namespace of an array (a numpy array → :data:`NUMPY`; a torch
tensor → a :class:`TorchNamespace` on its device); :func:`namespace_for` the namespace a
``device`` asks for. Torch is never imported here: a tensor can only exist when torch is already
loaded (``sys.modules``), and a device other than the CPU imports it through
:func:`fringelive.engine.optional.import_torch` (a clear error when it is not installed).

Only what the stages need, with the same semantics in both: dtypes (``float32``, ``float64``,
``int64``), creation, ``astype``, ``stack``/``concat``, the ``out=`` kernels (``clip``,
``subtract``, ``divide``), in-place ``exp_``/``square_``, ``solve`` (None when singular),
``flatnonzero``, ``count_nonzero``, ``aminmax``, ``select`` (exact partial selection),
``to_numpy``/``from_numpy`` (numpy views of CPU memory for the scan kernels).
Indexing, arithmetic operators, ``@``, ``.reshape``, ``.sum(axis)``, ``.mean()``, ``.min()``,
``.max()``, ``.item()`` and ``.tolist()`` are spelled the same in numpy and torch and used as is.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, ContextManager, Sequence

import numpy as np

from fringelive.engine.optional import TORCH_HINT, MissingDependency, import_torch

__all__ = ["NUMPY", "NumpyNamespace", "TorchNamespace", "is_tensor", "namespace_of", "namespace_for"]

Array = Any


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (False without importing torch when it is not loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


class NumpyNamespace:
    """numpy, on the CPU."""

    name = "numpy"
    float32: Any = np.float32
    float64: Any = np.float64
    int64: Any = np.int64
    is_cuda = False

    def no_grad(self) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def sync(self) -> None:
        pass

    def asarray(self, values: Any, dtype: Any = None) -> Array:
        return np.asarray(values, dtype=dtype)

    def arange(self, n: int, dtype: Any) -> Array:
        return np.arange(n, dtype=dtype)

    def empty(self, shape: Sequence[int], dtype: Any) -> Array:
        return np.empty(tuple(shape), dtype=dtype)

    def zeros(self, shape: Sequence[int], dtype: Any) -> Array:
        return np.zeros(tuple(shape), dtype=dtype)

    def empty_like(self, x: Array) -> Array:
        return np.empty_like(x)

    def zeros_like(self, x: Array) -> Array:
        return np.zeros_like(x)

    def astype(self, x: Array, dtype: Any) -> Array:
        return x.astype(dtype, copy=False)

    def is_floating(self, x: Array) -> bool:
        return x.dtype.kind == "f"

    def size(self, x: Array) -> int:
        return int(x.size)

    def stack(self, xs: Sequence[Array], axis: int = 0) -> Array:
        return np.stack(list(xs), axis=axis)

    def concat(self, xs: Sequence[Array]) -> Array:
        return np.concatenate(list(xs))

    def sort(self, x: Array) -> Array:
        return np.sort(x)

    def permute(self, x: Array, axes: Sequence[int]) -> Array:
        return np.transpose(x, tuple(axes))

    def outer(self, a: Array, b: Array) -> Array:
        return np.outer(a, b)

    def outer_sum(self, a: Array, b: Array) -> Array:
        """``sum_k outer(a[:, k], b[k])`` = ``a @ b`` for a small inner size, as rank-1 updates:
        no BLAS call (a threaded sgemm of inner size 3 spins its threads: ~9x the CPU time)."""
        s = np.multiply.outer(a[:, 0], b[0])
        if b.shape[0] > 1:
            tmp = np.empty_like(s)
            for k in range(1, b.shape[0]):
                s += np.multiply.outer(a[:, k], b[k], out=tmp)
        return s

    def solve(self, a: Array, b: Array) -> Array | None:
        try:
            return np.linalg.solve(a, b)
        except np.linalg.LinAlgError:
            return None

    def exp_(self, x: Array) -> Array:
        return np.exp(x, out=x)

    def square_(self, x: Array) -> Array:
        return np.square(x, out=x)

    def clip(self, src: Array, lo: float | None, hi: float | None, out: Array) -> Array:
        if hi is None:
            return np.maximum(src, src.dtype.type(lo), out=out)
        return np.clip(src, src.dtype.type(lo), src.dtype.type(hi), out=out)

    def subtract(self, src: Array, value: float, out: Array) -> Array:
        return np.subtract(src, value, out=out)

    def divide(self, a: Array, b: Array, out: Array) -> Array:
        return np.divide(a, b, out=out)

    def minimum(self, a: Array, b: Array) -> Array:
        return np.minimum(a, b)

    def where(self, cond: Array, a: Array, b: float) -> Array:
        return np.where(cond, a, a.dtype.type(b))

    def count_nonzero(self, x: Array) -> int:
        return int(np.count_nonzero(x))

    def flatnonzero(self, x: Array) -> Array:
        return np.flatnonzero(x)

    def aminmax(self, x: Array) -> tuple[float, float]:
        return float(x.min()), float(x.max())

    def to_numpy(self, x: Array) -> np.ndarray:
        return x

    def from_numpy(self, a: np.ndarray) -> Array:
        return a

    def select(self, src: Array, ranks: list[int]) -> Array:
        """The values of 0-based ``ranks`` of 1-D ``src`` (partial selection, no full sort)."""
        return np.partition(src, ranks)[ranks].copy()

    def __repr__(self) -> str:
        return "NumpyNamespace()"


NUMPY = NumpyNamespace()
"""The numpy namespace (CPU)."""


class TorchNamespace:
    """torch, on one device (CPU or CUDA)."""

    name = "torch"

    def __init__(self, device: Any) -> None:
        torch = import_torch()
        self.torch = torch
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        self.float32, self.float64, self.int64 = torch.float32, torch.float64, torch.int64

    def no_grad(self) -> ContextManager[Any]:
        return self.torch.no_grad()

    def sync(self) -> None:
        if self.is_cuda:
            self.torch.cuda.synchronize(self.device)

    def asarray(self, values: Any, dtype: Any = None) -> Array:
        return self.torch.as_tensor(values, dtype=dtype, device=self.device)

    def arange(self, n: int, dtype: Any) -> Array:
        return self.torch.arange(n, dtype=dtype, device=self.device)

    def empty(self, shape: Sequence[int], dtype: Any) -> Array:
        return self.torch.empty(tuple(shape), dtype=dtype, device=self.device)

    def zeros(self, shape: Sequence[int], dtype: Any) -> Array:
        return self.torch.zeros(tuple(shape), dtype=dtype, device=self.device)

    def empty_like(self, x: Array) -> Array:
        return self.torch.empty_like(x)

    def zeros_like(self, x: Array) -> Array:
        return self.torch.zeros_like(x)

    def astype(self, x: Array, dtype: Any) -> Array:
        return x.to(dtype)

    def is_floating(self, x: Array) -> bool:
        return bool(x.is_floating_point())

    def size(self, x: Array) -> int:
        return int(x.numel())

    def stack(self, xs: Sequence[Array], axis: int = 0) -> Array:
        return self.torch.stack(list(xs), dim=axis)

    def concat(self, xs: Sequence[Array]) -> Array:
        return self.torch.cat(list(xs))

    def sort(self, x: Array) -> Array:
        return self.torch.sort(x).values

    def permute(self, x: Array, axes: Sequence[int]) -> Array:
        return x.permute(*axes)

    def outer(self, a: Array, b: Array) -> Array:
        return self.torch.outer(a, b)

    def outer_sum(self, a: Array, b: Array) -> Array:
        """``sum_k outer(a[:, k], b[k])``: rank-1 updates (faster than a K=3 matmul in torch)."""
        s = self.torch.outer(a[:, 0], b[0])
        for k in range(1, b.shape[0]):
            s.addr_(a[:, k], b[k])
        return s

    def solve(self, a: Array, b: Array) -> Array | None:
        try:
            return self.torch.linalg.solve(a, b)
        except RuntimeError:  # torch.linalg.LinAlgError
            return None

    def exp_(self, x: Array) -> Array:
        return x.exp_()

    def square_(self, x: Array) -> Array:
        return x.square_()

    def clip(self, src: Array, lo: float | None, hi: float | None, out: Array) -> Array:
        return self.torch.clamp(src, min=lo, max=hi, out=out)

    def subtract(self, src: Array, value: float, out: Array) -> Array:
        return self.torch.sub(src, value, out=out)

    def divide(self, a: Array, b: Array, out: Array) -> Array:
        return self.torch.div(a, b, out=out)

    def minimum(self, a: Array, b: Array) -> Array:
        return self.torch.minimum(a, b)

    def where(self, cond: Array, a: Array, b: float) -> Array:
        return self.torch.where(cond, a, b)

    def count_nonzero(self, x: Array) -> int:
        return int(self.torch.count_nonzero(x).item())

    def flatnonzero(self, x: Array) -> Array:
        return self.torch.nonzero(x.reshape(-1)).squeeze(1)

    def aminmax(self, x: Array) -> tuple[float, float]:
        lo, hi = self.torch.aminmax(x)
        return float(lo.item()), float(hi.item())

    def to_numpy(self, x: Array) -> np.ndarray:
        return x.numpy()

    def from_numpy(self, a: np.ndarray) -> Array:
        return self.torch.from_numpy(a).to(self.device)

    def select(self, src: Array, ranks: list[int]) -> Array:
        """The values of 0-based ``ranks`` of 1-D ``src`` (partial selection, no full sort)."""
        return self.torch.stack([self.torch.kthvalue(src, k + 1).values for k in ranks])

    def __repr__(self) -> str:
        return f"TorchNamespace({str(self.device)!r})"


def namespace_of(x: Any) -> NumpyNamespace | TorchNamespace:
    """The namespace of array ``x``: :data:`NUMPY` for numpy, torch on ``x``'s device for a tensor."""
    if is_tensor(x):
        return TorchNamespace(x.device)
    if isinstance(x, (np.ndarray, np.generic)):
        return NUMPY
    raise TypeError(f"expected a numpy array or a torch tensor, got {type(x).__name__}")


def namespace_for(device: Any, default: NumpyNamespace | TorchNamespace) -> NumpyNamespace | TorchNamespace:
    """The namespace of ``device`` ("cpu", "cuda:0", a ``torch.device``; None = ``default``).
    The CPU stays numpy when ``default`` is numpy; any other device needs torch (ValueError
    naming what to install when it is missing, or when ``device`` is not a device)."""
    if device is None:
        return default
    cpu = device == "cpu" or (getattr(device, "type", None) == "cpu" and getattr(device, "index", None) is None)
    if cpu and default is NUMPY:
        return NUMPY
    try:
        torch = import_torch()
    except MissingDependency:
        raise ValueError(f"device {str(device)!r} needs PyTorch, which is not installed: {TORCH_HINT} "
                         "(without it, preprocessing runs with numpy on the CPU: device None or 'cpu')") from None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} requested but CUDA is not available to torch {torch.__version__}")
    if dev.type == "cpu" and default is NUMPY:
        return NUMPY
    return TorchNamespace(dev)
