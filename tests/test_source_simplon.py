"""The ``dectris`` source with ``control = true`` (daemon/sources/simplon.py): fringelive drives the
detector through the SIMPLON REST API. Here against a real HTTP server on loopback that serves
the SIMPLON endpoints the source uses (``GET /detector/api/version/``, ``PUT
/detector/api/1.8.0/config/<key>``, ``PUT /stream/api/1.8.0/config/mode``, ``PUT
/detector/api/1.8.0/command/{arm,trigger,disarm}``) and, like a DCU, pushes Stream V2 messages
on a ZeroMQ PUSH socket: ``start`` on arm, ``nimages`` images per trigger, ``end`` on disarm.
The same control runs against ALBA's eiger-simulator in tests/test_source_eigersim.py (slow)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import numpy as np
import pytest
import zmq

from fringelive.daemon.config import ConfigError, DaemonConfig
from fringelive.daemon.protocol import decode_result
from fringelive.daemon.server import Daemon, DaemonError

from polling import wait_until  # tests/polling.py

cbor2 = pytest.importorskip("cbor2")
pytest.importorskip("lz4")

from test_source_dectris import px, v2_end, v2_image, v2_start  # noqa: E402  (tests/ is on sys.path)

V = "1.8.0"


class Dcu:
    """A SIMPLON REST server + Stream V2 PUSH socket on loopback. ``calls``: what it was asked,
    in order; ``images_on_arm``: push the images right after arm (a hardware trigger, ``exts``)."""

    def __init__(self, images_on_arm: bool = True) -> None:
        self.calls: list[str] = []
        self.config: dict[str, Any] = {"nimages": 1, "ntrigger": 1, "trigger_mode": "ints", "count_time": 0.01}
        self.stream_mode = "disabled"
        self.series = 0
        self.armed = False
        self.triggers = 0
        self.images_on_arm = images_on_arm
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.linger = 0
        self.push.bind("tcp://127.0.0.1:0")
        self.stream = self.push.getsockopt_string(zmq.LAST_ENDPOINT)
        dcu = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/detector/api/version/":
                    self._answer(200, {"value": V, "value_type": "string"})
                else:
                    self._answer(404, {"error": self.path})

            def do_PUT(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                code, answer = dcu.handle(self.path, body.get("value"))
                self._answer(code, answer)

        self.http = HTTPServer(("127.0.0.1", 0), Handler)   # one thread: the PUSH socket is used by it only
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, path: str, value: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if parts[:3] == ["detector", "api", V] and parts[3] == "config" and parts[4] in self.config:
            if parts[4] == "nimages" and value > 1000:
                return 400, {"error": f"nimages {value} out of range"}
            if self.armed:
                return 400, {"error": "configuration while armed"}
            self.config[parts[4]] = value
            self.calls.append(f"config/{parts[4]}={value}")
            return 200, [parts[4]]
        if parts == ["stream", "api", V, "config", "mode"]:
            self.stream_mode = value
            self.calls.append(f"stream/config/mode={value}")
            return 200, ["mode"]
        if parts[:4] == ["detector", "api", V, "command"]:
            cmd = parts[4]
            self.calls.append(cmd)
            uid = f"uid-{self.series}"
            if cmd == "arm":
                self.series += 1
                self.armed = True
                self.triggers = 0
                uid = f"uid-{self.series}"
                self._send(v2_start(self.series, uid, (48, 64)))
                if self.images_on_arm and self.config["trigger_mode"] == "exts":
                    for i in range(self.config["nimages"] * self.config["ntrigger"]):
                        self._send(v2_image(self.series, uid, i, px(i, (48, 64))))
                return 200, {"sequence id": self.series}
            if cmd == "trigger":
                if not self.armed or self.config["trigger_mode"] != "ints":
                    return 400, {"error": "not armed for internal triggers"}
                n = self.config["nimages"]
                self.triggers += 1
                for i in range((self.triggers - 1) * n, self.triggers * n):
                    self._send(v2_image(self.series, uid, i, px(i, (48, 64))))
                return 200, {"sequence id": self.series}
            if cmd == "disarm":
                if self.armed:
                    self._send(v2_end(self.series, uid))
                self.armed = False
                return 200, {"sequence id": self.series}
        return 404, {"error": path}

    def _send(self, msg: bytes) -> None:
        if self.stream_mode == "enabled":
            self.push.send(msg)

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.push.close(linger=0)
        self.ctx.term()


@pytest.fixture()
def dcu() -> Any:
    d = Dcu()
    yield d
    d.close()


def daemon_config(bundle: Any, source: dict[str, Any]) -> DaemonConfig:
    return DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0"}, "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"enabled": False},
        "queue": {"size": 4, "policy": "block"},
        "model": {"bundle": str(bundle.path), "intra_op_threads": 1, "backend": "onnxruntime"},
        "source": [{"kind": "dectris", "name": "eiger", "version": "v2", "control": True, "pixel_size_nm": 0.02,
                    "voltage_kv": 300.0, **source}]})


def test_control_keys_are_checked() -> None:
    base = {"kind": "dectris", "endpoint": "tcp://dcu:31001", "control": True}
    cfg = DaemonConfig.from_dict({"source": [base]})
    assert cfg.source[0].api_url == "http://dcu"
    assert DaemonConfig.from_dict({"source": [{**base, "api": "http://dcu:8080/"}]}).source[0].api_url == "http://dcu:8080"
    for key, value, match in [("trigger_mode", "inte", r"trigger_mode must be one of \['ints', 'exts'\], got 'inte'"),
                              ("nimages", 0, r"nimages must be an integer in 1\.\.10000000, got 0"),
                              ("ntrigger", 2.5, r"ntrigger must be an integer"),
                              ("api", "dcu:80", r"api must be the SIMPLON base URL http://HOST\[:PORT\], got 'dcu:80'"),
                              ("api_version", "1.8", r"api_version must look like \"1\.8\.0\", got '1\.8'"),
                              ("count_time", -0.1, r"count_time must be a number of seconds in \(0, 3600\], got -0\.1"),
                              ("series_count", -1, r"series_count must be an integer >= 0"),
                              ("control", "yes", r"control must be true or false, got 'yes'")]:
        with pytest.raises(ConfigError, match=r"source\[0\]\." + match):
            DaemonConfig.from_dict({"source": [{**base, key: value}]})
    with pytest.raises(ConfigError, match=r"source\[0\]\.trigger_mode is only used with control = true"):
        DaemonConfig.from_dict({"source": [{"kind": "dectris", "trigger_mode": "ints"}]})


def test_start_fails_fast_when_simplon_does_not_answer(tiny_bundle: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]   # nothing listens there once closed
    cfg = daemon_config(tiny_bundle, {"endpoint": "tcp://127.0.0.1:1", "api": f"http://127.0.0.1:{port}"})
    t = time.monotonic()
    with pytest.raises(ConfigError, match=rf"source 'eiger': control = true but the SIMPLON API at "
                                          rf"http://127\.0\.0\.1:{port} does not answer"):
        with Daemon(cfg):
            pass
    assert time.monotonic() - t < 10


def results_from(d: Daemon, n: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.subscribe(b"")
    sub.connect(d.endpoints["results"])
    out: list[dict[str, Any]] = []
    t_end = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < t_end:
        if sub.poll(500):
            parts = sub.recv_multipart()
            if parts[0] == b"result":
                out.append(decode_result(parts)[0])
    sub.close(linger=0)
    return out


@pytest.mark.usefixtures("one_torch_thread")
def test_daemon_arms_triggers_and_disarms_through_simplon(tiny_bundle: Any, dcu: Dcu) -> None:
    cfg = daemon_config(tiny_bundle, {"endpoint": dcu.stream, "api": dcu.url, "nimages": 2, "ntrigger": 2,
                                      "count_time": 0.05, "series_count": 2})
    with Daemon(cfg) as d:
        results = results_from(d, 8)
        src = d._sources[0]
        wait_until(lambda: src.control.series_done == 2, 30.0, "two series done")
        wait_until(lambda: d.metrics.counts()["in_flight"] == 0, 20.0, "idle")
        counts = d.status()["sources"]["eiger"]
        seen = list(src.series_seen)
        calls = list(src.control.calls)
    assert dcu.calls[:5] == ["config/nimages=2", "config/ntrigger=2", "config/trigger_mode=ints",
                             "config/count_time=0.05", "stream/config/mode=enabled"]
    assert dcu.calls[5:] == ["arm", "trigger", "trigger", "disarm"] * 2 == calls[5:]
    assert not dcu.armed
    assert sorted((r["series"], r["frame"]) for r in results) == [(f"uid-{s}", i) for s in (1, 2) for i in range(4)]
    assert seen == [("uid-1", "start"), ("uid-1", "end"), ("uid-2", "start"), ("uid-2", "end")]
    assert counts == {"received": 8, "processed": 8, "dropped": {}, "rejected": {}, "in_flight": 0}


@pytest.mark.usefixtures("one_torch_thread")
def test_external_triggers_and_a_stop_while_armed_disarms(tiny_bundle: Any) -> None:
    dcu = Dcu()
    try:   # exts: fringelive arms, the "hardware" triggers (images right after arm), it disarms
        cfg = daemon_config(tiny_bundle, {"endpoint": dcu.stream, "api": dcu.url, "nimages": 3,
                                          "trigger_mode": "exts", "series_count": 1})
        with Daemon(cfg) as d:
            results = results_from(d, 3)
            wait_until(lambda: d._sources[0].control.series_done == 1, 30.0, "the series done")
        assert dcu.calls[3:] == ["stream/config/mode=enabled", "arm", "disarm"] and len(results) == 3
    finally:
        dcu.close()
    dcu = Dcu(images_on_arm=False)
    try:   # no trigger comes: the daemon stops while the detector is armed, and disarms it
        cfg = daemon_config(tiny_bundle, {"endpoint": dcu.stream, "api": dcu.url, "trigger_mode": "exts"})
        with Daemon(cfg):
            wait_until(lambda: dcu.armed, 20.0, "armed")
        assert dcu.calls[-2:] == ["arm", "disarm"] and not dcu.armed
    finally:
        dcu.close()


@pytest.mark.usefixtures("one_torch_thread")
def test_a_failing_simplon_call_fails_the_daemon_with_the_answer(tiny_bundle: Any, dcu: Dcu) -> None:
    cfg = daemon_config(tiny_bundle, {"endpoint": dcu.stream, "api": dcu.url, "nimages": 5000})
    with pytest.raises(DaemonError, match=r"SIMPLON PUT http://127\.0\.0\.1:\d+/detector/api/1\.8\.0/config/nimages "
                                          r"answered HTTP 400: .*nimages 5000 out of range"):
        with Daemon(cfg) as d:
            t_end = time.monotonic() + 30
            while time.monotonic() < t_end:
                d.wait(0.2)
    assert "arm" not in dcu.calls
