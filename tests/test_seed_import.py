"""Import of the published checkpoints: restricted unpickling, parity, one bundle per dataset.

Offline tests use *synthetic* published-style checkpoints (a random network pickled as a full
module whose classes are ``__main__.UNet``/``__main__.ResidualBlock``, like the real ones); the
``seed`` tests use ``../shared/seed_models`` and skip when it is absent.
"""

from __future__ import annotations

import builtins
import copy
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from fringelive.cli import main as cli_main
from fringelive.bundle.bundle_io import load_bundle, sha256_file
from fringelive.bundle.card import Range
from fringelive.export.safe_unpickle import UnpicklingRefused, make_pickle_module
from fringelive.export.seed_import import (
    SEED_ALLOWLIST,
    SeedImportError,
    SeedUNet,
    bundle_name,
    check_parity,
    import_seed,
    load_seed_checkpoint,
    parse_checkpoint_name,
    read_model_details,
    to_resunet,
)
from fringelive.engine.models import build_model

DETAIL_HEADER = ["Model Name", "Fold", "Dataset Trained On", "Np Diameter (nm)", "Np Material",
                 "Pixel Scale (nm)", "Dosage (e/A2)"]


# --- planted payloads ------------------------------------------------------------------------

class _Payload:
    """Pickles as a call ``fn(*args)``: what a malicious checkpoint would contain."""

    def __init__(self, fn, args) -> None:  # noqa: ANN001
        self.fn, self.args = fn, args

    def __reduce__(self):  # noqa: ANN204
        return self.fn, self.args


def _payloads(marker: Path) -> dict[str, tuple[str, _Payload]]:
    return {
        "os.system": (f"{os.system.__module__}.system", _Payload(os.system, (f"touch {marker}",))),
        "subprocess": ("subprocess.call", _Payload(subprocess.call, (["touch", str(marker)],))),
        "eval": ("builtins.eval", _Payload(builtins.eval, (f"open({str(marker)!r}, 'w').write('ran')",))),
        "exec-in-module": ("builtins.exec", _Payload(builtins.exec, (f"open({str(marker)!r}, 'w').write('ran')",))),
    }


@pytest.mark.parametrize("kind", ["os.system", "subprocess", "eval", "exec-in-module"])
def test_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    refused, payload = _payloads(marker)[kind]
    ckpt = tmp_path / "UNet_5nmAu330kX423eUTC_fold0_seed1_model.h5"
    # hide the payload inside an otherwise plausible object, as an attacker would
    torch.save({"model": payload, "weights": torch.zeros(3)}, ckpt)
    with pytest.raises(UnpicklingRefused, match=rf"refused to load global '{refused}'") as info:
        load_seed_checkpoint(ckpt)
    assert info.value.refused == refused
    assert ckpt.name in str(info.value)
    assert not marker.exists(), "the planted command ran"


def test_planted_payload_is_live_under_plain_unpickling(tmp_path: Path) -> None:
    """Control: the same archive's pickle through the standard unpickler runs the payload, so
    the refusal above is what stops it."""
    import pickle
    import zipfile

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.h5"
    torch.save(_payloads(marker)["eval"][1], ckpt)
    with zipfile.ZipFile(ckpt) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    pickle.loads(data)
    assert marker.read_text() == "ran"


def test_allowlist_is_exactly_what_the_checkpoints_need() -> None:
    assert set(SEED_ALLOWLIST) == {
        "__main__.UNet", "__main__.ResidualBlock", "torch.nn.modules.conv.Conv2d",
        "torch.nn.modules.batchnorm.BatchNorm2d", "torch.nn.modules.activation.ReLU",
        "torch.nn.modules.pooling.MaxPool2d", "torch.nn.modules.upsampling.Upsample",
        "torch.nn.modules.container.ModuleList", "collections.OrderedDict", "builtins.set",
        "torch._utils._rebuild_parameter", "torch._utils._rebuild_tensor_v2",
        "torch.FloatStorage", "torch.LongStorage",
    }
    import pickle

    mod = make_pickle_module({"builtins.set": set})
    with pytest.raises(UnpicklingRefused, match="'builtins.print'"):
        mod.loads(pickle.dumps(print))
    # protocol-2 pickles name '__builtin__.set'; it is mapped before the allowlist check
    assert b"__builtin__" in pickle.dumps({1, 2}, protocol=2)
    assert mod.loads(pickle.dumps({1, 2}, protocol=2)) == {1, 2}
    with pytest.raises(ValueError, match="module.name"):
        make_pickle_module({"noddot": 1})


# --- synthetic published-style checkpoints -----------------------------------------------------

def _publish(model: nn.Module, path: Path) -> None:
    """Save ``model`` the way the authors did: ``torch.save(model)`` of classes defined in
    ``__main__`` named ``UNet`` and ``ResidualBlock``."""
    main = sys.modules["__main__"]
    unet_cls = type("UNet", (nn.Module,), {"__module__": "__main__"})
    block_cls = type("ResidualBlock", (nn.Module,), {"__module__": "__main__"})
    m = copy.deepcopy(model)
    del m.spec  # the published module has no spec attribute
    m.__class__ = unet_cls
    for sub in m.modules():
        if type(sub).__name__ == "ResidualBlock":
            sub.__class__ = block_cls
    old = {k: getattr(main, k, None) for k in ("UNet", "ResidualBlock")}
    main.UNet, main.ResidualBlock = unet_cls, block_cls  # type: ignore[attr-defined]
    try:
        torch.save(m, path)
    finally:
        for k, v in old.items():
            if v is None:
                delattr(main, k)
            else:
                setattr(main, k, v)


def _random_seed_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = build_model("resunet-seed")
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.3, 0.3)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two folds of one dataset plus model_details.csv (spelling 'Unet_' like the real one)."""
    d = tmp_path_factory.mktemp("synthetic_seed")
    rows = []
    for fold, seed in ((1, 1662), (0, 962)):  # written out of order on purpose
        name = f"UNet_2p2nmAu330kX423eUTC_fold{fold}_seed{seed}_model.h5"
        _publish(_random_seed_net(fold), d / name)
        rows.append([f"Unet_2p2nmAu330kX423eUTC_fold{fold}_seed{seed}_model.h5", fold,
                     "Au_2p2nm_330kx_423e_Std_UTC_FFCorr_Team05_Images", 2.2, "Au", 0.02, 423])
    with (d / "model_details.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(DETAIL_HEADER)
        w.writerows(rows)
    return d


def test_synthetic_checkpoint_loads_as_reference_class(synthetic_dir: Path) -> None:
    f = synthetic_dir / "UNet_2p2nmAu330kX423eUTC_fold0_seed962_model.h5"
    seed = load_seed_checkpoint(f)
    assert isinstance(seed, SeedUNet) and not seed.training
    assert type(seed.downs[0]).__name__ == "SeedResidualBlock"
    ours = to_resunet(seed)
    assert check_parity(seed, ours, size=64) <= 1e-5
    # the reference forward really is the published one: equal to the original network
    with torch.no_grad():
        x = torch.randn(1, 1, 48, 64)
        assert torch.allclose(seed(x), _random_seed_net(0)(x), atol=1e-5)


def test_import_synthetic_dataset(synthetic_dir: Path, tmp_path: Path) -> None:
    files = sorted(synthetic_dir.glob("*.h5"))
    (bundle,) = import_seed(files, tmp_path, parity_size=64, check_sizes=(32,), command="test")
    assert bundle.name == "au-2.2nm-0.020nm-423e" == bundle.path.name
    card = load_bundle(bundle.path).card
    assert [m.source for m in card.members] == [
        "UNet_2p2nmAu330kX423eUTC_fold0_seed962_model.h5", "UNet_2p2nmAu330kX423eUTC_fold1_seed1662_model.h5"]
    assert card.envelope.material == ("Au",)
    assert card.envelope.particle_diameter_nm == Range(2.2, 2.2)
    assert card.envelope.pixel_size_nm == Range(0.0196, 0.0204)  # nominal ± 2 %
    assert card.envelope.dose_e_per_A2 == Range(380.7, 465.3)  # nominal ± 10 %
    assert card.envelope.voltage_kv == Range(300.0, 300.0)
    assert card.envelope.support == ("UT Carbon",)
    p = card.preprocessing
    assert (p.xray_removal, p.xray_threshold_counts, p.flatfield, p.rescale) == (True, 1500.0, True, "standardize")
    assert [s.path for s in card.provenance.sources] == [m.source for m in card.members]
    assert all(s.sha256 == sha256_file(synthetic_dir / s.path) for s in card.provenance.sources)
    assert {"torch", "onnx", "onnxruntime", "fringelive"} <= set(card.provenance.versions)
    assert card.provenance.command == "test"
    assert max(card.metrics["seed_parity"]["max_abs_diff"].values()) <= 1e-5
    assert card.tile.receptive_field_radius_px == 122 and card.tile.multiple_of == 16
    # member order by fold: member1.onnx reproduces the fold-1 network
    sess = ort.InferenceSession(str(bundle.path / "member1.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 1, 64, 32), dtype=np.float32)
    with torch.no_grad():
        ref = _random_seed_net(1)(torch.from_numpy(x)).numpy()
    assert np.abs(sess.run(["logits"], {"image": x})[0] - ref).max() <= 1e-4
    # weights file reloads into resunet-seed
    m = build_model("resunet-seed")
    m.load_state_dict(torch.load(bundle.path / "member0.pt", weights_only=True))


def test_import_errors(synthetic_dir: Path, tmp_path: Path) -> None:
    f0 = synthetic_dir / "UNet_2p2nmAu330kX423eUTC_fold0_seed962_model.h5"
    details = tmp_path / "details.csv"
    details.write_text(",".join(DETAIL_HEADER) + "\n")
    with pytest.raises(SeedImportError, match="no row for it in model_details.csv"):
        import_seed([f0], tmp_path / "o", details=details)
    details.write_text(",".join(DETAIL_HEADER) + "\nUNet_2p2nmAu330kX423eUTC_fold0_seed962_model.h5,3,d,2.2,Au,0.02,423\n")
    with pytest.raises(SeedImportError, match="file name says fold 0, model_details.csv says 3"):
        import_seed([f0], tmp_path / "o", details=details)
    with pytest.raises(SeedImportError, match="not a UTF-8 CSV file"):
        read_model_details(f0)
    details.write_text("Model,Fold\nx,1\n")
    with pytest.raises(SeedImportError, match=r"missing column\(s\) \['Model Name', 'Dataset Trained On'"):
        read_model_details(details)
    with pytest.raises(SeedImportError, match="no such file"):
        import_seed([tmp_path / "absent.h5"], tmp_path / "o")
    with pytest.raises(SeedImportError, match="does not follow the published pattern"):
        parse_checkpoint_name("model.h5")
    other = tmp_path / "UNet_5nmAu330kX423eUTC_fold0_seed1_model.h5"
    torch.save({"w": torch.zeros(2)}, other)
    with pytest.raises(SeedImportError, match="holds a dict, expected the published UNet"):
        load_seed_checkpoint(other)
    (tmp_path / "garbage.h5").write_bytes(b"not a zip")
    with pytest.raises(SeedImportError, match="cannot be read as a torch archive"):
        load_seed_checkpoint(tmp_path / "garbage.h5")


def test_names() -> None:
    n = parse_checkpoint_name("/x/Unet_2p2nmAu330kX423eUTC_fold3_seed72115_model.h5")
    assert (n.dataset, n.particle_diameter_nm, n.material, n.magnification_kx, n.dose_e_per_A2,
            n.support_code, n.fold, n.seed) == ("2p2nmAu330kX423eUTC", 2.2, "Au", 330, 423.0, "UTC", 3, 72115)
    assert parse_checkpoint_name("UNet_5nmCdSe330kX421eUTC_fold0_seed962_model.h5").material == "CdSe"


def test_cli_refuses_malicious_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "UNet_5nmAu330kX423eUTC_fold0_seed962_model.h5"
    torch.save(_payloads(marker)["os.system"][1], ckpt)
    (tmp_path / "model_details.csv").write_text(
        ",".join(DETAIL_HEADER) + f"\n{ckpt.name},0,d,5,Au,0.02,423\n")
    rc = cli_main(["import-seed", str(ckpt), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("fringelive: error: ") and "system" in err[0]
    assert not marker.exists()


# --- the real published checkpoints -------------------------------------------------------------

@pytest.mark.seed
def test_model_details_match_files_case_insensitively(seed_models_dir: Path) -> None:
    table = read_model_details(seed_models_dir / "model_details.csv")
    files = sorted(seed_models_dir.glob("*.h5"))
    assert len(files) == 50 and len(table) == 50
    names = {bundle_name(table[f.name.partition("_")[2].lower()]) for f in files}
    assert names == {
        "au-2.2nm-0.020nm-423e", "au-5nm-0.020nm-423e", "au-10nm-0.020nm-425e", "au-5nm-0.020nm-80e",
        "au-5nm-0.020nm-884e", "ag-5nm-0.020nm-423e", "cdse-5nm-0.020nm-421e", "au-5nm-0.042nm-425e",
        "au-5nm-0.033nm-420e", "au-5nm-0.026nm-450e",
    }


@pytest.mark.seed
def test_import_one_dataset_via_cli(seed_models_dir: Path, tmp_path: Path) -> None:
    files = sorted(seed_models_dir.glob("UNet_5nmAu160kX425eUTC_fold*_model.h5"))
    assert len(files) == 5
    rc = cli_main(["import-seed", *map(str, files), "--out", str(tmp_path), "--parity-size", "128",
                   "--check-size", "64"])
    assert rc == 0
    b = load_bundle(tmp_path / "au-5nm-0.042nm-425e")
    assert [m.source for m in b.card.members] == [f.name for f in files]
    assert b.card.envelope.pixel_size_nm == Range(0.04116, 0.04284)
    assert b.card.envelope.dose_e_per_A2 == Range(382.5, 467.5)
    assert max(b.card.metrics["seed_parity"]["max_abs_diff"].values()) <= 1e-5
    assert max(b.card.metrics["onnx_export"]["max_abs_diff"]["member4"].values()) <= 1e-4


@pytest.mark.seed
@pytest.mark.slow
def test_all_fifty_checkpoints_import(seed_models_dir: Path, tmp_path: Path) -> None:
    """All 50: restricted load, parity <= 1e-5 on 1x1x128x128, ONNX check on 64x64, bundles load.
    Slow (~1-5 min on 2 shared cores); test_import_one_dataset_via_cli covers one dataset fast."""
    files = sorted(seed_models_dir.glob("*.h5"))
    bundles = import_seed(files, tmp_path, parity_size=128, check_sizes=(64,), command="test")
    assert len(bundles) == 10
    parity = [v for b in bundles for v in b.card.metrics["seed_parity"]["max_abs_diff"].values()]
    assert len(parity) == 50 and max(parity) <= 1e-5
    for b in bundles:
        again = load_bundle(b.path)
        assert len(again.card.members) == 5
        folds = [parse_checkpoint_name(m.source).fold for m in again.card.members]
        assert folds == [0, 1, 2, 3, 4]
        assert again.card.envelope.voltage_kv == Range(300.0, 300.0)
        assert again.card.envelope.support == ("UT Carbon",)
