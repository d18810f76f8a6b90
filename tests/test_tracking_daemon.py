"""Tracking through a real daemon: the default bundle on ONNX Runtime, real ZeroMQ on loopback
(OS-assigned ports). A short simulated series (tests/series_sim.py: moving particles, stage drift
of up to 20 px per frame, two particles coalescing) → stable track ids across frames, a
``merged`` event naming the parents on the frame of the coalescence, ``registration`` in every
header, and the tracking metrics on the injected registry."""

from __future__ import annotations

import csv
import time
from typing import Any

import h5py
import msgpack
import numpy as np
import pandas as pd
import pytest
import zmq
from prometheus_client import CollectorRegistry

from fringelive.cli import main
from fringelive.daemon.config import DaemonConfig, default_bundle_path
from fringelive.daemon.protocol import decode_error, decode_result, encode_frame
from fringelive.daemon.server import Daemon
from fringelive.stream.recorder import ResultRecorder
from series_sim import PIXEL_NM, make_series  # tests/series_sim.py

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

N_FRAMES, SIDE, MERGE = 7, 512, 3


def _config(**tracking: Any) -> DaemonConfig:
    bundle = default_bundle_path()
    if bundle is None:
        pytest.skip("no default bundle installed")
    return DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0"},
        "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"},
        "metrics": {"enabled": False},
        "model": {"bundle": str(bundle), "backend": "onnxruntime", "intra_op_threads": 1},
        "drift": {"enabled": False},
        # the series' particles are >= 4 nm; the default model (trained on multislice frames) calls
        # some 1-3 nm blobs on fastsim's phenomenological carbon texture, which are not particles here
        "particles": {"min_diameter_nm": 3.0},
        "tracking": {"enabled": True, "max_gap_frames": 2, "max_displacement_nm": 2.0, **tracking},
    })


def _run(cfg: DaemonConfig, frames: list[tuple[np.ndarray, dict]], registry: CollectorRegistry
         ) -> list[tuple[dict, np.ndarray]]:
    """(header, mask) of every frame, in the order received."""
    ctx = zmq.Context.instance()
    headers: list[tuple[dict, np.ndarray]] = []
    with Daemon(cfg, registry=registry) as d:
        sub = ctx.socket(zmq.SUB)
        sub.subscribe(b"")
        sub.connect(d.endpoints["results"])
        push = ctx.socket(zmq.PUSH)
        push.connect(d.endpoints["ingest"])
        try:
            t_end, i, synced = time.monotonic() + 10.0, 0, False
            while not synced and time.monotonic() < t_end:  # slow joiner
                i += 1
                push.send_multipart([msgpack.packb({"version": 1, "series": "sync", "frame": i}), b""])
                while sub.poll(200):
                    parts = sub.recv_multipart()
                    if parts[0] == b"error" and decode_error(parts).get("frame") == i:
                        synced = True
                        break
            assert synced, "subscriber never saw the daemon's events"
            for pixels, meta in frames:
                push.send_multipart(encode_frame(pixels, **meta))
            t_end = time.monotonic() + 180.0
            while len(headers) < len(frames):
                assert sub.poll(max(1, int((t_end - time.monotonic()) * 1000))), f"got {len(headers)} results"
                parts = sub.recv_multipart()
                if parts[0] == b"result":
                    header, mask, _ = decode_result(parts)
                    headers.append((header, mask))
        finally:
            sub.close(linger=0)
            push.close(linger=0)
    return headers


def test_series_with_drift_and_merge_gets_stable_ids_a_merged_event_and_time_series(tmp_path, capsys) -> None:
    s = make_series(N_FRAMES, (SIDE, SIDE), seed=3, merge_frame=MERGE, birth_frame=2, max_step_px=20.0, approach_px=16.0)
    frames = [(f, {"series": "run-1", "frame": k, "pixel_size_nm": PIXEL_NM, "magnification": 8.0e5,
                   "timestamp": 1000.0 + k, "temperature_C": 300.0 + 5 * k, "stimulus.gas": "H2"})
              for k, f in enumerate(s.frames)]
    registry = CollectorRegistry()
    received = _run(_config(), frames, registry)
    headers = sorted((h for h, _ in received), key=lambda h: h["frame"])
    assert [h["frame"] for h in headers] == list(range(N_FRAMES))

    # registration: every frame, the first is the reference; per-frame shift ≈ the true step
    assert headers[0]["registration"]["status"] == "reference"
    for k in range(1, N_FRAMES):
        reg = headers[k]["registration"]
        assert reg["status"] == "ok", reg
        step = np.subtract(s.drift[k], s.drift[k - 1])
        assert np.abs(np.subtract(reg["shift_px"], step)).max() < 1.0, (k, reg, step)
        assert 0.0 <= reg["confidence"] <= 1.0

    # identity: each truth particle keeps one track id across the frames it lives in
    ids_of_truth: dict[int, set[int]] = {}
    for h, truth in zip(headers, s.truth):
        assert h["particle_count"] > 0
        for p in h["particles"]:
            assert p["track_id"] >= 1 and (p["circularity"] is None or 0.0 <= p["circularity"] <= 1.0)
            cy, cx = (int(round(v)) for v in p["centroid_px"])
            t = int(truth[min(cy, SIDE - 1), min(cx, SIDE - 1)])
            if t and not p["touches_border"]:
                ids_of_truth.setdefault(t, set()).add(p["track_id"])
    stable = [t for t, ids in ids_of_truth.items() if len(ids) == 1]
    assert len(stable) >= 0.8 * len(ids_of_truth), ids_of_truth

    # the coalescence: a merged event on the merge frame whose child is the merged particle
    (merge_k, parents, child_truth), = s.merges
    merged = [e for h in headers for e in h["events"] if e["type"] == "merged"]
    # the merge is reported within one frame of the true coalescence (issue #15's acceptance): the
    # model's masks may join two touching particles a frame early
    assert any(abs(e["frame"] - merge_k) <= 1 for e in merged), [h["events"] for h in headers]
    e = next(e for e in merged if abs(e["frame"] - merge_k) <= 1)
    merge_k = e["frame"]
    before = {p["track_id"] for p in headers[merge_k - 1]["particles"]}
    assert len(e["parents"]) >= 2 and set(e["parents"]) <= before and e["child"] not in before
    assert e["child"] in {p["track_id"] for p in headers[merge_k]["particles"]}
    for h in headers[merge_k:]:  # the parents' ids never continue on the child
        assert not set(e["parents"]) & {p["track_id"] for p in h["particles"]}

    # stimulus keys pass through to the result's meta
    assert headers[-1]["meta"]["temperature_C"] == 300.0 + 5 * (N_FRAMES - 1)
    assert headers[-1]["meta"]["stimulus.gas"] == "H2"

    # metrics on the injected registry
    val = registry.get_sample_value
    assert val("fringelive_registration_frames_total", {"status": "ok"}) == N_FRAMES - 1
    assert val("fringelive_track_events_total", {"type": "merged"}) >= 1
    assert val("fringelive_tracks_active") == headers[-1]["tracks_active"]
    assert val("fringelive_registration_shift_px", {"axis": "y"}) == headers[-1]["registration"]["shift_px"][0]

    # time series: the recorder `watch --record` uses, then `fringelive tracks --csv`
    record = tmp_path / "run.h5"
    with ResultRecorder(record, compression=0) as rec:
        for h, mask in received:
            rec.add_result(h, mask)
    with h5py.File(record, "r") as f:
        assert f.attrs["format_version"] == 2
        t = f["series/run-1/tracking"]
        assert t.attrs["NX_class"] == "NXcollection" and t["particles"].attrs["NX_class"] == "NXdata"
        g = t["particles"]
        assert g["centroid_y_nm"].attrs["units"] == "nm" and g["area_nm2"].attrs["units"] == "nm^2"
        assert g["temperature_C"].attrs["units"] == "degC"
        n_rows = sum(h["particle_count"] for h in headers)
        assert g["frame"].shape == (n_rows,) and g["stimulus.gas"].asstr()[0] == "H2"
        # drift-corrected centroid = (centroid - cumulative drift) × pixel size
        k = int(np.argmax(g["frame"][:]))
        cum = headers[int(g["frame"][k])]["registration"]["cumulative_px"]
        assert g["centroid_y_nm"][k] == pytest.approx((g["centroid_y_px"][k] - cum[0]) * PIXEL_NM)
        assert g["time_s"][:].max() == pytest.approx(N_FRAMES - 1)
        ev = t["events"]
        assert "merged" in list(ev["type"].asstr()[:])
        assert t["registration"]["status"].asstr()[0] == "reference"
    df = pd.DataFrame({k: (g[k].asstr()[:] if h5py.check_string_dtype(g[k].dtype) else g[k][:])
                       for g in [h5py.File(record, "r")["series/run-1/tracking/particles"]] for k in g})
    assert len(df) == n_rows and set(df["track_id"]) == {p["track_id"] for h in headers for p in h["particles"]}
    assert main(["tracks", str(record), "--csv", str(tmp_path / "csv")]) == 0
    out = capsys.readouterr().out
    assert "series run-1:" in out and f"merged 1: frame {merge_k}:" in out
    rows = list(csv.DictReader(open(tmp_path / "csv" / "run-1_particles.csv", encoding="utf-8")))
    assert len(rows) == n_rows and rows[0]["temperature_C"] == "300" and rows[0]["stimulus.gas"] == "H2"
    assert {"frame", "time_s", "centroid_y_nm", "area_nm2", "diameter_nm", "circularity"} <= set(rows[0])
    events = list(csv.DictReader(open(tmp_path / "csv" / "run-1_events.csv", encoding="utf-8")))
    assert any(r["type"] == "merged" and r["frame"] == str(merge_k) for r in events)


def test_tracking_disabled_leaves_the_header_as_before() -> None:
    s = make_series(N_FRAMES, (SIDE, SIDE), seed=3, merge_frame=MERGE, birth_frame=2, max_step_px=20.0, approach_px=16.0)
    frames = [(f, {"series": "off", "frame": k, "pixel_size_nm": PIXEL_NM}) for k, f in enumerate(s.frames[:2])]
    headers = [h for h, _ in _run(_config(enabled=False), frames, CollectorRegistry())]
    for h in headers:
        assert "registration" not in h and "events" not in h
        assert all("track_id" not in p for p in h["particles"])


def test_tracking_config_is_the_engine_settings_with_precise_errors() -> None:
    from fringelive.daemon.config import ConfigError
    from fringelive.engine.tracking import TrackingSettings

    cfg = DaemonConfig.from_dict({"tracking": {"enabled": False, "max_gap_frames": 5, "max_displacement_nm": 1.5}})
    assert cfg.tracking == TrackingSettings(enabled=False, max_gap_frames=5, max_displacement_nm=1.5)
    for bad, words in (({"max_gap_frames": -1}, "tracking.max_gap_frames must be an integer >= 0, got -1"),
                       ({"max_displacement_nm": 0}, "tracking.max_displacement_nm must be a number > 0"),
                       ({"merge_overlap": 0.5}, "unknown key(s) ['tracking.merge_overlap']"),
                       ({"enabled": "yes"}, "tracking.enabled must be true or false, got 'yes'")):
        with pytest.raises(ConfigError) as e:
            DaemonConfig.from_dict({"tracking": bad})
        assert words in str(e.value)
