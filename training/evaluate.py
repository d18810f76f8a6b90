"""Evaluation of bundles on sample sets: ``fringelive evaluate``.

For every (bundle, sample set) pair each ensemble member segments every sample the way the
daemon does (the bundle's own preprocessing for raw samples, the bundle's tile constraints, an
ONNX Runtime backend by default; :func:`evaluate_bundle`). Per member: the hard Dice of class 1
at probability 0.5 averaged over the samples (smooth 1, as published) and the pixel
false-positive rate FP/(FP+TN) and false-negative rate FN/(FN+TP) over all its samples; the
bundle's score is the mean ± std over members (= cross-validation folds for a trained bundle),
as in the papers' generalization figures. The ensemble's Dice (mean class-1 probability of the
members) is reported too.

Held-out data: when a bundle was trained by ``fringelive train`` on exactly this sample set
(same sha256, recorded in ``card.metrics.training.data``), member ``k`` is scored only on its
fold's test samples (``card.metrics.training.fold_runs[k].test_samples``), never on samples it
was trained or validated on; the ensemble Dice is then not defined (NaN).

:func:`generalization_matrix` does all pairs; :func:`write_results` writes a long CSV (one row
per pair), the Dice matrix as CSV (rows: bundles = training sets, columns: test sets) and a PNG
heatmap annotated ``mean ± std``.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fringelive.bundle.bundle_io import Bundle, load_bundle, sha256_file
from fringelive.engine.backends import create_backend
from fringelive.engine.preprocess import preprocess
from fringelive.engine.tiling import infer_tiled
from fringelive.training.samples import SampleSet, load_sampleset, preprocessing_to_json

__all__ = [
    "PairResult",
    "evaluate_bundle",
    "score_members",
    "torch_member",
    "generalization_matrix",
    "write_results",
    "plot_heatmap",
]

log = logging.getLogger(__name__)


@dataclass
class PairResult:
    """One bundle on one sample set. Rates are fractions; ``split`` is ``all`` or
    ``own-test-folds``."""

    model: str
    test_set: str
    members: int
    samples: int
    split: str
    dice_mean: float
    dice_std: float
    false_positive_rate_mean: float
    false_positive_rate_std: float
    false_negative_rate_mean: float
    false_negative_rate_std: float
    ensemble_dice: float
    member_dice: list[float]


def _own_test_samples(card: Any, sha: str, n_members: int) -> list[list[int]] | None:
    training = (card.metrics or {}).get("training") or {}
    data = training.get("data") or []
    runs = training.get("fold_runs") or []
    if len(data) != 1 or data[0].get("sha256") != sha or len(runs) != n_members:
        return None
    out = []
    for r in runs:
        ranges = r.get("test_samples")
        if ranges is None:
            return None
        out.append([i for a, b in ranges for i in range(a, b)])
    return out


def _softmax1(logits: np.ndarray) -> np.ndarray:
    """Class-1 probability ``(H, W)`` of logits ``(C, H, W)``."""
    z = logits - logits.max(axis=0, keepdims=True)
    e = np.exp(z)
    return e[1] / e.sum(axis=0)


def evaluate_bundle(bundle: Any, samples: Any, *, backend: str = "onnxruntime", tile_size: int | None = 1024,
                    own_split: bool = True, name: str | None = None, test_name: str | None = None,
                    inputs_cache: dict[str, np.ndarray] | None = None) -> PairResult:
    """Score ``bundle`` (a :class:`~fringelive.bundle.bundle_io.Bundle` or path) on ``samples``
    (a :class:`~fringelive.training.samples.SampleSet` or path). tile_size: largest tile core
    (px) fed to the network (None = whole samples); inputs_cache: preprocessed inputs shared
    between bundles with equal preprocessing."""


    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    if not isinstance(samples, SampleSet):
        samples = load_sampleset(samples)
    card = bundle.card
    n_members = len(card.members)
    params = card.preprocessing
    key = f"{samples.path}:{preprocessing_to_json(params) if samples.content == 'raw' else 'as-is'}"
    cache = inputs_cache if inputs_cache is not None else {}
    if key not in cache:
        if samples.content == "raw":
            cache[key] = np.stack([np.asarray(preprocess(im, params)) for im in samples.images]) if len(samples) else \
                np.zeros((0, *samples.shape), np.float32)
        else:
            if samples.preprocessing is not None and samples.preprocessing != params:
                log.warning("%s was preprocessed with other parameters than bundle %s expects; scoring as is",
                            samples.path, card.name)
            cache[key] = np.asarray(samples.images, dtype=np.float32)
    inputs = cache[key]
    per_member = _own_test_samples(card, sha256_file(samples.path), n_members) if own_split else None
    split = "own-test-folds" if per_member is not None else "all"
    if per_member is not None:
        log.info("%s was trained on %s: each member is scored on its own test fold", card.name, samples.path)
    backends = []
    try:
        for m in range(n_members):
            backends.append(create_backend(backend, bundle, member=m))
        scores = score_members(backends, inputs, samples.labels, tile_size=tile_size, halo=card.tile.halo_px,
                               multiple_of=card.tile.multiple_of, per_member=per_member)
    finally:
        for be in backends:
            be.close()
    md, fprs, fnrs = scores["member_dice"], scores["false_positive_rate"], scores["false_negative_rate"]
    return PairResult(
        model=name or card.name, test_set=test_name or samples.name, members=n_members, samples=scores["samples"],
        split=split, dice_mean=float(np.mean(md)), dice_std=float(np.std(md)),
        false_positive_rate_mean=float(np.mean(fprs)), false_positive_rate_std=float(np.std(fprs)),
        false_negative_rate_mean=float(np.mean(fnrs)), false_negative_rate_std=float(np.std(fnrs)),
        ensemble_dice=scores["ensemble_dice"], member_dice=md)


def score_members(members: Sequence[Any], inputs: np.ndarray, labels: np.ndarray, *, tile_size: int | None,
                  halo: int, multiple_of: int, per_member: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    """Whole-sample scores of ensemble members on preprocessed ``inputs`` ``(N, H, W)`` with
    ``labels`` ``(N, H, W)``. A member is any callable ``batch (n, 1, h, w) -> logits (n, C, h, w)``
    (a backend, or a wrapped torch module), run through the halo tiler. per_member: the sample
    indices each member is scored on (None = all; then the ensemble is scored too).

    Returns ``member_dice`` (mean per-sample hard Dice per member), ``false_positive_rate``,
    ``false_negative_rate`` (pixel rates per member), ``ensemble_dice`` (NaN with per_member),
    ``samples`` (how many distinct samples were scored), ``member_sample_dice`` (per member,
    the per-sample Dice list) and ``ensemble_sample_dice``.
    """

    n = len(inputs)
    member_dice, fprs, fnrs, per_sample = [], [], [], []
    prob_sum = np.zeros(inputs.shape, np.float32) if per_member is None else None
    scored: set[int] = set()
    for m, model in enumerate(members):
        indices = list(per_member[m]) if per_member is not None else list(range(n))
        scored.update(indices)
        dices, fp, fn, tn, tp = [], 0, 0, 0, 0
        for i in indices:
            logits = np.asarray(infer_tiled(model, inputs[i], tile_size=tile_size, halo=halo, multiple_of=multiple_of))
            prob = _softmax1(logits)
            if prob_sum is not None:
                prob_sum[i] += prob
            pred = prob > 0.5
            truth = labels[i] > 0
            inter = int(np.count_nonzero(pred & truth))
            false_pos = int(np.count_nonzero(pred)) - inter
            false_neg = int(np.count_nonzero(truth)) - inter
            dices.append((2 * inter + 1.0) / (inter + false_pos + inter + false_neg + 1.0))
            fp += false_pos
            fn += false_neg
            tp += inter
            tn += int(pred.size) - inter - false_pos - false_neg
        member_dice.append(float(np.mean(dices)) if dices else float("nan"))
        per_sample.append([float(d) for d in dices])
        fprs.append(fp / max(fp + tn, 1))
        fnrs.append(fn / max(fn + tp, 1))
    ensemble, ensemble_per_sample = float("nan"), []
    if prob_sum is not None and n and members:
        k = len(members)
        ens = [(2 * np.count_nonzero((p / k > 0.5) & (t > 0)) + 1.0)
               / (np.count_nonzero(p / k > 0.5) + np.count_nonzero(t) + 1.0) for p, t in zip(prob_sum, labels)]
        ensemble, ensemble_per_sample = float(np.mean(ens)), [float(d) for d in ens]
    return {"member_dice": member_dice, "false_positive_rate": fprs, "false_negative_rate": fnrs,
            "ensemble_dice": ensemble, "samples": len(scored), "member_sample_dice": per_sample,
            "ensemble_sample_dice": ensemble_per_sample}


def torch_member(model: Any) -> Any:
    """A torch module as a tiler callable: numpy batch in, numpy logits out (eval, no grad)."""
    import torch

    model.eval()
    device = next(model.parameters()).device

    @torch.no_grad()
    def run(batch: np.ndarray) -> np.ndarray:
        return model(torch.as_tensor(np.asarray(batch, dtype=np.float32), device=device)).float().cpu().numpy()

    return run


def generalization_matrix(bundles: Sequence[tuple[str, Any]], sets: Sequence[tuple[str, Any]], **kwargs: Any
                          ) -> list[PairResult]:
    """Every bundle on every sample set (``(name, bundle or path)`` and ``(name, set or path)``),
    row-major: bundle 0 on every set, then bundle 1, ..."""


    loaded_sets = [(n, s if isinstance(s, SampleSet) else load_sampleset(s)) for n, s in sets]
    cache: dict[str, np.ndarray] = {}
    out = []
    for bname, b in bundles:
        bundle = b if isinstance(b, Bundle) else load_bundle(b)
        for sname, ss in loaded_sets:
            r = evaluate_bundle(bundle, ss, name=bname, test_name=sname, inputs_cache=cache, **kwargs)
            log.info("%s on %s: Dice %.4f ± %.4f (%d members, %d samples, %s)", bname, sname, r.dice_mean, r.dice_std,
                     r.members, r.samples, r.split)
            out.append(r)
    return out


def _matrix(results: Sequence[PairResult], field: str) -> tuple[list[str], list[str], np.ndarray]:
    rows = list(dict.fromkeys(r.model for r in results))
    cols = list(dict.fromkeys(r.test_set for r in results))
    m = np.full((len(rows), len(cols)), np.nan)
    for r in results:
        m[rows.index(r.model), cols.index(r.test_set)] = getattr(r, field)
    return rows, cols, m


def plot_heatmap(mean: np.ndarray, std: np.ndarray | None, row_labels: Sequence[str], col_labels: Sequence[str],
                 path: str | Path, *, title: str = "Dice (mean ± std over members)", vmin: float = 0.0,
                 vmax: float = 1.0) -> Path:
    """A heatmap PNG of ``mean`` (rows × columns) annotated ``mean ± std`` in every cell."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    r, c = mean.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * c + 2.5), max(3.0, 0.7 * r + 2.0)))
    try:
        im = ax.imshow(mean, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(c), labels=list(col_labels), rotation=35, ha="right")
        ax.set_yticks(range(r), labels=list(row_labels))
        ax.set_xlabel("test set")
        ax.set_ylabel("trained on (bundle)")
        ax.set_title(title)
        for i in range(r):
            for j in range(c):
                v = mean[i, j]
                if math.isnan(v):
                    continue
                text = f"{v:.3f}" if std is None or math.isnan(std[i, j]) else f"{v:.3f}\n±{std[i, j]:.3f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="black" if v > vmin + 0.6 * (vmax - vmin) else "white")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def write_results(results: Sequence[PairResult], out_dir: str | Path) -> dict[str, Path]:
    """``evaluation.csv`` (one row per pair), ``dice_matrix.csv`` (mean Dice, bundles × test
    sets), ``dice_std_matrix.csv`` and ``dice_matrix.png``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"long": out / "evaluation.csv", "matrix": out / "dice_matrix.csv",
             "std_matrix": out / "dice_std_matrix.csv", "heatmap": out / "dice_matrix.png"}
    fields = [k for k in asdict(results[0]) if k != "member_dice"] + ["member_dice"] if results else []
    with open(paths["long"], "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in results:
            d = asdict(r)
            d["member_dice"] = ";".join(f"{v:.6f}" for v in r.member_dice)
            w.writerow(d)
    rows, cols, mean = _matrix(results, "dice_mean")
    _, _, std = _matrix(results, "dice_std")
    for key, m in (("matrix", mean), ("std_matrix", std)):
        with open(paths[key], "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["trained_on \\ tested_on", *cols])
            for name, values in zip(rows, m):
                w.writerow([name, *("" if math.isnan(v) else f"{v:.6f}" for v in values)])
    plot_heatmap(mean, std, rows, cols, paths["heatmap"])
    return paths
