"""``fringelive synth | dataset | train | finetune | evaluate``: offline data and training commands.

* ``synth``: simulated raw frames + masks (engines ``abtem`` multislice and ``fast``), resumable,
  multiprocess (:mod:`fringelive.training.synth`).
* ``dataset``: preprocessed 512² patches from labelled experimental images + metadata CSV
  (:mod:`fringelive.training.experimental`).
* ``train``: the published recipe with k-fold cross-validation, ending in a bundle
  (:mod:`fringelive.training.run`); several GPUs with ``torchrun --nproc_per_node N
  $(which fringelive) train ...``.
* ``finetune``: the same from a bundle's or checkpoint's weights, optionally freezing the
  encoder or decoder (:mod:`fringelive.training.transfer`).
* ``evaluate``: Dice mean ± std over members, error rates, generalization matrix CSV + PNG
  (:mod:`fringelive.training.evaluate`).

Heavy imports (torch, abTEM, h5py) stay inside the command functions.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
import json
import logging
import math
import shlex
from typing import Any, Sequence

from fringelive.bundle.bundle_io import BundleError, load_bundle
from fringelive.bundle.card import CardError, Preprocessing
from fringelive.cli import CLIError
from fringelive.cli.preprocessing import add_preprocessing_options, preprocessing_from_args
from fringelive.engine.backends import BackendUnavailable
from fringelive.training.benchmark_groups import parse_group_by
from fringelive.training.evaluate import generalization_matrix, write_results
from fringelive.training.experimental import DatasetConfig, DatasetError, Selection, build_dataset
from fringelive.training.fastsim import CameraModel
from fringelive.training.run import RunConfig, RunError, run_training
from fringelive.training.samples import SampleSetError, resolve_sampleset_path
from fringelive.training.synth import PRESETS as SYNTH_PRESETS
from fringelive.training.synth import SynthConfig, SynthError, synthesize
from fringelive.training.trainer import TrainConfig, init_distributed
from fringelive.training.transfer import load_initial_weights

__all__ = ["register"]

log = logging.getLogger(__name__)

MATERIALS = ("Au", "Ag", "Pt", "CdSe")


def register(sub: Any) -> None:
    _register_synth(sub)
    _register_dataset(sub)
    _register_train(sub, finetune=False)
    _register_train(sub, finetune=True)
    _register_evaluate(sub)


# --- shared helpers ------------------------------------------------------------------------

def _error(message: str, code: int = 2) -> Exception:
    return CLIError(message, code)


def _pair(name: str, values: Sequence[float] | None, default: tuple[float, float]) -> tuple[float, float]:
    """One value (fixed) or two (uniform range) → (lo, hi)."""
    if values is None:
        return default
    if len(values) == 1:
        return (float(values[0]), float(values[0]))
    if len(values) == 2:
        return (float(values[0]), float(values[1]))
    raise _error(f"{name} takes one value or a MIN MAX pair, got {len(values)} values")


def _command(args: argparse.Namespace) -> str:
    return shlex.join(getattr(args, "argv", None) or ["fringelive", args.command])


def _preprocessing(args: argparse.Namespace, base: Any = None) -> Any:
    """Card Preprocessing from the options (None when no option was given and ``base`` is None)."""

    try:
        return preprocessing_from_args(args, base)
    except CardError as e:
        raise _error(str(e)) from None


# --- synth ---------------------------------------------------------------------------------

def _register_synth(sub: Any) -> None:
    p = sub.add_parser("synth", help="simulate HRTEM training frames and masks (abTEM multislice or fast)",
                       description="Simulate raw HRTEM frames of nanoparticles with exact masks into a sample set "
                                   "(samples.h5 + metadata.csv). One value fixes a parameter, MIN MAX draws it "
                                   "uniformly per sample. Resumable: rerun the same command to finish a killed run.")
    p.add_argument("--out", required=True, metavar="DIR", help="sample-set directory to write (or resume)")
    p.add_argument("--preset", choices=sorted(SYNTH_PRESETS),
                   help="start from a named distribution of conditions (curated: the default bundle's database, "
                        "see docs/training.md); the options below override it")
    p.add_argument("--engine", choices=["abtem", "fast"],
                   help="abtem: multislice (needs the sim extra); fast: phenomenological fastsim (default: abtem)")
    p.add_argument("--count", type=int, required=True, metavar="N", help="number of samples")
    p.add_argument("--size", type=int, metavar="PX", help="frame side in pixels (default: 512)")
    p.add_argument("--pixel-size", type=float, nargs="+", metavar="NM",
                   help="pixel size, nm/pixel (default: 0.02)")
    p.add_argument("--material", nargs="+", choices=MATERIALS,
                   help="particle material(s), one drawn per sample (default: Au)")
    p.add_argument("--diameter", type=float, nargs="+", metavar="NM", help="particle diameter, nm (default: 5)")
    p.add_argument("--particles", type=int, nargs="+", metavar="N",
                   help="particles per sample, abtem engine (count, default: 1)")
    p.add_argument("--empty-fraction", type=float, metavar="P",
                   help="extra share of frames with no particle, bare support (fraction, default: 0)")
    p.add_argument("--particles-per-100nm2", type=float, metavar="DENSITY",
                   help="fast engine: mean particles per 100 nm² (default: 1)")
    p.add_argument("--twin-probability", type=float, metavar="P",
                   help="chance that an fcc particle has a twin plane (fraction, default: 0)")
    p.add_argument("--stacking-fault-probability", type=float, metavar="P",
                   help="chance of each of up to two stacking faults in an fcc particle (fraction, default: 0)")
    p.add_argument("--edge-overlap", action="store_true", default=None,
                   help="let particles be cut by the frame edge (default: wholly inside)")
    p.add_argument("--carbon-thickness", type=float, nargs="+", metavar="NM",
                   help="amorphous carbon support thickness, nm (default: 3)")
    p.add_argument("--no-support-fraction", type=float, metavar="P",
                   help="share of frames without the carbon support (fraction, default: 0)")
    p.add_argument("--voltage", type=float, nargs="+", metavar="KV",
                   help="acceleration voltage, kV; several: one drawn per sample (default: 300)")
    p.add_argument("--defocus", type=float, nargs="+", metavar="NM",
                   help="defocus, nm, positive = underfocus (default: -10 10)")
    p.add_argument("--cs", type=float, nargs="+", metavar="UM", help="spherical aberration Cs, µm (default: -20 20)")
    p.add_argument("--uncorrected-fraction", type=float, metavar="P",
                   help="share of frames from an uncorrected microscope: Cs from --cs-uncorrected, defocus "
                        "drawn around Scherzer (fraction, default: 0)")
    p.add_argument("--cs-uncorrected", type=float, nargs="+", metavar="MM",
                   help="Cs of uncorrected frames, mm (default: 0.5 1.2)")
    p.add_argument("--focal-spread", type=float, nargs="+", metavar="NM", help="focal spread, nm (default: 2 4)")
    p.add_argument("--angular-spread", type=float, nargs="+", metavar="MRAD",
                   help="beam convergence (partial spatial coherence), mrad (default: 0)")
    p.add_argument("--sampling", type=float, metavar="ANGSTROM",
                   help="largest multislice sampling, Å (<= 0.25; above 0.1 band-limited; default: 0.1)")
    p.add_argument("--slice-thickness", type=float, metavar="ANGSTROM",
                   help="multislice slice thickness, Å (default: 2)")
    p.add_argument("--mask-pass", choices=["shared", "separate"],
                   help="particle exit wave for the mask: from the one multislice (shared) or a second one "
                        "(separate; default)")
    p.add_argument("--log-uniform", nargs="+", choices=["pixel-size", "dose", "diameter", "carbon-thickness"],
                   help="draw these ranges log-uniformly (default: none)")
    p.add_argument("--dose", type=float, nargs="+", metavar="E_PER_A2", help="electron dose, e/Å² (default: 423)")
    p.add_argument("--gain", type=float, nargs="+", metavar="COUNTS_PER_E",
                   help="camera gain, counts/e (one value or MIN MAX; default: 1)")
    p.add_argument("--offset", type=float, nargs="+", metavar="COUNTS", help="camera offset, counts (default: 0)")
    p.add_argument("--read-noise", type=float, nargs="+", metavar="COUNTS",
                   help="camera read noise, counts rms (default: 0)")
    p.add_argument("--mtf-sigma", type=float, nargs="+", metavar="PX",
                   help="camera point spread σ (correlated shot noise), px (default: 0)")
    p.add_argument("--illumination", type=float, nargs="+", metavar="FRACTION",
                   help="peak-to-peak illumination non-uniformity (fraction, default: 0.2)")
    p.add_argument("--xray-rate", type=float, metavar="PER_MPX",
                   help="x-ray hits per megapixel (default: 2)")
    p.add_argument("--xray-counts", type=float, metavar="COUNTS",
                   help="counts an x-ray hit adds (default: 8000)")
    p.add_argument("--mask-threshold", type=float, metavar="RAD",
                   help="particle = exit-wave phase above this, rad (default: π/16)")
    p.add_argument("--mask-closing", type=float, metavar="ANGSTROM",
                   help="closing radius joining atomic columns in the mask, Å (default: 2)")
    p.add_argument("--mask-min-area", type=float, metavar="NM2",
                   help="drop mask components smaller than this, nm² (default: 0.2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (integer; sample i uses [seed, i])")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes (count, default: 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_synth)


#: synth option → SynthConfig field (ranges: a value or a MIN MAX pair).
_SYNTH_RANGES = {"pixel_size": "pixel_size_nm", "diameter": "diameter_nm", "particles": "particles",
                 "carbon_thickness": "carbon_thickness_nm", "defocus": "defocus_nm", "cs": "cs_um",
                 "cs_uncorrected": "cs_uncorrected_mm", "focal_spread": "focal_spread_nm",
                 "angular_spread": "angular_spread_mrad", "dose": "dose_e_per_A2"}
_SYNTH_VALUES = {"engine": "engine", "size": "size_px", "particles_per_100nm2": "particles_per_100nm2",
                 "twin_probability": "twin_probability", "stacking_fault_probability": "stacking_fault_probability",
                 "empty_fraction": "empty_fraction", "no_support_fraction": "no_support_fraction",
                 "uncorrected_fraction": "uncorrected_fraction", "edge_overlap": "edge_overlap",
                 "sampling": "sampling_A", "slice_thickness": "slice_thickness_A", "mask_pass": "mask_pass",
                 "mask_threshold": "mask_threshold_rad", "mask_closing": "mask_closing_A",
                 "mask_min_area": "mask_min_area_nm2", "seed": "seed", "count": "count"}
_SYNTH_CAMERA = {"gain": "gain", "offset": "offset", "read_noise": "read_noise", "mtf_sigma": "mtf_sigma_px",
                 "illumination": "illumination", "xray_rate": "xray_rate_per_mpx", "xray_counts": "xray_counts"}
_LOG_NAMES = {"pixel-size": "pixel_size_nm", "dose": "dose_e_per_A2", "diameter": "diameter_nm",
              "carbon-thickness": "carbon_thickness_nm"}


def _synth_config(args: argparse.Namespace) -> Any:
    """SynthConfig from the preset (if any), overridden by every option given."""
    kw: dict[str, Any] = dict(SYNTH_PRESETS.get(args.preset or "", {}))
    camera = dict(kw.pop("camera", None) or asdict(CameraModel()))
    for opt, name in _SYNTH_RANGES.items():
        v = getattr(args, opt)
        if v is not None:
            pair = _pair(f"--{opt.replace('_', '-')}", v, (0.0, 0.0))
            kw[name] = (int(pair[0]), int(pair[1])) if name == "particles" else pair
    for opt, name in _SYNTH_VALUES.items():
        v = getattr(args, opt)
        if v is not None:
            kw[name] = v
    if args.material is not None:
        kw["materials"] = tuple(args.material)
    if args.voltage is not None:
        kw["voltage_kv"] = args.voltage[0] if len(args.voltage) == 1 else tuple(args.voltage)
    if args.log_uniform is not None:
        kw["log_uniform"] = tuple(_LOG_NAMES[n] for n in args.log_uniform)
    for opt, name in _SYNTH_CAMERA.items():
        v = getattr(args, opt)
        if v is None:
            continue
        if isinstance(v, list):
            v = v[0] if len(v) == 1 else _pair(f"--{opt.replace('_', '-')}", v, (0.0, 0.0))
        camera[name] = v
    kw["camera"] = CameraModel(**camera)
    return SynthConfig(**kw)


def _synth(args: argparse.Namespace) -> int:
    try:
        cfg = _synth_config(args)
    except ValueError as e:
        raise _error(str(e)) from None
    try:
        report = synthesize(cfg, args.out, workers=args.workers, progress=not args.no_progress,
                            command=_command(args))
    except SynthError as e:
        raise _error(str(e)) from None
    except ImportError as e:
        raise _error(str(e), 2) from None
    rate = f", {report.samples_per_hour:.0f} samples/hour" if report.simulated else ""
    print(f"wrote {report.path}: {report.count} samples ({report.simulated} simulated now, "
          f"{report.skipped} resumed) in {report.seconds:.1f} s{rate}")
    return 0


# --- dataset -------------------------------------------------------------------------------

def _register_dataset(sub: Any) -> None:
    p = sub.add_parser("dataset", help="make training patches from labelled experimental images",
                       description="Preprocess labelled experimental images with the shared engine and cut them into "
                                   "patches (a sample set: samples.h5 + metadata.csv). Images: .dm3 .dm4 .ser .emd, "
                                   "8/16-bit .tif .png .jpg, .npy (grey stored as RGB/RGBA is reduced to one channel). "
                                   "Labels: <image stem><--label-suffix>, or --label-pattern; non-zero = particle "
                                   "(0/255 and 0/1 masks). Pixel size and dose are optional (unknown in the card's "
                                   "envelope then). Recipe: docs/training.md.")
    p.add_argument("--images", nargs="+", required=True, metavar="PATH",
                   help="image files or directories searched recursively (.dm3 .dm4 .ser .emd .tif .png .jpg .npy)")
    p.add_argument("--labels", metavar="DIR", help="directory of label images (default: beside each image)")
    p.add_argument("--metadata", metavar="CSV", help="metadata CSV, one row per image (e.g. Dataset_metadata.csv)")
    p.add_argument("--key-column", default="File name", help="CSV column holding the image file name (default: 'File name')")
    p.add_argument("--label-suffix", default="_label.png", help="label file = image stem + this (default: _label.png)")
    p.add_argument("--label-pattern", metavar="PATTERN",
                   help="label file name pattern instead of --label-suffix, e.g. 'label_{index}.png' ({index}: the "
                        "last number in the image name, compared as a number; {stem}, {name}) or 're:<regex>' with "
                        "a named group index or stem; searched in --labels, then beside the image")
    p.add_argument("--select", nargs="+", action="append", metavar="COLUMN VALUE [TOL]",
                   help="keep images whose COLUMN equals VALUE (strings) or is within TOL of it (numbers, in the "
                        "column's unit); repeat for several conditions")
    p.add_argument("--patch", type=int, default=512, metavar="PX", help="patch side, px (multiple of 16; default: 512)")
    p.add_argument("--stride", type=int, default=None, metavar="PX", help="patch grid step, px (default: the patch side)")
    p.add_argument("--min-particle-px", type=int, default=400, metavar="PX",
                   help="keep patches with more particle pixels than this (count, default: 400)")
    p.add_argument("--voltage-kv", type=float, default=None, metavar="KV",
                   help="voltage when neither CSV nor file gives one, kV (default: unset)")
    p.add_argument("--out", required=True, metavar="DIR", help="sample-set directory to write")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_preprocessing_options(p, "applied to every image before patching")
    p.set_defaults(func=_dataset)


def _dataset(args: argparse.Namespace) -> int:
    selections = []
    for sel in args.select or []:
        if len(sel) not in (2, 3):
            raise _error(f"--select takes COLUMN VALUE [TOL], got {sel!r}")
        try:
            tol = float(sel[2]) if len(sel) == 3 else 0.0
        except ValueError:
            raise _error(f"--select tolerance must be a number, got {sel[2]!r}") from None
        try:
            selections.append(Selection(sel[0], sel[1], tol))
        except DatasetError as e:
            raise _error(str(e)) from None
    try:
        cfg = DatasetConfig(patch_px=args.patch, stride_px=args.stride, min_particle_px=args.min_particle_px,
                            preprocessing=_preprocessing(args) or Preprocessing(), selections=tuple(selections),
                            key_column=args.key_column, label_suffix=args.label_suffix, voltage_kv=args.voltage_kv,
                            label_pattern=args.label_pattern)
    except DatasetError as e:  # a bad option: usage error
        raise _error(str(e), 2) from None
    try:
        report = build_dataset(args.images, args.out, cfg, labels_dir=args.labels, metadata_csv=args.metadata,
                               progress=not args.no_progress, command=_command(args))
    except DatasetError as e:
        raise _error(str(e), 1) from None
    skipped = ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in report.skipped.items() if v) or "none"
    print(f"wrote {report.path}: {report.patches} patches from {report.images_used} images "
          f"({report.patches_rejected} patches with too few particle pixels; images skipped: {skipped})")
    return 0 if report.patches else 1


# --- train / finetune ----------------------------------------------------------------------

def _register_train(sub: Any, finetune: bool) -> None:
    if finetune:
        p = sub.add_parser("finetune", help="transfer learning from a bundle or checkpoint on new data",
                           description="Fine-tune the members of a bundle (or a checkpoint) on sample sets with the "
                                       "published recipe and its own learning rate and epochs; ends in a bundle.")
        p.add_argument("--from", dest="source", required=True, metavar="PATH",
                       help="bundle directory (members' torch weights), training checkpoint or state-dict .pt")
        p.add_argument("--freeze", choices=["none", "encoder", "decoder"], default="none",
                       help="encoder = downs + bottleneck, decoder = ups + final_conv (default: none)")
    else:
        p = sub.add_parser("train", help="train with the published recipe and k-fold cross-validation",
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
            raise _error(f"--spec is not valid JSON: {e}") from None
        if not isinstance(overrides, dict):
            raise _error(f"--spec must be a JSON object, got {args.spec!r}")
    init = None
    if args.finetune:
        try:
            init = load_initial_weights(args.source, arch=args.arch, spec=overrides)
        except (ValueError, OSError) as e:
            raise _error(str(e), 1) from None
    benchmarks = []
    for item in args.benchmark or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise _error(f"--benchmark takes NAME=DIR, got {item!r}")
        benchmarks.append((name, path))
    try:
        benchmark_by = tuple(parse_group_by(g) for g in args.benchmark_by or [])
    except ValueError as e:
        raise _error(str(e)) from None
    if benchmark_by and not benchmarks:
        raise _error("--benchmark-by needs at least one --benchmark NAME=DIR to split")
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
                        preprocessing=_preprocessing(args, init.preprocessing if init is not None else None),
                        benchmarks=tuple(benchmarks), benchmark_by=benchmark_by, bundle_name=args.bundle_name, description=args.description,
                        log=args.log, init=init, command=_command(args),
                        export_check_sizes=tuple(args.check_size) if args.check_size else (512, 1024),
                        calibrate=not args.no_calibrate)
    except ValueError as e:
        raise _error(str(e)) from None
    try:
        result = run_training(cfg)
    except (RunError, SampleSetError) as e:
        raise _error(str(e), 1) from None
    if info.is_main:
        for r in result.folds:
            t = r.get("test") or {}
            print(f"fold {r['fold']}: best epoch {r['best_epoch']}, val Dice {r['best_val_dice']:.4f}, "
                  f"test Dice {t.get('dice', float('nan')):.4f}")
        print(f"bundle {result.bundle}: test Dice {result.test_dice_mean:.4f} ± {result.test_dice_std:.4f} over "
              f"{len(result.folds)} fold(s); drift reference {'written' if result.drift_reference else 'not computed'}")
    return 0


# --- evaluate ------------------------------------------------------------------------------

def _register_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="Dice, error rates and a generalization matrix of bundles on sample sets",
                       usage="%(prog)s [-h] --bundle [NAME=]DIR --data [NAME=]DIR --out DIR\n"
                             "       [--backend BACKEND] [--tile-size PX] [--all-samples]",
                       description="Score bundles (training sets, rows) on sample sets (test sets, columns): hard Dice "
                                   "(class 1, threshold 0.5) mean ± std over members, false-positive and false-negative "
                                   "rates; writes evaluation.csv, dice_matrix.csv, dice_std_matrix.csv, dice_matrix.png.")
    p.add_argument("--bundle", action="append", required=True, metavar="[NAME=]DIR",
                   help="bundle directory, optionally named (repeat; default name: the card's)")
    p.add_argument("--data", action="append", required=True, metavar="[NAME=]DIR",
                   help="sample set from synth or dataset, optionally named (repeat)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the CSV files and the PNG heatmap")
    p.add_argument("--backend", default="onnxruntime", help="inference backend kind (default: onnxruntime)")
    p.add_argument("--tile-size", type=int, default=1024, metavar="PX",
                   help="largest tile core fed to the network, px (multiple of 16; 0 = whole samples; default: 1024)")
    p.add_argument("--all-samples", action="store_true",
                   help="score every member on every sample even on its own training set (default: own test folds)")
    p.set_defaults(func=_evaluate)


def _named(items: Sequence[str], what: str, default_name: Any) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = default_name(item), item
        if not name or not path:
            raise _error(f"{what} takes [NAME=]DIR, got {item!r}")
        out.append((name, path))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise _error(f"{what} names must be unique, got {names}")
    return out


def _evaluate(args: argparse.Namespace) -> int:
    def bundle_name(path: str) -> str:
        try:
            return load_bundle(path).card.name
        except (BundleError, OSError) as e:
            raise _error(str(e), 1) from None

    def set_name(path: str) -> str:
        p = resolve_sampleset_path(path)
        return p.parent.name if p.suffix == ".h5" and p.name == "samples.h5" else p.stem

    if args.tile_size < 0 or args.tile_size % 16:
        raise _error(f"--tile-size must be 0 or a positive multiple of 16 px, got {args.tile_size}")
    try:
        bundles = _named(args.bundle, "--bundle", bundle_name)
        sets = _named(args.data, "--data", set_name)
        results = generalization_matrix(bundles, sets, backend=args.backend, tile_size=args.tile_size or None,
                                        own_split=not args.all_samples)
    except (SampleSetError, BundleError) as e:
        raise _error(str(e), 1) from None
    except (BackendUnavailable, ValueError) as e:
        raise _error(str(e), 2) from None
    paths = write_results(results, args.out)
    for r in results:
        print(f"{r.model} on {r.test_set}: Dice {r.dice_mean:.4f} ± {r.dice_std:.4f} ({r.members} members, "
              f"{r.samples} samples, {r.split}), FPR {r.false_positive_rate_mean:.4f}, "
              f"FNR {r.false_negative_rate_mean:.4f}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
