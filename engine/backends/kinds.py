"""The backend kinds and precisions, declared once and torch-free: the daemon config validates
``[model] backend`` and ``precision`` against these without importing any runtime, and the
registry (:func:`~fringelive.engine.backends.base.register_backend`) refuses a kind or GPU kind
that is not declared here.

A new backend: add its kind to :data:`BACKEND_KINDS` (and :data:`GPU_KINDS` when it needs a
CUDA GPU) and its module to :data:`KIND_MODULES`.
"""

from __future__ import annotations

__all__ = ["BACKEND_KINDS", "GPU_KINDS", "KIND_MODULES", "PRECISIONS"]

#: kind → the module of ``fringelive.engine.backends`` that registers it, in the order of
#: :data:`BACKEND_KINDS`.
KIND_MODULES: dict[str, str] = {
    "onnxruntime": "onnxruntime",
    "onnxruntime-cuda": "onnxruntime",
    "onnxruntime-tensorrt": "onnxruntime",
    "openvino": "openvino",
    "tensorrt": "tensorrt",
    "torch": "torch_backend",
    "triton": "triton",
}
#: Every backend kind (the one list: the daemon config and the registry check against it).
BACKEND_KINDS: tuple[str, ...] = tuple(KIND_MODULES)
#: The kinds that need a CUDA GPU.
GPU_KINDS: tuple[str, ...] = ("onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")
#: The arithmetic a backend may be asked for (``[model] precision``; ``openvino`` compiles it).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
