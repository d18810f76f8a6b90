"""Benchmark scoring of a training run (:func:`fringelive.training.run.run_training`): the
per-condition subsets of each benchmark set (``--benchmark-by``) and the final whole-sample
scores of the members that go into ``card.metrics["benchmarks"]``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fringelive.bundle.bundle_io import sha256_file, tile_constraints_for
from fringelive.bundle.card import Preprocessing
from fringelive.training.benchmark_groups import GroupBy, groups_of
from fringelive.training.evaluate import score_members, torch_member
from fringelive.training.patches import RunError

if TYPE_CHECKING:
    from fringelive.training.run import _Data

__all__ = ["benchmark_subsets", "whole_sample_scores", "record_benchmarks"]

log = logging.getLogger(__name__)


def benchmark_subsets(bench: dict[str, _Data], by: Sequence[GroupBy]) -> dict[str, tuple[str, list[int]]]:
    """``{"<set>[<group>]": (set name, sample indices)}`` for every benchmark set and grouping."""
    out: dict[str, tuple[str, list[int]]] = {}
    for name, d in bench.items():
        rows = d.rows(range(len(d)))
        for g in by:
            try:
                groups = groups_of(rows, g)
            except ValueError as e:
                raise RunError(f"benchmark {name!r}: {e}") from None
            for label, idx in groups.items():
                out[f"{name}[{label}]"] = (name, idx)
    return out


def whole_sample_scores(models: list[Any], data: _Data, params: Preprocessing, tile_px: int | None,
                        indices: Sequence[int] | None = None) -> dict[str, Any]:
    """Members (torch) on whole benchmark samples (``indices`` of them, None = all), through the
    halo tiler as the daemon runs them: Dice (class 1, 0.5) mean ± std over members, the
    ensemble's Dice mean ± std over samples, and pixel error rates."""
    xs = np.concatenate([data.inputs(j, params) for j in range(len(data.sets))])
    ys = np.concatenate([ss.labels for ss in data.sets])
    if indices is not None:
        xs, ys = xs[list(indices)], ys[list(indices)]
    tile = tile_constraints_for(models[0].spec)
    s = score_members([torch_member(m) for m in models], xs, ys, tile_size=tile_px,
                      halo=tile.halo_px, multiple_of=tile.multiple_of)
    ens = s["ensemble_sample_dice"]
    return {"samples": s["samples"], "sample_px": list(xs.shape[1:]),
            "member_dice_mean": float(np.mean(s["member_dice"])), "member_dice_std": float(np.std(s["member_dice"])),
            "ensemble_dice_mean": float(np.mean(ens)), "ensemble_dice_std_over_samples": float(np.std(ens)),
            "false_positive_rate_mean": float(np.mean(s["false_positive_rate"])),
            "false_negative_rate_mean": float(np.mean(s["false_negative_rate"]))}


def record_benchmarks(metrics: dict[str, Any], models: list[Any], bench: dict[str, _Data],
                      subsets: dict[str, tuple[str, list[int]]], params: Preprocessing, tile_px: int | None) -> None:
    """Completes ``metrics["benchmarks"]``: each set's command and sha256, and the whole-sample
    scores of every set and subset (:func:`whole_sample_scores`)."""
    for bname, bdata in bench.items():
        metrics["benchmarks"][bname]["command"] = str(bdata.sets[0].attrs.get("command", "")) or None
        metrics["benchmarks"][bname]["sha256"] = sha256_file(bdata.sets[0].path)
        metrics["benchmarks"][bname]["whole_sample"] = whole_sample_scores(models, bdata, params, tile_px)
        log.info("benchmark %s, whole samples: %s", bname, metrics["benchmarks"][bname]["whole_sample"])
    for sub, (parent, idx) in subsets.items():
        metrics["benchmarks"][sub].update({"of": parent, "samples": len(idx)})
        metrics["benchmarks"][sub]["whole_sample"] = whole_sample_scores(models, bench[parent], params, tile_px, idx)
        log.info("benchmark %s, whole samples: %s", sub, metrics["benchmarks"][sub]["whole_sample"])
