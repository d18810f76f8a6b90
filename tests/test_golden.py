"""Golden masks: two fixed fast-simulator frames (384², seeds 0 and 1) sent through a real daemon
(loopback ZeroMQ, the shipped default bundle, ONNX Runtime on the CPU) give byte-identical masks to
those recorded in ``tests/data/golden_masks.json`` (sha256 of the packed mask bytes).

The digests were recorded before the package layout moved (issue #10); the move must not change a
single mask bit. Regenerate (only for an intended behaviour change) with
``FRINGELIVE_WRITE_GOLDEN=1 python -m pytest tests/test_golden.py``."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from fringelive.daemon.config import DaemonConfig, default_bundle_path
from fringelive.daemon.protocol import decode_error, decode_result, encode_frame
from fringelive.daemon.server import Daemon
from fringelive.training.fastsim import FastSimConfig, simulate_frame

GOLDEN = Path(__file__).resolve().parent / "data" / "golden_masks.json"
SEEDS = (0, 1)
SIDE = 384

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _frames() -> list[tuple[np.ndarray, dict]]:
    cfg = FastSimConfig(shape=(SIDE, SIDE))
    out = []
    for seed in SEEDS:
        frame, _, meta = simulate_frame(cfg, seed)
        out.append((frame, {"pixel_size_nm": float(meta["pixel_size_nm"]),
                            "dose_e_per_A2": float(meta["dose_e_per_A2"])}))
    return out


def _masks_through_daemon() -> dict[str, str]:
    bundle = default_bundle_path()
    if bundle is None:
        pytest.skip("no default bundle installed")
    cfg = DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0"},
        "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"},
        "metrics": {"enabled": False},
        # pinned: the golden tests the pipeline, not the engine choice of the default "auto" (issue #14)
        "model": {"bundle": str(bundle), "backend": "onnxruntime", "intra_op_threads": 1},
    })
    ctx = zmq.Context.instance()
    digests: dict[str, str] = {}
    with Daemon(cfg) as d:
        sub = ctx.socket(zmq.SUB)
        sub.subscribe(b"")
        sub.connect(d.endpoints["results"])
        push = ctx.socket(zmq.PUSH)
        push.connect(d.endpoints["ingest"])
        try:
            # slow joiner: junk (rejected, missing shape) until its error event arrives
            t_end, i, synced = time.monotonic() + 10.0, 0, False
            while not synced and time.monotonic() < t_end:
                i += 1
                push.send_multipart([msgpack.packb({"version": 1, "series": "sync", "frame": i}), b""])
                while sub.poll(200):
                    parts = sub.recv_multipart()
                    if parts[0] == b"error" and decode_error(parts).get("frame") == i:
                        synced = True
                        break
            assert synced, "subscriber never saw the daemon's events"
            for k, (frame, meta) in enumerate(_frames()):
                push.send_multipart(encode_frame(frame, series="golden", frame=k, **meta))
            t_end = time.monotonic() + 120.0
            while len(digests) < len(SEEDS):
                assert sub.poll(max(1, int((t_end - time.monotonic()) * 1000))), f"got {len(digests)} results"
                parts = sub.recv_multipart()
                if parts[0] != b"result":
                    continue
                header, mask, _ = decode_result(parts)
                assert mask.shape == (SIDE, SIDE)
                packed = np.packbits(np.ascontiguousarray(mask, dtype=bool)).tobytes()
                digests[str(header["frame"])] = hashlib.sha256(packed).hexdigest()
        finally:
            push.close(linger=0)
            sub.close(linger=0)
    return digests


def test_daemon_masks_match_golden() -> None:
    digests = _masks_through_daemon()
    if os.environ.get("FRINGELIVE_WRITE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"side": SIDE, "seeds": list(SEEDS), "sha256": digests}, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())["sha256"]
    assert digests == expected
