"""CPU preprocessing: the numpy path (what the daemon runs, no torch needed) against the same code
on torch CPU tensors (what a torch install runs for tensors), on a synthetic camera frame.

    python benchmarks/preprocess_numpy_vs_torch.py [--size 4096] [--repeats 5] [--threads 1]

Prints, per path, the best wall time of ``--repeats`` whole ``preprocess`` calls (after one
warm-up) and the process CPU time of that call (on a loaded machine the CPU time is the steadier
number), with the stage split of the best call. ``--threads`` sets torch's intra-op threads.
Tables: ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
import sys

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess_steps import DEFAULT_LOWPASS, synthetic_frame  # noqa: E402

from fringelive.bundle.card import Preprocessing  # noqa: E402
from fringelive.engine import preprocess as P  # noqa: E402

STAGES = ("to_float32", "remove_xrays", "flatfield", "rescale", "lowpass")


def time_path(frame: object, params: Preprocessing, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` wall ms of one ``preprocess`` call, its CPU ms and its stage ms."""
    best: dict[str, float] = {"wall": float("inf")}
    for i in range(repeats + 1):
        laps: dict[str, float] = {}
        c0, t0 = time.process_time(), time.perf_counter()
        P.preprocess(frame, params, timings=laps)
        wall, cpu = (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3
        if i and wall < best["wall"]:
            best = {"wall": wall, "cpu": cpu, **laps}
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=4096, help="frame side (px), default 4096")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per path (count), best is shown")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (count), default 1")
    ap.add_argument("--no-torch", action="store_true", help="time the numpy path only")
    args = ap.parse_args(argv)
    frame = synthetic_frame((args.size, args.size), dtype="uint16")
    params = Preprocessing(lowpass_sigma_px=DEFAULT_LOWPASS)
    rows = {"numpy": time_path(frame, params, args.repeats)}
    if not args.no_torch:
        import torch  # noqa: PLC0415 - optional here

        torch.set_num_threads(args.threads)
        rows[f"torch CPU ({args.threads} thr)"] = time_path(torch.from_numpy(frame.astype(np.int32)), params,
                                                           args.repeats)
    print(f"preprocess {args.size}x{args.size} uint16 (x-rays, flat field, standardize, low-pass {params.lowpass_sigma_px:g} px), best of {args.repeats}")
    print(f"{'path':<20}{'wall ms':>9}{'CPU ms':>9}" + "".join(f"{s:>14}" for s in STAGES))
    for name, r in rows.items():
        print(f"{name:<20}{r['wall']:>9.1f}{r['cpu']:>9.1f}" + "".join(f"{r.get(s, 0.0):>14.1f}" for s in STAGES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
