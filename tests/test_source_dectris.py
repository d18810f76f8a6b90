"""The ``dectris`` source: Stream V1/V2 decoding (daemon/sources/dectris_decode.py) checked
against hdf5plugin's bitshuffle/LZ4 HDF5 filters (third-party encoders and decoders), against the
Stream V2 messages DECTRIS publishes (github.com/dectris/documentation, branch
``stream2-test_data``, ``stream_v2/test_data``: one image and the end message are committed under
``tests/data/dectris_stream_v2``; ``FRINGELIVE_DECTRIS_STREAM_V2_DATA`` may point at the full set,
a folder of ``<series>/<n>.cbor``), and on messages built with cbor2 to the specification; then end to end in a daemon fed by
a PUSH socket on loopback that plays a detector (two series, V2 and V1, and a broken message)."""

from __future__ import annotations

import json
import os
import struct
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from fringelive.daemon.config import ConfigError, DaemonConfig
from fringelive.daemon.protocol import decode_result
from fringelive.daemon.server import Daemon
from fringelive.daemon.sources.dectris_decode import (StreamDecodeError, bslz4_compress, bslz4_decompress, decode_message,
                                                      frame_meta, lz4_hdf5_compress, lz4_hdf5_decompress)

from polling import wait_until  # tests/polling.py

cbor2 = pytest.importorskip("cbor2")
pytest.importorskip("lz4")

RECORDED = os.environ.get("FRINGELIVE_DECTRIS_STREAM_V2_DATA") or str(Path(__file__).parent / "data" / "dectris_stream_v2")


# --- compression against hdf5plugin (the HDF5 filters DECTRIS's framing comes from) -----------

@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
@pytest.mark.parametrize("shape", [(64, 64), (37, 53)])  # 53 × 37: blocks + a partial block + raw tail
def test_hdf5plugin_filter_chunks_decode(tmp_path: Path, dtype: str, shape: tuple[int, int]) -> None:
    hdf5plugin = pytest.importorskip("hdf5plugin")
    import h5py

    x = np.random.default_rng(1).poisson(30, shape).astype(dtype)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("bs", data=x, chunks=shape, **hdf5plugin.Bitshuffle(cname="lz4"))
        f.create_dataset("lz", data=x, chunks=shape, **hdf5plugin.LZ4(nbytes=256))
    with h5py.File(tmp_path / "c.h5", "r") as f:
        bs = f["bs"].id.read_direct_chunk((0, 0))[1]
        lz = f["lz"].id.read_direct_chunk((0, 0))[1]
    size = np.dtype(dtype).itemsize
    for fast in (True, False):   # dectris-compression (when installed) and the numpy path
        assert np.array_equal(np.frombuffer(bslz4_decompress(bs, size, use_fast=fast), dtype).reshape(shape), x)
        assert np.array_equal(np.frombuffer(lz4_hdf5_decompress(lz, use_fast=fast), dtype).reshape(shape), x)
    # and ours → hdf5plugin's decoder
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("bs", shape=shape, dtype=dtype, chunks=shape, **hdf5plugin.Bitshuffle(cname="lz4"))
        f["bs"].id.write_direct_chunk((0, 0), bslz4_compress(x.tobytes(), size))
        f.create_dataset("lz", shape=shape, dtype=dtype, chunks=shape, **hdf5plugin.LZ4())
        f["lz"].id.write_direct_chunk((0, 0), lz4_hdf5_compress(x.tobytes()))
    with h5py.File(tmp_path / "d.h5", "r") as f:
        assert np.array_equal(f["bs"][()], x) and np.array_equal(f["lz"][()], x)


# --- the recorded DECTRIS Stream V2 messages -----------------------------------------------------

def test_recorded_stream_v2_messages(tmp_path: Path) -> None:
    hdf5plugin = pytest.importorskip("hdf5plugin")
    import h5py

    folders = sorted(p for p in Path(RECORDED).iterdir() if p.is_dir())  # type: ignore[arg-type]
    assert folders
    for folder in folders:
        files = sorted(folder.glob("*.cbor"))
        messages = [decode_message([f.read_bytes()]) for f in files]
        images = [m for m in messages if m.kind == "image"]
        assert images and messages[-1].kind == "end" and messages[-1].series == images[0].series
        img = images[0]
        assert list(img.channels) == ["threshold_1", "threshold_2", "difference"] and img.image_id == 0
        name, pixels = img.pixels("threshold_1")
        assert pixels.shape == (514, 1030) and pixels.dtype.kind == "u"
        # the same compressed bytes through hdf5plugin's own filter
        raw = cbor2.loads(files[0].read_bytes(), tag_hook=lambda *a: [x for x in a if hasattr(x, "tag")][0])
        raw = getattr(raw, "value", raw)  # the self-describe tag 55799, when cbor2 keeps it
        tag56500 = raw["data"]["threshold_1"].value[1].value
        algorithm, modifier, data = tag56500.value
        flt = hdf5plugin.Bitshuffle(cname="lz4") if algorithm == "bslz4" else hdf5plugin.LZ4()
        with h5py.File(tmp_path / f"{folder.name}.h5", "w") as f:
            f.create_dataset("x", shape=pixels.shape, dtype=pixels.dtype, chunks=pixels.shape, **flt)
            f["x"].id.write_direct_chunk((0, 0), data)
            assert np.array_equal(f["x"][()], pixels), folder.name
        # the numpy path and DECTRIS's own decompressor (when installed) agree byte for byte
        numpy_path = (bslz4_decompress(data, modifier, use_fast=False) if algorithm == "bslz4"
                      else lz4_hdf5_decompress(data, use_fast=False))
        assert numpy_path == pixels.tobytes()
        try:
            from dectris.compression import decompress
        except ImportError:
            pass
        else:
            assert bytes(decompress(data, algorithm, elem_size=modifier)) == numpy_path
        meta = frame_meta(None, img, name)
        assert meta["exposure_s"] == pytest.approx(img.fields["real_time"][0] / img.fields["real_time"][1])
        assert meta["timestamp"] == pytest.approx(img.fields["series_date"].timestamp())
        assert meta["tags"]["series_unique_id"] == img.series


# --- Stream V2 and V1 built to the specification -------------------------------------------------

SERIES_DATE = datetime(2026, 12, 6, 12, 0, 0, tzinfo=timezone.utc)


def v2_start(series: int, uid: str, shape: tuple[int, int], dtype: str = "uint16") -> bytes:
    return cbor2.dumps(cbor2.CBORTag(55799, {
        "type": "start", "series_id": series, "series_unique_id": uid, "arm_date": SERIES_DATE,
        "channels": ["threshold_1"], "count_time": 0.05, "frame_time": 0.1, "detector_description": "EIGER2 X 500K",
        "detector_serial_number": "E-01-0000", "image_size_x": shape[1], "image_size_y": shape[0],
        "image_dtype": dtype, "pixel_size_x": 75e-6, "pixel_size_y": 75e-6, "number_of_images": 3,
        "incident_energy": 300e3}))


def v2_image(series: int, uid: str, image_id: int, pixels: np.ndarray, compression: str = "bslz4",
             extra_channel: bool = False) -> bytes:
    tag = {"uint8": 64, "uint16": 69, "uint32": 70}[pixels.dtype.name]
    raw = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    if compression == "bslz4":
        payload: Any = cbor2.CBORTag(56500, ["bslz4", pixels.dtype.itemsize, bslz4_compress(raw, pixels.dtype.itemsize)])
    elif compression == "lz4":
        payload = cbor2.CBORTag(56500, ["lz4", 0, lz4_hdf5_compress(raw)])
    else:
        payload = raw
    array = cbor2.CBORTag(40, [list(pixels.shape), cbor2.CBORTag(tag, payload)])
    data = {"threshold_1": array}
    if extra_channel:
        data["threshold_2"] = cbor2.CBORTag(40, [list(pixels.shape), cbor2.CBORTag(tag, b"\0" * pixels.nbytes)])
    return cbor2.dumps(cbor2.CBORTag(55799, {
        "type": "image", "series_id": series, "series_unique_id": uid, "image_id": image_id,
        "real_time": [5_000_000, 100_000_000], "series_date": SERIES_DATE,
        "start_time": [image_id * 10_000_000, 100_000_000], "stop_time": [image_id * 10_000_000 + 5_000_000, 100_000_000],
        "data": data}))


def v2_end(series: int, uid: str) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(55799, {"type": "end", "series_id": series, "series_unique_id": uid}))


def v1_messages(series: int, frames: list[np.ndarray], encoding: str = "bs16-lz4<", header: bool = True) -> list[list[bytes]]:
    msgs = [[json.dumps({"htype": "dheader-1.0", "series": series, "header_detail": "basic"}).encode(),
             json.dumps({"count_time": 0.02, "description": "Dectris EIGER2 Si 1M", "detector_number": "E-02-0001",
                         "x_pixel_size": 7.5e-5}).encode()]]
    for i, px in enumerate(frames):
        raw = px.astype("<u2").tobytes()
        if encoding == "bs16-lz4<":
            blob = bslz4_compress(raw, 2)
            blob = blob if header else blob[12:]
        elif encoding == "lz4<":
            import lz4.block

            blob = lz4.block.compress(raw, store_size=False)
        else:
            blob = raw
        msgs.append([json.dumps({"htype": "dimage-1.0", "series": series, "frame": i, "hash": ""}).encode(),
                     json.dumps({"htype": "dimage_d-1.0", "shape": [px.shape[1], px.shape[0]], "type": "uint16",
                                 "encoding": encoding, "size": len(blob)}).encode(), blob,
                     json.dumps({"htype": "dconfig-1.0", "start_time": i * 10**8, "stop_time": i * 10**8 + 2 * 10**7,
                                 "real_time": 2 * 10**7}).encode()])
    msgs.append([json.dumps({"htype": "dseries_end-1.0", "series": series}).encode()])
    return msgs


def px(i: int, shape: tuple[int, int] = (64, 64), dtype: str = "uint16") -> np.ndarray:
    return np.random.default_rng(i).poisson(50.0, shape).astype(dtype)


@pytest.mark.parametrize("compression", ["bslz4", "lz4", "none"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
def test_v2_messages_round_trip(compression: str, dtype: str) -> None:
    start = decode_message([v2_start(7, "UID7", (48, 40), dtype)])
    assert (start.kind, start.version, start.series) == ("start", 2, "UID7")
    image = decode_message([v2_image(7, "UID7", 2, px(2, (48, 40), dtype), compression, extra_channel=True)])
    name, pixels = image.pixels()
    assert (image.kind, image.image_id, name) == ("image", 2, "threshold_1")
    np.testing.assert_array_equal(pixels, px(2, (48, 40), dtype))
    assert image.pixels("threshold_2")[1].sum() == 0
    meta = frame_meta(start.fields, image, name)
    assert meta["exposure_s"] == pytest.approx(0.05) and meta["camera"] == "EIGER2 X 500K"
    assert meta["timestamp"] == pytest.approx(SERIES_DATE.timestamp() + 0.2)
    assert meta["tags"]["detector_pixel_size_m"] == 75e-6 and "pixel_size_nm" not in meta
    end = decode_message([v2_end(7, "UID7")])
    assert (end.kind, end.series) == ("end", "UID7")


@pytest.mark.parametrize("encoding,header", [("bs16-lz4<", True), ("bs16-lz4<", False), ("lz4<", True), ("<", True)])
def test_v1_messages_round_trip(encoding: str, header: bool) -> None:
    msgs = [decode_message(m) for m in v1_messages(3, [px(0), px(1)], encoding, header)]
    assert [m.kind for m in msgs] == ["start", "image", "image", "end"] and {m.series for m in msgs} == {"3"}
    assert msgs[0].fields["count_time"] == 0.02
    for i, m in enumerate(msgs[1:3]):
        name, pixels = m.pixels()
        np.testing.assert_array_equal(pixels, px(i))
        meta = frame_meta(msgs[0].fields, m, name)
        assert meta["exposure_s"] == pytest.approx(0.02) and meta["camera"] == "Dectris EIGER2 Si 1M"


def test_malformed_messages_raise_precise_errors() -> None:
    good = v1_messages(1, [px(0)])[1]
    cases = [
        ([b"{not json"], "part 0 is not JSON"),
        ([json.dumps({"htype": "dfoo-1.0"}).encode()], "unknown htype 'dfoo-1.0'"),
        (good[:2], "needs >= 3"),
        ([good[0], json.dumps({"shape": [64], "type": "uint16"}).encode(), good[2]], "shape must be"),
        ([good[0], json.dumps({"shape": [64, 64], "type": "int64"}).encode(), good[2]], "type must be one of"),
        ([good[0], good[1], good[2][:100]], "truncated"),
        ([good[0], json.dumps({"shape": [64, 64], "type": "uint16", "encoding": "<"}).encode(), b"\0" * 10],
         "needs 8192"),
        ([cbor2.dumps({"type": "image", "image_id": -1})], "image_id >= 0"),
        ([cbor2.dumps({"type": "nope"})], "type start|image|end"),
        ([b"\xff\xfe"], "not a CBOR message"),
        ([cbor2.dumps({"type": "image", "image_id": 0, "data": {"c": cbor2.CBORTag(40, [[2, 2], cbor2.CBORTag(
            69, cbor2.CBORTag(56500, ["zstd", 0, b"x"]))])}})], "unknown DECTRIS compression 'zstd'"),
        ([cbor2.dumps({"type": "image", "image_id": 0, "data": {"c": cbor2.CBORTag(40, [[2, 2], cbor2.CBORTag(
            69, b"123")])}})], "needs 8 bytes, got 3"),
    ]
    for parts, text in cases:
        with pytest.raises(StreamDecodeError, match=text.replace("[", r"\[").replace("|", r"\|")):
            msg = decode_message(parts)
            msg.pixels()
    with pytest.raises(StreamDecodeError, match="above the"):
        bslz4_decompress(struct.pack(">QI", 1 << 40, 8192), 2)


def test_config_is_passive_and_checked() -> None:
    with pytest.raises(ConfigError, match=r"source\[0\]\.nimages is only used with control = true.* got nimages = 5"):
        DaemonConfig.from_dict({"source": [{"kind": "dectris", "nimages": 5}]})
    with pytest.raises(ConfigError, match=r"source\[0\]\.version must be one of"):
        DaemonConfig.from_dict({"source": [{"kind": "dectris", "version": "v3"}]})
    with pytest.raises(ConfigError, match=r"source\[0\]\.pixel_size_nm must be a number > 0"):
        DaemonConfig.from_dict({"source": [{"kind": "dectris", "pixel_size_nm": -1.0}]})
    cfg = DaemonConfig.from_dict({"source": [{"kind": "dectris", "endpoint": "tcp://dcu:31001"}]})
    assert cfg.source[0].label == "dectris:dcu:31001" and cfg.source[0].control is False


# --- in the daemon: a detector on loopback --------------------------------------------------------

@pytest.mark.usefixtures("one_torch_thread")
def test_daemon_gets_one_result_per_image_with_series_kept(tiny_bundle: Any) -> None:
    ctx = zmq.Context.instance()
    detector = ctx.socket(zmq.PUSH)   # the DCU's stream socket: it binds, clients connect
    port = detector.bind_to_random_port("tcp://127.0.0.1")
    cfg = DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0"}, "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"enabled": False},
        "model": {"bundle": str(tiny_bundle.path), "intra_op_threads": 1, "backend": "onnxruntime"},
        "source": [{"kind": "dectris", "endpoint": f"tcp://127.0.0.1:{port}", "name": "eiger",
                    "pixel_size_nm": 0.02, "voltage_kv": 300.0}]})
    with Daemon(cfg) as d:
        sub = ctx.socket(zmq.SUB)
        sub.subscribe(b"")
        sub.connect(d.endpoints["results"])
        time.sleep(0.5)   # the source's PULL and this SUB are connected
        for m in [v2_start(1, "A", (64, 64))] + [v2_image(1, "A", i, px(i)) for i in range(3)] + [v2_end(1, "A")]:
            detector.send(m)
        detector.send(b"\xff broken")
        for m in v1_messages(2, [px(10), px(11)]):
            detector.send_multipart(m)
        events = []
        t_end = time.monotonic() + 60
        while len(events) < 6 and time.monotonic() < t_end:
            if sub.poll(1000):
                parts = sub.recv_multipart()
                events.append((parts[0], decode_result(parts)[0] if parts[0] == b"result" else parts[1]))
        wait_until(lambda: d.metrics.counts()["in_flight"] == 0, 20.0, "idle")
        counts = d.status()["sources"]["eiger"]
        series = list(d._sources[0].series_seen)
        sub.close(linger=0)
    detector.close(linger=0)
    results = [h for t, h in events if t == b"result"]
    assert [(r["series"], r["frame"]) for r in results] == [("A", 0), ("A", 1), ("A", 2), ("2", 0), ("2", 1)]
    assert all(r["meta"]["pixel_size_nm"] == 0.02 and r["meta"]["voltage_kv"] == 300.0 for r in results)
    assert results[0]["meta"]["exposure_s"] == pytest.approx(0.05) and results[3]["meta"]["exposure_s"] == pytest.approx(0.02)
    assert series == [("A", "start"), ("A", "end"), ("2", "start"), ("2", "end")]
    assert counts == {"received": 6, "processed": 5, "dropped": {}, "rejected": {"unreadable": 1}, "in_flight": 0}
