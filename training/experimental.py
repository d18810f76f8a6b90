"""Training patches from labelled experimental images: ``fringelive dataset``.

Inputs: image files (Gatan ``.dm3``/``.dm4``, ``.ser``/``.emd`` through rosettasciio, 8/16-bit
``.tif``, ``.png``, ``.jpg``/``.jpeg``, ``.npy``; read by
:func:`fringelive.engine.readers.read_frames`, grey stored as RGB/RGBA reduced to one channel),
one label image per image (``<image stem><label_suffix>``, default ``_label.png``, or a
``label_pattern`` such as ``label_{index}.png``: :mod:`fringelive.training.label_pairing`; any
non-zero pixel is particle, so 0/255 and 0/1 masks both work) and optionally a metadata CSV with
one row per image, keyed by file name (the published ``Dataset_metadata.csv`` works as is).
Pixel size and dose are optional: without them the trained card's envelope leaves them unknown
(``null``) and the daemon does not flag frames for them.

Per selected image: the whole frame is preprocessed with the shared engine
(:func:`fringelive.engine.preprocess.preprocess`, card-style
:class:`~fringelive.bundle.card.Preprocessing`), cut into ``patch_px``² patches on a
``stride_px`` grid, and the patches with more than ``min_particle_px`` particle pixels are kept.
The output is a ``preprocessed`` sample set (:mod:`fringelive.training.samples`), one metadata
row per patch: the CSV row's columns as they are, the standard keys (``material``,
``particle_diameter_nm``, ``pixel_size_nm``, ``dose_e_per_A2``, ``voltage_kv``, ``support``),
the metadata read from the file (prefixed ``file_``), and ``source_file``, ``patch_y``,
``patch_x`` (px), ``patch_px``, ``particle_px``.

Selection (:class:`Selection`): ``column = value`` (strings: case-insensitive, surrounding
blanks ignored) or ``|column - value| <= tolerance`` for numbers; every selection must hold.
Columns are looked up in the CSV row, then under the standard names (so ``pixel_size_nm``
selects on the file's own pixel size when there is no CSV).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fringelive.bundle.card import Preprocessing
from fringelive.engine.preprocess import preprocess
from fringelive.engine.readers import ReaderError, read_frames
from fringelive.training.label_pairing import LabelPattern, LabelPatternError
from fringelive.training.progress import progress_bar
from fringelive.training.samples import SampleSetWriter

__all__ = [
    "COLUMN_ALIASES",
    "Selection",
    "DatasetConfig",
    "DatasetError",
    "DatasetReport",
    "read_metadata_csv",
    "standard_fields",
    "find_images",
    "read_label",
    "patch_origins",
    "build_dataset",
]

log = logging.getLogger(__name__)

#: Standard metadata keys ← column names of the published ``Dataset_metadata.csv``.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "material": ("Material",),
    "particle_diameter_nm": ("Nanoparticle Size (nm)",),
    "pixel_size_nm": ("Pixel Scale (nm)",),
    "dose_e_per_A2": ("Dosage (e/A2)",),
    "support": ("Support",),
    "voltage_kv": ("Voltage (kV)",),
}
_NUMERIC_KEYS = ("particle_diameter_nm", "pixel_size_nm", "dose_e_per_A2", "voltage_kv")
IMAGE_SUFFIXES = (".dm3", ".dm4", ".ser", ".emd", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")


class DatasetError(ValueError):
    """Inputs that cannot make a dataset; the message names the file, column or value."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        x = float(str(value).strip())
    except ValueError:
        return None
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Selection:
    """Keep rows whose ``column`` equals ``value`` (case-insensitive strings) or, for numbers,
    lies within ``tolerance`` of it (absolute, in the column's unit; 0 = equal within 1e-9)."""

    column: str
    value: str
    tolerance: float = 0.0

    def __post_init__(self) -> None:
        if not self.column:
            raise DatasetError("selection column must be a non-empty name")
        if not (self.tolerance >= 0 and math.isfinite(self.tolerance)):
            raise DatasetError(f"selection tolerance must be a finite number >= 0, got {self.tolerance!r}")
        if self.tolerance > 0 and _number(self.value) is None:
            raise DatasetError(f"selection on {self.column!r} has a tolerance but value {self.value!r} is not a number")

    def matches(self, row: Mapping[str, Any]) -> bool:
        if self.column in row:
            cell = row[self.column]
        else:
            return False
        want, got = _number(self.value), _number(cell)
        if want is not None and got is not None:
            return abs(got - want) <= max(self.tolerance, 1e-9 * max(abs(want), 1.0))
        return str(cell).strip().lower() == str(self.value).strip().lower()


@dataclass(frozen=True)
class DatasetConfig:
    """patch_px: patch side (px, multiple of 16); stride_px: patch grid step (px; None = the
    patch side, no overlap); min_particle_px: keep patches with more particle pixels than this;
    key_column: CSV column with the image file name; label_suffix: label file = image stem +
    this; label_pattern: pair labels by a pattern instead (``label_{index}.png``,
    :class:`~fringelive.training.label_pairing.LabelPattern`; None = by ``label_suffix``);
    voltage_kv: kV when neither CSV nor file says (None = leave unset)."""

    patch_px: int = 512
    stride_px: int | None = None
    min_particle_px: int = 400
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    selections: tuple[Selection, ...] = ()
    key_column: str = "File name"
    label_suffix: str = "_label.png"
    voltage_kv: float | None = None
    label_pattern: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.patch_px, bool) or not isinstance(self.patch_px, int) or self.patch_px < 16 \
                or self.patch_px % 16:
            raise DatasetError(f"patch_px must be a positive multiple of 16, got {self.patch_px!r}")
        if self.stride_px is not None and (not isinstance(self.stride_px, int) or self.stride_px < 1):
            raise DatasetError(f"stride_px must be a positive integer, got {self.stride_px!r}")
        if not isinstance(self.min_particle_px, int) or self.min_particle_px < 0:
            raise DatasetError(f"min_particle_px must be an integer >= 0, got {self.min_particle_px!r}")
        if self.voltage_kv is not None and not self.voltage_kv > 0:
            raise DatasetError(f"voltage_kv must be > 0 kV, got {self.voltage_kv!r}")
        if self.label_pattern is not None:
            try:
                LabelPattern(self.label_pattern)
            except LabelPatternError as e:
                raise DatasetError(str(e)) from None


@dataclass
class DatasetReport:
    path: Path
    images_used: int
    patches: int
    patches_rejected: int
    skipped: dict[str, list[str]]


def read_metadata_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Rows of a CSV (first line = header; UTF-8 with or without BOM) as dicts of strings."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{path}: metadata CSV not found")
    with open(p, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            raise DatasetError(f"{path}: metadata CSV has no header row")
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def standard_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The standard keys found in ``row`` under their own or an alias column (numbers parsed)."""
    out: dict[str, Any] = {}
    for key, aliases in COLUMN_ALIASES.items():
        for col in (key, *aliases):
            if col in row and row[col] not in (None, ""):
                v = row[col]
                out[key] = _number(v) if key in _NUMERIC_KEYS else str(v).strip()
                break
    return {k: v for k, v in out.items() if v is not None}


def find_images(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files named directly or found (recursively) in directories, sorted by path."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES
                         and not q.name.startswith("."))
        elif p.is_file():
            found.append(p)
        else:
            raise DatasetError(f"{item}: no such image file or directory")
    return sorted(set(found))


def read_label(path: str | os.PathLike[str]) -> np.ndarray:
    """A label image (PNG/TIFF via Pillow, or ``.npy``) as ``(H, W)`` uint8 {0, 1}: non-zero = particle."""
    p = Path(path)
    if p.suffix.lower() == ".npy":
        arr = np.load(p, allow_pickle=False)
    else:
        from PIL import Image

        with Image.open(p) as im:
            arr = np.asarray(im)
    if arr.ndim == 3:  # RGB(A) label: any non-zero colour channel
        arr = arr[..., :3].max(axis=-1)
    if arr.ndim != 2:
        raise DatasetError(f"{p}: label must be a 2-D image, got shape {arr.shape}")
    return (arr > 0).astype(np.uint8)


def patch_origins(length: int, patch: int, stride: int) -> list[int]:
    """Patch starts along one axis (px): ``0, stride, …`` while the patch fits."""
    if length < patch:
        return []
    return list(range(0, length - patch + 1, stride))


def _label_for(image: Path, labels_dir: Path | None, suffix: str) -> Path | None:
    for folder in ([labels_dir] if labels_dir else []) + [image.parent]:
        cand = folder / f"{image.stem}{suffix}"
        if cand.is_file():
            return cand
    return None


def _csv_index(rows: list[dict[str, str]], key_column: str, path: str) -> dict[str, dict[str, str]]:
    if rows and key_column not in rows[0]:
        raise DatasetError(f"{path}: no column {key_column!r} (columns: {list(rows[0])}); set --key-column")
    out: dict[str, dict[str, str]] = {}
    for r in rows:
        name = Path(r.get(key_column, "")).name
        if name:
            out.setdefault(name, r)
            out.setdefault(Path(name).stem, r)
    return out


def _iter_patches(image: np.ndarray, label: np.ndarray, patch: int, stride: int
                  ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    for y in patch_origins(image.shape[0], patch, stride):
        for x in patch_origins(image.shape[1], patch, stride):
            yield y, x, image[y:y + patch, x:x + patch], label[y:y + patch, x:x + patch]


def build_dataset(images: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], cfg: DatasetConfig, *,
                  labels_dir: str | os.PathLike[str] | None = None,
                  metadata_csv: str | os.PathLike[str] | None = None,
                  progress: bool = True, command: str | None = None) -> DatasetReport:
    """Make a preprocessed sample set in ``out`` (see the module docstring)."""

    files = find_images(images)
    if not files:
        raise DatasetError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {list(map(str, images))}")
    labels_path = Path(labels_dir) if labels_dir else None
    if labels_path is not None and not labels_path.is_dir():
        raise DatasetError(f"{labels_dir}: labels directory not found")
    index = _csv_index(read_metadata_csv(metadata_csv), cfg.key_column, str(metadata_csv)) if metadata_csv else None
    skipped: dict[str, list[str]] = {"no_metadata_row": [], "not_selected": [], "no_label": [], "too_small": []}
    pattern = LabelPattern(cfg.label_pattern) if cfg.label_pattern is not None else None
    label_index = (pattern.index_labels(([labels_path] if labels_path else []) + sorted({f.parent for f in files}))
                   if pattern is not None else {})
    # decide what to read before reading (selection on CSV columns needs no pixels)
    plan: list[tuple[Path, dict[str, str], Path]] = []
    for f in files:
        if f.name.endswith(cfg.label_suffix) or (pattern is not None and pattern.matches(f)):
            continue
        csv_row: dict[str, str] = {}
        if index is not None:
            hit = index.get(f.name) or index.get(f.stem)
            if hit is None:
                skipped["no_metadata_row"].append(f.name)
                continue
            csv_row = hit
        early = {**csv_row, **standard_fields(csv_row)}
        if not all(s.matches(early) for s in cfg.selections if s.column in early):
            skipped["not_selected"].append(f.name)
            continue
        label = (pattern.label_for(f, labels_path, label_index) if pattern is not None
                 else _label_for(f, labels_path, cfg.label_suffix))
        if label is None:
            skipped["no_label"].append(f.name)
            continue
        plan.append((f, csv_row, label))
    stride = cfg.stride_px or cfg.patch_px
    kept = rejected = used = 0
    bar = progress_bar(progress, len(plan), desc="dataset", unit="image")
    with SampleSetWriter(out, content="preprocessed", source="dataset", preprocessing=cfg.preprocessing,
                         command=command, attrs={"dataset_config": {
                             "patch_px": cfg.patch_px, "stride_px": stride, "min_particle_px": cfg.min_particle_px,
                             "selections": [[s.column, s.value, s.tolerance] for s in cfg.selections],
                             "metadata_csv": str(metadata_csv) if metadata_csv else None}}) as writer:
        try:
            for f, csv_row, label_path in plan:
                bar.update(1)
                try:
                    frame = next(iter(read_frames(f, grey=True)))
                except (ReaderError, StopIteration) as e:
                    raise DatasetError(f"{f}: {e or 'no frame'}") from None
                file_meta = {k: v for k, v in frame.meta.items() if k in
                             ("pixel_size_nm", "voltage_kv", "magnification", "exposure_s", "camera")}
                row: dict[str, Any] = dict(csv_row)
                std = {**{k: v for k, v in file_meta.items() if k in ("pixel_size_nm", "voltage_kv")},
                       **standard_fields(csv_row)}
                if "voltage_kv" not in std and cfg.voltage_kv is not None:
                    std["voltage_kv"] = cfg.voltage_kv
                row.update(std)
                row.update({f"file_{k}": v for k, v in file_meta.items()})
                if not all(s.matches(row) for s in cfg.selections):
                    skipped["not_selected"].append(f.name)
                    continue
                label = read_label(label_path)
                if label.shape != frame.pixels.shape:
                    raise DatasetError(f"{label_path}: label is {label.shape}, image {f.name} is {frame.pixels.shape}")
                if min(label.shape) < cfg.patch_px:
                    skipped["too_small"].append(f.name)
                    continue
                x = np.asarray(preprocess(frame.pixels, cfg.preprocessing))
                used += 1
                for y0, x0, pim, plb in _iter_patches(x, label, cfg.patch_px, stride):
                    count = int(plb.sum())
                    if count <= cfg.min_particle_px:
                        rejected += 1
                        continue
                    writer.add(pim, plb, {**row, "source_file": f.name, "label_file": label_path.name,
                                          "patch_y": y0, "patch_x": x0, "patch_px": cfg.patch_px,
                                          "particle_px": count})
                    kept += 1
        finally:
            bar.close()
    for reason, names in skipped.items():
        if names:
            log.info("skipped %d image(s) (%s): %s", len(names), reason.replace("_", " "),
                     ", ".join(names[:5]) + (" …" if len(names) > 5 else ""))
    return DatasetReport(writer.close(), used, kept, rejected, skipped)
