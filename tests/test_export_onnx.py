"""ONNX export: dynamic axes, opset, checker, ONNX Runtime == torch, the bundle it writes, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fringelive.cli import main as cli_main
from fringelive.bundle.bundle_io import Bundle, load_bundle, sha256_file
from fringelive.bundle.card import Envelope, Range
from fringelive.export.onnx_export import (
    ExportError,
    check_onnx_against_torch,
    export_bundle,
    export_onnx,
)
from fringelive.engine.models import build_model


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnx_graph_is_clean_and_dynamic(tiny_bundle: Bundle) -> None:
    proto = onnx.load(str(tiny_bundle.member_paths[0]))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("image", "logits")
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "height", "width"]
    dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert dims == ["batch", 2, "height", "width"]


def test_onnxruntime_equals_torch_on_any_batch_and_shape(tiny_bundle: Bundle) -> None:
    torch.manual_seed(0)
    model = build_model("resunet-seed").eval()  # the same weights the fixture exported
    sess = _session(tiny_bundle.member_paths[0])
    rng = np.random.default_rng(0)
    for shape in [(3, 1, 48, 80), (1, 1, 16, 16), (2, 1, 128, 64)]:
        x = rng.standard_normal(shape, dtype=np.float32)
        got = sess.run(["logits"], {"image": x})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-4


def test_export_check_512_and_1024_is_recorded(tmp_path: Path) -> None:
    """The export itself compares ONNX Runtime with torch on random 512² and 1024² inputs."""
    torch.manual_seed(1)
    model = build_model("resunet-seed").eval()
    b = export_bundle([model], tmp_path / "b", name="b", command="test")
    rec = b.card.metrics["onnx_export"]
    assert rec["input_px"] == [[512, 512], [1024, 1024]]
    assert (rec["tolerance"], rec["rtol"]) == (1e-4, 1e-5)
    diffs, scale = rec["max_abs_diff"]["member0"], rec["max_abs_logit"]["member0"]
    assert set(diffs) == {"512x512", "1024x1024"}
    for k, d in diffs.items():  # random weights: logits O(10-100), so the rtol part matters here
        assert d <= 1e-4 + 1e-5 * scale[k]
    # the recorded numbers are reproducible from the files
    again = check_onnx_against_torch(model, b.member_paths[0], sizes=(512,))["512x512"]
    assert again["ok"] and again["max_abs_diff"] == pytest.approx(diffs["512x512"], abs=1e-6)


def test_bundle_card_contents(tiny_bundle: Bundle) -> None:
    card = tiny_bundle.card
    assert card.name == "tiny-resunet-seed"
    assert card.architecture.name == "resunet-seed" and card.architecture.parameters == 130_682
    assert card.architecture.spec["widths"] == [4, 8, 16, 32]
    assert (card.tile.multiple_of, card.tile.receptive_field_radius_px, card.tile.halo_px) == (16, 122, 128)
    assert card.classes == ("background", "particle")
    assert card.envelope.pixel_size_nm == Range(0.02, 0.02)
    assert {"torch", "onnx", "onnxruntime", "fringelive", "python"} <= set(card.provenance.versions)
    assert card.provenance.created.endswith("+00:00")
    m = card.members[0]
    assert m.sha256 == sha256_file(tiny_bundle.path / m.file)


def test_weights_file_reproduces_the_network(tiny_bundle: Bundle) -> None:
    state = torch.load(tiny_bundle.path / "member0.pt", weights_only=True)
    model = build_model(tiny_bundle.card.architecture.name, **tiny_bundle.card.architecture.spec).eval()
    model.load_state_dict(state)
    x = np.random.default_rng(2).standard_normal((1, 1, 64, 64), dtype=np.float32)
    got = _session(tiny_bundle.member_paths[0]).run(["logits"], {"image": x})[0]
    with torch.no_grad():
        assert np.abs(model(torch.from_numpy(x)).numpy() - got).max() <= 1e-4


def test_ensemble_and_other_architecture(tmp_path: Path) -> None:
    torch.manual_seed(0)
    models = [build_model("resunet", widths=(4, 8), bottleneck=16) for _ in range(2)]
    b = export_bundle(models, tmp_path / "ens", name="ens", check_sizes=(32,), member_sources=["a", "b"],
                      classes=("bg", "particle"))
    assert b.card.architecture.name == "resunet"
    assert (b.card.tile.multiple_of, b.card.tile.receptive_field_radius_px, b.card.tile.halo_px) == (4, 26, 28)
    assert [m.source for m in b.card.members] == ["a", "b"]
    assert [m.file for m in b.card.members] == ["member0.onnx", "member1.onnx"]
    assert b.card.classes == ("bg", "particle")
    x = np.zeros((1, 1, 12, 20), np.float32)
    assert _session(b.member_paths[1]).run(["logits"], {"image": x})[0].shape == (1, 2, 12, 20)


def test_export_refusals(tmp_path: Path) -> None:
    torch.manual_seed(0)
    seed = build_model("resunet-seed")
    with pytest.raises(ExportError, match=r"differs from torch by more than 1e-12 \+ 0\*max\|logit\| \(32x32: max abs diff"):
        export_bundle([seed], tmp_path / "t", name="t", check_sizes=(32,), tolerance=1e-12, rtol=0)
    assert not (tmp_path / "t").exists()
    with pytest.raises(ExportError, match="different architectures"):
        export_bundle([seed, build_model("resunet", widths=(4, 8))], tmp_path / "u", name="u")
    with pytest.raises(ExportError, match="has no .spec"):
        export_bundle([torch.nn.Conv2d(1, 2, 1)], tmp_path / "v", name="v")
    with pytest.raises(ExportError, match="at least one model"):
        export_bundle([], tmp_path / "w", name="w")
    with pytest.raises(ExportError, match="check size 40 px is not a multiple of 16"):
        export_bundle([seed], tmp_path / "x", name="x", check_sizes=(40,))
    with pytest.raises(ExportError, match="opset must be >= 17"):
        export_onnx(seed, tmp_path / "y.onnx", opset=13)


def test_export_moves_model_to_cpu_eval_without_touching_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = build_model("resunet-seed").train()
    export_bundle([m], tmp_path / "b", name="b", check_sizes=(32,))
    assert m.training  # the caller's model is left as it was


# --- CLI ----------------------------------------------------------------------------------------

def test_cli_export_onnx_from_state_dicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = []
    for i in range(2):
        torch.manual_seed(i)
        p = tmp_path / f"fold{i}.pt"
        torch.save(build_model("resunet-seed").state_dict(), p)
        paths.append(p)
    # a training checkpoint that wraps its state dict is accepted too
    torch.save({"state_dict": torch.load(paths[1], weights_only=True), "epoch": 3}, paths[1])
    out = tmp_path / "mine"
    rc = cli_main(["export", "onnx", "--checkpoint", str(paths[0]), "--checkpoint", str(paths[1]),
                   "--out", str(out), "--material", "Au", "Ag", "--pixel-size-nm", "0.02", "0.033",
                   "--dose", "423", "--voltage-kv", "300", "--particle-diameter-nm", "5",
                   "--support", "UT Carbon", "--xray-threshold", "1200", "--rescale", "normalize",
                   "--no-flatfield", "--check-size", "32", "--description", "two folds"])
    assert rc == 0, capsys.readouterr().err
    assert "mine: 2 member(s)" in capsys.readouterr().out
    card = load_bundle(out).card
    assert card.name == "mine" and card.description == "two folds"
    assert card.envelope == Envelope(material=("Au", "Ag"), particle_diameter_nm=Range(5, 5),
                                     pixel_size_nm=Range(0.02, 0.033), dose_e_per_A2=Range(423, 423),
                                     voltage_kv=Range(300, 300), support=("UT Carbon",))
    p = card.preprocessing
    assert (p.xray_threshold_counts, p.rescale, p.flatfield, p.xray_removal) == (1200.0, "normalize", False, True)
    assert [s.path for s in card.provenance.sources] == ["fold0.pt", "fold1.pt"]
    assert card.provenance.sources[1].sha256 == sha256_file(paths[1])
    cmd = card.provenance.command or ""
    assert cmd.startswith("fringelive export onnx --checkpoint ") and "--material Au Ag" in cmd
    assert "--no-flatfield" in cmd and "--check-size 32" in cmd


def test_cli_export_onnx_other_arch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ckpt = tmp_path / "small.pt"
    torch.save(build_model("resunet", widths=(4, 8), bottleneck=16).state_dict(), ckpt)
    rc = cli_main(["export", "onnx", "--checkpoint", str(ckpt), "--out", str(tmp_path / "s"), "--arch", "resunet",
                   "--spec", json.dumps({"widths": [4, 8], "bottleneck": 16}), "--check-size", "32"])
    assert rc == 0
    card = load_bundle(tmp_path / "s").card
    assert card.architecture.name == "resunet" and card.tile.multiple_of == 4


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--checkpoint", "/nonexistent.pt"], 1, "checkpoint /nonexistent.pt: no such file"),
        (["--checkpoint", "{bad}"], 1, "not a torch state_dict file"),
        (["--checkpoint", "{small}"], 1, "does not fit resunet-seed"),
        (["--checkpoint", "{good}", "--pixel-size-nm", "0.05", "0.02"], 2, "--pixel-size-nm: range min 0.05 is above max 0.02"),
        (["--checkpoint", "{good}", "--dose", "1", "2", "3"], 2, "--dose takes one value or MIN MAX"),
        (["--checkpoint", "{good}", "--check-size", "40"], 2, "--check-size must be a positive multiple of 16 px, got 40"),
        (["--checkpoint", "{good}", "--spec", "[1]"], 2, "--spec must be a JSON object"),
        (["--checkpoint", "{good}", "--xray-threshold", "-5"], 2, "xray_threshold_counts must be > 0, got -5.0"),
        (["--checkpoint", "{good}", "--arch", "nonet"], 2, "unknown model 'nonet'"),
    ],
)
def test_cli_export_onnx_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                code: int, message: str) -> None:
    files = {"bad": tmp_path / "bad.pt", "small": tmp_path / "small.pt", "good": tmp_path / "good.pt"}
    files["bad"].write_bytes(b"garbage")
    torch.save(build_model("resunet", widths=(4, 8)).state_dict(), files["small"])
    torch.save(build_model("resunet-seed").state_dict(), files["good"])
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in extra]
    rc = cli_main(["export", "onnx", *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == code
    assert len(err) == 1 and err[0].startswith("fringelive: error: ") and message in err[0], err


@pytest.mark.seed
def test_cli_export_onnx_from_published_h5(seed_models_dir: Path, tmp_path: Path) -> None:
    f = seed_models_dir / "UNet_5nmAg330kX423eUTC_fold0_seed962_model.h5"
    rc = cli_main(["export", "onnx", "--checkpoint", str(f), "--out", str(tmp_path / "ag"),
                   "--material", "Ag", "--check-size", "64"])
    assert rc == 0
    card = load_bundle(tmp_path / "ag").card
    assert card.architecture.name == "resunet-seed"
    assert card.members[0].source == f.name and card.provenance.sources[0].sha256 == sha256_file(f)
    assert card.preprocessing.xray_threshold_counts == 1500.0 and card.preprocessing.flatfield
