"""Tiles per second through NVIDIA Triton Inference Server vs local ONNX Runtime, same tile batch.

    python benchmarks/triton_offload.py [--tile 512] [--batch 4] [--repeats 5] [--clients 1 2]
                                [--platform python] [--bundle DIR] [--threads N]
    python benchmarks/triton_offload.py --url http://gpu-box:8000 [--prefix NAME] --bundle DIR   # a running server

Without ``--url`` it exports ``--bundle`` (default: the installed default bundle) with
``fringelive export triton --platform python --kind cpu`` and starts the ``tritonserver`` that
nvidia-pytriton bundles on a loopback port (:class:`LocalTritonServer`); with ``--url`` it uses
that server's models ``<prefix>_m<i>`` as exported from the same bundle.

Rows, each on a batch of ``--batch`` tiles of ``--tile``² px (the network input, halos included):

* ``onnxruntime (local)``: the daemon's default CPU backend, ``--threads`` intra-op threads;
* ``triton, K client(s)``: K :class:`TritonBackend` s in K threads (K daemons' worker threads),
  each sending the whole batch per call; Triton's dynamic batcher may merge their requests.

Columns: best wall ms per batch call (per client), tiles/s over all clients, ratio to local ONNX
Runtime, and the round trip of one 64² tile (the transport's latency floor). On one CPU host the
local server competes with the client for the same cores, so the ratio bounds the protocol's
overhead from above; the offload pays on a GPU server fed by several daemons.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def best_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up (session init, connection, dynamic batcher)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def concurrent_ms(backends: list[Any], batch: np.ndarray, repeats: int) -> float:
    """Best wall ms of one round in which every backend (own thread) runs ``batch`` once."""
    barrier = threading.Barrier(len(backends) + 1)
    rounds: list[float] = []
    errors: list[BaseException] = []

    def worker(b: Any) -> None:
        try:
            for _ in range(repeats + 1):
                barrier.wait()
                b(batch)
                barrier.wait()
        except BaseException as e:  # noqa: BLE001 - reported in the main thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(b,)) for b in backends]
    for t in threads:
        t.start()
    try:
        for r in range(repeats + 1):
            barrier.wait()
            t0 = time.perf_counter()
            barrier.wait()
            if r:  # round 0 warms up
                rounds.append(time.perf_counter() - t0)
    except threading.BrokenBarrierError:
        pass
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return 1e3 * min(rounds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", help="bundle directory (default: the installed default bundle)")
    p.add_argument("--tile", type=int, default=512, help="tile side incl. halos, px (multiple of 16; default 512)")
    p.add_argument("--batch", type=int, default=4, help="tiles per batch call, count (default 4)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats; the best is reported (default 5)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 2], help="concurrent Triton clients, counts (default 1 2)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads, count; 0 = usable cores")
    p.add_argument("--platform", choices=["python", "onnxruntime"], default="python",
                   help="export platform for the local server (the bundled one has the python backend only)")
    p.add_argument("--url", help="a running Triton server, http://HOST:PORT (default: start a local one)")
    p.add_argument("--prefix", help="model-name prefix on --url (default: the bundle name)")
    args = p.parse_args(argv)
    if args.tile < 16 or args.tile % 16:
        p.error(f"--tile must be a positive multiple of 16 px, got {args.tile}")

    from fringelive.engine.backends import create_backend, usable_cpu_count
    from fringelive.daemon.config import default_bundle_path
    from fringelive.bundle.bundle_io import load_bundle
    from fringelive.export.triton_export import export_triton
    from fringelive.export.triton_server import LocalTritonServer

    bundle_dir = Path(args.bundle) if args.bundle else default_bundle_path()
    if bundle_dir is None:
        p.error("no --bundle given and no default bundle installed")
    bundle = load_bundle(bundle_dir)
    threads = args.threads or usable_cpu_count()
    batch = np.random.default_rng(0).standard_normal((args.batch, 1, args.tile, args.tile)).astype(np.float32)
    tiny = np.random.default_rng(1).standard_normal((1, 1, 64, 64)).astype(np.float32)

    server: LocalTritonServer | None = None
    tmp = tempfile.TemporaryDirectory(prefix="fringelive-triton-bench-")
    try:
        url = args.url
        if url is None:
            export_triton(bundle, Path(tmp.name) / "repo", platform=args.platform, kind="cpu",
                          max_batch=max(args.batch * max(args.clients), 1), intra_op_threads=threads)
            t0 = time.perf_counter()
            server = LocalTritonServer(Path(tmp.name) / "repo").start()
            print(f"local tritonserver ({args.platform} backend) ready in {time.perf_counter() - t0:.1f} s at {server.url}")
            url = server.url
        kw = {"triton_url": url, "triton_model_prefix": args.prefix, "triton_timeout_s": 300.0}

        rows: list[tuple[str, float, float, float]] = []
        with create_backend("onnxruntime", bundle, intra_op_threads=threads) as local:
            ms = best_ms(lambda: local(batch), args.repeats)
            rows.append(("onnxruntime (local)", ms, 1e3 * args.batch / ms, best_ms(lambda: local(tiny), args.repeats)))
            ref = local(batch)
        with create_backend("triton", bundle, **kw) as one:
            diff = float(np.abs(one(batch) - ref).max())
            rtt = best_ms(lambda: one(tiny), args.repeats)
        for k in args.clients:
            clients = [create_backend("triton", bundle, **kw) for _ in range(k)]
            try:
                ms = concurrent_ms(clients, batch, args.repeats)
            finally:
                for c in clients:
                    c.close()
            rows.append((f"triton, {k} client(s)", ms, 1e3 * args.batch * k / ms, rtt))
    finally:
        if server is not None:
            server.close()
        tmp.cleanup()

    base = rows[0][2]
    print(f"\nbundle {bundle.name}: batch {args.batch} x {args.tile}² px tiles, member 0, {threads} ORT thread(s), "
          f"{os.cpu_count()} CPU(s) visible; max |triton - local| = {diff:.2e} logit")
    print(f"{'path':<22} {'ms/batch call':>14} {'tiles/s':>9} {'vs local':>9} {'64² round trip ms':>18}")
    for name, ms, tps, small in rows:
        print(f"{name:<22} {ms:>14.1f} {tps:>9.2f} {tps / base:>8.2f}x {small:>18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
