"""The ``deapi`` source: frames from a Direct Electron DE-Server through the ``deapi`` client.

With ``control = true`` (required for now) the source runs one-frame acquisitions back to back
(``start_acquisition(1)``, wait until the server is idle, ``get_result("singleframe_integrated")``)
and hands each image on: ``series`` = ``dataset`` (default DE-Server's dataset name), ``frame``
= 0, 1, ... ; metadata: ``exposure_s`` from "Exposure Time (seconds)" when it is a plausible
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
        try:
            self._client.connect(host=config.host, port=config.port)
        except OSError as e:
            raise ConfigError(f"source {self.name!r}: cannot connect to DE-Server at {config.host}:{config.port}: {e}") from None
        self._frame = 0
        self._static = self._read_static()

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
        while not self.stopped.is_set():
            self._client.start_acquisition(1)
            t_end = time.monotonic() + _ACQUISITION_TIMEOUT_S
            while self._client.acquiring:
                if self.stopped.wait(0.01):
                    return
                if time.monotonic() > t_end:
                    raise RuntimeError(f"DE-Server still acquiring after {_ACQUISITION_TIMEOUT_S:g} s")
            item = self._item(self._client.get_result("singleframe_integrated"))
            if not self.emit(item):
                return
            self.stopped.wait(self.config.poll_s)

    def _item(self, result: Any) -> SourceFrame:
        image, _, attrs = result[0], result[1], result[2]
        series = (self.config.dataset or str(getattr(attrs, "datasetName", "") or self.name))[:256]
        header: dict[str, Any] = {"series": series, "frame": self._frame, **self._static}
        self._frame += 1
        epa2 = getattr(attrs, "epa2", 0.0)
        if isinstance(epa2, (int, float)) and epa2 > 0:
            header["dose_e_per_A2"] = float(epa2)
        if self.config.pixel_size_nm is not None:
            header["pixel_size_nm"] = float(self.config.pixel_size_nm)
        if self.config.voltage_kv is not None:
            header["voltage_kv"] = float(self.config.voltage_kv)
        header["tags"] = {"de_acq_index": getattr(attrs, "acqIndex", None), "de_image_index": getattr(attrs, "imageIndex", None),
                          "de_timestamp": getattr(attrs, "timestamp", None)}
        header.update(self.config.meta)
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
