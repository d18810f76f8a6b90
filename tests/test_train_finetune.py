"""``fringelive finetune``: which parameters ``--freeze`` fixes (encoder = downs + bottleneck,
decoder = ups + final_conv, BatchNorm statistics included), where starting weights come from,
and a fine-tune from a bundle ending in a new bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fringelive.engine.models import build_model
from fringelive.training.trainer import TrainConfig, train_model
from fringelive.training.transfer import FREEZE_PARTS, freeze, load_initial_weights

from disc_data import discs  # tests/disc_data.py


def _part(name: str) -> str:
    return name.split(".")[0]


def test_freeze_parts_are_encoder_and_decoder() -> None:
    model = build_model("resunet-seed")
    assert FREEZE_PARTS == {"none": (), "encoder": ("downs", "bottleneck"), "decoder": ("ups", "final_conv")}
    enc = freeze(model, "encoder")
    assert enc and {_part(n) for n in enc} == {"downs", "bottleneck"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {_part(n) for n in trainable} == {"ups", "final_conv"}
    dec = freeze(model, "decoder")
    assert {_part(n) for n in dec} == {"ups", "final_conv"}
    assert set(enc) | set(dec) == {n for n, _ in model.named_parameters()}
    assert freeze(model, "none") == [] and all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="freeze must be one of .* got 'middle'"):
        freeze(model, "middle")


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_training_leaves_the_frozen_part_untouched(part: str) -> None:
    x, y = discs(6, 32, 0)
    torch.manual_seed(0)
    model = build_model("resunet", widths=(4, 8), bottleneck=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_model(model, (x[:4], y[:4]), (x[4:], y[4:]),
                         TrainConfig(epochs=2, batch_size=2, lr=1e-2, device="cpu", freeze=part))
    assert result.frozen and result.best_epoch >= 0
    after = model.state_dict()
    frozen = FREEZE_PARTS[part]
    for k, v in after.items():
        same = torch.equal(v, before[k])
        if _part(k) in frozen:
            assert same, f"{k} changed although {part} is frozen"  # weights and BN running stats
    moved = [k for k in after if _part(k) not in frozen and not torch.equal(after[k], before[k])]
    assert moved


def test_initial_weights_from_bundle_checkpoint_and_state_dict(tiny_bundle, tmp_path: Path) -> None:
    init = load_initial_weights(tiny_bundle.path)
    assert init.arch == "resunet-seed" and len(init.states) == 1 and init.preprocessing == tiny_bundle.card.preprocessing
    model = init.build(3)  # member index wraps around the ensemble
    ref = torch.load(tiny_bundle.path / "member0.pt", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], ref[k]) for k in ref)
    torch.save(ref, tmp_path / "plain.pt")
    assert load_initial_weights(tmp_path / "plain.pt").source.startswith("state dict")
    x, y = discs(3, 32, 1)
    small = build_model("resunet", widths=(4, 8), bottleneck=8)
    train_model(small, (x, y), (x[:0], y[:0]), TrainConfig(epochs=1, batch_size=3, device="cpu",
                                                            checkpoint_dir=str(tmp_path / "ck")))
    ck = load_initial_weights(tmp_path / "ck" / "best.pt")
    assert ck.arch == "resunet" and ck.spec["widths"] == [4, 8]
    assert all(torch.equal(ck.build().state_dict()[k], small.state_dict()[k]) for k in small.state_dict())
    with pytest.raises(ValueError, match="neither a bundle directory nor a weights file"):
        load_initial_weights(tmp_path / "missing.pt")


def test_cli_finetune_from_bundle_with_frozen_decoder(tiny_bundle, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from fringelive.cli import main
    from fringelive.bundle.bundle_io import load_bundle
    from fringelive.training.synth import synthesize
    from fringelive.training.synth_config import SynthConfig

    synthesize(SynthConfig(engine="fast", count=5, size_px=64, pixel_size_nm=(0.1, 0.1), diameter_nm=(2.0, 3.0),
                           particles_per_100nm2=8.0), tmp_path / "syn", progress=False)
    rc = main(["finetune", "--from", str(tiny_bundle.path), "--data", str(tmp_path / "syn"), "--out",
               str(tmp_path / "ft"), "--freeze", "decoder", "--epochs", "1", "--batch-size", "4", "--patch", "32",
               "--folds", "5", "--fold", "2", "--check-size", "32", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    card = load_bundle(tmp_path / "ft" / "bundle").card
    t = card.metrics["training"]
    assert t["recipe"]["freeze"] == "decoder" and t["recipe"]["lr"] == 1e-5 and t["recipe"]["epochs"] == 1
    assert "tiny-resunet-seed" in t["init"] and card.name.startswith("finetuned-")
    assert card.preprocessing == tiny_bundle.card.preprocessing and card.architecture.name == "resunet-seed"
    src = torch.load(tiny_bundle.path / "member0.pt", weights_only=True)
    new = torch.load(tmp_path / "ft" / "bundle" / "member0.pt", weights_only=True)
    for k in src:
        if _part(k) in ("ups", "final_conv"):
            assert torch.equal(src[k], new[k]), k
    assert any(not torch.equal(src[k], new[k]) for k in src if _part(k) == "downs")
