"""Is a running daemon serving? Control ping + status and an optional /metrics scrape within one
timeout (``fringelive health``: Docker HEALTHCHECK, systemd, monitoring)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fringelive.daemon.control import control_request
from fringelive.stream.camera_text import camera_text

__all__ = ["DEFAULT_CONTROL", "HealthError", "HealthTargets", "check_health", "client_endpoint", "metrics_url", "targets_from_config"]


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
    if status.get("camera") is not None:
        line += f"; {status['camera']}"
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
    journal = status.get("journal") or {}
    if journal.get("degraded"):
        raise HealthError(f"control {ep}: results journal {journal.get('path')} degraded (results are still "
                          f"published, not journalled): {journal.get('last_error')}")
    bundle = (status.get("bundle") or {}).get("name")
    queue = status.get("queue") or {}
    return {"state": state, "bundle": bundle, "uptime_s": float(status.get("uptime_s") or 0.0),
            "processed": (status.get("frames") or {}).get("processed", 0),
            "queue": f"{queue.get('depth', '?')}/{queue.get('size', '?')}",
            "camera": camera_text(status["camera"]) if "camera" in status else None}


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
