"""``fringelive evaluate``: Dice mean ± std over members and error rates agree with a direct
torch computation; the generalization matrix CSV and PNG have the right rows and columns; a
bundle trained on a set is scored on its own test folds only."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from fringelive.bundle.card import Preprocessing
from fringelive.export.onnx_export import export_bundle
from fringelive.training.evaluate import evaluate_bundle, generalization_matrix, write_results
from fringelive.engine.models import build_model
from fringelive.training.samples import load_sampleset, write_sampleset
from fringelive.training.synth import synthesize
from fringelive.training.synth_config import SynthConfig

TINY = {"widths": (4, 8), "bottleneck": 8}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("evaluate")
    raw = root / "raw"
    synthesize(SynthConfig(engine="fast", count=4, size_px=64, pixel_size_nm=(0.1, 0.1), diameter_nm=(2.0, 3.0),
                           particles_per_100nm2=8.0), raw, progress=False)
    rng = np.random.default_rng(1)
    labels = (rng.random((3, 48, 48)) > 0.7).astype(np.uint8)
    images = (rng.standard_normal((3, 48, 48)) + labels).astype(np.float32)
    pre = root / "pre"
    write_sampleset(pre, images, labels, [{"i": i} for i in range(3)], content="preprocessed", source="test",
                    preprocessing=Preprocessing())
    models = {}
    for name, seeds in (("A", [0]), ("B", [1, 2])):
        ms = []
        for s in seeds:
            torch.manual_seed(s)
            m = build_model("resunet", **TINY).eval()
            with torch.no_grad():
                m.final_conv.bias.copy_(torch.tensor([0.0, 0.3]))  # predict some particle pixels
            ms.append(m)
        models[name] = ms
        export_bundle(ms, root / name, name=f"bundle-{name}", check_sizes=(32,))
    sha = hashlib.sha256((raw / "samples.h5").read_bytes()).hexdigest()
    torch.manual_seed(3)
    own = build_model("resunet", **TINY).eval()
    export_bundle([own], root / "C", name="bundle-C", check_sizes=(32,),
                  metrics={"training": {"data": [{"sha256": sha, "samples": 4}],
                                        "fold_runs": [{"fold": 0, "test_samples": [[1, 3]]}]}})
    models["C"] = [own]
    return {"root": root, "raw": raw, "pre": pre, "models": models}


def _expected(models, inputs, labels) -> tuple[float, float, float, float]:
    dices, fprs, fnrs = [], [], []
    for m in models:
        with torch.no_grad():
            prob = torch.softmax(m(torch.from_numpy(inputs).unsqueeze(1)), 1)[:, 1].numpy()
        pred, truth = prob > 0.5, labels > 0
        d = [(2 * (p & t).sum() + 1) / (p.sum() + t.sum() + 1) for p, t in zip(pred, truth)]
        dices.append(np.mean(d))
        fp, fn = (pred & ~truth).sum(), (~pred & truth).sum()
        fprs.append(fp / ((~truth).sum()))
        fnrs.append(fn / truth.sum())
    return float(np.mean(dices)), float(np.std(dices)), float(np.mean(fprs)), float(np.mean(fnrs))


def test_scores_match_a_direct_torch_computation(world: dict) -> None:
    from fringelive.engine.preprocess import preprocess

    raw = load_sampleset(world["raw"])
    inputs = np.stack([np.asarray(preprocess(im, Preprocessing())) for im in raw.images])
    r = evaluate_bundle(world["root"] / "B", raw, tile_size=None)
    dice, std, fpr, fnr = _expected(world["models"]["B"], inputs, raw.labels)
    assert r.members == 2 and r.samples == 4 and r.split == "all"
    assert r.dice_mean == pytest.approx(dice, abs=1e-3) and r.dice_std == pytest.approx(std, abs=1e-3)
    assert r.false_positive_rate_mean == pytest.approx(fpr, abs=1e-3)
    assert r.false_negative_rate_mean == pytest.approx(fnr, abs=1e-3)
    assert 0.0 <= r.ensemble_dice <= 1.0 and len(r.member_dice) == 2
    tiled = evaluate_bundle(world["root"] / "B", raw, tile_size=32)  # halo tiles give the same masks
    assert tiled.dice_mean == pytest.approx(r.dice_mean, abs=1e-6)


def test_own_training_set_is_scored_on_its_test_folds_only(world: dict) -> None:
    from fringelive.engine.preprocess import preprocess

    raw = load_sampleset(world["raw"])
    r = evaluate_bundle(world["root"] / "C", raw, tile_size=None)
    assert r.split == "own-test-folds" and r.samples == 2 and np.isnan(r.ensemble_dice)
    inputs = np.stack([np.asarray(preprocess(im, Preprocessing())) for im in raw.images[1:3]])
    assert r.dice_mean == pytest.approx(_expected(world["models"]["C"], inputs, raw.labels[1:3])[0], abs=1e-3)
    everything = evaluate_bundle(world["root"] / "C", raw, tile_size=None, own_split=False)
    assert everything.split == "all" and everything.samples == 4


def test_matrix_csv_and_heatmap(world: dict, tmp_path: Path) -> None:
    from PIL import Image

    results = generalization_matrix([("A", world["root"] / "A"), ("B", world["root"] / "B")],
                                    [("raw", world["raw"]), ("pre", world["pre"])], tile_size=None)
    assert [(r.model, r.test_set) for r in results] == [("A", "raw"), ("A", "pre"), ("B", "raw"), ("B", "pre")]
    pre = load_sampleset(world["pre"])
    a_pre = _expected(world["models"]["A"], pre.images, pre.labels)
    assert results[1].dice_mean == pytest.approx(a_pre[0], abs=1e-3) and results[1].dice_std == 0.0
    paths = write_results(results, tmp_path)
    with open(paths["matrix"], newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["trained_on \\ tested_on", "raw", "pre"]
    assert [r[0] for r in rows[1:]] == ["A", "B"]
    grid = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert np.allclose(grid, [[results[0].dice_mean, results[1].dice_mean], [results[2].dice_mean, results[3].dice_mean]],
                       atol=1e-6)
    with open(paths["long"], newline="") as fh:
        long = list(csv.DictReader(fh))
    assert len(long) == 4 and long[2]["members"] == "2" and long[2]["member_dice"].count(";") == 1
    with Image.open(paths["heatmap"]) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 150


def test_cli_evaluate(world: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fringelive.cli import main

    rc = main(["evaluate", "--bundle", str(world["root"] / "A"), "--bundle", f"two={world['root'] / 'B'}",
               "--data", f"sim={world['raw']}", "--data", str(world["pre"]), "--out", str(tmp_path / "ev"),
               "--tile-size", "0"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "bundle-A on sim: Dice" in out and "two on pre: Dice" in out
    assert {p.name for p in (tmp_path / "ev").iterdir()} == {"evaluation.csv", "dice_matrix.csv",
                                                             "dice_std_matrix.csv", "dice_matrix.png"}
    assert main(["evaluate", "--bundle", str(world["root"] / "A"), "--data", str(tmp_path / "none"),
                 "--out", str(tmp_path / "x")]) == 1
