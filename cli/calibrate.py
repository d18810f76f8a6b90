"""``fringelive calibrate``: measure drift reference statistics on in-distribution frames and
store them in a bundle's card (``card.drift_reference``; ``docs/drift.md``).

    fringelive calibrate --bundle DIR DATA... [--meta KEY=VALUE] [--target-arl FRAMES] ...

DATA are image files (``.npy``, ``.tif``, ``.dm3``/``.dm4``, ``.ser``/``.emd``; metadata read
from the files as ``fringelive send`` does), directories of them, or raw sample sets written by
``fringelive synth`` / ``dataset`` (a directory with ``samples.h5``; metadata from its rows). Frames with dose and
pixel size (from the file or ``--meta``) also calibrate the dose estimate. The card is replaced
atomically; member files and their sha256 are untouched, so the bundle stays loadable and a
running daemon picks the reference up on ``reload``.

Exit codes: 0 written (or ``--dry-run``), 1 calibration failed (too few frames or signals),
2 usage error (bad bundle, unreadable data).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from fringelive.bundle.bundle_io import BundleError
from fringelive.cli import CLIError, summary
from fringelive.engine.calibration import (calibrate_bundle, calibrate_decision_threshold,
                                           calibrate_particle_confidence)
from fringelive.engine.particle_confidence import DEFAULT_MAX_DICE_LOSS, METRICS_KEYS, STATISTICS
from fringelive.engine.threshold_choice import DEFAULT_MAX_CALLED_EMPTY, DEFAULT_MAX_CALLED_EMPTY_FRAME
from fringelive.engine.drift_reference import DriftReferenceError
from fringelive.engine.readers import ReaderError, SUPPORTED_SUFFIXES, read_frames
from fringelive.stream.send import merge_meta, parse_meta
from fringelive.training.samples import SampleSetError, load_sampleset


def register(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate", help=summary("calibrate"),
        description="Run a bundle on in-distribution frames, measure its drift signals (entropy, member "
                    "agreement, image-estimated dose and pixel size), calibrate the dose estimate from frames of "
                    "known dose, simulate the CUSUM threshold for a target false-alarm rate, and write the result "
                    "into the bundle's card.json (drift_reference).")
    p.add_argument("--bundle", metavar="DIR", required=True, type=Path, help="model bundle directory (a path)")
    p.add_argument("data", nargs="+", type=Path, metavar="DATA",
                   help="in-distribution frames: image files or directories of them (.npy, .tif, .dm3/.dm4, "
                        ".ser/.emd), or raw sample sets from `synth`/`dataset` (directories with samples.h5)")
    p.add_argument("--meta", action="append", metavar="KEY=VALUE", default=[],
                   help="metadata for every frame where the files lack it, e.g. pixel_size_nm=0.02 (nm/px) or "
                        "dose_e_per_A2=423 (e/Å²); repeatable; values from the files win")
    p.add_argument("--target-arl", type=float, default=10_000.0, metavar="FRAMES",
                   help="in-distribution frames between false stream alarms (frames; default 10000)")
    p.add_argument("--k", type=float, default=0.5, metavar="SD",
                   help="CUSUM allowance (standard deviations of the reference; default 0.5)")
    p.add_argument("--method", choices=("bootstrap", "gaussian"), default="bootstrap",
                   help="CUSUM threshold simulation: resample the reference frames' standardized signals (bootstrap, "
                        "default) or independent N(0,1) (gaussian); a method name, no unit")
    p.add_argument("--gain", type=float, metavar="COUNTS_PER_E",
                   help="camera gain to store (counts per electron); default: calibrated from frames of known dose")
    p.add_argument("--offset", type=float, metavar="COUNTS", help="camera offset to store (counts added to every pixel)")
    p.add_argument("--read-noise", type=float, metavar="COUNTS", help="camera read noise to store (rms counts)")
    p.add_argument("--no-dose-calibration", action="store_true",
                   help="keep the card's dose noise factor and gain instead of calibrating them (flag, no unit)")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="use at most N frames (count)")
    p.add_argument("--min-frames", type=int, default=None, metavar="N",
                   help="fewest frames (and values per signal) accepted (count; default 10)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for ONNX Runtime and torch (count; default: the runtimes' own)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed of the CUSUM simulation (integer)")
    p.add_argument("--choose-threshold", action="append", type=Path, metavar="SAMPLESET", default=None,
                   help="first choose the bundle's threshold (card.threshold: best pooled Dice of the published mask, "
                        "candidates 0.30-0.80, within --max-called-empty and --max-called-empty-frame) on this labelled raw sample set "
                        "(synth/dataset; repeat for several), then calibrate the drift reference at it; use frames no "
                        "reported metric is measured on")
    p.add_argument("--max-called-empty", type=float, default=DEFAULT_MAX_CALLED_EMPTY, metavar="FRACTION",
                   help="--choose-threshold: largest mean fraction of pixels called particle on the frames without "
                        f"particles (fraction, default: {DEFAULT_MAX_CALLED_EMPTY:g})")
    p.add_argument("--max-called-empty-frame", type=float, default=DEFAULT_MAX_CALLED_EMPTY_FRAME, metavar="FRACTION",
                   help="--choose-threshold: largest fraction of pixels called particle on any one frame without "
                        f"particles (fraction, default: {DEFAULT_MAX_CALLED_EMPTY_FRAME:g})")
    p.add_argument("--choose-particle-confidence", action="append", type=Path, metavar="SAMPLESET", default=None,
                   help="then (after --choose-threshold) choose the smallest mean class-1 probability a mask component "
                        "needs to count as a particle (card.particle_min_mean_probability: most frames whose particle "
                        "count equals the label's, candidates 0 and 0.60-0.94, pooled Dice at most "
                        "--max-particle-dice-loss below no cut's) on this labelled raw sample set (repeat for several); "
                        "use frames like those the bundle will serve, and none a reported metric is measured on")
    p.add_argument("--choose-particle-core", action="append", type=Path, metavar="SAMPLESET", default=None,
                   help="then choose the smallest confident core a mask component needs to count as a particle "
                        "(card.particle_min_core_nm: the equivalent-circle diameter of its pixels at or above "
                        "card.particle_core_probability; candidates 0 and 0.2-1.0 nm, same criterion as "
                        "--choose-particle-confidence) on this labelled raw sample set (repeat for several)")
    p.add_argument("--choose-particle-core-fraction", action="append", type=Path, metavar="SAMPLESET", default=None,
                   help="then choose the smallest share of a mask component's area its confident core must cover "
                        "for it to count as a particle (card.particle_min_core_fraction; candidates 0 and 0.05-0.5, "
                        "same criterion as --choose-particle-confidence, the card's other particle rules held) on "
                        "this labelled raw sample set (repeat for several)")
    p.add_argument("--choose-particle-edge-core-fraction", action="append", type=Path, metavar="SAMPLESET",
                   default=None,
                   help="then choose the same share for the components touching the frame edge only "
                        "(card.particle_min_edge_core_fraction; candidates 0 and 0.05-0.5, same criterion, the card's "
                        "other particle rules held) on this labelled raw sample set (repeat for several)")
    p.add_argument("--max-particle-dice-loss", type=float, default=DEFAULT_MAX_DICE_LOSS, metavar="DICE",
                   help="--choose-particle-confidence/-core/-core-fraction/-edge-core-fraction: largest drop of the "
                        f"pooled Dice a cut may cost (Dice, default: {DEFAULT_MAX_DICE_LOSS:g})")
    p.add_argument("--dry-run", action="store_true", help="print the reference, do not write the card (flag, no unit)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (flag, no unit)")
    p.set_defaults(func=run_calibrate)


def _is_sampleset(path: Path) -> bool:
    return path.is_dir() and (path / "samples.h5").is_file()


def _files(data: list[Path]) -> list[Path]:
    """Image files, directories of them, and sample sets (kept as their directory)."""

    out: list[Path] = []
    for d in data:
        if _is_sampleset(d):
            out.append(d)
        elif d.is_dir():
            found = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES)
            if not found:
                raise CLIError(f"{d}: no image files ({', '.join(SUPPORTED_SUFFIXES)}) and no sample set "
                               "(samples.h5) in this directory", 2)
            out += found
        elif d.is_file():
            out.append(d)
        else:
            raise CLIError(f"{d}: no such file or directory", 2)
    return out


def _raw_sampleset(path: Path, where: str, need: str) -> Any:
    """The sample set at ``path``; a usage error (``<where>: a sample set of ... patches; <need>``)
    unless it holds raw frames."""
    try:
        ss = load_sampleset(path)
    except SampleSetError as e:
        raise CLIError(str(e), 2) from None
    if ss.content != "raw":
        raise CLIError(f"{where}: a sample set of {ss.content} patches; {need}", 2)
    return ss


def _sampleset_frames(path: Path) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Raw frames and their metadata rows of a sample set (``fringelive synth``/``dataset``)."""
    ss = _raw_sampleset(path, str(path), "calibration needs raw frames (the daemon preprocesses what it receives): "
                                         "use a raw `synth` set or the experimental images")
    for image, meta in zip(ss.images, ss.metadata):
        yield image, dict(meta)


def _frames(files: list[Path], extra: dict[str, Any], limit: int | None) -> Iterator[tuple[Any, dict[str, Any]]]:
    n = 0
    for f in files:
        try:
            if _is_sampleset(f):
                frames = _sampleset_frames(f)
            else:
                frames = ((image.pixels, image.meta) for image in read_frames(f))
            for pixels, meta in frames:
                yield pixels, merge_meta(extra, meta)
                n += 1
                if limit is not None and n >= limit:
                    return
        except ReaderError as e:
            raise CLIError(str(e), 2) from None


def run_calibrate(args: argparse.Namespace) -> int:
    """The card choices asked for (threshold, particle confidence, particle core: diameter, share, share at
    the edge), then the drift reference."""
    if args.max_frames is not None and args.max_frames < 2:
        raise CLIError(f"--max-frames must be >= 2, got {args.max_frames}", 2)
    if not args.target_arl >= 10:
        raise CLIError(f"--target-arl must be >= 10 frames, got {args.target_arl:g}", 2)
    if not args.k >= 0:
        raise CLIError(f"--k must be >= 0 standard deviations, got {args.k:g}", 2)
    if args.gain is not None and not args.gain > 0:
        raise CLIError(f"--gain must be > 0 counts per electron, got {args.gain:g}", 2)
    try:
        extra = parse_meta(args.meta)
    except ValueError as e:
        raise CLIError(str(e), 2) from None
    files = _files(list(args.data))
    if not 0.0 <= args.max_particle_dice_loss <= 1.0:
        raise CLIError(f"--max-particle-dice-loss must be in [0, 1] (Dice), got {args.max_particle_dice_loss:g}", 2)
    if args.choose_threshold:
        _choose_threshold(args)
    if args.choose_particle_confidence:
        _choose_particle_confidence(args, "mean_probability", list(args.choose_particle_confidence))
    if args.choose_particle_core:
        _choose_particle_confidence(args, "core_nm", list(args.choose_particle_core))
    if args.choose_particle_core_fraction:
        _choose_particle_confidence(args, "core_fraction", list(args.choose_particle_core_fraction))
    if args.choose_particle_edge_core_fraction:
        _choose_particle_confidence(args, "edge_core_fraction", list(args.choose_particle_edge_core_fraction))

    def progress(n: int) -> None:
        if not args.json and n % 50 == 0:
            print(f"  {n} frames measured", file=sys.stderr, flush=True)

    try:
        report = calibrate_bundle(
            args.bundle, _frames(files, extra, args.max_frames), target_arl=args.target_arl, k=args.k,
            method=args.method, calibrate_dose=not args.no_dose_calibration, gain=args.gain, offset=args.offset,
            read_noise=args.read_noise, sources=[str(d) for d in args.data], min_frames=args.min_frames,
            seed=args.seed, threads=args.threads, dry_run=args.dry_run, progress=progress)
    except (BundleError, DriftReferenceError) as e:
        raise CLIError(str(e), 2) from None
    except ValueError as e:
        raise CLIError(f"calibration failed: {e}", 1) from None
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_report(report["bundle"], report)
    return 0


def _labelled(paths: list[Path], flag: str = "--choose-threshold") -> Iterator[tuple[Any, Any, dict[str, Any]]]:
    for path in paths:
        if not _is_sampleset(path):
            raise CLIError(f"{flag} {path}: not a sample set (no samples.h5); it needs labelled frames "
                           "from `fringelive synth` or `fringelive dataset`", 2)
        ss = _raw_sampleset(path, f"{flag} {path}", "it needs raw frames")
        for image, label, meta in zip(ss.images, ss.labels, ss.metadata):
            yield image, label, dict(meta)


def _run_choice(args: argparse.Namespace, what: str, key: str,
                run: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """``run()`` one of the card choices with the CLI's errors (a bad bundle: exit 2, a failed
    choice: exit 1); with ``--json`` print its report under ``key`` and return None."""
    try:
        rep = run()
    except BundleError as e:
        raise CLIError(str(e), 2) from None
    except ValueError as e:
        raise CLIError(f"{what} calibration failed: {e}", 1) from None
    if args.json:
        print(json.dumps({key: rep}, indent=2, default=str))
        return None
    return rep


def _choose_threshold(args: argparse.Namespace) -> None:
    paths = list(args.choose_threshold)
    rep = _run_choice(args, "threshold", "threshold_calibration", lambda: calibrate_decision_threshold(
        args.bundle, _labelled(paths), threads=args.threads, max_called_empty=args.max_called_empty,
        max_called_empty_frame=args.max_called_empty_frame, dry_run=args.dry_run, sources=[str(p) for p in paths]))
    if rep is None:
        return
    print(f"fringelive calibrate: bundle {rep['bundle']}, threshold {rep['threshold']:g} (was {rep['previous']:g}) "
          f"on {rep['frames']} labelled frames ({rep['frames_without_particles']} without particles)")
    print(f"  {'threshold':>9s} {'pooled Dice':>11s}" + ("  called on frames without particles: mean / max"
                                                        if rep["called_fraction_without_particles_mean"] else ""))
    for i, t in enumerate(rep["grid"]):
        line = f"  {t:9.2f} {rep['pooled_dice'][i]:11.4f}"
        if rep["called_fraction_without_particles_mean"]:
            line += (f"  {100 * rep['called_fraction_without_particles_mean'][i]:.2f} % / "
                     f"{100 * rep['called_fraction_without_particles_max'][i]:.2f} %")
        print(line + ("  <" if t == rep["threshold"] else ""))


#: statistic -> (its flag, what it chooses, the unit of a cut)
_CHOICES: dict[str, tuple[str, str, str]] = {
    "mean_probability": ("--choose-particle-confidence", "particle confidence (min mean probability)", ""),
    "core_nm": ("--choose-particle-core", "particle core (min diameter)", " nm"),
    "core_fraction": ("--choose-particle-core-fraction", "particle core (min share of the area)", ""),
    "edge_core_fraction": ("--choose-particle-edge-core-fraction",
                           "particle core at the frame edge (min share of the area)", "")}


def _choose_particle_confidence(args: argparse.Namespace, statistic: str, paths: list[Path]) -> None:
    """``--choose-particle-confidence`` (``statistic`` "mean_probability"), ``--choose-particle-core``
    ("core_nm"), ``--choose-particle-core-fraction`` ("core_fraction") or
    ``--choose-particle-edge-core-fraction`` ("edge_core_fraction") on the sample sets ``paths``."""
    flag, what, unit = _CHOICES[statistic]
    key = STATISTICS[statistic]
    rep = _run_choice(args, what, METRICS_KEYS[statistic],
                      lambda: calibrate_particle_confidence(
                          args.bundle, _labelled(paths, flag), threads=args.threads,
                          max_dice_loss=args.max_particle_dice_loss, dry_run=args.dry_run,
                          sources=[str(p) for p in paths], statistic=statistic))
    if rep is None:
        return
    core = f" (pixels >= {rep['core_probability']:g})" if "core_probability" in rep else ""
    print(f"fringelive calibrate: bundle {rep['bundle']}, {what}{core} {rep[key]:g}{unit} (was {rep['previous']:g}"
          f"{unit}) at threshold {rep['threshold']:g} on {rep['frames']} labelled frames "
          f"({rep['frames_with_particles']} with particles)")
    print(f"  {'cut':>5s} {'exact counts':>12s} {'pooled Dice':>11s}")
    for i, c in enumerate(rep["grid"]):
        print(f"  {c:5.2f} {100 * rep['exact_count_share'][i]:11.1f}% {rep['pooled_dice'][i]:11.4f}"
              + ("  <" if c == rep[key] else ""))


def _print_report(name: str, report: dict[str, Any]) -> None:
    cam, cal, cusum = report["camera"], report["dose_calibration"], report["cusum"]
    print(f"fringelive calibrate: bundle {name}, {report['frames']} frames")
    if cal.get("frames"):
        print(f"  dose calibration on {cal['frames']} frames of known dose: noise factor "
              f"{cam['dose_noise_factor']:.4f} (spread {cal['spread_noise_factor']:.3f}), gain "
              f"{cam['camera_gain_counts_per_e']:.4g} counts/e")
    else:
        print(f"  dose calibration: none (no frames of known dose and pixel size); noise factor "
              f"{cam['dose_noise_factor']:.4f}, gain {cam['camera_gain_counts_per_e']}")
    print(f"  {'signal':26s} {'centre':>10s} {'scale':>10s} {'frames':>7s}  direction")
    for n, s in report["signals"].items():
        print(f"  {n:26s} {s['centre']:10.4g} {s['scale']:10.4g} {s['n']:7d}  {s['direction']}")
    for n, got in report.get("skipped_signals", {}).items():
        print(f"  {n:26s} skipped: values on {got} frame(s) only")
    arl = cusum.get("arl_simulated")
    print(f"  CUSUM: k {cusum['k']:g}, h {cusum['h']:.3f} for ARL0 {cusum['target_arl']:g} frames "
          f"({cusum['method']}: simulated ARL0 {arl if arl is not None else 'inf'}, {cusum['alarms']} alarms in "
          f"{cusum['chains']}x{cusum['steps']} frames; Gaussian/Siegmund h {cusum['h_siegmund']})")
    checks = report["checks"]
    for key in ("dose_estimate_vs_metadata", "pixel_size_estimate_vs_metadata"):
        c = checks.get(key)
        if c:
            print(f"  {key.replace('_', ' ')}: median ratio {c['median_ratio']} (5-95 %: {c['p05']}-{c['p95']}) "
                  f"on {c['frames']} frames")
    print(f"  drift statuses of the calibration frames: {checks['statuses']}")
    print(f"  wrote {report['written']}" if report["written"] else "  dry run: card not written")


if __name__ == "__main__":  # pragma: no cover
    from fringelive.cli import main

    sys.exit(main(["calibrate", *sys.argv[1:]]))
