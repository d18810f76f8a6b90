"""``fringelive tracks``: the per-track time series of a recording (``watch --record run.h5``):
a summary per series, and ``--csv DIR`` writes ``<series>_particles.csv``, ``<series>_events.csv``
and ``<series>_registration.csv``. Layout: ``docs/protocol.md`` § Recording."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fringelive.cli import CLIError, summary

__all__ = ["register"]


def cmd_tracks(args: argparse.Namespace) -> int:
    from fringelive.stream.track_tables import read_tables, summarise, write_csv

    if not args.recording.is_file():
        raise CLIError(f"recording not found: {str(args.recording)!r}", 2)
    try:
        tables = read_tables(args.recording, series=args.series)
    except (OSError, ValueError) as e:
        raise CLIError(f"cannot read {args.recording}: {e}", 1) from None
    if not tables:
        which = f"series {args.series!r}" if args.series is not None else "any series"
        raise CLIError(f"{args.recording} has no tracking tables for {which} (was the daemon's [tracking] "
                       "enabled while recording?)", 1)
    for series, t in tables.items():
        print(summarise(series, t))
    if args.csv is not None:
        for p in write_csv(tables, args.csv):
            print(f"wrote {p}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("tracks", help=summary("tracks"),
                       description="Read the tracking tables of a `fringelive watch --record` file: print per "
                                   "series the tracks, lifetimes, merges/splits and mean diameters; --csv writes "
                                   "one CSV per series and table (particles, events, registration).")
    p.add_argument("recording", type=Path, metavar="RUN.h5", help="a recording written by `fringelive watch --record`")
    p.add_argument("--series", default=None, help="only this series (default: all)")
    p.add_argument("--csv", type=Path, default=None, metavar="DIR", help="write CSV files into DIR (created)")
    p.set_defaults(func=cmd_tracks)
