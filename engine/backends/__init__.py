"""Inference backends behind one small interface (a registry of kinds, timm style): ``backend(batch) -> logits``.

A :class:`Backend` wraps ONE ensemble member of a bundle. Input ``batch`` is ``(N, 1, h, w)``
float32 (preprocessed pixels, h and w multiples of the card's ``tile.multiple_of``); output is
``(N, C, h, w)`` float32 logits as a new numpy array. Kinds:

``onnxruntime``           ONNX Runtime on the CPU (``intra_op_threads`` = usable cores).
``openvino``              The member's ONNX on OpenVINO's CPU plugin, reshaped per tile batch;
                          ``precision`` fp32 (default) | bf16 | fp16 where the CPU runs it natively.
``onnxruntime-cuda``      ONNX Runtime CUDA execution provider, I/O bound on the GPU (io_binding).
``onnxruntime-tensorrt``  ONNX Runtime TensorRT execution provider, fp16, engine cache on disk.
``tensorrt``              A native TensorRT 10 engine listed in the card's ``engines``.
``torch``                 The network rebuilt from ``card.architecture`` + the member's
                          ``state_dict`` (``Member.weights``), on ``cpu`` or ``cuda``.
``triton``                Offloaded to an NVIDIA Triton Inference Server: the member is served
                          there as model ``<prefix>_m<i>`` (``fringelive export triton``), tile
                          batches go over HTTP (KServe v2 protocol, binary tensors).

On CUDA the torch-driven paths stage each batch through pinned host buffers reused across calls
and split it into chunks: chunk k+1's host→device copy runs on a copy stream while chunk k
computes, and outputs come back on a third stream (:class:`~fringelive.engine.backends.cuda_staging.CudaStager`).

Every backend declares ``precision`` (``fp32``; ``fp16`` for ``onnxruntime-tensorrt``; the card
engine's for ``tensorrt``). ``backend = "auto"`` is not a kind: ``auto.create_serving_backends``
resolves it to the fastest installed and verified kind before any backend is built.

A kind whose runtime, GPU or files are missing raises :class:`BackendUnavailable` naming the kind
and the reason; :func:`available_backends` reports this up front without building anything.
GPU runtimes (tensorrt, CUDA builds of onnxruntime), tritonclient and openvino are imported in one
guarded place each (:mod:`fringelive.engine.optional`). The kinds are declared torch-free in
:mod:`~fringelive.engine.backends.kinds`; the implementation modules (and torch) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from fringelive.engine.backends.base import (Backend, BackendUnavailable, available_backends, create_backend,
                                             create_backends, default_trt_cache_dir, register_backend,
                                             usable_cpu_count)
from fringelive.engine.backends.kinds import BACKEND_KINDS, GPU_KINDS

__all__ = [
    "BACKEND_KINDS",
    "GPU_KINDS",
    "BackendUnavailable",
    "Backend",
    "OnnxRuntimeBackend",
    "OpenVinoBackend",
    "TorchBackend",
    "TensorRTBackend",
    "TritonBackend",
    "TritonRequestError",
    "parse_triton_url",
    "register_backend",
    "create_backend",
    "create_backends",
    "available_backends",
    "default_trt_cache_dir",
    "usable_cpu_count",
]

#: The implementation classes, imported on first access (PEP 562): importing this package (and
#: its torch-free ``kinds``) does not load torch or a runtime; the registry imports the modules
#: when a backend is first built or listed.
_LAZY: dict[str, str] = {
    "OnnxRuntimeBackend": "onnxruntime",
    "OpenVinoBackend": "openvino",
    "TensorRTBackend": "tensorrt",
    "TorchBackend": "torch_backend",
    "TritonBackend": "triton",
    "TritonRequestError": "triton",
    "parse_triton_url": "triton",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
