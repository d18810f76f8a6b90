"""Daemon configuration: frozen dataclasses, parsed strictly from TOML at the CLI edge.

The keys, their defaults and units are listed in ``docs/configuration.md`` (keep it in step
when adding a key); ``deploy/examples/fringelive.toml`` is a complete example. Every key is
optional; the embedded defaults run a CPU daemon on loopback.

Errors raise :class:`ConfigError` with one line naming the key and the bad value, e.g.
``queue.policy must be one of ['block', 'drop-oldest'], got 'newest'``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fringelive.bundle.typed import NOT_HANDLED, Dialect, parse
from fringelive.daemon.camera import CameraConfig
from fringelive.daemon.endpoints import ConfigError, _fixed, parse_endpoint
from fringelive.daemon.view import ViewSettings
from fringelive.daemon.journal import JournalConfig
from fringelive.daemon.model_config import DEFAULT_BUNDLE_DIR, ModelConfig, default_bundle_path
from fringelive.daemon.sources.config import parse_sources
from fringelive.engine.backends.kinds import BACKEND_KINDS
from fringelive.engine.drift_settings import DriftSettings
from fringelive.engine.particle_measure import ParticleSettings
from fringelive.engine.pipeline_settings import TILING_MODES, PipelineConfig
from fringelive.engine.tracking import TrackingSettings

__all__ = [
    "ConfigError",
    "IngestConfig",
    "ResultsConfig",
    "ControlConfig",
    "MetricsConfig",
    "QueueConfig",
    "ModelConfig",
    "LifecycleConfig",
    "CurveConfig",
    "DaemonConfig",
    "QUEUE_POLICIES",
    "BACKEND_KINDS",
    "TILING_MODES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_BUNDLE_DIR",
    "load_config",
    "parse_endpoint",
    "default_worker_name",
    "default_bundle_path",
]

QUEUE_POLICIES = ("block", "drop-oldest")
#: 4096 × 4096 float32 pixels (64 MiB) plus 1 MiB for the header, bytes.
DEFAULT_MAX_MESSAGE_BYTES = 4096 * 4096 * 4 + (1 << 20)

# --- sections -------------------------------------------------------------------------------

def _positive_int(value: int, key: str) -> None:
    if value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")


#: ``[ingest] mode``: plain PUSH/PULL (at-most-once) or acknowledged ROUTER/DEALER (daemon/ack_ingest.py).
INGEST_MODES = ("push", "ack")


@dataclass(frozen=True)
class IngestConfig:
    """Frames in (ZeroMQ PULL). ``rcvhwm``: messages; ``rcvbuf_bytes``: kernel receive buffer
    (``ZMQ_RCVBUF``, bytes; bounds what a restart can lose in plain PUSH mode, ``docs/protocol.md``);
    ``max_message_bytes``: bytes per message (also ``ZMQ_MAXMSGSIZE``); ``max_frame_pixels``:
    H*W, px; ``max_side``: px; ``mode``: "push" or "ack" (:data:`INGEST_MODES`)."""

    endpoint: str = "tcp://127.0.0.1:5555"
    bind: bool = True
    rcvhwm: int = 4
    rcvbuf_bytes: int = 16384
    mode: str = "push"
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_frame_pixels: int = 4096 * 4096
    max_side: int = 8192

    def __post_init__(self) -> None:
        parse_endpoint(self.endpoint, bind=self.bind, key="ingest.endpoint")
        for name in ("rcvhwm", "rcvbuf_bytes", "max_message_bytes", "max_frame_pixels", "max_side"):
            _positive_int(getattr(self, name), f"ingest.{name}")
        if self.mode not in INGEST_MODES:
            raise ConfigError(f"ingest.mode must be one of {list(INGEST_MODES)}, got {self.mode!r}")


MAX_WORKER_NAME_LENGTH = 64


def default_worker_name() -> str:
    """``<hostname>:<pid>`` (cut to :data:`MAX_WORKER_NAME_LENGTH` characters)."""
    import socket

    pid = f":{os.getpid()}"
    host = "".join(c for c in socket.gethostname() if c.isprintable()) or "localhost"
    return host[: MAX_WORKER_NAME_LENGTH - len(pid)] + pid


@dataclass(frozen=True)
class ResultsConfig:
    """Results out (ZeroMQ PUB, always binds). ``sndhwm``: messages queued per subscriber.
    ``worker``: the name every result and error header carries (key ``worker``), so subscribers
    of several daemons know which one computed a frame; None → ``<hostname>:<pid>`` at start
    (:meth:`worker_name`); 1..64 printable characters."""

    endpoint: str = "tcp://127.0.0.1:5556"
    sndhwm: int = 16
    publish_probabilities: bool = False
    worker: str | None = None

    def __post_init__(self) -> None:
        parse_endpoint(self.endpoint, bind=True, key="results.endpoint")
        _positive_int(self.sndhwm, "results.sndhwm")
        if self.worker is not None and (not isinstance(self.worker, str) or not self.worker.strip()
                                        or len(self.worker) > MAX_WORKER_NAME_LENGTH
                                        or not self.worker.isprintable()):
            raise ConfigError(f"results.worker must be 1..{MAX_WORKER_NAME_LENGTH} printable characters, "
                              f"got {self.worker!r}")

    def worker_name(self) -> str:
        """``worker``, or ``<hostname>:<pid>`` when unset."""
        return self.worker if self.worker is not None else default_worker_name()


@dataclass(frozen=True)
class ControlConfig:
    """Control commands (ZeroMQ REP, binds): ``status``, ``stats``, ``reload``."""

    endpoint: str = "tcp://127.0.0.1:5557"

    def __post_init__(self) -> None:
        parse_endpoint(self.endpoint, bind=True, key="control.endpoint")


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus exposition at ``http://host:port/metrics`` (default port 9108; 0 = OS-assigned)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9108

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"metrics.port must be in 0..65535, got {self.port!r}")
        if not self.host:
            raise ConfigError(f"metrics.host must be a host name or address, got {self.host!r}")


@dataclass(frozen=True)
class QueueConfig:
    """The bounded frame queue between receiver and worker. ``size``: frames. ``policy``:
    ``block`` (receiver stops reading, ZeroMQ's high-water mark fills, the sender's PUSH blocks)
    or ``drop-oldest`` (newest frames win; counted as dropped{reason="queue_full"}).
    ``preprocess_ahead``: true → the worker takes the next queued frame as soon as the network
    starts on the current one and preprocesses it in a helper thread, so preprocessing overlaps
    inference (that frame has then left the queue: one fewer frame for drop-oldest to evict);
    "auto" → only where the CPU has cores to spare for it (a GPU or Triton network, or more
    cores than network threads; ``daemon/threads.py``: :func:`preprocess_ahead_choice`)."""

    size: int = 4
    policy: str = "block"
    preprocess_ahead: bool | str = "auto"

    def __post_init__(self) -> None:
        _positive_int(self.size, "queue.size")
        if self.policy not in QUEUE_POLICIES:
            raise ConfigError(f"queue.policy must be one of {list(QUEUE_POLICIES)}, got {self.policy!r}")
        if not (isinstance(self.preprocess_ahead, bool) or self.preprocess_ahead == "auto"):
            raise ConfigError(f'queue.preprocess_ahead must be true, false or "auto", got {self.preprocess_ahead!r}')


@dataclass(frozen=True)
class LifecycleConfig:
    """``drain_timeout_s``: seconds the worker may spend on queued frames after ingest stops;
    frames still queued then are dropped{reason="shutdown"}."""

    drain_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.drain_timeout_s >= 0:
            raise ConfigError(f"lifecycle.drain_timeout_s must be >= 0, got {self.drain_timeout_s!r}")


@dataclass(frozen=True)
class CurveConfig:
    """ZeroMQ CURVE authentication + encryption for ingest and results (and control when
    ``control``). ``server_secret_key``: the server's ``.key_secret`` file;
    ``authorized_clients_dir``: directory of the allowed clients' public ``.key`` files (both as
    written by ``zmq.auth.create_certificates``)."""

    enabled: bool = False
    server_secret_key: Path | None = None
    authorized_clients_dir: Path | None = None
    control: bool = False

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        if self.server_secret_key is None:
            raise ConfigError("curve.server_secret_key is required when curve.enabled = true")
        if not Path(self.server_secret_key).is_file():
            raise ConfigError(f"curve.server_secret_key: no such file: {str(self.server_secret_key)!r}")
        if self.authorized_clients_dir is None:
            raise ConfigError("curve.authorized_clients_dir is required when curve.enabled = true")
        if not Path(self.authorized_clients_dir).is_dir():
            raise ConfigError(f"curve.authorized_clients_dir: no such directory: {str(self.authorized_clients_dir)!r}")


@dataclass(frozen=True)
class DaemonConfig:
    """The whole daemon configuration (see the module docstring for every key)."""

    ingest: IngestConfig = field(default_factory=IngestConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)   # the engine's settings, [pipeline]
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    drift: DriftSettings = field(default_factory=DriftSettings)        # the engine's settings, [drift]
    camera: CameraConfig = field(default_factory=CameraConfig)         # [camera]: engine CameraSettings + learning
    particles: ParticleSettings = field(default_factory=ParticleSettings)  # the engine's settings, [particles]
    curve: CurveConfig = field(default_factory=CurveConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)     # [journal]: results journal (daemon/journal.py)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)  # the engine's settings, [tracking]
    view: ViewSettings = field(default_factory=ViewSettings)              # [view]: the live operator view
    #: ``[[source]]`` tables: frame sources besides the ZeroMQ ingest (daemon/sources/config.py)
    source: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        eps = {"ingest.endpoint": self.ingest.endpoint, "results.endpoint": self.results.endpoint,
               "control.endpoint": self.control.endpoint}
        seen: dict[str, str] = {}
        for key, ep in eps.items():
            if _fixed(ep) and ep in seen:
                raise ConfigError(f"{key} {ep!r} is the same endpoint as {seen[ep]}")
            seen[ep] = key
        _check_pipeline(self.pipeline)
        if self.curve.enabled and not self.ingest.bind:
            raise ConfigError("curve.enabled = true needs ingest.bind = true (the daemon is the CURVE server), "
                              "got ingest.bind = false")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None) -> "DaemonConfig":
        """Build from parsed TOML; relative paths resolve against ``base_dir`` (default: cwd)."""
        return parse(cls, data, "", _dialect(Path(base_dir) if base_dir is not None else Path.cwd()))

    def replace(self, **sections: Any) -> "DaemonConfig":
        """A copy with whole sections replaced, e.g. ``cfg.replace(queue=QueueConfig(8))``."""
        return dataclasses.replace(self, **sections)

    def override(self, section: str, **values: Any) -> "DaemonConfig":
        """A copy with some keys of one section changed (validated again)."""
        if section not in {f.name for f in dataclasses.fields(self)}:
            raise ConfigError(f"unknown config section {section!r}")
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **values)})


def load_config(path: str | os.PathLike[str]) -> DaemonConfig:
    """Read and validate a TOML config file. Raises :class:`ConfigError` (one line, naming the
    file and the key) for a missing/unreadable file, bad TOML, unknown keys, wrong types or values."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError("reading TOML on Python 3.10 needs the 'tomli' package (pip install tomli)") from None
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {str(p)!r}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {e}") from None
    try:
        return DaemonConfig.from_dict(data, base_dir=p.resolve().parent)
    except ConfigError as e:
        raise ConfigError(f"config file {str(p)!r}: {e}") from None


# --- strict parsing (fringelive.bundle.typed, the card's parser, in its TOML dialect) --------

#: [drift] keys spelled flat in TOML that fill ``DriftSettings.tolerances``.
_DRIFT_TOLERANCE_KEYS = {
    "pixel_size_tolerance_rel": ("tolerances", "pixel_size_rel"),
    "dose_tolerance_rel": ("tolerances", "dose_rel"),
    "voltage_tolerance_kv": ("tolerances", "voltage_kv"),
}


#: [camera] keys spelled flat in TOML that fill ``CameraConfig.settings`` (the engine's CameraSettings).
_CAMERA_KEYS = {name: ("settings", name)
                for name in ("name", "gain_counts_per_e", "offset_counts", "read_noise_counts", "noise_factor")}


#: [tracking] fields that stay engine constants (the config keys are enabled, max_gap_frames,
#: max_displacement_nm).
_TRACKING_ENGINE_ONLY = frozenset({"max_displacement_px", "merge_overlap", "split_overlap", "overlap_side_px"})


def _dialect(base_dir: Path) -> Dialect:
    return Dialect(
        error=ConfigError, toml=True, hook=_toml_word, base_dir=base_dir,
        # engine settings that are not [pipeline]/[drift] keys: members come from [model], the
        # pixel-size search band is fixed
        exclude={PipelineConfig: frozenset({"members", "particles"}), DriftSettings: frozenset({"pixel_size_search"}),
                 TrackingSettings: _TRACKING_ENGINE_ONLY},
        flat={DriftSettings: _DRIFT_TOLERANCE_KEYS, CameraConfig: _CAMERA_KEYS})


def _toml_word(cls: type, name: str, value: Any, key: str, d: Dialect) -> Any:
    """TOML has no null: a few keys spell "default" with a word or 0; lists of paths/indices."""
    if cls is DaemonConfig and name == "source":
        return parse_sources(value, key, d)
    if cls is ModelConfig and name == "members":
        if value == "all":
            return None
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key} must be \"all\" or a list of member indices, got {value!r}")
        return tuple(value)
    if cls is ModelConfig and name == "bundles":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{key} must be a list of bundle directory paths, got {value!r}")
        return tuple(parse(Path, v, f"{key}[{i}]", d) for i, v in enumerate(value))
    if cls is ModelConfig and name == "device" and value == "auto":
        return None
    if cls is ModelConfig and name == "intra_op_threads" and value == 0 and not isinstance(value, bool):
        return None
    if cls is DriftSettings and name in _DRIFT_TOLERANCE_KEYS:
        v = parse(float, value, key, d)
        if not v >= 0:
            raise ConfigError(f"{key} must be >= 0, got {v!r}")
        return v
    return NOT_HANDLED


def _check_pipeline(p: PipelineConfig) -> None:
    """What the daemon asks of ``[pipeline]`` beyond the engine's own checks: tile and window
    sides in multiples of 16 px (every bundle's ``tile.multiple_of`` divides 16)."""
    if not isinstance(p.tile_size, str) and p.tile_size is not None and (p.tile_size < 16 or p.tile_size % 16):
        raise ConfigError(f"pipeline.tile_size must be a positive multiple of 16 px, got {p.tile_size!r}")
    if p.gaussian_roi < 16 or p.gaussian_roi % 16:
        raise ConfigError(f"pipeline.gaussian_roi must be a positive multiple of 16 px, got {p.gaussian_roi!r}")
