"""The on-disk sample set shared by ``fringelive synth``, ``fringelive dataset`` and training.

A sample set is a directory::

    <out>/
      samples.h5     images (N, H, W), labels (N, H, W) uint8 {0, 1}, metadata (N,) JSON rows
      metadata.csv   the same metadata: one row per sample, one column per parameter
      parts/         only while a resumable writer is running: one ``<index>.npz`` per sample

``samples.h5`` attributes: ``format`` = ``fringelive-samples``, ``version`` = 1, ``content`` =
``raw`` (camera counts, to be preprocessed by the card's parameters before training; what
``synth`` writes) or ``preprocessed`` (network input already; what ``dataset`` writes, with the
:class:`~fringelive.bundle.card.Preprocessing` it used as JSON in ``preprocessing``), plus
``source`` (``synth-abtem`` | ``synth-fast`` | ``dataset``), ``created`` (UTC ISO 8601) and
``command``. Images are stored one chunk per sample, gzip level 1.

Metadata rows use the wire names and units of ``docs/protocol.md`` where they exist:
``material`` (str), ``particle_diameter_nm`` (nm; a number or a list, one per particle),
``pixel_size_nm`` (nm/pixel), ``dose_e_per_A2`` (e/Å²), ``voltage_kv`` (kV), ``support`` (str);
every other column is carried as is. :func:`envelope_from_metadata` turns them into a card
envelope.

:class:`PartStore` is the resumable staging area: each finished sample is written atomically
(temporary file + rename) as ``parts/<index>.npz``, so a killed run loses at most the samples in
flight; :meth:`PartStore.assemble` writes ``samples.h5`` + ``metadata.csv`` and removes the parts.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fringelive.bundle.card import Envelope, Preprocessing, Range, utc_now_iso

__all__ = [
    "FORMAT",
    "VERSION",
    "DATA_FILE",
    "METADATA_FILE",
    "PARTS_DIR",
    "CONTENTS",
    "SampleSetError",
    "SampleSet",
    "PartStore",
    "SampleSetWriter",
    "write_sampleset",
    "load_sampleset",
    "resolve_sampleset_path",
    "envelope_from_metadata",
    "write_metadata_csv",
    "preprocessing_to_json",
    "preprocessing_from_json",
]

FORMAT = "fringelive-samples"
VERSION = 1
DATA_FILE = "samples.h5"
METADATA_FILE = "metadata.csv"
PARTS_DIR = "parts"
CONTENTS = ("raw", "preprocessed")


class SampleSetError(ValueError):
    """A sample set that cannot be written or read; the message names the path and the problem."""


def preprocessing_to_json(params: Preprocessing) -> str:
    from dataclasses import asdict

    d = asdict(params)
    d["flatfield_degree"] = list(params.flatfield_degree)
    d["histogram_percentiles"] = list(params.histogram_percentiles)
    return json.dumps(d, sort_keys=True)


def preprocessing_from_json(text: str) -> Preprocessing:
    d = json.loads(text)
    d["flatfield_degree"] = tuple(int(v) for v in d["flatfield_degree"])
    d["histogram_percentiles"] = tuple(float(v) for v in d["histogram_percentiles"])
    return Preprocessing(**d)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def write_metadata_csv(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """One row per sample; columns are the union of the rows' keys in first-seen order; lists
    and dicts as JSON, ``None`` as an empty cell."""
    columns: list[str] = []
    for row in rows:
        for k in row:
            if k not in columns:
                columns.append(k)
    tmp = Path(path).with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(_jsonable(row.get(k))) for k in columns})
    os.replace(tmp, path)


@dataclass(frozen=True)
class SampleSet:
    """A loaded sample set: ``images`` (N, H, W) (uint16/float32 raw counts or float32
    preprocessed), ``labels`` (N, H, W) uint8 {0, 1}, one metadata dict per sample."""

    path: Path
    images: np.ndarray
    labels: np.ndarray
    metadata: list[dict[str, Any]]
    content: str
    preprocessing: Preprocessing | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def name(self) -> str:
        return self.path.parent.name if self.path.name == DATA_FILE else self.path.stem


def resolve_sampleset_path(path: str | os.PathLike[str]) -> Path:
    """``samples.h5`` of a sample-set directory, or the file itself."""
    p = Path(path)
    if p.is_dir():
        p = p / DATA_FILE
    if not p.is_file():
        raise SampleSetError(f"{path}: no sample set here (expected a directory with {DATA_FILE} "
                             f"or an .h5 file); make one with `fringelive synth` or `fringelive dataset`")
    return p


class SampleSetWriter:
    """Streams samples into ``out/samples.h5`` (a temporary file until :meth:`close`, which
    renames it into place and writes ``metadata.csv``); a context manager. On an exception
    inside the ``with`` block nothing is published. Every sample has the same ``(H, W)`` and
    image dtype (those of the first one)."""

    def __init__(self, out: str | os.PathLike[str], *, content: str, source: str,
                 preprocessing: Preprocessing | None = None, command: str | None = None,
                 attrs: Mapping[str, Any] | None = None) -> None:
        import h5py

        if content not in CONTENTS:
            raise SampleSetError(f"content must be one of {CONTENTS}, got {content!r}")
        if content == "preprocessed" and preprocessing is None:
            raise SampleSetError("preprocessed samples need the Preprocessing parameters that made them")
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".samples-", suffix=".h5", dir=self.out)
        os.close(fd)
        self._tmp = Path(name)
        self._file = h5py.File(self._tmp, "w")
        f = self._file
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["content"] = content
        f.attrs["source"] = source
        f.attrs["created"] = utc_now_iso()
        f.attrs["command"] = command or ""
        if preprocessing is not None:
            f.attrs["preprocessing"] = preprocessing_to_json(preprocessing)
        for k, v in (attrs or {}).items():
            f.attrs[k] = json.dumps(_jsonable(v))
        self._rows: list[dict[str, Any]] = []
        self._images: Any = None
        self._labels: Any = None
        self.path: Path | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def __enter__(self) -> "SampleSetWriter":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def add(self, image: np.ndarray, label: np.ndarray, row: Mapping[str, Any]) -> None:
        """Append one sample: image ``(H, W)``, label ``(H, W)`` {0, 1}, its metadata row."""
        image = np.asarray(image)
        label = np.asarray(label)
        if image.ndim != 2 or image.shape != label.shape:
            raise SampleSetError(f"image {image.shape} and label {label.shape} must both be (H, W) and equal")
        if label.size and int(label.max()) > 1:
            raise SampleSetError(f"labels must be 0/1, got values up to {int(label.max())}")
        if self._images is None:
            h, w = image.shape
            kw = dict(chunks=(1, h, w), compression="gzip", compression_opts=1)
            self._images = self._file.create_dataset("images", shape=(0, h, w), maxshape=(None, h, w),
                                                     dtype=image.dtype, **kw)
            self._labels = self._file.create_dataset("labels", shape=(0, h, w), maxshape=(None, h, w),
                                                     dtype=np.uint8, **kw)
        elif image.shape != self._images.shape[1:]:
            raise SampleSetError(f"sample {len(self._rows)} is {image.shape}, the set's samples are "
                                 f"{self._images.shape[1:]}")
        n = len(self._rows)
        self._images.resize(n + 1, axis=0)
        self._labels.resize(n + 1, axis=0)
        self._images[n] = image.astype(self._images.dtype, copy=False)
        self._labels[n] = label.astype(np.uint8, copy=False)
        self._rows.append(_jsonable(dict(row)))

    def close(self) -> Path:
        """Publish ``samples.h5`` and ``metadata.csv``; returns the ``samples.h5`` path."""
        import h5py

        if self.path is not None:
            return self.path
        if self._images is None:
            self._file.create_dataset("images", shape=(0, 0, 0), dtype=np.float32)
            self._file.create_dataset("labels", shape=(0, 0, 0), dtype=np.uint8)
        self._file.create_dataset("metadata", data=[json.dumps(r) for r in self._rows], dtype=h5py.string_dtype())
        self._file.close()
        os.replace(self._tmp, self.out / DATA_FILE)
        write_metadata_csv(self.out / METADATA_FILE, self._rows)
        self.path = self.out / DATA_FILE
        return self.path

    def abort(self) -> None:
        """Drop what was written (nothing is published)."""
        try:
            self._file.close()
        finally:
            self._tmp.unlink(missing_ok=True)


def write_sampleset(out: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray,
                    metadata: Sequence[Mapping[str, Any]], *, content: str, source: str,
                    preprocessing: Preprocessing | None = None, command: str | None = None,
                    attrs: Mapping[str, Any] | None = None) -> Path:
    """Write ``out/samples.h5`` and ``out/metadata.csv`` (atomically: temporary file, then
    rename). images ``(N, H, W)``; labels ``(N, H, W)`` {0, 1}; one metadata row per sample."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 3 or images.shape != labels.shape:
        raise SampleSetError(f"images {images.shape} and labels {labels.shape} must both be (N, H, W)")
    if len(metadata) != images.shape[0]:
        raise SampleSetError(f"{len(metadata)} metadata rows for {images.shape[0]} samples")
    with SampleSetWriter(out, content=content, source=source, preprocessing=preprocessing, command=command,
                         attrs=attrs) as w:
        for im, lb, row in zip(images, labels, metadata):
            w.add(im, lb, row)
    return w.close()


def load_sampleset(path: str | os.PathLike[str], indices: Sequence[int] | None = None) -> SampleSet:
    """Read a sample set (all samples, or ``indices``) into memory."""
    import h5py

    p = resolve_sampleset_path(path)
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise SampleSetError(f"{p}: not a readable HDF5 file: {e}") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise SampleSetError(f"{p}: not a fringelive sample set (format attribute "
                                 f"{f.attrs.get('format')!r}, expected {FORMAT!r})")
        if int(f.attrs.get("version", -1)) != VERSION:
            raise SampleSetError(f"{p}: sample-set version {f.attrs.get('version')!r} is not supported "
                                 f"(supported: {VERSION})")
        for name in ("images", "labels", "metadata"):
            if name not in f:
                raise SampleSetError(f"{p}: dataset {name!r} is missing")
        content = str(f.attrs["content"])
        if content not in CONTENTS:
            raise SampleSetError(f"{p}: content attribute {content!r} is not one of {CONTENTS}")
        n = f["images"].shape[0]
        idx = list(range(n)) if indices is None else [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise SampleSetError(f"{p}: sample indices {bad[:5]} are outside 0..{n - 1}")
        if indices is None:
            images, labels = f["images"][...], f["labels"][...]
        else:
            order = np.unique(np.asarray(idx, dtype=np.int64))
            where = np.searchsorted(order, np.asarray(idx, dtype=np.int64))
            images = f["images"][order][where] if len(order) else np.zeros((0, *f["images"].shape[1:]), f["images"].dtype)
            labels = f["labels"][order][where] if len(order) else np.zeros((0, *f["labels"].shape[1:]), np.uint8)
        texts = f["metadata"].asstr()[...]
        metadata = [json.loads(texts[i]) for i in idx]
        prep = f.attrs.get("preprocessing")
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    return SampleSet(path=p, images=images, labels=labels.astype(np.uint8, copy=False), metadata=metadata,
                     content=content, preprocessing=preprocessing_from_json(prep) if prep else None,
                     attrs=attrs)


# --- resumable staging ----------------------------------------------------------------------

class PartStore:
    """``out/parts/<index>.npz`` per finished sample (image, label, metadata JSON), written
    atomically; ``indices()`` are the finished ones. A context manager for symmetry with the
    other resources (nothing is held open between calls)."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)
        self.dir = self.out / PARTS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(".*.tmp*"):  # a write interrupted by a kill
            stale.unlink(missing_ok=True)

    def __enter__(self) -> "PartStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        return None

    def _file(self, index: int) -> Path:
        return self.dir / f"{index:08d}.npz"

    def has(self, index: int) -> bool:
        return self._file(index).is_file()

    def indices(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.npz") if p.stem.isdigit())

    def put(self, index: int, image: np.ndarray, label: np.ndarray, row: Mapping[str, Any]) -> None:
        tmp = self.dir / f".{index:08d}.tmp.npz"
        np.savez(tmp, image=np.asarray(image), label=np.asarray(label, dtype=np.uint8),
                 meta=np.array(json.dumps(_jsonable(dict(row)))))
        os.replace(tmp, self._file(index))

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        with np.load(self._file(index), allow_pickle=False) as z:
            return z["image"], z["label"], json.loads(str(z["meta"]))

    def assemble(self, count: int, *, content: str, source: str, preprocessing: Preprocessing | None = None,
                 command: str | None = None, attrs: Mapping[str, Any] | None = None,
                 keep_parts: bool = False) -> Path:
        """Write ``samples.h5`` + ``metadata.csv`` from parts ``0..count-1`` (all must exist)."""
        missing = [i for i in range(count) if not self.has(i)]
        if missing:
            raise SampleSetError(f"{self.dir}: {len(missing)} of {count} samples are not finished "
                                 f"(first missing: {missing[:5]})")
        with SampleSetWriter(self.out, content=content, source=source, preprocessing=preprocessing,
                             command=command, attrs=attrs) as w:
            for i in range(count):
                w.add(*self.get(i))
        path = w.close()
        if not keep_parts:
            shutil.rmtree(self.dir, ignore_errors=True)
        return path


# --- envelope ------------------------------------------------------------------------------

def _numbers(values: Iterable[Any]) -> list[float]:
    out: list[float] = []
    for v in values:
        if isinstance(v, (list, tuple)):
            out.extend(_numbers(v))
            continue
        if v is None or v == "" or isinstance(v, bool):
            continue
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x):
            out.append(x)
    return out


def _range(rows: Sequence[Mapping[str, Any]], key: str, digits: int = 6) -> Range | None:
    xs = _numbers(r.get(key) for r in rows)
    if not xs:
        return None
    return Range(round(min(xs), digits), round(max(xs), digits))


def _labels(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[str, ...]:
    seen: list[str] = []
    for r in rows:
        v = r.get(key)
        for s in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(s, str) and s and s not in seen:
                seen.append(s)
    return tuple(seen)


def envelope_from_metadata(rows: Sequence[Mapping[str, Any]]) -> Envelope:
    """The card envelope covered by metadata rows: materials and supports seen, min–max of
    particle diameter (nm), pixel size (nm/pixel), dose (e/Å²) and voltage (kV); a field no row
    gives stays unset (``None`` / empty)."""
    return Envelope(
        material=_labels(rows, "material"),
        particle_diameter_nm=_range(rows, "particle_diameter_nm", 3),
        pixel_size_nm=_range(rows, "pixel_size_nm", 6),
        dose_e_per_A2=_range(rows, "dose_e_per_A2", 2),
        voltage_kv=_range(rows, "voltage_kv", 2),
        support=_labels(rows, "support"),
    )
