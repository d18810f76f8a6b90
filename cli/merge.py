"""``fringelive merge``: one ordered result stream from several daemon workers.

A SUB socket connects to every worker's results PUB (``b"result"`` and ``b"error"`` messages);
:class:`fringelive.stream.merge.Reorderer` puts them back into frame order per series; a PUB
socket republishes them. Messages pass through byte for byte (the same ZeroMQ frames are sent
again, nothing is re-encoded). Topologies and ordering rules: ``docs/scaling.md``.

:class:`ResultMerger` is the resource (a context manager with one thread that owns both
sockets); ``fringelive merge`` runs one until SIGINT/SIGTERM (or ``--duration``), then releases
what it still holds, and prints its counters.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from fringelive.cli import CLIError, summary
from fringelive.cli.argtypes import positive_float, positive_int
from fringelive.daemon.metrics import MetricsServer
from fringelive.stream.merge import LATE_POLICIES, ReorderSettings
from fringelive.stream.merger import DEFAULT_HWM, DEFAULT_MERGE_ENDPOINT, MergerError, ResultMerger, format_stats

__all__ = ["DEFAULT_MERGE_ENDPOINT", "MergerError", "ResultMerger", "register"]


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def register(sub: Any) -> None:
    p = sub.add_parser(
        "merge", help=summary("merge"),
        description="Subscribe to the results PUB of every worker (--from), put results and errors back "
                    "into frame order per series, republish them unchanged on one PUB (--endpoint). A frame "
                    "that never arrives is given up after --gap-timeout; duplicates are dropped; see "
                    "docs/scaling.md. Runs until SIGINT/SIGTERM (or --duration), then prints its counters.")
    p.add_argument("--from", dest="sources", action="append", required=True, metavar="EP",
                   help="a worker's results endpoint, e.g. tcp://10.0.0.2:5556 (a ZeroMQ address, no unit); "
                        "repeat for every worker")
    p.add_argument("--endpoint", default=DEFAULT_MERGE_ENDPOINT, metavar="EP",
                   help=f"where to publish the merged stream, a ZeroMQ address to bind (tcp port 0 = "
                        f"OS-assigned, printed; default: {DEFAULT_MERGE_ENDPOINT})")
    p.add_argument("--gap-timeout", type=positive_float, default=ReorderSettings.gap_timeout_s, metavar="S",
                   help="how long a frame may wait for a missing earlier one before that is given up "
                        f"(seconds, default: {ReorderSettings.gap_timeout_s:g})")
    p.add_argument("--max-frames", type=positive_int, default=ReorderSettings.max_frames, metavar="N",
                   help=f"frames held for reordering, all series together (frames, default: "
                        f"{ReorderSettings.max_frames})")
    p.add_argument("--max-mb", type=positive_float, default=ReorderSettings.max_bytes / 2**20, metavar="MIB",
                   help=f"bytes held for reordering, all series together (MiB, default: "
                        f"{ReorderSettings.max_bytes / 2**20:g})")
    p.add_argument("--late", choices=LATE_POLICIES, default=ReorderSettings.late,
                   help="a frame arriving after its index was given up: drop it (the stream stays in order) "
                        "or forward it out of order; both are counted (a policy name, no unit; default: drop)")
    p.add_argument("--series-idle", type=positive_float, default=ReorderSettings.series_idle_s, metavar="S",
                   help="forget a series after this long without a message; the name may then start again "
                        f"at any index (seconds, default: {ReorderSettings.series_idle_s:g})")
    p.add_argument("--hwm", type=positive_int, default=DEFAULT_HWM, metavar="N",
                   help=f"high-water mark of the SUB (per worker) and the PUB (per subscriber) "
                        f"(messages, default: {DEFAULT_HWM})")
    p.add_argument("--metrics-port", type=int, default=-1, metavar="N",
                   help="serve Prometheus metrics (fringelive_merge_*) on http://127.0.0.1:N/metrics "
                        "(TCP port; 0 = OS-assigned; default: -1 = off)")
    p.add_argument("--duration", type=positive_float, metavar="S",
                   help="stop after this long (seconds, default: run until SIGINT/SIGTERM)")
    p.set_defaults(func=run_merge)


def run_merge(args: argparse.Namespace) -> int:
    try:
        settings = ReorderSettings(gap_timeout_s=args.gap_timeout, max_frames=args.max_frames,
                                   max_bytes=max(1, int(args.max_mb * 2**20)), late=args.late,
                                   series_idle_s=args.series_idle)
    except ValueError as e:
        raise CLIError(str(e), 2) from None
    if not -1 <= args.metrics_port <= 65535:
        raise CLIError(f"--metrics-port must be -1 (off) or a TCP port 0..65535, got {args.metrics_port}", 2)
    stop: dict[str, Any] = {"signal": None}

    def on_signal(signum: int, frame: Any) -> None:  # only sets a flag: safe in a signal handler
        stop["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    metrics_server = None
    try:
        registry = None
        if args.metrics_port >= 0:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry()
        try:
            merger = ResultMerger(args.sources, args.endpoint, settings, hwm=args.hwm, registry=registry).start()
        except ValueError as e:
            raise CLIError(str(e), 2) from None
        try:
            if registry is not None:
                try:
                    metrics_server = MetricsServer(registry, "127.0.0.1", args.metrics_port)
                except OSError as e:
                    raise CLIError(f"--metrics-port: cannot serve HTTP on 127.0.0.1:{args.metrics_port}: {e}", 2) \
                        from None
            print(f"fringelive merge: publishing on {merger.endpoint}; from {', '.join(args.sources)}", flush=True)
            if metrics_server is not None:
                print(f"fringelive merge: metrics at {metrics_server.url}", flush=True)
            t_end = None if args.duration is None else time.monotonic() + args.duration
            while stop["signal"] is None and (t_end is None or time.monotonic() < t_end):
                try:
                    merger.wait(0.1)
                except MergerError as e:
                    raise CLIError(str(e), 1) from None
        except BaseException:
            merger.close(raise_errors=False)
            raise
        try:
            stats = merger.close()
        except Exception as e:  # noqa: BLE001 - a failed thread is a runtime failure
            raise CLIError(str(e), 1) from None
    finally:
        if metrics_server is not None:
            metrics_server.close()
        for s, h in previous.items():
            signal.signal(s, h)
    print(format_stats(stats), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from fringelive.cli import main

    sys.exit(main(["merge", *sys.argv[1:]]))
