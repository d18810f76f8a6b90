"""Scale-out on one machine: throughput of 1, 2, ... daemon workers on one camera stream.

Topology (docs/scaling.md): a sender PUSH binds; each worker is a separate process running a
:class:`fringelive.daemon.server.Daemon` whose ingest connects to it (``[ingest] bind = false``),
so ZeroMQ deals frames among the workers; ``fringelive merge``'s :class:`ResultMerger` (in this
process) subscribes to every worker and republishes in frame order; the benchmark subscribes to
the merger. Each worker gets ``cores // workers`` threads (ONNX Runtime intra-op and torch), so
workers × threads <= cores.

Measured per worker count: frames/s from the first frame sent to the last merged result
received (after a warm-up of 2 frames per worker), the frames each worker computed, and what the
merger had to do (reordered, gaps). Ratio: frames/s against 1 worker. Best of ``--repeats``.

    python benchmarks/scaling.py [--workers 1 2 3] [--frames N] [--size PX] [--bundle DIR | --tiny]
                                 [--backend KIND] [--cores N] [--repeats N] [--quick]

``--quick``: 512² frames, 12 per run (a smoke run). Without ``--bundle`` the installed default
bundle is used (``--tiny``: a random-weight resunet-seed, same network and speed, exported to a
temporary directory).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

from fringelive.stream.merger import ResultMerger
from fringelive.daemon.config import DaemonConfig, default_bundle_path
from fringelive.stream.merge import ReorderSettings
from fringelive.daemon.protocol import decode_error, decode_result, encode_frame

from frames import synthetic_frame  # benchmarks/frames.py


def tiny_bundle(tmp: Path) -> Path:
    import torch

    from fringelive.export.onnx_export import export_bundle
    from fringelive.engine.models import build_model

    torch.manual_seed(0)
    model = build_model("resunet-seed").eval()
    return export_bundle([model], tmp / "bench-bundle", name="bench-resunet-seed",
                         description="random weights, benchmark only", check_sizes=(64,)).path


def worker_main(bundle: str, ingest: str, name: str, threads: int, backend: str, ready: Any, stop: Any) -> None:
    """One daemon worker process: report its results endpoint, serve until ``stop`` is set."""
    import logging

    import torch

    from fringelive.daemon.server import Daemon

    logging.getLogger("fringelive").setLevel(logging.ERROR)  # the sync junk is rejected on purpose
    torch.set_num_threads(threads)
    cfg = DaemonConfig.from_dict({
        "ingest": {"endpoint": ingest, "bind": False, "rcvhwm": 1},
        "results": {"endpoint": "tcp://127.0.0.1:0", "worker": name, "sndhwm": 1000},
        "control": {"endpoint": "tcp://127.0.0.1:0"},
        "metrics": {"enabled": False},
        "queue": {"size": 1, "policy": "block"},
        "model": {"bundle": bundle, "intra_op_threads": threads, "backend": backend},
    })
    with Daemon(cfg) as d:
        ready.put((name, d.endpoints["results"]))
        while not stop.wait(0.2):
            d.raise_if_failed()


def run(bundle: Path, workers: int, threads: int, backend: str, frames: list[list[bytes]],
        warm: list[list[bytes]]) -> dict[str, Any]:
    """Start ``workers`` worker processes, the merger and a subscriber; time ``frames``."""
    mpc = mp.get_context("spawn")
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.sndhwm = 1           # frames go to whichever worker has room: load balancing by availability
    push.linger = 0
    push.bind("tcp://127.0.0.1:0")
    ingest = push.getsockopt_string(zmq.LAST_ENDPOINT)
    ready, stop = mpc.Queue(), mpc.Event()
    procs = [mpc.Process(target=worker_main, args=(str(bundle), ingest, f"w{i}", threads, backend, ready, stop),
                         daemon=True) for i in range(workers)]
    for p in procs:
        p.start()
    sub = ctx.socket(zmq.SUB)
    sub.subscribe(b"")
    sub.rcvhwm = 0
    sub.linger = 0
    merger = None
    try:
        endpoints: dict[str, str] = {}
        while len(endpoints) < workers:
            try:
                name, ep = ready.get(timeout=1.0)
                endpoints[name] = ep
            except queue.Empty:
                dead = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode is not None]
                if dead:
                    raise RuntimeError(f"worker w{dead[0][0]} exited with code {dead[0][1]} before serving "
                                       "(its error is printed above)") from None
        merger = ResultMerger(list(endpoints.values()), "tcp://127.0.0.1:0",
                              ReorderSettings(gap_timeout_s=120.0, max_frames=4096, series_idle_s=600.0)).start()
        sub.connect(merger.endpoint)
        # every worker connected and every PUB -> merger -> SUB path live: junk in fresh series
        # (rejected at once, an error naming the worker) until all names came back
        seen: set[str] = set()
        i = 0
        while seen != set(endpoints):
            push.send_multipart([msgpack.packb({"version": 1, "series": f"sync-{i}", "frame": 0}), b""])
            i += 1
            while sub.poll(20):
                seen.add(decode_error(sub.recv_multipart())["worker"])

        def collect(series: str, n: int) -> tuple[list[dict], float]:
            headers = []
            while len(headers) < n:
                if not sub.poll(600_000):
                    raise RuntimeError(f"no merged result within 600 s ({len(headers)} of {n})")
                parts = sub.recv_multipart(copy=False)
                if parts[0].bytes == b"result":
                    h = decode_result(parts)[0]
                    if h["series"] == series:
                        headers.append(h)
                elif decode_error(parts).get("series") == series:
                    raise RuntimeError(f"error event: {decode_error(parts)}")
            return headers, time.perf_counter()

        def send_all(messages: list[list[bytes]]) -> None:
            for m in messages:
                push.send_multipart(m, copy=False)

        send_all(warm)
        collect("warm", len(warm))
        before = merger.stats()
        t0 = time.perf_counter()
        sender = threading.Thread(target=send_all, args=(frames,))
        sender.start()
        headers, t1 = collect("bench", len(frames))
        sender.join()
        after = merger.stats()
        assert [h["frame"] for h in headers] == list(range(len(frames))), "merged stream out of order"
        per_worker = {w: sum(h["worker"] == w for h in headers) for w in sorted(endpoints)}
        return {"fps": len(frames) / (t1 - t0), "seconds": t1 - t0, "per_worker": per_worker,
                "reordered": after["reordered"] - before["reordered"], "gaps": after["gap_frames"] - before["gap_frames"]}
    finally:
        stop.set()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.terminate()
        if merger is not None:
            merger.close(raise_errors=False)
        sub.close(linger=0)
        push.close(linger=0)
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare (processes)")
    ap.add_argument("--frames", type=int, default=24, help="frames per run (frames, default 24)")
    ap.add_argument("--size", type=int, default=1024, help="frame side (px, default 1024)")
    ap.add_argument("--bundle", type=Path, help="bundle directory (default: the installed default bundle)")
    ap.add_argument("--tiny", action="store_true", help="use a random-weight resunet-seed bundle (same speed)")
    ap.add_argument("--backend", default="onnxruntime",
                    help="inference backend of every worker, e.g. onnxruntime-cuda: several workers share one GPU "
                         "(a name, no unit; default onnxruntime)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                    help="CPU cores to share among the workers (cores, default: all)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per worker count, best shown (runs, default 1)")
    ap.add_argument("--quick", action="store_true", help="512² frames, 12 per run")
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.frames = 512, 12
    if 1 not in args.workers:
        args.workers = [1, *args.workers]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or (None if args.tiny else default_bundle_path()) or tiny_bundle(Path(tmp))
        frames = [encode_frame(synthetic_frame(args.size, i), series="bench", frame=i, pixel_size_nm=0.02)
                  for i in range(args.frames)]
        print(f"# scaling: {args.frames} frames of {args.size}² uint16 per run, bundle {Path(bundle).name}, "
              f"backend {args.backend}, {args.cores} core(s) shared, best of {args.repeats}; machine: {os.cpu_count()} CPU(s)",
              flush=True)
        rows = []
        for w in sorted(set(args.workers)):
            threads = max(1, args.cores // w)
            warm = [encode_frame(synthetic_frame(args.size, 1000 + i), series="warm", frame=i, pixel_size_nm=0.02)
                    for i in range(2 * w)]
            best = max((run(Path(bundle), w, threads, args.backend, frames, warm) for _ in range(args.repeats)),
                       key=lambda r: r["fps"])
            rows.append((w, threads, best))
            print(f"  {w} worker(s) x {threads} thread(s): {best['fps']:.2f} frames/s", flush=True)
    base = rows[0][2]["fps"]
    print()
    print("| workers | threads/worker | frames/s | vs 1 worker | s per run | frames per worker | reordered | gaps |")
    print("|--------:|---------------:|---------:|------------:|----------:|-------------------|----------:|-----:|")
    for w, threads, r in rows:
        dist = " ".join(str(n) for n in r["per_worker"].values())
        print(f"| {w} | {threads} | {r['fps']:.2f} | {r['fps'] / base:.2f}x | {r['seconds']:.1f} | {dist} | "
              f"{r['reordered']} | {r['gaps']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
