"""The ``deapi`` source against the simulated DE-Server that the ``deapi`` package ships
(``python -m deapi.simulated_server.initialize_server PORT``), end to end in a daemon
(``control = true``), and the passive mode's start-up there (that server serves one connection
at a time with its own state, so an operator's acquisition cannot be watched on it: the passive
mode is tested against de-twin's multi-client DE-Server in tests/test_source_detwin.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Any

import pytest
import zmq

from fringelive.daemon.config import ConfigError, DaemonConfig
from fringelive.daemon.protocol import decode_result
from fringelive.daemon.server import Daemon

from polling import wait_until  # tests/polling.py

pytest.importorskip("deapi")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def de_server() -> Any:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-u", "-m", "deapi.simulated_server.initialize_server", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "started" in line, line
    yield port
    proc.terminate()
    proc.wait(10)


def test_config_checks_values() -> None:
    assert DaemonConfig.from_dict({"source": [{"kind": "deapi"}]}).source[0].control is False   # passive by default
    with pytest.raises(ConfigError, match=r"source\[0\]\.frame_type must be one of \['singleframe_integrated', .*"
                                          r"got 'virtual_image0'"):
        DaemonConfig.from_dict({"source": [{"kind": "deapi", "frame_type": "virtual_image0"}]})
    with pytest.raises(ConfigError, match=r"source\[0\]\.control must be true or false, got 'passive'"):
        DaemonConfig.from_dict({"source": [{"kind": "deapi", "control": "passive"}]})
    with pytest.raises(ConfigError, match=r"source\[0\]\.port must be in 1\.\.65535, got 0"):
        DaemonConfig.from_dict({"source": [{"kind": "deapi", "control": True, "port": 0}]})


@pytest.mark.usefixtures("one_torch_thread")
def test_daemon_segments_frames_from_the_deapi_simulated_server(tiny_bundle: Any, de_server: int) -> None:
    from deapi import Client

    c = Client()
    c.usingMmf = False
    c.connect(port=de_server)   # as the operator would: a small ROI, no scan
    c["Hardware ROI Size X"] = 128
    c["Hardware ROI Size Y"] = 128
    c.scan(enable="Off")
    c["Frames Per Second"] = 50
    c.disconnect()
    cfg = DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0"}, "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"enabled": False},
        "queue": {"size": 2, "policy": "block"},
        "model": {"bundle": str(tiny_bundle.path), "intra_op_threads": 1, "backend": "onnxruntime"},
        "source": [{"kind": "deapi", "port": de_server, "control": True, "name": "de", "poll_s": 0.05,
                    "pixel_size_nm": 0.02, "voltage_kv": 300.0}]})
    with Daemon(cfg) as d:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.subscribe(b"")
        sub.connect(d.endpoints["results"])
        results = []
        t_end = time.monotonic() + 60
        while len(results) < 3 and time.monotonic() < t_end:
            if sub.poll(1000):
                parts = sub.recv_multipart()
                assert parts[0] == b"result", parts[:2]
                results.append(decode_result(parts)[0])
        sub.close(linger=0)
        counts = d.stop()
        per_source = d.metrics.sources.counts()["de"]
    assert len(results) == 3
    frames = [r["frame"] for r in results]
    assert frames == sorted(frames) and len(set(frames)) == 3
    assert {r["series"] for r in results} == {"Test"}          # the simulated server's dataset name
    assert results[0]["meta"]["camera"] == "TestCamera" and results[0]["meta"]["pixel_size_nm"] == 0.02
    assert results[0]["meta"]["tags"]["de_acq_index"] == 0
    assert per_source["in_flight"] == 0 and per_source["received"] == (
        per_source["processed"] + sum(per_source["dropped"].values()) + sum(per_source["rejected"].values()))
    assert counts["in_flight"] == 0


def test_passive_source_attaches_without_acquiring(de_server: int) -> None:
    """Passive: connects, reads the status, takes nothing while DE-Server is idle and never
    starts an acquisition (the simulated server stays idle)."""
    from fringelive.daemon.sources.config import open_source

    cfg = DaemonConfig.from_dict({"source": [{"kind": "deapi", "port": de_server, "name": "de", "poll_s": 0.05}]})
    src = open_source(cfg.source[0])
    assert src is not None
    with src:
        t_end = time.monotonic() + 1.5
        got = []
        while time.monotonic() < t_end:
            item = src.get(0.1)
            if item is not None:
                got.append(item)
        status = src._client["Acquisition Status"]
    assert got == [] and src.acquisitions_seen == 0 and status == "Idle"
