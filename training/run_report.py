"""What a training run reports: the card's description and metrics, and the per-fold evaluation
CSV."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fringelive.bundle.card import Envelope

if TYPE_CHECKING:  # annotations only (the run module imports this one)
    from fringelive.training.run import RunConfig

__all__ = []


def _description(cfg: RunConfig, data_info: list[dict[str, Any]], env: Envelope) -> str:
    kind = "fine-tuned from " + cfg.init.source if cfg.init is not None else f"{cfg.arch} trained"
    srcs = ", ".join(f"{Path(d['path']).parent.name or d['path']} ({d['samples']} {d['source']} samples)" for d in data_info)
    unknown = [name for name, value in (("pixel size", env.pixel_size_nm), ("dose", env.dose_e_per_A2)) if value is None]
    note = (f"; envelope: {' and '.join(unknown)} unknown (the training data did not give them; the daemon does not "
            "flag frames for them)") if unknown else ""
    return f"{kind} on {srcs}; {len(cfg.fold_list)} of {cfg.folds} cross-validation folds as ensemble members{note}"


def _card_metrics(cfg: RunConfig, data_info: list[dict[str, Any]], folds: list[dict[str, Any]], mean: float,
                  std: float, bench_names: list[str]) -> dict[str, Any]:
    t = cfg.train
    test_keys = ("dice", "false_positive_rate", "false_negative_rate", "oversegment_fraction")
    test = {"dice_mean": mean, "dice_std": std, "folds": len(folds),
            "per_fold": [{"fold": r["fold"], **{k: r["test"].get(k) for k in test_keys}} for r in folds if r.get("test")]}
    for k in test_keys[1:]:
        vals = [r["test"][k] for r in folds if r.get("test") and k in r["test"]]
        if vals:
            test[f"{k}_mean"] = float(np.mean(vals))
            test[f"{k}_std"] = float(np.std(vals))
    benchmarks = {}
    for name in bench_names:
        vals = [r["benchmarks"][name]["dice"] for r in folds]
        parent = name.split("[", 1)[0]  # a subset "<set>[<group>]" (benchmark_by) lives in its set's file
        benchmarks[name] = {"path": dict(cfg.benchmarks)[parent], "per_patch": {
            "patch_px": cfg.patch_px, "dice_mean": float(np.mean(vals)), "dice_std": float(np.std(vals)),
            "per_fold": vals}}
    return _finite_or_null({
        "training": {
            "recipe": {"loss": "cross-entropy", "optimizer": "Adam", "lr": t.lr, "weight_decay": t.weight_decay,
                       "batch_size": t.batch_size, "epochs": t.epochs, "max_steps": t.max_steps,
                       "dihedral": t.dihedral, "rotation_p": t.rotation_p, "noise_rho": t.noise_rho,
                       "noise_rho_max": t.noise_rho_max, "amp": t.amp, "freeze": t.freeze,
                       "lr_schedule": t.lr_schedule, "lr_min": t.lr_min, "select_metric": t.select_metric,
                       "checkpoint": f"best validation {t.select_metric}"},
            "arch": cfg.arch if cfg.init is None else cfg.init.arch, "patch_px": cfg.patch_px,
            "data": data_info, "folds": cfg.folds, "split": list(cfg.split),
            "assignment": "contiguous: order rotated by round(k*N/K), then test, val, train",
            "seeds": {f"fold{r['fold']}": r["seed"] for r in folds},
            "init": getattr(cfg.init, "source", None),
            "fold_runs": [{k: r[k] for k in ("fold", "seed", "best_epoch", "best_val_dice", "steps", "seconds",
                                             "patches", "train_samples", "val_samples", "test_samples") if k in r}
                          for r in folds],
        },
        "test": test,
        **({"benchmarks": benchmarks} if benchmarks else {}),
    })


def _finite_or_null(obj: Any) -> Any:
    """``obj`` with every NaN/±inf float replaced by None: JSON (the card) has no NaN, and a run
    without a test or validation split has no Dice to report."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    return obj


def _write_evaluation(path: Path, folds: list[dict[str, Any]], bench_names: list[str]) -> None:
    keys = ("dice", "false_positive_rate", "false_negative_rate", "oversegment_fraction", "loss")
    rows = []
    for r in folds:
        rows.append({"fold": r["fold"], "set": "test", **{k: r.get("test", {}).get(k) for k in keys}})
        for name in bench_names:
            rows.append({"fold": r["fold"], "set": name, **{k: r["benchmarks"][name].get(k) for k in keys}})
    for set_name in ["test", *bench_names]:
        vals = [row for row in rows if row["set"] == set_name and row["dice"] is not None]
        if vals:
            rows.append({"fold": "mean", "set": set_name,
                         **{k: float(np.mean([v[k] for v in vals])) for k in keys}})
            rows.append({"fold": "std", "set": set_name,
                         **{k: float(np.std([v[k] for v in vals])) for k in keys}})
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["fold", "set", *keys])
        w.writeheader()
        w.writerows(rows)
