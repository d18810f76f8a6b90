"""Drift in the running daemon: the result header's ``drift`` map, the Prometheus series
(``fringelive_drift_frames_total{status}``, ``..._reasons_total{reason}``, ``..._signal``,
``..._cusum``, ``..._alarm``), the CUSUM reset on reload, ``[drift]`` config, over real sockets."""

from __future__ import annotations

import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from fringelive.stream.camera_sim import SimulatedCamera
from fringelive.daemon.config import ConfigError, DaemonConfig
from fringelive.daemon.control import control_request
from fringelive.engine.calibration import build_reference, measure_frames
from fringelive.engine.pipeline import PipelineConfig, SegmentationPipeline
from fringelive.daemon.protocol import decode_result, encode_frame
from fringelive.daemon.server import Daemon
from fringelive.bundle.bundle_io import load_bundle

SIDE = 128
META = {"pixel_size_nm": 0.02, "dose_e_per_A2": 423.0, "voltage_kv": 300.0}

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def calibrated(tiny_bundle: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("drift-daemon") / "bundle"
    shutil.copytree(tiny_bundle.path, path)
    bundle = load_bundle(path)
    cam = SimulatedCamera((SIDE, SIDE), pixel_size_nm=0.02, dose_e_per_A2=423.0, scenes=2, seed=0)
    with SegmentationPipeline.from_bundle(bundle, PipelineConfig(), intra_op_threads=1) as pipe:
        measurements = list(measure_frames(pipe, ((cam.frame(500 + i)[0], dict(META)) for i in range(60))))
    reference, _ = build_reference(measurements, bundle.card, target_arl=1000)
    return bundle.write_card(bundle.card.replace(drift_reference=reference))


def make_config(bundle: Any, metrics: bool = True, **drift: Any) -> DaemonConfig:
    return DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0"}, "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"},
        "metrics": {"enabled": metrics, "host": "127.0.0.1", "port": 0},
        "model": {"bundle": str(bundle.path), "intra_op_threads": 1}, "drift": drift})


class Stream:
    """PUSH + SUB on one daemon; ``send`` returns the result headers in frame order."""

    def __init__(self, d: Daemon) -> None:
        ctx = zmq.Context.instance()
        self.sub, self.push = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH)
        self.sub.subscribe(b"")
        self.sub.connect(d.endpoints["results"])
        self.push.connect(d.endpoints["ingest"])
        t_end = time.monotonic() + 10
        while time.monotonic() < t_end:  # slow joiner: junk until its error event comes back
            self.push.send_multipart([msgpack.packb({"version": 1, "series": "sync", "frame": 0}), b""])
            if self.sub.poll(200):
                break
        while self.sub.poll(300):
            self.sub.recv_multipart()
        self.n = 0

    def send(self, frames: list[tuple[np.ndarray, dict[str, Any]]]) -> list[dict[str, Any]]:
        for counts, meta in frames:
            self.push.send_multipart(encode_frame(counts, series="s", frame=self.n, **meta))
            self.n += 1
        out = []
        while len(out) < len(frames):
            assert self.sub.poll(30_000), f"got {len(out)} of {len(frames)} results"
            parts = self.sub.recv_multipart()
            assert parts[0] == b"result", parts[:2]
            out.append(decode_result(parts)[0])
        return sorted(out, key=lambda h: h["frame"])

    def close(self) -> None:
        self.sub.close(linger=0)
        self.push.close(linger=0)


def scrape(d: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(d.endpoints["metrics"], timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_drift_headers_metrics_and_reload(calibrated: Any) -> None:
    cam = SimulatedCamera((SIDE, SIDE), pixel_size_nm=0.02, dose_e_per_A2=423.0, scenes=2, seed=0)
    rng = np.random.default_rng(1)
    with Daemon(make_config(calibrated)) as d:
        s = Stream(d)
        try:
            good = s.send([(cam.frame(i)[0], dict(META)) for i in range(5)])
            for h in good:
                drift = h["drift"]
                assert (drift["status"], drift["reasons"], drift["alarm"], drift["calibrated"]) == ("ok", [], False, True)
                assert set(drift["p_values"]) == {"entropy_foreground", "entropy_boundary", "log_dose_estimate"}
                assert all(0.0 <= p <= 1.0 for p in drift["p_values"].values())
                assert drift["cusum"]["h"] == calibrated.card.drift_reference["cusum"]["h"]
                assert drift["estimates"]["dose_e_per_A2"] == pytest.approx(423.0, rel=0.1)
                assert drift["conditions"] == {"pixel_size_nm": 0.02, "dose_e_per_A2": 423.0, "voltage_kv": 300.0,
                                               "material": None}
                assert h["timings_ms"]["drift"] >= 0.0
            # the beam current drops to a fifth, the header still claims 423 e/Å²
            low = [(rng.binomial(cam.frame(i)[0].astype(np.int64), 80 / 423).astype(np.uint16), dict(META))
                   for i in range(5, 8)]
            bad = s.send(low)
            for h in bad:
                assert h["drift"]["status"] == "ood" and h["drift"]["alarm"] is True
                assert h["drift"]["reasons"] == ["dose_metadata_mismatch", "dose_below_envelope", "stream_alarm"]
            m = scrape(d)
            assert m[("fringelive_drift_frames_total", (("status", "ok"),))] == 5
            assert m[("fringelive_drift_frames_total", (("status", "ood"),))] == 3
            assert m[("fringelive_drift_frames_total", (("status", "warn"),))] == 0
            assert m[("fringelive_drift_reasons_total", (("reason", "dose_metadata_mismatch"),))] == 3
            assert m[("fringelive_drift_reasons_total", (("reason", "stream_alarm"),))] == 3
            assert m[("fringelive_drift_alarm", ())] == 1
            assert m[("fringelive_drift_cusum", (("signal", "log_dose_estimate"),))] > m[("fringelive_drift_cusum_threshold", ())]
            assert m[("fringelive_drift_signal", (("signal", "log_dose_estimate"),))] == pytest.approx(np.log(80), abs=0.1)
            assert m[("fringelive_routed_frames_total", (("model", calibrated.name),))] == 8
            # reload re-reads the bundle: the CUSUM starts afresh
            assert control_request(d.endpoints["control"], "reload", timeout_s=60)["ok"]
            after = s.send([(cam.frame(20)[0], dict(META))])
            assert after[0]["drift"]["alarm"] is False and after[0]["drift"]["cusum"]["frames"] == 1
            assert scrape(d)[("fringelive_drift_alarm", ())] == 0
            status = control_request(d.endpoints["control"], "status")
            assert status["bundles"][0]["drift"]["calibrated"] is True
            assert status["bundles"][0]["drift"]["cusum"]["h"] == calibrated.card.drift_reference["cusum"]["h"]
        finally:
            s.close()


def test_drift_config_switches(calibrated: Any) -> None:
    cam = SimulatedCamera((SIDE, SIDE), pixel_size_nm=0.02, dose_e_per_A2=423.0, scenes=2, seed=0)
    with Daemon(make_config(calibrated, metrics=False, enabled=False)) as d:
        s = Stream(d)
        try:
            (h,) = s.send([(cam.frame(0)[0], dict(META))])
        finally:
            s.close()
    assert h["drift"]["status"] == "unknown" and h["drift"]["reasons"] == ["drift_disabled"]
    with Daemon(make_config(calibrated, metrics=False, image_estimates=False, target_arl=50,
                            dose_tolerance_rel=0.5)) as d:
        s = Stream(d)
        try:
            (h,) = s.send([(cam.frame(0)[0], {"pixel_size_nm": 0.02, "dose_e_per_A2": 250.0})])
        finally:
            s.close()
        assert h["drift"]["cusum"]["h"] < calibrated.card.drift_reference["cusum"]["h"]  # re-simulated for ARL0 50
    assert h["drift"]["estimates"] == {} and "log_dose_estimate" not in h["drift"]["signals"]
    assert (h["drift"]["status"], h["drift"]["reasons"]) == ("warn", ["dose_below_envelope"])


def test_drift_config_parsing_and_errors(tmp_path: Path) -> None:
    cfg = DaemonConfig.from_dict({"drift": {"member_agreement": False, "pixel_size_tolerance_rel": 0.2,
                                            "target_arl": 5000, "cusum_k": 1}})
    st = cfg.drift.settings()
    assert st.member_agreement is False and st.tolerances.pixel_size_rel == 0.2 and st.tolerances.dose_rel is None
    assert st.target_arl == 5000.0 and st.cusum_k == 1.0
    assert DaemonConfig().drift.settings().enabled is True
    for section, needle in (({"target_arl": 5}, "drift.target_arl must be >= 10 frames, got 5"),
                            ({"dose_tolerance_rel": -0.1}, "drift.dose_tolerance_rel must be >= 0, got -0.1"),
                            ({"fringe_windows": 0}, "drift.fringe_windows must be a positive integer, got 0"),
                            ({"colour": 1}, "unknown key(s) ['drift.colour']"),
                            ({"enabled": "yes"}, "drift.enabled must be true or false, got 'yes'")):
        with pytest.raises(ConfigError) as e:
            DaemonConfig.from_dict({"drift": section})
        assert needle in str(e.value)
    with pytest.raises(ConfigError, match=r"model.bundles\[0\]: no such bundle directory"):
        DaemonConfig.from_dict({"model": {"bundles": [str(tmp_path / "none")]}})
    with pytest.raises(ConfigError, match="model.bundles must be a list of bundle directory paths"):
        DaemonConfig.from_dict({"model": {"bundles": "a"}})


def test_bad_drift_reference_fails_the_load(calibrated: Any, tmp_path: Path) -> None:
    from fringelive.bundle.bundle_io import BundleError

    path = tmp_path / "bad"
    shutil.copytree(calibrated.path, path)
    b = load_bundle(path)
    b.write_card(b.card.replace(drift_reference={"camera_gain": 2.0}))
    with pytest.raises(BundleError, match=r"drift_reference: unknown key\(s\) \['camera_gain'\]"):
        Daemon(make_config(b, metrics=False)).start()
