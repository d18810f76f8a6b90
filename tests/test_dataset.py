"""``fringelive dataset``: selection by metadata, preprocessing with the shared engine, patching,
the particle-pixel filter and the carried-forward metadata, on synthetic .tif + label PNG + CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from fringelive.bundle.card import Preprocessing
from fringelive.training.experimental import (
    DatasetConfig, DatasetError, Selection, build_dataset, patch_origins, read_label, read_metadata_csv,
    standard_fields,
)
from fringelive.training.samples import envelope_from_metadata, load_sampleset

SEED_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "seed_models"
HEADER = ["File name", "Date", "Material", "Nanoparticle Size (nm)", "Nanoparticle Shape", "Support", "Instrument",
          "Dosage (e/A2)", "Pixel Scale (nm)", "Folder"]
PARAMS = Preprocessing(xray_threshold_counts=1500.0, flatfield_downsample=2)


def _image(rng: np.random.Generator, discs: list[tuple[int, int, int]], shape=(80, 96)) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    label = np.zeros(shape, bool)
    for cy, cx, r in discs:
        label |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    counts = rng.poisson(np.where(label, 60.0, 100.0)).astype(np.uint16)
    return counts, label


@pytest.fixture()
def experiment(tmp_path: Path) -> dict:
    """Three .tif images with 0/255 label PNGs in a labels folder, and a metadata CSV with a
    fourth row whose image is missing."""
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(0)
    img_dir, lab_dir = tmp_path / "raw" / "session1", tmp_path / "labels"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir()
    specs = {
        "Au_a_01.tif": ([(16, 16, 9), (50, 70, 6)], "Au", "0.02"),   # patches (0,0) big disc, (32,64) small one
        "Au_b_02.tif": ([(40, 40, 12)], "Au", "0.0205"),             # within tolerance
        "Ag_c_03.tif": ([(16, 16, 9)], "Ag", "0.02"),                 # other material
    }
    truth = {}
    for name, (discs, material, px) in specs.items():
        counts, label = _image(rng, discs)
        tifffile.imwrite(img_dir / name, counts)
        Image.fromarray((label * 255).astype(np.uint8)).save(lab_dir / name.replace(".tif", "_label.png"))
        truth[name] = (counts, label)
    csv_path = tmp_path / "meta.csv"
    with open(csv_path, "w", newline="", encoding="utf-8-sig") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        for name, (_, material, px) in specs.items():
            w.writerow([name.replace(".tif", ".dm3"), "01/01/22", material, "5", "Sphere", "UT Carbon", "Team05",
                        "423", px, "session1"])
        w.writerow(["missing_04.dm3", "01/01/22", "Au", "5", "Sphere", "UT Carbon", "Team05", "423", "0.02", "x"])
    return {"images": tmp_path / "raw", "labels": lab_dir, "csv": csv_path, "truth": truth}


def test_selection_patching_and_metadata(experiment: dict, tmp_path: Path) -> None:
    from fringelive.engine.preprocess import preprocess

    cfg = DatasetConfig(patch_px=32, min_particle_px=20, preprocessing=PARAMS,
                        selections=(Selection("Material", "au"), Selection("Pixel Scale (nm)", "0.02", 0.001)))
    report = build_dataset([experiment["images"]], tmp_path / "ds", cfg, labels_dir=experiment["labels"],
                           metadata_csv=experiment["csv"], progress=False, command="fringelive dataset ...")
    assert report.images_used == 2
    assert report.skipped["not_selected"] == ["Ag_c_03.tif"]
    ss = load_sampleset(tmp_path / "ds")
    assert ss.content == "preprocessed" and ss.preprocessing == PARAMS and ss.attrs["source"] == "dataset"
    # expected patches: 2×3 grid of 32 px per 80×96 image; keep those with > 20 particle px
    expected = []
    for name in ("Au_a_01.tif", "Au_b_02.tif"):
        counts, label = experiment["truth"][name]
        x = np.asarray(preprocess(counts, PARAMS))
        for y0 in patch_origins(80, 32, 32):
            for x0 in patch_origins(96, 32, 32):
                lab = label[y0:y0 + 32, x0:x0 + 32]
                if lab.sum() > 20:
                    expected.append((name, y0, x0, x[y0:y0 + 32, x0:x0 + 32], lab))
    assert len(ss) == report.patches == len(expected) >= 3
    assert report.patches_rejected == 12 - len(expected)
    for i, (name, y0, x0, xim, lab) in enumerate(expected):
        m = ss.metadata[i]
        assert (m["source_file"], m["patch_y"], m["patch_x"]) == (name, y0, x0)
        assert np.allclose(ss.images[i], xim, atol=1e-6)
        assert np.array_equal(ss.labels[i], lab.astype(np.uint8))
        assert m["particle_px"] == int(lab.sum())
        # CSV columns carried as they are, plus the standard keys
        assert m["Folder"] == "session1" and m["Instrument"] == "Team05"
        assert m["material"] == "Au" and m["particle_diameter_nm"] == 5.0 and m["dose_e_per_A2"] == 423.0
        assert m["support"] == "UT Carbon"
    env = envelope_from_metadata(ss.metadata)
    assert env.material == ("Au",) and env.pixel_size_nm.min == 0.02 and env.pixel_size_nm.max == 0.0205


def test_missing_label_and_no_csv(experiment: dict, tmp_path: Path) -> None:
    (experiment["labels"] / "Au_b_02_label.png").unlink()
    cfg = DatasetConfig(patch_px=32, min_particle_px=0, preprocessing=PARAMS, voltage_kv=300.0)
    report = build_dataset([experiment["images"]], tmp_path / "ds", cfg, labels_dir=experiment["labels"],
                           progress=False)
    assert report.skipped["no_label"] == ["Au_b_02.tif"] and report.images_used == 2
    ss = load_sampleset(tmp_path / "ds")
    expected = sum(int(lab[y:y + 32, x:x + 32].any()) for name in ("Au_a_01.tif", "Ag_c_03.tif")
                   for lab in [experiment["truth"][name][1]] for y in (0, 32) for x in (0, 32, 64))
    assert len(ss) == expected  # patches with more than 0 particle px
    assert all(m["voltage_kv"] == 300.0 for m in ss.metadata)
    with pytest.raises(DatasetError, match="no column 'Image'"):
        build_dataset([experiment["images"]], tmp_path / "x", DatasetConfig(patch_px=32, key_column="Image"),
                      labels_dir=experiment["labels"], metadata_csv=experiment["csv"], progress=False)


def test_selection_rules() -> None:
    row = {"Material": "Au", "Pixel Scale (nm)": "0.033", "Dosage (e/A2)": "420"}
    assert Selection("Material", " AU ").matches(row)
    assert not Selection("Material", "Ag").matches(row)
    assert Selection("Dosage (e/A2)", "423", 5).matches(row)
    assert not Selection("Dosage (e/A2)", "423", 2).matches(row)
    assert Selection("Pixel Scale (nm)", "0.033").matches(row)
    assert not Selection("Support", "SiN").matches(row)
    with pytest.raises(DatasetError, match="value 'Au' is not a number"):
        Selection("Material", "Au", 0.5)
    with pytest.raises(DatasetError, match="patch_px must be a positive multiple of 16, got 100"):
        DatasetConfig(patch_px=100)


def test_published_metadata_csv_and_label_work_as_is() -> None:
    csv_path = SEED_DIR / "Dataset_metadata.csv"
    label = SEED_DIR / "20221109_Au_UTC_330kx_2640e_0p1596s_03_label.png"
    if not csv_path.is_file() or not label.is_file():
        pytest.skip(f"published metadata not available: {SEED_DIR} is absent")
    rows = read_metadata_csv(csv_path)
    assert len(rows) > 100 and "File name" in rows[0]
    std = standard_fields(rows[0])
    assert set(std) == {"material", "particle_diameter_nm", "pixel_size_nm", "dose_e_per_A2", "support"}
    assert isinstance(std["pixel_size_nm"], float)
    lab = read_label(label)
    assert lab.shape == (4096, 4096) and set(np.unique(lab)) == {0, 1}


def test_cli_dataset(experiment: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fringelive.cli import main

    rc = main(["dataset", "--images", str(experiment["images"]), "--labels", str(experiment["labels"]),
               "--metadata", str(experiment["csv"]), "--select", "Material", "Au", "--select", "Pixel Scale (nm)",
               "0.02", "0.0001", "--patch", "32", "--min-particle-px", "20", "--flatfield-downsample", "2",
               "--out", str(tmp_path / "cli"), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "from 1 images" in out and "2 not selected" in out
    ss = load_sampleset(tmp_path / "cli")
    assert {m["source_file"] for m in ss.metadata} == {"Au_a_01.tif"}
    assert ss.preprocessing.flatfield_downsample == 2
    assert main(["dataset", "--images", str(experiment["images"]), "--select", "Material", "--patch", "32",
                 "--out", str(tmp_path / "bad")]) == 2
