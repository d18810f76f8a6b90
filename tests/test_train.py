"""``fringelive train``: contiguous folds, the trainer (loss decreases, best checkpoint kept,
bit-exact resume, logs) and a whole run on a tiny simulated set ending in a loadable bundle
whose envelope derives from the samples' metadata."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fringelive.engine.models import build_model
from fringelive.training.run import RunConfig, RunError, default_bundle_name, fold_split, index_ranges, patchify, \
    run_training
from fringelive.training.samples import envelope_from_metadata, load_sampleset
from fringelive.training.synth import synthesize
from fringelive.training.synth_config import SynthConfig
from fringelive.training.trainer import TrainConfig, train_model

from disc_data import discs  # tests/disc_data.py

TINY = {"widths": (4, 8), "bottleneck": 8}


def _discs(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return discs(n, size, seed, per_image=2, margin=4)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 raw 64² frames from the fast engine with several 2–3 nm particles each."""
    out = tmp_path_factory.mktemp("train") / "syn"
    cfg = SynthConfig(engine="fast", count=10, size_px=64, pixel_size_nm=(0.1, 0.1), diameter_nm=(2.0, 3.0),
                      particles_per_100nm2=8.0, dose_e_per_A2=(400.0, 450.0), seed=0)
    synthesize(cfg, out, progress=False)
    return out


def test_fold_split_is_contiguous_and_tiles_the_test_sets() -> None:
    n = 50
    tests = []
    for k in range(5):
        tr, va, te = fold_split(n, k)
        assert (len(tr), len(va), len(te)) == (35, 5, 10)
        assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(n))
        assert len(index_ranges(te)) == 1 and len(index_ranges(va)) == 1  # contiguous blocks
        tests.extend(te.tolist())
    assert sorted(tests) == list(range(n))
    tr, va, te = fold_split(10, 4, 5)
    assert te.tolist() == [8, 9] and va.tolist() == [0] and tr.tolist() == list(range(1, 8))
    with pytest.raises(ValueError, match="leave no training sample"):
        fold_split(2, 0, 5, (0.0, 0.5, 0.5))
    assert index_ranges([5, 1, 2, 3, 9]) == [[1, 4], [5, 6], [9, 10]]


def test_patchify_tiles_from_the_corner() -> None:
    img = np.arange(70 * 100, dtype=np.float32).reshape(70, 100)
    lab = (img % 2).astype(np.uint8)
    x, y = patchify(img, lab, 32)
    assert x.shape == (2 * 3, 32, 32) and np.array_equal(x[4], img[32:64, 32:64]) and np.array_equal(y[1], lab[:32, 32:64])
    with pytest.raises(RunError, match="smaller than the patch size 128 px"):
        patchify(img, lab, 128)


def test_trainer_learns_keeps_best_and_resumes_bit_exactly(tmp_path: Path) -> None:
    x, y = _discs(12, 32, 0)
    tr, va = (x[:9], y[:9]), (x[9:], y[9:])

    def run(epochs: int, ckpt: Path, **kw) -> tuple[torch.nn.Module, object]:
        torch.manual_seed(0)
        model = build_model("resunet", **TINY)
        cfg = TrainConfig(epochs=epochs, batch_size=3, lr=1e-2, device="cpu", checkpoint_dir=str(ckpt), resume=True,
                          log_csv=str(ckpt / "log.csv"), **kw)
        return model, train_model(model, tr, va, cfg)

    m_full, r_full = run(3, tmp_path / "full")
    losses = [h["train_loss"] for h in r_full.history]
    assert losses[-1] < losses[0]
    dices = [h["val_dice"] for h in r_full.history]
    assert r_full.best_epoch == int(np.argmax(dices)) and r_full.best_val_dice == max(dices)
    best = torch.load(tmp_path / "full" / "best.pt", weights_only=True)
    assert best["epoch"] == r_full.best_epoch and best["spec"]["widths"] == [4, 8]
    assert all(torch.equal(best["model"][k], v) for k, v in m_full.state_dict().items())  # best weights loaded
    with open(tmp_path / "full" / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2] and "val_false_negative_rate" in rows[0]
    # 1 epoch, then resume to 3: same weights, optimiser state, history and log as 3 in one go
    run(1, tmp_path / "split")
    _, r_resumed = run(3, tmp_path / "split")
    assert r_resumed.resumed_from_epoch == 0
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [h["train_loss"] for h in r_resumed.history] == losses
    with open(tmp_path / "split" / "log.csv", newline="") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [0, 1, 2]
    with pytest.raises(ValueError, match=r"cannot resume with a different recipe \(lr: 0.01 → 0.001\)"):
        torch.manual_seed(0)
        train_model(build_model("resunet", **TINY), tr, va,
                    TrainConfig(epochs=4, batch_size=3, lr=1e-3, device="cpu", checkpoint_dir=str(tmp_path / "full"),
                                resume=True))


def test_cosine_schedule_and_selection_metric() -> None:
    from fringelive.training.trainer import _lr_at

    cfg = TrainConfig(lr=1e-3, lr_schedule="cosine", lr_min=1e-5)
    lrs = [_lr_at(cfg, s, 11) for s in range(11)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5) and lrs[5] == pytest.approx(5.05e-4)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert _lr_at(TrainConfig(lr=2e-4), 7, 11) == 2e-4
    with pytest.raises(ValueError, match=r"lr_min must be in \[0, lr=0.001\], got 0.01"):
        TrainConfig(lr=1e-3, lr_schedule="cosine", lr_min=1e-2)
    with pytest.raises(ValueError, match="select_metric must be one of"):
        TrainConfig(select_metric="iou")
    x, y = _discs(6, 32, 2)
    torch.manual_seed(0)
    r = train_model(build_model("resunet", **TINY), (x[:4], y[:4]), (x[4:], y[4:]),
                    TrainConfig(epochs=2, batch_size=2, lr=1e-2, device="cpu", select_metric="loss",
                                lr_schedule="cosine"))
    losses = [h["val_loss"] for h in r.history]
    assert r.best_epoch == int(np.argmin(losses)) and r.best_val_dice == -min(losses)
    assert all(0 <= h["val_pooled_dice"] <= 1 for h in r.history)
    torch.manual_seed(0)
    r = train_model(build_model("resunet", **TINY), (x[:4], y[:4]), (x[4:], y[4:]),
                    TrainConfig(epochs=2, batch_size=2, lr=1e-2, device="cpu", select_metric="last"))
    assert r.best_epoch == 1, "select_metric 'last' keeps the final epoch"


def test_default_bundle_commands_parse() -> None:
    from fringelive.cli import build_parser
    from fringelive.training.default_bundle_commands import commands

    parser = build_parser()
    synth, heldout, train, asynth, aheldout, finetune, csynth, calibrate = (parser.parse_args(c) for c in commands())
    assert synth.engine == heldout.engine == "fast" and heldout.dose == [423.0] and heldout.pixel_size == [0.02]
    assert train.command == "train" and train.benchmark == ["heldout_423e=heldout"] and train.lr_schedule == "cosine"
    assert asynth.engine == aheldout.engine == "abtem" and aheldout.dose == [423.0] and aheldout.pixel_size == [0.02]
    assert finetune.command == "finetune" and finetune.source == "run/bundle" and finetune.data == ["train", "abtem-train"]
    assert finetune.benchmark == ["heldout_423e=heldout", "heldout_abtem_423e=abtem-heldout"]
    assert csynth.engine == "fast" and calibrate.command == "calibrate" and str(calibrate.bundle) == "finetune/bundle"
    from fringelive.training.default_bundle_commands import curated_commands

    stage2 = [parser.parse_args(c) for c in curated_commands()]
    assert [a.command for a in stage2] == ["synth"] * 5 + ["finetune", "calibrate"]
    assert stage2[0].preset == "curated" and stage2[5].source == "finetune/bundle"
    assert stage2[5].select_metric == "last" and str(stage2[6].bundle) == "ft1/bundle"
    from fringelive.training.default_bundle_commands import stage3_commands

    stage3 = [parser.parse_args(c) for c in stage3_commands()]
    assert [a.command for a in stage3] == ["synth"] * 4 + ["finetune", "calibrate"]
    assert stage3[4].source == "ft1/bundle" and stage3[4].data == ["cur_0", "cur_1", "cur_2", "cur_3"]
    assert stage3[4].benchmark_by == ["pixel_size_nm=0.02,0.03", "dose_e_per_A2=500,1000", "material"]
    assert str(stage3[5].bundle) == "ft3/bundle" and [str(p) for p in stage3[5].choose_threshold] == ["cur_val"]
    assert stage3[0].support_pool == 1  # the databases as stage 3 drew them (one carbon slab per grid)
    assert stage3[4].bundle_name == "default-curated-v3"
    from fringelive.training.default_bundle_commands import (DEFAULT_NAME, LOWPASS_SIGMA_PX, all_commands,
                                                             core_commands, core_share_commands, stage4_commands,
                                                             stage5_commands,
                                                             stage6_commands, stage8_commands)

    stage4, stage5, stage6, stage8, core = ([parser.parse_args(c) for c in f()] for f in (
        stage4_commands, stage5_commands, stage6_commands, stage8_commands, core_commands))
    assert [a.command for a in core] == ["synth"] * 5 + ["calibrate"]
    assert [str(p) for p in core[5].choose_particle_core] == ["cur_valenv", "cur_valcamA", "cur_valcamB",
                                                              "cur_valaccA", "cur_valaccB"]
    assert str(core[5].bundle) == "ft8/bundle" and [a.seed for a in core[:5]] == [1104, 1105, 1106, 1107, 1108]
    assert core[3].diameter == [3.0, 6.0] and core[3].defocus == [-6.0, 6.0] and core[1].read_noise == [20.0]
    (share,) = [parser.parse_args(c) for c in core_share_commands()]
    assert share.command == "calibrate" and str(share.bundle) == "ft8/bundle"
    assert [str(p) for p in share.choose_particle_core_fraction] == [str(p) for p in core[5].choose_particle_core] \
        == [str(p) for p in share.choose_particle_edge_core_fraction]
    assert [a.command for a in stage4] == ["synth"] * 3 + ["finetune"]
    assert stage4[0].support_pool is None and stage4[0].count == 1600  # the preset's pool of 4 slabs
    assert stage4[3].source == "ft3/bundle" and stage4[3].data == ["cur_p4", "cur_2"]
    assert [a.command for a in stage5] == ["synth"] * 3 + ["finetune"]
    assert stage5[0].seed == stage4[0].seed and stage5[0].count == 900  # cur_p9: the first 900 of cur_p4
    assert stage5[1].engine == "abtem" and stage5[1].preset is None and stage5[1].empty_fraction == 0.4
    assert stage5[3].source == "ft4/bundle" and stage5[3].data == ["rnd5", "cur_p9"]
    assert [a.command for a in stage6] == ["synth", "synth", "finetune", "calibrate"]
    assert stage6[0].read_noise == [0.0, 40.0] and stage6[0].mtf_sigma == [0.0, 1.3]  # wider camera ranges
    assert stage6[2].source == "ft5/bundle" and stage6[2].data == ["rnd6", "rnd5"]
    assert stage6[2].bundle_name == "default-curated-v6" and stage6[2].lowpass_sigma is None
    assert str(stage6[3].bundle) == "ft6/bundle" and stage6[1].mtf_sigma == [0.0, 1.3]
    assert [str(p) for p in stage6[3].choose_threshold] == ["cur_val4", "cur_valbare", "cur_valbare6"]
    assert [a.command for a in stage8] == ["synth", "finetune", "calibrate"]
    assert stage8[0].dose == [150.0, 700.0] and stage8[0].seed == 3002 and stage8[0].mtf_sigma == [0.0, 1.3]
    assert stage8[1].source == "ft6/bundle" and stage8[1].data == ["rnd6", "rnd5", "rnd7"]
    assert stage8[1].bundle_name == DEFAULT_NAME and stage8[1].epochs == 3
    assert stage8[1].lowpass_sigma == LOWPASS_SIGMA_PX == 1.0 and not stage8[1].noise_rho_max  # no white noise back
    assert str(stage8[2].bundle) == "ft8/bundle" and stage8[2].choose_threshold == stage6[3].choose_threshold
    # every set a later command reads is written by an earlier one (or is an earlier run's bundle)
    written: set[str] = set()
    for argv in all_commands():
        a = parser.parse_args(argv)
        needs = list(getattr(a, "data", None) or []) + [str(p) for p in getattr(a, "choose_threshold", None) or []]
        for need in needs:
            assert str(need) in written, (argv[0], need)
        out = getattr(a, "out", None)
        if out is not None:
            written.add(str(out))


def test_trainer_noise_max_steps_and_tensorboard(tmp_path: Path) -> None:
    x, y = _discs(6, 32, 1)
    torch.manual_seed(0)
    model = build_model("resunet", **TINY)
    cfg = TrainConfig(epochs=3, batch_size=2, lr=1e-3, device="cpu", noise_rho_max=0.5, max_steps=4,
                      tensorboard_dir=str(tmp_path / "tb"))
    import importlib.util

    has_tb = importlib.util.find_spec("tensorboard") is not None
    if not has_tb:
        with pytest.raises(RuntimeError, match="pip install tensorboard"):
            train_model(model, (x[:4], y[:4]), (x[4:], y[4:]), cfg)
        return
    r = train_model(model, (x[:4], y[:4]), (x[4:], y[4:]), cfg)
    assert r.steps == 4 and len(r.history) == 2  # 2 steps per epoch
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    with pytest.raises(ValueError, match="give noise_rho or noise_rho_max, not both"):
        TrainConfig(noise_rho=0.1, noise_rho_max=0.2)
    with pytest.raises(ValueError, match="freeze must be one of"):
        TrainConfig(freeze="middle")


def test_run_training_ends_in_a_bundle_with_the_data_envelope(tiny_set: Path, tmp_path: Path) -> None:
    from fringelive.bundle.bundle_io import load_bundle

    cfg = RunConfig(data=(str(tiny_set),), out=str(tmp_path / "run"),
                    train=TrainConfig(epochs=2, batch_size=8, lr=1e-2, device="cpu"),
                    arch="resunet", arch_overrides=dict(TINY), patch_px=32, folds=5, run_folds=(0, 3),
                    benchmarks=(("again", str(tiny_set)),), command="fringelive train --data syn",
                    export_check_sizes=(32,))
    result = run_training(cfg)
    bundle = load_bundle(result.bundle)
    card = bundle.card
    assert len(card.members) == 2 and [m.source for m in card.members] == ["fold0", "fold3"]
    assert all(m.weights for m in card.members)
    ss = load_sampleset(tiny_set)
    used = sorted(set(range(10)) - {0, 1} | (set(range(10)) - {6, 7}))  # union of train+val of folds 0 and 3
    assert card.envelope == envelope_from_metadata([ss.metadata[i] for i in used])
    assert card.envelope.dose_e_per_A2.min >= 400 and card.envelope.voltage_kv.min == 300.0
    assert card.envelope.support == ("amorphous carbon",)
    assert card.name == default_bundle_name(card.envelope)
    assert card.provenance.command == "fringelive train --data syn"
    t = card.metrics["training"]
    assert t["recipe"]["loss"] == "cross-entropy" and t["recipe"]["batch_size"] == 8 and t["patch_px"] == 32
    assert t["seeds"] == {"fold0": 0, "fold3": 3} and t["data"][0]["samples"] == 10
    assert [r["test_samples"] for r in t["fold_runs"]] == [[[0, 2]], [[6, 8]]]
    test = card.metrics["test"]
    assert test["dice_mean"] == pytest.approx(np.mean([r["dice"] for r in test["per_fold"]]))
    assert "false_negative_rate_mean" in test
    bench = card.metrics["benchmarks"]["again"]
    assert bench["whole_sample"]["samples"] == 10 and bench["whole_sample"]["sample_px"] == [64, 64]
    assert 0.0 <= bench["whole_sample"]["ensemble_dice_mean"] <= 1.0 and len(bench["per_patch"]["per_fold"]) == 2
    assert t["data"][0]["command"] is None  # made by the API, not a command line
    assert result.drift_reference and card.drift_reference["cusum"]["h"] > 0  # calibrated on held-out frames
    rows = list(csv.DictReader(open(tmp_path / "run" / "evaluation.csv", newline="")))
    assert {(r["fold"], r["set"]) for r in rows} >= {("0", "test"), ("3", "again"), ("mean", "test"), ("std", "test")}
    # a rerun skips the finished folds and gives the same members
    done = json.loads((tmp_path / "run" / "fold0" / "done.json").read_text())
    again = run_training(cfg)
    assert again.folds[0]["best_epoch"] == done["best_epoch"]
    w0 = torch.load(Path(result.bundle) / "member0.pt", weights_only=True)
    w1 = torch.load(Path(again.bundle) / "member0.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    with pytest.raises(RunError, match="different settings \\(recipe\\)"):
        run_training(replace(cfg, train=replace(cfg.train, lr=1e-3)))


def test_cli_train(tiny_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fringelive.cli import main
    from fringelive.bundle.bundle_io import load_bundle

    argv = ["train", "--data", str(tiny_set), "--out", str(tmp_path / "cli"), "--arch", "resunet", "--spec",
            '{"widths": [4, 8], "bottleneck": 8}', "--patch", "32", "--epochs", "1", "--batch-size", "8",
            "--folds", "5", "--fold", "1", "--check-size", "32", "--no-progress", "--xray-threshold", "1000",
            "--bundle-name", "tiny-cli", "--benchmark", f"again={tiny_set}", "--benchmark-by", "dose_e_per_A2=425",
            "--benchmark-by", "material"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "fold 1: best epoch 0" in out and "test Dice" in out
    card = load_bundle(tmp_path / "cli" / "bundle").card
    # per-condition subsets of the benchmark: in the per-epoch log and the card
    header = (tmp_path / "cli" / "fold1" / "log.csv").read_text().splitlines()[0]
    assert "again[dose_e_per_A2<425]_dice" in header and "again[material=Au]_dice" in header
    benches = card.metrics["benchmarks"]
    low, high = benches["again[dose_e_per_A2<425]"], benches["again[dose_e_per_A2>=425]"]
    assert low["of"] == "again" and low["samples"] + high["samples"] == 10
    assert low["whole_sample"]["samples"] == low["samples"] and benches["again[material=Au]"]["samples"] == 10
    assert card.name == "tiny-cli" and card.preprocessing.xray_threshold_counts == 1000.0
    assert card.provenance.command.startswith("fringelive train --data")
    assert main(["train", "--data", str(tiny_set), "--out", str(tmp_path / "bad"), "--split", "0.5", "0.1", "0.1"]) == 2
    assert main(["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "bad2")]) == 1
    assert main(["train", "--data", str(tiny_set), "--out", str(tmp_path / "bad3"), "--benchmark", f"b={tiny_set}",
                 "--benchmark-by", "dose_e_per_A2=500,x"]) == 2
    assert "EDGE,EDGE" in capsys.readouterr().err
    assert main(["train", "--data", str(tiny_set), "--out", str(tmp_path / "bad4"), "--benchmark", f"b={tiny_set}",
                 "--benchmark-by", "no_such_column", "--epochs", "1", "--patch", "32", "--fold", "0",
                 "--arch", "resunet", "--spec", '{"widths": [4, 8], "bottleneck": 8}']) == 1
    assert "'no_such_column' is in no sample's metadata" in capsys.readouterr().err


def test_committed_default_bundle_records_its_recipe_and_heldout_dice() -> None:
    """default_bundle is stage 8 of training/build_default_bundle.py (the curated fine-tunes): its
    card records the finetune and synth commands, the per-epoch benchmarks (per condition too),
    the threshold choice, and reaches Dice >= 0.89 on whole held-out multislice frames at
    0.02 nm/pixel and 423 e/Å² with an unseen camera (the fine-tune's benchmark)."""
    from fringelive.bundle.bundle_io import load_bundle
    from fringelive.training.default_bundle_commands import DEFAULT_NAME, LOWPASS_SIGMA_PX, stage8_commands

    path = Path(__file__).resolve().parents[1] / "default_bundle"
    if not (path / "card.json").is_file():
        pytest.skip(f"no default bundle at {path}")
    card = load_bundle(path).card
    assert card.name == DEFAULT_NAME
    command = card.provenance.command
    assert command.startswith("fringelive finetune ") and "--data rnd6 rnd5 rnd7" in command
    assert "--lowpass-sigma 1.0" in command and card.preprocessing.lowpass_sigma_px == LOWPASS_SIGMA_PX
    assert "--select-metric last" in command and "--benchmark bare_support=eval_bare" in command
    assert all("synth --engine abtem" in d["command"] for d in card.metrics["training"]["data"])
    benches = card.metrics["benchmarks"]
    assert {"accept_au", "bare_support"} <= set(benches)
    assert benches["accept_au"]["whole_sample"]["samples"] == 24
    # the fine-tune's own benchmark, at the uncalibrated 0.5; through the daemon at the card's
    # calibrated threshold it is 0.93 (docs/training.md)
    assert benches["accept_au"]["whole_sample"]["ensemble_dice_mean"] >= 0.89
    assert benches["bands[material=Ag]"]["of"] == "bands" and benches["bands[dose_e_per_A2<500]"]["samples"] > 0
    calibrate = stage8_commands()[-1]
    ref = card.drift_reference
    assert ref and ref["frames"] >= 100 and ref["cusum"]["h"] > 0  # measured by the calibrate command
    assert ref["sources"] == calibrate[3:calibrate.index("--choose-threshold")]
    chosen = card.metrics["threshold_calibration"]
    assert chosen["sources"] == ["cur_val4", "cur_valbare", "cur_valbare6"] and chosen["threshold"] == card.threshold
