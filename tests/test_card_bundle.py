"""Card round trip and strict parsing; bundle loading refuses broken bundles with clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fringelive.bundle.bundle_io import (
    Bundle,
    BundleError,
    load_bundle,
    read_card_dict,
    sha256_file,
    tile_constraints_for,
    write_bundle,
)
from fringelive.bundle.card import (
    SCHEMA_VERSION,
    Card,
    CardError,
    Engine,
    Envelope,
    Preprocessing,
    Range,
    TileConstraints,
)
from fringelive.engine.models import UNetSpec


@pytest.fixture()
def bundle_copy(tiny_bundle: Bundle, tmp_path: Path) -> Path:
    """A private copy of the session bundle that a test may break."""
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, dst)
    return dst


def _edit_card(path: Path, edit) -> None:  # noqa: ANN001
    d = read_card_dict(path)
    edit(d)
    (path / "card.json").write_text(json.dumps(d), encoding="utf-8")


# --- card ------------------------------------------------------------------------------------

def test_card_round_trip(tiny_bundle: Bundle) -> None:
    card = tiny_bundle.card
    assert Card.from_json(card.to_json()) == card
    assert Card.from_dict(json.loads(card.to_json())).to_dict() == card.to_dict()
    assert card.schema_version == SCHEMA_VERSION
    assert card.envelope.pixel_size_nm == Range(0.02, 0.02)
    assert card.preprocessing == Preprocessing()


def test_card_round_trip_with_every_field(tiny_bundle: Bundle) -> None:
    engine = Engine(file="engines/member0.fp16.gpu.plan", sha256="0" * 64, member="member0.onnx",
                    precision="fp16", tensorrt_version="10.3.0", gpu="NVIDIA H100", compute_capability="9.0",
                    profile={"min": [1, 1, 16, 16], "opt": [4, 1, 768, 768], "max": [4, 1, 768, 768]},
                    max_abs_diff_vs_onnxruntime=0.01, tolerance=0.05, argmax_agreement=0.9999,
                    min_argmax_agreement=0.999)
    card = tiny_bundle.card.replace(
        engines=(engine,),
        drift_reference={"mean": [0.0], "histogram": {"edges": [0, 1], "counts": [3]}},
        metrics={"dice": {"fold0": 0.91}},
        preprocessing=Preprocessing(rescale="histogram", histogram_percentiles=(2.0, 98.0), flatfield_degree=(3, 1),
                                    lowpass_sigma_px=1.25),
        envelope=Envelope(material=("Au", "Ag"), dose_e_per_A2=Range(80, 884), support=("SiN",)),
    )
    again = Card.from_json(card.to_json())
    assert again == card
    assert again.preprocessing.flatfield_degree == (3, 1)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["envelope"].update(colour="red"), r"envelope: unknown key\(s\) \['colour'\]"),
        (lambda d: d["envelope"]["pixel_size_nm"].update(min="small"), r"envelope\.pixel_size_nm\.min must be a number"),
        (lambda d: d["envelope"].update(pixel_size_nm={"min": 0.05, "max": 0.02}), r"envelope.*min 0\.05 is above max 0\.02"),
        (lambda d: d.pop("name"), r"^name is required but missing"),
        (lambda d: d["preprocessing"].update(rescale="zscore"), r"preprocessing\.rescale must be one of .*'zscore'"),
        (lambda d: d["preprocessing"].update(flatfield=1), r"preprocessing\.flatfield must be true or false, got 1"),
        (lambda d: d["preprocessing"].update(flatfield_degree=[2]), r"preprocessing\.flatfield_degree must have 2 items"),
        (lambda d: d["preprocessing"].update(lowpass_sigma_px=-0.5), r"preprocessing\.lowpass_sigma_px must be in \[0, 4\.0\] \(px\), got -0\.5"),
        (lambda d: d["preprocessing"].update(lowpass_sigma_px=9), r"preprocessing\.lowpass_sigma_px must be in \[0, 4\.0\] \(px\), got 9"),
        (lambda d: d["tile"].update(multiple_of=True), r"tile\.multiple_of must be an integer"),
        (lambda d: d["tile"].update(halo_px=100), r"tile\.halo_px must be a multiple of 16"),
        (lambda d: d["members"][0].update(sha256=5), r"members\[0\]\.sha256 must be a string"),
        (lambda d: d.update(members=[]), r"members must list at least one ONNX file"),
        (lambda d: d.update(classes=["only"]), r"classes must name at least two classes"),
        (lambda d: d["provenance"].pop("created"), r"provenance\.created is required but missing"),
        (lambda d: d.update(schema_version=2), r"schema_version 2 is not supported .*supported: \[1\]"),
        (lambda d: d.pop("schema_version"), r"schema_version None is not supported"),
    ],
)
def test_strict_parsing_names_the_path(tiny_bundle: Bundle, edit, message: str) -> None:  # noqa: ANN001
    d = json.loads(tiny_bundle.card.to_json())
    edit(d)
    with pytest.raises(CardError, match=message):
        Card.from_dict(d)


def test_card_rejects_bad_json() -> None:
    with pytest.raises(CardError, match="not valid JSON"):
        Card.from_json("{name: 1")
    with pytest.raises(CardError, match="must be a JSON object, got list"):
        Card.from_dict([1, 2])


def test_tile_constraints_of_the_seed_network() -> None:
    t = tile_constraints_for(UNetSpec())
    assert t == TileConstraints(multiple_of=16, receptive_field_radius_px=122, halo_px=128, min_size_px=16)
    t.check_input_shape(512, 48)
    with pytest.raises(CardError, match="input height 100 is impossible.*multiple of 16"):
        t.check_input_shape(100, 128)
    with pytest.raises(CardError, match="input width 0 is impossible"):
        t.check_input_shape(64, 0)


# --- bundle loading ---------------------------------------------------------------------------

def test_tiny_bundle_loads(tiny_bundle: Bundle) -> None:
    b = load_bundle(tiny_bundle.path)
    assert b.card == tiny_bundle.card
    assert [p.name for p in b.member_paths] == ["member0.onnx"]
    m = b.card.members[0]
    assert m.weights == "member0.pt" and m.weights_sha256 == sha256_file(b.path / "member0.pt")
    assert m.sha256 == sha256_file(b.path / "member0.onnx")


def test_missing_directory_and_card(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="missing card.json"):
        load_bundle(tmp_path)


def test_missing_member_file(bundle_copy: Path) -> None:
    (bundle_copy / "member0.onnx").unlink()
    with pytest.raises(BundleError, match=r"member file 'member0\.onnx' is missing"):
        load_bundle(bundle_copy)


def test_missing_weights_file(bundle_copy: Path) -> None:
    (bundle_copy / "member0.pt").unlink()
    with pytest.raises(BundleError, match=r"weights file 'member0\.pt' is missing"):
        load_bundle(bundle_copy)


def test_sha256_mismatch(bundle_copy: Path) -> None:
    f = bundle_copy / "member0.onnx"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"member file 'member0\.onnx' has sha256 [0-9a-f]{64}, card says"):
        load_bundle(bundle_copy)
    assert load_bundle(bundle_copy, verify_hashes=False).name == "tiny-resunet-seed"


def test_unknown_schema_version(bundle_copy: Path) -> None:
    _edit_card(bundle_copy, lambda d: d.update(schema_version=99))
    with pytest.raises(BundleError, match=r"card\.json: schema_version 99 is not supported"):
        load_bundle(bundle_copy)


def test_card_that_does_not_parse(bundle_copy: Path) -> None:
    _edit_card(bundle_copy, lambda d: d["tile"].update(multiple_of="16"))
    with pytest.raises(BundleError, match=r"card\.json: tile\.multiple_of must be an integer"):
        load_bundle(bundle_copy)
    (bundle_copy / "card.json").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(BundleError, match="card.json"):
        load_bundle(bundle_copy)


def test_file_outside_the_bundle(bundle_copy: Path) -> None:
    _edit_card(bundle_copy, lambda d: d["members"][0].update(file="../elsewhere.onnx"))
    with pytest.raises(BundleError, match="lies outside the bundle directory"):
        load_bundle(bundle_copy)


def test_missing_engine_file(bundle_copy: Path) -> None:
    engine = {"file": "engines/member0.fp16.x.plan", "sha256": "0" * 64, "member": "member0.onnx",
              "precision": "fp16", "tensorrt_version": "10.0", "gpu": "x", "compute_capability": "9.0",
              "profile": {"min": [1, 1, 16, 16], "opt": [1, 1, 64, 64], "max": [1, 1, 64, 64]}}
    _edit_card(bundle_copy, lambda d: d.update(engines=[engine]))
    with pytest.raises(BundleError, match=r"engine file 'engines/member0\.fp16\.x\.plan' is missing"):
        load_bundle(bundle_copy)


def test_impossible_input_shape(tiny_bundle: Bundle) -> None:
    tiny_bundle.check_input_shape(64, 128)
    with pytest.raises(BundleError, match=r"input height 100 is impossible for this model: it must be a multiple of 16"):
        tiny_bundle.check_input_shape(100, 128)
    with pytest.raises(BundleError, match=r"input width 8 is impossible.*>= 16 px"):
        tiny_bundle.check_input_shape(16, 8)


def test_write_bundle_refuses_a_non_empty_directory(tiny_bundle: Bundle, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(BundleError, match="directory exists and is not empty"):
        write_bundle(out, tiny_bundle.card, tiny_bundle.member_paths)
    b = write_bundle(out, tiny_bundle.card, tiny_bundle.member_paths, overwrite=True)
    assert b.card.members[0].weights is None and b.card.members[0].sha256 == tiny_bundle.card.members[0].sha256
    with pytest.raises(BundleError, match="2 member files for 1 card members"):
        write_bundle(tmp_path / "x", tiny_bundle.card, tiny_bundle.member_paths * 2)


def test_write_card_replaces_atomically(bundle_copy: Path) -> None:
    b = load_bundle(bundle_copy)
    b2 = b.write_card(b.card.replace(metrics={"dice": 0.9}))
    assert load_bundle(bundle_copy).card.metrics == {"dice": 0.9} == b2.card.metrics
    assert not list(bundle_copy.glob("*.tmp"))


def test_docs_example_card_parses() -> None:
    """docs/bundle.md's complete example card (and its engine snippet) are valid schema-1 JSON."""
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "bundle.md").read_text(encoding="utf-8")
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", doc, flags=re.S)]
    cards = [b for b in blocks if "schema_version" in b]
    engines = [b for b in blocks if "precision" in b]
    assert len(cards) == 1 and len(engines) == 1
    card = Card.from_dict(cards[0])
    assert card.name == "au-5nm-0.020nm-423e" and len(card.members) == 5
    assert Card.from_dict({**cards[0], "engines": engines}).engines[0].precision == "fp16"
    # every top-level field of the schema appears in the example
    assert set(cards[0]) == {f for f in Card.__dataclass_fields__}
