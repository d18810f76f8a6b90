"""The ``dectris`` source against a third-party DECTRIS simulator from PyPI: ALBA's
``eiger-simulator`` (SIMPLON REST + Stream V1 over ZeroMQ, bitshuffle/LZ4 compressed with the
``bitshuffle`` package), fed with our frames through its HDF5 dataset. The test plays the
detector's control software (configure, arm, trigger, disarm over REST); fringelive stays a
passive stream client. A second test lets fringelive drive the simulator (``control = true``:
configure, arm, trigger, disarm through the simulator's SIMPLON REST API). It needs the simulator's own virtual environment (``.ci/run`` builds
``.venv-eigersim``; or set ``FRINGELIVE_EIGER_SIMULATOR`` to its ``eiger-simulator`` script)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from fringelive.daemon.config import DaemonConfig
from fringelive.daemon.protocol import decode_result
from fringelive.daemon.server import Daemon

from polling import wait_until  # tests/polling.py

ROOT = Path(__file__).resolve().parents[1]
SIMULATOR = Path(os.environ.get("FRINGELIVE_EIGER_SIMULATOR", ROOT / ".venv-eigersim" / "bin" / "eiger-simulator"))
API = "1.6.0"   # the SIMPLON version eiger-simulator 0.5 serves

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SIMULATOR.is_file(), reason=f"eiger-simulator not installed at {SIMULATOR}")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frames(n: int) -> np.ndarray:
    return np.stack([np.random.default_rng(i).poisson(100.0, (64, 96)).astype(np.uint16) for i in range(n)])


class Simulator:
    def __init__(self, dataset: Path, log: Path) -> None:
        self.http, self.stream = free_port(), free_port()
        self.log = open(log, "w")
        self.proc = subprocess.Popen([str(SIMULATOR), "--host", "127.0.0.1", "--port", str(self.http), "--zmq",
                                      f"tcp://127.0.0.1:{self.stream}", "--dataset", str(dataset),
                                      "--log-level", "warning"], stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=dataset.parent)
        wait_until(self._up, 60.0, "eiger-simulator's REST API")

    def _up(self) -> bool:
        assert self.proc.poll() is None, f"eiger-simulator exited: {Path(self.log.name).read_text()[-2000:]}"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.http}/detector/api/version/", timeout=1)
            return True
        except OSError:
            return False

    def put(self, path: str, value: Any = None) -> None:
        body = json.dumps({} if value is None else {"value": value}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=body, method="PUT",
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=60).read()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.mark.usefixtures("one_torch_thread")
def test_daemon_on_eiger_simulator_one_result_per_image_series_kept(tiny_bundle: Any, tmp_path: Path) -> None:
    import h5py

    data = frames(3)
    with h5py.File(tmp_path / "ours.h5", "w") as f:
        f.create_dataset("entry/data/data_000001", data=data)
    sim = Simulator(tmp_path / "ours.h5", tmp_path / "sim.log")
    try:
        for key, value in [("x_pixels_in_detector", 96), ("y_pixels_in_detector", 64), ("nimages", 3),
                           ("count_time", 0.05)]:
            sim.put(f"/detector/api/{API}/config/{key}", value)
        sim.put(f"/stream/api/{API}/config/mode", "enabled")
        sim.put(f"/detector/api/{API}/command/initialize")       # binds the stream socket
        cfg = DaemonConfig.from_dict({
            "ingest": {"endpoint": "tcp://127.0.0.1:0"}, "results": {"endpoint": "tcp://127.0.0.1:0"},
            "control": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"enabled": False},
            "model": {"bundle": str(tiny_bundle.path), "intra_op_threads": 1, "backend": "onnxruntime"},
            "source": [{"kind": "dectris", "endpoint": f"tcp://127.0.0.1:{sim.stream}", "name": "eiger",
                        "version": "v1", "pixel_size_nm": 0.02, "voltage_kv": 300.0}]})
        with Daemon(cfg) as d:
            sub = zmq.Context.instance().socket(zmq.SUB)
            sub.subscribe(b"")
            sub.connect(d.endpoints["results"])
            time.sleep(1.0)
            for _ in range(2):   # two series: arm → header, trigger → 3 images, then the end of series
                # counted before arming: the end of series may be decoded before the trigger's
                # HTTP answer comes back (the simulator sends it when the acquisition task ends)
                n_end = sum(1 for _, kind in d._sources[0].series_seen if kind == "end") + 1
                sim.put(f"/detector/api/{API}/command/arm")
                sim.put(f"/detector/api/{API}/command/trigger")
                wait_until(lambda: sum(1 for _, kind in d._sources[0].series_seen if kind == "end") >= n_end, 30.0,
                           "the end of the series")
                sim.put(f"/detector/api/{API}/command/disarm")
            results = []
            t_end = time.monotonic() + 60
            while len(results) < 6 and time.monotonic() < t_end:
                if sub.poll(1000):
                    parts = sub.recv_multipart()
                    assert parts[0] == b"result", parts[:2]
                    results.append(decode_result(parts)[0])
            wait_until(lambda: d.metrics.counts()["in_flight"] == 0, 20.0, "idle")
            counts = d.status()["sources"]["eiger"]
            seen = list(d._sources[0].series_seen)
            sub.close(linger=0)
    finally:
        sim.close()
    assert [(r["series"], r["frame"]) for r in results] == [(s, i) for s in ("1", "2") for i in range(3)]
    assert seen == [("1", "start"), ("1", "end"), ("2", "start"), ("2", "end")]
    assert all(r["meta"]["exposure_s"] > 0 and r["meta"]["pixel_size_nm"] == 0.02 for r in results)
    assert counts == {"received": 6, "processed": 6, "dropped": {}, "rejected": {}, "in_flight": 0}


@pytest.mark.usefixtures("one_torch_thread")
def test_daemon_drives_eiger_simulator_through_simplon(tiny_bundle: Any, tmp_path: Path) -> None:
    import h5py

    with h5py.File(tmp_path / "ours.h5", "w") as f:
        f.create_dataset("entry/data/data_000001", data=frames(3))
    sim = Simulator(tmp_path / "ours.h5", tmp_path / "sim.log")
    try:   # the facility's one-time setup: geometry, and initialize (binds the stream socket)
        for key, value in [("x_pixels_in_detector", 96), ("y_pixels_in_detector", 64)]:
            sim.put(f"/detector/api/{API}/config/{key}", value)
        sim.put(f"/detector/api/{API}/command/initialize")
        cfg = DaemonConfig.from_dict({
            "ingest": {"endpoint": "tcp://127.0.0.1:0"}, "results": {"endpoint": "tcp://127.0.0.1:0"},
            "control": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"enabled": False},
            "model": {"bundle": str(tiny_bundle.path), "intra_op_threads": 1, "backend": "onnxruntime"},
            "source": [{"kind": "dectris", "endpoint": f"tcp://127.0.0.1:{sim.stream}", "name": "eiger",
                        "version": "v1", "pixel_size_nm": 0.02, "voltage_kv": 300.0, "control": True,
                        "api": f"http://127.0.0.1:{sim.http}", "api_version": API, "nimages": 3, "count_time": 0.05,
                        "series_count": 2}]})
        with Daemon(cfg) as d:
            sub = zmq.Context.instance().socket(zmq.SUB)
            sub.subscribe(b"")
            sub.connect(d.endpoints["results"])
            src = d._sources[0]
            wait_until(lambda: src.control.series_done == 2, 60.0, "two series run by fringelive")
            results = []
            t_end = time.monotonic() + 60
            while len(results) < 6 and time.monotonic() < t_end:
                if sub.poll(1000):
                    parts = sub.recv_multipart()
                    if parts[0] == b"result":
                        results.append(decode_result(parts)[0])
            wait_until(lambda: d.metrics.counts()["in_flight"] == 0, 20.0, "idle")
            counts = d.status()["sources"]["eiger"]
            seen, calls = list(src.series_seen), list(src.control.calls)
            sub.close(linger=0)
        state = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{sim.http}/detector/api/{API}/config/nimages",
                                                  timeout=10).read())
    finally:
        sim.close()
    assert calls == ["config/nimages=3", "config/ntrigger=1", "config/trigger_mode=ints", "config/count_time=0.05",
                     "stream/config/mode=enabled"] + ["arm", "trigger", "disarm"] * 2
    assert state["value"] == 3
    assert [(r["series"], r["frame"]) for r in results] == [(s, i) for s in ("1", "2") for i in range(3)]
    assert seen == [("1", "start"), ("1", "end"), ("2", "start"), ("2", "end")]
    assert counts == {"received": 6, "processed": 6, "dropped": {}, "rejected": {}, "in_flight": 0}
