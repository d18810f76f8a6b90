"""``fringelive send`` / ``fringelive watch`` against real ZeroMQ sockets on 127.0.0.1, plus the
file readers and the HDF5 recorder they use."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import tifffile
import zmq

from fringelive.cli import main
from fringelive.stream.send import parse_meta
from fringelive.stream.watch import format_error_line, format_result_line
from fringelive.daemon.protocol import (
    Frame,
    decode_frame,
    encode_error,
    encode_result,
    packb,
)
from fringelive.engine.readers import (
    ReaderError,
    frames_from_rsciio,
    length_to_nm,
    metadata_from_rsciio,
    read_frames,
    to_wire_dtype,
)
from fringelive.stream.recorder import ResultRecorder


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def pull(ctx):
    """A bound PULL socket standing in for the daemon's ingest; ``.endpoint`` is its address."""
    sock = ctx.socket(zmq.PULL)
    sock.bind("tcp://127.0.0.1:*")
    return SimpleNamespace(sock=sock, endpoint=sock.getsockopt_string(zmq.LAST_ENDPOINT))


def receive(sock, n: int) -> list[Frame]:
    """Decode ``n`` frames from a PULL socket (or the ``pull`` fixture), then check silence."""
    sock = getattr(sock, "sock", sock)
    frames = []
    for _ in range(n):
        assert sock.poll(5000), f"only {len(frames)} of {n} frames arrived"
        frames.append(decode_frame(sock.recv_multipart(copy=False)))
    assert not sock.poll(50), "more frames than expected"
    return frames


def free_tcp_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


# ---------------------------------------------------------------------------------------------
# send
# ---------------------------------------------------------------------------------------------

def test_send_npy_and_tiff(tmp_path, pull, capsys):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (16, 24)).astype(np.uint16)
    stack = rng.random((3, 8, 8))  # float64 → float32 on the wire
    np.save(tmp_path / "single.npy", image)
    np.save(tmp_path / "stack.npy", stack)
    pages = rng.integers(0, 255, (2, 10, 12)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "movie.tif", pages, photometric="minisblack",
                     metadata={"pixel_size_nm": 0.05, "voltage_kv": 200})
    rc = main(["send", str(tmp_path / "single.npy"), str(tmp_path / "stack.npy"),
               str(tmp_path / "movie.tif"), "--endpoint", pull.endpoint,
               "--meta", "dose_e_per_A2=423", "tags.grid=3", "tags.note=first", "camera=K3"])
    assert rc == 0
    frames = receive(pull, 6)
    assert [(f.header.series, f.header.frame) for f in frames] == [
        ("single", 0), ("stack", 0), ("stack", 1), ("stack", 2), ("movie", 0), ("movie", 1)]
    np.testing.assert_array_equal(frames[0].pixels, image)
    assert frames[1].header.dtype == "float32"
    np.testing.assert_allclose(frames[3].pixels, stack[2].astype(np.float32))
    np.testing.assert_array_equal(frames[5].pixels, pages[1])
    for f in frames:
        assert f.header.dose_e_per_A2 == 423 and f.header.camera == "K3"
        assert f.header.tags == {"grid": 3, "note": "first"}
    assert frames[0].header.pixel_size_nm is None
    assert (frames[4].header.pixel_size_nm, frames[4].header.voltage_kv) == (0.05, 200)
    out = capsys.readouterr().out
    assert "sent 6 frames" in out and "stack.npy: 3 frames as series 'stack' #0..2" in out


def test_send_series_start_frame_repeat_and_meta_override(tmp_path, pull):
    tifffile.imwrite(tmp_path / "a.tif", np.ones((4, 4), np.uint16),
                     metadata={"pixel_size_nm": 0.05})
    rc = main(["send", "--series", "run 7", "--start-frame", "10", "--repeat", "2",
               "--endpoint", pull.endpoint, "--meta", "pixel_size_nm=0.02", "flag=true",
               "note=null", str(tmp_path / "a.tif")])  # a FILE after --meta items is a file
    assert rc == 0
    frames = receive(pull, 2)
    assert [(f.header.series, f.header.frame) for f in frames] == [("run 7", 10), ("run 7", 11)]
    assert frames[0].header.pixel_size_nm == 0.02  # --meta wins over the file
    assert frames[0].header.extra == {"flag": True}  # null values are left out


def test_send_rate_paces_frames(tmp_path, pull):
    np.save(tmp_path / "s.npy", np.zeros((4, 4, 4), np.uint16))
    start = time.monotonic()
    assert main(["send", str(tmp_path / "s.npy"), "--endpoint", pull.endpoint,
                 "--rate", "20"]) == 0
    assert time.monotonic() - start >= 3 / 20 * 0.9  # 4 frames at 20 fps: 3 gaps
    assert len(receive(pull, 4)) == 4


def test_send_without_daemon_fails_after_timeout(tmp_path, capsys):
    np.save(tmp_path / "s.npy", np.zeros((4, 4), np.uint16))
    start = time.monotonic()
    rc = main(["send", str(tmp_path / "s.npy"), "--endpoint", free_tcp_endpoint(),
               "--timeout", "0.3"])
    assert rc == 1
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert "no daemon took frame 's' #0" in err and "0.3 s" in err


@pytest.mark.parametrize("args, needle", [
    (["missing.npy"], "no such file"),
    (["bad.txt"], "unsupported file type '.txt'"),
    (["ok.npy", "--meta", "pixel_size_nm=-1"], "pixel_size_nm must be > 0"),
    (["ok.npy", "--meta", "=3"], "KEY=VALUE"),
    (["ok.npy", "--meta", "frame=3"], "--meta cannot set 'frame'"),
    (["ok.npy", "--curve-server-key", "x.key"], "both --curve-server-key"),
    (["--meta", "a=1"], "at least one FILE"),
])
def test_send_usage_errors(tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "ok.npy", np.zeros((4, 4), np.uint16))
    (tmp_path / "bad.txt").write_text("x")
    assert main(["send", *args, "--endpoint", free_tcp_endpoint(), "--timeout", "0.2"]) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
def test_send_with_curve(tmp_path, ctx):
    import zmq.auth
    from zmq.auth.thread import ThreadAuthenticator

    server_pub, server_sec = zmq.auth.create_certificates(tmp_path, "server")
    client_pub, client_sec = zmq.auth.create_certificates(tmp_path, "client")
    _, stranger_sec = zmq.auth.create_certificates(tmp_path, "stranger")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    Path(client_pub).rename(allowed / "client.key")
    np.save(tmp_path / "s.npy", np.full((4, 4), 7, np.uint16))
    auth = ThreadAuthenticator(ctx)
    auth.start()
    try:
        auth.configure_curve(domain="*", location=str(allowed))
        sock = ctx.socket(zmq.PULL)
        sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(server_sec)
        sock.curve_server = True
        sock.bind("tcp://127.0.0.1:*")
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        assert main(["send", str(tmp_path / "s.npy"), "--endpoint", endpoint,
                     "--curve-server-key", server_pub, "--curve-client-key", client_sec]) == 0
        assert receive(sock, 1)[0].pixels[0, 0] == 7
        # an unauthorised key never gets a connection: the frame is not taken
        assert main(["send", str(tmp_path / "s.npy"), "--endpoint", endpoint, "--timeout", "0.5",
                     "--curve-server-key", server_pub, "--curve-client-key", stranger_sec]) == 1
        assert not sock.poll(100)
    finally:
        auth.stop()


# ---------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------

def test_tiff_imagej_resolution_and_bad_files(tmp_path):
    tifffile.imwrite(tmp_path / "ij.tif", np.zeros((3, 6, 5), np.uint16), imagej=True,
                     resolution=(50.0, 50.0), metadata={"unit": "nm"})
    frames = list(read_frames(tmp_path / "ij.tif"))
    assert len(frames) == 3 and frames[0].pixels.shape == (6, 5)
    assert frames[0].meta["pixel_size_nm"] == pytest.approx(0.02)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((6, 5, 3), np.uint8), photometric="rgb")
    with pytest.raises(ReaderError, match="single-channel"):
        list(read_frames(tmp_path / "rgb.tif"))
    np.save(tmp_path / "vec.npy", np.zeros(5))
    with pytest.raises(ReaderError, match=r"shape \(5,\)"):
        list(read_frames(tmp_path / "vec.npy"))
    (tmp_path / "junk.tif").write_bytes(b"not a tiff")
    with pytest.raises(ReaderError, match="junk.tif"):
        list(read_frames(tmp_path / "junk.tif"))


def test_to_wire_dtype():
    assert to_wire_dtype(np.array([[1, 2]], np.int32)).dtype == np.uint16
    assert to_wire_dtype(np.array([[1, 70000]], np.int64)).dtype == np.uint32
    assert to_wire_dtype(np.array([[-1, 2]], np.int32)).dtype == np.int16
    assert to_wire_dtype(np.array([[-1, 70000]], np.int32)).dtype == np.float32
    assert to_wire_dtype(np.array([[True]])).dtype == np.uint8
    assert to_wire_dtype(np.array([[-3]], np.int8)).dtype == np.int16
    assert to_wire_dtype(np.array([[1.5]], np.float64)).dtype == np.float32
    swapped = to_wire_dtype(np.array([[1, 2]], ">u2"))
    assert swapped.dtype.isnative and swapped.tolist() == [[1, 2]]
    with pytest.raises(ReaderError, match="non-finite|NaN"):
        to_wire_dtype(np.array([[1e300]]))
    with pytest.raises(ReaderError, match="complex"):
        to_wire_dtype(np.array([[1j]]))


def test_length_units():
    assert length_to_nm(2.0, "Å") == pytest.approx(0.2)
    assert length_to_nm(0.5, "µm") == length_to_nm(0.5, "μm") == length_to_nm(0.5, "um") == 500
    assert length_to_nm(2e-11, "m") == pytest.approx(0.02)
    assert length_to_nm(0.02, "nm") == 0.02
    assert length_to_nm(1.0, "1/nm") is None and length_to_nm(1.0, "<undefined>") is None
    assert length_to_nm(1.0, None) is None and length_to_nm(-1.0, "nm") is None


def rsciio_like_dm_signal(data: np.ndarray) -> dict:
    """A dict shaped like rosettasciio.digitalmicrograph.file_reader's output for an image."""
    return {
        "data": data,
        "axes": [
            {"name": "y", "size": data.shape[-2], "index_in_array": data.ndim - 2, "scale": 0.2,
             "offset": 0.0, "units": "Å", "navigate": False},
            {"name": "x", "size": data.shape[-1], "index_in_array": data.ndim - 1, "scale": 0.2,
             "offset": 0.0, "units": "Å", "navigate": False},
        ] + ([{"name": "t", "size": data.shape[0], "index_in_array": 0, "scale": 1.0,
               "offset": 0.0, "units": "s", "navigate": True}] if data.ndim == 3 else []),
        "metadata": {
            "General": {"title": "Au on carbon", "original_filename": "au.dm4",
                        "date": "2022-11-09", "time": "14:03:07", "time_zone": "UTC"},
            "Acquisition_instrument": {"TEM": {
                "beam_energy": 300.0, "magnification": 330000.0, "microscope": "Titan",
                "Camera": {"exposure": 0.1596}, "acquisition_mode": "TEM"}},
            "Signal": {"signal_type": "", "quantity": "Intensity"},
        },
        "original_metadata": {"ImageList": {"TagGroup0": {"ImageTags": {
            "Acquisition": {"Device": {"Name": "OneView"}}}}}},
    }


def test_metadata_from_rsciio_dm_shaped_dict():
    meta = metadata_from_rsciio(rsciio_like_dm_signal(np.zeros((8, 8), np.float32)))
    assert meta == {
        "pixel_size_nm": pytest.approx(0.02), "voltage_kv": 300.0, "magnification": 330000.0,
        "exposure_s": 0.1596, "camera": "OneView", "timestamp": 1668002587.0,
        "tags": {"title": "Au on carbon", "source": "au.dm4", "microscope": "Titan"},
    }
    assert metadata_from_rsciio({"data": np.zeros((2, 2)), "axes": [], "metadata": {}}) == {}


def test_frames_from_rsciio_stack_and_spectrum():
    stack = np.arange(3 * 4 * 5, dtype=np.int32).reshape(3, 4, 5)
    spectrum = {"data": np.zeros(100), "axes": [{"name": "E", "size": 100, "scale": 1.0,
                                                 "units": "eV", "navigate": False}]}
    frames = list(frames_from_rsciio([spectrum, rsciio_like_dm_signal(stack)], "/x/au.dm4"))
    assert [f.source for f in frames] == ["au.dm4[0]", "au.dm4[1]", "au.dm4[2]"]
    assert frames[2].pixels.dtype == np.uint16 and frames[2].pixels.tolist() == stack[2].tolist()
    assert frames[0].meta["exposure_s"] == 0.1596
    with pytest.raises(ReaderError, match="no 2-D image"):
        list(frames_from_rsciio([spectrum], "au.dm4"))


def test_send_emd_written_by_rosettasciio(tmp_path, pull):
    emd = pytest.importorskip("rsciio.emd", reason="rosettasciio (fringelive[io]) not installed")
    data = np.arange(2 * 6 * 8, dtype=np.uint16).reshape(2, 6, 8)
    emd.file_writer(str(tmp_path / "au.emd"), {
        "data": data,
        "axes": [{"name": "t", "size": 2, "scale": 1.0, "offset": 0.0, "units": "s",
                  "navigate": True},
                 {"name": "y", "size": 6, "scale": 0.25, "offset": 0.0, "units": "Å",
                  "navigate": False},
                 {"name": "x", "size": 8, "scale": 0.25, "offset": 0.0, "units": "Å",
                  "navigate": False}],
        "metadata": {"General": {"title": "au"}, "Signal": {}}, "original_metadata": {}})
    assert main(["send", str(tmp_path / "au.emd"), "--endpoint", pull.endpoint]) == 0
    frames = receive(pull, 2)
    assert frames[1].header.pixel_size_nm == pytest.approx(0.025)
    np.testing.assert_array_equal(frames[1].pixels, data[1])


def test_parse_meta():
    assert parse_meta(["a=1", "b=2.5", "c=TRUE", "d=none", "e=x y", "t.u.v=-3", "t.w=1e3"]) == {
        "a": 1, "b": 2.5, "c": True, "d": None, "e": "x y", "t": {"u": {"v": -3}, "w": 1000.0}}
    with pytest.raises(ValueError, match="already a value"):
        parse_meta(["a=1", "a.b=2"])


# ---------------------------------------------------------------------------------------------
# watch
# ---------------------------------------------------------------------------------------------

def result_header(series: str, frame: int, **extra) -> dict:
    head = {"series": series, "frame": frame, "model": "tiny", "particle_count": 2,
            "particles": [{"area_nm2": 3.0, "diameter_nm": 1.95, "centroid_px": [1.0, 2.0]}] * 2,
            "area_fraction": 0.125, "drift": {"status": "unknown", "reasons": [], "signals": {}},
            "timings_ms": {"queue": 0.5, "preprocess": 1.25, "infer": 10.0, "publish": 0.25},
            "queue_depth": 0, "meta": {"pixel_size_nm": 0.02}}
    head.update(extra)
    return head


class Publisher:
    """An XPUB standing in for the daemon's results socket; waits for watch's subscriptions so
    that no message is lost to the slow-joiner effect."""

    def __init__(self, ctx):
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def wait_for_subscriber(self) -> None:
        topics = set()
        while topics != {b"\x01result", b"\x01error"}:
            assert self.sock.poll(10000), "watch did not subscribe"
            topics.add(self.sock.recv())

    def send(self, parts) -> None:
        self.sock.send_multipart(parts)


def run_watch(args: list[str]) -> tuple[threading.Thread, list[int]]:
    rc: list[int] = []
    thread = threading.Thread(target=lambda: rc.append(main(["watch", *args])), daemon=True)
    thread.start()
    return thread, rc


def test_watch_prints_and_records(tmp_path, ctx, capsys):
    pub = Publisher(ctx)
    record = tmp_path / "run.h5"
    thread, rc = run_watch(["--endpoint", pub.endpoint, "--count", "5", "--timeout", "20",
                            "--record", str(record), "--probabilities"])
    pub.wait_for_subscriber()
    rng = np.random.default_rng(3)
    masks = [rng.random((6, 10)) > 0.7 for _ in range(3)]
    probs = [rng.random((6, 10)).astype(np.float32) for _ in range(3)]
    pub.send(encode_result(result_header("grid/1", 0), masks[0], probs[0]))
    pub.send(encode_result(result_header("grid/1", 1), masks[1]))  # no probabilities sent
    pub.send([b"result", b"\xc1", b""])  # malformed: warned about, not counted
    pub.send(encode_error("bad_dtype", "dtype 'float64' is not one of ...", series="grid/1",
                          frame=2))
    pub.send(encode_error("bad_msgpack", "header is not one valid msgpack object"))
    other = rng.random((4, 4)) > 0.5
    pub.send(encode_result(result_header("b", 9, timings_ms={"total": 42.0}), other))
    thread.join(20)
    assert rc == [0]
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "grid/1 #0 model=tiny particles=2 area=0.1250 drift=unknown total=12.0 ms",
        "grid/1 #1 model=tiny particles=2 area=0.1250 drift=unknown total=12.0 ms",
        "ERROR bad_dtype dtype 'float64' is not one of ... [grid/1 #2]",
        "ERROR bad_msgpack header is not one valid msgpack object",
        "b #9 model=tiny particles=2 area=0.1250 drift=unknown total=42.0 ms",
    ]
    assert "WARNING malformed b'result' message (bad_msgpack)" in captured.err
    assert "3 results, 2 errors (count)" in captured.err

    with h5py.File(record, "r") as f:
        assert f.attrs["format"] == "fringelive-results" and f.attrs["endpoint"] == pub.endpoint
        g = f["series"]["grid\u22151"]
        assert g.attrs["series"] == "grid/1" and list(g.attrs["shape"]) == [6, 10]
        assert g["frames"][:].tolist() == [0, 1]
        assert g["masks"].dtype == np.uint8 and g["masks"].compression == "gzip"
        np.testing.assert_array_equal(g["masks"][:].astype(bool), np.stack(masks[:2]))
        np.testing.assert_allclose(g["probabilities"][0], probs[0], atol=1e-3)
        assert np.isnan(g["probabilities"][1]).all()
        headers = [json.loads(h) for h in g["headers"].asstr()[:]]
        assert headers[1]["frame"] == 1 and headers[1]["meta"] == {"pixel_size_nm": 0.02}
        assert f["series"]["b"]["masks"][0].astype(bool).tolist() == other.tolist()
        assert "probabilities" not in f["series"]["b"]
        errors = [json.loads(e) for e in f["errors"].asstr()[:]]
        assert [e["reason"] for e in errors] == ["bad_dtype", "bad_msgpack"]
        assert errors[0]["series"] == "grid/1" and errors[0]["frame"] == 2


def test_watch_timeout_exit_codes(ctx, capsys):
    pub = Publisher(ctx)
    thread, rc = run_watch(["--endpoint", pub.endpoint, "--timeout", "0.3"])
    thread.join(10)
    assert rc == [1] and "no data for 0.3 s after 0 messages" in capsys.readouterr().err
    # data, then silence, without --count: a normal end
    pub = Publisher(ctx)
    thread, rc = run_watch(["--endpoint", pub.endpoint, "--timeout", "0.5"])
    pub.wait_for_subscriber()
    pub.send(encode_result(result_header("s", 0), np.zeros((2, 2), bool)))
    thread.join(10)
    assert rc == [0]
    # --count not reached
    pub = Publisher(ctx)
    thread, rc = run_watch(["--endpoint", pub.endpoint, "--timeout", "0.5", "--count", "3"])
    pub.wait_for_subscriber()
    pub.send(encode_result(result_header("s", 1), np.zeros((2, 2), bool)))
    thread.join(10)
    assert rc == [1] and "after 1 of 3 messages" in capsys.readouterr().err


def test_recorder_series_changing_shape_and_close(tmp_path):
    path = tmp_path / "r.h5"
    with ResultRecorder(path, compression=0) as rec:
        rec.add_result({"series": "s", "frame": 0}, np.ones((2, 3), bool))
        rec.add_result({"series": "s", "frame": 1}, np.zeros((4, 4), bool),
                       np.full((4, 4), 0.5))
        rec.add_result({"frame": True}, np.zeros((1, 1), bool))  # unknown series, bad frame
    rec.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        rec.add_error({"reason": "x"})
    with h5py.File(path, "r") as f:
        assert sorted(f["series"]) == ["s", "s@4x4", "unknown"]
        assert f["series"]["s@4x4"].attrs["series"] == "s"
        assert f["series"]["s@4x4"]["probabilities"][0, 0, 0] == 0.5
        assert f["series"]["unknown"]["frames"][0] == -1
    with pytest.raises(ValueError, match="gzip level"):
        ResultRecorder(tmp_path / "x.h5", compression=12)


def test_format_lines_tolerate_missing_keys():
    assert format_result_line({}) == "? #? model=? particles=0 area=? drift=? total=? ms"
    assert format_error_line({"reason": "bad_parts", "detail": "x"}) == "ERROR bad_parts x"
    assert packb({"a": np.float32(1)})  # numpy scalars in headers encode


def test_watch_line_prints_drift_reasons_with_values():
    """Issue #12: a flagged frame's line says why, with the numbers; an ok line stays short."""
    drift = {"status": "ood", "reasons": ["dose_metadata_mismatch", "dose_above_envelope"],
             "estimates": {"dose_e_per_A2": 1270.4, "pixel_size_nm": None},
             "conditions": {"dose_e_per_A2": 423.0, "pixel_size_nm": 0.02}}
    line = format_result_line(result_header("run1", 17, drift=drift, timings_ms={"total": 41.2}))
    assert line == ("run1 #17 model=tiny particles=2 area=0.1250 drift=ood(dose_metadata_mismatch: image 1270 vs "
                    "header 423 e/Å², dose_above_envelope) total=41.2 ms")
    px = {"status": "warn", "reasons": ["pixel_size_metadata_mismatch"],
          "estimates": {"pixel_size_nm": 0.0261}, "conditions": {"pixel_size_nm": 0.02}}
    assert "drift=warn(pixel_size_metadata_mismatch: image 0.026 vs header 0.020 nm/px)" in format_result_line(
        result_header("r", 1, drift=px))
    ok = {"status": "ok", "reasons": ["dose_unverified"]}
    assert " drift=ok " in format_result_line(result_header("r", 2, drift=ok))


def test_health_camera_text():
    from fringelive.stream.camera_text import camera_text

    assert camera_text({"config": {"gain_counts_per_e": 8.0, "offset_counts": 100.0}, "learning": False}) == \
        "camera: gain 8 counts/e, offset 100 counts (config)"
    fit = {"gain_counts_per_e": 7.98, "gain_se": 0.12, "offset_counts": 100.3, "offset_se": 0.6, "offset_method": "mtf",
           "confident": True, "levels": 2, "frames": 140, "reasons": []}
    assert camera_text({"config": {}, "learning": True, "fit": fit}) == \
        "camera: gain 7.98 ± 0.12 counts/e, offset 100.3 ± 0.6 counts (learned from 140 frames, confident, mtf)"
    assert camera_text({"config": {}, "learning": True, "fit": None, "frames_fed": 3}).endswith("dose unverified")
    # [camera] checked by the fit (issue #12): a wrong gain is named in health
    pairs = {**fit, "method": "temporal", "frames": 50}
    wrong = {"config": {"gain_counts_per_e": 2.0, "offset_counts": 100.0}, "mode": "check", "fit": pairs,
             "config_disagrees": {"gain_counts_per_e": True, "offset_counts": False}}
    assert camera_text(wrong) == (
        "camera: gain 2 counts/e, offset 100 counts (config); gain DISAGREE with the stream: gain 7.98 ± 0.12 counts/e, "
        "offset 100.3 ± 0.6 counts (learned from 50 frame pairs, confident, mtf); re-run `fringelive calibrate camera`")
    right = {**wrong, "config": {"gain_counts_per_e": 8.0, "offset_counts": 100.0},
             "config_disagrees": {"gain_counts_per_e": False, "offset_counts": False}}
    assert camera_text(right).startswith("camera: gain 8 counts/e, offset 100 counts (config); agrees with the stream")


def test_dm_brightness_calibration_gives_the_camera_constants():
    """Issue #12: DM's calibrated value is (raw − Origin)·Scale; in electrons that is gain 1/Scale."""
    from fringelive.engine.readers import metadata_from_rsciio

    def signal(units: str, scale: float = 0.125, origin: float = 100.0) -> dict:
        bright = {"Scale": scale, "Origin": origin, "Units": units}
        return {"axes": [], "metadata": {},
                "original_metadata": {"ImageList": {"TagGroup0": {"ImageData": {"Calibrations": {"Brightness": bright}}}}}}

    assert metadata_from_rsciio(signal("e-")) == {"camera_gain_counts_per_e": 8.0, "camera_offset_counts": 100.0}
    assert metadata_from_rsciio(signal("Electrons")) == {"camera_gain_counts_per_e": 8.0, "camera_offset_counts": 100.0}
    for units in ("", "Counts"):  # DM's default calibration: nothing is guessed
        assert metadata_from_rsciio(signal(units, 1.0, 0.0)) == {}
    assert metadata_from_rsciio(signal("e-", 0.0)) == {}
