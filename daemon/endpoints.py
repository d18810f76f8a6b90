"""ZeroMQ endpoint checks for the config (``tcp://HOST:PORT`` with port 0 or ``*`` = OS-assigned,
``ipc://PATH``, ``inproc://NAME``), whether an endpoint is loopback-only, and :class:`ConfigError`."""

from __future__ import annotations

import ipaddress
import re

__all__ = ["ConfigError", "is_loopback_endpoint", "parse_endpoint"]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the bad value."""


_TCP_RE = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):(?P<port>\*|\d+)$")


def parse_endpoint(endpoint: str, *, bind: bool, key: str) -> str:
    """Check a ZeroMQ endpoint and return it. ``tcp://HOST:PORT`` (a bind may use port ``0`` or
    ``*`` for an OS-assigned port and host ``*`` for all interfaces), ``ipc://PATH``,
    ``inproc://NAME``. Raises :class:`ConfigError` naming ``key``."""
    if not isinstance(endpoint, str):
        raise ConfigError(f"{key} must be a string, got {endpoint!r}")
    if endpoint.startswith("tcp://"):
        m = _TCP_RE.match(endpoint)
        if not m:
            raise ConfigError(f"{key} must look like tcp://HOST:PORT, got {endpoint!r}")
        host, port = m.group("host"), m.group("port")
        if port != "*" and not 0 <= int(port) <= 65535:
            raise ConfigError(f"{key} port must be in 0..65535, got {endpoint!r}")
        if not bind and (port in ("*", "0") or host == "*"):
            raise ConfigError(f"{key} connects, so it needs a concrete host and port, got {endpoint!r}")
        return endpoint
    for scheme in ("ipc://", "inproc://"):
        if endpoint.startswith(scheme):
            if len(endpoint) == len(scheme):
                raise ConfigError(f"{key} {scheme}... needs a name, got {endpoint!r}")
            return endpoint
    raise ConfigError(f"{key} must be tcp://HOST:PORT, ipc://PATH or inproc://NAME, got {endpoint!r}")


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ``ipc://``/``inproc://`` and tcp on a loopback address or ``localhost``."""
    m = _TCP_RE.match(endpoint)
    if not m:
        return True
    host = m.group("host").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _fixed(endpoint: str) -> bool:
    """An endpoint that names one concrete address (not an OS-assigned tcp port)."""
    m = _TCP_RE.match(endpoint)
    return not m or m.group("port") not in ("0", "*")
