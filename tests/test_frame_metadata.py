"""FrameMetadata: the typed frame metadata at the engine boundary (engine/frame.py)."""

from __future__ import annotations

import pickle

import msgpack
import pytest

from fringelive.daemon.protocol import encode_frame
from fringelive.daemon.protocol.header import parse_header
from fringelive.engine.envelope import conditions_from_meta
from fringelive.engine.frame import METADATA_KEYS, FrameMetadata


def test_wire_header_becomes_typed_metadata_and_back() -> None:
    import numpy as np

    parts = encode_frame(np.zeros((8, 8), np.uint16), series="s", frame=3, pixel_size_nm=0.02,
                         dose_rate_e_per_A2_s=200.0, exposure_s=2.0, tags={"material": "Pt"}, operator="ab",
                         temperature_C=450.0)
    h = parse_header(msgpack.unpackb(parts[0]))
    m = h.meta
    assert isinstance(m, FrameMetadata) and m.pixel_size_nm == 0.02 and m.dose_e_per_A2 == 400.0
    assert m.extra == {"operator": "ab", "temperature_C": 450.0} and m.material == "Pt"
    wire = h.to_dict()
    assert {k: wire[k] for k in ("operator", "temperature_C", "pixel_size_nm", "tags")} == {
        "operator": "ab", "temperature_C": 450.0, "pixel_size_nm": 0.02, "tags": {"material": "Pt"}}
    assert FrameMetadata.of(wire).to_dict() == wire  # the header's other keys ride along in extra
    assert FrameMetadata.of(h.metadata()).extra == {} and set(h.metadata()) <= set(METADATA_KEYS)
    assert pickle.loads(pickle.dumps(h)) == h  # journal/threads may copy headers


def test_of_maps_and_engine_stages_take_either() -> None:
    meta = {"pixel_size_nm": 0.025, "dose_rate_e_per_A2_s": 100, "exposure_s": 0.5, "material": " Au "}
    m = FrameMetadata.of(meta)
    assert FrameMetadata.of(m) is m and FrameMetadata.of(None) == FrameMetadata()
    assert (m.dose, m.material, m.extra) == (50.0, "Au", {"material": " Au "})
    assert conditions_from_meta(m) == conditions_from_meta(meta)
    meta["pixel_size_nm"] = 1.0  # a copy: the record does not change with the caller's map
    assert m.pixel_size_nm == 0.025
    with pytest.raises(TypeError, match="got list"):
        FrameMetadata.of([("pixel_size_nm", 0.02)])
    with pytest.raises(ValueError, match="tags must be a map, got 'x'"):
        FrameMetadata.of({"tags": "x"})
