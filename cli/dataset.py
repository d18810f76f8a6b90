"""``fringelive dataset``: preprocessed 512² patches from labelled experimental images + metadata
CSV, as a sample set (:mod:`fringelive.training.experimental`)."""

from __future__ import annotations

import argparse
from typing import Any

from fringelive.bundle.card import Preprocessing
from fringelive.cli import summary
from fringelive.cli.common import card_preprocessing, cli_error, command_line
from fringelive.cli.preprocessing import add_preprocessing_options
from fringelive.training.experimental import DatasetConfig, DatasetError, Selection, build_dataset

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("dataset", help=summary("dataset"),
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
            raise cli_error(f"--select takes COLUMN VALUE [TOL], got {sel!r}")
        try:
            tol = float(sel[2]) if len(sel) == 3 else 0.0
        except ValueError:
            raise cli_error(f"--select tolerance must be a number, got {sel[2]!r}") from None
        try:
            selections.append(Selection(sel[0], sel[1], tol))
        except DatasetError as e:
            raise cli_error(str(e)) from None
    try:
        cfg = DatasetConfig(patch_px=args.patch, stride_px=args.stride, min_particle_px=args.min_particle_px,
                            preprocessing=card_preprocessing(args) or Preprocessing(), selections=tuple(selections),
                            key_column=args.key_column, label_suffix=args.label_suffix, voltage_kv=args.voltage_kv,
                            label_pattern=args.label_pattern)
    except DatasetError as e:  # a bad option: usage error
        raise cli_error(str(e), 2) from None
    try:
        report = build_dataset(args.images, args.out, cfg, labels_dir=args.labels, metadata_csv=args.metadata,
                               progress=not args.no_progress, command=command_line(args))
    except DatasetError as e:
        raise cli_error(str(e), 1) from None
    skipped = ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in report.skipped.items() if v) or "none"
    print(f"wrote {report.path}: {report.patches} patches from {report.images_used} images "
          f"({report.patches_rejected} patches with too few particle pixels; images skipped: {skipped})")
    return 0 if report.patches else 1
