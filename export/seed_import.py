"""Import of the published checkpoints (Sytwu, Rangel DaCosta & Scott) into model bundles.

Each ``UNet_<dataset>_fold<k>_seed<s>_model.h5`` is a torch zip archive of a *pickled full
module* whose classes were ``__main__.UNet`` and ``__main__.ResidualBlock``. They are loaded
through :mod:`fringelive.export.safe_unpickle` with :data:`SEED_ALLOWLIST`: the two published
classes map to the faithful reference re-implementations :class:`SeedUNet` and
:class:`SeedResidualBlock` below, plus the torch layers and rebuild functions the pickles name;
any other global is refused before it is imported.

The weights are then copied into ``fringelive.engine.models.build_model("resunet-seed")``
(same state-dict keys) and the two networks are compared in eval mode on a random input
(:func:`check_parity`). One bundle is written per training dataset with its folds as ensemble
members, ordered by fold; the training envelope comes from the file name and
``model_details.csv``. Bundle names: ``<material>-<diameter>nm-<pixel size>nm-<dose>e``, e.g.
``au-5nm-0.020nm-423e`` (material lower case, diameter in nm as written (``2.2``), pixel size in
nm/px with three decimals, dose in e/Å² rounded to an integer).
"""

from __future__ import annotations

import collections
import csv
import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from fringelive.bundle.bundle_io import Bundle, sha256_file
from fringelive.bundle.card import Envelope, Preprocessing, Range, Source
from fringelive.engine.models import build_model
from fringelive.export.onnx_export import export_bundle
from fringelive.export.safe_unpickle import UnpicklingRefused, make_pickle_module

__all__ = [
    "SeedResidualBlock",
    "SeedUNet",
    "SEED_ALLOWLIST",
    "SEED_PREPROCESSING",
    "SEED_VOLTAGE_KV",
    "SeedImportError",
    "CheckpointName",
    "DatasetDetails",
    "parse_checkpoint_name",
    "read_model_details",
    "read_dataset_metadata",
    "load_seed_checkpoint",
    "to_resunet",
    "check_parity",
    "bundle_name",
    "import_seed",
    "UnpicklingRefused",
]

log = logging.getLogger(__name__)

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


# --- reference re-implementation of the published classes --------------------------------

class SeedResidualBlock(nn.Module):
    """The published ``ResidualBlock`` (forward as published; attributes come from the pickle).

    ``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + conv_add(x))``; x (N, C_in, H, W) → (N, C_out, H, W).
    """

    conv1: nn.Conv2d
    bn1: nn.BatchNorm2d
    relu1: nn.ReLU
    conv2: nn.Conv2d
    bn2: nn.BatchNorm2d
    relu2: nn.ReLU
    conv_add: nn.Conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.conv_add(x)
        return self.relu2(out)


class SeedUNet(nn.Module):
    """The published ``UNet`` (forward as published; attributes come from the pickle).

    x (N, 1, H, W), H and W multiples of 16 → logits (N, 2, H, W).
    """

    downs: nn.ModuleList
    pools: nn.ModuleList
    bottleneck: nn.Module
    upsamples: nn.ModuleList
    ups: nn.ModuleList
    final_conv: nn.Conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i in range(len(self.downs)):
            x = self.downs[i](x)
            skips.append(x)
            x = self.pools[i](x)
        x = self.bottleneck(x)
        skips = skips[::-1]
        for idx in range(len(self.ups)):
            x = self.upsamples[idx](x)
            x = self.ups[idx](torch.cat((skips[idx], x), 1))
        return self.final_conv(x)


#: Every global the published pickles may name, mapped to what it loads as.
SEED_ALLOWLIST: dict[str, Any] = {
    "__main__.UNet": SeedUNet,
    "__main__.ResidualBlock": SeedResidualBlock,
    "torch.nn.modules.conv.Conv2d": nn.Conv2d,
    "torch.nn.modules.batchnorm.BatchNorm2d": nn.BatchNorm2d,
    "torch.nn.modules.activation.ReLU": nn.ReLU,
    "torch.nn.modules.pooling.MaxPool2d": nn.MaxPool2d,
    "torch.nn.modules.upsampling.Upsample": nn.Upsample,
    "torch.nn.modules.container.ModuleList": nn.ModuleList,
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    # torch.load resolves storage type names itself before find_class; listed for completeness.
    "torch.FloatStorage": torch.FloatStorage,
    "torch.LongStorage": torch.LongStorage,
}


def load_seed_checkpoint(path: str | os.PathLike[str]) -> SeedUNet:
    """Load a published checkpoint as a :class:`SeedUNet` on CPU in eval mode, through the
    restricted unpickler. Raises :class:`UnpicklingRefused` (naming the global) for any
    global outside :data:`SEED_ALLOWLIST`, :class:`SeedImportError` for other problems."""
    p = Path(path)
    if not p.is_file():
        raise SeedImportError(f"checkpoint {p}: no such file")
    pickle_module = make_pickle_module(SEED_ALLOWLIST, source=p.name)
    try:
        obj = torch.load(p, map_location="cpu", pickle_module=pickle_module, weights_only=False)
    except UnpicklingRefused:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt archives raise many types
        raise SeedImportError(f"checkpoint {p}: cannot be read as a torch archive: {e}") from None
    if not isinstance(obj, SeedUNet):
        raise SeedImportError(f"checkpoint {p}: holds a {type(obj).__name__}, expected the published UNet module")
    return obj.eval()


def to_resunet(seed: nn.Module, source: str = "checkpoint") -> nn.Module:
    """Copy a published network's weights into ``build_model("resunet-seed")`` (eval mode)."""

    model = build_model("resunet-seed")
    try:
        model.load_state_dict(seed.state_dict(), strict=True)
    except RuntimeError as e:
        raise SeedImportError(f"{source}: weights do not fit resunet-seed: {e}") from None
    return model.eval()


@torch.no_grad()
def check_parity(reference: nn.Module, model: nn.Module, size: int = 256, seed: int = 0) -> float:
    """Max abs logit difference of two networks in eval mode on one random ``(1, 1, size, size)``
    standard-normal input."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 1, size, size, generator=g)
    reference.eval()
    model.eval()
    return float((reference(x) - model(x)).abs().max())


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

@dataclass(frozen=True)
class _Checkpoint:
    path: Path
    name: CheckpointName
    details: DatasetDetails


def _group(files: Sequence[Path], details: dict[str, DatasetDetails]) -> dict[str, list[_Checkpoint]]:
    groups: dict[str, list[_Checkpoint]] = {}
    for f in files:
        parsed = parse_checkpoint_name(f.name)
        try:
            d = details[_model_key(f.name)]
        except KeyError:
            raise SeedImportError(f"checkpoint {f.name}: no row for it in model_details.csv") from None
        if d.fold != parsed.fold:
            raise SeedImportError(f"checkpoint {f.name}: file name says fold {parsed.fold}, model_details.csv says {d.fold}")
        if d.material.lower() != parsed.material.lower() or d.particle_diameter_nm != parsed.particle_diameter_nm:
            raise SeedImportError(
                f"checkpoint {f.name}: file name says {parsed.particle_diameter_nm:g} nm {parsed.material}, "
                f"model_details.csv says {d.particle_diameter_nm:g} nm {d.material}")
        groups.setdefault(bundle_name(d), []).append(_Checkpoint(f, parsed, d))
    for name, members in groups.items():
        members.sort(key=lambda c: c.name.fold)
        datasets = {c.details.dataset for c in members}
        if len(datasets) != 1:
            raise SeedImportError(f"bundle {name}: checkpoints come from different datasets {sorted(datasets)}")
        folds = [c.name.fold for c in members]
        if len(set(folds)) != len(folds):
            raise SeedImportError(f"bundle {name}: fold listed twice in {[c.path.name for c in members]}")
    return groups


def import_seed(
    files: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    details: str | os.PathLike[str] | None = None,
    metadata: str | os.PathLike[str] | None = None,
    parity_size: int = 256,
    parity_tolerance: float = 1e-5,
    check_sizes: Sequence[int] = (512, 1024),
    check_tolerance: float = 1e-4,
    overwrite: bool = False,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Bundle]:
    """Import published checkpoints: one bundle ``out_dir/<bundle name>`` per training dataset,
    its folds as members (ordered by fold).

    details: ``model_details.csv`` (default: the one beside the first file).
    metadata: ``Dataset_metadata.csv`` (default: beside the first file; optional).
    parity_size: side (px) of the random input on which each checkpoint's own module and
        ``resunet-seed`` must agree within ``parity_tolerance`` (max abs logit difference).
    check_sizes / check_tolerance: ONNX Runtime vs torch check of the export (see
        :func:`fringelive.export.onnx_export.export_bundle`).
    """

    paths = [Path(f) for f in files]
    if not paths:
        raise SeedImportError("no checkpoint files given")
    for p in paths:
        if not p.is_file():
            raise SeedImportError(f"checkpoint {p}: no such file")
    details_path = Path(details) if details else paths[0].parent / "model_details.csv"
    metadata_path = Path(metadata) if metadata else paths[0].parent / "Dataset_metadata.csv"
    table = read_model_details(details_path)
    meta = read_dataset_metadata(metadata_path)
    groups = _group(paths, table)
    say = progress or (lambda msg: log.info("%s", msg))

    bundles = []
    for name, members in sorted(groups.items()):
        models, parity, sources = [], {}, []
        for c in members:
            seed = load_seed_checkpoint(c.path)
            model = to_resunet(seed, c.path.name)
            diff = check_parity(seed, model, size=parity_size)
            if not diff <= parity_tolerance:
                raise SeedImportError(
                    f"checkpoint {c.path.name}: resunet-seed differs from the checkpoint's own module by "
                    f"{diff:.3g} (max abs logit) > {parity_tolerance:g} on a {parity_size}x{parity_size} input")
            parity[c.path.name] = diff
            models.append(model)
            sources.append(Source(path=c.path.name, sha256=sha256_file(c.path)))
        d = members[0].details
        support = _support(members[0].name.support_code, meta, d)
        n_raw = sum(1 for r in meta if r.get("Material") == d.material
                    and _float(r.get("Nanoparticle Size (nm)")) == d.particle_diameter_nm
                    and _float(r.get("Pixel Scale (nm)")) == d.pixel_size_nm
                    and _float(r.get("Dosage (e/A2)")) == d.dose_e_per_A2
                    and r.get("Support") in support)
        description = (
            f"Published residual UNet (Sytwu, Rangel DaCosta & Scott), {len(members)}-fold ensemble trained on "
            f"{d.dataset}: {d.particle_diameter_nm:g} nm {d.material} on {', '.join(support)}, "
            f"{d.pixel_size_nm:g} nm/px, {d.dose_e_per_A2:g} e/A^2, {SEED_VOLTAGE_KV:g} kV"
            + (f" ({n_raw} raw images with these conditions in Dataset_metadata.csv)" if n_raw else "")
        )
        bundle = export_bundle(
            models,
            Path(out_dir) / name,
            name=name,
            arch="resunet-seed",
            envelope=envelope_for(d, support),
            preprocessing=SEED_PREPROCESSING,
            sources=sources,
            member_sources=[c.path.name for c in members],
            description=description,
            metrics={"seed_parity": {"input_px": [parity_size, parity_size],
                                     "tolerance": parity_tolerance,
                                     "max_abs_diff": parity}},
            command=command,
            check_sizes=check_sizes,
            tolerance=check_tolerance,
            overwrite=overwrite,
        )
        say(f"{name}: {len(members)} members, parity max abs diff {max(parity.values()):.2e} -> {bundle.path}")
        bundles.append(bundle)
    return bundles
