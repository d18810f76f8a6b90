"""Daemon throughput and latency, measured in one run, printed as a table with ratios.

1. End to end: ``--frames`` frames of ``--size``² uint16 counts (4096² by default) pushed through a
   running daemon (real sockets on 127.0.0.1, the CPU ONNX Runtime backend, block policy) and
   their results received: frames/s, and latency p50/p99 (client: send → result received).
   Two runs: *streamed* (the sender pushes as fast as back-pressure allows: throughput) and
   *one at a time* (send, wait for the result: latency without queueing).
   Compared with the **backend alone on the same tiles**: the bundle's backend called on the very
   batches of tiles the pipeline feeds it for this frame size (same tile plan, batch size and
   threads), nothing else. Goal: streamed pipeline >= 0.9x backend-only.
2. Ingest only: the daemon's receiver (recv_multipart(copy=False) → decode_frame → bounded
   queue) with a no-op worker, against raw pyzmq PUSH → PULL of the same messages, both fed by
   a sender in a separate process (as a camera would be). Goal: >= 0.8x raw pyzmq.

    python benchmarks/daemon.py [--frames N] [--quick] [--bundle DIR] [--threads N]

``--quick``: 1024² frames, fewer of them (a smoke run for CI). Without ``--bundle`` the
installed default bundle is used, else a random-weight ``resunet-seed`` bundle is exported to a
temporary directory (same network, same speed).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from fringelive.daemon.config import DaemonConfig, default_bundle_path
from fringelive.daemon.protocol import decode_result, encode_frame
from fringelive.daemon.server import Daemon

from frames import synthetic_frame  # benchmarks/frames.py


def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(np.ceil(q / 100 * len(v))) - 1))]


def make_bundle(tmp: Path) -> Path:
    default = default_bundle_path()
    if default is not None:
        return default
    import torch

    from fringelive.export.onnx_export import export_bundle
    from fringelive.engine.models import build_model

    torch.manual_seed(0)
    model = build_model("resunet-seed").eval()
    return export_bundle([model], tmp / "bench-bundle", name="bench-resunet-seed",
                         description="random weights, benchmark only", check_sizes=(64,)).path


def config(bundle: Path, threads: int | None, queue: int = 2) -> DaemonConfig:
    return DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0", "rcvhwm": 2},
        "results": {"endpoint": "tcp://127.0.0.1:0", "sndhwm": 1000},
        "control": {"endpoint": "tcp://127.0.0.1:0"},
        "metrics": {"enabled": False},
        "queue": {"size": queue, "policy": "block"},
        # pinned: compared with the ONNX Runtime backend alone below (daemon_engines.py compares engines)
        "model": {"bundle": str(bundle), "backend": "onnxruntime", "intra_op_threads": threads or 0},
    })


# --- 1. end to end vs backend-only ---------------------------------------------------------------

def end_to_end(cfg: DaemonConfig, messages: list[list[bytes]]) -> dict[str, Any]:
    n = len(messages)
    with Daemon(cfg) as d:
        ctx = zmq.Context.instance()
        sub, push = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH)
        sub.subscribe(b"result")
        sub.rcvhwm = 0
        sub.connect(d.endpoints["results"])
        push.connect(d.endpoints["ingest"])
        time.sleep(0.5)  # subscription propagates
        stage_ms: dict[str, list[float]] = {}

        def receive(count: int) -> list[float]:
            times = []
            for _ in range(count):
                if not sub.poll(600_000):
                    raise RuntimeError("no result within 600 s")
                header, _, _ = decode_result(sub.recv_multipart(copy=False))
                times.append(time.perf_counter())
                for k, v in header["timings_ms"].items():
                    stage_ms.setdefault(k, []).append(v)
            return times

        # one at a time: latency without queueing
        lat = []
        for m in messages:
            t0 = time.perf_counter()
            push.send_multipart(m, copy=False)
            lat.append((receive(1)[0] - t0) * 1e3)
        one_fps = n / (sum(lat) / 1e3)
        # streamed: throughput with the stages overlapping
        sent: list[float] = []

        def send_all() -> None:
            for m in messages:
                push.send_multipart(m, copy=False)
                sent.append(time.perf_counter())

        t0 = time.perf_counter()
        sender = threading.Thread(target=send_all)
        sender.start()
        done = receive(n)
        sender.join()
        stream_fps = n / (done[-1] - t0)
        stream_lat = [(r - s) * 1e3 for r, s in zip(done, sent)]
        while d.metrics.counts()["in_flight"]:  # the publisher counts right after sending
            time.sleep(0.001)
        counts = d.metrics.counts()
        sub.close(linger=0)
        push.close(linger=0)
    assert counts["processed"] == 2 * n, counts
    return {"one_fps": one_fps, "one_lat": lat, "stream_fps": stream_fps, "stream_lat": stream_lat,
            "stages": {k: statistics.median(v) for k, v in stage_ms.items()}}


def backend_only(bundle_path: Path, cfg: DaemonConfig, frame: np.ndarray, repeats: int) -> dict[str, Any]:
    """The bundle's backend on exactly the batches the pipeline feeds it for ``frame``."""
    from collections import defaultdict

    from fringelive.engine.pipeline import PipelineConfig, SegmentationPipeline
    from fringelive.engine.preprocess import preprocess
    from fringelive.engine.tiling import plan_tiles
    from fringelive.bundle.bundle_io import load_bundle

    bundle = load_bundle(bundle_path)
    p = cfg.pipeline
    pcfg = PipelineConfig(tile_size=p.tile_size, batch_size=p.batch_size, memory_budget_mb=p.memory_budget_mb)
    with SegmentationPipeline.from_bundle(bundle, pcfg, intra_op_threads=cfg.model.intra_op_threads) as pipe:
        tile = bundle.card.tile
        tile_size = pipe.tile_size_for(frame.shape)
        batch_size = pipe.batch_size_for(frame.shape)  # what the pipeline uses for this frame size
        plan = plan_tiles(frame.shape, tile_size, tile.halo_px, tile.multiple_of)
        image = np.asarray(preprocess(frame, bundle.card.preprocessing, device="cpu"))
        groups: dict[tuple[int, int], list[Any]] = defaultdict(list)
        for t in plan.tiles:
            groups[t.input_shape].append(t)
        batches = []
        for shape, tiles in groups.items():
            for i in range(0, len(tiles), batch_size):
                chunk = tiles[i:i + batch_size]
                b = np.zeros((len(chunk), 1, *shape), np.float32)
                for k, t in enumerate(chunk):
                    y0, y1, x0, x1 = t.input_box
                    sy1, sx1 = min(y1, frame.shape[0]), min(x1, frame.shape[1])
                    b[k, 0, :sy1 - y0, :sx1 - x0] = image[y0:sy1, x0:sx1]
                batches.append(b)
        backend = pipe.backends[0]
        backend(batches[0])  # warm
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for b in batches:
                backend(b)
            times.append(time.perf_counter() - t0)
    return {"fps": 1.0 / statistics.median(times), "ms": statistics.median(times) * 1e3, "tile_size": tile_size,
            "tiles": len(plan.tiles), "calls": len(batches), "area_ratio": plan.area_ratio}


# --- 2. ingest only vs raw pyzmq -------------------------------------------------------------------

_SENDER = r"""
import sys, numpy as np, zmq
from fringelive.daemon.protocol import encode_frame
endpoint, side, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
msg = encode_frame(np.random.default_rng(0).poisson(100, (side, side)).astype(np.uint16), series="bench", frame=0)
ctx = zmq.Context()
push = ctx.socket(zmq.PUSH)
push.connect(endpoint)
for _ in range(n):
    push.send_multipart(msg, copy=False)
push.close(linger=-1)
ctx.term()  # waits until every message is delivered
"""


def run_sender(endpoint: str, side: int, n: int) -> subprocess.Popen:
    """A separate process (like a camera) pushing ``n`` frames as fast as it can."""
    return subprocess.Popen([sys.executable, "-c", _SENDER, endpoint, str(side), str(n)])


class IngestOnlyDaemon(Daemon):
    """The daemon with a no-op worker: receive + decode + enqueue, then count the frame and
    note when it was received (:attr:`received_at`) and taken (:attr:`taken_at`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received_at: list[float] = []
        self.taken_at: list[float] = []

    def _process(self, work: Any) -> None:  # noqa: D401 - the benchmark's no-op worker
        self.received_at.append(work.t_received)
        self.taken_at.append(time.perf_counter())
        self.metrics.frame_processed()


def ingest_only(cfg: DaemonConfig, side: int, n: int) -> float:
    """Messages/s from the first message's receipt to the last one taken off the queue."""
    with IngestOnlyDaemon(cfg) as d:
        sender = run_sender(d.endpoints["ingest"], side, n)
        deadline = time.monotonic() + 600
        while len(d.taken_at) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        sender.wait(60)
        if len(d.taken_at) < n:
            raise RuntimeError(f"ingest run got {len(d.taken_at)} of {n} messages")
        return (n - 1) / (d.taken_at[-1] - d.received_at[0])


def raw_pyzmq(side: int, n: int, rcvhwm: int) -> float:
    """Messages/s of a plain PULL loop (recv_multipart(copy=False)) fed by the same sender."""
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    pull.rcvhwm = rcvhwm
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    sender = run_sender(f"tcp://127.0.0.1:{port}", side, n)
    times = []
    for _ in range(n):
        pull.recv_multipart(copy=False)
        times.append(time.perf_counter())
    sender.wait(60)
    pull.close(linger=0)
    return (n - 1) / (times[-1] - times[0])


# --- main ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=None, help="frames per end-to-end run (count; default 8, quick 6)")
    ap.add_argument("--size", type=int, default=None, help="frame side in px (default 4096, quick 1024)")
    ap.add_argument("--quick", action="store_true", help="1024² frames, fewer of them")
    ap.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: installed default "
                    "bundle, else a random-weight resunet-seed exported to a temp dir)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime and torch "
                    "(count; default: the runtimes' own)")
    ap.add_argument("--part", choices=("all", "e2e", "ingest"), default="all",
                    help="which measurement to run (default: all)")
    ap.add_argument("--ingest-frames", type=int, default=None,
                    help="messages per ingest run (count; default 300, or 32 for 4096² frames)")
    ap.add_argument("--repeats", type=int, default=3, help="ingest runs of each kind, alternating; the "
                    "median is reported (count; default 3)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    side = args.size or (1024 if args.quick else 4096)
    n = args.frames or (6 if args.quick else 8)
    n_ingest = args.ingest_frames or (300 if side <= 1024 else 32)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or make_bundle(Path(tmp))
        cfg = config(bundle, args.threads)
        frames = [synthetic_frame(side, i) for i in range(min(n, 4))]
        messages = [encode_frame(frames[i % len(frames)], series="bench", frame=i, pixel_size_nm=0.02)
                    for i in range(n)]
        print(f"fringelive daemon benchmark: {n} frames of {side}x{side} uint16 "
              f"({messages[0][1].__len__() / 2**20:.0f} MiB), bundle {bundle}, threads {args.threads or 'default'}",
              flush=True)
        if args.part in ("all", "e2e"):
            be = backend_only(bundle, cfg, frames[0], repeats=max(2, min(n, 5)))
            e2e = end_to_end(cfg, messages)
        if args.part in ("all", "ingest"):
            ingest_cfg = config(bundle, args.threads, queue=4)
            raws, ings = [], []
            for _ in range(args.repeats):  # alternate, so load changes hit both alike
                raws.append(raw_pyzmq(side, n_ingest, rcvhwm=ingest_cfg.ingest.rcvhwm))
                ings.append(ingest_only(ingest_cfg, side, n_ingest))
            raw, ing = statistics.median(raws), statistics.median(ings)
    if args.part in ("all", "e2e"):
        print_e2e(side, be, e2e)
    if args.part in ("all", "ingest"):
        print_ingest(side * side * 2 / 2**20, n_ingest, raw, ing)
    return 0


def print_e2e(side: int, be: dict[str, Any], e2e: dict[str, Any]) -> None:
    rows = [
        ("backend only (same tiles)", be["fps"], be["ms"], be["ms"], "1.00 (reference)"),
        ("daemon, streamed", e2e["stream_fps"], percentile(e2e["stream_lat"], 50), percentile(e2e["stream_lat"], 99),
         f"{e2e['stream_fps'] / be['fps']:.2f} (goal >= 0.90)"),
        ("daemon, one at a time", e2e["one_fps"], percentile(e2e["one_lat"], 50), percentile(e2e["one_lat"], 99),
         f"{e2e['one_fps'] / be['fps']:.2f}"),
    ]
    print(f"\nend to end, {side}x{side}: tile {be['tile_size'] or 'whole frame'}, {be['tiles']} tile(s) in "
          f"{be['calls']} backend call(s), computed area {be['area_ratio']:.2f}x the frame")
    print(f"{'':28s} {'frames/s':>9s} {'p50 ms':>9s} {'p99 ms':>9s}  ratio to backend-only")
    for name, fps, p50, p99, ratio in rows:
        print(f"{name:28s} {fps:9.3f} {p50:9.1f} {p99:9.1f}  {ratio}")
    print("median stage times in the daemon (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in e2e["stages"].items()))


def print_ingest(mib: float, n_ingest: int, raw: float, ing: float) -> None:
    print(f"\ningest only, {n_ingest} messages of {mib:.0f} MiB from a sender process (median of the runs)")
    print(f"{'':28s} {'msgs/s':>9s} {'MiB/s':>9s}  ratio to raw pyzmq")
    print(f"{'raw pyzmq PUSH->PULL':28s} {raw:9.1f} {raw * mib:9.0f}  1.00 (reference)")
    print(f"{'daemon receive+decode+queue':28s} {ing:9.1f} {ing * mib:9.0f}  {ing / raw:.2f} (goal >= 0.80)")


if __name__ == "__main__":
    sys.exit(main())
