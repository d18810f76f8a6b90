"""Client half of ``benchmarks/gpu_check.sh``: frames in, numbers out, against a running daemon.

    python benchmarks/gpu_check_client.py make-frames --size 4096 --count 4 --out frames.npy
    python benchmarks/gpu_check_client.py measure --ingest EP --results EP --frames frames.npy \
        --n 60 --label tensorrt --pid PID [--json out.json]
    python benchmarks/gpu_check_client.py h2d --size 4096      # pinned vs pageable copy of one frame

``make-frames``: simulated camera frames (uint16 counts, ``SimulatedCamera``, seed 0), saved as one
(N, H, W) ``.npy`` stack (also readable by ``fringelive send``).

``measure``: warm-up (3 frames), then *one at a time* (send, wait for the result: latency without
queueing; p50/p99 over ``--latency-frames``) and *streamed* (``--n`` frames pushed as fast as
back-pressure allows: frames/s and p50/p99 latency under load). Prints the median per-stage split
from the result headers' ``timings_ms`` (queue, preprocess, inference, postprocess, particles,
drift, publish), the daemon's peak RSS (``/proc/PID/status`` VmHWM) and the GPU memory in use
(peak of ``nvidia-smi`` polled every 50 ms; "n/a" without it).

``h2d``: the host→device copy of one frame's preprocessed float32 pixels from pageable and from
pinned memory (torch, CUDA only): the daemon does not time its copy separately (it sits inside
``inference``), so the check measures what it costs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def _protocol() -> Any:
    from fringelive.daemon import protocol

    return protocol


def _camera() -> Any:
    from fringelive.stream.camera_sim import SimulatedCamera

    return SimulatedCamera


def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(np.ceil(q / 100 * len(v))) - 1))]


def make_frames(size: int, count: int, out: Path) -> None:
    t0 = time.perf_counter()
    cam = _camera()((size, size), scenes=min(count, 2), seed=0)
    stack = np.stack([cam.frame(i)[0] for i in range(count)]).astype(np.uint16)
    np.save(out, stack, allow_pickle=False)
    print(f"frames: {count} x {size}² uint16 -> {out} ({stack.nbytes / 2**20:.0f} MiB, {time.perf_counter() - t0:.1f} s)")


class GpuMemory:
    """Peak GPU memory in use (MiB, all processes) from nvidia-smi, polled in a thread."""

    def __init__(self) -> None:
        self.peak: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                used = max(float(v) for v in out.split())
                self.peak = used if self.peak is None else max(self.peak, used)
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self._stop.wait(0.05)

    def stop(self) -> float | None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        return self.peak


def peak_rss_mib(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import zmq

    protocol = _protocol()
    stack = np.load(args.frames, mmap_mode="r")
    meta = {"pixel_size_nm": 0.02, "dose_e_per_A2": 423.0, "voltage_kv": 300.0}
    msgs = [protocol.encode_frame(np.ascontiguousarray(stack[i % len(stack)]), series=args.label, frame=i, **meta)
            for i in range(len(stack))]
    ctx = zmq.Context.instance()
    sub, push = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH)
    sub.subscribe(b"")
    sub.rcvhwm = 0
    sub.connect(args.results)
    push.connect(args.ingest)
    time.sleep(0.5)  # the subscription propagates
    stages: dict[str, list[float]] = {}

    def receive(timeout_s: float) -> float:
        while True:
            if not sub.poll(int(timeout_s * 1000)):
                raise RuntimeError(f"no result within {timeout_s:.0f} s")
            parts = sub.recv_multipart(copy=False)
            if bytes(parts[0].buffer) != protocol.RESULT_TOPIC:  # an error message: report it
                raise RuntimeError(f"daemon answered {bytes(parts[0].buffer)[:40]!r}: {bytes(parts[1].buffer)[:300]!r}")
            t = time.perf_counter()
            header, _, _ = protocol.decode_result(parts)
            if header.get("series") != args.label:  # e.g. the `fringelive send` check's frames
                continue
            for k, v in header.get("timings_ms", {}).items():
                stages.setdefault(k, []).append(float(v))
            return t

    gpu = GpuMemory()
    for i in range(3):  # warm-up: engines, allocators, tile plans
        push.send_multipart(msgs[i % len(msgs)], copy=False)
        receive(args.timeout)
    stages.clear()
    one: list[float] = []
    for i in range(args.latency_frames):
        t0 = time.perf_counter()
        push.send_multipart(msgs[i % len(msgs)], copy=False)
        one.append((receive(args.timeout) - t0) * 1e3)
    sent: list[float] = []

    def send_all() -> None:
        for i in range(args.n):
            push.send_multipart(msgs[i % len(msgs)], copy=False)
            sent.append(time.perf_counter())

    t0 = time.perf_counter()
    th = threading.Thread(target=send_all)
    th.start()
    done = [receive(args.timeout) for _ in range(args.n)]
    th.join()
    fps = args.n / (done[-1] - t0)
    lat = [(r - s) * 1e3 for r, s in zip(done, sent)]
    sub.close(linger=0)
    push.close(linger=0)
    out = {"label": args.label, "size": int(stack.shape[1]), "frames": args.n, "fps": fps,
           "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
           "one_p50_ms": percentile(one, 50), "one_p99_ms": percentile(one, 99),
           "stages_ms": {k: statistics.median(v) for k, v in stages.items()},
           "gpu_mem_peak_mib": gpu.stop(), "daemon_peak_rss_mib": peak_rss_mib(args.pid)}
    st = out["stages_ms"]
    order = [k for k in ("queue", "preprocess", "inference", "postprocess", "particles", "drift", "publish", "total")
             if k in st]
    gm = f"{out['gpu_mem_peak_mib']:.0f} MiB" if out["gpu_mem_peak_mib"] is not None else "n/a (no nvidia-smi)"
    rss = f"{out['daemon_peak_rss_mib']:.0f} MiB" if out["daemon_peak_rss_mib"] is not None else "n/a"
    print(f"RESULT {args.label}: {out['size']}² streamed {fps:.2f} frames/s, latency p50 {out['p50_ms']:.1f} ms "
          f"p99 {out['p99_ms']:.1f} ms; one at a time p50 {out['one_p50_ms']:.1f} p99 {out['one_p99_ms']:.1f} ms; "
          f"GPU memory peak {gm}; daemon peak RSS {rss}")
    print(f"STAGES {args.label} (median ms): " + ", ".join(f"{k} {st[k]:.1f}" for k in order)
          + "  [host->device copy: inside 'inference'; see the h2d line]")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


def h2d(size: int) -> None:
    try:
        import torch
    except ImportError:
        print("H2D: n/a (no torch)")
        return
    if not torch.cuda.is_available():
        print("H2D: n/a (no CUDA GPU visible to torch)")
        return
    x = torch.empty((1, 1, size, size), dtype=torch.float32)
    pinned = x.pin_memory()
    dev = torch.empty_like(x, device="cuda")
    res = {}
    for name, src in (("pageable", x), ("pinned", pinned)):
        for _ in range(3):
            dev.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            dev.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        res[name] = (time.perf_counter() - t0) / 10 * 1e3
    gb = x.numel() * 4 / 1e9
    print(f"H2D {size}² float32 ({gb * 1e3:.0f} MB): pageable {res['pageable']:.2f} ms ({gb / res['pageable'] * 1e3:.1f} GB/s), "
          f"pinned {res['pinned']:.2f} ms ({gb / res['pinned'] * 1e3:.1f} GB/s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mf = sub.add_parser("make-frames")
    mf.add_argument("--size", type=int, required=True)
    mf.add_argument("--count", type=int, default=4)
    mf.add_argument("--out", type=Path, required=True)
    me = sub.add_parser("measure")
    me.add_argument("--ingest", required=True)
    me.add_argument("--results", required=True)
    me.add_argument("--frames", type=Path, required=True)
    me.add_argument("--n", type=int, default=60, help="streamed frames (count)")
    me.add_argument("--latency-frames", type=int, default=10, help="one-at-a-time frames (count)")
    me.add_argument("--label", default="run")
    me.add_argument("--pid", type=int, default=None, help="the daemon's process id (peak RSS)")
    me.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one result")
    me.add_argument("--json", default=None)
    hd = sub.add_parser("h2d")
    hd.add_argument("--size", type=int, default=4096)
    args = ap.parse_args(argv)
    if args.cmd == "make-frames":
        make_frames(args.size, args.count, args.out)
    elif args.cmd == "measure":
        measure(args)
    else:
        h2d(args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
