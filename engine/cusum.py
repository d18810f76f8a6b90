"""CUSUM stream alarm on reference-standardized signals, and its threshold calibration.

Each signal ``x`` is standardized with reference statistics, ``z = (x - centre) / scale``, and
feeds one-sided CUSUMs (Page 1954) in the direction(s) that mean trouble::

    S⁺ₜ = max(0, S⁺ₜ₋₁ + zₜ - k)      ("up":   the signal grows, e.g. entropy)
    S⁻ₜ = max(0, S⁻ₜ₋₁ - zₜ - k)      ("down": the signal falls, e.g. member agreement)

(``both`` keeps the two). The stream is in alarm while any statistic exceeds ``h``. A missing
value (None/NaN: e.g. no fringe peak in this frame) leaves that signal's statistics unchanged.
Statistics are capped at ``cap × h`` so that, once a shift ends, the alarm clears within about
``(cap - 1)·h / k`` in-distribution frames instead of never.

``h`` is calibrated so that the in-distribution average run length to a false alarm (ARL0,
frames) meets a target: :func:`calibrate_threshold` simulates the whole multi-signal CUSUM on
standardized reference frames (``bootstrap``: rows of reference z-vectors drawn with replacement,
which keeps their joint distribution and tails; ``gaussian``: independent N(0, 1)) and reads the
first-passage times of every candidate ``h`` from one set of paths. The centre and scale the
daemon standardizes with are themselves estimated from the n reference frames; a CUSUM is very
sensitive to the small offset that leaves (0.15 sigma for n = 80), so each simulated chain
standardizes with the median and MAD of its own resample of the reference (the estimation
error of a Phase I sample, Jones, Champ & Rigdon 2004), which raises ``h`` for small n. :func:`siegmund_arl` is
Siegmund's approximation for one Gaussian one-sided CUSUM, a cross-check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "DIRECTIONS",
    "CusumChannel",
    "CusumState",
    "CalibrationResult",
    "channels_for",
    "siegmund_arl",
    "siegmund_threshold",
    "simulate_first_passage",
    "arl_from_passage",
    "calibrate_threshold",
]

DIRECTIONS = ("up", "down", "both")


@dataclass(frozen=True)
class CusumChannel:
    """One one-sided CUSUM: ``signal`` and ``sign`` (+1: watches increases, -1: decreases)."""

    signal: str
    sign: int

    @property
    def name(self) -> str:
        return f"{self.signal}:{'up' if self.sign > 0 else 'down'}"


def channels_for(directions: Mapping[str, str]) -> tuple[CusumChannel, ...]:
    """The one-sided channels of signals with directions ``up`` | ``down`` | ``both``."""
    out = []
    for signal, d in directions.items():
        if d not in DIRECTIONS:
            raise ValueError(f"direction of signal {signal!r} must be one of {list(DIRECTIONS)}, got {d!r}")
        if d in ("up", "both"):
            out.append(CusumChannel(signal, +1))
        if d in ("down", "both"):
            out.append(CusumChannel(signal, -1))
    return tuple(out)


class CusumState:
    """The running CUSUM of one stream (the daemon keeps one per bundle; reset on reload).

    directions: ``{signal: "up" | "down" | "both"}``; k: reference value (allowance) in
    standard deviations; h: decision threshold; cap: statistics are kept <= cap·h.
    """

    def __init__(self, directions: Mapping[str, str], k: float, h: float, cap: float = 2.0) -> None:
        if not (isinstance(k, (int, float)) and math.isfinite(k) and k >= 0):
            raise ValueError(f"k must be a number >= 0 (standard deviations), got {k!r}")
        if not (isinstance(h, (int, float)) and math.isfinite(h) and h > 0):
            raise ValueError(f"h must be a number > 0 (standard deviations), got {h!r}")
        if not cap >= 1.0:
            raise ValueError(f"cap must be >= 1, got {cap!r}")
        self.channels = channels_for(directions)
        self.directions = dict(directions)
        self.k, self.h, self.cap = float(k), float(h), float(cap)
        self._s = np.zeros(len(self.channels))
        self.frames = 0

    def reset(self) -> None:
        self._s[:] = 0.0
        self.frames = 0

    def update(self, z: Mapping[str, float | None]) -> dict[str, Any]:
        """Add one frame's standardized signals ``{signal: z}``; return ``{"statistics":
        {signal: S}, "alarm": bool, "alarm_signals": [...]}`` where S is the larger side of the
        signal (S⁺ or S⁻)."""
        self.frames += 1
        for i, ch in enumerate(self.channels):
            v = z.get(ch.signal)
            if v is None or not math.isfinite(v):
                continue
            self._s[i] = min(self.cap * self.h, max(0.0, self._s[i] + ch.sign * float(v) - self.k))
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        stats: dict[str, float] = {}
        for i, ch in enumerate(self.channels):
            stats[ch.signal] = max(stats.get(ch.signal, 0.0), float(self._s[i]))
        alarmed = sorted({ch.signal for i, ch in enumerate(self.channels) if self._s[i] > self.h})
        return {"statistics": stats, "alarm": bool(alarmed), "alarm_signals": alarmed}


# --- calibration ------------------------------------------------------------------------------

def siegmund_arl(k: float, h: float) -> float:
    """Siegmund's approximation of the in-control ARL (frames) of a one-sided CUSUM on N(0, 1)
    increments with allowance ``k`` > 0 and threshold ``h``:
    ``(exp(2kb) - 2kb - 1) / (2k²)`` with ``b = h + 1.166``."""
    if not k > 0:
        raise ValueError(f"k must be > 0 for Siegmund's approximation, got {k!r}")
    b = h + 1.166
    return (math.exp(2 * k * b) - 2 * k * b - 1) / (2 * k * k)


def siegmund_threshold(k: float, target_arl: float, channels: int = 1) -> float:
    """``h`` giving ARL0 ``target_arl`` for ``channels`` independent one-sided Gaussian CUSUMs
    (each then needs ``channels × target_arl``), by bisection on :func:`siegmund_arl`."""
    want = target_arl * max(1, channels)
    lo, hi = 0.0, 1.0
    while siegmund_arl(k, hi) < want:
        hi *= 2.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if siegmund_arl(k, mid) < want else (lo, mid)
    return hi


def simulate_first_passage(draw: Any, signs: np.ndarray, k: float, *, chains: int, steps: int,
                           cap_value: float | None = None, centre: np.ndarray | None = None,
                           scale: np.ndarray | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run ``chains`` independent multi-channel CUSUMs for ``steps`` frames.

    draw(n) -> (n, channels) increments before the sign (NaN = missing); signs: (channels,)
    ±1; centre / scale: optional (chains, channels) per-chain standardization applied to the
    draws, ``(z - centre) / scale``. Returns per chain the *record* times and values of
    ``max_channel S`` (its running maximum's jumps): the first passage over any ``h`` is the
    first record time with value > h.
    """
    m = len(signs)
    s = np.zeros((chains, m))
    best = np.zeros(chains)
    times: list[list[int]] = [[] for _ in range(chains)]
    values: list[list[float]] = [[] for _ in range(chains)]
    for t in range(1, steps + 1):
        z = draw(chains)
        if centre is not None:
            z = (z - centre) / scale
        z *= signs
        np.subtract(z, k, out=z)
        missing = np.isnan(z)
        z[missing] = 0.0
        upd = s + z
        np.maximum(upd, 0.0, out=upd)
        s = np.where(missing, s, upd)
        if cap_value is not None:
            np.minimum(s, cap_value, out=s)
        top = s.max(axis=1)
        rec = np.nonzero(top > best)[0]
        for c in rec:
            times[c].append(t)
            values[c].append(float(top[c]))
        best = np.maximum(best, top)
    return [np.asarray(v, dtype=np.int64) for v in times], [np.asarray(v) for v in values]


def arl_from_passage(times: Sequence[np.ndarray], values: Sequence[np.ndarray], h: float, steps: int) -> float:
    """ARL0 (frames) at threshold ``h`` from simulated record paths, treating run lengths as
    exponential with censoring at ``steps``: total frames at risk / alarms (inf with none)."""
    exposure = 0.0
    alarms = 0
    for t, v in zip(times, values):
        idx = np.nonzero(v > h)[0]
        if idx.size:
            exposure += float(t[idx[0]])
            alarms += 1
        else:
            exposure += float(steps)
    return exposure / alarms if alarms else math.inf


@dataclass(frozen=True)
class CalibrationResult:
    """``h`` for ``target_arl``; ``arl`` the simulated ARL0 at ``h`` (frames); ``method``
    ``bootstrap`` | ``gaussian``; ``chains`` × ``steps`` frames simulated; ``alarms``: first
    passages seen at ``h``; ``h_siegmund``: the Gaussian approximation for comparison."""

    k: float
    h: float
    target_arl: float
    arl: float
    method: str
    chains: int
    steps: int
    alarms: int
    h_siegmund: float | None = None
    channels: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "h": round(self.h, 4), "target_arl": self.target_arl,
                "arl_simulated": None if not math.isfinite(self.arl) else round(self.arl, 1),
                "method": self.method, "chains": self.chains, "steps": self.steps, "alarms": self.alarms,
                "h_siegmund": None if self.h_siegmund is None else round(self.h_siegmund, 4),
                "channels": list(self.channels)}


def _resampled_centre_scale(sample: np.ndarray, floors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per chain and column: median and 1.4826·MAD (at least ``floors``) of ``sample``
    (chains, n, columns), NaN ignored."""
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            c = np.nanmedian(sample, axis=1)
            s = 1.4826 * np.nanmedian(np.abs(sample - c[:, None, :]), axis=1)
    c = np.nan_to_num(c, nan=0.0)
    s = np.maximum(np.nan_to_num(s, nan=1.0), floors[None, :])
    return c, s


def calibrate_threshold(z: np.ndarray, directions: Sequence[str], *, k: float = 0.5, target_arl: float = 10_000,
                        method: str = "bootstrap", chains: int | None = None, steps: int | None = None,
                        cap: float = 2.0, seed: int = 0, estimation_error: bool = True,
                        scale_floors: Sequence[float] | None = None) -> CalibrationResult:
    """Smallest ``h`` whose simulated ARL0 reaches ``target_arl`` frames.

    z: (n_frames, n_signals) standardized reference values (NaN = missing); directions: per
    column ``up`` | ``down`` | ``both``. ``chains``/``steps`` default to about 40·target_arl
    simulated frames (≥ ~40 alarms at the chosen h) in 4·target_arl/10 steps per chain.
    estimation_error: each chain standardizes with the robust centre/scale of its own
    resample of the n reference frames (see the module docstring); scale_floors: per column,
    the smallest scale in z units (the signal's floor / its reference scale; default 0).
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 2 or z.shape[1] != len(directions) or z.shape[1] == 0:
        raise ValueError(f"z must be (n_frames >= 2, {len(directions)}) standardized values, got shape {z.shape}")
    if not target_arl >= 10:
        raise ValueError(f"target_arl must be >= 10 frames, got {target_arl!r}")
    if method not in ("bootstrap", "gaussian"):
        raise ValueError(f"method must be 'bootstrap' or 'gaussian', got {method!r}")
    cols: list[int] = []
    signs: list[int] = []
    names: list[str] = []
    for j, d in enumerate(directions):
        for ch in channels_for({str(j): d}):
            cols.append(j)
            signs.append(ch.sign)
            names.append(f"{j}:{'up' if ch.sign > 0 else 'down'}")
    col_idx = np.asarray(cols)
    sign_arr = np.asarray(signs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    steps = int(steps or max(200, min(20_000, int(0.4 * target_arl))))
    chains = int(chains or max(200, min(4000, int(40 * target_arl / steps))))
    n = z.shape[0]
    missing_rate = np.isnan(z).mean(axis=0)

    if method == "bootstrap":
        def draw(c: int) -> np.ndarray:
            return z[rng.integers(0, n, c)][:, col_idx]
    else:
        def draw(c: int) -> np.ndarray:
            out = rng.standard_normal((c, z.shape[1]))
            out[rng.random((c, z.shape[1])) < missing_rate] = np.nan
            return out[:, col_idx]

    centre = scale = None
    if estimation_error:
        floors = np.zeros(z.shape[1]) if scale_floors is None else np.asarray(scale_floors, dtype=np.float64)
        cs, ss = [], []
        for start in range(0, chains, 256):  # (chunk, n, columns) at a time
            c = min(256, chains - start)
            if method == "bootstrap":
                sample = z[rng.integers(0, n, (c, n))]
            else:
                sample = rng.standard_normal((c, n, z.shape[1]))
                sample[rng.random(sample.shape) < missing_rate] = np.nan
            a, b = _resampled_centre_scale(sample, floors)
            cs.append(a)
            ss.append(b)
        centre, scale = np.concatenate(cs)[:, col_idx], np.concatenate(ss)[:, col_idx]
    # The first passage does not depend on the daemon's cap (cap·h > h): simulate uncapped.
    times, values = simulate_first_passage(draw, sign_arr, k, chains=chains, steps=steps, centre=centre, scale=scale)
    candidates = np.unique(np.concatenate([v for v in values if v.size] or [np.zeros(1)]))
    lo, hi = 0, len(candidates) - 1
    if arl_from_passage(times, values, float(candidates[hi]), steps) < target_arl:
        h = float(candidates[hi]) * 1.05 + 1e-6  # no alarm this far out: beyond every path seen
    else:
        while lo < hi:  # smallest candidate whose ARL reaches the target
            mid = (lo + hi) // 2
            if arl_from_passage(times, values, float(candidates[mid]), steps) >= target_arl:
                hi = mid
            else:
                lo = mid + 1
        h = float(candidates[lo])
    arl = arl_from_passage(times, values, h, steps)
    alarms = sum(1 for v in values if np.any(v > h))
    h_sieg = siegmund_threshold(k, target_arl, len(cols)) if k > 0 else None
    return CalibrationResult(k=float(k), h=h, target_arl=float(target_arl), arl=arl, method=method, chains=chains,
                             steps=steps, alarms=alarms, h_siegmund=h_sieg, channels=tuple(names))
