"""Issue #17, the first hour of use, through the command line: ``send`` input checks (2-D/3-D
``.npy``, RGB, ``--stack``/``--grey``), ``frame_too_small``, header typos (``send`` warning, the
daemon's counter and ``unknown_keys``), help texts and README, rejects in the serve log as they
happen, and ``watch --ready-file``. One ``fringelive serve`` subprocess (tiny bundle, loopback,
OS-assigned ports) serves the daemon tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h5py
import numpy as np
import pytest
import zmq

from fringelive.cli import main
from fringelive.daemon.protocol import decode_frame

ROOT = Path(__file__).resolve().parents[1]


# --- helpers ---------------------------------------------------------------------------------

@pytest.fixture
def pull():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.bind("tcp://127.0.0.1:*")
    yield SimpleNamespace(sock=sock, endpoint=sock.getsockopt_string(zmq.LAST_ENDPOINT))
    ctx.destroy(linger=0)


def drain(sock: Any, wait_ms: int = 300) -> list:
    frames = []
    while sock.poll(wait_ms):
        frames.append(decode_frame(sock.recv_multipart()))
    return frames


def run_cli(*args: str) -> int:
    try:
        return main(list(args))
    except SystemExit as e:  # argparse
        return int(e.code or 0)


def start_watch(*args: str) -> tuple[threading.Thread, list[int]]:
    rc: list[int] = []
    thread = threading.Thread(target=lambda: rc.append(run_cli("watch", *args)), daemon=True)
    thread.start()
    return thread, rc


def wait_for_file(path: Path, timeout: float = 20.0) -> None:
    t_end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < t_end, f"{path} never appeared"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def served(tiny_bundle: Any):
    """``fringelive serve`` on the tiny bundle; ``.endpoints``, ``.err`` (stderr lines so far)."""
    cmd = [sys.executable, "-m", "fringelive.cli", "serve", "--bundle", str(tiny_bundle.path),
           "--ingest", "tcp://127.0.0.1:0", "--results", "tcp://127.0.0.1:0", "--control", "tcp://127.0.0.1:0",
           "--metrics-port", "0", "--drain-timeout", "30"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(600, proc.kill)
    watchdog.start()
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    endpoints: dict[str, str] = {}
    try:
        while "metrics" not in endpoints:
            line = proc.stdout.readline()
            assert line, f"serve exited early: {''.join(err)}"
            fields = line.split()
            if len(fields) == 2 and fields[1].startswith(("tcp://", "http://")):
                endpoints[fields[0]] = fields[1]
        yield SimpleNamespace(endpoints=endpoints, err=err, proc=proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()


# --- 1. send input checks ----------------------------------------------------------------------

def test_send_npy_layouts_rgb_grey_and_stack(tmp_path, pull, capsys):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    assert run_cli("send", "--endpoint", pull.endpoint, str(tmp_path / "rgb.npy")) == 2
    err = capsys.readouterr().err
    assert "(64, 48, 3)" in err and "RGB" in err and "--grey" in err
    assert drain(pull.sock, 200) == []  # refused before connecting: nothing sent

    assert run_cli("send", "--endpoint", pull.endpoint, "--grey", str(tmp_path / "rgb.npy")) == 0
    (frame,) = drain(pull.sock)
    assert frame.pixels.shape == (64, 48)
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(frame.pixels, expected, rtol=1e-5)

    np.save(tmp_path / "one.npy", rng.integers(0, 999, (20, 30), dtype=np.uint16))
    np.save(tmp_path / "five.npy", rng.integers(0, 999, (5, 20, 30), dtype=np.uint16))
    assert run_cli("send", "--endpoint", pull.endpoint, str(tmp_path / "one.npy"), str(tmp_path / "five.npy")) == 0
    assert [f.pixels.shape for f in drain(pull.sock)] == [(20, 30)] * 6

    np.save(tmp_path / "ambiguous.npy", rng.integers(0, 999, (40, 20, 30), dtype=np.uint16))
    assert run_cli("send", "--endpoint", pull.endpoint, str(tmp_path / "ambiguous.npy")) == 2
    assert "(40, 20, 30)" in capsys.readouterr().err
    assert run_cli("send", "--endpoint", pull.endpoint, "--stack", str(tmp_path / "ambiguous.npy")) == 0
    assert [f.pixels.shape for f in drain(pull.sock)] == [(20, 30)] * 40


def test_send_colour_png_needs_grey(tmp_path, pull, capsys):
    from PIL import Image

    grey = np.random.default_rng(1).integers(0, 255, (32, 40), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert run_cli("send", "--endpoint", pull.endpoint, str(tmp_path / "rgb.png")) == 2
    assert "--grey" in capsys.readouterr().err
    assert run_cli("send", "--endpoint", pull.endpoint, "--grey", str(tmp_path / "rgb.png"),
                   str(tmp_path / "grey.png")) == 0
    frames = drain(pull.sock)
    assert len(frames) == 2
    for f in frames:  # grey stored as RGB comes back exactly
        np.testing.assert_array_equal(f.pixels, grey)


def test_frame_too_small_is_rejected_at_ingest_naming_the_minimum(served, tmp_path, capsys):
    np.save(tmp_path / "tiny.npy", np.full((8, 8), 400, np.uint16))
    ready = tmp_path / "watch.ready"
    thread, rc = start_watch("--endpoint", served.endpoints["results"], "--count", "1", "--timeout", "60",
                             "--ready-file", str(ready))
    wait_for_file(ready)
    assert run_cli("send", "--endpoint", served.endpoints["ingest"], str(tmp_path / "tiny.npy")) == 0
    thread.join(60)
    assert rc == [0]
    out = capsys.readouterr().out
    assert re.search(r"ERROR frame_too_small shape \[8, 8\] has a side below the minimum 12 px", out), out


# --- 2. header typos ---------------------------------------------------------------------------

def test_unknown_header_keys_warned_counted_and_listed(served, tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.random.default_rng(2).poisson(400, (32, 32)).astype(np.uint16))
    ready, record = tmp_path / "watch.ready", tmp_path / "r.h5"
    thread, rc = start_watch("--endpoint", served.endpoints["results"], "--count", "1", "--timeout", "120",
                             "--ready-file", str(ready), "--record", str(record))
    wait_for_file(ready)
    assert run_cli("send", "--endpoint", served.endpoints["ingest"], "--series", "typo", "--meta",
                   "pixelsize_nm=0.02", "temperature_C=25", "stimulus.bias_V=2", "dose_e_per_A2=423",
                   str(tmp_path / "f.npy")) == 0
    err = capsys.readouterr().err
    assert "unknown header key 'pixelsize_nm' (did you mean 'pixel_size_nm'?)" in err
    assert "temperature_C" not in err and "stimulus" not in err.split("did you mean")[0]
    thread.join(120)
    assert rc == [0]
    with h5py.File(record, "r") as f:
        (header,) = [json.loads(h) for h in f["series"]["typo"]["headers"].asstr()[:]]
    assert header["unknown_keys"] == ["pixelsize_nm"]
    assert header["meta"]["pixelsize_nm"] == 0.02 and header["meta"]["temperature_C"] == 25
    text = urllib.request.urlopen(served.endpoints["metrics"], timeout=10).read().decode()
    assert 'fringelive_header_unknown_keys_total{key="pixelsize_nm"} 1.0' in text
    assert "temperature_C" not in text.split("fringelive_header_unknown_keys_total")[-1].splitlines()[0]


def test_send_warns_for_a_free_unknown_key_without_a_near_match(tmp_path, pull, capsys):
    np.save(tmp_path / "f.npy", np.zeros((16, 16), np.uint16))
    assert run_cli("send", "--endpoint", pull.endpoint, "--meta", "zzqx=1", "camera_gain_counts_per_e=2",
                   str(tmp_path / "f.npy")) == 0
    err = capsys.readouterr().err
    assert "unknown header key 'zzqx' (no known key is close" in err
    assert "camera_gain_counts_per_e" not in err  # a schema key, never unknown
    assert len(drain(pull.sock)) == 1


# --- 5. rejects in the serve log as they happen --------------------------------------------------

def test_rejects_logged_as_they_happen_one_line_per_reason_per_10_s(served):
    ctx = zmq.Context()
    try:
        with ctx.socket(zmq.PUSH) as push:
            push.connect(served.endpoints["ingest"])
            for _ in range(6):
                push.send_multipart([b"\xc1", b""])  # not msgpack: bad_msgpack
            t_end = time.monotonic() + 20
            first = [l for l in served.err if "rejected frame (bad_msgpack)" in l]
            while not first:
                assert time.monotonic() < t_end, "".join(served.err)
                time.sleep(0.05)
                first = [l for l in served.err if "rejected frame (bad_msgpack)" in l]
            time.sleep(1.0)
            assert len([l for l in served.err if "(bad_msgpack)" in l]) == 1  # the rest only counted
            while not any("rejected 5 more frame(s) (bad_msgpack) in the last 10 s" in l for l in served.err):
                assert time.monotonic() < t_end, "".join(served.err)
                time.sleep(0.1)
    finally:
        ctx.destroy(linger=0)


# --- 6. watch --ready-file ------------------------------------------------------------------------

def test_watch_ready_file_then_send_loses_nothing(served, tmp_path, capsys):
    # 12 fast rejects: a burst within the PUB high-water mark ([results] sndhwm = 16), so only the
    # slow-joiner window could lose any
    np.save(tmp_path / "burst.npy", np.full((12, 8, 8), 400, np.uint16))
    ready = tmp_path / "watch.ready"
    thread, rc = start_watch("--endpoint", served.endpoints["results"], "--count", "12", "--timeout", "30",
                             "--ready-file", str(ready))
    wait_for_file(ready)
    assert ready.read_text().strip() == served.endpoints["results"]
    assert run_cli("send", "--endpoint", served.endpoints["ingest"], "--stack", str(tmp_path / "burst.npy")) == 0
    thread.join(60)
    assert rc == [0]
    captured = capsys.readouterr()
    assert "watch: ready (subscribed to" in captured.err
    assert captured.out.count("ERROR frame_too_small") == 12


# --- 4. help texts and README ---------------------------------------------------------------------

def _help(capsys, monkeypatch, *args: str) -> str:
    monkeypatch.setenv("COLUMNS", "80")
    assert run_cli(*args, "--help") == 0
    return capsys.readouterr().out


def test_demo_help_is_plain_complete_prose(capsys, monkeypatch):
    text = _help(capsys, monkeypatch, "demo")
    description = text.split("\n\n")[1]
    assert ":class:" not in description and "``" not in description and "~" not in description
    assert description.rstrip().endswith(".")
    assert "2048" in description and "overlay.png" in description


def test_serve_help_shows_default_endpoints_and_ports(capsys, monkeypatch):
    text = " ".join(_help(capsys, monkeypatch, "serve").split())
    for default in ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556", "tcp://127.0.0.1:5557", "9108"):
        assert default in text


def test_evaluate_usage_keeps_bundle_metavar_on_one_line(capsys, monkeypatch):
    usage = _help(capsys, monkeypatch, "evaluate").split("\n\n")[0]
    assert "--bundle [NAME=]DIR" in usage and "--data [NAME=]DIR" in usage


def test_readme_demo_size_and_checkpoint_source():
    from fringelive.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    parser = build_parser()
    demo = parser._subparsers._group_actions[0].choices["demo"]
    frame_px = demo.get_default("frame_px")
    assert f"simulated {frame_px}²" in readme
    assert "4096² camera" not in readme
    assert "ScottLabUCB/HRTEM-Generalization" in readme and "MIT" in readme
    assert "Sytwu, Rangel DaCosta & Scott" in readme and "fringelive import-seed" in readme


# --- the parts alone ---------------------------------------------------------------------------------

def test_unknown_key_counter_bounds_its_labels():
    from prometheus_client import CollectorRegistry

    from fringelive.daemon.unknown_keys import UnknownKeyCounter

    registry = CollectorRegistry()
    counter = UnknownKeyCounter(registry, max_keys=2)
    counter.observe(["a", "b", "c", "a", "bad key!", "d"])
    value = lambda key: registry.get_sample_value("fringelive_header_unknown_keys_total", {"key": key})  # noqa: E731
    assert (value("a"), value("b"), value("other")) == (2.0, 1.0, 3.0)
    assert value("c") is None and value("d") is None
    with pytest.raises(ValueError, match="max_keys must be an integer >= 0, got -1"):
        UnknownKeyCounter(CollectorRegistry(), max_keys=-1)


def test_reject_log_one_line_per_reason_per_interval_with_counts():
    import logging

    from fringelive.daemon.reject_log import RejectLog

    now = [100.0]
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("test_reject_log")
    logger.propagate = False
    logger.addHandler(Keep())
    rl = RejectLog(logger, interval_s=10.0, clock=lambda: now[0])
    for i in range(4):
        rl.add("bad_type", "s", i, f"detail {i}")
    rl.add("bad_value", "s", 9, "other reason")
    assert records == ["rejected frame (bad_type) s/0: detail 0", "rejected frame (bad_value) s/9: other reason"]
    now[0] += 5.0
    rl.flush_due()
    assert len(records) == 2  # still inside the interval
    now[0] += 5.0
    rl.flush_due()
    assert records[2] == "rejected 3 more frame(s) (bad_type) in the last 10 s; last s/3: detail 3"
    rl.add("bad_type", "s", 7, "again")  # within the new interval: counted
    rl.flush()
    assert records[3] == "rejected 1 more frame(s) (bad_type) in the last 10 s; last s/7: again"
    assert len(records) == 4


def test_header_key_helpers_derive_from_the_schema():
    from fringelive.daemon.protocol.header_keys import known_header_keys, nearest_known_key, unknown_header_keys
    from fringelive.engine.frame import METADATA_KEYS, STIMULUS_KEYS

    assert set(METADATA_KEYS) <= known_header_keys()
    header = {"series": "s", "pixelsize_nm": 1, "temperature_C": 20, "pressure_Pa": 1e-5, "stimulus": {"v": 1},
              "stimulus.bias_V": 2, "Temperature_c": 3}
    assert unknown_header_keys(header) == ["Temperature_c", "pixelsize_nm"]
    assert nearest_known_key("pixelsize_nm") == "pixel_size_nm"
    assert nearest_known_key("Temperature_c") == "temperature_C" and "temperature_C" in STIMULUS_KEYS
    assert nearest_known_key("zzqx") is None
