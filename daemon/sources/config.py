"""``[[source]]`` tables → source settings (one frozen dataclass per kind), checked at start-up,
and :func:`open_source`, which builds the source of a setting.

TOML::

    [[source]]
    kind = "folder"            # "zmq" | "folder" | "dectris" | "deapi"
    path = "/data/insitu"      # per-kind keys: daemon/sources/folder.py, dectris.py, deapi.py
    meta = { pixel_size_nm = 0.02 }

``kind = "zmq"`` names the daemon's own ZeroMQ ingest, configured in ``[ingest]`` and always on;
it takes no other key and is labelled ``zmq`` in the per-source metrics. Source names (the
``source`` label) must be unique."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fringelive.bundle.typed import Dialect, parse
from fringelive.daemon.endpoints import ConfigError
from fringelive.daemon.sources.base import FrameSource
from fringelive.daemon.sources.dectris_config import DectrisSourceConfig
from fringelive.daemon.sources.deapi_config import DeapiSourceConfig
from fringelive.daemon.sources.folder import FolderSourceConfig

__all__ = ["SOURCE_KINDS", "ZmqSourceConfig", "parse_sources", "open_source", "source_label"]


@dataclass(frozen=True)
class ZmqSourceConfig:
    """``kind = "zmq"``: the daemon's ZeroMQ ingest (configured in ``[ingest]``)."""

    @property
    def label(self) -> str:
        return "zmq"


SOURCE_KINDS: dict[str, type] = {"zmq": ZmqSourceConfig, "folder": FolderSourceConfig,
                                 "dectris": DectrisSourceConfig, "deapi": DeapiSourceConfig}


def source_label(cfg: Any) -> str:
    return str(cfg.label)


def parse_sources(value: Any, key: str, d: Dialect) -> tuple[Any, ...]:
    """The ``source`` array of tables as settings; :class:`ConfigError` naming ``source[i].key``."""
    if not isinstance(value, list):
        raise ConfigError(f"{key} must be an array of tables ([[source]]), got {value!r}")
    out: list[Any] = []
    for i, table in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table, got {table!r}")
        kind = table.get("kind")
        if kind not in SOURCE_KINDS:
            raise ConfigError(f"{where}.kind must be one of {list(SOURCE_KINDS)}, got {kind!r}")
        rest = {k: v for k, v in table.items() if k != "kind"}
        try:
            out.append(parse(SOURCE_KINDS[kind], rest, where, d))
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(where) or where in msg else f"{where}.{msg}") from None
    check_sources(out)
    return tuple(out)


def check_sources(sources: Any) -> None:
    """Names are unique (and not ``zmq`` for another kind); at most one ``zmq`` table."""
    seen: dict[str, int] = {}
    for i, s in enumerate(sources):
        label = source_label(s)
        if label in seen:
            raise ConfigError(f"source[{i}]: name {label!r} is already used by source[{seen[label]}] "
                              "(set name = \"...\" to tell them apart)")
        if label == "zmq" and not isinstance(s, ZmqSourceConfig):
            raise ConfigError(f"source[{i}]: name 'zmq' is the daemon's own ZeroMQ ingest; choose another")
        seen[label] = i


def open_source(cfg: Any) -> FrameSource | None:
    """Build (not start) the source of a setting; None for ``zmq`` (the daemon's own ingest).
    Raises :class:`ConfigError` when the kind's package is missing."""
    if isinstance(cfg, ZmqSourceConfig):
        return None
    if isinstance(cfg, FolderSourceConfig):
        from fringelive.daemon.sources.folder import FolderSource

        return FolderSource(cfg)
    if isinstance(cfg, DectrisSourceConfig):
        from fringelive.daemon.sources.dectris import DectrisSource

        return DectrisSource(cfg)
    if isinstance(cfg, DeapiSourceConfig):
        from fringelive.daemon.sources.deapi import DeapiSource

        return DeapiSource(cfg)
    raise TypeError(f"not a source setting: {type(cfg).__name__}")  # pragma: no cover

