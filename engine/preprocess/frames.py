"""Frame input: any real numpy/torch (H, W) frame → a float32 array, checked (shape, real dtype,
finite values): numpy on the CPU, a torch tensor for tensor input or another device."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fringelive.engine.arrays import NUMPY, Array, TorchNamespace, is_tensor, namespace_for

__all__ = ["as_float32_frame"]


def _check_real_dtype(kind_ok: bool, dtype: Any) -> None:
    if not kind_ok:
        raise TypeError(f"frame dtype must be an integer or floating-point type, got {dtype}")


def _check_shape(shape: tuple[int, ...]) -> None:
    if len(shape) != 2:
        raise ValueError(f"frame must be 2-D (H, W), got shape {tuple(shape)}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"frame must not be empty, got shape {tuple(shape)}")


def _check_finite(x: Array) -> None:
    if is_tensor(x):
        lo, hi = TorchNamespace(x.device).aminmax(x)
    else:
        lo, hi = float(x.min()), float(x.max())  # NaN propagates; ±inf shows up as an extreme
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int((~x.isfinite()).sum().item()) if is_tensor(x) else int(np.count_nonzero(~np.isfinite(x)))
        size = x.numel() if is_tensor(x) else x.size
        raise ValueError(f"frame has {bad} non-finite pixel(s) (NaN or ±Inf) of {size}")


def _ship_narrow(frame: np.ndarray, dev: Any) -> Array:
    """A native-order frame of 1- or 2-byte dtype copied to torch device ``dev`` as is and
    widened to float32 there (half the transfer of float32 for uint16). uint16 travels as its
    int16 bit pattern (torch's uint16 kernels are partial on CUDA) and is widened to int32 and
    masked there."""
    xp = TorchNamespace(dev)
    torch = xp.torch
    a = np.ascontiguousarray(frame)
    if a.dtype == np.uint16:
        x = torch.from_numpy(a.view(np.int16)).to(xp.device).to(torch.int32).bitwise_and_(0xFFFF)
    else:
        x = torch.from_numpy(a).to(xp.device)
    return x.to(torch.float32)


def _to_float32(frame: Any, device: Any) -> tuple[Array, bool]:
    """``frame`` as a contiguous (H, W) float32 array for ``device``: numpy for numpy input on the
    CPU (``device`` None or "cpu"), else a torch tensor on ``device``; also whether it is a new
    buffer (True) or shares memory with ``frame`` (False, the caller must not write to it)."""
    if is_tensor(frame):
        t = frame.detach()
        own = TorchNamespace(t.device)
        _check_shape(tuple(t.shape))
        _check_real_dtype(not (t.dtype == own.torch.bool or t.dtype.is_complex), t.dtype)
        xp = namespace_for(device, own)
        dev = xp.device if isinstance(xp, TorchNamespace) else t.device
        x = t.to(device=dev, dtype=own.float32).contiguous()
        owned = x.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
        is_float = t.dtype.is_floating_point
    elif isinstance(frame, np.ndarray):
        _check_shape(frame.shape)
        _check_real_dtype(frame.dtype.kind in "iuf", frame.dtype)
        xp = namespace_for(device, NUMPY)
        is_float = frame.dtype.kind == "f"
        if isinstance(xp, TorchNamespace) and frame.dtype.isnative and frame.dtype.itemsize < 4:
            x, owned = _ship_narrow(frame, xp.device), True
        else:
            with np.errstate(over="ignore"):  # float64 beyond float32 → inf, reported below
                a = np.ascontiguousarray(frame, dtype=np.float32)  # also fixes big-endian order
            owned = not np.may_share_memory(a, frame)
            x = a
            if isinstance(xp, TorchNamespace):
                x = xp.torch.from_numpy(a)
                if xp.device.type != "cpu":
                    x, owned = x.to(xp.device), True
    else:
        raise TypeError(f"frame must be a numpy array or a torch tensor, got {type(frame).__name__}")
    if is_float:
        _check_finite(x)
    return x, owned


def as_float32_frame(frame: Any, device: Any = None) -> Array:
    """Validate a raw frame and return it as a contiguous (H, W) float32 array.

    frame: (H, W) numpy array (any integer/float dtype, either byte order) or torch tensor.
    device: None (the tensor's device; numpy for numpy input), "cpu" (numpy for numpy input) or a
    torch device such as "cuda:0" (a tensor there; needs PyTorch). May share memory with
    ``frame`` when nothing needs converting. Raises ValueError for other shapes and for NaN/Inf
    (naming the count), TypeError for non-numeric dtypes.
    """
    return _to_float32(frame, device)[0]
