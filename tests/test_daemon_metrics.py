"""Daemon metrics: a running daemon scraped over HTTP (checked with ``promtool check metrics``),
and the collectors, rolling stats and closable HTTP server on their own."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import urllib.request
from typing import Any, Iterator

import numpy as np
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from fringelive.daemon.config import DaemonConfig
from fringelive.daemon.metrics import DaemonMetrics, MetricsServer, RollingStats, new_registry
from fringelive.daemon.protocol import decode_result, encode_frame
from fringelive.daemon.server import Daemon

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return r.read().decode("utf-8")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@contextlib.contextmanager
def _connected(d: Daemon) -> Iterator[tuple[Any, Any]]:
    """A results SUB (topic ``result``) and an ingest PUSH connected to ``d``."""
    ctx = zmq.Context.instance()
    with ctx.socket(zmq.SUB) as sub, ctx.socket(zmq.PUSH) as push:
        sub.subscribe(b"result")
        sub.connect(d.endpoints["results"])
        push.connect(d.endpoints["ingest"])
        time.sleep(0.3)
        yield sub, push


def test_scrape_running_daemon_and_promtool(tiny_bundle: Any) -> None:
    from prometheus_client import CollectorRegistry

    cfg = DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0"}, "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"host": "127.0.0.1", "port": 0},
        "model": {"bundle": str(tiny_bundle.path), "intra_op_threads": 1},
    })
    registry = CollectorRegistry()
    with Daemon(cfg, registry=registry) as d:
        url = d.endpoints["metrics"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        with _connected(d) as (sub, push):
            push.send_multipart([b"junk"])
            push.send_multipart(encode_frame(np.random.default_rng(0).poisson(100, (128, 128)).astype(np.uint16),
                                             series="m", frame=0, pixel_size_nm=0.02))
            assert sub.poll(30_000)
            header, _, _ = decode_result(sub.recv_multipart())
        deadline = time.monotonic() + 10
        while d.metrics.counts()["processed"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        text = scrape(url)
    got = samples(text)
    assert got[("fringelive_frames_received_total", ())] == 2
    assert got[("fringelive_frames_processed_total", ())] == 1
    assert got[("fringelive_frames_rejected_total", (("reason", "bad_parts"),))] == 1
    assert got[("fringelive_frames_rejected_total", (("reason", "pipeline_error"),))] == 0
    assert got[("fringelive_frames_dropped_total", (("reason", "queue_full"),))] == 0
    assert got[("fringelive_frames_dropped_total", (("reason", "shutdown"),))] == 0
    assert got[("fringelive_frame_latency_seconds_count", ())] == 1
    assert got[("fringelive_stage_latency_seconds_count", (("stage", "inference"),))] == 1
    assert got[("fringelive_stage_latency_seconds_count", (("stage", "queue"),))] == 1
    assert got[("fringelive_stage_latency_seconds_count", (("stage", "publish"),))] == 1
    assert got[("fringelive_particles_per_frame_count", ())] == 1
    assert got[("fringelive_particles_per_frame_sum", ())] == header["particle_count"]
    assert got[("fringelive_queue_depth", ())] == 0
    assert got[("fringelive_queue_capacity", ())] == 4
    info = [labels for (name, labels) in got if name == "fringelive_bundle_info"]
    assert len(info) == 1
    labels = dict(info[0])
    assert labels["name"] == tiny_bundle.name and labels["schema"] == "1" and labels["members"] == "1"
    assert labels["backend"] == "auto" and labels["device"] == "cpu"  # the configured backend (default "auto")
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not on PATH (apt-get install prometheus); the scrape itself was checked")
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_flatfield_refits_and_uncertain_components_are_counted(tiny_bundle: Any) -> None:
    """A frame whose degree-2 flat field is not positive (a large dark particle over a corner) is
    processed, not rejected, and counted by the degree used; components below the particle
    confidence are counted as the result headers say."""
    from prometheus_client import CollectorRegistry

    cfg = DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0"}, "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"host": "127.0.0.1", "port": 0},
        "model": {"bundle": str(tiny_bundle.path), "intra_op_threads": 1},
        # the tiny random-weight net calls most pixels ~0.999: a threshold at its median, a cut above
        "pipeline": {"threshold": 0.9995}, "particles": {"min_mean_probability": 0.9998},
    })
    n = 256
    yy, xx = np.mgrid[:n, :n] / n
    rng = np.random.default_rng(0)
    corner = rng.poisson(np.where(yy ** 2 + (xx - 1.0) ** 2 < 0.5 ** 2, 60.0, 200.0)).astype(np.uint16)
    plain = rng.poisson(200.0, (n, n)).astype(np.uint16)
    with Daemon(cfg, registry=CollectorRegistry()) as d:
        with _connected(d) as (sub, push):
            uncertain = 0
            for i, frame in enumerate((corner, plain)):
                push.send_multipart(encode_frame(frame, series="f", frame=i, pixel_size_nm=0.05))
                assert sub.poll(30_000)
                header, _, _ = decode_result(sub.recv_multipart())
                uncertain += header["particle_summary"]["uncertain"]
                assert all(q["mean_probability"] >= 0.9998 for q in header["particles"])
        deadline = time.monotonic() + 10
        while d.metrics.counts()["processed"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        got = samples(scrape(d.endpoints["metrics"]))
    assert got[("fringelive_flatfield_refits_total", (("degree", "1x1"),))] == 1
    assert ("fringelive_flatfield_refits_total", (("degree", "2x2"),)) not in got
    assert uncertain > 0 and got[("fringelive_uncertain_components_total", ())] == uncertain
    assert got[("fringelive_frames_rejected_total", (("reason", "pipeline_error"),))] == 0


def test_metrics_server_port_0_and_close() -> None:
    registry = new_registry(process_collectors=False)
    m = DaemonMetrics(registry)
    m.frame_received()
    with MetricsServer(registry, "127.0.0.1", 0) as server:
        assert server.port > 0
        assert "fringelive_frames_received_total 1.0" in scrape(server.url)
    with MetricsServer(registry, "127.0.0.1", server.port) as again:  # the port is free again
        assert "fringelive_frames_received_total 1.0" in scrape(again.url)
    with pytest.raises(ValueError, match="metrics port must be an integer in 0..65535, got 70000"):
        MetricsServer(registry, "127.0.0.1", 70000)


def test_accounting_counts_and_identity() -> None:
    m = DaemonMetrics(new_registry(process_collectors=False), reject_reasons=("bad_parts",))
    for _ in range(5):
        m.frame_received()
    m.frame_processed()
    m.frame_dropped("queue_full", 2)
    m.frame_rejected("bad_parts")
    c = m.counts()
    assert c == {"received": 5, "processed": 1, "dropped": {"queue_full": 2}, "rejected": {"bad_parts": 1},
                 "in_flight": 1}
    assert m.registry.get_sample_value("fringelive_frames_dropped_total", {"reason": "queue_full"}) == 2
    assert m.registry.get_sample_value("fringelive_frames_rejected_total", {"reason": "bad_parts"}) == 1
    m.observe_stages({"inference": 12.5, "total": 20.0})
    assert m.registry.get_sample_value("fringelive_stage_latency_seconds_sum", {"stage": "inference"}) == 0.0125
    assert m.registry.get_sample_value("fringelive_stage_latency_seconds_count", {"stage": "total"}) is None


def test_rolling_stats_percentiles() -> None:
    r = RollingStats(window=100)
    assert r.summary()["frames_in_window"] == 0 and r.summary()["latency_ms"] == {}
    for i in range(1, 201):  # only the last 100 (101..200) count
        r.add(float(i), {"inference": float(i) / 2}, particles=i % 3)
    s = r.summary()
    assert s["frames_in_window"] == 100 and s["window"] == 100
    e2e = s["latency_ms"]["end_to_end"]
    assert (e2e["p50"], e2e["p90"], e2e["p99"], e2e["max"]) == (150.0, 190.0, 199.0, 200.0)
    assert s["latency_ms"]["inference"]["max"] == 100.0
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        RollingStats(0)
