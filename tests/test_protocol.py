"""Wire protocol v1: frames, results, errors (daemon/protocol/, docs/protocol.md)."""

from __future__ import annotations

import importlib.util
import sys
import threading
import tracemalloc
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from fringelive.daemon.protocol import (
    ALLOWED_DTYPES,
    ERROR_REASONS,
    REJECT_REASONS,
    Frame,
    FrameHeader,
    FrameLimits,
    ProtocolError,
    configure_curve_client,
    decode_error,
    decode_frame,
    decode_result,
    encode_error,
    encode_frame,
    encode_result,
    packb,
    parse_header,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def header(**overrides):
    base = {"version": 1, "series": "s1", "frame": 7, "shape": [4, 6], "dtype": "uint16"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def parts_for(h, pixels: bytes | None = None):
    if pixels is None:
        hh, ww = h["shape"]
        dtype = h.get("dtype", "uint16")
        itemsize = np.dtype(dtype).itemsize if dtype in ALLOWED_DTYPES else 2
        pixels = bytes(hh * ww * itemsize)
    return [packb(h), pixels]


def reject(parts, limits=None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_frame(parts, limits)
    assert info.value.reason in REJECT_REASONS
    return info.value


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def bound_pair(ctx, bind_type, connect_type):
    a = ctx.socket(bind_type)
    a.bind("tcp://127.0.0.1:*")
    b = ctx.socket(connect_type)
    b.connect(a.getsockopt_string(zmq.LAST_ENDPOINT))
    return a, b


# ---------------------------------------------------------------------------------------------
# frames: round trip
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ALLOWED_DTYPES)
def test_round_trip_every_dtype(dtype):
    rng = np.random.default_rng(1)
    pixels = (rng.random((5, 9)) * 100).astype(dtype)
    frame = decode_frame(encode_frame(pixels, series="run-1", frame=3))
    assert isinstance(frame, Frame)
    assert frame.header.dtype == dtype and frame.header.shape == (5, 9)
    assert frame.pixels.dtype == np.dtype(dtype) and frame.pixels.dtype.isnative
    np.testing.assert_array_equal(frame.pixels, pixels)


def test_metadata_dose_derivation_and_passthrough():
    parts = encode_frame(np.zeros((2, 3), np.uint16), series="a", frame=0, pixel_size_nm=0.02,
                         dose_rate_e_per_A2_s=800.0, exposure_s=0.5, magnification=330000,
                         voltage_kv=300, defocus_nm=-12.5, timestamp=1.7e9, camera="K3",
                         tags={"grid": 3, "note": "x"}, stage={"x_um": 1.5}, operator="ab")
    h = decode_frame(parts).header
    assert isinstance(h, FrameHeader) and h.nbytes == 2 * 3 * 2
    assert h.metadata()["exposure_s"] == 0.5 and "operator" not in h.metadata()
    assert h.dose_e_per_A2 == pytest.approx(400.0)
    assert (h.pixel_size_nm, h.magnification, h.voltage_kv, h.defocus_nm) == (0.02, 330000, 300, -12.5)
    assert h.camera == "K3" and h.tags == {"grid": 3, "note": "x"}
    assert h.extra == {"stage": {"x_um": 1.5}, "operator": "ab"}
    d = h.to_dict()
    assert d["dose_e_per_A2"] == pytest.approx(400.0) and d["operator"] == "ab"
    assert d["shape"] == [2, 3] and d["byteorder"] == "little"
    again = parse_header(d)  # to_dict is a valid wire header again
    assert again == h


def test_explicit_dose_wins_over_rate_times_exposure():
    h = parse_header(header(dose_e_per_A2=10.0, dose_rate_e_per_A2_s=100.0, exposure_s=1.0))
    assert h.dose_e_per_A2 == 10.0


def test_dtype_defaults_to_uint16_and_byteorder_to_little():
    h = header(dtype=...)
    frame = decode_frame([packb(h), np.arange(24, dtype="<u2").tobytes()])
    assert frame.header.dtype == "uint16" and frame.header.byteorder == "little"
    assert frame.pixels[3, 5] == 23


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int16", "float32"])
def test_big_endian_pixels_are_swapped_to_native(dtype):
    values = np.arange(24).reshape(4, 6).astype(dtype)
    wire = values.astype(np.dtype(dtype).newbyteorder(">"))
    frame = decode_frame([packb(header(dtype=dtype, byteorder="big")), wire.tobytes()])
    assert frame.pixels.dtype.isnative
    np.testing.assert_array_equal(frame.pixels, values)
    # encode_frame of a big-endian array declares it
    h = msgpack.unpackb(encode_frame(wire, series="b", frame=0)[0])
    assert h["byteorder"] == "big"


def test_zero_copy_from_zmq_frames(ctx):
    pull, push = bound_pair(ctx, zmq.PULL, zmq.PUSH)
    pixels = np.arange(256 * 256, dtype=np.uint16).reshape(256, 256)
    push.send_multipart(encode_frame(pixels, series="z", frame=1))
    parts = pull.recv_multipart(copy=False)
    assert isinstance(parts[1], zmq.Frame)
    frame = decode_frame(parts)
    wire = np.frombuffer(parts[1].buffer, np.uint8)
    assert np.shares_memory(frame.pixels, wire)
    np.testing.assert_array_equal(frame.pixels, pixels)
    # non-native order has to copy
    push.send_multipart([packb(header(shape=[256, 256], byteorder="big")),
                         pixels.astype(">u2").tobytes()])
    parts = pull.recv_multipart(copy=False)
    swapped = decode_frame(parts)
    assert not np.shares_memory(swapped.pixels, np.frombuffer(parts[1].buffer, np.uint8))
    np.testing.assert_array_equal(swapped.pixels, pixels)


def test_accepts_bytearray_and_memoryview_parts():
    h, px = parts_for(header())
    frame = decode_frame([bytearray(h), memoryview(px)])
    assert frame.pixels.shape == (4, 6)


# ---------------------------------------------------------------------------------------------
# frames: every reject reason, with series/frame and a detail naming the value
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("parts, reason, needle", [
    ([b"only one"], "bad_parts", "got 1"),
    ([b"a", b"b", b"c"], "bad_parts", "got 3"),
    ([], "bad_parts", "got 0"),
    ([12, b""], "bad_parts", "int"),
    (["text", b""], "bad_parts", "str"),
    ([b"\xc1", b""], "bad_msgpack", "msgpack"),
    ([packb(header()) + b"\x00", bytes(48)], "bad_msgpack", "ExtraData"),
    ([b"\x92\x01", b""], "bad_msgpack", "msgpack"),  # truncated array
    ([packb([1, 2, 3]), b""], "bad_header", "array"),
    ([packb("hello"), b""], "bad_header", "string"),
    ([packb({1: 2}), b""], "bad_header", "1"),
])
def test_rejects_structure(parts, reason, needle):
    err = reject(parts)
    assert err.reason == reason
    assert needle in err.detail


@pytest.mark.parametrize("h, reason, needle", [
    (header(version=...), "missing_key", "version"),
    (header(version=2), "bad_version", "2"),
    (header(version="1"), "bad_type", "'1'"),
    (header(version=True), "bad_type", "bool"),
    (header(series=...), "missing_key", "series"),
    (header(frame=...), "missing_key", "frame"),
    (header(shape=...), "missing_key", "shape"),
    (header(series=5), "bad_type", "series"),
    (header(series=""), "bad_value", "series"),
    (header(series="x" * 300), "bad_value", "300"),
    (header(frame=-1), "bad_value", "-1"),
    (header(frame=1.5), "bad_type", "1.5"),
    (header(frame="3"), "bad_type", "'3'"),
    (header(frame=True), "bad_type", "bool"),
    (header(shape=[4]), "bad_shape", "[4]"),
    (header(shape=[4, 6, 1]), "bad_shape", "[4, 6, 1]"),
    (header(shape=[0, 6]), "bad_shape", "[0, 6]"),
    (header(shape=[-4, 6]), "bad_shape", "-4"),
    (header(shape=[4.0, 6]), "bad_shape", "4.0"),
    (header(shape="4x6"), "bad_shape", "4x6"),
    (header(shape={"h": 4}), "bad_shape", "h"),
    (header(dtype="float64"), "bad_dtype", "float64"),
    (header(dtype="<u2"), "bad_dtype", "<u2"),
    (header(dtype=2), "bad_type", "dtype"),
    (header(byteorder="middle"), "bad_value", "middle"),
    (header(byteorder=1), "bad_type", "byteorder"),
    (header(pixel_size_nm="0.02"), "bad_type", "pixel_size_nm"),
    (header(pixel_size_nm=0.0), "bad_value", "pixel_size_nm"),
    (header(pixel_size_nm=float("nan")), "bad_value", "nan"),
    (header(dose_e_per_A2=-1.0), "bad_value", "dose_e_per_A2"),
    (header(voltage_kv=float("inf")), "bad_value", "voltage_kv"),
    (header(timestamp="now"), "bad_type", "timestamp"),
    (header(camera=3), "bad_type", "camera"),
    (header(tags=[1]), "bad_type", "tags"),
    (header(tags={1: 2}), "bad_type", "tags"),
])
def test_rejects_header(h, reason, needle):
    err = reject(parts_for(h) if isinstance(h.get("shape"), list) and len(h["shape"]) == 2
                 and all(isinstance(s, int) and s > 0 for s in h["shape"])
                 else [packb(h), b""])
    assert err.reason == reason, err
    assert needle in err.detail, err.detail


def test_error_names_series_and_frame_when_known():
    err = reject(parts_for(header(dtype="float64")))
    assert (err.series, err.frame) == ("s1", 7)
    err = reject([packb(header(frame="x")), b""])
    assert (err.series, err.frame) == ("s1", None)
    err = reject([b"\xc1", b""])
    assert (err.series, err.frame) == (None, None)


def test_size_mismatch_and_non_finite():
    err = reject([packb(header()), bytes(47)])
    assert err.reason == "size_mismatch" and "47" in err.detail and "48" in err.detail
    bad = np.zeros((4, 6), np.float32)
    bad[1, 2] = np.nan
    bad[3, 3] = -np.inf
    err = reject([packb(header(dtype="float32")), bad.tobytes()])
    assert err.reason == "non_finite" and "2 of 24" in err.detail
    big = np.full((4, 6), np.finfo(np.float32).max, np.float32)  # finite, sum overflows float32
    assert decode_frame([packb(header(dtype="float32")), big.tobytes()]).pixels.max() > 0


def test_limits():
    limits = FrameLimits(max_pixels=100, max_side=20, max_message_bytes=1000, max_header_bytes=200)
    assert reject(parts_for(header(shape=[21, 2])), limits).reason == "shape_limit"
    assert reject(parts_for(header(shape=[11, 10])), limits).reason == "shape_limit"
    decode_frame(parts_for(header(shape=[10, 10])), limits)
    err = reject([packb(header(shape=[10, 10])), bytes(2000)], limits)
    assert err.reason == "too_large" and "above max_message_bytes 1000" in err.detail
    err = reject([packb(header(tags={"pad": "x" * 300})), bytes(48)], limits)
    assert err.reason == "too_large" and "header" in err.detail
    with pytest.raises(ValueError, match="max_side"):
        FrameLimits(max_side=0)


def test_absurd_shape_is_refused_without_allocating():
    limits = FrameLimits(max_pixels=2**62, max_side=2**31, max_message_bytes=2**40)
    tracemalloc.start()
    try:
        err = reject([packb(header(shape=[2**31, 2**31])), bytes(16)], limits)
        err2 = reject([packb(header(shape=[2**40, 2**40])), bytes(16)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.reason == "size_mismatch" and err2.reason == "shape_limit"
    assert peak < 1_000_000


def test_encode_frame_validates():
    with pytest.raises(ValueError, match="2-D"):
        encode_frame(np.zeros((2, 2, 2), np.uint16), series="a", frame=0)
    with pytest.raises(ValueError, match="float64"):
        encode_frame(np.zeros((2, 2)), series="a", frame=0)
    with pytest.raises(ValueError, match="frame must be"):
        encode_frame(np.zeros((2, 2), np.uint16), series="a", frame=-3)
    with pytest.raises(ValueError, match="pixel_size_nm"):
        encode_frame(np.zeros((2, 2), np.uint16), series="a", frame=0, pixel_size_nm=-1)
    with pytest.raises(ValueError, match="'shape' is set"):
        encode_frame(np.zeros((2, 2), np.uint16), series="a", frame=0, shape=[2, 2])
    # numpy scalars are fine in metadata
    h = decode_frame(encode_frame(np.zeros((2, 2), np.uint8), series="a", frame=np.int64(4),
                                  pixel_size_nm=np.float32(0.5))).header
    assert h.frame == 4 and h.pixel_size_nm == 0.5


def test_fortran_ordered_input_is_sent_in_c_order():
    pixels = np.asfortranarray(np.arange(12, dtype=np.uint16).reshape(3, 4))
    np.testing.assert_array_equal(decode_frame(encode_frame(pixels, series="f", frame=0)).pixels,
                                  pixels)


# ---------------------------------------------------------------------------------------------
# results and errors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (8, 8), (17, 31)])
def test_result_round_trip(shape):
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) > 0.5
    probs = rng.random(shape).astype(np.float32)
    head = {"series": "s", "frame": np.int64(2), "model": "m", "particle_count": 1,
            "particles": [{"area_nm2": np.float32(3.5), "diameter_nm": 2.1,
                           "centroid_px": (1.0, 2.0)}],
            "area_fraction": float(mask.mean()), "drift": {"status": "unknown", "reasons": [],
                                                           "signals": {}},
            "timings_ms": {"preprocess": 1.0}, "queue_depth": 0}
    parts = encode_result(head, mask, probs)
    assert parts[0] == b"result" and len(parts) == 4
    assert len(parts[2]) == (mask.size + 7) // 8
    assert parts[2] == np.packbits(mask.ravel()).tobytes()  # documented: C order, big bit order
    h, m, p = decode_result(parts)
    np.testing.assert_array_equal(m, mask)
    assert p.dtype == np.float16 and np.abs(p - probs).max() < 1e-3
    assert h["mask"] == {"shape": list(shape), "encoding": "packbits", "bitorder": "big"}
    assert h["probabilities"] == {"shape": list(shape), "dtype": "float16", "byteorder": "little"}
    assert h["particles"][0]["centroid_px"] == [1.0, 2.0] and h["frame"] == 2
    h, m, p = decode_result(encode_result(head, mask))
    assert p is None and "probabilities" not in h


def test_result_errors():
    with pytest.raises(ValueError, match="2-D"):
        encode_result({}, np.zeros(4, bool))
    with pytest.raises(ValueError, match="differs"):
        encode_result({}, np.zeros((2, 2), bool), np.zeros((3, 2)))
    parts = encode_result({"series": "s", "frame": 1}, np.ones((4, 4), bool))
    with pytest.raises(ProtocolError) as info:
        decode_result(parts[:2] + [parts[2][:1]])
    assert info.value.reason == "size_mismatch" and info.value.series == "s"
    with pytest.raises(ProtocolError) as info:
        decode_result([b"result", packb({"frame": 1}), b""])
    assert info.value.reason == "missing_key"
    with pytest.raises(ProtocolError):
        decode_result([b"error"] + parts[1:])


def test_error_round_trip():
    for reason in ERROR_REASONS:
        h = decode_error(encode_error(reason, "why", series="s", frame=3))
        assert h == {"version": 1, "reason": reason, "detail": "why", "series": "s", "frame": 3}
    assert decode_error(encode_error("bad_msgpack", "x")) == {"version": 1, "reason": "bad_msgpack",
                                                              "detail": "x"}
    err = ProtocolError("bad_dtype", "dtype 'f8'", "s", 1)
    assert decode_error(err.to_parts())["detail"] == "dtype 'f8'"
    with pytest.raises(ValueError, match="snake_case"):
        encode_error("Bad Reason", "x")
    with pytest.raises(ProtocolError):
        decode_error([b"error", packb({"reason": "x"})])


# ---------------------------------------------------------------------------------------------
# CURVE client helper
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
def test_curve_client_round_trip(tmp_path, ctx):
    import zmq.auth
    from zmq.auth.thread import ThreadAuthenticator

    server_pub, server_sec = zmq.auth.create_certificates(tmp_path, "server")
    client_pub, client_sec = zmq.auth.create_certificates(tmp_path, "client")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    Path(client_pub).rename(allowed / "client.key")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    try:
        auth.configure_curve(domain="*", location=str(allowed))
        pull = ctx.socket(zmq.PULL)
        pull.curve_publickey, pull.curve_secretkey = zmq.auth.load_certificate(server_sec)
        pull.curve_server = True
        pull.bind("tcp://127.0.0.1:*")
        push = ctx.socket(zmq.PUSH)
        configure_curve_client(push, server_pub, client_sec)
        push.connect(pull.getsockopt_string(zmq.LAST_ENDPOINT))
        push.send_multipart(encode_frame(np.ones((2, 2), np.uint8), series="c", frame=0))
        assert pull.poll(5000)
        assert decode_frame(pull.recv_multipart(copy=False)).header.series == "c"
    finally:
        auth.stop()
    with pytest.raises(ValueError, match="no secret key"):
        configure_curve_client(push, server_pub, server_pub)
    with pytest.raises(ValueError, match="not found"):
        configure_curve_client(push, tmp_path / "nope.key", client_sec)


# ---------------------------------------------------------------------------------------------
# docs/examples run against real sockets
# ---------------------------------------------------------------------------------------------

def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_sender_speaks_the_protocol(ctx):
    sender = load_example("send_frames")
    pull = ctx.socket(zmq.PULL)
    pull.bind("tcp://127.0.0.1:*")
    endpoint = pull.getsockopt_string(zmq.LAST_ENDPOINT)
    assert sender.main(["--endpoint", endpoint, "--count", "3", "--size", "32"]) == 0
    frames = [decode_frame(pull.recv_multipart(copy=False)) for _ in range(3)]
    assert [f.header.frame for f in frames] == [0, 1, 2]
    assert frames[0].header.pixel_size_nm == 0.02 and frames[0].pixels.shape == (32, 32)


def test_example_subscriber_reads_results(ctx, capsys):
    subscriber = load_example("subscribe")
    pub = ctx.socket(zmq.XPUB)
    pub.bind("tcp://127.0.0.1:*")
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    rc: list[int] = []
    thread = threading.Thread(target=lambda: rc.append(subscriber.main(
        ["--endpoint", endpoint, "--count", "2", "--timeout", "10"])))
    thread.start()
    subscriptions = set()
    while len(subscriptions) < 2:  # XPUB sees both subscriptions: nothing is lost to slow join
        assert pub.poll(10000)
        subscriptions.add(pub.recv())
    mask = np.eye(4, dtype=bool)
    pub.send_multipart(encode_result({"series": "s", "frame": 0, "particle_count": 1,
                                      "drift": {"status": "ok"}}, mask, mask * 0.5))
    pub.send_multipart(encode_error("bad_dtype", "dtype 'float64' ...", series="s", frame=1))
    thread.join(10)
    assert rc == [0]
    out = capsys.readouterr().out.splitlines()
    assert out == ["s #0: 1 particles, 0.250 of the frame, drift ok",
                   "ERROR bad_dtype dtype 'float64' ..."]


def test_examples_compile_and_need_only_numpy_pyzmq_msgpack():
    import ast

    paths = sorted(EXAMPLES.glob("*.py"))
    assert [p.name for p in paths] == ["send_frames.py", "subscribe.py"]
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        compile(tree, str(path), "exec")
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert imported - set(sys.stdlib_module_names) <= {"numpy", "zmq", "msgpack"}, path
