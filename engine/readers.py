"""Image files → (pixels (H, W), metadata) frames for ``fringelive send``.

Formats: ``.npy`` (2-D image or 3-D (N, H, W) stack, memory-mapped; what a 3-D array means is
decided by :func:`fringelive.engine.channels.as_frames`: RGB/RGBA is refused unless ``grey``,
an ambiguous stack unless ``stack``), ``.tif``/``.tiff`` (tifffile; every page or stack plane is
a frame; RGB/RGBA pages need ``grey``), ``.png``/``.jpg``/``.jpeg`` (Pillow; grey, or colour
reduced by ``grey``; 8- or 16-bit), Gatan ``.dm3``/``.dm4`` and FEI ``.ser``/``.emd``
(rosettasciio, the ``fringelive[io]`` extra, imported lazily).

Metadata taken from files (wire key names and units of ``docs/protocol.md``):

* DM / SER / EMD (rosettasciio): ``pixel_size_nm`` from the x signal axis ``scale`` and
  ``units`` (nm, µm, Å, pm, m, ...; reciprocal units are skipped), ``voltage_kv`` from
  ``Acquisition_instrument.TEM.beam_energy`` (kV), ``magnification`` from
  ``...TEM.magnification``, ``exposure_s`` from ``...TEM.Camera.exposure`` or
  ``...TEM.Detector.Camera.exposure`` (s), ``camera`` from the DM acquisition device name or
  ``...TEM.Detector.Camera.Name``, ``timestamp`` from ``General.date`` + ``General.time``
  (+ ``time_zone``; local time when absent), ``tags.title``/``tags.microscope``/``tags.source``.
  DM3/DM4 only: ``camera_gain_counts_per_e`` = 1/``Scale`` and ``camera_offset_counts`` =
  ``Origin`` from ``ImageList.TagGroup0.ImageData.Calibrations.Brightness`` when its ``Units``
  are electrons (``e``, ``e-``, ``electron(s)``): DM's calibrated value is ``(raw − Origin)·Scale``.
  Other units (counts, empty: DM's default Scale 1, Origin 0) give nothing. SER and EMD carry no
  camera gain in counts per electron (EMD ``Detector`` gains are amplifier settings): use
  ``--meta camera_gain_counts_per_e=... --meta camera_offset_counts=...``.
* TIFF: keys with protocol names stored by tifffile in the JSON description
  (``tifffile.imwrite(..., metadata={"pixel_size_nm": 0.02})``); ImageJ ``unit`` +
  ``XResolution`` (px per unit) → ``pixel_size_nm``; FEI/Thermo ``Scan.PixelWidth`` (m) and
  ``EBeam.HV`` (V).
* ``.npy``: none (use ``--meta``).

Pixels are converted to a wire dtype by :func:`to_wire_dtype`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fringelive.engine.channels import ChannelError, as_frames, to_grey
from fringelive.engine.frame import ALLOWED_DTYPES, METADATA_KEYS

log = logging.getLogger(__name__)

NPY_SUFFIXES = (".npy",)
TIFF_SUFFIXES = (".tif", ".tiff")
RSCIIO_SUFFIXES = (".dm3", ".dm4", ".ser", ".emd")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
SUPPORTED_SUFFIXES = NPY_SUFFIXES + TIFF_SUFFIXES + PIL_SUFFIXES + RSCIIO_SUFFIXES

#: Length units → nm. Keys are lower-case; "µ" (micro sign) and "μ" (Greek mu) both appear.
UNIT_TO_NM: dict[str, float] = {
    "nm": 1.0, "nanometer": 1.0, "nanometers": 1.0, "nanometre": 1.0,
    "µm": 1e3, "μm": 1e3, "um": 1e3, "micron": 1e3, "microns": 1e3, "\\u00b5m": 1e3,
    "å": 0.1, "a": 0.1, "angstrom": 0.1, "ang": 0.1,
    "pm": 1e-3, "mm": 1e6, "cm": 1e7, "m": 1e9, "meter": 1e9, "meters": 1e9, "metre": 1e9,
}


class ReaderError(ValueError):
    """A file cannot be turned into frames; the message names the file and the problem."""


@dataclass(frozen=True)
class ImageFrame:
    """One frame read from a file: ``pixels`` (H, W) in a wire dtype, ``meta`` protocol
    metadata keys (may be empty), ``source`` "file[index]" for messages."""

    pixels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""


# --------------------------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------------------------

def length_to_nm(value: float, units: Any) -> float | None:
    """``value`` in ``units`` as nm; ``None`` when the unit is unknown, reciprocal or empty."""
    if not isinstance(units, str):
        return None
    key = units.strip().lower().replace(" ", "")
    factor = UNIT_TO_NM.get(key)
    if factor is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    result = float(value) * factor
    return result if math.isfinite(result) and result > 0 else None


def to_wire_dtype(pixels: np.ndarray) -> np.ndarray:
    """Return ``pixels`` in a dtype of :data:`ALLOWED_DTYPES` (native order, unchanged when it
    already is). bool → uint8; int8 → int16; wider integers → the narrowest of uint16/uint32/int16
    that holds the value range, else float32; float16/float64 → float32 (must stay finite).
    Raises :class:`ReaderError` for complex or non-numeric data."""
    arr = np.asarray(pixels)
    if arr.dtype.name in ALLOWED_DTYPES:
        return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))
    kind = arr.dtype.kind
    if kind == "b":
        return arr.astype(np.uint8)
    if kind in "iu":
        if arr.dtype == np.int8:
            return arr.astype(np.int16)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        for name in ("uint16", "uint32") if lo >= 0 else ("int16",):
            info = np.iinfo(name)
            if info.min <= lo and hi <= info.max:
                return arr.astype(name)
        return arr.astype(np.float32)
    if kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise ReaderError(f"{arr.dtype.name} pixels have NaN/Inf or values beyond float32 "
                              "range; the daemon rejects non-finite pixels")
        return out
    raise ReaderError(f"pixel dtype {arr.dtype} cannot be sent (need a real number type)")


def _get_path(tree: Any, dotted: str) -> Any:
    node = tree
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _positive(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _timestamp(general: Any) -> float | None:
    date, time = _get_path(general, "date"), _get_path(general, "time")
    if not isinstance(date, str) or not date:
        return None
    text = f"{date}T{time}" if isinstance(time, str) and time else date
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    zone = _get_path(general, "time_zone")
    if moment.tzinfo is None and isinstance(zone, str) and zone.upper() in ("UTC", "GMT", "Z"):
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def rsciio_image_axes(signal: Mapping[str, Any]) -> tuple[Mapping, Mapping] | None:
    """The (y, x) axis dicts of a rosettasciio signal when its last two array axes form an image
    (not navigation axes), else ``None`` (e.g. a spectrum)."""
    axes = [a for a in signal.get("axes") or [] if isinstance(a, Mapping)]
    if len(axes) < 2:
        return None
    ordered = sorted(enumerate(axes), key=lambda ia: (ia[1].get("index_in_array", ia[0]), ia[0]))
    y_axis, x_axis = ordered[-2][1], ordered[-1][1]
    if y_axis.get("navigate", False) or x_axis.get("navigate", False):
        return None
    return y_axis, x_axis


def metadata_from_rsciio(signal: Mapping[str, Any]) -> dict[str, Any]:
    """Protocol metadata from one rosettasciio signal dict (``data``, ``axes``, ``metadata``,
    ``original_metadata``). Missing or unusable entries are left out, never guessed."""
    meta: dict[str, Any] = {}
    image_axes = rsciio_image_axes(signal)
    if image_axes is not None:
        y_axis, x_axis = image_axes
        px = length_to_nm(x_axis.get("scale"), x_axis.get("units"))
        py = length_to_nm(y_axis.get("scale"), y_axis.get("units"))
        if px is not None:
            meta["pixel_size_nm"] = px
            if py is not None and not math.isclose(px, py, rel_tol=0.01):
                log.warning("non-square pixels (x %.4g nm, y %.4g nm); sending the x size",
                            px, py)
        elif x_axis.get("units"):
            log.info("axis units %r are not a length; no pixel_size_nm", x_axis.get("units"))
    md = signal.get("metadata") or {}
    tem = _get_path(md, "Acquisition_instrument.TEM") or {}
    voltage = _positive(_get_path(tem, "beam_energy"))
    if voltage is not None:
        meta["voltage_kv"] = voltage
    magnification = _positive(_get_path(tem, "magnification"))
    if magnification is not None:
        meta["magnification"] = magnification
    for path in ("Camera.exposure", "Detector.Camera.exposure", "exposure"):
        exposure = _positive(_get_path(tem, path))
        if exposure is not None:
            meta["exposure_s"] = exposure
            break
    original = signal.get("original_metadata") or {}
    for camera in (_get_path(original, "ImageList.TagGroup0.ImageTags.Acquisition.Device.Name"),
                   _get_path(tem, "Detector.Camera.Name"), _get_path(tem, "Camera.name")):
        if isinstance(camera, str) and camera:
            meta["camera"] = camera
            break
    meta.update(dm_camera_constants(original))
    stamp = _timestamp(_get_path(md, "General"))
    if stamp is not None:
        meta["timestamp"] = stamp
    tags: dict[str, Any] = {}
    for key, path in (("title", "General.title"), ("source", "General.original_filename")):
        value = _get_path(md, path)
        if isinstance(value, str) and value:
            tags[key] = value
    microscope = _get_path(tem, "microscope")
    if isinstance(microscope, str) and microscope:
        tags["microscope"] = microscope
    if tags:
        meta["tags"] = tags
    return meta


#: DM brightness units that mean electrons (case-insensitive).
_ELECTRON_UNITS = frozenset({"e", "e-", "e−", "electron", "electrons"})


def dm_camera_constants(original: Mapping[str, Any]) -> dict[str, float]:
    """``camera_gain_counts_per_e`` / ``camera_offset_counts`` from a DM file's brightness
    calibration (module docstring), or ``{}`` when it does not convert counts to electrons."""
    bright = _get_path(original, "ImageList.TagGroup0.ImageData.Calibrations.Brightness")
    if not isinstance(bright, Mapping):
        return {}
    units = bright.get("Units")
    scale, origin = bright.get("Scale"), bright.get("Origin", 0.0)
    if not isinstance(units, str) or units.strip().lower() not in _ELECTRON_UNITS:
        return {}
    scale = _positive(scale)
    if scale is None or isinstance(origin, bool) or not isinstance(origin, (int, float)) or not math.isfinite(origin):
        return {}
    return {"camera_gain_counts_per_e": 1.0 / scale, "camera_offset_counts": float(origin)}


def _tiff_metadata(tif: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    page = tif.pages[0]
    imagej = tif.imagej_metadata or {}
    unit = imagej.get("unit")
    xres = page.tags.get("XResolution")
    if unit and xres is not None:
        num, den = xres.value
        if num > 0 and den > 0:
            size = length_to_nm(den / num, unit)
            if size is not None:
                meta["pixel_size_nm"] = size
    fei = getattr(tif, "fei_metadata", None) or {}
    width_m = _positive(_get_path(fei, "Scan.PixelWidth"))
    if width_m is not None:
        meta["pixel_size_nm"] = width_m * 1e9
    hv = _positive(_get_path(fei, "EBeam.HV"))
    if hv is not None:
        meta["voltage_kv"] = hv / 1e3
    shaped = tif.shaped_metadata or ()
    if shaped and isinstance(shaped[0], Mapping):
        meta.update({k: v for k, v in shaped[0].items() if k in METADATA_KEYS})
    return meta


# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------

def _frames_of(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 2:
        return array[np.newaxis]
    if array.ndim >= 3:
        return array.reshape((-1,) + array.shape[-2:])
    raise ReaderError(f"{path}: need a 2-D image or an (N, H, W) stack, got shape {array.shape}")


def _read_npy(path: Path, stack: bool = False, grey: bool = False) -> Iterator[ImageFrame]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ReaderError(f"{path}: not a readable .npy array: {e}") from None
    try:
        planes = as_frames(array, str(path), stack=stack, grey=grey)
    except ChannelError as e:
        raise ReaderError(str(e)) from None
    for i, plane in enumerate(planes):
        yield ImageFrame(to_wire_dtype(np.ascontiguousarray(plane)), {}, f"{path.name}[{i}]")


def _read_pil(path: Path, grey: bool = False) -> Iterator[ImageFrame]:
    try:
        from PIL import Image
    except ImportError:
        raise ReaderError(f"reading {path.suffix} needs Pillow: pip install 'fringelive[io]'") from None
    try:
        with Image.open(path) as im:
            array = np.asarray(im)
    except (OSError, ValueError) as e:
        raise ReaderError(f"{path}: not a readable image: {e}") from None
    if array.ndim == 3 and array.shape[-1] == 2:  # grey + alpha ("LA")
        array = array[..., 0]
    if array.ndim == 3:
        if not grey:
            raise ReaderError(f"{path}: a colour image (shape {array.shape}, mode {im.mode}), not a single-channel "
                              "one; pass --grey to reduce it to one channel")
        try:
            array = to_grey(array)
        except ChannelError as e:
            raise ReaderError(f"{path}: {e}") from None
    if array.ndim != 2:
        raise ReaderError(f"{path}: need a 2-D image, got shape {array.shape}")
    yield ImageFrame(to_wire_dtype(np.ascontiguousarray(array)), {}, f"{path.name}[0]")


def _read_tiff(path: Path, grey: bool = False) -> Iterator[ImageFrame]:
    try:
        import tifffile
    except ImportError:
        raise ReaderError("reading TIFF needs tifffile: pip install 'fringelive[io]'") from None
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, OSError, ValueError) as e:
        raise ReaderError(f"{path}: not a readable TIFF: {e}") from None
    with tif:
        meta = _tiff_metadata(tif)
        index = 0
        for series in tif.series:
            axes = series.axes
            if axes.endswith("S") and series.shape[-1] in (3, 4) and len(series.shape) >= 3:
                if not grey:
                    raise ReaderError(f"{path}: series of shape {series.shape} (axes {axes}) is a colour "
                                      "image, not a single-channel one; pass --grey to reduce it to one channel")
                colour = series.asarray().reshape((-1,) + tuple(series.shape[-3:]))
                for c in colour:
                    yield ImageFrame(to_wire_dtype(to_grey(c)), dict(meta), f"{path.name}[{index}]")
                    index += 1
                continue
            if axes.endswith("S") or len(series.shape) < 2:
                raise ReaderError(f"{path}: series of shape {series.shape} (axes {axes}) is not "
                                  "a single-channel image")
            pages = list(series.pages)
            per_page = all(p is not None and p.shape == series.shape[-2:] for p in pages)
            if per_page and len(pages) == math.prod(series.shape[:-2]):
                planes = (p.asarray() for p in pages)
            else:
                planes = iter(_frames_of(series.asarray(), path))
            for plane in planes:
                yield ImageFrame(to_wire_dtype(plane), dict(meta), f"{path.name}[{index}]")
                index += 1


def _rsciio_reader(suffix: str) -> Any:
    module = {".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph", ".ser": "tia",
              ".emd": "emd"}[suffix]
    try:
        import importlib

        return importlib.import_module(f"rsciio.{module}").file_reader
    except ImportError:
        raise ReaderError(f"reading {suffix} files needs rosettasciio: "
                          "pip install 'fringelive[io]'") from None


def frames_from_rsciio(signals: list[Mapping[str, Any]], name: str) -> Iterator[ImageFrame]:
    """The image frames of rosettasciio ``file_reader`` output (signals whose last two axes are
    an image; leading axes are a stack). Non-image signals are skipped; :class:`ReaderError`
    when there is none."""
    index = 0
    images = 0
    for signal in signals:
        data = np.asarray(signal.get("data"))
        if data.ndim < 2 or rsciio_image_axes(signal) is None:
            log.info("%s: skipping a signal of shape %s (not an image)", name, data.shape)
            continue
        images += 1
        meta = metadata_from_rsciio(signal)
        for plane in data.reshape((-1,) + data.shape[-2:]):
            yield ImageFrame(to_wire_dtype(plane), dict(meta), f"{Path(name).name}[{index}]")
            index += 1
    if images == 0:
        raise ReaderError(f"{name}: holds no 2-D image signal")


def _read_rsciio(path: Path) -> Iterator[ImageFrame]:
    reader = _rsciio_reader(path.suffix.lower())
    try:
        signals = reader(str(path))
    except Exception as e:  # noqa: BLE001 - rosettasciio raises many types for bad files
        raise ReaderError(f"{path}: rosettasciio cannot read it: {type(e).__name__}: {e}") from None
    yield from frames_from_rsciio(signals, str(path))


def check_readable(path: str | Path) -> Path:
    """Raise :class:`ReaderError` unless ``path`` exists and has a supported suffix."""
    path = Path(path)
    if not path.is_file():
        raise ReaderError(f"{path}: no such file")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise ReaderError(f"{path}: unsupported file type {path.suffix!r} (supported: "
                          f"{', '.join(SUPPORTED_SUFFIXES)})")
    if path.suffix.lower() in RSCIIO_SUFFIXES:
        _rsciio_reader(path.suffix.lower())
    return path


def read_frames(path: str | Path, *, stack: bool = False, grey: bool = False) -> Iterator[ImageFrame]:
    """Yield the frames of one file, lazily (stacks are read plane by plane where the format
    allows). ``stack``: a 3-D ``.npy`` is a stack whatever its shape; ``grey``: colour images are
    reduced to one channel (exactly when R = G = B), else refused. Raises
    :class:`ReaderError` naming the file."""
    path = check_readable(path)
    suffix = path.suffix.lower()
    if suffix in NPY_SUFFIXES:
        yield from _read_npy(path, stack, grey)
    elif suffix in TIFF_SUFFIXES:
        yield from _read_tiff(path, grey)
    elif suffix in PIL_SUFFIXES:
        yield from _read_pil(path, grey)
    else:
        yield from _read_rsciio(path)
