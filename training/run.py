"""A training run from sample sets to a bundle: ``fringelive train`` and ``fringelive finetune``.

Steps (:func:`run_training`):

1. load the sample sets (:mod:`fringelive.training.samples`); ``raw`` samples are preprocessed
   with the run's :class:`~fringelive.bundle.card.Preprocessing` (the shared engine, as the daemon
   does), ``preprocessed`` ones are taken as they are (their recorded parameters become the
   card's; sets preprocessed differently cannot be mixed);
2. k-fold cross-validation with contiguous assignment (:func:`fold_split`): for fold ``k`` of
   ``K`` the sample order is rotated by ``round(k·N/K)`` and cut into test (first 20 %),
   validation (next 10 %) and training (the rest, 70 %) samples, so with K = 5 the test blocks
   tile the data; splits are by sample, before patching, so patches of one frame stay together;
3. each sample is cut into non-overlapping ``patch_px``² patches;
4. per fold, :func:`fringelive.training.trainer.train_model` with seed ``seed + k`` (checkpoints,
   logs and resume in ``out/fold<k>/``; a finished fold is skipped when the run is restarted),
   then the best-validation weights are evaluated on the fold's test patches and on every
   named benchmark set;
5. the folds' best networks become the members of a bundle (``out/bundle``, through
   :func:`fringelive.export.onnx_export.export_bundle`) whose card holds the envelope derived
   from the training samples' metadata, the recipe, the splits, the seeds, the test Dice
   (mean ± std over folds) and error rates, the benchmark results, and drift reference
   statistics of the held-out raw frames (``fringelive.engine.calibration.calibrate_bundle``;
   all raw frames when fewer than 10 are held out).

``out/run.json`` records the configuration; restarting with a different recipe is refused.
``out/evaluation.csv`` lists the per-fold test metrics.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fringelive.bundle.bundle_io import sha256_file
from fringelive.bundle.card import Envelope, Preprocessing
from fringelive.engine.calibration import calibrate_bundle
from fringelive.engine.models import build_model
from fringelive.export.onnx_export import export_bundle
from fringelive.training.benchmark_groups import GroupBy
from fringelive.training.patches import fold_split, index_ranges, network_input, patchify, prepare_patches
from fringelive.training.patches import RunError
from fringelive.training.run_benchmarks import benchmark_subsets, record_benchmarks
from fringelive.training.run_report import _card_metrics, _description, _write_evaluation
from fringelive.training.samples import envelope_from_metadata, load_sampleset, preprocessing_to_json
from fringelive.training.trainer import DistInfo, TrainConfig, evaluate_model, train_model

__all__ = [
    "LOG_FORMATS",
    "RunConfig",
    "RunResult",
    "RunError",
    "fold_split",
    "index_ranges",
    "patchify",
    "prepare_patches",
    "network_input",
    "default_bundle_name",
    "run_training",
]

log = logging.getLogger(__name__)

LOG_FORMATS = ("csv", "tensorboard", "both", "none")
RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunConfig:
    """One training run.

    data: sample-set paths (concatenated in order); out: run directory; train: the recipe
    (its checkpoint_dir/log paths/seed are set per fold); arch/arch_overrides: network
    (registry name, ``UNetSpec`` fields); patch_px: patch side (px, multiple of the network's
    downsampling factor); folds: K of the cross-validation; run_folds: which folds to train
    (None = all); split: train/val/test fractions; preprocessing: for raw samples (None = card
    defaults, or the initial bundle's when fine-tuning); benchmarks: (name, path) sample sets
    evaluated every epoch and at the end; benchmark_by: also score each benchmark set's subsets
    per metadata column (:mod:`fringelive.training.benchmark_groups`); bundle_name: None =
    derived from the envelope;
    log: csv | tensorboard | both | none; init: starting weights (fine-tuning);
    export_check_sizes: ONNX-vs-torch check inputs (px) of the export; eval_tile_px: largest
    tile core (px) of the final whole-sample benchmark scoring (None = whole samples);
    extra_metrics: more entries for ``card.metrics`` (e.g. how the data were made).
    """

    data: tuple[str, ...]
    out: str
    train: TrainConfig = field(default_factory=TrainConfig)
    arch: str = "resunet-seed"
    arch_overrides: dict[str, Any] | None = None
    patch_px: int = 512
    folds: int = 5
    run_folds: tuple[int, ...] | None = None
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    preprocessing: Preprocessing | None = None
    benchmarks: tuple[tuple[str, str], ...] = ()
    benchmark_by: tuple[GroupBy, ...] = ()
    bundle_name: str | None = None
    description: str | None = None
    log: str = "csv"
    init: Any = None
    command: str | None = None
    export_check_sizes: tuple[int, ...] = (512, 1024)
    calibrate: bool = True
    eval_tile_px: int | None = 1024
    extra_metrics: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.data:
            raise RunError("give at least one sample set (--data)")
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 1:
            raise RunError(f"folds must be a positive integer, got {self.folds!r}")
        if self.run_folds is not None:
            bad = [k for k in self.run_folds if not 0 <= k < self.folds]
            if bad or not self.run_folds:
                raise RunError(f"fold indices must be in 0..{self.folds - 1}, got {list(self.run_folds)!r}")
        if len(self.split) != 3 or any(not (0 <= f <= 1) for f in self.split) or not math.isclose(sum(self.split), 1.0,
                                                                                                  abs_tol=1e-6):
            raise RunError(f"split must be three fractions (train, val, test) summing to 1, got {self.split!r}")
        if self.split[0] <= 0:
            raise RunError(f"the training fraction must be > 0, got {self.split!r}")
        if isinstance(self.patch_px, bool) or not isinstance(self.patch_px, int) or self.patch_px < 16 \
                or self.patch_px % 16:
            raise RunError(f"patch_px must be a positive multiple of 16, got {self.patch_px!r}")
        if self.log not in LOG_FORMATS:
            raise RunError(f"log must be one of {LOG_FORMATS}, got {self.log!r}")
        names = [n for n, _ in self.benchmarks]
        if len(set(names)) != len(names) or any(not n or not n.replace("-", "").replace("_", "").isalnum() for n in names):
            raise RunError(f"benchmark names must be unique words (letters, digits, - and _), got {names!r}")

    @property
    def fold_list(self) -> list[int]:
        return list(self.run_folds) if self.run_folds is not None else list(range(self.folds))


@dataclass
class RunResult:
    out: Path
    bundle: Path | None
    folds: list[dict[str, Any]]
    test_dice_mean: float
    test_dice_std: float
    patches_per_second: float
    drift_reference: bool = False


# --- splits and patches ----------------------------------------------------------------------


# --- helpers ---------------------------------------------------------------------------------

def _fmt(x: float) -> str:
    return f"{x:.3g}"


def default_bundle_name(env: Envelope, prefix: str = "") -> str:
    """``<materials>-<diameter>nm-<pixel size>nm-<dose>e`` as the published bundles, with
    ranges written ``lo-hi`` (e.g. ``au-3-8nm-0.020nm-300-700e``)."""
    def rng(r: Any, fmt: Any) -> str | None:
        if r is None:
            return None
        return fmt(r.min) if r.min == r.max else f"{fmt(r.min)}-{fmt(r.max)}"

    parts = ["+".join(m.lower() for m in env.material) or "particles"]
    d = rng(env.particle_diameter_nm, _fmt)
    if d:
        parts.append(f"{d}nm")
    p = rng(env.pixel_size_nm, lambda v: f"{v:.3f}")
    if p:
        parts.append(f"{p}nm")
    e = rng(env.dose_e_per_A2, lambda v: f"{v:.0f}")
    if e:
        parts.append(f"{e}e")
    return prefix + "-".join(parts)


class _Data:
    """The run's sample sets, concatenated: global sample i → (set, local index)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.sets = [load_sampleset(p) for p in paths]
        shapes = {s.shape for s in self.sets if len(s)}
        self.offsets = np.cumsum([0] + [len(s) for s in self.sets])
        if self.offsets[-1] == 0:
            raise RunError(f"the sample sets {list(paths)} hold no samples")
        contents = {s.content for s in self.sets}
        preps = {preprocessing_to_json(s.preprocessing) for s in self.sets if s.preprocessing is not None}
        if len(preps) > 1:
            raise RunError("the sample sets were preprocessed with different parameters; they cannot be mixed")
        self.contents = contents
        self.shapes = shapes
        self.recorded_preprocessing = next((s.preprocessing for s in self.sets if s.preprocessing), None)
        self._inputs: dict[tuple[int, str], np.ndarray] = {}

    def inputs(self, j: int, params: Preprocessing) -> np.ndarray:
        """Set ``j``'s samples as network inputs ``(N, H, W)`` float32, preprocessed once."""
        key = (j, preprocessing_to_json(params))
        if key not in self._inputs:
            ss = self.sets[j]
            self._inputs[key] = np.stack([network_input(ss, i, params) for i in range(len(ss))]) if len(ss) else \
                np.zeros((0, *ss.images.shape[1:]), np.float32)
        return self._inputs[key]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, indices: Sequence[int]) -> list[tuple[int, list[int]]]:
        out: list[tuple[int, list[int]]] = []
        for j, s in enumerate(self.sets):
            lo, hi = self.offsets[j], self.offsets[j + 1]
            local = [int(i - lo) for i in indices if lo <= i < hi]
            if local:
                out.append((j, local))
        return out

    def patches(self, indices: Sequence[int], params: Preprocessing, patch_px: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for j, local in self.locate(indices):
            x, y = prepare_patches(self.sets[j], local, params, patch_px, self.inputs(j, params))
            xs.append(x)
            ys.append(y)
        if not xs:
            return (np.zeros((0, patch_px, patch_px), np.float32), np.zeros((0, patch_px, patch_px), np.uint8))
        return np.concatenate(xs), np.concatenate(ys)

    def rows(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self.sets[j].metadata[i] for j, local in self.locate(indices) for i in local]

    def raw_frames(self, indices: Sequence[int]) -> list[tuple[np.ndarray, dict[str, Any]]]:
        return [(self.sets[j].images[i], self.sets[j].metadata[i]) for j, local in self.locate(indices)
                for i in local if self.sets[j].content == "raw"]


def _resolve_preprocessing(cfg: RunConfig, data: _Data) -> Preprocessing:
    recorded = data.recorded_preprocessing
    wanted = cfg.preprocessing
    if wanted is None and cfg.init is not None and getattr(cfg.init, "preprocessing", None) is not None:
        wanted = cfg.init.preprocessing
    if "preprocessed" in data.contents:
        if wanted is not None and recorded is not None and wanted != recorded:
            log.warning("the preprocessed samples used %s, not the requested %s; the card records what the "
                        "samples used", recorded, wanted)
        return recorded  # type: ignore[return-value]
    return wanted or Preprocessing()


def _fingerprint(cfg: RunConfig, data_info: list[dict[str, Any]], params: Preprocessing) -> dict[str, Any]:
    t = asdict(cfg.train)
    for k in ("epochs", "max_steps", "log_csv", "tensorboard_dir", "checkpoint_dir", "resume", "progress", "device",
              "eval_batch_size"):
        t.pop(k, None)
    return {
        "data": [{k: d[k] for k in ("sha256", "samples")} for d in data_info],
        "recipe": t, "arch": cfg.arch, "arch_overrides": cfg.arch_overrides, "patch_px": cfg.patch_px,
        "folds": cfg.folds, "split": list(cfg.split), "preprocessing": json.loads(preprocessing_to_json(params)),
        "init": getattr(cfg.init, "source", None),
    }


def _check_run_file(out: Path, fp: dict[str, Any]) -> None:
    fp = json.loads(json.dumps(fp))  # tuples → lists, as read back
    path = out / RUN_FILE
    if path.is_file():
        old = json.loads(path.read_text()).get("fingerprint")
        if old != fp:
            diff = sorted(k for k in set(old or {}) | set(fp) if (old or {}).get(k) != fp.get(k))
            raise RunError(f"{out} holds a run with different settings ({', '.join(diff)}); resume with the same "
                           "data and recipe or choose a new --out")
    else:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": fp}, indent=2) + "\n")
        os.replace(tmp, path)


def _calibration_frames(data: Any, splits: dict[int, tuple[Any, Any, Any]], folds: Sequence[int],
                        minimum: int = 10) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """Raw in-distribution frames for the drift reference: the validation and test frames of the
    trained folds (frames the members were not fitted on), or every raw frame of the data when
    those are fewer than ``minimum`` (the calibration's least number of frames)."""
    held = sorted({int(i) for k in folds for i in (*splits[k][1], *splits[k][2])})
    frames = data.raw_frames(held)
    if len(frames) < minimum:
        frames = data.raw_frames(list(range(len(data))))
    return frames


def _calibrate(bundle_path: Path, frames: list[tuple[np.ndarray, dict[str, Any]]]) -> bool:
    """Drift reference statistics of ``(raw frame, metadata)`` pairs written into the bundle's
    card (:func:`fringelive.engine.calibration.calibrate_bundle`); False without raw frames."""

    if not frames:
        log.info("no raw frames to calibrate drift statistics on; drift_reference stays empty")
        return False
    calibrate_bundle(bundle_path, frames)
    return True


# --- the run ---------------------------------------------------------------------------------

def run_training(cfg: RunConfig) -> RunResult:
    """Train every fold of ``cfg`` and export the bundle (see the module docstring)."""
    import torch


    info = DistInfo.current()
    out = Path(cfg.out)
    data = _Data(cfg.data)
    n = len(data)
    params = _resolve_preprocessing(cfg, data)
    data_info = [{"path": str(s.path), "sha256": sha256_file(s.path), "samples": len(s), "content": s.content,
                  "source": str(s.attrs.get("source", "")), "command": str(s.attrs.get("command", "")) or None}
                 for s in data.sets]
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _check_run_file(out, _fingerprint(cfg, data_info, params))
    bench = {name: _Data([path]) for name, path in cfg.benchmarks}
    subsets = benchmark_subsets(bench, cfg.benchmark_by)
    bench_patches = {name: d.patches(range(len(d)), params, cfg.patch_px) for name, d in bench.items()}
    for sub, (parent, idx) in subsets.items():
        bench_patches[sub] = bench[parent].patches(idx, params, cfg.patch_px)
    splits = {k: fold_split(n, k, cfg.folds, cfg.split) for k in cfg.fold_list}
    models, fold_rows = [], []
    used: set[int] = set()
    for k in cfg.fold_list:
        tr, va, te = splits[k]
        used.update(int(i) for i in tr)
        used.update(int(i) for i in va)
        fold_dir = out / f"fold{k}"
        seed = cfg.train.seed + k
        if cfg.init is not None:
            model = cfg.init.build(k)
        else:
            torch.manual_seed(seed)
            model = build_model(cfg.arch, **(cfg.arch_overrides or {}))
        if cfg.patch_px % model.downsampling_factor:
            raise RunError(f"patch_px {cfg.patch_px} is not a multiple of the network's downsampling factor "
                           f"{model.downsampling_factor}")
        done_file = fold_dir / "done.json"
        x_te, y_te = data.patches(te, params, cfg.patch_px)
        if done_file.is_file() and (fold_dir / "best.pt").is_file():
            record = json.loads(done_file.read_text())
            state = torch.load(fold_dir / "best.pt", map_location="cpu", weights_only=True)["model"]
            model.load_state_dict(state)
            log.info("fold %d is finished already (%s); skipping its training", k, done_file)
        else:
            x_tr, y_tr = data.patches(tr, params, cfg.patch_px)
            x_va, y_va = data.patches(va, params, cfg.patch_px)
            log.info("fold %d/%d: %d/%d/%d samples → %d/%d/%d patches of %d px", k, cfg.folds, len(tr), len(va),
                     len(te), len(x_tr), len(x_va), len(x_te), cfg.patch_px)
            tcfg = replace(cfg.train, seed=seed, checkpoint_dir=str(fold_dir), resume=True,
                           noise_lowpass_sigma_px=float(params.lowpass_sigma_px),
                           log_csv=str(fold_dir / "log.csv") if cfg.log in ("csv", "both") else None,
                           tensorboard_dir=str(fold_dir / "tensorboard") if cfg.log in ("tensorboard", "both") else None)
            res = train_model(model, (x_tr, y_tr), (x_va, y_va), tcfg, benchmarks=bench_patches)
            record = {"fold": k, "seed": seed, "best_epoch": res.best_epoch, "best_val_dice": res.best_val_dice,
                      "steps": res.steps, "seconds": round(res.seconds, 2),
                      "patches_per_second": round(res.patches_per_second, 3),
                      "resumed_from_epoch": res.resumed_from_epoch, "frozen_parameters": len(res.frozen),
                      "patches": {"train": int(len(x_tr)), "val": int(len(x_va)), "test": int(len(x_te))},
                      "train_samples": index_ranges(tr), "val_samples": index_ranges(va),
                      "test_samples": index_ranges(te)}
            if info.is_main:
                (fold_dir / "done.json").write_text(json.dumps(record, indent=2) + "\n")
        device = next(model.parameters()).device
        test = evaluate_model(model, x_te, y_te, batch_size=cfg.train.eval_batch_size, device=device, dist_info=info) \
            if len(x_te) else {}
        record["test"] = test
        record["benchmarks"] = {name: evaluate_model(model, bx, by, batch_size=cfg.train.eval_batch_size,
                                                     device=device, dist_info=info)
                                for name, (bx, by) in bench_patches.items()}
        fold_rows.append(record)
        models.append(model.cpu().eval())

    dices = [r["test"]["dice"] for r in fold_rows if r.get("test")]
    mean = float(np.mean(dices)) if dices else float("nan")
    std = float(np.std(dices)) if dices else float("nan")
    pps = [r.get("patches_per_second", 0.0) for r in fold_rows]
    result = RunResult(out, None, fold_rows, mean, std, float(np.mean(pps)) if pps else 0.0)
    if not info.is_main:
        _barrier(info)
        return result
    _write_evaluation(out / "evaluation.csv", fold_rows, list(bench_patches))
    envelope = envelope_from_metadata(data.rows(sorted(used)))
    name = cfg.bundle_name or default_bundle_name(envelope, "finetuned-" if cfg.init is not None else "")
    metrics = _card_metrics(cfg, data_info, fold_rows, mean, std, list(bench_patches))
    record_benchmarks(metrics, models, bench, subsets, params, cfg.eval_tile_px)
    metrics.update(cfg.extra_metrics or {})

    bundle = export_bundle(models, out / "bundle", name=name, arch=cfg.arch if cfg.init is None else cfg.init.arch,
                           envelope=envelope, preprocessing=params, member_sources=[f"fold{r['fold']}" for r in fold_rows],
                           description=cfg.description or _description(cfg, data_info, envelope),
                           metrics=metrics, command=cfg.command, check_sizes=cfg.export_check_sizes, overwrite=True)
    result.bundle = bundle.path
    if cfg.calibrate:
        try:
            result.drift_reference = _calibrate(bundle.path, _calibration_frames(data, splits, cfg.fold_list))
        except Exception as e:  # noqa: BLE001 - calibration is an extra; the bundle stands without it
            log.warning("drift calibration failed (%s: %s); drift_reference stays empty", type(e).__name__, e)
    _barrier(info)
    return result


def _barrier(info: Any) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


