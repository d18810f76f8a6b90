"""``fringelive synth``: simulated raw frames + masks (engines ``abtem`` multislice and ``fast``) into
a sample set, resumable, multiprocess (:mod:`fringelive.training.synth`)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any, Sequence

from fringelive.cli import summary
from fringelive.cli.common import cli_error, command_line
from fringelive.training.fastsim import CameraModel
from fringelive.training.synth import PRESETS as SYNTH_PRESETS
from fringelive.training.synth import SynthConfig, SynthError, synthesize

__all__ = ["register"]

MATERIALS = ("Au", "Ag", "Pt", "CdSe")


def register(sub: Any) -> None:
    p = sub.add_parser("synth", help=summary("synth"),
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
    p.add_argument("--support-pool", type=int, metavar="N",
                   help="with the curated preset's support reuse: distinct carbon unit slabs per grid, seeded by "
                        "--seed (count; 1 = one slab per grid shared by every database, as before v4; preset: 4)")
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
                 "mask_min_area": "mask_min_area_nm2", "seed": "seed", "count": "count",
                 "support_pool": "support_pool"}
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
        raise cli_error(str(e)) from None
    try:
        report = synthesize(cfg, args.out, workers=args.workers, progress=not args.no_progress,
                            command=command_line(args))
    except SynthError as e:
        raise cli_error(str(e)) from None
    except ImportError as e:
        raise cli_error(str(e), 2) from None
    rate = f", {report.samples_per_hour:.0f} samples/hour" if report.simulated else ""
    print(f"wrote {report.path}: {report.count} samples ({report.simulated} simulated now, "
          f"{report.skipped} resumed) in {report.seconds:.1f} s{rate}")
    return 0


def _pair(name: str, values: Sequence[float] | None, default: tuple[float, float]) -> tuple[float, float]:
    """One value (fixed) or two (uniform range) → (lo, hi)."""
    if values is None:
        return default
    if len(values) == 1:
        return (float(values[0]), float(values[0]))
    if len(values) == 2:
        return (float(values[0]), float(values[1]))
    raise cli_error(f"{name} takes one value or a MIN MAX pair, got {len(values)} values")
