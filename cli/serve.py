"""``fringelive serve``: run the streaming daemon until SIGTERM/SIGINT.

With no ``--config`` it runs on the embedded defaults (CPU, loopback, the installed default
bundle). Options override the config file. At start it prints the bound endpoints (one per line,
``NAME ADDRESS``) to stdout. SIGTERM/SIGINT stop ingest, drain the queue within
``lifecycle.drain_timeout_s``, publish the last results and exit 0.

Exit codes: 0 clean stop, 1 a daemon thread failed, 2 bad configuration, bundle or backend.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

from fringelive.bundle.bundle_io import BundleError
from fringelive.cli import CLIError, summary
from fringelive.daemon.config import ConfigError, DaemonConfig, load_config
from fringelive.daemon.protocol import (DEFAULT_CONTROL_ENDPOINT, DEFAULT_INGEST_ENDPOINT, DEFAULT_METRICS_ADDRESS as _METRICS,
                                        DEFAULT_RESULTS_ENDPOINT)
from fringelive.daemon.server import Daemon, DaemonError
from fringelive.engine.backends import BackendUnavailable

log = logging.getLogger("fringelive.daemon")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve", help=summary("serve"),
        description="Receive camera frames (ZeroMQ PULL), segment them, publish results (ZeroMQ PUB); "
                    "control on a REP socket, Prometheus metrics over HTTP. Stops on SIGTERM/SIGINT "
                    "after draining queued frames. Default endpoints (no --config): ingest "
                    f"{DEFAULT_INGEST_ENDPOINT} (send here), results {DEFAULT_RESULTS_ENDPOINT} (watch "
                    f"here), control {DEFAULT_CONTROL_ENDPOINT}, metrics http://{_METRICS[0]}:{_METRICS[1]}"
                    "/metrics. The bound addresses are printed at start.")
    p.add_argument("--config", metavar="FILE", help="TOML config file (default: embedded CPU defaults; "
                   "see deploy/examples/fringelive.toml)")
    p.add_argument("--bundle", metavar="DIR", action="append",
                   help="model bundle directory (a path, no unit; overrides [model] bundle/bundles); repeat it "
                        "to serve several bundles: each frame goes to the one whose envelope fits its metadata")
    p.add_argument("--ingest-mode", choices=("push", "ack"), help="push: PULL, at-most-once; ack: ROUTER, "
                   "acknowledged frames, at-least-once with dedupe for `send --ack` (overrides [ingest] mode; "
                   "docs/protocol.md, Delivery guarantees)")
    p.add_argument("--ingest", metavar="EP", help=f"ingest PULL endpoint (default: {DEFAULT_INGEST_ENDPOINT}; "
                   "port 0 = OS-assigned; overrides [ingest] endpoint)")
    p.add_argument("--results", metavar="EP", help=f"results PUB endpoint (default: {DEFAULT_RESULTS_ENDPOINT}; "
                   "port 0 = OS-assigned; overrides [results] endpoint)")
    p.add_argument("--control", metavar="EP", help=f"control REP endpoint (default: {DEFAULT_CONTROL_ENDPOINT}; "
                   "port 0 = OS-assigned; overrides [control] endpoint)")
    p.add_argument("--metrics-port", metavar="N", type=int, help="Prometheus HTTP port number "
                   f"(TCP port, default: {_METRICS[1]} on {_METRICS[0]}; 0 = OS-assigned, -1 = disable metrics; "
                   "overrides [metrics] port)")
    p.add_argument("--backend", metavar="KIND", help="inference backend: auto (default: the fastest installed and "
                   "verified here, reason logged), onnxruntime, openvino, onnxruntime-cuda, onnxruntime-tensorrt, "
                   "tensorrt, torch or triton (a name, no unit; overrides [model] backend)")
    p.add_argument("--precision", metavar="P", help="network arithmetic: fp32 (default), bf16 or fp16; a non-fp32 "
                   "precision serves (openvino) only after its parity check against fp32, else fp32 with a "
                   "logged reason (overrides [model] precision)")
    p.add_argument("--follow", metavar="DIR", action="append",
                   help="also follow this folder for frame files the microscope writes (.tif, .dm4, .emd, .npy, ...; "
                        "a [[source]] kind = \"folder\" with default keys; repeatable; docs/acquisition.md)")
    p.add_argument("--drain-timeout", metavar="S", type=float, help="seconds to finish queued frames at "
                   "shutdown (overrides [lifecycle] drain_timeout_s)")
    p.set_defaults(func=run_serve)


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`DaemonConfig` from ``--config`` and the override options; raises
    :class:`ConfigError`."""

    cfg = load_config(args.config) if args.config else DaemonConfig()
    try:
        if args.bundle:
            from pathlib import Path

            paths = [Path(b).expanduser().resolve() for b in args.bundle]
            cfg = cfg.override("model", bundle=paths[0], bundles=tuple(paths[1:]))
        if args.backend is not None:
            cfg = cfg.override("model", backend=args.backend)
        if getattr(args, "precision", None) is not None:
            cfg = cfg.override("model", precision=getattr(args, "precision", None))
        if args.ingest is not None:
            cfg = cfg.override("ingest", endpoint=args.ingest)
        if getattr(args, "ingest_mode", None) is not None:
            cfg = cfg.override("ingest", mode=getattr(args, "ingest_mode", None))
        if args.results is not None:
            cfg = cfg.override("results", endpoint=args.results)
        if args.control is not None:
            cfg = cfg.override("control", endpoint=args.control)
        if args.metrics_port is not None:
            cfg = (cfg.override("metrics", enabled=False) if args.metrics_port == -1
                   else cfg.override("metrics", enabled=True, port=args.metrics_port))
        if args.drain_timeout is not None:
            cfg = cfg.override("lifecycle", drain_timeout_s=args.drain_timeout)
        if getattr(args, "follow", None):
            cfg = follow_folders(cfg, getattr(args, "follow", None))
    except ConfigError as e:
        raise ConfigError(f"{e} (from the command line)") from None
    cfg.model.bundle_paths()  # fail now when there is no bundle at all
    return cfg


def follow_folders(cfg: DaemonConfig, folders: list[str]) -> DaemonConfig:
    """``cfg`` with one folder source per ``--follow DIR`` added after its ``[[source]]`` tables."""
    from pathlib import Path

    from fringelive.daemon.sources.config import check_sources
    from fringelive.daemon.sources.folder import FolderSourceConfig

    added = []
    for folder in folders:
        try:
            added.append(FolderSourceConfig(path=Path(folder).expanduser().resolve()))
        except ConfigError as e:
            raise ConfigError(f"--follow {folder!r}: {e}") from None
    sources = tuple(cfg.source) + tuple(added)
    check_sources(sources)
    return cfg.replace(source=sources)


def run_serve(args: argparse.Namespace) -> int:


    stop: dict[str, Any] = {"signal": None}

    def on_signal(signum: int, frame: Any) -> None:  # only sets a flag: safe in a signal handler
        stop["signal"] = signum

    # Installed before the (seconds-long) start, so a SIGTERM during start still stops cleanly.
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        cfg = build_config(args)
        daemon = Daemon(cfg)
        daemon.start()
    except (ConfigError, BundleError, BackendUnavailable) as e:
        _restore(previous)
        raise CLIError(str(e), 2) from None
    except BaseException:
        _restore(previous)
        raise
    try:
        print("fringelive serve: running; endpoints:", flush=True)
        for name, address in daemon.endpoints.items():
            print(f"  {name:8s} {address}", flush=True)
        while stop["signal"] is None:
            daemon.wait(0.2)
        log.info("received %s: stopping", signal.Signals(stop["signal"]).name)
        counts = daemon.stop()
    except DaemonError as e:
        daemon.stop(raise_errors=False)
        raise CLIError(str(e), 1) from None
    finally:
        _restore(previous)
    print(f"fringelive serve: stopped; received {counts['received']}, processed {counts['processed']}, "
          f"dropped {sum(counts['dropped'].values())}, rejected {sum(counts['rejected'].values())}", flush=True)
    return 0


def _restore(handlers: dict[Any, Any]) -> None:
    for s, h in handlers.items():
        signal.signal(s, h)


if __name__ == "__main__":  # pragma: no cover
    from fringelive.cli import main

    sys.exit(main(["serve", *sys.argv[1:]]))
