"""``fringelive calibrate camera`` (also ``fringelive calibrate-camera``): the camera's gain,
offset, read noise and noise factor by photon transfer (``docs/drift.md`` § The camera), printed
as the daemon's ``[camera]`` section with the fit's residuals, or written into a config file.

    fringelive calibrate camera --dark DARK... --flat LABEL=FILE... [--flat LABEL=FILE...]
                                [--read-noise COUNTS] [--noise-factor F] [--name NAME]
                                [--write CONFIG.toml] [--json]
    fringelive calibrate camera --stream FILE_OR_DIR...          # a recorded stream of frames

Files are read as ``fringelive send`` reads them (.npy, .tif, .dm3/.dm4, .ser/.emd; a directory
means every supported file in it). Exit codes: 0 done; 1 the data cannot determine the camera
(the message says what to acquire); 2 usage error (unreadable files, bad arguments).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from fringelive.cli import CLIError, summary
from fringelive.daemon.camera import write_camera_section
from fringelive.engine.camera import CameraCalibrationError, StreamCameraFit, calibrate_camera
from fringelive.engine.readers import ReaderError, SUPPORTED_SUFFIXES, read_frames


def register(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate-camera", help=summary("calibrate-camera"),
        description="Fit the camera's gain (counts/e), offset (counts), read noise and noise factor from dark "
                    "frames plus flat frames at several illuminations (or from a recorded stream) and print the "
                    "daemon's [camera] section with the fit's residuals. Also spelled `fringelive calibrate camera`.")
    p.add_argument("--dark", nargs="+", type=Path, default=[], metavar="FILE",
                   help="dark frames (beam blanked, same exposure and readout mode): files or directories")
    p.add_argument("--flat", action="append", default=[], metavar="LABEL=FILE",
                   help="flat frames (no specimen) of one illumination level, e.g. 25pc=flat25.dm4; repeat per level "
                        "and per file (the label groups the files)")
    p.add_argument("--stream", nargs="+", type=Path, default=[], metavar="FILE",
                   help="a recorded stream of frames at >= 2 doses instead of darks and flats (less precise)")
    p.add_argument("--read-noise", type=float, default=None, metavar="COUNTS",
                   help="read noise from the data sheet (rms counts); needed when there are no dark frames")
    p.add_argument("--noise-factor", type=float, default=None, metavar="F",
                   help="true / apparent shot-noise electrons if known (detector MTF; default: fitted)")
    p.add_argument("--name", default="", help="camera name written into [camera] (free text)")
    p.add_argument("--write", type=Path, default=None, metavar="CONFIG.toml",
                   help="replace (or append) the [camera] section of this daemon config file, atomically")
    p.add_argument("--json", action="store_true", help="print the fit as JSON (flag, no unit)")
    p.set_defaults(func=run_calibrate_camera)


def _read(paths: list[Path], what: str) -> list[np.ndarray]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in SUPPORTED_SUFFIXES)
        else:
            files.append(p)
    if not files:
        raise CLIError(f"{what}: no image files in {[str(p) for p in paths]}", code=2)
    try:
        return [f.pixels for path in files for f in read_frames(path)]
    except (ReaderError, OSError, ValueError) as e:
        raise CLIError(f"{what}: {e}", code=2) from None


def run_calibrate_camera(args: argparse.Namespace) -> int:
    if args.stream and (args.flat or args.dark):
        raise CLIError("give either --stream or --dark/--flat, not both", code=2)
    if not args.stream and not args.flat:
        raise CLIError("nothing to calibrate from: give --dark DARK... --flat LABEL=FILE... (flat frames at >= 2 "
                       "illuminations) or --stream FILE...", code=2)
    try:
        if args.stream:
            # frame pairs of one scene and dose where the stream has them, else single frames
            fit = StreamCameraFit(read_noise_counts=args.read_noise, noise_factor=args.noise_factor)
            for frame in _read(args.stream, "--stream"):
                fit.add_frame(frame)
            res = fit.result()
            if res is None or not res.confident:
                why = "too few usable frames" if res is None else "; ".join(res.reasons)
                raise CameraCalibrationError(
                    f"the stream does not determine the camera ({why}). Record >= 100 frames at >= 2 doses spanning "
                    "a factor 1.5 or more with some empty background, or use --dark and --flat frames")
            camera, toml, report = res.camera(args.name), _stream_toml(res, args.name), res.to_dict()
        else:
            levels: dict[str, list[np.ndarray]] = {}
            for item in args.flat:
                label, sep, path = item.partition("=")
                if not sep or not label or not path:
                    raise CLIError(f"--flat must be LABEL=FILE, got {item!r}", code=2)
                levels.setdefault(label, []).extend(_read([Path(path)], f"--flat {label}"))
            darks = _read(args.dark, "--dark") if args.dark else None
            cal = calibrate_camera(darks, levels, read_noise_counts=args.read_noise, noise_factor=args.noise_factor,
                                   name=args.name)
            camera, toml = cal.camera, cal.to_toml()
            report = {"fit": cal.fit.to_dict(), "residuals": list(cal.residuals),
                      "dark_offset_counts": cal.dark_offset_counts, "dark_read_noise_counts": cal.dark_read_noise_counts}
    except CameraCalibrationError as e:
        raise CLIError(f"calibrate camera: {e}", code=1) from None
    if args.json:
        print(json.dumps({"camera": camera.to_dict(), **report}, indent=2, default=float))
    else:
        print(toml, end="")
    if args.write is not None:
        write_camera_section(args.write, toml)
        print(f"wrote [camera] to {args.write}")
    return 0


def _stream_toml(res: Any, name: str) -> str:
    c = res.camera(name)
    lines = ["[camera]"] + ([f'name = "{name}"'] if name else [])
    lines += [f"gain_counts_per_e = {c.gain_counts_per_e:.5g}    # ± {res.gain_se:.2g} (1σ), from a recorded stream "
              f"({res.frames} {'frame pairs' if res.method == 'temporal' else 'frames'})",
              f"offset_counts = {c.offset_counts:.5g}    # ± {res.offset_se:.2g} (1σ), from {res.offset_method}",
              f"read_noise_counts = {c.read_noise_counts:.4g}",
              f"noise_factor = {c.noise_factor:.4g}    # ± {res.noise_factor_se:.2g} (1σ)"]
    lines += [f"# assumption: {a}" for a in res.assumptions]
    return "\n".join(lines) + "\n"
