"""``fringelive train | finetune``: the published recipe with k-fold cross-validation, ending in a
bundle (:mod:`fringelive.training.run`).

* ``train``: from scratch; several GPUs with ``torchrun --nproc_per_node N $(which fringelive)
  train ...``.
* ``finetune``: the same from a bundle's or checkpoint's weights, optionally freezing the
  encoder or decoder (:mod:`fringelive.training.transfer`).
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from fringelive.cli import summary
from fringelive.cli.common import card_preprocessing, cli_error, command_line
from fringelive.cli.preprocessing import add_preprocessing_options
from fringelive.training.benchmark_groups import parse_group_by
from fringelive.training.run import RunConfig, RunError, run_training
from fringelive.training.samples import SampleSetError
from fringelive.training.trainer import TrainConfig, init_distributed
from fringelive.training.transfer import load_initial_weights

__all__ = ["register"]


def register(sub: Any) -> None:
    _register_train(sub, finetune=False)
    _register_train(sub, finetune=True)


def _register_train(sub: Any, finetune: bool) -> None:
    if finetune:
        p = sub.add_parser("finetune", help=summary("finetune"),
                           description="Fine-tune the members of a bundle (or a checkpoint) on sample sets with the "
                                       "published recipe and its own learning rate and epochs; ends in a bundle.")
        p.add_argument("--from", dest="source", required=True, metavar="PATH",
                       help="bundle directory (members' torch weights), training checkpoint or state-dict .pt")
        p.add_argument("--freeze", choices=["none", "encoder", "decoder"], default="none",
                       help="encoder = downs + bottleneck, decoder = ups + final_conv (default: none)")
    else:
        p = sub.add_parser("train", help=summary("train"),
                           description="Train the residual UNet on sample sets (published recipe: cross-entropy, Adam, "
                                       "batch 32, best-validation checkpoint, dihedral + rotation augmentation), one "
                                       "member per cross-validation fold, and export a bundle. Several GPUs: "
                                       "torchrun --nproc_per_node N $(which fringelive) train ...")
    p.add_argument("--data", nargs="+", action="extend", required=True, metavar="DIR",
                   help="sample set(s) from synth or dataset (concatenated in order)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="run directory: fold<k>/ checkpoints and logs, evaluation.csv, bundle/ (rerun to resume)")
    p.add_argument("--arch", default="resunet-seed", metavar="NAME",
                   help="network registry name (default: resunet-seed)" + ("; for a plain state dict" if finetune else ""))
    p.add_argument("--spec", metavar="JSON", help='UNetSpec overrides, e.g. \'{"widths": [8, 16]}\'')
    p.add_argument("--patch", type=int, default=512, metavar="PX", help="training patch side, px (default: 512)")
    p.add_argument("--epochs", type=int, default=20 if finetune else 50, metavar="N",
                   help=f"epochs per fold (count, default: {20 if finetune else 50})")
    p.add_argument("--batch-size", type=int, default=32, metavar="N",
                   help="patches per optimiser step over all processes (count, default: 32)")
    p.add_argument("--lr", type=float, default=1e-5 if finetune else 1e-4, metavar="RATE",
                   help=f"Adam learning rate (1/step, default: {1e-5 if finetune else 1e-4:g})")
    p.add_argument("--weight-decay", type=float, default=0.0, metavar="RATE", help="Adam weight decay (default: 0)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                   help="constant (published) or cosine decay per step from --lr to --lr-min (default: constant)")
    p.add_argument("--lr-min", type=float, default=0.0, metavar="RATE",
                   help="final learning rate of --lr-schedule cosine (1/step, default: 0)")
    p.add_argument("--no-dihedral", action="store_true", help="no random dihedral (flip/rot90) augmentation")
    p.add_argument("--rotation-p", type=float, default=0.5, metavar="P",
                   help="probability of a random-angle rotation per patch (fraction, default: 0.5)")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--noise-rho", type=float, metavar="RHO",
                       help="Gaussian-noise augmentation x'=(x+N(0,ρ²))/√(1+ρ²) with fixed ρ (std units of the "
                            "standardized input)")
    noise.add_argument("--noise-rho-max", type=float, metavar="RHO", help="same with ρ ~ U(0, RHO) per patch")
    p.add_argument("--select-metric", choices=["dice", "pooled_dice", "loss", "last"], default="dice",
                   help="validation score that picks the kept checkpoint: mean per-patch Dice (published), one Dice "
                        "over all validation pixels, lowest loss, or the last epoch (default: dice)")
    p.add_argument("--folds", type=int, default=5, metavar="K", help="cross-validation folds (count, default: 5)")
    p.add_argument("--fold", type=int, action="append", metavar="K",
                   help="train only this fold (0-based; repeat; default: all folds)")
    p.add_argument("--split", type=float, nargs=3, default=[0.7, 0.1, 0.2], metavar=("TRAIN", "VAL", "TEST"),
                   help="fractions of samples per fold (default: 0.7 0.1 0.2)")
    p.add_argument("--benchmark", action="append", metavar="NAME=DIR",
                   help="named sample set evaluated every epoch and at the end (repeat)")
    p.add_argument("--benchmark-by", action="append", metavar="COLUMN[=EDGES]",
                   help="also score each benchmark set per metadata column: per value (e.g. material) or per bin "
                        "of comma-separated edges in the column's unit (e.g. pixel_size_nm=0.02,0.03); each subset "
                        "is logged as '<set>[<group>]' (repeat)")
    p.add_argument("--seed", type=int, default=0, help="random seed (integer; fold k uses seed + k)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--no-amp", action="store_true", help="no float16 autocast on CUDA")
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="stop each fold after this many optimiser steps (count)")
    p.add_argument("--eval-batch-size", type=int, default=8, metavar="N", help="patches per validation call (count)")
    p.add_argument("--log", choices=["csv", "tensorboard", "both", "none"], default="csv",
                   help="per-epoch logs in fold<k>/ (default: csv)")
    p.add_argument("--bundle-name", help="bundle name (default: from the envelope, e.g. au-5nm-0.020nm-423e)")
    p.add_argument("--description", help="free text for the card")
    p.add_argument("--check-size", type=int, action="append", metavar="PX",
                   help="ONNX-vs-torch export check input side, px (repeat; default: 512 and 1024)")
    p.add_argument("--no-calibrate", action="store_true", help="do not compute drift reference statistics")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_preprocessing_options(p, "for raw sample sets" + (" (default: the source bundle's)" if finetune else ""))
    p.set_defaults(func=_train, finetune=finetune)


def _train(args: argparse.Namespace) -> int:
    info = init_distributed()
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    overrides = None
    if args.spec:
        try:
            overrides = json.loads(args.spec)
        except json.JSONDecodeError as e:
            raise cli_error(f"--spec is not valid JSON: {e}") from None
        if not isinstance(overrides, dict):
            raise cli_error(f"--spec must be a JSON object, got {args.spec!r}")
    init = None
    if args.finetune:
        try:
            init = load_initial_weights(args.source, arch=args.arch, spec=overrides)
        except (ValueError, OSError) as e:
            raise cli_error(str(e), 1) from None
    benchmarks = []
    for item in args.benchmark or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise cli_error(f"--benchmark takes NAME=DIR, got {item!r}")
        benchmarks.append((name, path))
    try:
        benchmark_by = tuple(parse_group_by(g) for g in args.benchmark_by or [])
    except ValueError as e:
        raise cli_error(str(e)) from None
    if benchmark_by and not benchmarks:
        raise cli_error("--benchmark-by needs at least one --benchmark NAME=DIR to split")
    try:
        tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                           dihedral=not args.no_dihedral, rotation_p=args.rotation_p, noise_rho=args.noise_rho,
                           noise_rho_max=args.noise_rho_max, seed=args.seed, device=args.device, amp=not args.no_amp,
                           max_steps=args.max_steps, progress=not args.no_progress,
                           freeze=getattr(args, "freeze", "none"), eval_batch_size=args.eval_batch_size,
                           lr_schedule=args.lr_schedule, lr_min=args.lr_min, select_metric=args.select_metric)
        cfg = RunConfig(data=tuple(args.data), out=args.out, train=tcfg,
                        arch=init.arch if init is not None else args.arch,
                        arch_overrides=overrides if init is None else None, patch_px=args.patch, folds=args.folds,
                        run_folds=tuple(args.fold) if args.fold else None, split=tuple(args.split),
                        preprocessing=card_preprocessing(args, init.preprocessing if init is not None else None),
                        benchmarks=tuple(benchmarks), benchmark_by=benchmark_by, bundle_name=args.bundle_name, description=args.description,
                        log=args.log, init=init, command=command_line(args),
                        export_check_sizes=tuple(args.check_size) if args.check_size else (512, 1024),
                        calibrate=not args.no_calibrate)
    except ValueError as e:
        raise cli_error(str(e)) from None
    try:
        result = run_training(cfg)
    except (RunError, SampleSetError) as e:
        raise cli_error(str(e), 1) from None
    if info.is_main:
        for r in result.folds:
            t = r.get("test") or {}
            print(f"fold {r['fold']}: best epoch {r['best_epoch']}, val Dice {r['best_val_dice']:.4f}, "
                  f"test Dice {t.get('dice', float('nan')):.4f}")
        print(f"bundle {result.bundle}: test Dice {result.test_dice_mean:.4f} ± {result.test_dice_std:.4f} over "
              f"{len(result.folds)} fold(s); drift reference {'written' if result.drift_reference else 'not computed'}")
    return 0
