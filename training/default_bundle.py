"""Build the small default bundle that `fringelive serve` and `fringelive demo` use when no bundle
is named: the reference residual UNet trained on fast synthetic frames (``fastsim``) at
0.02 nm/pixel and 300–700 e/Å², evaluated on a held-out synthetic set at 0.02 nm/pixel and
423 e/Å².

    python -m fringelive.training.default_bundle --out daemon/default_bundle

The card records the exact command line, the recipe and the held-out Dice. Frames are
preprocessed with the daemon's own engine (``fringelive.daemon.preprocess``) before patching, so
training and serving see identical inputs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fringelive.daemon.preprocess import preprocess
from fringelive.export.card import Envelope, Preprocessing, Range
from fringelive.export.onnx_export import export_bundle

from .fastsim import FastSimConfig, simulate_frame
from .metrics import dice_from_masks
from .models import build_model
from .trainer import TrainConfig, train_model

log = logging.getLogger(__name__)

PIXEL_SIZE_NM = 0.02
DOSE_RANGE = (300.0, 700.0)
EVAL_DOSE = 423.0


def _frames(n: int, frame_px: int, rng: np.random.Generator, dose: float | None, params: Preprocessing):
    """n preprocessed frames (n, H, W) float32 and masks (n, H, W) uint8."""
    xs, ys = [], []
    for _ in range(n):
        d = dose if dose is not None else float(rng.uniform(*DOSE_RANGE))
        cfg = FastSimConfig(shape=(frame_px, frame_px), pixel_size_nm=PIXEL_SIZE_NM, dose_e_per_A2=d,
                            diameter_nm=float(rng.uniform(3.0, 8.0)))
        raw, mask, _ = simulate_frame(cfg, rng)
        xs.append(preprocess(raw, params).numpy())
        ys.append(mask.astype(np.uint8))
    return np.stack(xs), np.stack(ys)


def _patches(x: np.ndarray, y: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    n, h, w = x.shape
    xs = x[:, : h // p * p, : w // p * p].reshape(n, h // p, p, w // p, p).transpose(0, 1, 3, 2, 4).reshape(-1, p, p)
    ys = y[:, : h // p * p, : w // p * p].reshape(n, h // p, p, w // p, p).transpose(0, 1, 3, 2, 4).reshape(-1, p, p)
    return np.ascontiguousarray(xs), np.ascontiguousarray(ys)


def build(out: Path, *, train_frames: int, val_frames: int, test_frames: int, frame_px: int, patch: int,
          epochs: int, batch_size: int, lr: float, seed: int, command: str) -> float:
    rng = np.random.default_rng(seed)
    params = Preprocessing()
    t0 = time.perf_counter()
    xtr, ytr = _patches(*_frames(train_frames, frame_px, rng, None, params), patch)
    xva, yva = _frames(val_frames, frame_px, rng, EVAL_DOSE, params)  # whole frames: a stable Dice
    xte, yte = _frames(test_frames, frame_px, rng, EVAL_DOSE, params)
    log.info("simulated %d train patches, %d val frames, %d test frames in %.1f s", len(xtr), len(xva), len(xte),
             time.perf_counter() - t0)
    torch.manual_seed(seed)
    model = build_model("resunet-seed")
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, noise_rho_max=0.5)
    result = train_model(model, (xtr, ytr), (xva, yva), cfg)
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(xte).unsqueeze(1)), 1)[:, 1].numpy()
    dices = [dice_from_masks(p > 0.5, t) for p, t in zip(probs, yte)]
    dice = float(np.mean(dices))
    log.info("held-out Dice %.4f ± %.4f over %d frames", dice, float(np.std(dices)), len(dices))
    export_bundle(
        [model], out, name="default-fastsim-au-0.02nm", arch="resunet-seed",
        envelope=Envelope(material=("Au",), particle_diameter_nm=Range(3.0, 8.0),
                          pixel_size_nm=Range(PIXEL_SIZE_NM, PIXEL_SIZE_NM),
                          dose_e_per_A2=Range(*DOSE_RANGE), voltage_kv=Range(300.0, 300.0),
                          support=("amorphous carbon",)),
        preprocessing=params,
        description="Default model: the published residual UNet trained on fast synthetic HRTEM frames "
                    "(fringelive.training.fastsim, not multislice). A starting point for the demo and "
                    "for fine-tuning, not a substitute for a model trained on your conditions.",
        metrics={"heldout_fastsim_0.02nm_423e": {
                    "dice_mean": dice, "dice_std": float(np.std(dices)), "frames": len(dices),
                    "frame_px": frame_px},
                 "training": {"best_epoch": result.best_epoch, "best_val_dice": result.best_val_dice,
                              "steps": result.steps, "seconds": round(result.seconds, 1),
                              "patches": int(len(xtr)), "patch_px": patch,
                              "recipe": {"loss": "cross-entropy", "optimizer": "Adam", "lr": lr,
                                         "batch_size": batch_size, "epochs": epochs, "dihedral": True,
                                         "rotation_p": 0.5, "noise_rho_max": 0.5, "seed": seed}}},
        command=command, overwrite=True)
    return dice


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    ap.add_argument("--train-frames", type=int, default=16, help="simulated training frames (count)")
    ap.add_argument("--val-frames", type=int, default=3, help="simulated validation frames (count)")
    ap.add_argument("--test-frames", type=int, default=6, help="held-out test frames (count)")
    ap.add_argument("--frame-px", type=int, default=1024, help="simulated frame side (px)")
    ap.add_argument("--patch", type=int, default=256, help="training patch side (px)")
    ap.add_argument("--epochs", type=int, default=40, help="training epochs")
    ap.add_argument("--batch-size", type=int, default=16, help="patches per optimiser step")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cmd = "python -m fringelive.training.default_bundle " + " ".join(sys.argv[1:] if argv is None else argv)
    dice = build(args.out, train_frames=args.train_frames, val_frames=args.val_frames,
                 test_frames=args.test_frames, frame_px=args.frame_px, patch=args.patch, epochs=args.epochs,
                 batch_size=args.batch_size, lr=args.lr, seed=args.seed, command=cmd)
    print(f"wrote {args.out} (held-out Dice {dice:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
