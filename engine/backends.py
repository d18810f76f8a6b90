"""Inference backends behind one small interface: ``backend(batch) -> logits``.

A :class:`Backend` wraps ONE ensemble member of a bundle. Input ``batch`` is ``(N, 1, h, w)``
float32 (preprocessed pixels, h and w multiples of the card's ``tile.multiple_of``); output is
``(N, C, h, w)`` float32 logits as a new numpy array. Kinds:

``onnxruntime``           ONNX Runtime on the CPU (default; ``intra_op_threads`` = usable cores).
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
computes, and outputs come back on a third stream (:class:`_CudaStager`).

A kind whose runtime, GPU or files are missing raises :class:`BackendUnavailable` naming the kind
and the reason; :func:`available_backends` reports this up front without building anything.
GPU runtimes (tensorrt, CUDA builds of onnxruntime) and tritonclient are imported lazily.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from fringelive.bundle.triton_names import default_model_prefix, model_name
from fringelive.bundle.bundle_io import Bundle, load_bundle
from fringelive.engine.models import build_model

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from fringelive.bundle.bundle_io import Bundle
    from fringelive.bundle.card import Member

__all__ = [
    "BACKEND_KINDS",
    "GPU_KINDS",
    "BackendUnavailable",
    "Backend",
    "OnnxRuntimeBackend",
    "TorchBackend",
    "TensorRTBackend",
    "TritonBackend",
    "TritonRequestError",
    "parse_triton_url",
    "create_backend",
    "create_backends",
    "available_backends",
    "default_trt_cache_dir",
]

log = logging.getLogger(__name__)

BACKEND_KINDS = ("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "torch", "triton")
GPU_KINDS = ("onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot run here (runtime not installed, no GPU, file missing)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"backend {kind!r} is not available: {reason}")
        self.kind = kind
        self.reason = reason


def usable_cpu_count() -> int:
    """CPU cores this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def default_trt_cache_dir() -> Path:
    """Where TensorRT engines built by ONNX Runtime are cached: ``$FRINGELIVE_CACHE_DIR/ort-trt``
    or ``~/.cache/fringelive/ort-trt``."""
    root = os.environ.get("FRINGELIVE_CACHE_DIR") or Path.home() / ".cache" / "fringelive"
    return Path(root) / "ort-trt"


# --- the interface ----------------------------------------------------------------------------


class Backend:
    """One ensemble member ready to run: ``backend(batch (N, 1, h, w) float32) -> (N, C, h, w)``.

    Attributes: ``name`` (the kind, e.g. ``"onnxruntime"``), ``device`` (``"cpu"``,
    ``"cuda:0"``), ``member`` (the member's file name in its bundle, else the model path). Calls are serialised by a
    lock, so one backend may be shared by threads. Use as a context manager or call close().
    """

    name: str = "backend"
    #: Largest input ``(N, h, w)`` the runtime accepts (a TensorRT engine's profile), else None.
    input_limits: tuple[int, int, int] | None = None

    def __init__(self, device: str, member: str) -> None:
        self.device = device
        self.member = member
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if not isinstance(batch, np.ndarray):
            raise TypeError(f"batch must be a numpy array (N, 1, h, w) float32, got {type(batch).__name__}")
        if batch.ndim != 4 or batch.shape[1] != 1 or min(batch.shape) < 1:
            raise ValueError(f"batch must have shape (N, 1, h, w) with N, h, w >= 1, got {batch.shape}")
        if batch.dtype != np.float32:
            raise ValueError(f"batch must have dtype float32, got {batch.dtype}")
        batch = np.ascontiguousarray(batch)
        with self._lock:
            out = self._run(batch)
        if out.ndim != 4 or out.shape[0] != batch.shape[0] or out.shape[2:] != batch.shape[2:]:
            raise RuntimeError(f"{self!r} returned logits of shape {out.shape} for a batch of shape {batch.shape}")
        return out

    def _run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release the runtime session / GPU memory. Idempotent."""
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.member} on {self.device}>"


# --- CUDA staging: pinned host buffers, copy/compute overlap -------------------------------------


def _cuda_device(kind: str, device: str | None) -> str:
    """Normalise ``device`` for a CUDA path ("cuda" → "cuda:0"); raise BackendUnavailable when
    torch cannot see that GPU."""
    dev = "cuda:0" if device in (None, "cuda") else str(device)
    if not dev.startswith("cuda:") or not dev[5:].isdigit():
        raise ValueError(f"backend {kind!r} runs on a CUDA GPU: device must be 'cuda' or 'cuda:N', got {device!r}")
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        raise BackendUnavailable(kind, "torch is not installed (needed for CUDA staging)") from None
    if not torch.cuda.is_available():
        raise BackendUnavailable(kind, f"no CUDA GPU visible to torch {torch.__version__} (torch.cuda.is_available() is False)")
    index = int(dev[5:])
    if index >= torch.cuda.device_count():
        raise BackendUnavailable(kind, f"device {dev} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


class _CudaStager:
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
        import torch

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


# --- ONNX Runtime -------------------------------------------------------------------------------


def _import_onnxruntime(kind: str) -> Any:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as e:
        raise BackendUnavailable(kind, f"onnxruntime cannot be imported ({e}); pip install onnxruntime") from None


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime session for one ONNX file.

    ``onnxruntime``: CPUExecutionProvider with ``intra_op_threads`` (default: usable cores).
    ``onnxruntime-cuda``: CUDAExecutionProvider; inputs/outputs bound on the GPU with io_binding
    (through :class:`_CudaStager` when torch sees the GPU, else via ``OrtValue``s).
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
        self._stager: _CudaStager | None = None
        if gpu:
            try:
                _cuda_device(kind, dev)
            except BackendUnavailable:
                log.info("%s: torch cannot see %s; using OrtValue transfers without pinned staging", kind, dev)
            else:
                self._stager = _CudaStager(dev, self._run_bound, chunk=chunk)

    def _run_bound(self, x: "torch.Tensor") -> "torch.Tensor":
        """One chunk on GPU tensors (io_binding by pointer); blocks until ORT is done."""
        import torch

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


# --- torch --------------------------------------------------------------------------------------


class TorchBackend(Backend):
    """The network rebuilt with ``fringelive.engine.models.build_model`` from the card's
    architecture and the member's ``state_dict`` (``torch.load(weights_only=True)``), in eval
    mode under ``torch.inference_mode``. ``device`` "cpu" (default) or "cuda[:N]"."""

    name = "torch"

    def __init__(self, architecture_name: str, spec: dict[str, Any], weights_path: str | os.PathLike[str], *,
                 device: str | None = None, intra_op_threads: int | None = None, chunk: int = 1) -> None:
        import torch


        if intra_op_threads is not None and (isinstance(intra_op_threads, bool) or not isinstance(intra_op_threads, int) or intra_op_threads < 1):
            raise ValueError(f"intra_op_threads must be a positive integer or None, got {intra_op_threads!r}")
        dev = "cpu" if device in (None, "cpu") else _cuda_device("torch", device)
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
        self._stager = _CudaStager(dev, self._forward, chunk=chunk) if dev != "cpu" else None

    def _forward(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch

        with torch.inference_mode():
            return self.model(x)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._stager is not None:
            return self._stager(batch)
        import torch

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


# --- native TensorRT ----------------------------------------------------------------------------


def _import_tensorrt() -> Any:
    try:
        return importlib.import_module("tensorrt")
    except ImportError as e:
        raise BackendUnavailable("tensorrt", f"the tensorrt Python package cannot be imported ({e}); "
                                 "pip install 'fringelive[tensorrt]' on a machine with an NVIDIA GPU") from None


class TensorRTBackend(Backend):
    """A serialized TensorRT 10 engine (``.plan``), run with ``execute_async_v3`` on torch CUDA
    tensors. The input shape is set per call and must lie within the engine's optimisation
    profile (``Engine.profile``: ``min``/``opt``/``max`` shapes)."""

    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike[str], *, device: str | None = None,
                 input_name: str = "image", output_name: str = "logits",
                 profile: dict[str, list[int]] | None = None, chunk: int = 1) -> None:
        trt = _import_tensorrt()
        dev = _cuda_device("tensorrt", device)
        path = Path(engine_path)
        if not path.is_file():
            raise BackendUnavailable("tensorrt", f"engine file {path} does not exist")
        super().__init__(dev, str(path))
        import torch

        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(dev):
            self.runtime = trt.Runtime(self._logger)
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise BackendUnavailable("tensorrt", f"TensorRT {trt.__version__} could not deserialize {path} "
                                         "(built for another TensorRT version or GPU?)")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if input_name not in names or output_name not in names:
            raise ValueError(f"engine {path} has tensors {names}; expected {input_name!r} and {output_name!r}")
        self.input_name, self.output_name = input_name, output_name
        self.profile = profile
        top = (profile or {}).get("max")
        if top and len(top) == 4:
            self.input_limits = (int(top[0]), int(top[2]), int(top[3]))
        self._dtypes = {name: self._torch_dtype(self.engine.get_tensor_dtype(name)) for name in (input_name, output_name)}
        self._num_classes = int(self.engine.get_tensor_shape(output_name)[1])
        if self._num_classes < 1:
            raise ValueError(f"engine {path}: output {output_name!r} has no static class dimension")
        self._stager = _CudaStager(dev, self._execute, chunk=chunk, input_dtype=self._dtypes[input_name])

    def _torch_dtype(self, dt: Any) -> "torch.dtype":
        import torch

        trt = self._trt
        table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        if dt not in table:
            raise ValueError(f"TensorRT engine {self.member}: unsupported I/O dtype {dt}")
        return table[dt]

    def _check_profile(self, shape: Sequence[int]) -> None:
        if not self.profile:
            return
        lo, hi = self.profile.get("min"), self.profile.get("max")
        if lo and hi and not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            raise ValueError(f"input shape {list(shape)} lies outside the engine's optimisation profile "
                             f"min {lo} .. max {hi}; choose a tile size within it")

    def _execute(self, x: "torch.Tensor") -> "torch.Tensor":
        """One chunk, enqueued on the current (compute) stream."""
        import torch

        n, _, h, w = x.shape
        self._check_profile((n, 1, h, w))
        if not self.context.set_input_shape(self.input_name, (n, 1, h, w)):
            raise ValueError(f"TensorRT rejected input shape {(n, 1, h, w)} for engine {self.member}")
        y = torch.empty((n, self._num_classes, h, w), dtype=self._dtypes[self.output_name], device=x.device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, y.data_ptr())
        stream = torch.cuda.current_stream(x.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution failed for engine {self.member}")
        return y

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._stager(batch)

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        self._stager.close()
        self.context = self.engine = self.runtime = None


# --- NVIDIA Triton Inference Server ---------------------------------------------------------------

_TRITON_URL_RE = re.compile(r"^(?P<scheme>https?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>\d{1,5}))?/?$")


def parse_triton_url(url: str) -> tuple[str, str, int]:
    """``http[s]://HOST[:PORT]`` → ``(scheme, host, port)``; the port defaults to 8000 (Triton's
    HTTP port) for http and 443 for https. Raises ValueError naming the URL."""
    m = _TRITON_URL_RE.match(url) if isinstance(url, str) else None
    port = int(m.group("port")) if m and m.group("port") else None
    if m is None or (port is not None and not 0 < port < 65536):
        raise ValueError(f"Triton URL must look like http://HOST:PORT or https://HOST:PORT, got {url!r}")
    scheme = m.group("scheme")
    return scheme, m.group("host").strip("[]"), port if port is not None else (8000 if scheme == "http" else 443)


def _import_tritonclient() -> Any:
    try:
        return importlib.import_module("tritonclient.http")
    except ImportError as e:
        raise BackendUnavailable("triton", f"tritonclient cannot be imported ({e}); "
                                 "pip install 'fringelive[triton]'") from None


class TritonRequestError(RuntimeError):
    """A Triton inference request failed (server error, lost connection, bad response)."""


class TritonBackend(Backend):
    """One ensemble member served by a Triton Inference Server as model ``model``.

    ``url``: ``http[s]://HOST:PORT`` of the server's HTTP endpoint; ``timeout_s``: connect and
    read timeout per request, s. Construction checks that the server is live and the model ready
    (:class:`BackendUnavailable` naming the URL and model otherwise, or when tritonclient is
    missing), that the model declares ``input_name``/``output_name``, and, when
    ``expected_sha256`` is given, that the model's ``fringelive_member_sha256`` parameter (written
    by ``fringelive export triton``) matches it. A call sends the batch in requests of at most
    the model's ``max_batch_size`` samples and ``max_request_bytes`` bytes of input; Triton's
    dynamic batcher may merge them with other clients' requests of the same tile shape.

    Requests are encoded and decoded with tritonclient (binary tensor data) and sent over one
    keep-alive ``http.client`` connection (tritonclient's own HTTP client is gevent-based and
    bound to the thread that created it; the daemon builds backends in one thread and calls them
    in another). A stale connection is reopened once per request.
    """

    name = "triton"

    def __init__(self, url: str, model: str, *, timeout_s: float = 30.0, input_name: str = "image",
                 output_name: str = "logits", expected_sha256: str | None = None,
                 max_request_bytes: int = 32 << 20) -> None:
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"timeout_s must be a number of seconds > 0, got {timeout_s!r}")
        if isinstance(max_request_bytes, bool) or not isinstance(max_request_bytes, int) or max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be a positive integer, got {max_request_bytes!r}")
        if not isinstance(model, str) or not model or "/" in model:
            raise ValueError(f"Triton model name must be a non-empty string without '/', got {model!r}")
        self._scheme, self._host, self._port = parse_triton_url(url)
        self._tc = _import_tritonclient()
        super().__init__(url.rstrip("/"), model)
        self.url = url.rstrip("/")
        self.model = model
        self.timeout_s = float(timeout_s)
        self.max_request_bytes = max_request_bytes
        self.input_name, self.output_name = input_name, output_name
        self._conn: Any = None
        from urllib.parse import quote

        self._path = f"/v2/models/{quote(model, safe='')}"
        try:
            try:
                self._check_server(expected_sha256)
            except OSError as e:
                raise BackendUnavailable("triton", f"the Triton server at {self.url} is unreachable "
                                         f"({type(e).__name__}: {e})") from None
        except BaseException:
            self.close()
            raise

    def _check_server(self, expected_sha256: str | None) -> None:
        """Server live, model ready, its config fits (raises OSError when unreachable)."""
        status, _, _ = self._request("GET", "/v2/health/live")
        if status != 200:
            raise BackendUnavailable("triton", f"the Triton server at {self.url} is not live (GET /v2/health/live: HTTP {status})")
        status, _, _ = self._request("GET", self._path + "/ready")
        if status != 200:
            raise BackendUnavailable("triton", f"model {self.model!r} is not ready on the Triton server at {self.url} "
                                     f"(models there: {self._model_names()}); export it with `fringelive export triton`")
        self.config = self._get_json(self._path + "/config")
        self._check_config(expected_sha256)

    # -- HTTP -----------------------------------------------------------------------------------

    def _connection(self) -> Any:
        import http.client

        if self._conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.timeout_s)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request on the keep-alive connection, retried once on a fresh connection when the
        old one turns out closed. Raises OSError (incl. timeouts) when the server cannot be
        reached."""
        import http.client

        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    http.client.CannotSendRequest, http.client.ResponseNotReady) as e:
                self._drop_connection()
                if attempt:
                    raise ConnectionError(f"{type(e).__name__}: {e}") from None
            except (OSError, http.client.HTTPException):
                self._drop_connection()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _get_json(self, path: str) -> Any:
        import json

        status, _, data = self._request("GET", path)
        if status != 200:
            raise BackendUnavailable("triton", f"GET {self.url}{path}: HTTP {status}: {data[:200].decode(errors='replace')}")
        return json.loads(data)

    def _model_names(self) -> list[str]:
        import json

        try:
            status, _, data = self._request("POST", "/v2/repository/index", b"{}", {"Content-Type": "application/json"})
            return sorted(str(m.get("name")) for m in json.loads(data)) if status == 200 else []
        except (OSError, ValueError):
            return []

    # -- checks ---------------------------------------------------------------------------------

    def _check_config(self, expected_sha256: str | None) -> None:
        cfg = self.config
        where = f"model {self.model!r} on the Triton server at {self.url}"
        inputs = [t.get("name") for t in cfg.get("input", [])]
        outputs = [t.get("name") for t in cfg.get("output", [])]
        if self.input_name not in inputs or self.output_name not in outputs:
            raise ValueError(f"{where} has inputs {inputs} and outputs {outputs}; expected input "
                             f"{self.input_name!r} and output {self.output_name!r}")
        for t in cfg.get("input", []) + cfg.get("output", []):
            if t.get("name") in (self.input_name, self.output_name) and t.get("data_type") != "TYPE_FP32":
                raise ValueError(f"{where}: tensor {t.get('name')!r} is {t.get('data_type')}, expected TYPE_FP32")
        self.max_batch_size = int(cfg.get("max_batch_size", 0))
        served = (cfg.get("parameters") or {}).get("fringelive_member_sha256", {}).get("string_value")
        if expected_sha256 is not None:
            if served is None:
                log.warning("%s carries no fringelive_member_sha256 parameter: cannot check it serves the "
                            "bundle's member (export repositories with `fringelive export triton`)", where)
            elif served != expected_sha256:
                raise BackendUnavailable("triton", f"{where} serves a network with sha256 {served}, but the local "
                                         f"bundle's member has {expected_sha256}; re-export the repository from "
                                         "this bundle (`fringelive export triton`) or point the daemon at the "
                                         "bundle Triton serves")
        self.served_sha256 = served

    # -- inference ------------------------------------------------------------------------------

    def _chunk(self, n: int, per_sample_bytes: int) -> int:
        most = max(1, self.max_request_bytes // max(1, per_sample_bytes))
        if self.max_batch_size > 0:
            most = min(most, self.max_batch_size)
        return max(1, min(n, most))

    def _infer(self, x: np.ndarray) -> np.ndarray:
        tc = self._tc
        inp = tc.InferInput(self.input_name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        out = tc.InferRequestedOutput(self.output_name, binary_data=True)
        body, json_size = tc.InferenceServerClient.generate_request_body([inp], outputs=[out])
        headers = {"Content-Type": "application/octet-stream"}
        if json_size is not None:
            headers["Inference-Header-Content-Length"] = str(json_size)
        try:
            status, rh, data = self._request("POST", self._path + "/infer", body, headers)
        except OSError as e:
            raise TritonRequestError(f"Triton model {self.model!r} at {self.url}: request failed "
                                     f"({type(e).__name__}: {e})") from None
        if status != 200:
            import json

            try:
                msg = json.loads(data).get("error", "")
            except ValueError:
                msg = data[:300].decode(errors="replace")
            raise TritonRequestError(f"Triton model {self.model!r} at {self.url}: HTTP {status}: {msg}")
        length = rh.get("inference-header-content-length")
        result = tc.InferenceServerClient.parse_response_body(
            data, header_length=int(length) if length else None, content_encoding=rh.get("content-encoding"))
        y = result.as_numpy(self.output_name)
        if y is None:
            raise TritonRequestError(f"Triton model {self.model!r} at {self.url}: the response has no output "
                                     f"{self.output_name!r}")
        return y

    def _run(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        step = self._chunk(n, batch[0].nbytes)
        parts = [self._infer(batch[s:s + step]) for s in range(0, n, step)]
        for (s, p) in zip(range(0, n, step), parts):
            if p.shape[0] != min(step, n - s) or p.shape[2:] != batch.shape[2:]:
                raise TritonRequestError(f"Triton model {self.model!r} at {self.url} returned {p.shape} for a "
                                         f"request of shape {batch[s:s + step].shape}")
        out = np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])  # a copy: the response buffer is read-only
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        self._drop_connection()


# --- factories ----------------------------------------------------------------------------------


def _member_of(bundle: "Bundle", member: int | str) -> tuple[int, "Member"]:
    members = bundle.card.members
    if isinstance(member, str):
        for i, m in enumerate(members):
            if m.file == member:
                return i, m
        raise ValueError(f"bundle {bundle.path} has no member {member!r}; members: {[m.file for m in members]}")
    if isinstance(member, bool) or not isinstance(member, int) or not 0 <= member < len(members):
        raise ValueError(f"member index must be in 0..{len(members) - 1} for bundle {bundle.path}, got {member!r}")
    return member, members[member]


def _engine_for(bundle: "Bundle", member: "Member", device: str) -> Any:
    """The card's engine for ``member`` that fits this GPU and TensorRT version."""
    engines = [e for e in bundle.card.engines if e.member == member.file]
    if not engines:
        raise BackendUnavailable("tensorrt", f"bundle {bundle.path} lists no TensorRT engine for member {member.file!r} "
                                 "(build one with `fringelive export tensorrt` on this GPU)")
    import torch

    trt = _import_tensorrt()
    cap = "{}.{}".format(*torch.cuda.get_device_capability(torch.device(device)))
    fitting = [e for e in engines if e.compute_capability == cap and e.tensorrt_version == trt.__version__]
    if not fitting:
        have = [(e.file, e.compute_capability, e.tensorrt_version) for e in engines]
        raise BackendUnavailable("tensorrt", f"no engine for member {member.file!r} matches this GPU (compute capability {cap}) "
                                 f"and TensorRT {trt.__version__}; the bundle has {have}")
    return fitting[0]


def create_backend(kind: str, source: "Bundle | str | os.PathLike[str]", *, member: int | str = 0,
                   device: str | None = None, intra_op_threads: int | None = None,
                   trt_cache_dir: str | os.PathLike[str] | None = None, chunk: int = 1,
                   triton_url: str = "http://127.0.0.1:8000", triton_model_prefix: str | None = None,
                   triton_timeout_s: float = 30.0) -> Backend:
    """Build one backend of ``kind`` for one ensemble member.

    ``source`` is a loaded :class:`~fringelive.bundle.bundle_io.Bundle` (``member`` selects by index
    or file name), a bundle directory, or, for the onnxruntime kinds, an ``.onnx`` file, for
    ``tensorrt`` a ``.plan`` engine file. ``device``: "cpu" or "cuda[:N]"; None picks the kind's
    own ("cpu" for onnxruntime and torch, "cuda:0" for the GPU kinds). ``intra_op_threads``:
    CPU threads per inference (None = usable cores). ``trt_cache_dir``: engine cache of
    ``onnxruntime-tensorrt``. ``chunk``: samples per host→device copy on CUDA.

    ``triton``: member ``i`` of a bundle is Triton model ``<triton_model_prefix>_m<i>`` (prefix
    default: the bundle name as ``fringelive export triton`` writes it) on the server at
    ``triton_url``; ``triton_timeout_s``: connect/read timeout per request, s; ``device`` must be
    None (the server places the model), ``intra_op_threads``, ``trt_cache_dir`` and ``chunk`` do
    not apply.

    Raises :class:`BackendUnavailable` when the runtime, GPU, server or a needed file is missing.
    """
    if kind not in BACKEND_KINDS:
        raise ValueError(f"unknown backend kind {kind!r}; known: {list(BACKEND_KINDS)}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")

    if not isinstance(source, Bundle):
        path = Path(source)
        if path.is_dir():
            source = load_bundle(path)
        elif kind == "triton":
            raise ValueError(f"backend 'triton' needs a bundle (its card names the member and its sha256), got the file {path}")
        elif kind.startswith("onnxruntime"):
            return OnnxRuntimeBackend(kind, path, device=device, intra_op_threads=intra_op_threads,
                                      trt_cache_dir=trt_cache_dir, chunk=chunk)
        elif kind == "tensorrt":
            return TensorRTBackend(path, device=device, chunk=chunk)
        else:
            raise ValueError(f"backend 'torch' needs a bundle (architecture + weights), got the file {path}")
    bundle = source
    index, m = _member_of(bundle, member)
    backend: Backend
    if kind == "triton":
        if device is not None:
            raise ValueError(f"backend 'triton' runs where the Triton server places the model: device must be None "
                             f"(config: \"auto\"), got {device!r} (choose CPU/GPU with `fringelive export triton --kind`)")
        prefix = default_model_prefix(bundle.card.name) if triton_model_prefix is None else triton_model_prefix
        backend = TritonBackend(triton_url, model_name(prefix, index), timeout_s=triton_timeout_s,
                                input_name=m.input_name, output_name=m.output_name, expected_sha256=m.sha256)
    elif kind.startswith("onnxruntime"):
        backend = OnnxRuntimeBackend(kind, bundle.path / m.file, device=device, intra_op_threads=intra_op_threads,
                                     input_name=m.input_name, output_name=m.output_name,
                                     trt_cache_dir=trt_cache_dir, chunk=chunk)
    elif kind == "torch":
        if not m.weights:
            raise BackendUnavailable("torch", f"bundle {bundle.path} member {m.file!r} has no torch weights "
                                     "(Member.weights); re-export the bundle with its state_dict")
        arch = bundle.card.architecture
        backend = TorchBackend(arch.name, arch.spec, bundle.path / m.weights, device=device,
                               intra_op_threads=intra_op_threads, chunk=chunk)
    else:  # native TensorRT
        _import_tensorrt()
        dev = _cuda_device("tensorrt", device)
        engine = _engine_for(bundle, m, dev)
        backend = TensorRTBackend(bundle.path / engine.file, device=dev, input_name=m.input_name,
                                  output_name=m.output_name, profile=engine.profile, chunk=chunk)
    backend.member = m.file
    return backend


def create_backends(kind: str, bundle: "Bundle | str | os.PathLike[str]", members: Sequence[int] | None = None,
                    **kwargs: Any) -> list[Backend]:
    """One backend per selected member (``members`` indices; None = all), in that order. The
    keyword arguments are those of :func:`create_backend`. On failure the ones already built are
    closed before the error propagates."""

    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    count = len(bundle.card.members)
    indices = list(range(count)) if members is None else list(members)
    if not indices:
        raise ValueError("members must select at least one ensemble member, got an empty selection")
    if len(set(indices)) != len(indices):
        raise ValueError(f"members must not repeat a member, got {indices}")
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count:
            raise ValueError(f"member index must be in 0..{count - 1} for bundle {bundle.path}, got {i!r}")
    built: list[Backend] = []
    try:
        for i in indices:
            built.append(create_backend(kind, bundle, member=i, **kwargs))
    except BaseException:
        for b in built:
            b.close()
        raise
    return built


def available_backends() -> dict[str, str | None]:
    """Each kind → None when it can run here, else the reason it cannot (nothing is built; GPU
    kinds are only checked for their runtime and a visible GPU, ``triton`` for tritonclient)."""
    out: dict[str, str | None] = {}
    try:
        ort = importlib.import_module("onnxruntime")
        providers = list(ort.get_available_providers())
        out["onnxruntime"] = None
        for kind, p in (("onnxruntime-cuda", "CUDAExecutionProvider"), ("onnxruntime-tensorrt", "TensorrtExecutionProvider")):
            out[kind] = None if p in providers else f"onnxruntime {ort.__version__} has no {p} (available providers: {providers})"
    except ImportError as e:
        for kind in ("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt"):
            out[kind] = f"onnxruntime cannot be imported ({e})"
    try:
        import torch

        cuda = torch.cuda.is_available()
        out["torch"] = None
    except ImportError as e:  # pragma: no cover - torch is a dependency
        cuda = False
        out["torch"] = f"torch cannot be imported ({e})"
    try:
        _import_tensorrt()
        out["tensorrt"] = None if cuda else "no CUDA GPU visible to torch"
    except BackendUnavailable as e:
        out["tensorrt"] = e.reason
    try:  # the client only: whether a server answers depends on the URL
        _import_tritonclient()
        out["triton"] = None
    except BackendUnavailable as e:
        out["triton"] = e.reason
    return {k: out[k] for k in BACKEND_KINDS}
