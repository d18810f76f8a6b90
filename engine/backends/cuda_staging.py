"""CUDA staging for the torch-driven backends: pinned host buffers reused across calls, each batch
split into chunks whose host→device copy (copy stream) overlaps the previous chunk's compute, the
outputs coming back on a third stream (:class:`CudaStager`)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from fringelive.engine.backends.base import BackendUnavailable

__all__ = ["CudaStager", "cuda_device"]


def cuda_device(kind: str, device: str | None) -> str:
    """Normalise ``device`` for a CUDA path ("cuda" → "cuda:0"); raise BackendUnavailable when
    torch cannot see that GPU."""
    dev = "cuda:0" if device in (None, "cuda") else str(device)
    if not dev.startswith("cuda:") or not dev[5:].isdigit():
        raise ValueError(f"backend {kind!r} runs on a CUDA GPU: device must be 'cuda' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        raise BackendUnavailable(kind, f"no CUDA GPU visible to torch {torch.__version__} (torch.cuda.is_available() is False)")
    index = int(dev[5:])
    if index >= torch.cuda.device_count():
        raise BackendUnavailable(kind, f"device {dev} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


class CudaStager:
    """Runs ``compute(x_gpu (n, 1, h, w)) -> y_gpu (n, C, h, w)`` over a host batch in chunks of
    ``chunk`` samples, overlapping transfers with compute.

    Pinned host buffers (input and output) and two device input slots are kept and grown across
    calls. Per chunk k: the host copy into pinned memory and the H2D copy of chunk k+1 (copy
    stream) are issued before chunk k computes (compute stream, waiting on an event); the D2H
    copy of chunk k's output runs on a third stream after chunk k's compute event. ``compute``
    may be asynchronous on the current stream (torch, TensorRT) or blocking (ONNX Runtime).
    ``input_dtype`` is the dtype the engine wants on the device (float16 for fp16-IO engines).
    """

    def __init__(self, device: str, compute: Callable[["torch.Tensor"], "torch.Tensor"],
                 chunk: int = 1, input_dtype: "torch.dtype | None" = None) -> None:
        self.torch = torch
        self.device = torch.device(device)
        self.compute = compute
        self.chunk = max(1, int(chunk))
        self.input_dtype = input_dtype or torch.float32
        with torch.cuda.device(self.device):
            self.copy_stream = torch.cuda.Stream(self.device)
            self.compute_stream = torch.cuda.Stream(self.device)
            self.d2h_stream = torch.cuda.Stream(self.device)
        self._host_in: torch.Tensor | None = None
        self._host_out: torch.Tensor | None = None
        self._slots: list[torch.Tensor | None] = [None, None]

    def _pinned(self, current: "torch.Tensor | None", numel: int, dtype: "torch.dtype") -> "torch.Tensor":
        if current is None or current.numel() < numel or current.dtype != dtype:
            current = self.torch.empty(numel, dtype=dtype, pin_memory=True)
        return current

    def _slot(self, i: int, numel: int) -> "torch.Tensor":
        s = self._slots[i]
        if s is None or s.numel() < numel:
            s = self.torch.empty(numel, dtype=self.input_dtype, device=self.device)
            self._slots[i] = s
        return s

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        n, _, h, w = batch.shape
        per = h * w
        bounds = [(s, min(s + self.chunk, n)) for s in range(0, n, self.chunk)]
        self._host_in = self._pinned(self._host_in, n * per, torch.float32)
        host_in = self._host_in[: n * per].view(n, 1, h, w)
        src = torch.from_numpy(batch)
        copied = [torch.cuda.Event() for _ in bounds]
        computed = [torch.cuda.Event() for _ in bounds]
        inputs: list[torch.Tensor] = []

        def stage(k: int) -> None:
            s, e = bounds[k]
            host_in[s:e].copy_(src[s:e])  # pageable → pinned (host memcpy, overlaps the GPU)
            slot = self._slot(k % 2, (e - s) * per)[: (e - s) * per].view(e - s, 1, h, w)
            with torch.cuda.stream(self.copy_stream):
                if k >= 2:  # slot k % 2 was read by chunk k - 2's compute
                    self.copy_stream.wait_event(computed[k - 2])
                slot.copy_(host_in[s:e], non_blocking=True)  # H2D (+ cast for fp16 engines)
                copied[k].record(self.copy_stream)
            inputs.append(slot)

        host_out: torch.Tensor | None = None
        with torch.cuda.device(self.device):
            try:
                stage(0)
                for k, (s, e) in enumerate(bounds):
                    if k + 1 < len(bounds):
                        stage(k + 1)  # the next chunk's copy overlaps this chunk's compute
                    self.compute_stream.wait_event(copied[k])
                    with torch.cuda.stream(self.compute_stream):
                        y = self.compute(inputs[k])
                        computed[k].record(self.compute_stream)
                    if host_out is None:
                        c = y.shape[1]
                        self._host_out = self._pinned(self._host_out, n * c * per, torch.float32)
                        host_out = self._host_out[: n * c * per].view(n, c, h, w)
                    y.record_stream(self.d2h_stream)
                    with torch.cuda.stream(self.d2h_stream):
                        self.d2h_stream.wait_event(computed[k])
                        host_out[s:e].copy_(y, non_blocking=True)  # D2H (+ cast from fp16)
            finally:  # also on errors: no copy may still be in flight into reused buffers
                for stream in (self.copy_stream, self.compute_stream, self.d2h_stream):
                    stream.synchronize()
        assert host_out is not None
        return host_out.numpy().copy()  # the pinned buffer is reused by the next call

    def close(self) -> None:
        self._host_in = self._host_out = None
        self._slots = [None, None]
