"""``[[source]] kind = "dectris"``: settings of the DECTRIS Stream source (daemon/sources/dectris.py).

The detector (DCU) or a simulator binds a ZeroMQ PUSH socket (``tcp://DCU:9999`` for the
stream interface, SIMPLON ``stream/config/mode = enabled``); the source connects a PULL socket
to it and only listens (passive: it never arms, triggers or configures the detector).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fringelive.daemon.endpoints import ConfigError, parse_endpoint

__all__ = ["DectrisSourceConfig", "STREAM_VERSIONS"]

STREAM_VERSIONS = ("auto", "v1", "v2")


@dataclass(frozen=True)
class DectrisSourceConfig:
    """``endpoint``: the detector's stream PUSH address (connected to); ``version``: "auto"
    (from each message), "v1" (multipart JSON, SIMPLON 1.8) or "v2" (CBOR, SIMPLON 1.8+
    ``stream/config/format = cbor``); ``pixel_size_nm``: the *specimen* pixel size, nm/px (the
    detector's ``x_pixel_size`` is the sensor pitch, not the specimen sampling, so it is never
    used as such); ``voltage_kv``: beam energy, kV; ``meta``: more wire metadata keys;
    ``channel``: the V2 image channel to segment (e.g. "threshold_1"; default: the first);
    ``rcvhwm``: messages ZeroMQ buffers; ``control``: arm/trigger through SIMPLON (not
    supported: must stay false)."""

    endpoint: str = "tcp://127.0.0.1:9999"
    name: str | None = None
    version: str = "auto"
    channel: str | None = None
    pixel_size_nm: float | None = None
    voltage_kv: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    rcvhwm: int = 16
    control: bool = False

    def __post_init__(self) -> None:
        parse_endpoint(self.endpoint, bind=False, key="endpoint")
        if self.version not in STREAM_VERSIONS:
            raise ConfigError(f"version must be one of {list(STREAM_VERSIONS)}, got {self.version!r}")
        for key in ("pixel_size_nm", "voltage_kv"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
                raise ConfigError(f"{key} must be a number > 0, got {v!r}")
        if isinstance(self.rcvhwm, bool) or not isinstance(self.rcvhwm, int) or self.rcvhwm < 1:
            raise ConfigError(f"rcvhwm must be a positive integer, got {self.rcvhwm!r}")
        if self.control:
            raise ConfigError("control = true (arming the detector through SIMPLON) is not supported: the dectris "
                              "source is passive; arm the detector from its own control software, got control = true")
        if not isinstance(self.meta, dict) or any(k in ("series", "frame", "shape", "dtype") for k in self.meta):
            raise ConfigError(f"meta must be a table of metadata keys (not series/frame/shape/dtype), got {self.meta!r}")

    @property
    def label(self) -> str:
        return self.name or f"dectris:{self.endpoint.split('://', 1)[-1]}"
