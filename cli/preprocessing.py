"""The preprocessing options shared by the commands that record preprocessing in a card
(``dataset``, ``train``, ``finetune``, ``export onnx``): argparse options in, a card
:class:`~fringelive.bundle.card.Preprocessing` out."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from fringelive.bundle.card import Preprocessing

__all__ = ["add_preprocessing_options", "preprocessing_from_args"]


def add_preprocessing_options(p: argparse.ArgumentParser, what: str) -> None:
    """Add the preprocessing option group to ``p``; ``what`` says where the values apply."""
    g = p.add_argument_group("preprocessing", f"shared engine parameters ({what}; card defaults)")
    g.add_argument("--xray-threshold", type=float, default=None, metavar="COUNTS",
                   help="x-ray hit = pixel above median + this many counts (default: 1500)")
    g.add_argument("--xray-passes", type=int, default=None, metavar="N", help="x-ray removal passes (count, default: 2)")
    g.add_argument("--no-xray-removal", action="store_true", help="skip x-ray removal")
    g.add_argument("--no-flatfield", action="store_true", help="skip the flat-field correction")
    g.add_argument("--flatfield-degree", type=int, nargs=2, default=None, metavar=("DY", "DX"),
                   help="Bézier surface degree in rows and columns (default: 2 2)")
    g.add_argument("--flatfield-downsample", type=int, default=None, metavar="FACTOR",
                   help="fit the surface on the frame binned by this factor (px per block side, default: 4)")
    g.add_argument("--rescale", choices=["standardize", "normalize", "histogram"], default=None,
                   help="intensity rescaling (default: standardize)")
    g.add_argument("--histogram-percentiles", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="clip percentiles for --rescale histogram (%%, default: 1 99)")
    g.add_argument("--lowpass-sigma", type=float, default=None, metavar="PX",
                   help="Gaussian low-pass after the rescale, sigma in px (removes the camera's pixel-scale "
                        "noise texture; default: 0 = off)")


def preprocessing_from_args(args: argparse.Namespace, base: Any = None) -> Any:
    """``base`` (default: the card defaults) with the options given on the command line; None
    when no option was given and ``base`` is None. Raises ``CardError`` for a bad value."""

    changes: dict[str, Any] = {}
    if args.xray_threshold is not None:
        changes["xray_threshold_counts"] = args.xray_threshold
    if args.xray_passes is not None:
        changes["xray_passes"] = args.xray_passes
    if args.no_xray_removal:
        changes["xray_removal"] = False
    if args.no_flatfield:
        changes["flatfield"] = False
    if args.flatfield_degree is not None:
        changes["flatfield_degree"] = tuple(args.flatfield_degree)
    if args.flatfield_downsample is not None:
        changes["flatfield_downsample"] = args.flatfield_downsample
    if args.rescale is not None:
        changes["rescale"] = args.rescale
    if args.histogram_percentiles is not None:
        changes["histogram_percentiles"] = tuple(args.histogram_percentiles)
    if args.lowpass_sigma is not None:
        changes["lowpass_sigma_px"] = args.lowpass_sigma
    if not changes and base is None:
        return None
    return replace(base or Preprocessing(), **changes)
