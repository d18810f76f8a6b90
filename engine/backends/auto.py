"""``backend = "auto"``: the fastest backend that is installed and verified on this machine.

Resolution, at start-up, once per bundle network, threads and device in a process (reloads of
the same network reuse the choice) (:func:`resolve_auto`):

1. A GPU kind whose engine the card records as verified for this GPU and runtime (``tensorrt``),
   or that builds and passes the FP32 check below (``onnxruntime-cuda``), is preferred to every
   CPU kind: on a machine with a GPU the probe only ranks the GPU kinds.
2. Otherwise each CPU candidate (``openvino``, ``onnxruntime``) that builds is *verified*
   against the reference (``onnxruntime``, FP32) on the probe input: max abs logit difference
   <= 1e-3 and argmax agreement >= 99.99 % (TensorRT's FP32 tolerances), then *timed*: one
   warm-up call (OpenVINO compiles the probe's shape here) and ``calls`` timed calls of a
   ``(batch, 1, side, side)`` batch; the median decides.
3. A kind that is not installed, fails to build or fails verification is skipped, with the
   reason kept for the log.

``[model] device`` narrows the candidates: "cpu" → CPU kinds only, "cuda[:N]" → GPU kinds only.

``torch`` (slower on CPU, process-wide thread pool) and ``triton`` (needs a server URL) are
never chosen automatically; every kind stays available by name.

Returns :class:`AutoChoice`: the kind, a one-line human reason for the log, the probe timings
and the skipped kinds with their reasons. Only precision FP32 is probed here; a non-FP32
precision is then gated by ``engine/precision.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fringelive.engine import precision as gate
from fringelive.engine.backends.base import BackendUnavailable, create_backend
from fringelive.engine.backends.openvino import PrecisionUnavailable, openvino_cpu_info

__all__ = ["AutoChoice", "CPU_CANDIDATES", "GPU_CANDIDATES", "resolve_auto", "resolve_auto_for_bundle",
           "create_serving_backends"]

log = logging.getLogger(__name__)

GPU_CANDIDATES = ("tensorrt", "onnxruntime-cuda")
CPU_CANDIDATES = ("openvino", "onnxruntime")
REFERENCE = "onnxruntime"
FP32_TOLERANCE = 1e-3
FP32_MIN_AGREEMENT = 0.9999


@dataclass(frozen=True)
class AutoChoice:
    kind: str
    reason: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _verify(ref: np.ndarray, got: np.ndarray) -> str | None:
    diff = float(np.max(np.abs(got - ref)))
    agree = float(np.mean(got.argmax(1) == ref.argmax(1)))
    if diff <= FP32_TOLERANCE and agree >= FP32_MIN_AGREEMENT:
        return None
    return (f"differs from {REFERENCE}: max abs logit diff {diff:.3g} (tolerance {FP32_TOLERANCE:g}), "
            f"argmax agreement {agree:.5f} (min {FP32_MIN_AGREEMENT})")


def _time(backend: Callable[[np.ndarray], np.ndarray], x: np.ndarray, calls: int) -> tuple[float, np.ndarray]:
    y = backend(x)  # warm-up: compiles / allocates for this shape
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        backend(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), y


def resolve_auto(build: Callable[[str], Any], *, candidates: Sequence[str] = GPU_CANDIDATES + CPU_CANDIDATES,
                 gpu_kinds: Sequence[str] = GPU_CANDIDATES, side: int = 512, batch: int = 1, calls: int = 3,
                 seed: int = 0) -> AutoChoice:
    """Pick a kind among ``candidates``; ``build(kind)`` returns a backend or raises
    BackendUnavailable (it is closed here after the probe)."""
    x = np.random.default_rng(seed).standard_normal((batch, 1, side, side), dtype=np.float32)
    skipped: dict[str, str] = {}
    ref_logits: np.ndarray | None = None
    timings: dict[str, float] = {}
    built: dict[str, Any] = {}
    try:
        for kind in candidates:
            try:
                built[kind] = build(kind)
            except BackendUnavailable as e:
                skipped[kind] = e.reason
            except (OSError, RuntimeError, ValueError) as e:  # a runtime that is there but broken
                skipped[kind] = f"{type(e).__name__}: {e}"
        gpus = [k for k in built if k in gpu_kinds]
        pool = gpus or [k for k in built if k not in gpu_kinds]
        for k in [k for k in built if k not in pool]:
            skipped[k] = "a GPU kind is available"
        if REFERENCE in built:
            ref_logits = built[REFERENCE](x)
        for kind in pool:
            try:
                ms, y = _time(built[kind], x, calls)
            except Exception as e:  # noqa: BLE001 - a failing probe disqualifies the kind, with its reason
                skipped[kind] = f"probe failed: {type(e).__name__}: {e}"
                continue
            problem = None if ref_logits is None or kind == REFERENCE else _verify(ref_logits, y)
            if problem:
                skipped[kind] = problem
            else:
                timings[kind] = ms
    finally:
        for b in built.values():
            b.close()
    if not timings:
        raise BackendUnavailable("auto", "no backend is installed and verified here: "
                                 + "; ".join(f"{k}: {r}" for k, r in skipped.items()))
    kind = min(timings, key=timings.__getitem__)
    ranked = ", ".join(f"{k} {ms:.1f} ms" for k, ms in sorted(timings.items(), key=lambda kv: kv[1]))
    others = [ms for k, ms in timings.items() if k != kind]
    lead = f", {min(others) / timings[kind]:.2f}x the next" if others else ""
    reason = (f"backend auto -> {kind}: fastest verified on a ({batch}, 1, {side}, {side}) probe, median of "
              f"{calls} calls: {ranked}{lead}")
    if skipped:
        reason += "; skipped: " + "; ".join(f"{k} ({r})" for k, r in skipped.items())
    return AutoChoice(kind, reason, timings, skipped)


#: ``auto`` choices made in this process: (member sha256, threads, device, options) -> AutoChoice; a
#: reload of the same network or a second daemon in one process does not probe again.
_CHOSEN: dict[tuple[Any, ...], AutoChoice] = {}


def _tensorrt_recorded(engines: Sequence[Any]) -> bool:
    return any(getattr(e, "file", None) and getattr(e, "tensorrt_version", None) for e in engines)


def resolve_auto_for_bundle(bundle: Any, *, member: int = 0, create: Callable[..., Any] | None = None,
                            intra_op_threads: int | None = None, device: str | None = None,
                            options: Mapping[str, Any] | None = None, **probe: Any) -> AutoChoice:
    """:func:`resolve_auto` for one member of a loaded bundle, building through the registry's
    ``create_backend``. ``tensorrt`` is only a candidate when the card lists an engine;
    ``device`` "cpu" keeps the CPU kinds only, "cuda[:N]" the GPU kinds only (on that GPU)."""
    create = create or create_backend
    pool = CPU_CANDIDATES if device == "cpu" else GPU_CANDIDATES if device else GPU_CANDIDATES + CPU_CANDIDATES
    candidates = [k for k in pool if k != "tensorrt" or _tensorrt_recorded(getattr(bundle.card, "engines", ()))]

    def build(kind: str) -> Any:
        cpu = kind in CPU_CANDIDATES
        return create(kind, bundle, member=member, intra_op_threads=intra_op_threads if cpu else None,
                      device=device, **dict(options or {}))

    choice = resolve_auto(build, candidates=candidates, **probe)
    log.info("%s", choice.reason)
    return choice


def create_serving_backends(kind: str, bundle: Any, *, members: Sequence[int] | None = None,
                            device: str | None = None, intra_op_threads: int | None = None,
                            precision: str = "fp32", create: Callable[..., Any] | None = None,
                            **options: Any) -> tuple[list[Any], str]:
    """What the daemon's model loader calls instead of ``create_backends``: resolves ``kind =
    "auto"`` (:func:`resolve_auto_for_bundle`), then builds one backend per selected member, a
    non-FP32 ``precision`` gated per member by the parity check (``engine/precision.py``; the
    card's ``engines`` records are used when they match this CPU and runtime). Returns the
    backends and one reason line for the log and ``status`` (every fall back included)."""
    cached = create is None  # probes through the registry are remembered for this process
    create = create or create_backend
    reasons: list[str] = []
    if kind == "auto":
        key = (bundle.card.members[0].sha256, intra_op_threads, device, repr(sorted(options.items())))
        choice = _CHOSEN.get(key) if cached else None
        if choice is None:
            choice = resolve_auto_for_bundle(bundle, create=create, intra_op_threads=intra_op_threads, device=device)
            if cached:
                _CHOSEN[key] = choice
            reasons.append(choice.reason)
        else:
            reasons.append(f"{choice.reason} (probed earlier in this process for this member, threads and device)")
        kind = choice.kind
    count = len(bundle.card.members)
    indices = list(range(count)) if members is None else list(members)
    built: list[Any] = []
    try:
        if precision != "fp32" and kind != "openvino":
            reasons.append(f"precision {precision} applies to the openvino backend only; {kind} runs its own "
                           f"({kind} fp32{' or its engine precision' if 'tensorrt' in kind else ''})")
            log.warning("%s", reasons[-1])
            precision = "fp32"
        tiles = source = None
        for i in indices:
            m = bundle.card.members[i]

            def build(p: str, i: int = i) -> Any:
                opts = dict(options, precision=p) if kind == "openvino" else dict(options)
                return create(kind, bundle, member=i, device=device, intra_op_threads=intra_op_threads, **opts)

            if precision == "fp32":
                built.append(build("fp32"))
                continue
            if tiles is None:
                tiles, source = gate.verification_tiles(bundle.path)
            try:
                info = openvino_cpu_info()
            except BackendUnavailable:
                info = {"openvino": "", "cpu": None}
            recorded = [_as_dict(e) for e in getattr(bundle.card, "engines", ())]
            backend, reason, _ = gate.choose_precision(
                build, precision, member=m.file, tiles=tiles, tiles_source=source, recorded=recorded,
                cpu=info["cpu"], runtime_version=info["openvino"], kind=kind, unavailable=PrecisionUnavailable)
            built.append(backend)
            reasons.append(f"{m.file}: {reason}")
    except BaseException:
        for b in built:
            b.close()
        raise
    if not reasons:
        reasons.append(f"backend {kind} ({built[0].precision if built else 'fp32'}, configured)")
    return built, "; ".join(reasons)


def _as_dict(engine: Any) -> dict[str, Any]:
    return dataclasses.asdict(engine) if dataclasses.is_dataclass(engine) else dict(engine)
