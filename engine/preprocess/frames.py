"""Frame input: any real numpy/torch (H, W) frame → a float32 tensor on the chosen device, checked
(shape, real dtype, finite values)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["as_float32_frame"]


def _resolve_device(device: str | torch.device | None, default: torch.device) -> torch.device:
    if device is None:
        return default
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} requested but CUDA is not available to torch {torch.__version__}")
    return dev


def _check_real_dtype(kind_ok: bool, dtype: Any) -> None:
    if not kind_ok:
        raise TypeError(f"frame dtype must be an integer or floating-point type, got {dtype}")


def _check_shape(shape: tuple[int, ...]) -> None:
    if len(shape) != 2:
        raise ValueError(f"frame must be 2-D (H, W), got shape {tuple(shape)}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"frame must not be empty, got shape {tuple(shape)}")


def _check_finite(x: torch.Tensor) -> None:
    lo, hi = torch.aminmax(x)  # NaN propagates; ±inf shows up as an extreme
    if not (math.isfinite(lo.item()) and math.isfinite(hi.item())):
        bad = int((~torch.isfinite(x)).sum().item())
        raise ValueError(f"frame has {bad} non-finite pixel(s) (NaN or ±Inf) of {x.numel()}")


def _ship_narrow(frame: np.ndarray, dev: torch.device) -> torch.Tensor:
    """A native-order frame of 1- or 2-byte dtype copied to ``dev`` as is and widened to float32
    there (half the transfer of float32 for uint16). uint16 travels as its int16 bit pattern
    (torch's uint16 kernels are partial on CUDA) and is widened to int32 and masked there."""
    a = np.ascontiguousarray(frame)
    if a.dtype == np.uint16:
        x = torch.from_numpy(a.view(np.int16)).to(dev).to(torch.int32).bitwise_and_(0xFFFF)
    else:
        x = torch.from_numpy(a).to(dev)
    return x.to(torch.float32)


def _to_float32(frame: np.ndarray | torch.Tensor, device: str | torch.device | None) -> tuple[torch.Tensor, bool]:
    """``frame`` as a contiguous (H, W) float32 tensor on ``device``; also whether it is a new
    buffer (True) or shares memory with ``frame`` (False, the caller must not write to it)."""
    if isinstance(frame, torch.Tensor):
        t = frame.detach()
        _check_shape(tuple(t.shape))
        _check_real_dtype(not (t.dtype == torch.bool or t.dtype.is_complex), t.dtype)
        dev = _resolve_device(device, t.device)
        x = t.to(device=dev, dtype=torch.float32).contiguous()
        owned = x.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
        is_float = t.dtype.is_floating_point
    elif isinstance(frame, np.ndarray):
        _check_shape(frame.shape)
        _check_real_dtype(frame.dtype.kind in "iuf", frame.dtype)
        dev = _resolve_device(device, torch.device("cpu"))
        is_float = frame.dtype.kind == "f"
        if dev.type != "cpu" and frame.dtype.isnative and frame.dtype.itemsize < 4:
            x, owned = _ship_narrow(frame, dev), True
        else:
            with np.errstate(over="ignore"):  # float64 beyond float32 → inf, reported below
                a = np.ascontiguousarray(frame, dtype=np.float32)  # also fixes big-endian order
            owned = not np.may_share_memory(a, frame)
            x = torch.from_numpy(a)
            if dev.type != "cpu":
                x, owned = x.to(dev), True
    else:
        raise TypeError(f"frame must be a numpy array or a torch tensor, got {type(frame).__name__}")
    if is_float:
        _check_finite(x)
    return x, owned


def as_float32_frame(frame: np.ndarray | torch.Tensor, device: str | torch.device | None = None) -> torch.Tensor:
    """Validate a raw frame and return it as a contiguous (H, W) float32 tensor on ``device``.

    frame: (H, W) numpy array (any integer/float dtype, either byte order) or torch tensor.
    device: target device; default the tensor's device, CPU for numpy. May share memory with
    ``frame`` when nothing needs converting. Raises ValueError for other shapes and for NaN/Inf
    (naming the count), TypeError for non-numeric dtypes.
    """
    return _to_float32(frame, device)[0]
