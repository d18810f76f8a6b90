"""The whole daemon per backend, in one run on the same frames: ``onnxruntime`` vs ``auto``.

For each backend a fresh process runs a loopback daemon (real sockets, block policy, the
default bundle) and pushes the same simulated camera frames through it: frames/s streamed,
latency p50/p99 (send → result) streamed and one at a time, the daemon process's peak RSS, and
every result mask, which is then compared pixel by pixel with ONNX Runtime's (acceptance of
issue #14: ``auto`` ≥ 1.4× ``onnxruntime`` frames/s at 2048², FP32 masks identical on
≥ 99.99 % of pixels).

    python benchmarks/daemon_engines.py [--size 2048] [--frames 6] [--threads 2] [--rounds 2] [--backends onnxruntime auto]

A plain backend runs with the default ``[queue] preprocess_ahead = "auto"``; one written
``KIND/serial`` with ``false`` (each frame preprocessed by the worker itself, not overlapping the
previous frame's inference) and ``KIND/ahead`` with ``true``, e.g. ``--backends onnxruntime auto
onnxruntime/ahead auto/ahead``; ratios are against plain ``onnxruntime``.

Rounds alternate the order (A B, B A, ...) so that a load change on a shared machine hits both
backends alike; medians over rounds are printed, and the per-round ratios.

Each daemon logs why its backend serves (``auto``: the probe's timings and what it skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np



def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(np.ceil(q / 100 * len(v))) - 1))]


def _cpu_s() -> float:
    """CPU seconds (user + system, every thread) this process has used."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one(kind: str, side: int, n: int, threads: int, out: Path) -> None:
    """Child process: one daemon on ``kind`` (``KIND/serial``, ``KIND/ahead``: preprocessing
    ahead off, on); writes timings (json) and masks (npy)."""
    import zmq

    label = kind
    kind, _, variant = kind.partition("/")
    ahead = {"": "auto", "serial": False, "ahead": True}
    if variant not in ahead:
        raise SystemExit(f"unknown backend variant {variant!r} in {label!r} (KIND/serial or KIND/ahead)")

    if kind == "torch":  # the daemon's serving path is torch-free; only this backend uses it
        import torch

        torch.set_num_threads(threads)
    import logging

    from fringelive.daemon.config import DaemonConfig, default_bundle_path
    from fringelive.daemon.protocol import decode_result, encode_frame
    from fringelive.daemon.server import Daemon
    from fringelive.stream.camera_sim import SimulatedCamera

    logging.basicConfig(level=logging.WARNING, format=f"  [{kind}] %(message)s")
    logging.getLogger("fringelive.daemon").setLevel(logging.INFO)

    cam = SimulatedCamera((side, side), scenes=2, seed=0)
    frames = [cam.frame(i)[0] for i in range(min(n, 3))]
    meta = {"pixel_size_nm": 0.02, "dose_e_per_A2": 423.0, "voltage_kv": 300.0}
    msgs = [encode_frame(frames[i % len(frames)], series="bench", frame=i, **meta) for i in range(n)]
    cfg = DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0", "rcvhwm": 2},
        "results": {"endpoint": "tcp://127.0.0.1:0", "sndhwm": 1000},
        "control": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"enabled": False},
        "queue": {"size": 2, "policy": "block", "preprocess_ahead": ahead[variant]},
        "model": {"bundle": str(default_bundle_path()), "backend": kind, "intra_op_threads": threads},
    })
    t_start = time.perf_counter()
    with Daemon(cfg) as d:
        start_s = time.perf_counter() - t_start
        ctx = zmq.Context.instance()
        sub, push = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH)
        sub.subscribe(b"result")
        sub.rcvhwm = 0
        sub.connect(d.endpoints["results"])
        push.connect(d.endpoints["ingest"])
        time.sleep(0.5)
        masks: dict[int, np.ndarray] = {}
        stages: dict[str, list[float]] = {}

        def receive() -> float:
            if not sub.poll(900_000):
                raise RuntimeError("no result within 900 s")
            header, mask, _ = decode_result(sub.recv_multipart(copy=False))
            t = time.perf_counter()
            masks[int(header["frame"])] = mask
            for k, v in header["timings_ms"].items():
                stages.setdefault(k, []).append(float(v))
            return t

        one_lat = []
        for m in msgs[: max(2, n // 2)]:
            t0 = time.perf_counter()
            push.send_multipart(m, copy=False)
            one_lat.append((receive() - t0) * 1e3)
        sent: list[float] = []

        def send_all() -> None:
            for m in msgs:
                push.send_multipart(m, copy=False)
                sent.append(time.perf_counter())

        t0 = time.perf_counter()
        cpu0 = _cpu_s()
        th = threading.Thread(target=send_all)
        th.start()
        done = [receive() for _ in msgs]
        cpu_s = _cpu_s() - cpu0
        th.join()
        sub.close(linger=0)
        push.close(linger=0)
    lat = [(r - s) * 1e3 for r, s in zip(done, sent)]
    np.save(out.with_suffix(".npy"), np.stack([masks[i] for i in range(n)]))
    out.write_text(json.dumps({
        "kind": label, "fps": n / (done[-1] - t0), "p50": percentile(lat, 50), "p99": percentile(lat, 99),
        "one_p50": percentile(one_lat, 50), "one_p99": percentile(one_lat, 99), "start_s": start_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpu_s_per_frame": cpu_s / n,
        "stages": {k: statistics.median(v) for k, v in stages.items()}}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2048, help="frame side, px (default 2048)")
    ap.add_argument("--frames", type=int, default=6, help="streamed frames per backend (count; default 6)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (count; default 2)")
    ap.add_argument("--backends", nargs="+", default=["onnxruntime", "auto"])
    ap.add_argument("--rounds", type=int, default=2, help="rounds over all backends, order alternating (count; default 2)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        one(args.one, args.size, args.frames, args.threads, args.out)
        return 0
    print(f"daemon per backend: {args.frames} frames of {args.size}² (simulated camera), {args.threads} threads, "
          f"a fresh process per backend and round; {args.rounds} round(s), the order alternating", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in args.backends}
    masks: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = args.backends if r % 2 == 0 else list(reversed(args.backends))
            for kind in order:
                out = Path(tmp) / f"{kind.replace('/', '-')}-{r}.json"
                # the environment `fringelive serve` runs in (cli/__init__.py: OpenBLAS single-threaded)
                env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
                subprocess.run([sys.executable, __file__, "--one", kind, "--size", str(args.size), "--frames",
                                str(args.frames), "--threads", str(args.threads), "--out", str(out)], check=True, env=env)
                runs[kind].append(json.loads(out.read_text()))
                masks.setdefault(kind, np.load(out.with_suffix(".npy")))
            if "onnxruntime" in runs:
                line = ", ".join(f"{k} {runs[k][-1]['fps']:.3f}" for k in args.backends)
                print(f"  round {r + 1}: frames/s {line}", flush=True)
    med = {k: {key: statistics.median(x[key] for x in v) for key in ("fps", "p50", "p99", "one_p50", "peak_rss_mib",
                                                                      "start_s", "cpu_s_per_frame")} for k, v in runs.items()}
    stages = {k: {st: statistics.median(x["stages"][st] for x in v) for st in v[0]["stages"]} for k, v in runs.items()}
    ref = med.get("onnxruntime")
    print(f"\nmedians over rounds\n{'backend':18s} {'frames/s':>9s} {'vs ORT':>7s} {'p50 ms':>8s} {'p99 ms':>8s} "
          f"{'1-at-a-time p50':>16s} {'CPU s/frame':>12s} {'peak RSS MiB':>13s} {'start s':>8s} {'mask = ORT':>11s}  stages (median ms)")
    for kind, r in med.items():
        ratio = f"{r['fps'] / ref['fps']:.2f}x" if ref else "-"
        same = f"{np.mean(masks[kind] == masks['onnxruntime']):.4%}" if ref and kind != "onnxruntime" else "-"
        st = ", ".join(f"{k} {v:.0f}" for k, v in stages[kind].items() if k in ("preprocess", "inference", "particles", "drift"))
        print(f"{kind:18s} {r['fps']:9.3f} {ratio:>7s} {r['p50']:8.0f} {r['p99']:8.0f} {r['one_p50']:16.0f} "
              f"{r['cpu_s_per_frame']:12.2f} {r['peak_rss_mib']:13.0f} {r['start_s']:8.1f} {same:>11s}  {st}")
    if ref and len(med) > 1 and args.rounds > 1:
        for kind in med:
            if kind != "onnxruntime":
                per = [a["fps"] / b["fps"] for a, b in zip(runs[kind], runs["onnxruntime"])]
                print(f"{kind} / onnxruntime frames/s per round: " + ", ".join(f"{x:.2f}x" for x in per))
    return 0


if __name__ == "__main__":
    sys.exit(main())
