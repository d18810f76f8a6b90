"""Record published results (masks, probabilities, headers) to HDF5 for ``fringelive watch``.

Layout (``docs/protocol.md`` § Recording)::

    /                          attrs: format="fringelive-results", format_version=2,
                                      created (ISO 8601 UTC), endpoint
    /series/<name>/            one group per (series, frame shape); attrs: series, shape [H, W]
        frames        (N,)       int64   frame index from the header
        masks         (N, H, W)  uint8   0/1, chunks (1, H, W), gzip
        probabilities (N, H, W)  float16 class-1 probability (only when sent), chunks (1, H, W)
        headers       (N,)       str     the result header as JSON (mask descriptor included)
        tracking/                        per-track time series when the daemon tracks
                                         (``stream/track_tables.py``: particles, events, registration)
    /errors                    (M,) str  error headers as JSON

``<name>`` is the series with "/" replaced by "∕" (U+2215); a series whose frames change shape
gets a further group ``<name>@HxW``. The file is flushed after every message, so a killed
``watch`` leaves a readable file.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fringelive.stream.track_tables import TrackTableWriter

FORMAT_NAME = "fringelive-results"
FORMAT_VERSION = 2  # 2: tracking/ tables per series (issue #15)


def header_to_json(header: Any) -> str:
    """JSON text of a msgpack-decoded header (bytes → hex, NaN/Inf → null, others → str)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value).hex()
        if isinstance(value, np.generic):
            return clean(value.item())
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        return str(value)

    return json.dumps(clean(header), sort_keys=True, allow_nan=False)


def series_group_name(series: str, shape: tuple[int, int], first_shape: tuple[int, int] | None
                      ) -> str:
    """HDF5 group name for ``series`` frames of ``shape`` (see module docstring)."""
    name = series.replace("/", "\u2215") or "\u2205"
    if name == ".":
        name = "\u2024"
    if first_shape is not None and tuple(first_shape) != tuple(shape):
        name = f"{name}@{shape[0]}x{shape[1]}"
    return name


class ResultRecorder:
    """Append results and errors to an HDF5 file (created or overwritten).

    ``compression``: gzip level 0–9 for masks/probabilities (0 = none). Use as a context manager;
    ``close()`` is idempotent.
    """

    def __init__(self, path: str | Path, *, endpoint: str = "", compression: int = 4) -> None:
        import h5py

        if isinstance(compression, bool) or not isinstance(compression, int) \
                or not 0 <= compression <= 9:
            raise ValueError(f"compression must be a gzip level 0..9, got {compression!r}")
        self.path = Path(path)
        self._h5py = h5py
        self._compression = compression
        self._file = h5py.File(self.path, "w")
        self._file.attrs["format"] = FORMAT_NAME
        self._file.attrs["format_version"] = FORMAT_VERSION
        self._file.attrs["created"] = datetime.now(timezone.utc).isoformat()
        self._file.attrs["endpoint"] = endpoint
        self._series = self._file.create_group("series")
        self._str = h5py.string_dtype("utf-8")
        self._errors = self._file.create_dataset("errors", shape=(0,), maxshape=(None,),
                                                 dtype=self._str, chunks=(64,))
        self._first_shape: dict[str, tuple[int, int]] = {}
        self._tracks = TrackTableWriter(h5py)
        self.results = 0
        self.errors = 0

    # -- writing ---------------------------------------------------------------------------

    def _group(self, series: str, shape: tuple[int, int], with_probs: bool) -> Any:
        first = self._first_shape.setdefault(series, shape)
        name = series_group_name(series, shape, first)
        group = self._series.get(name)
        if group is None:
            group = self._series.create_group(name)
            group.attrs["series"] = series
            group.attrs["shape"] = list(shape)
            h, w = shape
            gzip = {"compression": "gzip", "compression_opts": self._compression,
                    "shuffle": True} if self._compression else {}
            group.create_dataset("frames", shape=(0,), maxshape=(None,), dtype="int64",
                                 chunks=(256,))
            group.create_dataset("masks", shape=(0, h, w), maxshape=(None, h, w), dtype="uint8",
                                 chunks=(1, h, w), **gzip)
            group.create_dataset("headers", shape=(0,), maxshape=(None,), dtype=self._str,
                                 chunks=(64,))
        if with_probs and "probabilities" not in group:
            h, w = shape
            n = group["frames"].shape[0]
            gzip = {"compression": "gzip", "compression_opts": self._compression} \
                if self._compression else {}
            # Earlier frames without probabilities read as NaN.
            group.create_dataset("probabilities", shape=(n, h, w), maxshape=(None, h, w),
                                 dtype="float16", chunks=(1, h, w), fillvalue=np.nan, **gzip)
        return group

    @staticmethod
    def _append(dataset: Any, value: Any) -> None:
        n = dataset.shape[0]
        dataset.resize(n + 1, axis=0)
        dataset[n] = value

    def add_result(self, header: dict, mask: np.ndarray,
                   probabilities: np.ndarray | None = None) -> None:
        """Append one result: ``mask`` (H, W) bool, ``probabilities`` (H, W) or None."""
        self._check_open()
        series = header.get("series")
        series = series if isinstance(series, str) else "unknown"
        frame = header.get("frame")
        frame = frame if isinstance(frame, int) and not isinstance(frame, bool) else -1
        shape = (int(mask.shape[0]), int(mask.shape[1]))
        group = self._group(series, shape, probabilities is not None)
        self._append(group["frames"], frame)
        self._append(group["masks"], mask.astype(np.uint8))
        self._append(group["headers"], header_to_json(header))
        self._tracks.add(group, header)
        if "probabilities" in group:
            probs = group["probabilities"]
            probs.resize(group["frames"].shape[0], axis=0)
            if probabilities is not None:
                probs[-1] = np.asarray(probabilities, dtype=np.float16)
        self.results += 1
        self._file.flush()

    def add_error(self, header: dict) -> None:
        """Append one error header."""
        self._check_open()
        self._append(self._errors, header_to_json(header))
        self.errors += 1
        self._file.flush()

    # -- lifecycle -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._file is None:
            raise ValueError(f"recorder for {self.path} is closed")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ResultRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
