"""Daemon throughput with in situ tracking and the live view on vs both off, in one run.

A simulated in situ series (a fast-simulator scene whose stage drifts by up to ±20 px per frame,
re-exposed with Poisson noise) is streamed through a running daemon (real sockets on 127.0.0.1,
CPU ONNX Runtime pinned, block policy: throughput is set by the slowest stage). Configurations:

* **off**: ``[tracking] enabled = false``, ``[view] enabled = false``;
* **on**: ``[tracking] enabled = true`` and ``[view] enabled = true`` with one browser-like SSE
  client connected and reading (it also fetches every ``/frame.png``).

Rounds alternate off/on (``--rounds``) so that load from other processes hits both alike; the
median frames/s of each and their ratio are printed (goal: on ≥ 0.95 × off), plus the finisher's
``timings_ms.tracking`` and the worker's ``inference`` per frame (tracking runs in the finisher,
in parallel with the worker's next frame).

    python benchmarks/insitu.py [--size 1024] [--frames 12] [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import threading
import time
import urllib.request
from typing import Any

import numpy as np
import zmq
from scipy import ndimage

from fringelive.daemon.config import DaemonConfig, default_bundle_path
from fringelive.daemon.protocol import decode_result, encode_frame
from fringelive.daemon.server import Daemon
from fringelive.training.fastsim import CameraModel, FastSimConfig, apply_camera, simulate_intensity


def series(size: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` frames (size², uint16) of one scene with stage drift up to ±20 px per frame."""
    rng = np.random.default_rng(seed)
    big = size + 2 * 200
    intensity, _ = simulate_intensity(FastSimConfig(shape=(big, big), pixel_size_nm=0.02), rng)[:2]
    pos = np.zeros(2)
    out = []
    for _ in range(n):
        pos = np.clip(pos + rng.uniform(-20, 20, 2), -150, 150)
        view = ndimage.shift(intensity, pos, order=1, mode="reflect")[200:200 + size, 200:200 + size]
        out.append(apply_camera(np.ascontiguousarray(view), 423.0, 0.02, CameraModel(), rng))
    return out


def _reader(url: str, stop: threading.Event) -> None:
    """A browser-like view client: reads the event stream and fetches each frame PNG."""
    try:
        with urllib.request.urlopen(url + "events", timeout=5) as r:
            while not stop.is_set():
                line = r.readline()
                if line.startswith(b"data: "):
                    urllib.request.urlopen(url + "frame.png", timeout=5).read()
    except OSError:
        pass


def run(on: bool, frames: list[np.ndarray], threads: int) -> dict[str, Any]:
    bundle = default_bundle_path()
    cfg = DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0"}, "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"enabled": False},
        "model": {"bundle": str(bundle), "backend": "onnxruntime", "intra_op_threads": threads},
        "queue": {"size": 4, "policy": "block"}, "drift": {"enabled": True},
        "tracking": {"enabled": on}, "view": {"enabled": on, "port": 0},
    })
    stop = threading.Event()
    with Daemon(cfg) as d:
        ctx = zmq.Context.instance()
        sub, push = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH)
        sub.subscribe(b"")
        sub.connect(d.endpoints["results"])
        push.connect(d.endpoints["ingest"])
        reader = None
        if on:
            reader = threading.Thread(target=_reader, args=(d.endpoints["view"], stop), daemon=True)
            reader.start()
        time.sleep(0.5)  # slow joiner
        # warm-up frame (not timed)
        push.send_multipart(encode_frame(frames[0], series="warm", frame=0, pixel_size_nm=0.02))
        assert sub.poll(300_000)
        sub.recv_multipart()
        t0 = time.perf_counter()
        sender = threading.Thread(target=lambda: [push.send_multipart(encode_frame(f, series="bench", frame=k,
                                                                                   pixel_size_nm=0.02))
                                                  for k, f in enumerate(frames)], daemon=True)
        sender.start()
        headers = []
        while len(headers) < len(frames):
            assert sub.poll(300_000), "no result"
            parts = sub.recv_multipart()
            if parts[0] == b"result":
                headers.append(decode_result(parts)[0])
        wall = time.perf_counter() - t0
        stop.set()
        sub.close(linger=0)
        push.close(linger=0)
        counts = d.metrics.counts()
    tim = [h["timings_ms"] for h in headers]
    return {"fps": len(frames) / wall, "tracking_ms": statistics.mean(t.get("tracking", 0.0) for t in tim),
            "inference_ms": statistics.mean(t.get("inference", 0.0) for t in tim),
            "dropped": sum(counts["dropped"].values()), "ok": sum(1 for h in headers if
                                                                  (h.get("registration") or {}).get("status") == "ok")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    frames = series(a.size, a.frames)
    res: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for r in range(a.rounds):
        for on in ((False, True) if r % 2 == 0 else (True, False)):
            res[on].append(run(on, frames, a.threads))
            x = res[on][-1]
            print(f"round {r} {'on ' if on else 'off'}: {x['fps']:.3f} frames/s, tracking {x['tracking_ms']:.1f} ms, "
                  f"inference {x['inference_ms']:.0f} ms, registration ok {x['ok']}/{a.frames}, dropped {x['dropped']}",
                  flush=True)
    off = statistics.median(x["fps"] for x in res[False])
    on = statistics.median(x["fps"] for x in res[True])
    trk = statistics.mean(x["tracking_ms"] for x in res[True])
    inf = statistics.mean(x["inference_ms"] for x in res[True])
    print(f"\n| {a.size}² × {a.frames}, {a.rounds} rounds | frames/s (median) | ratio |")
    print("|---|---|---|")
    print(f"| tracking + view off | {off:.3f} | 1.00 |")
    print(f"| tracking + view on (1 SSE client) | {on:.3f} | {on / off:.3f} |")
    print(f"\nfinisher tracking {trk:.1f} ms/frame vs worker inference {inf:.0f} ms/frame; goal: ratio >= 0.95")


if __name__ == "__main__":
    main()
