"""``[[source]] kind = "dectris"``: settings of the DECTRIS Stream source (daemon/sources/dectris.py).

The detector (DCU) or a simulator binds a ZeroMQ PUSH socket (``tcp://DCU:9999`` for the
stream interface, SIMPLON ``stream/config/mode = enabled``); the source connects a PULL socket
to it and listens. Passive by default (``control = false``): it never arms, triggers or
configures the detector. With ``control = true`` it also drives the detector through the SIMPLON
REST API (``daemon/sources/simplon.py``); the control keys are refused without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fringelive.daemon.endpoints import ConfigError, parse_endpoint

__all__ = ["DectrisSourceConfig", "STREAM_VERSIONS", "TRIGGER_MODES"]

STREAM_VERSIONS = ("auto", "v1", "v2")
TRIGGER_MODES = ("ints", "exts")   # internal series trigger (fringelive triggers) / external (hardware)
_CONTROL_KEYS = ("api", "api_version", "nimages", "ntrigger", "trigger_mode", "count_time", "series_count", "pause_s")
_API_RE = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[^:/\[\]\s]+)(:\d{1,5})?/?$")


@dataclass(frozen=True)
class DectrisSourceConfig:
    """``endpoint``: the detector's stream PUSH address (connected to); ``version``: "auto"
    (from each message), "v1" (multipart JSON, SIMPLON 1.8) or "v2" (CBOR, SIMPLON 1.8+
    ``stream/config/format = cbor``); ``pixel_size_nm``: the *specimen* pixel size, nm/px (the
    detector's ``x_pixel_size`` is the sensor pitch, not the specimen sampling, so it is never
    used as such); ``voltage_kv``: beam energy, kV; ``meta``: more wire metadata keys;
    ``channel``: the V2 image channel to segment (e.g. "threshold_1"; default: the first);
    ``rcvhwm``: messages ZeroMQ buffers. ``control``: drive the detector through SIMPLON, with
    ``api`` (base URL, default ``http://<endpoint host>``), ``api_version`` ("1.8.0"),
    ``nimages`` per trigger and ``ntrigger`` per series (1, 1), ``trigger_mode`` ("ints":
    fringelive triggers; "exts": it arms and waits for hardware triggers), ``count_time`` (s,
    default: as set on the detector), ``series_count`` (series to run, 0 = until the daemon
    stops) and ``pause_s`` (s between series); these keys are refused with ``control = false``."""

    endpoint: str = "tcp://127.0.0.1:9999"
    name: str | None = None
    version: str = "auto"
    channel: str | None = None
    pixel_size_nm: float | None = None
    voltage_kv: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    rcvhwm: int = 16
    control: bool = False
    api: str | None = None
    api_version: str | None = None
    nimages: int | None = None
    ntrigger: int | None = None
    trigger_mode: str | None = None
    count_time: float | None = None
    series_count: int | None = None
    pause_s: float | None = None

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
        if not isinstance(self.control, bool):
            raise ConfigError(f"control must be true or false, got {self.control!r}")
        if not self.control:
            given = [k for k in _CONTROL_KEYS if getattr(self, k) is not None]
            if given:
                raise ConfigError(f"{given[0]} is only used with control = true (fringelive arms the detector through "
                                  f"SIMPLON); got {given[0]} = {getattr(self, given[0])!r} with control = false")
        self._check_control()
        if not isinstance(self.meta, dict) or any(k in ("series", "frame", "shape", "dtype") for k in self.meta):
            raise ConfigError(f"meta must be a table of metadata keys (not series/frame/shape/dtype), got {self.meta!r}")

    def _check_control(self) -> None:
        if self.api is not None and (not isinstance(self.api, str) or not _API_RE.match(self.api)):
            raise ConfigError(f"api must be the SIMPLON base URL http://HOST[:PORT], got {self.api!r}")
        if self.api is None and self.control and not self.endpoint.startswith("tcp://"):
            raise ConfigError(f"api (the SIMPLON base URL) is needed when the endpoint is not tcp://, got "
                              f"endpoint = {self.endpoint!r}")
        if self.api_version is not None and (not isinstance(self.api_version, str)
                                             or not re.fullmatch(r"\d+\.\d+\.\d+", self.api_version)):
            raise ConfigError(f"api_version must look like \"1.8.0\", got {self.api_version!r}")
        for key in ("nimages", "ntrigger"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10_000_000):
                raise ConfigError(f"{key} must be an integer in 1..10000000, got {v!r}")
        if self.series_count is not None and (isinstance(self.series_count, bool) or not isinstance(self.series_count, int)
                                              or self.series_count < 0):
            raise ConfigError(f"series_count must be an integer >= 0 (0: until the daemon stops), got {self.series_count!r}")
        if self.trigger_mode is not None and self.trigger_mode not in TRIGGER_MODES:
            raise ConfigError(f"trigger_mode must be one of {list(TRIGGER_MODES)}, got {self.trigger_mode!r}")
        for key, top in (("count_time", 3600.0), ("pause_s", 3600.0)):
            v = getattr(self, key)
            ok_low = (lambda x: x > 0) if key == "count_time" else (lambda x: x >= 0)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not ok_low(v) or v > top):
                raise ConfigError(f"{key} must be a number of seconds in {'(0' if key == 'count_time' else '[0'}, "
                                  f"{top:g}], got {v!r}")

    @property
    def api_url(self) -> str:
        """The SIMPLON base URL (``api``, else ``http://`` + the endpoint's host)."""
        if self.api:
            return self.api.rstrip("/")
        return "http://" + self.endpoint.split("://", 1)[1].rsplit(":", 1)[0]

    @property
    def label(self) -> str:
        return self.name or f"dectris:{self.endpoint.split('://', 1)[-1]}"
