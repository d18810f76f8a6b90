"""Precision gate: a non-FP32 backend is used only when it agrees with FP32 on the bundle's own
verification tiles.

Criteria (issue #14), per ensemble member, over every pixel of every verification tile:

* argmax agreement (fraction of pixels whose predicted class equals FP32's) >= 0.999;
* Dice between the class-1 masks (probability > threshold, as the pipeline thresholds) >= 0.995
  (two empty masks count as Dice 1).

The max abs logit difference is reported too but does not gate (BF16 logits of O(10) differ by
O(0.1) while masks agree).

Verification tiles: ``<bundle>/verification_tiles.npy`` ((N, 1, h, w), float16 or float32,
preprocessed as the card says; the default bundle's are two held-out simulated frames, written by
``fringelive.training.build_default_bundle.write_verification_tiles``),
else :func:`synthetic_tiles` (deterministic fringe discs on an amorphous background; the record
says which were used).

:func:`choose_precision` is the daemon's policy: requested FP32 → FP32; otherwise a card record for
this kind, precision, member, CPU and runtime version decides; without one the check runs at
start-up (a few tile batches). Every fall back to FP32 comes with a reason string for the log.

Pure apart from reading the tiles file and ``/proc/cpuinfo``; no sockets, no threads.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "MIN_ARGMAX_AGREEMENT", "MIN_DICE", "VERIFICATION_FILE", "ParityResult", "class1_masks", "argmax_agreement",
    "dice", "compare_logits", "check_parity", "synthetic_tiles", "verification_tiles", "cpu_model",
    "engine_record", "find_record", "choose_precision",
]

log = logging.getLogger(__name__)

MIN_ARGMAX_AGREEMENT = 0.999
MIN_DICE = 0.995
VERIFICATION_FILE = "verification_tiles.npy"


@dataclass(frozen=True)
class ParityResult:
    """Candidate vs FP32 on ``tiles`` tiles of ``pixels`` pixels in all."""

    tiles: int
    pixels: int
    argmax_agreement: float
    dice: float
    max_abs_diff: float
    min_argmax_agreement: float = MIN_ARGMAX_AGREEMENT
    min_dice: float = MIN_DICE

    @property
    def passed(self) -> bool:
        return self.argmax_agreement >= self.min_argmax_agreement and self.dice >= self.min_dice

    def summary(self) -> str:
        return (f"argmax agreement {self.argmax_agreement:.5%} (min {self.min_argmax_agreement:.1%}), "
                f"Dice {self.dice:.5f} (min {self.min_dice}), max abs logit diff {self.max_abs_diff:.3g} "
                f"on {self.tiles} tile(s), {self.pixels} px")


# --- numbers ------------------------------------------------------------------------------------


def class1_masks(logits: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(N, C, h, w) logits → (N, h, w) bool: softmax class-1 probability > ``threshold`` (for two
    classes: sigmoid(l1 - l0), as the pipeline computes it)."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 4 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (N, C>=2, h, w), got {logits.shape}")
    if logits.shape[1] == 2:
        return (logits[:, 1] - logits[:, 0]) > np.float32(np.log(threshold / (1.0 - threshold)))
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e[:, 1] / e.sum(axis=1)) > threshold


def argmax_agreement(ref: np.ndarray, got: np.ndarray) -> float:
    """Fraction of pixels whose argmax over classes is the same."""
    if ref.shape != got.shape:
        raise ValueError(f"logit shapes differ: {ref.shape} vs {got.shape}")
    return float(np.mean(ref.argmax(1) == got.argmax(1)))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def compare_logits(ref: np.ndarray, got: np.ndarray, *, threshold: float = 0.5,
                   min_argmax_agreement: float = MIN_ARGMAX_AGREEMENT, min_dice: float = MIN_DICE) -> ParityResult:
    """The parity numbers of candidate logits ``got`` against FP32 logits ``ref``."""
    ref = np.asarray(ref, np.float32)
    got = np.asarray(got, np.float32)
    if not np.all(np.isfinite(got)):
        return ParityResult(ref.shape[0], ref.shape[0] * ref.shape[2] * ref.shape[3], 0.0, 0.0, float("inf"),
                            min_argmax_agreement, min_dice)
    return ParityResult(
        tiles=int(ref.shape[0]), pixels=int(ref.shape[0] * ref.shape[2] * ref.shape[3]),
        argmax_agreement=argmax_agreement(ref, got),
        dice=dice(class1_masks(ref, threshold), class1_masks(got, threshold)),
        max_abs_diff=float(np.max(np.abs(got - ref))),
        min_argmax_agreement=min_argmax_agreement, min_dice=min_dice)


def check_parity(reference: Callable[[np.ndarray], np.ndarray], candidate: Callable[[np.ndarray], np.ndarray],
                 tiles: np.ndarray, *, batch_size: int = 2, threshold: float = 0.5,
                 min_argmax_agreement: float = MIN_ARGMAX_AGREEMENT, min_dice: float = MIN_DICE) -> ParityResult:
    """Run both callables (backends) on ``tiles`` (N, 1, h, w) float32 in batches of
    ``batch_size`` and compare (:func:`compare_logits`)."""
    tiles = np.ascontiguousarray(tiles, dtype=np.float32)
    if tiles.ndim != 4 or tiles.shape[1] != 1 or tiles.shape[0] < 1:
        raise ValueError(f"tiles must be (N>=1, 1, h, w), got {tiles.shape}")
    refs, gots = [], []
    for s in range(0, tiles.shape[0], max(1, int(batch_size))):
        b = tiles[s:s + batch_size]
        refs.append(np.asarray(reference(b), np.float32))
        gots.append(np.asarray(candidate(b), np.float32))
    return compare_logits(np.concatenate(refs), np.concatenate(gots), threshold=threshold,
                          min_argmax_agreement=min_argmax_agreement, min_dice=min_dice)


# --- tiles --------------------------------------------------------------------------------------


def synthetic_tiles(n: int = 2, side: int = 256, seed: int = 0, period_px: float = 11.8) -> np.ndarray:
    """(n, 1, side, side) float32, standardised: an amorphous background (smoothed noise) with
    discs of 40-120 px carrying lattice fringes of ``period_px`` (Au {111} at 0.02 nm/px), plus
    shot noise. Deterministic for a seed; a fallback when a bundle ships no tiles."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    fy = np.fft.fftfreq(side)[:, None]
    fx = np.fft.fftfreq(side)[None, :]
    smooth = np.exp(-(fy ** 2 + fx ** 2) * (2 * np.pi * 1.5) ** 2 / 2)
    out = np.empty((n, 1, side, side), np.float32)
    for i in range(n):
        bg = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((side, side))) * smooth)).astype(np.float32)
        img = 100.0 + 8.0 * bg / (bg.std() + 1e-6)
        for _ in range(max(2, side * side // 30000)):
            cy, cx, r = rng.uniform(0, side), rng.uniform(0, side), rng.uniform(20, 60)
            theta = rng.uniform(0, np.pi)
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            fringes = np.cos(2 * np.pi * (np.cos(theta) * xx + np.sin(theta) * yy) / period_px)
            img[inside] = 70.0 + 15.0 * fringes[inside]
        img = rng.poisson(np.clip(img, 1, None)).astype(np.float32)
        out[i, 0] = (img - img.mean()) / (img.std() + 1e-6)
    return out


def verification_tiles(bundle_dir: str | Path | None, *, fallback_n: int = 2,
                       fallback_side: int = 256) -> tuple[np.ndarray, str]:
    """The bundle's verification tiles as float32 and a description of where they came from."""
    if bundle_dir is not None:
        path = Path(bundle_dir) / VERIFICATION_FILE
        if path.is_file():
            tiles = np.load(path, allow_pickle=False)
            if tiles.ndim != 4 or tiles.shape[1] != 1:
                raise ValueError(f"{path}: verification tiles must be (N, 1, h, w), got {tiles.shape}")
            return np.ascontiguousarray(tiles, dtype=np.float32), f"bundle:{VERIFICATION_FILE}"
    return synthetic_tiles(fallback_n, fallback_side), f"synthetic:{fallback_n}x{fallback_side}px,seed0"


# --- records ------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def engine_record(*, kind: str, precision: str, member: str, result: ParityResult, versions: Mapping[str, str],
                  cpu: str, tiles: str, isa: Sequence[str] = ()) -> dict[str, Any]:
    """One entry for the card's ``engines`` (the proposed generalised Engine; INTEGRATION.md)."""
    numbers = asdict(result)
    return {"kind": kind, "member": member, "precision": precision, "reference_precision": "fp32",
            "versions": dict(versions), "cpu": cpu, "isa": list(isa), "verification_tiles": tiles,
            "pixels": numbers["pixels"], "argmax_agreement": numbers["argmax_agreement"],
            "min_argmax_agreement": numbers["min_argmax_agreement"], "dice": numbers["dice"],
            "min_dice": numbers["min_dice"], "max_abs_diff_vs_fp32": numbers["max_abs_diff"],
            "passed": result.passed}


def find_record(engines: Iterable[Mapping[str, Any]], *, kind: str, precision: str, member: str, cpu: str,
                runtime_version: str) -> Mapping[str, Any] | None:
    """The last card record for exactly this kind, precision, member, CPU model and runtime."""
    found = None
    for e in engines:
        if (e.get("kind") == kind and e.get("precision") == precision and e.get("member") == member
                and e.get("cpu") == cpu and runtime_version in dict(e.get("versions") or {}).values()):
            found = e
    return found


def _choose(build: Callable[[str], Any], requested: str, *, member: str, tiles: np.ndarray,
                     tiles_source: str, recorded: Iterable[Mapping[str, Any]] = (), cpu: str | None = None,
                     runtime_version: str = "", kind: str = "openvino", unavailable: type[BaseException] | tuple = (),
                     batch_size: int = 2) -> tuple[Any, str, dict[str, Any] | None]:
    """``(backend, reason, record)``: the backend to serve with, why, and the parity record (None
    when no check ran). ``build(precision)`` makes a backend; ``unavailable``: the exception(s)
    it raises for a precision this machine cannot run (they mean: fall back)."""
    cpu = cpu or cpu_model()
    if requested not in ("fp32", "bf16", "fp16", "int8"):
        raise ValueError(f"precision must be fp32, bf16, fp16 or int8, got {requested!r}")
    if requested == "fp32":
        return build("fp32"), f"{kind} fp32 (requested)", None
    try:
        candidate = build(requested)
    except unavailable as e:  # type: ignore[misc]
        reason = getattr(e, "reason", str(e))
        return build("fp32"), f"{kind} {requested} not used, falling back to fp32: {reason}", None
    rec = find_record(recorded, kind=kind, precision=requested, member=member, cpu=cpu, runtime_version=runtime_version)
    if rec is not None:
        numbers = (f"argmax agreement {rec['argmax_agreement']:.5%}, Dice {rec['dice']:.5f}, "
                   f"recorded for {cpu} and {kind} {runtime_version}")
        if rec.get("passed"):
            return candidate, f"{kind} {requested}: the card's parity record passed ({numbers})", dict(rec)
        candidate.close()
        return build("fp32"), f"{kind} {requested} failed parity in the card ({numbers}); falling back to fp32", dict(rec)
    reference = build("fp32")
    try:
        result = check_parity(reference, candidate, tiles, batch_size=batch_size)
    except BaseException:
        candidate.close()
        reference.close()
        raise
    record = engine_record(kind=kind, precision=requested, member=member, result=result,
                           versions={kind: runtime_version}, cpu=cpu, tiles=tiles_source)
    if result.passed:
        reference.close()
        return candidate, f"{kind} {requested}: parity with fp32 passed at start-up ({result.summary()})", record
    candidate.close()
    return reference, f"{kind} {requested} failed parity with fp32 ({result.summary()}); falling back to fp32", record


def choose_precision(build: Callable[[str], Any], requested: str, **kw: Any) -> tuple[Any, str, dict[str, Any] | None]:
    """``(backend, reason, record)``: the backend to serve with, why, and the parity record (None
    when no check ran). ``build(precision)`` makes a backend; keyword ``unavailable``: the
    exception type(s) ``build`` raises for a precision this machine cannot run (they mean: fall
    back). The reason is logged: INFO when the requested precision is used, WARNING on a fall
    back to FP32."""
    backend, reason, record = _choose(build, requested, **kw)
    used = getattr(backend, "precision", None)
    fell_back = requested != "fp32" and "falling back to fp32" in reason
    log.log(logging.WARNING if fell_back else logging.INFO, "%s (member %s, serving %s)", reason,
            kw.get("member"), used or requested)
    return backend, reason, record
