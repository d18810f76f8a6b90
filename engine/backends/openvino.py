"""``openvino``: the bundle member's ONNX run by OpenVINO's CPU plugin.

Same contract as every backend (:class:`~.base.Backend`): ``backend((N, 1, h, w) float32) ->
(N, C, h, w) float32`` logits, calls serialised, ``close()`` idempotent.

* The member's ONNX file is read directly (``Core.read_model``); no conversion step, no file
  written. The bundle's ONNX has dynamic N/H/W.
* ``shapes = "static"`` (default): the model is reshaped to each new input shape and compiled
  for it; up to ``max_shapes`` compiled shapes are kept (least recently used dropped). A daemon
  feeds one or a few tile shapes per frame size, so after the first frame of a size no call
  compiles. ``shapes = "dynamic"``: one compilation with dynamic N/H/W.
* Threads: ``INFERENCE_NUM_THREADS`` = ``intra_op_threads`` (None: the cores this process may
  use), one stream, latency hint, threads not pinned to cores (the daemon shares them).
* ``precision``: ``fp32`` | ``bf16`` | ``fp16`` → ``INFERENCE_PRECISION_HINT`` ``f32`` | ``bf16``
  | ``f16`` (inputs and outputs stay float32). A precision the CPU does not run natively
  (not in ``OPTIMIZATION_CAPABILITIES``) raises :class:`PrecisionUnavailable`; OpenVINO would
  otherwise silently run FP32 under a BF16 label. The precision is read back from the compiled
  model, so :attr:`precision` is what runs, never only what was asked. Whether a non-FP32
  precision may be *used* is decided by the parity check (``engine/precision.py``), not here.

``openvino`` is imported in one place, :func:`_import_openvino`, which raises
:class:`~.base.BackendUnavailable` naming the kind and the reason.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from fringelive.bundle.bundle_io import Bundle
from fringelive.bundle.card import Member
from fringelive.engine.backends.base import Backend, BackendUnavailable, register_backend, usable_cpu_count
from fringelive.engine.backends.kinds import PRECISIONS
from fringelive.engine.optional import MissingDependency, import_openvino

__all__ = ["OpenVinoBackend", "PrecisionUnavailable", "PRECISIONS", "openvino_cpu_info"]

log = logging.getLogger(__name__)

KIND = "openvino"
#: backend precision (:data:`~.kinds.PRECISIONS`) -> OpenVINO INFERENCE_PRECISION_HINT
_OV_HINT: dict[str, str] = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
#: precision -> the OPTIMIZATION_CAPABILITIES entry that says the CPU runs it natively
_CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}
_FROM_OV_TYPE = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
SHAPE_MODES = ("static", "dynamic")


class PrecisionUnavailable(BackendUnavailable):
    """The runtime is there but cannot run ``precision`` on this device (FP32 still can)."""

    def __init__(self, kind: str, precision: str, reason: str) -> None:
        super().__init__(kind, reason)
        self.precision = precision


def _import_openvino() -> Any:
    """The ``openvino`` module, or :class:`BackendUnavailable` saying why not."""
    try:
        return import_openvino()
    except MissingDependency as e:
        if isinstance(e.cause, OSError):  # a wheel for another glibc / a broken shared library
            raise BackendUnavailable(KIND, f"openvino is installed but does not load ({e})") from None
        raise BackendUnavailable(KIND, f"openvino cannot be imported ({e}); {e.hint}") from None


def openvino_cpu_info(ov: Any | None = None, core: Any | None = None) -> dict[str, Any]:
    """``{"openvino": version, "cpu": FULL_DEVICE_NAME, "capabilities": [...]}`` of the CPU
    plugin (raises BackendUnavailable without openvino)."""
    ov = ov or _import_openvino()
    core = core or ov.Core()
    return {"openvino": str(ov.get_version()).split("-")[0] if hasattr(ov, "get_version") else ov.__version__,
            "openvino_build": str(getattr(ov, "__version__", "")),
            "cpu": str(core.get_property("CPU", "FULL_DEVICE_NAME")),
            "capabilities": [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]}


def _type_name(t: Any) -> str:
    name = t.get_type_name() if hasattr(t, "get_type_name") else str(t)
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(name, name)


@register_backend(KIND)
class OpenVinoBackend(Backend):
    """One ONNX member on OpenVINO's CPU plugin (see the module docstring)."""

    name = KIND

    def __init__(self, model_path: str | os.PathLike[str], *, device: str | None = None,
                 intra_op_threads: int | None = None, precision: str = "fp32",
                 input_name: str | None = None, output_name: str | None = None,
                 shapes: str = "static", max_shapes: int = 8) -> None:
        if device not in (None, "cpu"):
            raise ValueError(f"backend 'openvino' runs on the CPU: device must be 'cpu', got {device!r}")
        if intra_op_threads is not None and (isinstance(intra_op_threads, bool) or not isinstance(intra_op_threads, int)
                                             or intra_op_threads < 1):
            raise ValueError(f"intra_op_threads must be a positive integer or None, got {intra_op_threads!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if shapes not in SHAPE_MODES:
            raise ValueError(f"shapes must be one of {list(SHAPE_MODES)}, got {shapes!r}")
        if isinstance(max_shapes, bool) or not isinstance(max_shapes, int) or max_shapes < 1:
            raise ValueError(f"max_shapes must be a positive integer, got {max_shapes!r}")
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        ov = _import_openvino()
        super().__init__("cpu", str(path))
        self._ov = ov
        self._core = ov.Core()
        self.info = openvino_cpu_info(ov, self._core)
        self.requested_precision = precision
        if precision in _CAPABILITY and _CAPABILITY[precision] not in self.info["capabilities"]:
            raise PrecisionUnavailable(
                KIND, precision, f"this CPU ({self.info['cpu']}) has no native {precision.upper()}: OpenVINO "
                f"{self.info['openvino']} reports OPTIMIZATION_CAPABILITIES {self.info['capabilities']}")
        self._model = self._core.read_model(str(path))
        inputs = [sorted(p.get_names()) for p in self._model.inputs]
        outputs = [sorted(p.get_names()) for p in self._model.outputs]
        self.input_name = input_name or (inputs[0][0] if inputs and inputs[0] else "image")
        self.output_name = output_name or (outputs[0][0] if outputs and outputs[0] else "logits")
        if len(self._model.inputs) != 1 or not any(self.input_name in n for n in inputs) \
                or not any(self.output_name in n for n in outputs):
            raise ValueError(f"ONNX model {path} has inputs {inputs} and outputs {outputs}; expected one input "
                             f"{self.input_name!r} and an output {self.output_name!r}")
        self.threads = intra_op_threads or usable_cpu_count()
        self.shapes = shapes
        self.max_shapes = max_shapes
        self._config = {"INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1,
                        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": _OV_HINT[precision],
                        # the daemon's finisher, receiver and publisher share these cores: unpinned
                        # threads migrate instead of waiting for a preempted core (2048² on 2
                        # cores beside a busy numpy thread: 763-822 vs 868-915 ms per frame)
                        "ENABLE_CPU_PINNING": False}
        self._compiled: OrderedDict[tuple[int, ...] | None, tuple[Any, Any]] = OrderedDict()
        self.compilations = 0
        if shapes == "dynamic":
            self._get(None)
        self.precision = self._effective_precision()

    # -- compilation ------------------------------------------------------------------------

    def _compile(self, shape: tuple[int, ...] | None) -> tuple[Any, Any]:
        model = self._model
        if shape is not None:
            model = self._model.clone()
            model.reshape({model.inputs[0]: list(shape)})
        compiled = self._core.compile_model(model, "CPU", self._config)
        self.compilations += 1
        return compiled, compiled.create_infer_request()

    def _get(self, shape: tuple[int, ...] | None) -> tuple[Any, Any]:
        if shape in self._compiled:
            self._compiled.move_to_end(shape)
            return self._compiled[shape]
        entry = self._compile(shape)
        self._compiled[shape] = entry
        while len(self._compiled) > self.max_shapes:
            self._compiled.popitem(last=False)
        return entry

    def _effective_precision(self) -> str:
        """Compile once (smallest legal shape when static) and read back the precision that runs."""
        compiled = (self._get(None) if self.shapes == "dynamic" else self._get((1, 1, 16, 16)))[0]
        got = _FROM_OV_TYPE.get(_type_name(compiled.get_property("INFERENCE_PRECISION_HINT")), "unknown")
        if got != self.requested_precision:
            raise PrecisionUnavailable(KIND, self.requested_precision,
                                       f"OpenVINO {self.info['openvino']} compiled {self.member} for {got}, not "
                                       f"{self.requested_precision}, on {self.info['cpu']}")
        return got

    # -- inference --------------------------------------------------------------------------

    def _run(self, batch: np.ndarray) -> np.ndarray:
        _, request = self._get(None if self.shapes == "dynamic" else tuple(batch.shape))
        result = request.infer({0: batch}, share_inputs=True, share_outputs=False)
        out = result[request.model_outputs[0]] if len(request.model_outputs) == 1 else \
            result[next(o for o in request.model_outputs if self.output_name in o.get_names())]
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        self._compiled.clear()
        self._model = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.precision} {self.member} on {self.device}>"

    # --- construction by kind (the registry calls these) ------------------------------------

    @classmethod
    def from_file(cls, kind: str, path: Path, *, device: str | None = None, intra_op_threads: int | None = None,
                  precision: str = "fp32", **_: Any) -> "OpenVinoBackend":
        return cls(path, device=device, intra_op_threads=intra_op_threads, precision=precision)

    @classmethod
    def from_member(cls, kind: str, bundle: Bundle, index: int, member: Member, *, device: str | None = None,
                    intra_op_threads: int | None = None, precision: str = "fp32", **_: Any) -> "OpenVinoBackend":
        return cls(bundle.path / member.file, device=device, intra_op_threads=intra_op_threads, precision=precision,
                   input_name=member.input_name, output_name=member.output_name)

    @classmethod
    def unavailable(cls, kind: str) -> str | None:
        try:
            _import_openvino()
        except BackendUnavailable as e:
            return e.reason
        return None
