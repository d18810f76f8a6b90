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
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fringelive.cli import CLIError
from fringelive.daemon.control import control_request
from fringelive.daemon.config import ConfigError, load_config

__all__ = ["HealthError", "HealthTargets", "check_health", "client_endpoint", "metrics_url", "register",
           "targets_from_config"]

DEFAULT_CONTROL = "tcp://127.0.0.1:5557"
#: A Prometheus text-format sample line of one of the daemon's series.
_SAMPLE_RE = re.compile(rb"^(fringelive_[A-Za-z0-9_:]*)(?:\{| )", re.MULTILINE)
_TCP_RE = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):(?P<port>\*|\d+)$")
_WILDCARD_HOSTS = {"*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "::1"}


class HealthError(Exception):
    """The daemon is not healthy; the message (one line) names the endpoint and what failed."""


@dataclass(frozen=True)
class HealthTargets:
    """What to probe. ``control``: a ZeroMQ endpoint to connect to; ``metrics``: an HTTP URL or
    None (not checked); ``curve``: (server public key file, client secret key file) when the
    control socket requires CURVE (a server ``.key_secret`` file also holds the public key)."""

    control: str
    metrics: str | None = None
    curve: tuple[Path, Path] | None = None

    def __post_init__(self) -> None:
        if not self.control.startswith(("tcp://", "ipc://")):
            raise ValueError(f"control endpoint must be tcp://HOST:PORT or ipc://PATH, got {self.control!r}")
        if self.metrics is not None and not self.metrics.startswith(("http://", "https://")):
            raise ValueError(f"metrics URL must start with http:// or https://, got {self.metrics!r}")


def client_endpoint(endpoint: str, key: str = "control.endpoint") -> str:
    """The address a local client connects to for a daemon socket bound at ``endpoint``:
    ``tcp://*:P`` and ``tcp://0.0.0.0:P`` → ``tcp://127.0.0.1:P``, ``tcp://[::]:P`` →
    ``tcp://[::1]:P``; concrete tcp addresses and ``ipc://`` unchanged. Raises ``ValueError``
    for an OS-assigned port (0 or ``*``) or ``inproc://``, which no other process can reach."""
    if endpoint.startswith("ipc://"):
        return endpoint
    if endpoint.startswith("inproc://"):
        raise ValueError(f"{key} {endpoint!r} is in-process only; another process cannot probe it")
    m = _TCP_RE.match(endpoint)
    if not m:
        raise ValueError(f"{key} must be tcp://HOST:PORT or ipc://PATH, got {endpoint!r}")
    host, port = m.group("host"), m.group("port")
    if port in ("0", "*"):
        raise ValueError(f"{key} {endpoint!r} has an OS-assigned port; pass the bound address with --control")
    return f"tcp://{_WILDCARD_HOSTS.get(host, host)}:{port}"


def metrics_url(host: str, port: int) -> str:
    """``http://HOST:PORT/metrics`` for the daemon's metrics server bound at ``host``:``port``
    (a wildcard host is probed on loopback). Raises ``ValueError`` for port 0 (OS-assigned)."""
    if port == 0:
        raise ValueError("metrics.port is 0 (OS-assigned); pass the bound URL with --metrics")
    host = _WILDCARD_HOSTS.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def targets_from_config(cfg: Any, *, client_key: Path | None = None, server_key: Path | None = None) -> HealthTargets:
    """Probe targets for a daemon run with ``cfg`` (a :class:`~fringelive.daemon.config.DaemonConfig`):
    its control endpoint and, when enabled, its metrics URL. When ``[curve] control = true`` the
    client's secret key file ``client_key`` is required; the server key defaults to
    ``curve.server_secret_key``. Raises ``ValueError`` with a one-line reason."""
    control = client_endpoint(cfg.control.endpoint)
    metrics = metrics_url(cfg.metrics.host, cfg.metrics.port) if cfg.metrics.enabled else None
    curve = None
    if cfg.curve.enabled and cfg.curve.control:
        if client_key is None:
            raise ValueError("the control socket requires CURVE ([curve] control = true): pass --curve-client-key FILE "
                             "(a client .key_secret whose public key is in curve.authorized_clients_dir)")
        curve = (server_key or Path(cfg.curve.server_secret_key), client_key)
    return HealthTargets(control, metrics, curve)


def check_health(targets: HealthTargets, timeout_s: float = 5.0) -> str:
    """Probe the daemon; return a one-line summary when healthy, else raise :class:`HealthError`.
    The whole check finishes within about ``timeout_s`` seconds."""
    if not timeout_s > 0:
        raise ValueError(f"timeout must be > 0 s, got {timeout_s!r}")
    deadline = time.monotonic() + timeout_s
    status = _check_control(targets, deadline, timeout_s)
    line = (f"control {targets.control} {status['state']} (bundle {status['bundle']!r}, uptime {status['uptime_s']:.0f} s, "
            f"{status['processed']} frame(s) processed, queue {status['queue']})")
    if targets.metrics is not None:
        n = _check_metrics(targets.metrics, deadline, timeout_s)
        line += f"; metrics {targets.metrics} HTTP 200 ({n} fringelive_ series)"
    return line


def _remaining(deadline: float, timeout_s: float, where: str, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise HealthError(f"{where}: timed out after {timeout_s:g} s before {what}")
    return left


def _check_control(targets: HealthTargets, deadline: float, timeout_s: float) -> dict[str, Any]:
    import zmq


    ep = targets.control
    hint = " (check the CURVE keys)" if targets.curve else " (is `fringelive serve` running there?)"
    curve = None if targets.curve is None else (str(targets.curve[0]), str(targets.curve[1]))
    try:
        pong = control_request(ep, "ping", timeout_s=_remaining(deadline, timeout_s, f"control {ep}", "ping"),
                               curve=curve)
        if pong is None:
            raise HealthError(f"control {ep}: no reply to ping within {timeout_s:g} s{hint}")
        if pong.get("ok") is not True or pong.get("pong") is not True:
            raise HealthError(f"control {ep}: unexpected ping reply {pong!r}")
        status = control_request(ep, "status", timeout_s=_remaining(deadline, timeout_s, f"control {ep}", "status"),
                                 curve=curve)
    except zmq.ZMQError as e:
        raise HealthError(f"control {ep}: {e}") from None
    except ValueError as e:  # CURVE key files, or a reply that is not JSON
        raise HealthError(f"control {ep}: {e}") from None
    if status is None:
        raise HealthError(f"control {ep}: answered ping but no reply to status within {timeout_s:g} s")
    if status.get("ok") is not True:
        raise HealthError(f"control {ep}: status failed: {status.get('error', status)!r}")
    state = status.get("state")
    if state != "running":
        raise HealthError(f"control {ep}: daemon state is {state!r}, not 'running'")
    errors = status.get("errors") or []
    if errors:
        raise HealthError(f"control {ep}: daemon thread failed: {errors[0]}")
    bundle = (status.get("bundle") or {}).get("name")
    queue = status.get("queue") or {}
    return {"state": state, "bundle": bundle, "uptime_s": float(status.get("uptime_s") or 0.0),
            "processed": (status.get("frames") or {}).get("processed", 0),
            "queue": f"{queue.get('depth', '?')}/{queue.get('size', '?')}"}


def _check_metrics(url: str, deadline: float, timeout_s: float) -> int:
    """Number of distinct ``fringelive_`` series names in the exposition at ``url``."""
    import urllib.error
    import urllib.request

    # No proxy: a health check of a local daemon must not go through http_proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=_remaining(deadline, timeout_s, f"metrics {url}", "scraping")) as resp:
            code = resp.status
            body = resp.read(16 * 1024 * 1024)
    except urllib.error.HTTPError as e:
        raise HealthError(f"metrics {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise HealthError(f"metrics {url}: cannot scrape: {reason}") from None
    if code != 200:
        raise HealthError(f"metrics {url}: HTTP {code}")
    names = set(_SAMPLE_RE.findall(body))
    if not names:
        raise HealthError(f"metrics {url}: HTTP 200 but no fringelive_ series in the response")
    return len(names)


# --- CLI ----------------------------------------------------------------------------------------

def register(sub: Any) -> None:
    p = sub.add_parser(
        "health", help="check that a running daemon serves (exit 0) or say what failed (exit 1)",
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
