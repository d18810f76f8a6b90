"""``[[source]] kind = "deapi"``: settings of the Direct Electron DE-Server source
(daemon/sources/deapi.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fringelive.daemon.endpoints import ConfigError

__all__ = ["DeapiSourceConfig", "FRAME_TYPES"]

#: The ``deapi.FrameType`` names a source may take (single frames and sums; not masks or virtual images).
FRAME_TYPES = ("singleframe_integrated", "singleframe_counted", "sumintermediate", "sumtotal", "cumulative")


@dataclass(frozen=True)
class DeapiSourceConfig:
    """``host``/``port``: the DE-Server (default port 13240); ``control``: false (default,
    passive): watch the acquisitions the operator starts in DE's software and take their live
    frames, never changing a setting; true: fringelive starts one-frame acquisitions itself
    (``start_acquisition(1)``); ``poll_s``: seconds between polls (passive) or acquisitions
    (control); ``frame_type``: the DE-Server result taken (``FRAME_TYPES``; default
    "singleframe_integrated"); ``dataset``: series name (default: DE-Server's dataset name);
    ``pixel_size_nm``: specimen pixel size, nm/px; ``voltage_kv``: kV; ``meta``: more wire
    metadata keys."""

    host: str = "127.0.0.1"
    port: int = 13240
    name: str | None = None
    control: bool = False
    poll_s: float = 0.5
    frame_type: str = "singleframe_integrated"
    dataset: str | None = None
    pixel_size_nm: float | None = None
    voltage_kv: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError(f"host must be a host name or address, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {self.port!r}")
        if isinstance(self.poll_s, bool) or not isinstance(self.poll_s, (int, float)) or not 0 < self.poll_s <= 3600:
            raise ConfigError(f"poll_s must be a number of seconds in (0, 3600], got {self.poll_s!r}")
        for key in ("pixel_size_nm", "voltage_kv"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
                raise ConfigError(f"{key} must be a number > 0, got {v!r}")
        if not isinstance(self.control, bool):
            raise ConfigError(f"control must be true (fringelive starts acquisitions) or false (passive: it watches "
                              f"the operator's), got {self.control!r}")
        if self.frame_type not in FRAME_TYPES:
            raise ConfigError(f"frame_type must be one of {list(FRAME_TYPES)}, got {self.frame_type!r}")
        if not isinstance(self.meta, dict) or any(k in ("series", "frame", "shape", "dtype") for k in self.meta):
            raise ConfigError(f"meta must be a table of metadata keys (not series/frame/shape/dtype), got {self.meta!r}")

    @property
    def label(self) -> str:
        return self.name or f"deapi:{self.host}:{self.port}"
