"""Torch-free part of the seed import (:mod:`fringelive.export.seed_import`): the published
datasets' constants, the checkpoint file names (``UNet_<dataset>_fold<k>_seed<s>_model.h5``),
``model_details.csv`` and ``Dataset_metadata.csv``, and the envelope and bundle name they give."""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from fringelive.bundle.card import Envelope, Preprocessing, Range

__all__ = [
    "SEED_PREPROCESSING",
    "SEED_VOLTAGE_KV",
    "SUPPORT_CODES",
    "SeedImportError",
    "CheckpointName",
    "DatasetDetails",
    "parse_checkpoint_name",
    "read_model_details",
    "read_dataset_metadata",
    "bundle_name",
    "envelope_for",
]

#: Acceleration voltage of the TEAM 0.5 microscope the training data were recorded on (kV).
SEED_VOLTAGE_KV = 300.0
#: The published datasets state one nominal pixel size and dose each. Real frames scatter around
#: the nominal values (magnification calibration ~2 %, beam current and exposure ~10 %), so the
#: imported envelope is the nominal value ± these fractions; the card's tolerances apply beyond.
SEED_PIXEL_SIZE_SPREAD = 0.02
SEED_DOSE_SPREAD = 0.10
#: The published preprocessing recipe: x-ray removal at 1500 counts, flat-field, standardize.
SEED_PREPROCESSING = Preprocessing(xray_removal=True, xray_threshold_counts=1500.0, flatfield=True,
                                   rescale="standardize")
#: Support codes in the checkpoint file names → the spelling of ``Dataset_metadata.csv``.
SUPPORT_CODES = {"UTC": "UT Carbon", "SIN": "SiN"}


class SeedImportError(RuntimeError):
    """A checkpoint that cannot be imported; the message names the file and the problem."""


# --- names and metadata ----------------------------------------------------------------------

_NAME_RE = re.compile(
    r"^u?net_(?P<diameter>\d+(?:p\d+)?)nm(?P<material>[a-z]+?)(?P<mag>\d+)kx(?P<dose>\d+)e"
    r"(?P<support>[a-z]+)_fold(?P<fold>\d+)_seed(?P<seed>\d+)_model\.h5$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class CheckpointName:
    """What a checkpoint's file name says. dataset: the part between ``UNet_`` and ``_fold``."""

    file: str
    dataset: str
    particle_diameter_nm: float
    material: str
    magnification_kx: int
    dose_e_per_A2: float
    support_code: str
    fold: int
    seed: int


def parse_checkpoint_name(name: str) -> CheckpointName:
    """Parse ``UNet_5nmAu330kX423eUTC_fold0_seed962_model.h5`` (any ``UNet_``/``Unet_`` case)."""
    base = os.path.basename(name)
    m = _NAME_RE.match(base)
    if not m:
        raise SeedImportError(
            f"checkpoint file name {base!r} does not follow the published pattern "
            "UNet_<diameter>nm<material><mag>kX<dose>e<support>_fold<k>_seed<s>_model.h5"
        )
    dataset = base[base.index("_") + 1: base.lower().index("_fold")]
    return CheckpointName(
        file=base,
        dataset=dataset,
        particle_diameter_nm=float(m["diameter"].replace("p", ".")),
        material=m["material"],
        magnification_kx=int(m["mag"]),
        dose_e_per_A2=float(m["dose"]),
        support_code=m["support"],
        fold=int(m["fold"]),
        seed=int(m["seed"]),
    )


@dataclass(frozen=True)
class DatasetDetails:
    """One row of ``model_details.csv``. Units: nm, nm/px, e/Å²."""

    model_name: str
    fold: int
    dataset: str
    particle_diameter_nm: float
    material: str
    pixel_size_nm: float
    dose_e_per_A2: float


def _model_key(name: str) -> str:
    """Match key for a checkpoint name: the part after ``UNet_``/``Unet_``, lower case."""
    base = os.path.basename(name).strip()
    head, sep, rest = base.partition("_")
    return (rest if sep and head.lower() == "unet" else base).lower()


_DETAIL_COLUMNS = {
    "Model Name": "model_name",
    "Fold": "fold",
    "Dataset Trained On": "dataset",
    "Np Diameter (nm)": "particle_diameter_nm",
    "Np Material": "material",
    "Pixel Scale (nm)": "pixel_size_nm",
    "Dosage (e/A2)": "dose_e_per_A2",
}


def read_model_details(path: str | os.PathLike[str]) -> dict[str, DatasetDetails]:
    """``model_details.csv`` keyed by :func:`_model_key` of its model names (case-insensitive,
    ``Unet_``/``UNet_`` prefix ignored)."""
    p = Path(path)
    if not p.is_file():
        raise SeedImportError(f"model details {p}: no such file (pass --details CSV)")
    out: dict[str, DatasetDetails] = {}
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SeedImportError(f"model details {p}: not a UTF-8 CSV file ({e.reason} at byte {e.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in _DETAIL_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise SeedImportError(f"model details {p}: missing column(s) {missing}; has {reader.fieldnames}")
    for lineno, row in enumerate(reader, start=2):
        try:
            d = DatasetDetails(
                model_name=row["Model Name"].strip(),
                fold=int(row["Fold"]),
                dataset=row["Dataset Trained On"].strip(),
                particle_diameter_nm=float(row["Np Diameter (nm)"]),
                material=row["Np Material"].strip(),
                pixel_size_nm=float(row["Pixel Scale (nm)"]),
                dose_e_per_A2=float(row["Dosage (e/A2)"]),
            )
        except (TypeError, ValueError) as e:
            raise SeedImportError(f"model details {p}, line {lineno}: {e}") from None
        out[_model_key(d.model_name)] = d
    return out


def read_dataset_metadata(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Rows of ``Dataset_metadata.csv`` (per raw image: material, size, support, instrument,
    dose, pixel scale); empty when the file is absent."""
    p = Path(path)
    if not p.is_file():
        return []
    with p.open(newline="", encoding="utf-8-sig", errors="replace") as f:
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(f)]


def _support(code: str, metadata: list[dict[str, str]], details: DatasetDetails) -> tuple[str, ...]:
    """Support film of a dataset: the file name's code spelled as in the metadata when it lists
    raw images of the same material and particle size on that support."""
    name = SUPPORT_CODES.get(code.upper(), code)
    spellings = {r.get("Support", "") for r in metadata
                 if r.get("Material") == details.material
                 and _float(r.get("Nanoparticle Size (nm)")) == details.particle_diameter_nm}
    for s in spellings:
        if s.replace(" ", "").lower() == name.replace(" ", "").lower():
            return (s,)
    return (name,)


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def bundle_name(details: DatasetDetails) -> str:
    """``<material>-<diameter>nm-<pixel size>nm-<dose>e``, e.g. ``au-5nm-0.020nm-423e``."""
    return (f"{details.material.lower()}-{details.particle_diameter_nm:g}nm-"
            f"{details.pixel_size_nm:.3f}nm-{round(details.dose_e_per_A2)}e")


def envelope_for(details: DatasetDetails, support: tuple[str, ...] = ()) -> Envelope:
    """The envelope of a single-condition dataset at 300 kV: nominal pixel size ± 2 % and dose
    ± 10 % (:data:`SEED_PIXEL_SIZE_SPREAD`, :data:`SEED_DOSE_SPREAD`), particle diameter as
    stated; tolerances are the card defaults."""
    point = lambda v: Range(float(v), float(v))  # noqa: E731
    spread = lambda v, f: Range(round(float(v) * (1 - f), 6), round(float(v) * (1 + f), 6))  # noqa: E731
    return Envelope(
        material=(details.material,),
        particle_diameter_nm=point(details.particle_diameter_nm),
        pixel_size_nm=spread(details.pixel_size_nm, SEED_PIXEL_SIZE_SPREAD),
        dose_e_per_A2=spread(details.dose_e_per_A2, SEED_DOSE_SPREAD),
        voltage_kv=point(SEED_VOLTAGE_KV),
        support=support,
    )


# --- the import -----------------------------------------------------------------------------
