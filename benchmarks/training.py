"""Training-side throughput: simulated samples per hour (``synth`` engines abtem and fast) and
training patches per second (the published recipe, augmentation included) on this machine.

    .venv/bin/python benchmarks/training.py --quick        # ~3 min on 2 cores
    .venv/bin/python benchmarks/training.py                # published sizes (512² abTEM, 512² patches)

Prints two tables with ratios: engines relative to the fast engine at the same frame size, and
training set-ups relative to 512² patches on the first device. CUDA rows appear when
``torch.cuda.is_available()`` (float16 autocast, as ``fringelive train`` uses there).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def synth_rate(cfg, count: int, workers: int) -> tuple[float, float]:
    """(samples per hour, seconds) of synthesizing ``count`` samples."""
    from fringelive.training.synth import synthesize

    with tempfile.TemporaryDirectory(prefix="fl-bench-synth-") as tmp:
        t0 = time.perf_counter()
        synthesize(replace(cfg, count=count), Path(tmp) / "s", workers=workers, progress=False)
        dt = time.perf_counter() - t0
    return 3600.0 * count / dt, dt


def train_rate(patch: int, batch: int, steps: int, device: str, threads: int | None) -> tuple[float, float]:
    """(patches per second, megapixels per second) of training steps (augmentation included)."""
    import torch

    from fringelive.engine.models import build_model
    from fringelive.training.trainer import TrainConfig, train_model

    if threads:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    n = batch * (steps + 1)
    x = rng.standard_normal((n, patch, patch)).astype(np.float32)
    y = (rng.random((n, patch, patch)) > 0.8).astype(np.uint8)
    torch.manual_seed(0)
    model = build_model("resunet-seed")
    # one warm-up step, then the measured ones (train_model times the training loop only)
    train_model(model, (x[:batch], y[:batch]), (x[:0], y[:0]),
                TrainConfig(epochs=1, batch_size=batch, device=device, max_steps=1))
    res = train_model(model, (x, y), (x[:0], y[:0]),
                      TrainConfig(epochs=1, batch_size=batch, device=device, max_steps=steps))
    return res.patches_per_second, res.patches_per_second * patch * patch / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller frames and fewer steps (~3 min on 2 cores)")
    ap.add_argument("--abtem-count", type=int, default=None, help="abTEM samples to simulate (count)")
    ap.add_argument("--fast-count", type=int, default=None, help="fast-engine samples to simulate (count)")
    ap.add_argument("--workers", type=int, default=1, help="synth worker processes (count, default: 1)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per set-up (count)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--no-abtem", action="store_true", help="skip the abTEM engine")
    ap.add_argument("--curated-count", type=int, default=None,
                    help="samples of `synth --preset curated` to simulate (count; default 4, --quick 2; 0 skips)")
    args = ap.parse_args(argv)

    from fringelive.training.synth_config import PRESETS, SynthConfig, config_from_dict

    size = 256 if args.quick else 512
    abtem_n = args.abtem_count or (2 if args.quick else 4)
    fast_n = args.fast_count or (20 if args.quick else 100)
    steps = args.steps or (3 if args.quick else 8)

    print(f"# synth: {size}² px frames at 0.02 nm/pixel, 5 nm Au, 300 kV; workers={args.workers}")
    rows = []
    fast = SynthConfig(engine="fast", size_px=size, diameter_nm=(3.0, 8.0))
    rate, dt = synth_rate(fast, fast_n, args.workers)
    rows.append(("fast", size, fast_n, dt, rate))
    fast1k = replace(fast, size_px=1024)
    r1k, dt1k = synth_rate(fast1k, max(fast_n // 4, 2), args.workers)
    rows.append(("fast", 1024, max(fast_n // 4, 2), dt1k, r1k))
    if not args.no_abtem:
        try:
            import abtem  # noqa: F401
        except ImportError:
            print("# abtem: not installed (pip install 'fringelive[sim]'); skipped")
        else:
            ab = SynthConfig(engine="abtem", size_px=size, carbon_thickness_nm=(3.0, 3.0))
            synth_rate(replace(ab, size_px=32, pixel_size_nm=(0.1, 0.1), diameter_nm=(1.0, 1.0)), 1, 1)  # JIT warm-up
            ra, dta = synth_rate(ab, abtem_n, args.workers)
            rows.append(("abtem (0.1 Å, 2 Å slices, 3 nm C)", size, abtem_n, dta, ra))
            cur_n = args.curated_count if args.curated_count is not None else (2 if args.quick else 4)
            if cur_n:
                # the default bundle's database: every condition drawn per sample, its approximations
                # (band-limited sampling, shared particle pass, support reuse); always 512² frames
                cur = config_from_dict(PRESETS["curated"])
                rc, dtc = synth_rate(cur, cur_n, args.workers)
                rows.append(("abtem --preset curated", cur.size_px, cur_n, dtc, rc))
    print(f"{'engine':38s} {'frame px':>8s} {'samples':>7s} {'seconds':>8s} {'samples/h':>10s} {'vs fast':>9s}")
    for name, px, n, dt, r in rows:
        ref = rows[0][4] if px == size else rows[1][4] if px == 1024 else float("nan")
        print(f"{name:38s} {px:>8d} {n:>7d} {dt:>8.1f} {r:>10.0f} {r / ref:>8.3g}×")

    import torch

    print(f"\n# training: resunet-seed, published recipe (cross-entropy, Adam, dihedral + rotation), "
          f"{steps} steps after 1 warm-up; torch threads={torch.get_num_threads() if not args.threads else args.threads}")
    setups = [(512, 4), (256, 16)] if not args.quick else [(256, 4), (128, 16)]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    trows = []
    for dev in devices:
        for patch, batch in (setups if dev == "cpu" else [(512, 32), (256, 32)]):
            pps, mpx = train_rate(patch, batch, steps, dev, args.threads)
            trows.append((dev, patch, batch, pps, mpx))
    ref = trows[0][4]
    print(f"{'device':6s} {'patch px':>8s} {'batch':>5s} {'patches/s':>10s} {'Mpx/s':>7s} {'px-rate vs first':>17s}"
          f" {'512² patches/h':>15s}")
    for dev, patch, batch, pps, mpx in trows:
        per_hour_512 = mpx * 1e6 / (512 * 512) * 3600
        print(f"{dev:6s} {patch:>8d} {batch:>5d} {pps:>10.2f} {mpx:>7.3f} {mpx / ref:>16.2f}× {per_hour_512:>15.0f}")
    best = max(r[4] for r in trows if r[0] == "cpu")
    if math.isfinite(best) and best > 0:
        print(f"\nOne epoch over 1000 patches of 512² costs about {1000 * 512 * 512 / (best * 1e6) / 60:.0f} min of "
              f"training on this CPU (per fold; the published recipe runs 5 folds).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
