"""The ``deapi`` source: frames from a Direct Electron DE-Server through the ``deapi`` client.

**Passive** (``control = false``, the default): the source connects as a read-only client and
never sets a property or starts an acquisition. Every ``poll_s`` it reads "Acquisition Status";
while an acquisition (started by the operator in DE's software) runs, and once more when it has
ended, it takes the live result (``get_result(frame_type)``) and hands it on when it is a frame
not seen yet: one acquisition = one series ``<dataset>-<n>`` (n counts the acquisitions seen
since start-up), ``frame`` = DE-Server's image index in the acquisition. This samples the live
view: at a frame rate above ``1 / poll_s`` (and the round trip of a frame) the frames in between
are not seen (``tags.de_frame_count`` tells how many the acquisition had); an acquisition that
starts and ends between two polls is missed.

**Control** (``control = true``): the source runs one-frame acquisitions back to back
(``start_acquisition(1)``, wait until the server is idle, ``get_result(frame_type)``) and hands
each image on: ``series`` = ``dataset`` (default DE-Server's dataset name), ``frame`` = 0, 1, ...

Metadata (both modes): ``exposure_s`` from "Exposure Time (seconds)" when it is a plausible
exposure (< 1000 s), ``camera`` from "Camera Name", ``dose_e_per_A2`` from the result's
``epa2`` when > 0, ``pixel_size_nm``/``voltage_kv`` from the source's settings, ``tags`` with
the result attributes (``de_acq_index``, ``de_image_index``, ``de_timestamp``). Pixels are
converted to a wire dtype (``engine/readers.to_wire_dtype``). The camera's other settings
(ROI, binning, frame rate) are left as the operator set them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fringelive.daemon.endpoints import ConfigError
from fringelive.daemon.sources.base import SourceFrame, ThreadedSource
from fringelive.daemon.sources.deapi_config import DeapiSourceConfig
from fringelive.engine.readers import ReaderError, to_wire_dtype

__all__ = ["DeapiSource"]

log = logging.getLogger("fringelive.daemon.sources")

_ACQUISITION_TIMEOUT_S = 600.0


def _import_deapi() -> Any:
    try:
        import deapi
    except ImportError:
        raise ConfigError("source kind \"deapi\" needs the 'deapi' package: pip install deapi") from None
    return deapi


class DeapiSource(ThreadedSource):
    """See the module docstring."""

    kind = "deapi"

    def __init__(self, config: DeapiSourceConfig) -> None:
        super().__init__(config.label, maxsize=2)
        self.config = config
        deapi = _import_deapi()
        self._client = deapi.Client()
        self._client.usingMmf = False   # images over the socket (shared memory only for a local Windows server)
        try:   # passive: a read-only client (servers >= 2.8.3 decide that themselves and ignore the argument)
            self._client.connect(host=config.host, port=config.port, read_only=None if config.control else True)
        except OSError as e:
            raise ConfigError(f"source {self.name!r}: cannot connect to DE-Server at {config.host}:{config.port}: {e}") from None
        self._frame = 0
        self._static = self._read_static()
        self.acquisitions_seen = 0   # passive: acquisitions observed since start-up
        self._last_key: tuple[Any, ...] | None = None

    def _read_static(self) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        try:
            exposure = float(self._client["Exposure Time (seconds)"])
            if 0 < exposure < 1000:
                meta["exposure_s"] = exposure
        except Exception as e:  # noqa: BLE001 - a server without the property: no exposure
            log.info("%s: no exposure time from DE-Server: %s", self.name, e)
        try:
            camera = str(self._client["Camera Name"])
            if camera:
                meta["camera"] = camera
        except Exception:  # noqa: BLE001
            pass
        return meta

    def run(self) -> None:
        if self.config.control:
            self._run_control()
        else:
            self._run_passive()

    def _run_passive(self) -> None:
        was_acquiring = False
        while not self.stopped.is_set():
            acquiring = bool(self._client.acquiring)
            if acquiring and not was_acquiring:
                self.acquisitions_seen += 1
                self._static = self._read_static()   # the operator may have changed the exposure
                log.info("%s: acquisition %d started on DE-Server", self.name, self.acquisitions_seen)
            if (acquiring or was_acquiring) and self.acquisitions_seen:
                item = self._passive_item(self._client.get_result(self.config.frame_type))
                if item is not None and not self.emit(item):
                    return
            was_acquiring = acquiring
            self.stopped.wait(self.config.poll_s)

    def _passive_item(self, result: Any) -> SourceFrame | None:
        """The live result as a frame, or None when it is no new frame (no image yet, or seen)."""
        image, attrs = result[0], result[2]
        count = getattr(attrs, "frameCount", None)
        if image is None or count == 0:
            return None
        index = getattr(attrs, "imageIndex", None)
        key = (self.acquisitions_seen, getattr(attrs, "datasetName", None), getattr(attrs, "acqIndex", None), index)
        if key == self._last_key:
            return None
        self._last_key = key
        frame = index if isinstance(index, int) and not isinstance(index, bool) and index >= 0 else self._frame
        self._frame += 1
        base = self.config.dataset or str(getattr(attrs, "datasetName", "") or self.name)
        return self._item(result, f"{base}-{self.acquisitions_seen}"[:256], frame, {"de_frame_count": count})

    def _run_control(self) -> None:
        while not self.stopped.is_set():
            self._client.start_acquisition(1)
            t_end = time.monotonic() + _ACQUISITION_TIMEOUT_S
            while self._client.acquiring:
                if self.stopped.wait(0.01):
                    return
                if time.monotonic() > t_end:
                    raise RuntimeError(f"DE-Server still acquiring after {_ACQUISITION_TIMEOUT_S:g} s")
            result = self._client.get_result(self.config.frame_type)
            series = (self.config.dataset or str(getattr(result[2], "datasetName", "") or self.name))[:256]
            item = self._item(result, series, self._frame)
            self._frame += 1
            if not self.emit(item):
                return
            self.stopped.wait(self.config.poll_s)

    def _item(self, result: Any, series: str, frame: int, tags: dict[str, Any] | None = None) -> SourceFrame:
        image, _, attrs = result[0], result[1], result[2]
        header: dict[str, Any] = {"series": series, "frame": frame, **self._static}
        epa2 = getattr(attrs, "epa2", 0.0)
        if isinstance(epa2, (int, float)) and epa2 > 0:
            header["dose_e_per_A2"] = float(epa2)
        if self.config.pixel_size_nm is not None:
            header["pixel_size_nm"] = float(self.config.pixel_size_nm)
        if self.config.voltage_kv is not None:
            header["voltage_kv"] = float(self.config.voltage_kv)
        header["tags"] = {"de_acq_index": getattr(attrs, "acqIndex", None), "de_image_index": getattr(attrs, "imageIndex", None),
                          "de_timestamp": getattr(attrs, "timestamp", None), **(tags or {})}
        header.update(self.config.meta)
        if image is None:
            return SourceFrame(header, reject=("unreadable", "DE-Server returned no image (get_result failed)"))
        try:
            pixels = to_wire_dtype(image)
        except ReaderError as e:
            return SourceFrame(header, reject=("unreadable", f"DE-Server image: {e}"))
        return SourceFrame(header, pixels)

    def on_close(self) -> None:
        try:
            self._client.disconnect()
        except Exception:  # noqa: BLE001 - the server may be gone already
            pass
