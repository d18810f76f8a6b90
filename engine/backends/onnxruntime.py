"""ONNX Runtime backends: ``onnxruntime`` (CPU, the default), ``onnxruntime-cuda`` (CUDA execution
provider, I/O bound on the GPU) and ``onnxruntime-tensorrt`` (TensorRT execution provider, fp16,
engine cache on disk)."""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from fringelive.bundle.bundle_io import Bundle
from fringelive.bundle.card import Member
from fringelive.engine.backends.base import (Backend, BackendUnavailable, default_trt_cache_dir, register_backend,
                                             usable_cpu_count)
from fringelive.engine.optional import import_torch, is_missing_torch

__all__ = ["OnnxRuntimeBackend"]

log = logging.getLogger("fringelive.engine.backends")


def _import_onnxruntime(kind: str) -> Any:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as e:
        raise BackendUnavailable(kind, f"onnxruntime cannot be imported ({e}); pip install onnxruntime") from None


@register_backend("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt",
                  gpu=("onnxruntime-cuda", "onnxruntime-tensorrt"))
class OnnxRuntimeBackend(Backend):
    """ONNX Runtime session for one ONNX file.

    ``onnxruntime``: CPUExecutionProvider with ``intra_op_threads`` (default: usable cores).
    ``onnxruntime-cuda``: CUDAExecutionProvider; inputs/outputs bound on the GPU with io_binding
    (through :class:`CudaStager` when torch sees the GPU, else via ``OrtValue``s).
    ``onnxruntime-tensorrt``: TensorrtExecutionProvider (fp16, engine cache in ``trt_cache_dir``),
    CUDA then CPU as fallback providers for unsupported nodes.
    """

    def __init__(self, kind: str, model_path: str | os.PathLike[str], *, device: str | None = None,
                 intra_op_threads: int | None = None, input_name: str | None = None,
                 output_name: str | None = None, trt_cache_dir: str | os.PathLike[str] | None = None,
                 chunk: int = 1) -> None:
        if kind not in ("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt"):
            raise ValueError(f"OnnxRuntimeBackend kind must be an onnxruntime kind, got {kind!r}")
        if intra_op_threads is not None and (isinstance(intra_op_threads, bool) or not isinstance(intra_op_threads, int) or intra_op_threads < 1):
            raise ValueError(f"intra_op_threads must be a positive integer or None, got {intra_op_threads!r}")
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        ort = _import_onnxruntime(kind)
        self.name = kind
        gpu = kind != "onnxruntime"
        if gpu:
            dev = "cuda:0" if device in (None, "cuda") else str(device)
            if not dev.startswith("cuda:") or not dev[5:].isdigit():
                raise ValueError(f"backend {kind!r} runs on a CUDA GPU: device must be 'cuda' or 'cuda:N', got {device!r}")
        else:
            if device not in (None, "cpu"):
                raise ValueError(f"backend 'onnxruntime' runs on the CPU: device must be 'cpu', got {device!r} "
                                 "(use kind 'onnxruntime-cuda' for a GPU)")
            dev = "cpu"
        super().__init__(dev, str(path))
        self._ort = ort
        available = list(ort.get_available_providers())
        device_id = int(dev[5:]) if gpu else 0
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = intra_op_threads or (usable_cpu_count() if not gpu else 1)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        providers: list[Any]
        if kind == "onnxruntime":
            providers = ["CPUExecutionProvider"]
            wanted = "CPUExecutionProvider"
        elif kind == "onnxruntime-cuda":
            wanted = "CUDAExecutionProvider"
            providers = [(wanted, {"device_id": device_id}), "CPUExecutionProvider"]
        else:
            wanted = "TensorrtExecutionProvider"
            cache = Path(trt_cache_dir) if trt_cache_dir is not None else default_trt_cache_dir()
            cache.mkdir(parents=True, exist_ok=True)
            providers = [
                (wanted, {"device_id": device_id, "trt_fp16_enable": True,
                          "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                          "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)}),
                ("CUDAExecutionProvider", {"device_id": device_id}),
                "CPUExecutionProvider",
            ]
            self.trt_cache_dir = cache
            self.precision = "fp16"  # trt_fp16_enable
        if wanted not in available:
            raise BackendUnavailable(
                kind, f"onnxruntime {ort.__version__} has no {wanted} (available providers: {available})"
                + ("; install onnxruntime-gpu and the CUDA libraries" if gpu else ""))
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        active = self.session.get_providers()
        if wanted not in active:  # ORT falls back silently when CUDA/TensorRT libraries fail to load
            self.session = None
            raise BackendUnavailable(kind, f"onnxruntime could not start {wanted} (session providers: {active}); "
                                     "check the CUDA/cuDNN/TensorRT libraries and the GPU driver")
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        self.input_name = input_name or inputs[0]
        self.output_name = output_name or outputs[0]
        if self.input_name not in inputs or self.output_name not in outputs:
            raise ValueError(f"ONNX model {path} has inputs {inputs} and outputs {outputs}; "
                             f"expected input {self.input_name!r} and output {self.output_name!r}")
        self._stager: Any = None  # a CudaStager (torch) on CUDA
        if gpu:
            try:  # pinned staging needs torch (fringelive[torch]); without it ORT's own transfers
                from fringelive.engine.backends.cuda_staging import CudaStager, cuda_device  # noqa: PLC0415
                cuda_device(kind, dev)
            except ImportError as e:
                if not is_missing_torch(e):
                    raise
                log.info("%s: torch is not installed; using OrtValue transfers without pinned staging", kind)
            except BackendUnavailable:
                log.info("%s: torch cannot see %s; using OrtValue transfers without pinned staging", kind, dev)
            else:
                self._stager = CudaStager(dev, self._run_bound, chunk=chunk)

    def _run_bound(self, x: Any) -> Any:
        """One chunk on GPU tensors (io_binding by pointer); blocks until ORT is done."""
        torch = import_torch()
        n, _, h, w = x.shape
        out_shape = (n, self._num_classes(h, w), h, w)
        y = torch.empty(out_shape, dtype=torch.float32, device=x.device)
        torch.cuda.current_stream(x.device).synchronize()  # x's copy finished (ORT uses its own stream)
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, "cuda", x.device.index or 0, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(self.output_name, "cuda", y.device.index or 0, np.float32, out_shape, y.data_ptr())
        self.session.run_with_iobinding(binding)  # synchronous: outputs are ready on return
        return y

    def _num_classes(self, h: int, w: int) -> int:
        shape = next(o.shape for o in self.session.get_outputs() if o.name == self.output_name)
        c = shape[1] if len(shape) == 4 else None
        if isinstance(c, int) and c > 0:
            return c
        raise RuntimeError(f"{self!r}: the ONNX output {self.output_name!r} has no static class dimension ({shape})")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self.name == "onnxruntime":
            (out,) = self.session.run([self.output_name], {self.input_name: batch})
            return np.asarray(out, dtype=np.float32)
        if self._stager is not None:
            return self._stager(batch)
        ort = self._ort
        device_id = int(self.device[5:])
        binding = self.session.io_binding()
        x = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", device_id)
        binding.bind_ortvalue_input(self.input_name, x)
        binding.bind_output(self.output_name, "cuda", device_id)
        self.session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        if getattr(self, "_stager", None) is not None:
            self._stager.close()
            self._stager = None
        self.session = None

    @classmethod
    def from_file(cls, kind: str, path: Path, *, device: str | None = None, intra_op_threads: int | None = None,
                  trt_cache_dir: str | os.PathLike[str] | None = None, chunk: int = 1, **_: Any) -> "OnnxRuntimeBackend":
        return cls(kind, path, device=device, intra_op_threads=intra_op_threads, trt_cache_dir=trt_cache_dir,
                   chunk=chunk)

    @classmethod
    def from_member(cls, kind: str, bundle: Bundle, index: int, member: Member, *, device: str | None = None,
                    intra_op_threads: int | None = None, trt_cache_dir: str | os.PathLike[str] | None = None,
                    chunk: int = 1, **_: Any) -> "OnnxRuntimeBackend":
        return cls(kind, bundle.path / member.file, device=device, intra_op_threads=intra_op_threads,
                   input_name=member.input_name, output_name=member.output_name, trt_cache_dir=trt_cache_dir,
                   chunk=chunk)

    @classmethod
    def unavailable(cls, kind: str) -> str | None:
        try:
            ort = importlib.import_module("onnxruntime")
        except ImportError as e:
            return f"onnxruntime cannot be imported ({e})"
        if kind == "onnxruntime":
            return None
        providers = list(ort.get_available_providers())
        p = {"onnxruntime-cuda": "CUDAExecutionProvider", "onnxruntime-tensorrt": "TensorrtExecutionProvider"}[kind]
        return None if p in providers else f"onnxruntime {ort.__version__} has no {p} (available providers: {providers})"
