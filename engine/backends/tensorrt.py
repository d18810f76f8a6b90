"""The ``tensorrt`` backend: a native TensorRT 10 engine listed in the card's ``engines``. The
tensorrt package is optional (``fringelive[tensorrt]``) and imported in one place,
:func:`_import_tensorrt`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fringelive.bundle.bundle_io import Bundle
from fringelive.bundle.card import Member
from fringelive.engine.backends.base import Backend, BackendUnavailable, register_backend
from fringelive.engine.backends.cuda_staging import CudaStager, cuda_device
from fringelive.engine.optional import MissingDependency, import_tensorrt

__all__ = ["TensorRTBackend"]


def _import_tensorrt() -> Any:
    try:
        return import_tensorrt()
    except MissingDependency as e:
        raise BackendUnavailable("tensorrt", f"the tensorrt Python package cannot be imported ({e}); {e.hint}") from None


@register_backend("tensorrt", gpu=("tensorrt",))
class TensorRTBackend(Backend):
    """A serialized TensorRT 10 engine (``.plan``), run with ``execute_async_v3`` on torch CUDA
    tensors. The input shape is set per call and must lie within the engine's optimisation
    profile (``Engine.profile``: ``min``/``opt``/``max`` shapes)."""

    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike[str], *, device: str | None = None,
                 input_name: str = "image", output_name: str = "logits",
                 profile: dict[str, list[int]] | None = None, chunk: int = 1, precision: str = "fp16") -> None:
        trt = _import_tensorrt()
        dev = cuda_device("tensorrt", device)
        path = Path(engine_path)
        if not path.is_file():
            raise BackendUnavailable("tensorrt", f"engine file {path} does not exist")
        super().__init__(dev, str(path))
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
        self.precision = precision  # the card engine's (export builds fp16)
        top = (profile or {}).get("max")
        if top and len(top) == 4:
            self.input_limits = (int(top[0]), int(top[2]), int(top[3]))
        self._dtypes = {name: self._torch_dtype(self.engine.get_tensor_dtype(name)) for name in (input_name, output_name)}
        self._num_classes = int(self.engine.get_tensor_shape(output_name)[1])
        if self._num_classes < 1:
            raise ValueError(f"engine {path}: output {output_name!r} has no static class dimension")
        self._stager = CudaStager(dev, self._execute, chunk=chunk, input_dtype=self._dtypes[input_name])

    def _torch_dtype(self, dt: Any) -> "torch.dtype":
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

    @classmethod
    def from_file(cls, kind: str, path: Path, *, device: str | None = None, chunk: int = 1,
                  **_: Any) -> "TensorRTBackend":
        return cls(path, device=device, chunk=chunk)

    @classmethod
    def from_member(cls, kind: str, bundle: Bundle, index: int, member: Member, *, device: str | None = None,
                    chunk: int = 1, **_: Any) -> "TensorRTBackend":
        _import_tensorrt()
        dev = cuda_device("tensorrt", device)
        engine = _engine_for(bundle, member, dev)
        return cls(bundle.path / engine.file, device=dev, input_name=member.input_name,
                   output_name=member.output_name, profile=engine.profile, chunk=chunk,
                   precision=engine.precision)

    @classmethod
    def unavailable(cls, kind: str) -> str | None:
        try:
            _import_tensorrt()
        except BackendUnavailable as e:
            return e.reason
        return None if torch.cuda.is_available() else "no CUDA GPU visible to torch"


def _engine_for(bundle: Bundle, member: Member, device: str) -> Any:
    """The card's engine for ``member`` that fits this GPU and TensorRT version."""
    engines = [e for e in bundle.card.engines if e.member == member.file and e.kind == "tensorrt"]
    if not engines:
        raise BackendUnavailable("tensorrt", f"bundle {bundle.path} lists no TensorRT engine for member {member.file!r} "
                                 "(build one with `fringelive export tensorrt` on this GPU)")
    trt = _import_tensorrt()
    cap = "{}.{}".format(*torch.cuda.get_device_capability(torch.device(device)))
    fitting = [e for e in engines if e.compute_capability == cap and e.tensorrt_version == trt.__version__]
    if not fitting:
        have = [(e.file, e.compute_capability, e.tensorrt_version) for e in engines]
        raise BackendUnavailable("tensorrt", f"no engine for member {member.file!r} matches this GPU (compute capability {cap}) "
                                 f"and TensorRT {trt.__version__}; the bundle has {have}")
    return fitting[0]
