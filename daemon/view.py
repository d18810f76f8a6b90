"""The live operator view: a read-only web page served by the daemon on its own port.

``[view] enabled, host, port, max_fps`` (:class:`ViewSettings`; off by default, loopback). The
page (``/``, one self-contained HTML file, no CDN) shows the latest frame binned to about 512 px
with the mask outline burnt in (``/frame.png``), the track ids and a scale bar in nm (SVG), the
series and frame, the drift status with its reasons and the stage registration, particle count
and mean diameter over time (two canvases) and the current size histogram (SVG). It updates by
server-sent events (``/events``: one JSON state per shown frame); the page is served with the
latest state embedded (drawn on load), and ``/state.json`` is that state. GET only (anything else: 405); no control actions.

**It never slows the pipeline.** The finisher calls :meth:`ViewServer.offer` with references to
the frame's header, pixels and mask: a one-slot mailbox (the newest replaces an unshown one, which
counts as dropped; a busy lock also drops), O(1), no copying or encoding in the finisher. The
view thread renders at most ``max_fps`` frames per second (binning, PNG, state); every SSE
client gets the newest state when it is ready for one (a slow client skips states, it never
queues them). Display frames are dropped, pipeline frames never.

Metrics on the injected registry: ``fringelive_view_frames_shown_total``,
``fringelive_view_frames_dropped_total``, ``fringelive_view_clients``.
"""

from __future__ import annotations

import json
import math
import struct
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Mapping

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from fringelive.engine.registration import bin_factor, bin_frame

__all__ = ["ViewSettings", "ViewServer", "ViewFrame", "render_state", "png_bytes"]

HISTORY = 600       # points of count / mean diameter kept per series
DISPLAY_SIDE = 512  # px: the binned frame's longer side is about this


@dataclass(frozen=True)
class ViewSettings:
    """``[view]``: enabled; host and port of the HTTP server (port 0 = OS-assigned); max_fps:
    frames rendered per second at most (the rest are dropped from the display only)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9110
    max_fps: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be true or false, got {self.enabled!r}")
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"host must be a host name or address, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an integer 0..65535, got {self.port!r}")
        if isinstance(self.max_fps, bool) or not isinstance(self.max_fps, (int, float)) \
                or not math.isfinite(self.max_fps) or not 0 < self.max_fps <= 60:
            raise ValueError(f"max_fps must be a number in (0, 60], got {self.max_fps!r}")


@dataclass(frozen=True)
class ViewFrame:
    """What the finisher offers: the result header (read only), raw pixels (H, W), mask (H, W) bool."""

    header: Mapping[str, Any]
    pixels: np.ndarray
    mask: np.ndarray


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG (8-bit RGB, zlib level 1) of ``rgb`` (H, W, 3) uint8, stdlib only."""
    h, w, _ = rgb.shape
    raw = np.empty((h, 1 + 3 * w), np.uint8)
    raw[:, 0] = 0
    raw[:, 1:] = rgb.reshape(h, 3 * w)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 1)) + chunk(b"IEND", b""))


def _display(pixels: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, int]:
    """RGB (h, w, 3) uint8 of the binned frame (1st–99th percentile stretch) with the mask
    outline in yellow; and the bin factor."""
    b = bin_factor((int(pixels.shape[0]), int(pixels.shape[1])), DISPLAY_SIDE)
    img = bin_frame(pixels, b)
    lo, hi = np.percentile(img, (1.0, 99.0))
    g = np.clip((img - lo) * (255.0 / max(float(hi - lo), 1e-9)), 0, 255).astype(np.uint8)
    h, w = g.shape
    m = np.asarray(mask[:h * b:b, :w * b:b], dtype=bool)[:h, :w]
    edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
    rgb = np.repeat(g[:, :, None], 3, axis=2)
    rgb[edge] = (255, 210, 0)
    return rgb, b


def _scale_bar_nm(width_nm: float) -> float:
    """A round length near a fifth of the width (1, 2, 5 × 10^k nm)."""
    target = width_nm / 5.0
    k = 10.0 ** math.floor(math.log10(target))
    return max(m * k for m in (1.0, 2.0, 5.0) if m * k <= target)


def render_state(header: Mapping[str, Any], shape: tuple[int, int], b: int, seq: int,
                 history: list[tuple[int, int, float | None]]) -> dict[str, Any]:
    """The page's JSON state of one shown frame (positions in display px)."""
    meta = header.get("meta") or {}
    px = meta.get("pixel_size_nm")
    px = float(px) if isinstance(px, (int, float)) and not isinstance(px, bool) and px > 0 else None
    particles = header.get("particles") or []
    tracks = [{"id": p.get("track_id"), "y": float(p["centroid_px"][0]) / b, "x": float(p["centroid_px"][1]) / b,
               "d_nm": p.get("diameter_nm")} for p in particles]
    diam = [float(p["diameter_nm"]) for p in particles if isinstance(p.get("diameter_nm"), (int, float))
            and not p.get("touches_border")]
    hist: dict[str, Any] = {"edges": [], "counts": []}
    if diam:
        hi = max(diam)
        step = max(_scale_bar_nm(hi * 5.0 / 10.0) if hi > 0 else 1.0, 1e-3)
        n = int(hi // step) + 1
        counts = np.bincount(np.floor(np.asarray(diam) / step).astype(int), minlength=n)[:n]
        hist = {"edges": [round(i * step, 4) for i in range(n + 1)], "counts": counts.tolist()}
    drift = header.get("drift") or {}
    bar = None
    if px is not None:
        width_nm = shape[1] * b * px
        nm = _scale_bar_nm(width_nm)
        bar = {"nm": nm, "px": nm / (px * b)}
    return {
        "seq": seq, "series": str(header.get("series", "")), "frame": header.get("frame"),
        "model": header.get("model"), "width": shape[1], "height": shape[0], "bin": b,
        "pixel_size_nm": px, "scale_bar": bar, "tracks": tracks,
        "particle_count": int(header.get("particle_count", len(particles))),
        "mean_diameter_nm": (sum(diam) / len(diam)) if diam else None,
        "drift": {"status": drift.get("status", "unknown"), "reasons": list(drift.get("reasons") or [])},
        "registration": header.get("registration"),
        "events": header.get("events") or [],
        "history": [{"frame": f, "count": c, "mean_d": d} for f, c, d in history],
        "histogram": hist,
        "conditions": {k: meta.get(k) for k in ("pixel_size_nm", "dose_e_per_A2", "voltage_kv", "temperature_C",
                                                "pressure_Pa") if meta.get(k) is not None},
    }


#: where the page takes its first state (view_page.html)
_STATE_PLACEHOLDER = b"/*FRINGELIVE_STATE*/null"


class ViewServer:
    """The view's HTTP server and render thread; :meth:`offer` is called by the finisher."""

    def __init__(self, settings: ViewSettings, registry: CollectorRegistry) -> None:
        self.settings = settings
        r = registry
        self.shown = Counter("fringelive_view_frames_shown", "Frames rendered for the live view.", registry=r)
        self.dropped = Counter("fringelive_view_frames_dropped",
                               "Frames offered to the live view but not shown (display only; the pipeline "
                               "processed them).", registry=r)
        self.clients = Gauge("fringelive_view_clients", "Connected live-view (SSE) clients.", registry=r)
        self._slot: ViewFrame | None = None
        self._slot_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._state_cond = threading.Condition()
        self._state: dict[str, Any] | None = None
        self._png: bytes = png_bytes(np.zeros((8, 8, 3), np.uint8))
        self._history: dict[str, deque] = {}
        self._page = resources.files("fringelive.daemon").joinpath("view_page.html").read_bytes()
        self._httpd = ThreadingHTTPServer((settings.host, settings.port), self._handler())
        self._httpd.daemon_threads = True
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host}:{port}/"
        self._threads = [threading.Thread(target=self._httpd.serve_forever, name="view-http", daemon=True),
                         threading.Thread(target=self._render_loop, name="view-render", daemon=True)]
        for t in self._threads:
            t.start()

    # -- the finisher's side ------------------------------------------------------------------
    def offer(self, frame: ViewFrame) -> bool:
        """Put ``frame`` into the one-slot mailbox; never blocks. False when it was dropped at
        once (the slot was being read)."""
        if not self._slot_lock.acquire(blocking=False):
            self.dropped.inc()
            return False
        try:
            if self._slot is not None:
                self.dropped.inc()
            self._slot = frame
        finally:
            self._slot_lock.release()
        self._wake.set()
        return True

    # -- the render thread --------------------------------------------------------------------
    def _take(self) -> ViewFrame | None:
        with self._slot_lock:
            frame, self._slot = self._slot, None
            return frame

    def _render_loop(self) -> None:
        period = 1.0 / self.settings.max_fps
        seq = 0
        while not self._stop.is_set():
            if not self._wake.wait(0.2):
                continue
            self._wake.clear()
            frame = self._take()
            if frame is None:
                continue
            t0 = time.monotonic()
            try:
                rgb, b = _display(np.asarray(frame.pixels), np.asarray(frame.mask))
                h = frame.header
                series = str(h.get("series", ""))
                hist = self._history.setdefault(series, deque(maxlen=HISTORY))
                state_pre = render_state(h, rgb.shape[:2], b, seq + 1, [])
                hist.append((h.get("frame"), state_pre["particle_count"], state_pre["mean_diameter_nm"]))
                state_pre["history"] = [{"frame": f, "count": c, "mean_d": d} for f, c, d in hist]
                png = png_bytes(rgb)
            except Exception:  # noqa: BLE001 - a display problem must never reach the pipeline
                self.dropped.inc()
                continue
            seq += 1
            with self._state_cond:
                self._png, self._state = png, state_pre
                self._state_cond.notify_all()
            self.shown.inc()
            rest = period - (time.monotonic() - t0)
            if rest > 0:
                self._stop.wait(rest)

    # -- HTTP ----------------------------------------------------------------------------------
    def page_with(self, state: dict[str, Any] | None) -> bytes:
        """The page with the latest state embedded, so it draws on load without a round trip
        (``</`` escaped: the JSON cannot end the script element)."""
        text = json.dumps(state).replace("</", "<\\/")
        return self._page.replace(_STATE_PLACEHOLDER, text.encode())

    def _wait_state(self, after: int, timeout: float) -> dict[str, Any] | None:
        with self._state_cond:
            self._state_cond.wait_for(lambda: self._stop.is_set() or (self._state is not None
                                                                     and self._state["seq"] > after), timeout)
            return self._state if self._state is not None and self._state["seq"] > after else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        view = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet: the daemon logs, not the view
                pass

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    with view._state_cond:
                        state = view._state
                    self._send(200, "text/html; charset=utf-8", view.page_with(state))
                elif path == "/frame.png":
                    with view._state_cond:
                        png = view._png
                    self._send(200, "image/png", png)
                elif path == "/state.json":
                    with view._state_cond:
                        state = view._state
                    self._send(200, "application/json", json.dumps(state).encode())
                elif path == "/events":
                    self._events()
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _refuse(self) -> None:
                self.send_response(405)
                self.send_header("Allow", "GET")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815 - read-only

            def _events(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                view.clients.inc()
                seen = 0
                try:
                    while not view._stop.is_set():
                        state = view._wait_state(seen, 10.0)
                        if state is None:
                            self.wfile.write(b": keep-alive\n\n")
                        else:
                            seen = state["seq"]
                            self.wfile.write(b"data: " + json.dumps(state).encode() + b"\n\n")
                        self.wfile.flush()
                except OSError:
                    pass
                finally:
                    view.clients.dec()

        return Handler

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._state_cond:
            self._state_cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        for t in self._threads:
            t.join(2.0)
