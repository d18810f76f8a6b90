"""``[model]``: which bundle(s) the daemon serves, and on which backend, precision and device.

Defined here, beside the installed default bundle's location, and read by
:class:`fringelive.daemon.config.DaemonConfig` (which re-exports all three names); the TOML
spellings of its "default" words (``members = "all"``, ``device = "auto"``,
``intra_op_threads = 0``) are the config's dialect (``daemon/config.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fringelive import default_bundle
from fringelive.daemon.endpoints import ConfigError
from fringelive.engine.backends.kinds import BACKEND_KINDS, PRECISIONS

__all__ = ["DEFAULT_BUNDLE_DIR", "ModelConfig", "default_bundle_path"]

#: The package-data directory holding the default bundle (``fringelive.default_bundle``).
DEFAULT_BUNDLE_DIR = default_bundle.directory()


def default_bundle_path() -> Path | None:
    """The installed default bundle (package data of ``fringelive.default_bundle``), or None."""
    return DEFAULT_BUNDLE_DIR if (DEFAULT_BUNDLE_DIR / "card.json").is_file() else None


@dataclass(frozen=True)
class ModelConfig:
    """Which bundle(s) to serve and how. ``bundle`` None and no ``bundles`` → the installed
    default bundle; ``bundles``: further bundles, each frame is routed to the one whose envelope
    fits its metadata (``routing.py``); ``backend`` "auto" → the fastest kind installed and
    verified here, chosen at start-up (``engine/backends/auto.py``; the reason is logged);
    ``precision`` other than "fp32" → used by ``openvino`` only after the parity check against
    FP32 (``engine/precision.py``), else FP32 with a logged reason; ``device`` None ("auto") → the backend kind's own (cpu,
    or cuda:0 for GPU kinds); ``members`` None → all members; ``intra_op_threads`` None →
    runtime default. With ``backend = "triton"`` the bundles are still read locally (card:
    preprocessing, tiling, envelope) and member ``i`` runs as Triton model
    ``<triton_model_prefix>_m<i>`` on the server at ``triton_url`` (``http[s]://HOST:PORT``);
    ``triton_model_prefix`` None → each bundle's name as ``fringelive export triton`` writes it;
    ``triton_timeout_s``: connect/read timeout per request, s (docs/triton.md)."""

    bundle: Path | None = None
    bundles: tuple[Path, ...] = ()
    backend: str = "auto"
    precision: str = "fp32"
    device: str | None = None
    members: tuple[int, ...] | None = None
    intra_op_threads: int | None = None
    triton_url: str = "http://127.0.0.1:8000"
    triton_model_prefix: str | None = None
    triton_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.backend not in ("auto",) + BACKEND_KINDS:
            raise ConfigError(f"model.backend must be one of {['auto', *BACKEND_KINDS]}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"model.precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"model.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.members is not None:
            if not self.members or any(m < 0 for m in self.members) or len(set(self.members)) != len(self.members):
                raise ConfigError(f"model.members must be \"all\" or distinct member indices >= 0, got {list(self.members)!r}")
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise ConfigError(f"model.intra_op_threads must be >= 1 (or 0 in TOML for the default), got {self.intra_op_threads!r}")
        if self.bundle is not None and not Path(self.bundle).is_dir():
            raise ConfigError(f"model.bundle: no such bundle directory: {str(self.bundle)!r}")
        for i, b in enumerate(self.bundles):
            if not Path(b).is_dir():
                raise ConfigError(f"model.bundles[{i}]: no such bundle directory: {str(b)!r}")
        url = re.fullmatch(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?/?", self.triton_url) \
            if isinstance(self.triton_url, str) else None
        if url is None or (url.group(2) is not None and not 0 < int(url.group(2)) < 65536):
            raise ConfigError(f"model.triton_url must look like http://HOST:PORT or https://HOST:PORT, got {self.triton_url!r}")
        if self.triton_model_prefix is not None and (
                not isinstance(self.triton_model_prefix, str) or self.triton_model_prefix.startswith(".")
                or not re.fullmatch(r"[A-Za-z0-9_.-]+", self.triton_model_prefix)):
            raise ConfigError("model.triton_model_prefix must be non-empty, use only A-Z a-z 0-9 _ . - and not start "
                              f"with '.', got {self.triton_model_prefix!r}")
        configured = {Path(b).resolve() for b in ((self.bundle,) if self.bundle is not None else ()) + tuple(self.bundles)}
        if self.triton_model_prefix is not None and len(configured) > 1:
            raise ConfigError(f"model.triton_model_prefix ({self.triton_model_prefix!r}) names one bundle's Triton models "
                              "but several bundles are configured; leave it unset (each bundle's models are "
                              "<bundle name>_m<i>)")
        if isinstance(self.triton_timeout_s, bool) or not isinstance(self.triton_timeout_s, (int, float)) \
                or not 0 < self.triton_timeout_s <= 3600:
            raise ConfigError(f"model.triton_timeout_s must be a number of seconds in (0, 3600], got {self.triton_timeout_s!r}")
        if self.backend == "triton" and self.device is not None:
            raise ConfigError(f"model.device must be \"auto\" with backend \"triton\" (the Triton server places the "
                              f"models; `fringelive export triton --kind`), got {self.device!r}")

    def backend_options(self) -> dict[str, Any]:
        """Keyword arguments for ``backends.create_backends`` beyond kind/members/device/threads:
        the ``triton_*`` settings with ``backend = "triton"``, else none."""
        if self.backend != "triton":
            return {}
        return {"triton_url": self.triton_url, "triton_model_prefix": self.triton_model_prefix,
                "triton_timeout_s": float(self.triton_timeout_s)}

    def bundle_paths(self) -> list[Path]:
        """Every configured bundle in order (``bundle`` first, then ``bundles``; duplicates
        once), else the installed default; :class:`ConfigError` when there is none."""
        paths: list[Path] = []
        for b in ((self.bundle,) if self.bundle is not None else ()) + tuple(self.bundles):
            if Path(b).resolve() not in [p.resolve() for p in paths]:
                paths.append(Path(b))
        return paths or [self.bundle_path()]

    def bundle_path(self) -> Path:
        """The (first) configured bundle, else the installed default; :class:`ConfigError` when
        neither."""
        if self.bundle is not None:
            return Path(self.bundle)
        if self.bundles:
            return Path(self.bundles[0])
        default = default_bundle_path()
        if default is None:
            raise ConfigError(
                f"model.bundle: no bundle configured and no default bundle installed at {str(DEFAULT_BUNDLE_DIR)!r} "
                "(pass --bundle DIR or set [model] bundle)")
        return default
