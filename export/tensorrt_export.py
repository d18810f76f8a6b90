"""TensorRT engines for a bundle's ONNX members (TensorRT 10 Python API, NVIDIA GPU).

:func:`build_engines` builds one serialized engine (``engines/member<i>.<precision>.<gpu>.plan``)
per member with one optimization profile for the daemon's tile batches, verifies it against ONNX
Runtime (CPU) on a random input at the profile's ``opt`` shape, and records it in
``card.engines`` with the TensorRT version, GPU name and compute capability.

Verification tolerances (max abs logit difference; fraction of pixels with the same argmax):
FP16 ``5e-2`` and ``>= 0.999``; FP32 ``1e-3`` and ``>= 0.9999``.

Profile for ``--tile-size T`` (the largest network input side the daemon feeds, halos
included) and ``--max-batch B``: min ``(1, 1, m, m)`` with ``m`` the card's ``tile.min_size_px``,
opt ``(B, 1, T, T)``, max ``(B, 1, T, T)``.

``tensorrt`` and CUDA are imported lazily; without them :class:`TensorRTUnavailable` says what is
missing in one line (the CLI turns it into exit code 2).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fringelive.bundle.bundle_io import Bundle, BundleError, load_bundle, sha256_file
from fringelive.bundle.card import Engine
from fringelive.engine.optional import MissingDependency, import_tensorrt

__all__ = [
    "PRECISIONS",
    "DEFAULT_TOLERANCES",
    "TensorRTUnavailable",
    "EngineBuildError",
    "EngineProfile",
    "require_tensorrt",
    "engine_profile",
    "build_engine",
    "build_engines",
]

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32")
#: precision -> (max abs logit difference vs ONNX Runtime, minimum argmax agreement)
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {"fp16": (5e-2, 0.999), "fp32": (1e-3, 0.9999)}
DEFAULT_TILE_SIZE = 1024
DEFAULT_MAX_BATCH = 4


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing; the message is one line saying which."""


class EngineBuildError(RuntimeError):
    """The engine could not be built or does not reproduce ONNX Runtime."""


@dataclass(frozen=True)
class EngineProfile:
    """Optimization profile of the input ``image``: shapes ``(N, 1, H, W)``."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def require_tensorrt() -> Any:
    """Import and return the ``tensorrt`` module, or raise :class:`TensorRTUnavailable` when it
    is not installed or no CUDA GPU is visible (checked through torch)."""
    try:
        trt = import_tensorrt()
    except MissingDependency as e:
        raise TensorRTUnavailable(
            f"TensorRT is not installed ({e.msg}); install the 'tensorrt' extra on a machine with an "
            "NVIDIA GPU, or use the onnxruntime backends") from None
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable(
            "no CUDA GPU is available (torch.cuda.is_available() is False); TensorRT engines must be "
            "built on the GPU that will run them")
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is too old; fringelive needs TensorRT >= 10")
    return trt


def engine_profile(tile_size: int, max_batch: int, multiple_of: int, min_size: int) -> EngineProfile:
    """The profile for tiles of up to ``tile_size`` px (a multiple of ``multiple_of``) in batches
    of up to ``max_batch``."""
    if not isinstance(tile_size, int) or tile_size < min_size or tile_size % multiple_of:
        raise ValueError(f"tile_size must be a multiple of {multiple_of} and >= {min_size} px, got {tile_size!r}")
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
    return EngineProfile(min=(1, 1, min_size, min_size), opt=(max_batch, 1, tile_size, tile_size),
                         max=(max_batch, 1, tile_size, tile_size))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def build_engine(trt: Any, onnx_path: Path, profile: EngineProfile, precision: str,
                 workspace_bytes: int, input_name: str = "image") -> bytes:
    """Parse ``onnx_path`` and build a serialized engine with one optimization profile."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx_path.name}: TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16":
        if not builder.platform_has_fast_fp16:
            log.warning("this GPU has no fast FP16; building an FP16 engine anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(input_name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(opt_profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{onnx_path.name}: TensorRT failed to build an engine (see its log above)")
    return bytes(plan)


def _run_engine(trt: Any, plan: bytes, x: np.ndarray, input_name: str, output_name: str) -> np.ndarray:
    """Run a serialized engine on ``x`` (N, 1, H, W) float32 with torch CUDA buffers."""
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineBuildError("TensorRT cannot deserialize the engine it just built")
    context = engine.create_execution_context()
    context.set_input_shape(input_name, tuple(x.shape))
    inp = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).cuda()
    out = torch.empty(tuple(context.get_tensor_shape(output_name)), dtype=torch.float32, device="cuda")
    context.set_tensor_address(input_name, inp.data_ptr())
    context.set_tensor_address(output_name, out.data_ptr())
    stream = torch.cuda.Stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise EngineBuildError("TensorRT execution failed")
    stream.synchronize()
    return out.cpu().numpy()


def _run_onnxruntime(onnx_path: Path, x: np.ndarray, input_name: str, output_name: str) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return sess.run([output_name], {input_name: x})[0]


def build_engines(
    bundle_path: str | os.PathLike[str],
    *,
    precision: str = "fp16",
    tile_size: int = DEFAULT_TILE_SIZE,
    max_batch: int = DEFAULT_MAX_BATCH,
    workspace_mib: int = 2048,
    tolerance: float | None = None,
    min_argmax_agreement: float | None = None,
    members: Sequence[int] | None = None,
    seed: int = 0,
) -> Bundle:
    """Build, verify and register a TensorRT engine for each (selected) member of a bundle.

    tile_size: largest network input side (px, halos included); max_batch: tiles per batch.
    tolerance / min_argmax_agreement: acceptance vs ONNX Runtime (default per precision,
    :data:`DEFAULT_TOLERANCES`). Existing engines for the same member, precision and GPU are
    replaced. Raises :class:`TensorRTUnavailable`, :class:`EngineBuildError`, :class:`BundleError`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not isinstance(workspace_mib, int) or workspace_mib < 1:
        raise ValueError(f"workspace_mib must be a positive integer, got {workspace_mib!r}")
    bundle = load_bundle(bundle_path)
    tile = bundle.card.tile
    profile = engine_profile(tile_size, max_batch, tile.multiple_of, tile.min_size_px)
    tol, min_agree = DEFAULT_TOLERANCES[precision]
    tol = tol if tolerance is None else tolerance
    min_agree = min_agree if min_argmax_agreement is None else min_argmax_agreement
    selected = list(range(len(bundle.card.members))) if members is None else list(members)
    for i in selected:
        if not 0 <= i < len(bundle.card.members):
            raise ValueError(f"member index {i} out of range: the bundle has {len(bundle.card.members)} members")

    trt = require_tensorrt()
    import torch

    gpu = torch.cuda.get_device_name()
    cc = "{}.{}".format(*torch.cuda.get_device_capability())
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(profile.opt, dtype=np.float32)
    (bundle.path / "engines").mkdir(exist_ok=True)
    new_engines: list[Engine] = []
    for i in selected:
        m = bundle.card.members[i]
        onnx_path = bundle.path / m.file
        log.info("building %s engine for %s (profile %s)", precision, m.file, profile.to_dict())
        plan = build_engine(trt, onnx_path, profile, precision, workspace_mib << 20, m.input_name)
        ref = _run_onnxruntime(onnx_path, x, m.input_name, m.output_name)
        got = _run_engine(trt, plan, x, m.input_name, m.output_name)
        diff = float(np.max(np.abs(got - ref)))
        agree = float(np.mean(got.argmax(1) == ref.argmax(1)))
        if not (diff <= tol and agree >= min_agree):
            raise EngineBuildError(
                f"{m.file}: {precision} engine differs from ONNX Runtime: max abs logit diff {diff:.3g} "
                f"(tolerance {tol:g}), argmax agreement {agree:.5f} (minimum {min_agree:g})")
        rel = f"engines/{Path(m.file).stem}.{precision}.{_slug(gpu)}.plan"
        fd, tmp = tempfile.mkstemp(dir=bundle.path / "engines", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(plan)
        shutil.move(tmp, bundle.path / rel)
        new_engines.append(Engine(
            file=rel, sha256=sha256_file(bundle.path / rel), member=m.file, precision=precision,
            tensorrt_version=str(trt.__version__), gpu=gpu, compute_capability=cc,
            profile=profile.to_dict(), max_abs_diff_vs_onnxruntime=diff, tolerance=tol,
            argmax_agreement=agree, min_argmax_agreement=min_agree,
        ))
        log.info("%s: max abs diff %.3g, argmax agreement %.5f", rel, diff, agree)
    replaced = {(e.member, e.precision, e.gpu) for e in new_engines}
    kept = tuple(e for e in bundle.card.engines if (e.member, e.precision, e.gpu) not in replaced)
    card = bundle.card.replace(engines=kept + tuple(new_engines))
    bundle.write_card(card)
    try:
        return load_bundle(bundle.path)
    except BundleError as e:  # pragma: no cover - written just above
        raise EngineBuildError(str(e)) from None
