"""``fringelive evaluate``: Dice mean ± std over members, error rates, generalization matrix CSV +
PNG of bundles on sample sets (:mod:`fringelive.training.evaluate`)."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from fringelive.bundle.bundle_io import BundleError, load_bundle
from fringelive.cli import summary
from fringelive.cli.common import cli_error
from fringelive.engine.backends import BackendUnavailable
from fringelive.training.evaluate import generalization_matrix, write_results
from fringelive.training.samples import SampleSetError, resolve_sampleset_path

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("evaluate", help=summary("evaluate"),
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
            raise cli_error(f"{what} takes [NAME=]DIR, got {item!r}")
        out.append((name, path))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise cli_error(f"{what} names must be unique, got {names}")
    return out


def _evaluate(args: argparse.Namespace) -> int:
    def bundle_name(path: str) -> str:
        try:
            return load_bundle(path).card.name
        except (BundleError, OSError) as e:
            raise cli_error(str(e), 1) from None

    def set_name(path: str) -> str:
        p = resolve_sampleset_path(path)
        return p.parent.name if p.suffix == ".h5" and p.name == "samples.h5" else p.stem

    if args.tile_size < 0 or args.tile_size % 16:
        raise cli_error(f"--tile-size must be 0 or a positive multiple of 16 px, got {args.tile_size}")
    try:
        bundles = _named(args.bundle, "--bundle", bundle_name)
        sets = _named(args.data, "--data", set_name)
        results = generalization_matrix(bundles, sets, backend=args.backend, tile_size=args.tile_size or None,
                                        own_split=not args.all_samples)
    except (SampleSetError, BundleError) as e:
        raise cli_error(str(e), 1) from None
    except (BackendUnavailable, ValueError) as e:
        raise cli_error(str(e), 2) from None
    paths = write_results(results, args.out)
    for r in results:
        print(f"{r.model} on {r.test_set}: Dice {r.dice_mean:.4f} ± {r.dice_std:.4f} ({r.members} members, "
              f"{r.samples} samples, {r.split}), FPR {r.false_positive_rate_mean:.4f}, "
              f"FNR {r.false_negative_rate_mean:.4f}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
