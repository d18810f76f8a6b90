"""The live operator view (daemon/view.py): settings, the one-slot mailbox (display frames are
dropped, pipeline frames never), the read-only HTTP routes and server-sent events, through a
real daemon on loopback (OS-assigned ports) with a client that never reads; and the page in a
real headless Chromium (Debian ``chromium-headless-shell`` or ``chromium``) while frames flow."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from prometheus_client import CollectorRegistry

from fringelive.daemon.config import ConfigError, DaemonConfig, default_bundle_path
from fringelive.daemon.protocol import encode_frame
from fringelive.daemon.server import Daemon
from fringelive.daemon.view import ViewFrame, ViewServer, ViewSettings, png_bytes
from polling import wait_until  # tests/polling.py

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _get(url: str, timeout: float = 10.0) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def _frame(k: int, side: int = 256) -> ViewFrame:
    rng = np.random.default_rng(k)
    pixels = rng.poisson(100.0, (side, side)).astype(np.uint16)
    mask = np.zeros((side, side), bool)
    mask[40:90, 50:100] = True
    header = {"series": "unit", "frame": k, "model": "m", "particle_count": 1,
              "particles": [{"track_id": 1, "centroid_px": [64.5, 74.5], "diameter_nm": 2.5, "touches_border": False}],
              "drift": {"status": "warn", "reasons": ["dose_missing"]},
              "registration": {"shift_px": [1.0, -2.0], "cumulative_px": [3.0, 4.0], "confidence": 0.9},
              "events": [], "meta": {"pixel_size_nm": 0.05}}
    return ViewFrame(header, pixels, mask)


def test_view_settings_from_config_with_precise_errors() -> None:
    cfg = DaemonConfig.from_dict({"view": {"enabled": True, "port": 0, "max_fps": 2}})
    assert cfg.view == ViewSettings(enabled=True, host="127.0.0.1", port=0, max_fps=2)
    assert DaemonConfig().view.enabled is False and DaemonConfig().view.host == "127.0.0.1"
    for bad, words in (({"port": 70000}, "view.port must be an integer 0..65535, got 70000"),
                       ({"max_fps": 0}, "view.max_fps must be a number in (0, 60]"),
                       ({"colour": "red"}, "unknown key(s) ['view.colour']")):
        with pytest.raises(ConfigError) as e:
            DaemonConfig.from_dict({"view": bad})
        assert words in str(e.value)


def test_png_is_a_valid_image() -> None:
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[1, 2] = (255, 0, 0)
    png = png_bytes(rgb)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    from PIL import Image
    import io

    img = np.asarray(Image.open(io.BytesIO(png)))
    np.testing.assert_array_equal(img, rgb)


def test_mailbox_drops_display_frames_and_routes_are_read_only() -> None:
    registry = CollectorRegistry()
    view = ViewServer(ViewSettings(enabled=True, port=0, max_fps=1.0), registry)
    try:
        for k in range(30):  # far faster than 1 fps: the slot keeps only the newest
            view.offer(_frame(k))
        wait_until(lambda: registry.get_sample_value("fringelive_view_frames_shown_total") >= 1, what="a shown frame")
        shown = registry.get_sample_value("fringelive_view_frames_shown_total")
        dropped = registry.get_sample_value("fringelive_view_frames_dropped_total")
        assert shown + dropped <= 30 and dropped >= 25, (shown, dropped)

        status, ctype, body = _get(view.url)
        assert status == 200 and ctype.startswith("text/html") and b'<img id="frame"' in body
        # the latest state is embedded: the page draws on load, without waiting for a fetch
        assert b'const initial = {"seq": ' in body and b'"series": "unit"' in body
        escaped = view.page_with({"series": "</script><script>alert(1)</script>"})
        assert b"</script><script>alert" not in escaped and b"<\\/script><script>alert" in escaped
        status, ctype, png = _get(view.url + "frame.png")
        assert ctype == "image/png" and png[:4] == b"\x89PNG"
        state = json.loads(_get(view.url + "state.json")[2])
        assert state["series"] == "unit" and state["tracks"][0]["id"] == 1
        assert state["drift"] == {"status": "warn", "reasons": ["dose_missing"]}
        assert state["scale_bar"]["nm"] > 0 and sum(state["histogram"]["counts"]) == 1
        assert len(state["histogram"]["edges"]) == len(state["histogram"]["counts"]) + 1
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(view.url, data=b"x", method="POST"), timeout=5)
        assert e.value.code == 405

        with urllib.request.urlopen(view.url + "events", timeout=10) as r:  # SSE: the newest state at once
            assert r.headers["Content-Type"] == "text/event-stream"
            line = r.readline()
            assert line.startswith(b"data: ") and json.loads(line[6:])["series"] == "unit"
    finally:
        view.close()


def _daemon_config(bundle: Any, **view: Any) -> DaemonConfig:
    return DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0"},
        "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"},
        "metrics": {"enabled": False},
        "model": {"bundle": str(getattr(bundle, "path", bundle)), "backend": "onnxruntime", "intra_op_threads": 1},
        "queue": {"policy": "block"},
        "view": {"enabled": True, "port": 0, **view},
    })


def test_a_stalled_view_client_never_costs_a_pipeline_frame(tiny_bundle) -> None:
    registry = CollectorRegistry()
    n = 12
    with Daemon(_daemon_config(tiny_bundle, max_fps=1.0), registry=registry) as d:
        host, port = d.endpoints["view"].split("//")[1].rstrip("/").split(":")
        stalled = socket.create_connection((host, int(port)))  # asks for events, never reads them
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.connect(d.endpoints["ingest"])
        try:
            rng = np.random.default_rng(0)
            for k in range(n):
                push.send_multipart(encode_frame(rng.poisson(100.0, (128, 128)).astype(np.uint16), series="v",
                                                 frame=k, pixel_size_nm=0.02))
            wait_until(lambda: d.metrics.counts()["processed"] >= n, timeout=120, what="all frames processed")
            counts = d.metrics.counts()
            assert counts["processed"] == n and sum(counts["dropped"].values()) == 0, counts
            assert sum(counts["rejected"].values()) == 0, counts
            dropped = registry.get_sample_value("fringelive_view_frames_dropped_total")
            shown = registry.get_sample_value("fringelive_view_frames_shown_total")
            assert dropped > 0 and shown + dropped <= n, (shown, dropped)
            assert registry.get_sample_value("fringelive_view_clients") >= 1
        finally:
            push.close(linger=0)
            stalled.close()


def _chromium() -> str | None:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.slow  # ~30 s on the shared 2-core box (default bundle on 512² frames + two browser runs)
@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium (Debian chromium-headless-shell; .ci/run installs it)")
def test_page_in_headless_chromium_while_frames_flow(tmp_path: Path) -> None:
    from PIL import Image

    from series_sim import PIXEL_NM, make_series  # tests/series_sim.py

    bundle = default_bundle_path()
    if bundle is None:
        pytest.skip("no default bundle installed")
    s = make_series(7, (512, 512), seed=3, merge_frame=3, birth_frame=2, max_step_px=20.0, approach_px=16.0)
    cfg = DaemonConfig.from_dict({"ingest": {"endpoint": "tcp://127.0.0.1:0"},
                                  "results": {"endpoint": "tcp://127.0.0.1:0"},
                                  "control": {"endpoint": "tcp://127.0.0.1:0"},
                                  "metrics": {"enabled": False},
                                  "model": {"bundle": str(bundle), "backend": "onnxruntime", "intra_op_threads": 1},
                                  "queue": {"policy": "drop-oldest"},
                                  "view": {"enabled": True, "port": 0, "max_fps": 5.0}})
    stop = threading.Event()
    with Daemon(cfg) as d:
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.connect(d.endpoints["ingest"])

        def feed() -> None:  # frames keep flowing while the browser loads the page
            k = 0
            while not stop.is_set():
                push.send_multipart(encode_frame(s.frames[k % len(s.frames)], series="chromium-run", frame=k,
                                                 pixel_size_nm=PIXEL_NM, magnification=8.0e5))
                k += 1
                stop.wait(0.5)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            wait_until(lambda: d.metrics.counts()["processed"] >= 2, timeout=120, what="frames processed")
            url = d.endpoints["view"]
            base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,900", "--timeout=5000"]
            for _ in range(6):  # the page draws the latest state on load; retry a slow start, and a frame
                # whose particles all touch the edge (no histogram bar): the series cycles on to others
                dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=60).stdout
                if 'data-frames-drawn="0"' not in dom and "<rect" in dom:
                    break
                time.sleep(0.5)
            shot = tmp_path / "view.png"
            subprocess.run([*base, f"--screenshot={shot}", url], capture_output=True, timeout=60)
        finally:
            stop.set()
            feeder.join(5)
            push.close(linger=0)
    assert '<img id="frame"' in dom and 'src="/frame.png?seq=' in dom, dom[:2000]
    assert 'data-series="chromium-run"' in dom and '<span id="series">chromium-run</span>' in dom
    drawn = int(dom.split('data-frames-drawn="')[1].split('"')[0])
    assert drawn >= 1
    assert "<rect" in dom and ('class="tid"' in dom or 'class="bar"' in dom), "empty SVG overlay / histogram"
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    region = img[60:500, 12:640]  # the frame's <img>
    assert img.shape[0] >= 800 and region.std() > 10.0, region.std()
