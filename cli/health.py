"""``fringelive health``: is a running daemon serving? For Docker ``HEALTHCHECK``, systemd and
monitoring scripts.

Checks, all within one ``--timeout`` (seconds):

1. the control socket answers ``{"cmd": "ping"}`` with ``{"ok": true, "pong": true}``;
2. ``{"cmd": "status"}`` reports ``state == "running"`` and no failed daemon thread;
3. with a metrics URL: ``GET /metrics`` answers HTTP 200 with at least one ``fringelive_`` sample.

Endpoints come from ``--control``/``--metrics``, else from the daemon's ``--config`` file (a bind
address such as ``tcp://*:5557`` or metrics host ``0.0.0.0`` is probed on loopback), else the
defaults ``tcp://127.0.0.1:5557`` (metrics then unchecked). Exit 0 and one ``ok`` line on stdout
when healthy; otherwise exit 1 and one line on stderr naming the endpoint and what failed. Every
failure, a bad config file included, exits 1, because Docker reserves exit code 2 of a health
check (only a malformed command line, refused by argparse, exits 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fringelive.cli import CLIError, summary
from fringelive.daemon.config import ConfigError, load_config
from fringelive.stream.health import (DEFAULT_CONTROL, HealthError, HealthTargets, check_health, client_endpoint,
                                      metrics_url, targets_from_config)

__all__ = ["HealthError", "HealthTargets", "check_health", "client_endpoint", "metrics_url", "register",
           "targets_from_config"]


# --- CLI ----------------------------------------------------------------------------------------

def register(sub: Any) -> None:
    p = sub.add_parser(
        "health", help=summary("health"),
        description="Ping the daemon's control socket, check that its status is 'running' with no failed "
                    "thread and, with a metrics URL, that /metrics answers with fringelive_ series. For Docker "
                    "HEALTHCHECK, systemd and monitoring. Exit 0 when healthy, 1 otherwise (one line naming "
                    "the endpoint).")
    p.add_argument("--config", metavar="FILE", type=Path,
                   help="the daemon's TOML config: probe its control endpoint and, when enabled, its metrics "
                        "(bind addresses * / 0.0.0.0 are probed on 127.0.0.1); a path, no unit")
    p.add_argument("--control", metavar="EP",
                   help=f"control endpoint to connect to, e.g. {DEFAULT_CONTROL} (a ZeroMQ address, no unit; "
                        f"default: from --config, else {DEFAULT_CONTROL})")
    p.add_argument("--metrics", metavar="URL",
                   help="metrics URL to scrape, e.g. http://127.0.0.1:9108/metrics (an HTTP URL, no unit; default: "
                        "from --config when metrics are enabled there, else not checked)")
    p.add_argument("--timeout", metavar="S", type=float, default=5.0,
                   help="seconds for all checks together (default: 5)")
    p.add_argument("--curve-server-key", metavar="FILE", type=Path,
                   help="CURVE on control: the daemon's public certificate (server.key; default with --config: "
                        "curve.server_secret_key); a path, no unit")
    p.add_argument("--curve-client-key", metavar="FILE", type=Path,
                   help="CURVE on control: this client's secret certificate (client.key_secret); a path, no unit")
    p.set_defaults(func=run_health)


def build_targets(args: argparse.Namespace) -> HealthTargets:
    """Targets from the options (explicit endpoints win over ``--config``). Raises ``CLIError``
    (exit 1)."""
    try:
        if args.config is not None:
            try:
                cfg = load_config(args.config)
            except ConfigError as e:
                raise ValueError(str(e)) from None
            base = targets_from_config(cfg, client_key=args.curve_client_key, server_key=args.curve_server_key)
        else:
            base = HealthTargets(DEFAULT_CONTROL)
        control = client_endpoint(args.control, "--control") if args.control else base.control
        metrics = args.metrics if args.metrics else base.metrics
        curve = base.curve
        if args.curve_server_key is not None or args.curve_client_key is not None:
            if args.curve_client_key is None or (args.curve_server_key is None and curve is None):
                raise ValueError("CURVE needs both --curve-server-key and --curve-client-key")
            curve = (args.curve_server_key or curve[0], args.curve_client_key)  # type: ignore[index]
        return HealthTargets(control, metrics, curve)
    except ValueError as e:
        raise CLIError(f"health: {e}", 1) from None


def run_health(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        raise CLIError(f"health: --timeout must be > 0 s, got {args.timeout}", 1)
    targets = build_targets(args)
    try:
        summary = check_health(targets, args.timeout)
    except HealthError as e:
        raise CLIError(f"health: {e}", 1) from None
    print(f"fringelive health: ok: {summary}", flush=True)
    return 0
