"""Import of the published checkpoints (Sytwu, Rangel DaCosta & Scott) into model bundles.

Each ``UNet_<dataset>_fold<k>_seed<s>_model.h5`` is a torch zip archive of a *pickled full
module* whose classes were ``__main__.UNet`` and ``__main__.ResidualBlock``. They are loaded
through :mod:`fringelive.export.safe_unpickle` with :data:`SEED_ALLOWLIST`: the two published
classes map to the faithful reference re-implementations :class:`SeedUNet` and
:class:`SeedResidualBlock` (:mod:`~fringelive.export.seed_model`), plus the torch layers and
rebuild functions the pickles name; any other global is refused before it is imported. File
names, the CSV files and the envelope: :mod:`~fringelive.export.seed_metadata` (torch-free).

The weights are then copied into ``fringelive.engine.models.build_model("resunet-seed")``
(same state-dict keys) and the two networks are compared in eval mode on a random input
(:func:`check_parity`). One bundle is written per training dataset with its folds as ensemble
members, ordered by fold; the training envelope comes from the file name and
``model_details.csv``. Bundle names: ``<material>-<diameter>nm-<pixel size>nm-<dose>e``, e.g.
``au-5nm-0.020nm-423e`` (material lower case, diameter in nm as written (``2.2``), pixel size in
nm/px with three decimals, dose in e/Å² rounded to an integer).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from fringelive.bundle.bundle_io import Bundle, sha256_file
from fringelive.bundle.card import Source
from fringelive.export.onnx_export import export_bundle
from fringelive.export.safe_unpickle import UnpicklingRefused
from fringelive.export.seed_metadata import (SEED_PREPROCESSING, SEED_VOLTAGE_KV, CheckpointName, DatasetDetails,
                                             SeedImportError, _float, _model_key, _support, bundle_name,
                                             envelope_for, parse_checkpoint_name, read_dataset_metadata,
                                             read_model_details)
from fringelive.export.seed_model import (SEED_ALLOWLIST, SeedResidualBlock, SeedUNet, check_parity,
                                          load_seed_checkpoint, to_resunet)

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
