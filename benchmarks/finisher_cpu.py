"""CPU time per finisher stage of the daemon on simulated camera frames (issue #14).

The finisher (``daemon/threads.py``) runs mask → particles, the drift check, the camera
learner and tracking on 2 shared cores while the worker infers the next frame, so its CPU time
is what the network loses. This runs the daemon's own pieces (``load_model``'s pipeline, the
bundle's ``DriftMonitor``, ``CameraLearner``, ``TrackingStage``, default config) in one thread,
without sockets, and prints ``time.process_time`` per stage (ms per frame, median over
frames): a number that a loaded machine inflates far less than wall time.

    python benchmarks/finisher_cpu.py [--size 2048] [--frames 6]

The network runs once per distinct frame (ONNX Runtime, 2 threads) to give the finisher real
probabilities; its time is not reported here (``daemon_engines.py`` measures the daemon).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2048, help="frame side, px (default 2048)")
    ap.add_argument("--frames", type=int, default=6, help="frames through the finisher (count; default 6)")
    ap.add_argument("--distinct", type=int, default=3, help="distinct simulated frames, cycled (count; default 3)")
    args = ap.parse_args(argv)

    from prometheus_client import CollectorRegistry

    from fringelive.bundle.bundle_io import load_bundle
    from fringelive.daemon.camera import CameraLearner
    from fringelive.daemon.config import DaemonConfig, default_bundle_path
    from fringelive.daemon.insitu import TrackingStage
    from fringelive.daemon.modelset import make_pipeline
    from fringelive.engine.backends import create_backends
    from fringelive.engine.camera import FrameBlocks
    from fringelive.engine.drift import DriftMonitor
    from fringelive.engine.frame import FrameMetadata
    from fringelive.stream.camera_sim import SimulatedCamera

    cfg = DaemonConfig.from_dict({"model": {"bundle": str(default_bundle_path()), "backend": "onnxruntime",
                                            "intra_op_threads": 2}})
    bundle = load_bundle(default_bundle_path())
    pipeline = make_pipeline(bundle, create_backends("onnxruntime", bundle, intra_op_threads=2), cfg)
    monitor = DriftMonitor(bundle.card, cfg.drift)
    camera = CameraLearner(cfg.camera)
    tracking = TrackingStage(cfg.tracking, CollectorRegistry())
    cam = SimulatedCamera((args.size, args.size), scenes=2, seed=0)
    frames = [cam.frame(i)[0] for i in range(args.distinct)]
    meta = FrameMetadata.of({"pixel_size_nm": 0.02, "dose_e_per_A2": 423.0, "voltage_kv": 300.0})
    inferred = [pipeline.infer(f, meta) for f in frames]
    print(f"finisher CPU time: {args.frames} frames of {args.size}² (simulated camera, default bundle "
          f"{bundle.name}, default config), ms per frame (time.process_time)", flush=True)
    cpu: dict[str, list[float]] = {}

    def lap(stage: str, fn):  # noqa: ANN001, ANN202
        t = time.process_time()
        out = fn()
        cpu.setdefault(stage, []).append((time.process_time() - t) * 1e3)
        return out

    for i in range(args.frames):
        pixels, inf = frames[i % len(frames)], inferred[i % len(frames)]
        result = lap("particles", lambda: pipeline.finish(inf))
        blocks = FrameBlocks(pixels, result.mask)  # as the daemon's finisher: computed once, for both
        lap("drift", lambda: monitor.assess(pixels, meta, result, threshold=pipeline.threshold,
                                            camera=camera.settings, learned=camera.learned, blocks=blocks))
        lap("camera_learner", lambda: camera.observe(pixels, meta, result.mask, blocks))
        header = {"series": "bench", "frame": i, "meta": meta.to_dict(), "particles": [dict(p) for p in result.particles]}
        lap("tracking", lambda: tracking.apply(header, pixels, result.mask, result.labels))
    camera.wait()
    pipeline.close()
    total = [sum(v[i] for v in cpu.values()) for i in range(args.frames)]
    for stage, v in [*cpu.items(), ("finisher total", total)]:
        print(f"  {stage:15s} {statistics.median(v):7.1f} ms   (frames: {', '.join(f'{x:.0f}' for x in v)})")
    print(f"  preprocess      {np.median([x.timings_ms['preprocess'] for x in inferred]):7.1f} ms wall (worker thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
