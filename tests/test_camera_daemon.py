"""The camera through the running daemon (issue #12), default bundle, loopback ZeroMQ.

A camera the bundle never saw (gain 8 counts/e, offset 100 counts, read noise 3 counts, a
Gaussian detector MTF of σ 0.5 px, x-rays) over ``training/fastsim`` scenes. The constants come
from the frame header, from ``[camera]``, from the stream (learned), or nowhere.

Frames of 256² keep the default suite fast; at that size the default bundle's entropy CUSUM
raises ``stream_alarm`` on fastsim frames whatever the camera (a gain-1 camera too), so the fast
tests count the per-frame flags (dose and pixel size); the ``slow`` tests use 512² frames, where
the in-envelope stream is clean, and count statuses.
"""

from __future__ import annotations

import math
import time
import urllib.request
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from camera_sim_helpers import SimCamera, illumination

from fringelive.daemon.config import DaemonConfig
from fringelive.daemon.control import control_request
from fringelive.daemon.protocol import decode_result, encode_frame
from fringelive.daemon.server import Daemon
from fringelive.training.fastsim import FastSimConfig, electrons_per_pixel, simulate_intensity

META = {"pixel_size_nm": 0.02, "dose_e_per_A2": 423.0, "voltage_kv": 300.0, "material": "Au"}
HEADER_CAMERA = {"camera_gain_counts_per_e": 8.0, "camera_offset_counts": 100.0, "camera_read_noise_counts": 3.0}
CAMERA = SimCamera(gain=8.0, offset=100.0, read_noise=3.0, mtf_sigma_px=0.5, dtype="uint32")
PER_FRAME_FLAGS = ("dose_", "pixel_size_")

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


class Scenes:
    """fastsim intensities (vacuum 1) re-exposed by :data:`CAMERA` at any dose and pixel size."""

    def __init__(self, side: int, n: int = 4, seed: int = 0, **sim: Any) -> None:
        self.side, self.sim = side, sim
        self.rng = np.random.default_rng(seed)
        self.beam = illumination((side, side))
        self.pool = [simulate_intensity(FastSimConfig(shape=(side, side), pixel_size_nm=0.02, **sim), seed + i)[0]
                     for i in range(n)]

    def frame(self, i: int, dose: float = 423.0, pixel_size_nm: float = 0.02) -> np.ndarray:
        if pixel_size_nm == 0.02:
            img = self.pool[i % len(self.pool)]
        else:
            img = simulate_intensity(FastSimConfig(shape=(self.side, self.side), pixel_size_nm=pixel_size_nm,
                                                   **self.sim), 1000 + i)[0]
        return CAMERA.expose(electrons_per_pixel(dose, pixel_size_nm) * img * self.beam, self.rng)


def make_config(**sections: Any) -> DaemonConfig:
    return DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0"}, "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"enabled": True, "host": "127.0.0.1", "port": 0},
        # the scenes' particles are several nm: 1-3 nm blobs the default model (trained on multislice
        # frames) calls on fastsim's phenomenological carbon texture are not particles here, and
        # would feed the lattice-fringe pixel-size estimate with support texture
        "model": {"intra_op_threads": 1}, "particles": {"min_diameter_nm": 3.0}, **sections})


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
            self.push.send_multipart(encode_frame(counts, series="cam", frame=self.n, **meta))
            self.n += 1
        out = []
        while len(out) < len(frames):
            assert self.sub.poll(60_000), f"got {len(out)} of {len(frames)} results"
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


def per_frame_flags(h: dict[str, Any]) -> list[str]:
    return [r for r in h["drift"]["reasons"] if r.startswith(PER_FRAME_FLAGS) and r != "dose_unverified"]


def lies(scenes: Scenes, extra: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """Frames whose true dose is 40/80/2000 e/Å² and frames whose true pixel size is
    0.013/0.026/0.033/0.042 nm, all with a header saying 423 e/Å² at 0.020 nm."""
    dose = [(scenes.frame(20 + i, dose=d), {**META, **extra}) for i, d in enumerate((40.0, 80.0, 2000.0))]
    px = [(scenes.frame(30 + i, pixel_size_nm=p), {**META, **extra}) for i, p in enumerate((0.013, 0.026, 0.033, 0.042))]
    return dose, px


def check_known_camera(d: Daemon, scenes: Scenes, extra: dict[str, Any], n_ok: int, source: str,
                       count_status: bool, within_share: float = 0.95) -> None:
    s = Stream(d)
    try:
        good = s.send([(scenes.frame(i), {**META, **extra}) for i in range(n_ok)])
        dose_lies, px_lies = lies(scenes, extra)
        bad_dose, bad_px = s.send(dose_lies), s.send(px_lies)
    finally:
        s.close()
    for h in good:
        cam = h["drift"]["camera"]
        assert cam["sources"]["gain_counts_per_e"] == source and cam["sources"]["offset_counts"] == source
        assert (cam["gain_counts_per_e"], cam["offset_counts"]) == (8.0, 100.0)
        est = h["drift"]["estimates"]
        assert est["dose_verified"] is True and est["dose_method"] == "gain"
        assert "dose_metadata_mismatch" not in h["drift"]["reasons"]
        assert "dose_unverified" not in h["drift"]["reasons"]
    within = [abs(h["drift"]["estimates"]["dose_e_per_A2"] / 423.0 - 1.0) <= 0.10 for h in good]
    # ≥ 95 % at 512² (test_known_camera_512); 256² frames have 10-40 background blocks: with the
    # default-curated-v6 masks 2 of these 12 fastsim frames read 11-15 % low (fastsim particles the
    # model leaves unmasked darken the blocks beside them), hence 80 % at 256²
    assert sum(within) >= math.ceil(within_share * len(good)), [h["drift"]["estimates"]["dose_e_per_A2"] for h in good]
    flagged = [h for h in good if (h["drift"]["status"] != "ok" if count_status else per_frame_flags(h))]
    assert len(flagged) <= 0.02 * len(good), [(h["drift"]["status"], h["drift"]["reasons"]) for h in flagged]
    for h in bad_dose + bad_px:  # every lie flagged by a per-frame check (warn/ood)
        assert h["drift"]["status"] in ("warn", "ood") and per_frame_flags(h), h["drift"]["reasons"]
    for h in bad_dose:
        assert "dose_metadata_mismatch" in h["drift"]["reasons"]


@pytest.fixture
def small() -> Scenes:
    return Scenes(256)


def test_constants_in_the_header(small: Scenes) -> None:
    with Daemon(make_config()) as d:
        check_known_camera(d, small, HEADER_CAMERA, 12, "header", count_status=False, within_share=0.8)
        m = scrape(d)
        assert m[("fringelive_camera_gain_counts_per_e", (("source", "header"),))] == 8.0
        assert m[("fringelive_camera_offset_counts", (("source", "header"),))] == 100.0
        # frames that carry their camera are not fed to the fit
        assert control_request(d.endpoints["control"], "status")["camera"]["frames_fed"] == 0


def test_constants_in_config(small: Scenes) -> None:
    camera = {"name": "sim K3", "gain_counts_per_e": 8.0, "offset_counts": 100.0, "read_noise_counts": 3.0}
    with Daemon(make_config(camera=camera)) as d:
        check_known_camera(d, small, {}, 12, "config", count_status=False, within_share=0.8)
        status = control_request(d.endpoints["control"], "status")["camera"]
        # gain and offset configured: the fit runs as a check (no fit yet after 12 frames: refit_every 25)
        assert status["config"]["gain_counts_per_e"] == 8.0 and status["mode"] == "check" and status["fit"] is None


def test_no_constants_anywhere_is_unverified_never_a_mismatch(small: Scenes) -> None:
    """The default bundle's card says gain 1, offset 0 (its simulations): contradicted by the
    frames and dropped; with learning off the dose stays unverified (no status of its own)."""
    with Daemon(make_config(camera={"learn": False})) as d:
        s = Stream(d)
        try:
            good = s.send([(small.frame(i), dict(META)) for i in range(12)])
            dose_lies, _ = lies(small, {})
            bad = s.send(dose_lies)
        finally:
            s.close()
        for h in good + bad:
            drift = h["drift"]
            assert "dose_unverified" in drift["reasons"]
            assert not [r for r in drift["reasons"] if r.startswith("dose_") and r != "dose_unverified"], drift["reasons"]
            assert drift["estimates"]["dose_verified"] is False
            assert drift["signals"].get("log_dose_estimate") is None  # no CUSUM input from an unverified dose
        flagged = [h for h in good if per_frame_flags(h)]
        assert len(flagged) <= 0.05 * len(good)
        bundle = control_request(d.endpoints["control"], "status")["bundle"]["drift"]
        # the default bundle's card carries no camera (calibrated with --no-dose-calibration: the
        # camera belongs to the daemon); a card that does (gain 1 from simulations) is contradicted
        if (bundle["card_camera"] or {}).get("gain_counts_per_e") is not None:
            assert bundle["card_camera"]["gain_counts_per_e"] == pytest.approx(1.0, rel=0.01)
            assert bundle["card_camera_contradicted"] is True
        assert scrape(d)[("fringelive_drift_reasons_total", (("reason", "dose_unverified"),))] == len(good) + len(bad)


LEVELS = (650.0, 320.0)  # e/Å², both inside the default bundle's envelope (301–699); signal span > 30 %


def two_dose_stream(s: Stream, scenes: Scenes, n: int, batch: int = 20) -> list[dict[str, Any]]:
    """``n`` frames alternating between the :data:`LEVELS`, over ``scenes.pool`` (6 scenes: each
    scene comes back at its dose every 6 frames, a revisited area, so the stream holds frame pairs
    of one scene and dose); headers say the true dose."""
    heads: list[dict[str, Any]] = []
    for k in range(0, n, batch):
        heads += s.send([(scenes.frame(i, dose=LEVELS[i % 2]), {**META, "dose_e_per_A2": LEVELS[i % 2]})
                         for i in range(k, min(k + batch, n))])
    return heads


@pytest.mark.slow
def test_learned_from_the_stream() -> None:
    """≥ 100 frames at two dose levels: gain and offset learned within 15 %, exposed in the
    header, control status and metrics; doses unverified (≤ 5 % flagged) until then; afterwards
    dose lies are flagged. A thin support (fastsim's default amorphous carbon leaves no flat
    background block for the fit: such a stream stays unverified, never falsely flagged); its
    texture biases single-frame statistics, the frame pairs (temporal fit) cancel it."""
    scenes = Scenes(256, n=6, carbon_contrast=0.03)
    with Daemon(make_config(camera={"refit_every": 20})) as d:
        s = Stream(d)
        try:
            heads = two_dose_stream(s, scenes, 120)
            d.camera.wait(60)  # every refit due so far, the last one on all 120 frames
            status = control_request(d.endpoints["control"], "status")["camera"]
            fit = status["fit"]
            print("learned:", {k: fit[k] for k in ("method", "frames", "gain_counts_per_e", "gain_se", "offset_counts",
                                                 "offset_se", "offset_method", "confident", "reasons")})
            assert status["mode"] == "learn" and status["frames_fed"] == 120
            assert fit is not None and fit["confident"], fit
            assert fit["method"] == "temporal" and fit["frames"] >= 40, fit  # frame pairs
            assert fit["gain_counts_per_e"] == pytest.approx(8.0, rel=0.15)
            assert fit["offset_counts"] == pytest.approx(100.0, rel=0.15)
            assert fit["gain_se"] < 0.05 * fit["gain_counts_per_e"]
            dose_lies, _ = lies(scenes, {})
            after = s.send([(scenes.frame(200 + i), dict(META)) for i in range(4)] + dose_lies)
        finally:
            s.close()
        for h in heads:
            assert "dose_metadata_mismatch" not in h["drift"]["reasons"] or h["drift"]["camera"]["sources"][
                "gain_counts_per_e"] == "learned"
        flagged = [h for h in heads if per_frame_flags(h)]
        assert len(flagged) <= 0.05 * len(heads), [h["drift"]["reasons"] for h in flagged]
        assert all(h["drift"]["camera"]["sources"]["gain_counts_per_e"] == "learned" for h in after)
        assert after[0]["drift"]["camera"]["learned"]["confident"] is True
        assert all("dose_metadata_mismatch" in h["drift"]["reasons"] for h in after[4:])
        assert not [h for h in after[:4] if per_frame_flags(h)]
        m = scrape(d)
        assert m[("fringelive_camera_fit_confident", ())] == 1.0
        assert m[("fringelive_camera_fit_temporal", ())] == 1.0
        assert m[("fringelive_camera_fit_gain_counts_per_e", ())] == pytest.approx(8.0, rel=0.15)
        assert math.isnan(m[("fringelive_camera_config_disagrees", (("constant", "gain_counts_per_e"),))])


@pytest.mark.slow
def test_wrong_config_is_reported() -> None:
    """A fully configured but wrong ``[camera]`` (gain 2, the camera's is 8): the fit runs as a
    check, its confident gain disagrees: in control status, ``fringelive health``'s text, the
    result header and the ``fringelive_camera_config_disagrees`` gauge, which the
    ``FringeliveCameraConfigDisagreesWithStream`` alert (deploy/prometheus/alerts.yml) reads. The configured values stay in force."""
    from fringelive.stream.camera_text import camera_text

    scenes = Scenes(256, n=6, carbon_contrast=0.03)
    camera = {"gain_counts_per_e": 2.0, "offset_counts": 100.0, "read_noise_counts": 3.0, "refit_every": 20}
    with Daemon(make_config(camera=camera)) as d:
        s = Stream(d)
        try:
            two_dose_stream(s, scenes, 60)
            d.camera.wait(60)
            after = s.send([(scenes.frame(60 + i, dose=LEVELS[i % 2]), {**META, "dose_e_per_A2": LEVELS[i % 2]})
                            for i in range(2)])
        finally:
            s.close()
        status = control_request(d.endpoints["control"], "status")["camera"]
        fit = status["fit"]
        print("check fit:", fit and {k: fit[k] for k in ("method", "frames", "gain_counts_per_e", "gain_se", "offset_counts",
                                                        "offset_se", "offset_method", "confident", "reasons")})
        assert status["mode"] == "check" and fit is not None and fit["confident"], status
        assert fit["method"] == "temporal" and fit["gain_counts_per_e"] == pytest.approx(8.0, rel=0.15), fit
        assert status["config_disagrees"] == {"gain_counts_per_e": True, "offset_counts": False}, status
        assert "gain DISAGREE with the stream" in camera_text(status)
        for h in after:
            cam = h["drift"]["camera"]
            assert cam["sources"]["gain_counts_per_e"] == "config" and cam["gain_counts_per_e"] == 2.0
            assert cam["config_disagrees"]["gain_counts_per_e"] is True and cam["learned"]["confident"] is True
        m = scrape(d)
        assert m[("fringelive_camera_config_disagrees", (("constant", "gain_counts_per_e"),))] == 1.0
        assert m[("fringelive_camera_config_disagrees", (("constant", "offset_counts"),))] == 0.0
        # FringeliveCameraConfigDisagreesWithStream reads that gauge (max over constants == 1);
        # the learned-fit gauges it names in its description are there too
        assert m[("fringelive_camera_fit_confident", ())] == 1.0
        assert m[("fringelive_camera_fit_gain_counts_per_e", ())] == pytest.approx(8.0, rel=0.15)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["header", "config"])
def test_known_camera_512(where: str) -> None:
    """The acceptance at 512² (the default bundle's frame size): statuses, not just flags."""
    scenes = Scenes(512)
    cfg = make_config(camera={"gain_counts_per_e": 8.0, "offset_counts": 100.0}) if where == "config" else make_config()
    with Daemon(cfg) as d:
        check_known_camera(d, scenes, HEADER_CAMERA if where == "header" else {}, 10, where, count_status=True)
