"""Fuzzing the frame decoder: whatever arrives, ``decode_frame`` returns a Frame consistent with
its header or raises ProtocolError with a reason in REJECT_REASONS, never anything else.

Generated messages: random bytes, random msgpack maps, valid frames with mutated fields,
truncated or padded buffers, corrupted header bytes, NaN/Inf float frames, parts of any type.
About 2,400 per run (300 examples in each of 6 tests, some decode two); set
FRINGELIVE_FUZZ_EXAMPLES for a deeper run.
"""

from __future__ import annotations

import math
import os

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fringelive.daemon.protocol import (
    ALLOWED_DTYPES,
    METADATA_KEYS,
    REJECT_REASONS,
    Frame,
    FrameLimits,
    ProtocolError,
    decode_frame,
    parse_header,
)

LIMITS = FrameLimits(max_pixels=64 * 64, max_side=64, max_message_bytes=64 * 64 * 4 + 4096,
                     max_header_bytes=4096)
#: Examples per test; raise for a deeper run, e.g. FRINGELIVE_FUZZ_EXAMPLES=20000.
EXAMPLES = int(os.environ.get("FRINGELIVE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

KEYS = ("version", "series", "frame", "shape", "dtype", "byteorder") + METADATA_KEYS

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.binary(max_size=12),
    st.sampled_from(["uint16", "float32", "little", "big", "float64", "<u2", ""]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.one_of(st.text(max_size=6), st.integers(0, 9)),
                                               children, max_size=4)),
    max_leaves=8,
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=10))


def check(parts) -> None:
    """The fuzz invariant."""
    try:
        frame = decode_frame(parts, LIMITS)
    except ProtocolError as e:
        assert e.reason in REJECT_REASONS, e.reason
        assert isinstance(e.detail, str) and e.detail
        assert e.series is None or isinstance(e.series, str)
        assert e.frame is None or (isinstance(e.frame, int) and e.frame >= 0)
        return
    assert isinstance(frame, Frame)
    h = frame.header
    assert h.version == 1 and isinstance(h.series, str) and h.series
    assert isinstance(h.frame, int) and not isinstance(h.frame, bool) and h.frame >= 0
    assert h.dtype in ALLOWED_DTYPES and h.byteorder in ("little", "big")
    assert frame.pixels.shape == h.shape and frame.pixels.dtype == np.dtype(h.dtype)
    assert frame.pixels.dtype.isnative
    assert 0 < h.shape[0] <= LIMITS.max_side and 0 < h.shape[1] <= LIMITS.max_side
    assert h.shape[0] * h.shape[1] <= LIMITS.max_pixels
    if h.dtype == "float32":
        assert np.isfinite(frame.pixels).all()
    for key in ("pixel_size_nm", "dose_e_per_A2", "voltage_kv", "magnification", "timestamp"):
        value = getattr(h, key)
        assert value is None or (math.isfinite(value) and value >= 0)
    assert parse_header(h.to_dict(), LIMITS) == h


@st.composite
def valid_frames(draw):
    dtype = draw(st.sampled_from(ALLOWED_DTYPES))
    shape = [draw(st.integers(1, 16)), draw(st.integers(1, 16))]
    header = {"version": 1, "series": draw(st.text(min_size=1, max_size=20)),
              "frame": draw(st.integers(0, 2**63 - 1)), "shape": shape, "dtype": dtype,
              "byteorder": draw(st.sampled_from(["little", "big"]))}
    for key in draw(st.lists(st.sampled_from(METADATA_KEYS), max_size=4, unique=True)):
        header[key] = draw(st.floats(0.001, 1e6)) if key not in ("camera", "tags") else (
            draw(st.text(max_size=8)) if key == "camera" else {"k": draw(values)})
    n = shape[0] * shape[1] * np.dtype(dtype).itemsize
    pixels = draw(st.binary(min_size=n, max_size=n))
    if dtype == "float32":  # random bytes hold NaN/Inf patterns: make the valid frame valid
        wire = np.frombuffer(pixels, ">f4" if header["byteorder"] == "big" else "<f4").copy()
        wire[~np.isfinite(wire)] = 0.0
        pixels = wire.tobytes()
    return header, pixels


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_random_byte_parts(parts):
    check(parts)


@FUZZ
@given(st.dictionaries(keys, values, max_size=10), st.binary(max_size=600))
def test_random_msgpack_maps(header, pixels):
    check([msgpack.packb(header, use_bin_type=True), pixels])


@FUZZ
@given(valid_frames(), st.data())
def test_valid_frames_with_mutated_fields(frame, data):
    header, pixels = frame
    decoded = decode_frame([msgpack.packb(header, use_bin_type=True), pixels], LIMITS)
    assert decoded.header.series == header["series"] and decoded.header.frame == header["frame"]
    wire = np.dtype(header["dtype"]).newbyteorder("<" if header["byteorder"] == "little" else ">")
    assert decoded.pixels.tobytes() == np.frombuffer(pixels, wire).astype(
        wire.newbyteorder("=")).tobytes()
    mutated = dict(header)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        action = data.draw(st.sampled_from(["delete", "replace", "add"]), label="action")
        key = data.draw(st.sampled_from(sorted(mutated) or ["version"]), label="key")
        if action == "delete":
            mutated.pop(key, None)
        elif action == "replace":
            mutated[key] = data.draw(values, label="value")
        else:
            mutated[data.draw(keys, label="new key")] = data.draw(values, label="new value")
    check([msgpack.packb(mutated, use_bin_type=True), pixels])


@FUZZ
@given(valid_frames(), st.data())
def test_valid_frames_with_corrupted_bytes(frame, data):
    header, pixels = frame
    raw = bytearray(msgpack.packb(header, use_bin_type=True))
    what = data.draw(st.sampled_from(["truncate_pixels", "pad_pixels", "flip_header",
                                      "truncate_header", "extra_part", "views"]), label="what")
    if what == "truncate_pixels":
        pixels = pixels[: data.draw(st.integers(0, max(len(pixels) - 1, 0)), label="cut")]
    elif what == "pad_pixels":
        pixels = pixels + data.draw(st.binary(min_size=1, max_size=16), label="pad")
    elif what == "flip_header":
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            i = data.draw(st.integers(0, len(raw) - 1), label="at")
            raw[i] = data.draw(st.integers(0, 255), label="byte")
    elif what == "truncate_header":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")]
    if what == "extra_part":
        check([bytes(raw), pixels, b""])
    elif what == "views":
        check([memoryview(raw), bytearray(pixels)])
    else:
        check([bytes(raw), pixels])


@FUZZ
@given(valid_frames(), st.sampled_from([np.nan, np.inf, -np.inf]), st.data())
def test_float_frames_with_non_finite_pixels(frame, bad, data):
    header, _ = frame
    header = dict(header, dtype="float32")
    h, w = header["shape"]
    pixels = np.zeros((h, w), dtype=">f4" if header["byteorder"] == "big" else "<f4")
    pixels[data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))] = bad
    try:
        decode_frame([msgpack.packb(header, use_bin_type=True), pixels.tobytes()], LIMITS)
    except ProtocolError as e:
        assert e.reason == "non_finite", e
    else:
        raise AssertionError("a NaN/Inf float32 frame was accepted")


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=32), st.none(), st.integers(), st.text(max_size=4),
                          st.lists(st.integers(0, 255), max_size=4)), max_size=3))
def test_parts_of_any_type(parts):
    check(parts)
