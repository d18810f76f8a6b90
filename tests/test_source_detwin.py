"""The ``deapi`` source in passive mode (``control = false``) against de-twin (PyPI ``de-twin``, MIT):
a digital twin of a Direct Electron camera whose DE-Server face (``python -m
de_twin.faces.deapi_server PORT``, a subclass of deapi's simulated server) serves several clients
at once with shared state, as DE-Server does. The test plays the operator in DE's software (its
own ``deapi.Client``: sets the ROI and frame rate, starts the acquisitions); fringelive only
watches. deapi's own simulated server cannot be used for this: it serves one connection at a
time, each with its own state. It needs the twin's virtual environment (``.ci/run`` builds
``.venv-detwin``; or set ``FRINGELIVE_DE_TWIN_PYTHON`` to a Python with ``de-twin[deapi]``).
Slow: the twin starts in ~30 s and renders its first frame after ~35 s (numba), 200 s and 85 s on a
2-core machine under heavy load (the whole test: 54 s and 528 s)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from fringelive.daemon.config import DaemonConfig
from fringelive.daemon.protocol import decode_result
from fringelive.daemon.server import Daemon

from polling import wait_until  # tests/polling.py

pytest.importorskip("deapi")

ROOT = Path(__file__).resolve().parents[1]
TWIN_PYTHON = Path(os.environ.get("FRINGELIVE_DE_TWIN_PYTHON", ROOT / ".venv-detwin" / "bin" / "python"))

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not TWIN_PYTHON.is_file(), reason=f"de-twin not installed at {TWIN_PYTHON}")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def twin(tmp_path: Path) -> Any:
    port = free_port()
    log = open(tmp_path / "twin.log", "w")
    proc = subprocess.Popen([str(TWIN_PYTHON), "-u", "-m", "de_twin.faces.deapi_server", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)

    def up() -> bool:
        assert proc.poll() is None, f"de-twin exited: {(tmp_path / 'twin.log').read_text()[-2000:]}"
        return "started" in (tmp_path / "twin.log").read_text()

    try:
        t = time.monotonic()
        wait_until(up, 300.0, "de-twin's DE-Server face")
        print(f"de-twin up in {time.monotonic() - t:.0f} s")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def operator(port: int) -> Any:
    from deapi import Client

    c = Client()
    c.usingMmf = False
    c.connect(port=port)
    return c


def acquire(c: Any, timeout: float = 240.0) -> None:
    """The operator's acquisition ("Frame Count" frames); returns when DE-Server is idle again."""
    c.start_acquisition(1)
    t_end = time.monotonic() + timeout
    while c.acquiring:
        assert time.monotonic() < t_end, "the twin's acquisition did not end"
        time.sleep(0.1)


@pytest.mark.usefixtures("one_torch_thread")
def test_passive_source_follows_the_operators_acquisitions(tiny_bundle: Any, twin: int) -> None:
    op = operator(twin)
    op["Hardware ROI Size X"] = 128
    op["Hardware ROI Size Y"] = 128
    op["Frames Per Second"] = 10
    op["Frame Count"] = 3
    t = time.monotonic()
    acquire(op, 600.0)      # before fringelive attaches (and the twin's first render): never sent
    print(f"de-twin's first acquisition (3 frames) took {time.monotonic() - t:.0f} s")
    op["Frame Count"] = 30  # 3 s at 10 frames/s
    settings = {k: op[k] for k in ("Frames Per Second", "Hardware ROI Size X", "Exposure Time (seconds)", "Frame Count")}
    cfg = DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0"}, "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"enabled": False},
        "queue": {"size": 8, "policy": "block"},
        "model": {"bundle": str(tiny_bundle.path), "intra_op_threads": 1, "backend": "onnxruntime"},
        "source": [{"kind": "deapi", "port": twin, "name": "de", "poll_s": 0.05, "pixel_size_nm": 0.02,
                    "voltage_kv": 300.0}]})
    with Daemon(cfg) as d:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.subscribe(b"")
        sub.connect(d.endpoints["results"])
        src = d._sources[0]
        time.sleep(1.0)
        assert src.acquisitions_seen == 0 and not op.acquiring   # attached: nothing started, nothing taken
        for _ in range(2):
            acquire(op)
            time.sleep(1.0)   # the source's poll after the end takes the last frame
        time.sleep(2.0)        # fringelive alone: DE-Server stays idle
        idle_after = not op.acquiring
        wait_until(lambda: d.metrics.counts()["in_flight"] == 0, 30.0, "idle")
        results = []
        while sub.poll(500):
            parts = sub.recv_multipart()
            if parts[0] == b"result":
                results.append(decode_result(parts)[0])
        sub.close(linger=0)
        counts = d.status()["sources"]["de"]
        seen = src.acquisitions_seen
    after = {k: op[k] for k in settings}
    op.disconnect()
    assert idle_after and after == settings                       # fringelive changed nothing, started nothing
    assert seen == 2
    print(f"passive: {len(results)} frames taken of 2 × 30:", [(r["series"], r["frame"]) for r in results])
    series = sorted({r["series"] for r in results})
    assert series == ["de_twin-1", "de_twin-2"], series
    for s in series:
        frames = [r["frame"] for r in results if r["series"] == s]
        assert len(frames) >= 2 and frames == sorted(frames) and len(set(frames)) == len(frames), (s, frames)
        assert all(0 <= f < 30 for f in frames)
    assert all(r["meta"]["camera"] and r["meta"]["pixel_size_nm"] == 0.02 for r in results)
    assert all(r["meta"]["tags"]["de_frame_count"] >= 1 for r in results)
    assert counts["received"] == len(results) == counts["processed"] and counts["in_flight"] == 0
