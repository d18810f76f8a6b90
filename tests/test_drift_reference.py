"""The card's ``drift_reference`` schemas (issue #12): schema 2 keeps the camera of the
reference frames in ``calibration_camera``; schema 1 (camera constants at the top level: old
bundles, hand-written references) is still read; an unknown schema fails naming it."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from fringelive.bundle.card import Card
from fringelive.engine.dose_estimate import CameraCalibration
from fringelive.engine.drift import DriftMonitor
from fringelive.engine.drift_reference import (SCHEMA, SUPPORTED_SCHEMAS, DriftReferenceError,
                                               parse_drift_reference)

SIGNALS = {"entropy_foreground": {"centre": 0.1, "scale": 0.01, "direction": "up", "n": 3, "values": [0.09, 0.1, 0.11]}}
CUSUM = {"k": 0.5, "h": 6.0, "target_arl": 1000}
SCHEMA1 = {"schema": 1, "frames": 3, "camera_gain_counts_per_e": 8.0, "camera_offset_counts": 100.0,
           "read_noise_counts": 3.0, "dose_noise_factor": 0.3, "signals": SIGNALS, "cusum": CUSUM}
SCHEMA2 = {"schema": 2, "frames": 3, "signals": SIGNALS, "cusum": CUSUM,
           "calibration_camera": {"gain_counts_per_e": 8.0, "offset_counts": 100.0, "read_noise_counts": 3.0,
                                  "noise_factor": 0.3}}


def test_schema_2_is_written_and_both_schemas_read_the_same_camera() -> None:
    assert SCHEMA == 2 and SUPPORTED_SCHEMAS == (1, 2)
    one, two = parse_drift_reference(SCHEMA1), parse_drift_reference(SCHEMA2)
    assert (one.schema, two.schema) == (1, 2)
    expected = CameraCalibration(gain_counts_per_e=8.0, offset_counts=100.0, read_noise_counts=3.0, noise_factor=0.3)
    assert one.camera == two.camera == expected and one.has_camera and two.has_camera
    assert one.signals == two.signals and one.cusum == two.cusum and one.calibrated and two.calibrated
    assert two.camera.to_dict() == SCHEMA2["calibration_camera"]
    raw = two.with_noise_factor(1.0)  # calibration measures raw
    assert raw.camera.noise_factor == 1.0 and raw.camera.gain_counts_per_e == 8.0 and raw.signals == two.signals


@pytest.mark.parametrize("data, schema", [
    ({"camera_gain_counts_per_e": 2.3}, 1),                      # hand-written, no schema: 1
    ({"calibration_camera": {"gain_counts_per_e": 2.3}}, 2),     # no schema but the schema-2 map: 2
])
def test_schema_inferred_when_absent(data: dict, schema: int) -> None:
    ref = parse_drift_reference(data)
    assert ref.schema == schema and ref.camera == CameraCalibration(gain_counts_per_e=2.3)
    assert not ref.calibrated


def test_no_camera_stated() -> None:
    for data in (None, {"schema": 2, "signals": SIGNALS, "cusum": CUSUM}, {"schema": 1, "cusum": CUSUM},
                 {"schema": 2, "calibration_camera": None}):
        ref = parse_drift_reference(data)
        assert ref.camera is None and not ref.has_camera
        assert ref.measurement_camera == CameraCalibration()  # what calibration measures with


@pytest.mark.parametrize("data, needle", [
    ({"schema": 3}, r"drift_reference.schema 3 is not supported by this fringelive \(supported: 1, 2\); upgrade "
                    r"fringelive, or re-run fringelive calibrate"),
    ({"schema": "2"}, r"drift_reference.schema '2' is not supported"),
    ({"schema": True}, r"drift_reference.schema True is not supported"),
    ({"schema": 2, "camera_gain_counts_per_e": 8.0},
     r"unknown key\(s\) \['camera_gain_counts_per_e'\] in schema 2 \(schema 2 keeps them in calibration_camera: "
     r"camera_gain_counts_per_e -> calibration_camera.gain_counts_per_e\)"),
    ({"schema": 1, "calibration_camera": {}}, r"unknown key\(s\) \['calibration_camera'\] in schema 1"),
    ({"schema": 2, "calibration_camera": {"gain": 8.0}},
     r"drift_reference.calibration_camera: unknown key\(s\) \['gain'\]"),
    ({"schema": 2, "calibration_camera": {"gain_counts_per_e": 0}},
     r"drift_reference.calibration_camera.gain_counts_per_e must be > 0, got 0.0"),
    ({"schema": 2, "calibration_camera": {"noise_factor": None}},
     r"drift_reference.calibration_camera.noise_factor must be a number, got null"),
    ({"schema": 2, "calibration_camera": [8.0]}, r"drift_reference.calibration_camera must be an object or null"),
    ({"schema": 1, "camera_gain_counts_per_e": -1}, r"drift_reference.camera_gain_counts_per_e must be > 0, got -1.0"),
])
def test_bad_references_name_the_key(data: dict, needle: str) -> None:
    with pytest.raises(DriftReferenceError, match=needle):
        parse_drift_reference(data)


def test_monitor_uses_the_calibration_camera_as_the_card_fallback_in_both_schemas() -> None:
    card = Card.from_dict(json.loads(resources.files("fringelive.default_bundle").joinpath("card.json").read_text()))
    for data in (SCHEMA1, SCHEMA2):
        monitor = DriftMonitor(card.replace(drift_reference=data))
        cam = monitor.card_camera
        assert cam is not None and (cam.gain_counts_per_e, cam.offset_counts, cam.read_noise_counts,
                                    cam.noise_factor) == (8.0, 100.0, 3.0, 0.3)
        status = monitor.describe()  # control status → bundles[].drift
        assert status["card_camera"]["gain_counts_per_e"] == 8.0 and status["reference_schema"] == data["schema"]
        assert status["calibration_camera"] == SCHEMA2["calibration_camera"]
        assert (status["camera_gain_counts_per_e"], status["dose_noise_factor"]) == (8.0, 0.3)


def test_the_shipped_default_bundle_reference_parses() -> None:
    """Whatever schema the shipped card carries (1 until it is recalibrated), it loads."""
    card = json.loads(resources.files("fringelive.default_bundle").joinpath("card.json").read_text())
    ref = parse_drift_reference(card["drift_reference"])
    assert ref.schema in SUPPORTED_SCHEMAS and ref.calibrated
