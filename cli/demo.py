"""``fringelive demo``: the whole product in one command, ending by itself.

Starts the daemon in-process on the default bundle (or ``--bundle``) with OS-assigned loopback
ports, streams frames from a :class:`~fringelive.stream.camera_sim.SimulatedCamera` over the real
wire protocol, subscribes to the results, prints a live line per frame (frame rate, latency,
particle count, drift status), and finally writes an overlay PNG of the last frame and a CSV of
all results. With the sweep on, dose and pixel size change mid-run so drift flags can appear.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from fringelive.cli import CLIError, summary
from fringelive.stream.demo import DemoError, run_demo

__all__ = ["register", "run_demo"]

log = logging.getLogger(__name__)

#: ``demo --help`` text: plain prose (argparse shows it verbatim, so no reStructuredText).
DESCRIPTION = ("The whole product in one command, ending by itself: start the daemon in this process on the "
               "default bundle (or --bundle) with OS-assigned loopback ports, stream simulated camera frames "
               "(--frame-px square, 2048 px by default) over the real wire protocol, print one live line per "
               "result (frame rate, latency, particle count, drift status), then write overlay.png (the last "
               "frame with its mask) and results.csv (every result) to --out. With the sweep on, dose and "
               "pixel size change mid-run so drift flags can appear; --no-sweep keeps them constant.")


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help=summary("demo"),
                       description=DESCRIPTION)
    p.add_argument("--duration", type=float, default=60.0, metavar="S", help="seconds of streaming (default: 60)")
    p.add_argument("--frame-px", type=int, default=2048, metavar="PX", help="frame side in pixels (default: 2048; 4096 = OneView)")
    p.add_argument("--pixel-size-nm", type=float, default=0.02, metavar="NM", help="nominal pixel size, nm/pixel (default: 0.02)")
    p.add_argument("--dose", type=float, default=423.0, metavar="E_PER_A2", help="nominal electron dose, e/Å² (default: 423)")
    p.add_argument("--no-sweep", action="store_true", help="keep dose and pixel size constant")
    p.add_argument("--max-frames", type=int, default=0, metavar="N", help="stop after this many frames (count; 0 = no limit)")
    p.add_argument("--bundle", type=Path, default=None, metavar="DIR", help="bundle directory (default: the built-in default bundle)")
    p.add_argument("--out", type=Path, default=Path("demo-out"), metavar="DIR", help="directory for overlay.png and results.csv (default: demo-out)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed of the simulated scenes (integer, default: 0)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.frame_px < 64 or args.frame_px > 8192:
        raise CLIError(f"--frame-px must be in 64..8192 pixels, got {args.frame_px}", 2)
    if args.duration <= 0:
        raise CLIError(f"--duration must be > 0 s, got {args.duration}", 2)
    try:
        summary = run_demo(duration_s=args.duration, frame_px=args.frame_px, pixel_size_nm=args.pixel_size_nm,
                           dose=args.dose, sweep=not args.no_sweep, bundle=args.bundle, out=args.out,
                           seed=args.seed, max_frames=args.max_frames or None)
    except DemoError as e:
        raise CLIError(str(e), 2) from None
    return 0 if summary["processed"] > 0 else 1


# --- overlay image ---------------------------------------------------------------------------


