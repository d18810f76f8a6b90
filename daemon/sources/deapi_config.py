"""``[[source]] kind = "deapi"``: settings of the Direct Electron DE-Server source
(daemon/sources/deapi.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fringelive.daemon.endpoints import ConfigError

__all__ = ["DeapiSourceConfig"]


@dataclass(frozen=True)
class DeapiSourceConfig:
    """``host``/``port``: the DE-Server (default port 13240); ``poll_s``: seconds between
    frame requests; ``pixel_size_nm``: specimen pixel size, nm/px (over what DE-Server reports);
    ``meta``: more wire metadata keys."""

    host: str = "127.0.0.1"
    port: int = 13240
    name: str | None = None
    poll_s: float = 0.5
    pixel_size_nm: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError(f"host must be a host name or address, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {self.port!r}")
        if isinstance(self.poll_s, bool) or not isinstance(self.poll_s, (int, float)) or not 0 < self.poll_s <= 3600:
            raise ConfigError(f"poll_s must be a number of seconds in (0, 3600], got {self.poll_s!r}")
        if self.pixel_size_nm is not None and not self.pixel_size_nm > 0:
            raise ConfigError(f"pixel_size_nm must be > 0, got {self.pixel_size_nm!r}")

    @property
    def label(self) -> str:
        return self.name or f"deapi:{self.host}:{self.port}"
