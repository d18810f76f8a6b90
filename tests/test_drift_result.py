"""The drift stage's typed result and its wire map (engine/drift_result.py, daemon/results.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fringelive.daemon.protocol import FrameHeader
from fringelive.daemon.results import drift_failed, result_header
from fringelive.engine.drift_result import DriftResult
from fringelive.engine.pipeline import PipelineResult
from fringelive.engine.routing import Route


def test_wire_map_keeps_the_keys_in_order() -> None:
    d = DriftResult(status="warn", reasons=["dose_below_envelope"], signals={"log_dose_estimate": 5.9},
                    camera={"gain_counts_per_e": 1.0}, extra={"route": {"fits": True}})
    wire = d.to_dict()
    assert list(wire) == ["status", "reasons", "signals", "p_values", "estimates", "conditions", "cusum", "alarm",
                          "calibrated", "camera", "route"]
    assert wire["reasons"] == ["dose_below_envelope"] and d.reasons == ("dose_below_envelope",)
    assert d["status"] == "warn" and d["reasons"] == ["dose_below_envelope"]  # read-only, as the wire spells it
    wire["reasons"].append("x")
    assert d.reasons == ("dose_below_envelope",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.status = "ok"  # type: ignore[misc]
    with pytest.raises(KeyError):
        d["no_such_key"]


def test_unknown_has_no_camera_block() -> None:
    assert drift_failed().to_dict() == {"status": "unknown", "reasons": ["drift_error"], "signals": {},
                                        "p_values": {}, "estimates": {}, "conditions": {}, "cusum": {},
                                        "alarm": False, "calibrated": False}
    assert DriftResult.unknown("drift_disabled").with_extra(route={"fits": False})["route"] == {"fits": False}


def test_result_header_converts_at_the_wire_edge() -> None:
    mask = np.zeros((16, 16), bool)
    result = PipelineResult(probabilities=np.zeros((16, 16), np.float32), mask=mask, member_masks=(mask,),
                            particles=[], area_fraction=0.0, timings_ms={})
    drift = DriftResult(status="ok", signals={"entropy_foreground": np.float32(0.25)})
    route = Route(index=0, fits=True, distance=0.123456, candidates=(0,))
    header = result_header(FrameHeader(series="s", frame=1, shape=(16, 16)), {}, worker="w", model="m",
                           result=result, drift=drift, route=route, timings={}, queue_depth=0)
    assert header["drift"]["status"] == "ok" and header["drift"]["route"]["distance"] == 0.1235
    assert type(header["drift"]["signals"]["entropy_foreground"]) is float
    assert "route" not in drift.to_dict()  # the engine's result is not changed by the wire edge
