"""Build the small default bundle that ``fringelive serve`` and ``fringelive demo`` use when no
bundle is named, with the ordinary commands, so anyone can reproduce it:

    fringelive synth --engine fast ... --out train            (32 fast frames, 300–700 e/Å²)
    fringelive synth --engine fast ... --out heldout          (6 held-out fast frames at 423 e/Å²)
    fringelive train --data train --benchmark heldout_423e=heldout ... --out run
    fringelive synth --engine abtem ... --out abtem-train     (72 multislice frames, 300–700 e/Å²)
    fringelive synth --engine abtem ... --out abtem-heldout   (12 held-out multislice frames, 423 e/Å²)
    fringelive finetune --from run/bundle --data train abtem-train ... --out finetune
    fringelive synth --engine fast ... --out calib            (120 fast frames, 300–700 e/Å²)
    fringelive calibrate --bundle finetune/bundle calib abtem-train abtem-heldout

then, stage 2 (issue #11: right on realistic frames), fine-tune that bundle on the curated
multislice database (``synth --preset curated``: conditions and structures drawn from the ranges
microscopes produce, bare-support frames included; docs/training.md):

    fringelive synth --preset curated --count 300 --seed 1000 --out cur_0
    fringelive synth --preset curated --count 143 --seed 1001 --out cur_1p
    fringelive synth --engine abtem ... --out eval_accept_au   (held out: full multislice, unseen camera)
    fringelive synth --engine abtem ... --out eval_bare        (held out: bare carbon, unseen camera)
    fringelive synth --preset curated ... --out eval_bands      (held out: pixel-size/dose bands, Au/Ag/Pt)
    fringelive finetune --from finetune/bundle --data cur_0 cur_1p --benchmark ... --out ft1
    fringelive calibrate --bundle ft1/bundle eval_bands eval_bare eval_accept_au

then, stage 3, that bundle fine-tuned further on the grown database (1,200 curated frames; the
third set draws the served envelope's doses and materials), with per-condition benchmarks, and
its threshold chosen on a separate labelled set before the drift reference is measured:

    fringelive synth --preset curated --count 300 --seed 1001 --out cur_1       (cur_1p is its first 143)
    fringelive synth --preset curated --count 300 --seed 1002 --dose 100 2500 --material Au Ag Pt --out cur_2
    fringelive synth --preset curated --count 300 --seed 1003 --out cur_3
    fringelive synth --preset curated --count 60 --seed 1100 --out cur_val     (threshold choice only)
    fringelive finetune --from ft1/bundle --data cur_0 cur_1 cur_2 cur_3 --benchmark ... --benchmark-by ... --out ft3
    fringelive calibrate --bundle ft3/bundle eval_bands eval_bare eval_accept_au --choose-threshold cur_val

then stages 4–6 (docs/training.md): carbon the model never saw, then fully random carbon (no
support reuse), then wider camera ranges, each a short fine-tune of the one before:

    fringelive synth --preset curated --seed 2000 ... --count 1600 --out cur_p4     (fresh carbon slabs)
    fringelive finetune --from ft3/bundle --data cur_p4 cur_2 ... --out ft4
    fringelive synth --engine abtem ... --count 480 --seed 3000 --out rnd5          (random carbon)
    fringelive finetune --from ft4/bundle --data rnd5 cur_p9 ... --out ft5
    fringelive synth --engine abtem ... --count 400 --seed 3001 --out rnd6          (+ wider cameras)
    fringelive finetune --from ft5/bundle --data rnd6 rnd5 ... --out ft6
    fringelive calibrate --bundle ft6/bundle eval_bands eval_bare eval_accept_au --choose-threshold cur_val4 ...

then stage 8: the preprocessing gains a 1 px Gaussian low-pass (card ``lowpass_sigma_px``) and
the model is fine-tuned to it on the three random-carbon sets, the weak bands' frames included:

    fringelive synth --engine abtem ... --dose 150 700 --count 500 --seed 3002 --out rnd7
    fringelive finetune --from ft6/bundle --data rnd6 rnd5 rnd7 --lowpass-sigma 1 ... --out ft8
    fringelive calibrate --bundle ft8/bundle eval_bands eval_bare eval_accept_au --choose-threshold cur_val4 ...

and last the confident core a particle must hold, chosen on choice sets through cameras no other
set used (``core_commands``):

    fringelive synth ... --out cur_valenv / cur_valcamA / cur_valcamB / cur_valaccA / cur_valaccB
    fringelive calibrate --bundle ft8/bundle eval_bands eval_bare eval_accept_au --choose-particle-core cur_valenv ...

then, on the same choice sets, the share of a component its sure core must cover, everywhere and
at the frame edge (``core_share_commands``):

    fringelive calibrate --bundle ft8/bundle eval_bands eval_bare eval_accept_au --choose-particle-core-fraction cur_valenv ... --choose-particle-edge-core-fraction cur_valenv ...

in a working directory, and copy ``ft8/bundle`` to ``--out`` with verification tiles (the
precision parity gate's network inputs) preprocessed from the first two ``eval_accept_au``
frames as its card says (the shipped run started from ``ft6/bundle.pre``: the same weights,
before ``calibrate``):
    python -m fringelive.training.build_default_bundle --out default_bundle [--work DIR]

The network is the published residual UNet (``resunet-seed``), first trained on fast synthetic
frames (``fringelive.training.fastsim``: many frames, cheap) and then fine-tuned on those plus
abTEM multislice simulations (``fringelive.training.multislice``: the physics, expensive) of Au
particles, 3–8 nm, at 0.02 nm/pixel — the papers' recipe of a large cheap set plus a little
closer-to-reality data. The card records every command (``provenance.command`` for
``finetune``; the ``synth`` commands in ``metrics.training.data[].command`` and
``metrics.benchmarks.*.command``) and the held-out Dice on whole frames at 0.02 nm/pixel and
423 e/Å² for both engines (``metrics.benchmarks.heldout_423e`` and
``heldout_abtem_423e``, ``.whole_sample``). The drift reference (``drift_reference``: CUSUM
threshold, dose calibration) is measured by ``calibrate`` on 204 in-distribution frames of both
engines (a fine-tuning run alone would have only its few validation frames). Stage 1 takes about
an hour on 2 CPU cores (most of it abTEM); the curated stages 2–8 several hours more (synth at
~1,300–1,800 samples/h, fine-tunes at 10–25 min per epoch).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from fringelive.bundle.card import Card
from fringelive.engine.precision import VERIFICATION_FILE
from fringelive.engine.preprocess import preprocess
from fringelive.training.default_bundle_commands import all_commands
from fringelive.training.samples import load_sampleset

log = logging.getLogger(__name__)


def build(out: Path, work: Path, **kwargs: object) -> Path:
    """Run the commands in ``work`` and copy the bundle to ``out`` (replacing it)."""
    out = out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(work)  # relative paths, so the card's commands read the same anywhere
    try:
        for argv in all_commands(**kwargs):
            log.info("fringelive %s", shlex.join(argv))
            # the commands run as `python -m fringelive.cli` (training sits below the CLI layer)
            rc = subprocess.run([sys.executable, "-m", "fringelive.cli", *argv], check=False).returncode
            if rc != 0:
                raise SystemExit(f"fringelive {argv[0]} failed with exit code {rc}")
    finally:
        os.chdir(cwd)
    src = work / "ft8" / "bundle"
    staged = out.with_name(out.name + ".new")
    if staged.exists():
        shutil.rmtree(staged)
    shutil.copytree(src, staged)
    write_verification_tiles(staged, work / "eval_accept_au")
    if out.exists():
        old = out.with_name(out.name + ".old")
        os.replace(out, old)
        os.replace(staged, out)
        shutil.rmtree(old)
    else:
        os.replace(staged, out)
    return out


def write_verification_tiles(bundle_dir: Path, samples: Path, n: int = 2) -> Path:
    """``bundle_dir/verification_tiles.npy``: the first ``n`` frames of the sample set ``samples``
    preprocessed as the bundle's card says, (n, 1, H, W) float16 (the precision parity gate's
    network inputs, ``fringelive.engine.precision``)."""
    card = Card.from_json((bundle_dir / "card.json").read_text())
    ss = load_sampleset(samples)
    if len(ss) < n:
        raise SystemExit(f"{samples} holds {len(ss)} frames, the verification tiles need {n}")
    tiles = np.stack([np.asarray(preprocess(ss.images[i], card.preprocessing)) for i in range(n)])
    path = bundle_dir / VERIFICATION_FILE
    np.save(path, tiles[:, None].astype(np.float16))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="bundle directory to write (replaced)")
    ap.add_argument("--work", type=Path, default=None,
                    help="working directory for the sample sets and the run (default: a temporary one, removed)")
    ap.add_argument("--train-frames", type=int, default=32, help="simulated training frames (count)")
    ap.add_argument("--heldout-frames", type=int, default=6, help="held-out test frames (count)")
    ap.add_argument("--frame-px", type=int, default=1024, help="simulated frame side (px)")
    ap.add_argument("--patch", type=int, default=256, help="training patch side (px)")
    ap.add_argument("--epochs", type=int, default=6, help="training epochs")
    ap.add_argument("--batch-size", type=int, default=8, help="patches per optimiser step (count)")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate (cosine decay to 1e-5)")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    ap.add_argument("--abtem-frames", type=int, default=72, help="abTEM training frames (count)")
    ap.add_argument("--abtem-heldout-frames", type=int, default=12, help="abTEM held-out frames (count)")
    ap.add_argument("--abtem-px", type=int, default=512, help="abTEM frame side (px)")
    ap.add_argument("--finetune-epochs", type=int, default=6, help="fine-tuning epochs")
    ap.add_argument("--finetune-lr", type=float, default=3e-4, help="peak fine-tuning learning rate (cosine to 1e-5)")
    ap.add_argument("--calib-frames", type=int, default=120, help="fast frames for the drift reference (count)")
    ap.add_argument("--print-commands", action="store_true", help="print the fringelive commands and exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kwargs = dict(train_frames=args.train_frames, heldout_frames=args.heldout_frames, frame_px=args.frame_px,
                  patch=args.patch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  abtem_frames=args.abtem_frames, abtem_heldout_frames=args.abtem_heldout_frames,
                  abtem_px=args.abtem_px, finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
                  calib_frames=args.calib_frames)
    if args.print_commands:
        for c in all_commands(**kwargs):
            print("fringelive " + shlex.join(c))
        return 0
    if args.work is not None:
        build(args.out, args.work, **kwargs)
    else:
        with tempfile.TemporaryDirectory(prefix="fringelive-default-bundle-") as tmp:
            build(args.out, Path(tmp), **kwargs)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
