"""Time each preprocessing step (``fringelive.engine.preprocess``) on a synthetic camera frame.

    python benchmarks/preprocess_steps.py [--size 4096] [--dtype uint16] [--device cpu] [--repeats 5]

Prints milliseconds per stage as the pipeline runs it (best of ``--repeats`` after one warm-up),
each stage's share of the whole ``preprocess`` call, the plain numpy/scipy oracle's time for the
same stage and the oracle/engine ratio, and the total against the 500 ms budget of a 4096² frame
on CPU. ``--threads`` sets torch's intra-op threads (compare 1 and 2 on a busy machine).

Importable as a plain module from this folder (``from preprocess_steps import
time_preprocess_steps, synthetic_frame``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fringelive import default_bundle
from fringelive.engine import preprocess as P
from fringelive.bundle.card import Card, Preprocessing

__all__ = ["STEPS", "synthetic_frame", "time_preprocess_steps", "main"]

STEPS = ("to_float32", "remove_xrays", "flatfield", "rescale", "lowpass", "total")
"""Keys of :func:`time_preprocess_steps`'s result; ``total`` is one whole ``preprocess`` call."""

BUDGET_MS_4096_CPU = 500.0
DEFAULT_LOWPASS = Card.from_json((default_bundle.directory() / "card.json").read_text()).preprocessing.lowpass_sigma_px
"""``lowpass_sigma_px`` of the default bundle (its ``card.json``)."""


def synthetic_frame(shape: tuple[int, int] = (4096, 4096), *, counts: float = 1000.0, gradient: float = 0.3,
                    xrays: int = 200, dtype: str = "uint16", seed: int = 0) -> np.ndarray:
    """A camera-like (H, W) frame: Poisson counts (mean ``counts``) under a bilinear×quadratic
    illumination of ±``gradient``, plus ``xrays`` single-pixel hits of 3000–20000 extra counts."""
    rng = np.random.default_rng(seed)
    h, w = shape
    u = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None]
    v = ((np.arange(w, dtype=np.float32) + 0.5) / w)[None, :]
    illum = (1 + gradient * (2 * u - 1)) * (1 + gradient * ((2 * v - 1) ** 2 - 0.5))
    frame = rng.poisson(counts * illum).astype(np.float64)
    r, c = rng.integers(0, h, xrays), rng.integers(0, w, xrays)
    frame[r, c] += rng.uniform(3000, 20000, xrays)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        frame = np.clip(frame, info.min, info.max)
    return frame.astype(dtype)


def time_preprocess_steps(frame: np.ndarray, params: Preprocessing, device: str | torch.device = "cpu",
                          repeats: int = 5) -> dict[str, float]:
    """Milliseconds per stage of ``preprocess(frame, params, device)``: the best of ``repeats``
    calls after one warm-up, per key. Keys :data:`STEPS`; the stages are timed inside the real
    pipeline (``preprocess(timings=...)``: in place, as the daemon runs it), ``total`` around
    the whole call; a stage the card switches off reads 0.0."""
    dev = torch.device(device)
    best = {k: float("inf") for k in STEPS}
    for i in range(max(1, repeats) + 1):
        laps: dict[str, float] = {}
        t0 = time.perf_counter()
        P.preprocess(frame, params, dev, timings=laps)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        laps["total"] = (time.perf_counter() - t0) * 1e3
        if i:  # the first call is the warm-up
            best = {k: min(best[k], laps[k]) for k in STEPS}
    return best


def time_oracle_steps(frame: np.ndarray, params: Preprocessing) -> dict[str, float]:
    """Milliseconds per step of the numpy/scipy oracle (``tests/oracle_preprocess.py``), one run."""
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import oracle_preprocess as O  # noqa: PLC0415 - lives in tests/

    def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
        t0 = time.perf_counter()
        out = fn()
        return (time.perf_counter() - t0) * 1e3, out

    times: dict[str, float] = {}
    times["to_float32"], x = timed(lambda: np.asarray(frame, dtype=np.float64))
    times["remove_xrays"], x = timed(lambda: O.remove_xrays(x, params.xray_threshold_counts, params.xray_passes)) \
        if params.xray_removal else (0.0, x)
    times["flatfield"], x = timed(lambda: O.flatfield_correct(
        x, tuple(params.flatfield_degree), params.flatfield_downsample, params.flatfield_iterations,
        params.flatfield_weight_scale)) if params.flatfield else (0.0, x)
    times["rescale"], x = timed(lambda: O.rescale(x, params.rescale, tuple(params.histogram_percentiles)))
    times["lowpass"], x = timed(lambda: O.lowpass(x, params.lowpass_sigma_px)) \
        if params.lowpass_sigma_px > 0 else (0.0, x)
    times["total"] = sum(times.values())
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=4096, help="frame side (px), default 4096")
    ap.add_argument("--dtype", default="uint16", help="frame dtype (numpy name), default uint16")
    ap.add_argument("--device", default="cpu", help="torch device, default cpu")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per step (count), best is shown")
    ap.add_argument("--rescale", default="standardize", help="rescale mode: standardize|normalize|histogram")
    ap.add_argument("--lowpass-sigma", type=float, default=DEFAULT_LOWPASS, metavar="PX",
                    help=f"card lowpass_sigma_px (px), default the default bundle's ({DEFAULT_LOWPASS:g})")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (count), default torch's")
    ap.add_argument("--no-oracle", action="store_true", help="skip timing the numpy/scipy oracle")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    frame = synthetic_frame((args.size, args.size), dtype=args.dtype)
    params = Preprocessing(rescale=args.rescale, lowpass_sigma_px=args.lowpass_sigma)
    eng = time_preprocess_steps(frame, params, args.device, args.repeats)
    ora = None if args.no_oracle else time_oracle_steps(frame, params)
    print(f"preprocess {args.size}x{args.size} {args.dtype} on {args.device} "
          f"({torch.get_num_threads()} threads, torch {torch.__version__}), best of {args.repeats}")
    head = f"{'step':<14}{'engine ms':>11}{'share':>8}"
    if ora:
        head += f"{'oracle ms':>11}{'oracle/engine':>15}"
    print(head)
    for k in STEPS:
        row = f"{k:<14}{eng[k]:>11.1f}{eng[k] / eng['total']:>8.2f}"
        if ora:
            ratio = f"{ora[k] / eng[k]:.1f}x" if eng[k] > 0 else "-"
            row += f"{ora[k]:>11.1f}{ratio:>15}"
        print(row)
    if args.size == 4096 and torch.device(args.device).type == "cpu":
        print(f"total / budget ({BUDGET_MS_4096_CPU:.0f} ms): {eng['total'] / BUDGET_MS_4096_CPU:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
