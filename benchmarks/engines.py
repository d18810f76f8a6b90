"""CPU inference engines side by side, in one run, on the same preprocessed frames.

ONNX Runtime (the reference) vs OpenVINO FP32 vs OpenVINO BF16 (only where the CPU runs BF16
natively; otherwise the reason is printed) vs torch, on the default bundle's member, at the
shapes the daemon feeds its backend:

* ``1024x1``: a 1024² frame is one whole-frame call, batch 1 (``tile_size = "auto"``);
* ``2176x2``: a 4096² frame is 2×2 halo tiles of 2176² input, two calls of batch 2.

Inputs are simulated camera frames of exactly those sides (``SimulatedCamera``, seed 0),
preprocessed as the card says. Engines run round-robin (one warm-up call each, then ``--repeats``
rounds), so load changes on a shared machine hit all of them alike; the median is reported.
Columns: median and min ms per call, speed vs ONNX Runtime, max abs logit difference and argmax
agreement vs ONNX Runtime, and the GFLOP/s reached.

Roofline note: FLOPs are counted from the ONNX graph (Conv: 2·N·Cout·Hout·Wout·Cin/groups·kh·kw;
Add/Relu/MaxPool/Resize: one per output element), activation traffic as the bytes each Conv reads
and writes (what remains once element-wise ops are fused); peak = cores × GHz × FLOP/cycle from
the ISA (AVX-512: 2×16 FMA lanes ×2; AVX2+FMA: 2×8×2; SSE: 4×2); bandwidth measured with a numpy
copy. The bound is whichever of peak and intensity × bandwidth is lower.

    python benchmarks/engines.py [--threads 2] [--shapes 1024x1 2176x2] [--repeats 3] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger("benchmarks.engines")


# --- inputs --------------------------------------------------------------------------------------

def frames(bundle: Any, side: int, n: int, seed: int = 0) -> np.ndarray:
    """(n, 1, side, side) float32: simulated camera frames preprocessed with the card's settings."""
    from fringelive.engine.preprocess import preprocess
    from fringelive.stream.camera_sim import SimulatedCamera

    env = bundle.card.envelope
    px = env.pixel_size_nm.center if env.pixel_size_nm else 0.02
    dose = env.dose_e_per_A2.center if env.dose_e_per_A2 else 423.0
    cam = SimulatedCamera((side, side), pixel_size_nm=px, dose_e_per_A2=dose, scenes=n, seed=seed)
    out = np.empty((n, 1, side, side), np.float32)
    for i in range(n):
        counts, _, _ = cam.frame(i)
        out[i, 0] = np.asarray(preprocess(counts, bundle.card.preprocessing, device="cpu"))
    return out


# --- FLOPs and traffic from the ONNX graph ---------------------------------------------------------

def graph_cost(onnx_path: Path, shape: tuple[int, int, int, int]) -> dict[str, float]:
    """FLOPs (conv, other) and conv activation bytes of one call on input ``shape``."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(onnx_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, shape):
        d.ClearField("dim_param")
        d.dim_value = int(v)
    model = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    conv = other = conv_bytes = 0.0
    levels: dict[int, list[float]] = {}  # output height -> [conv FLOPs, conv bytes, convs]
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if not out or not all(out):
            continue
        elems = float(np.prod(out))
        if node.op_type == "Conv":
            w = inits[node.input[1]]
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            f = 2.0 * elems * w[1] * float(np.prod(w[2:]))  # weights (Cout, Cin/groups, kh, kw)
            b = 4.0 * (elems + float(np.prod(shapes.get(node.input[0], [0])))) + 4.0 * float(np.prod(w))
            conv += f
            conv_bytes += b
            lv = levels.setdefault(out[2], [0.0, 0.0, 0])
            lv[0] += f
            lv[1] += b
            lv[2] += 1
        elif node.op_type in ("Add", "Relu", "MaxPool", "Resize", "Concat"):
            other += elems if node.op_type != "Concat" else 0.0
    return {"conv_flops": conv, "other_flops": other, "conv_bytes": conv_bytes, "levels": levels}


def cpu_peak(threads: int) -> dict[str, Any]:
    flags = ""
    mhz = 0.0
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip().lower()
            if key == "flags" and not flags:
                flags = line.split(":", 1)[1]
            elif key == "cpu mhz" and not mhz:
                mhz = float(line.split(":", 1)[1])
            elif key == "model name":
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    f = set(flags.split())
    if "avx512f" in f:
        isa, per_cycle, lanes = "AVX-512 (2 FMA x 16 fp32 lanes)", 64, 16
    elif "avx2" in f and "fma" in f:
        isa, per_cycle, lanes = "AVX2 + FMA (2 FMA x 8 fp32 lanes)", 32, 8
    else:
        isa, per_cycle, lanes = "SSE (4 lanes, no FMA)", 8, 4
    extra = [x for x in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "avx_vnni") if x in f]
    ghz = mhz / 1e3 if mhz else 2.0
    return {"model": model, "isa": isa, "bf16_isa": extra, "ghz": ghz, "cores": threads,
            "flop_per_cycle": per_cycle, "lanes": lanes, "peak_gflops": threads * ghz * per_cycle}


def copy_bandwidth(mib: int = 256) -> float:
    """GB/s of a numpy copy (read + write), one thread, best of 3."""
    src = np.ones(mib << 18, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


# --- engines -------------------------------------------------------------------------------------

def build_engines(bundle: Any, threads: int) -> tuple[dict[str, Callable[[np.ndarray], np.ndarray]], dict[str, str],
                                                          list[Any]]:
    from fringelive.engine.backends import BackendUnavailable, create_backend

    made: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    notes: dict[str, str] = {}
    closers: list[Any] = []
    wanted = [("onnxruntime", "onnxruntime", {}), ("openvino fp32", "openvino", {"precision": "fp32"}),
              ("openvino bf16", "openvino", {"precision": "bf16"}), ("torch", "torch", {})]
    for label, kind, opts in wanted:
        try:
            b = create_backend(kind, bundle, member=0, intra_op_threads=threads, **opts)
        except BackendUnavailable as e:
            notes[label] = e.reason
            continue
        made[label] = b
        closers.append(b)
    return made, notes, closers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads per engine (count; default 2)")
    ap.add_argument("--shapes", nargs="+", default=["1024x1", "2176x2"],
                    help="SIDExBATCH inputs (default: 1024x1 = a 1024² frame, 2176x2 = a batch of a 4096² frame's tiles)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (count; default 3)")
    ap.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: the installed default bundle)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    from fringelive.bundle.bundle_io import load_bundle
    from fringelive.default_bundle import directory

    if args.bundle is None:
        args.bundle = directory()
    bundle = load_bundle(args.bundle)
    onnx_path = bundle.path / bundle.card.members[0].file
    engines, notes, closers = build_engines(bundle, args.threads)
    peak = cpu_peak(args.threads)
    bw = copy_bandwidth()
    versions = {}
    for mod in ("onnxruntime", "openvino", "torch", "numpy"):
        try:
            versions[mod] = str(__import__(mod).__version__).split("-")[0]
        except ImportError:
            pass
    print(f"engines benchmark: bundle {bundle.card.name} ({bundle.card.architecture.name} "
          f"{bundle.card.architecture.spec.get('widths')}, {bundle.card.architecture.parameters} parameters), "
          f"{args.threads} threads, {peak['model']}, python {platform.python_version()}, "
          + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for label, why in notes.items():
        print(f"  {label}: not run: {why}")
    rows = []
    for spec in args.shapes:
        side, batch = (int(v) for v in spec.lower().split("x"))
        x = frames(bundle, side, batch)
        cost = graph_cost(onnx_path, (batch, 1, side, side))
        outs = {label: np.asarray(fn(x)) for label, fn in engines.items()}  # warm-up (+ compile)
        times: dict[str, list[float]] = {label: [] for label in engines}
        for _ in range(args.repeats):
            for label, fn in engines.items():
                t0 = time.perf_counter()
                fn(x)
                times[label].append((time.perf_counter() - t0) * 1e3)
        ref = outs.get("onnxruntime")
        ref_ms = statistics.median(times["onnxruntime"]) if "onnxruntime" in times else None
        for label in engines:
            med = statistics.median(times[label])
            diff = agree = None
            if ref is not None and label != "onnxruntime":
                diff = float(np.max(np.abs(outs[label] - ref)))
                agree = float(np.mean(outs[label].argmax(1) == ref.argmax(1)))
            gflops = (cost["conv_flops"] + cost["other_flops"]) / (med / 1e3) / 1e9
            rows.append((f"{side}²×{batch}", label, med, min(times[label]), (ref_ms / med) if ref_ms else None,
                         diff, agree, gflops, cost))
    print(f"\n{'input':>10s}  {'engine':14s} {'median ms':>10s} {'min ms':>8s} {'vs ORT':>7s} "
          f"{'max|Δlogit|':>11s} {'argmax agree':>12s} {'GFLOP/s':>8s} {'% peak':>7s}")
    for shape, label, med, mn, ratio, diff, agree, gflops, _ in rows:
        print(f"{shape:>10s}  {label:14s} {med:10.1f} {mn:8.1f} {(f'{ratio:.2f}x' if ratio else '-'):>7s} "
              f"{(f'{diff:.1e}' if diff is not None else '-'):>11s} {(f'{agree:.4%}' if agree is not None else '-'):>12s} "
              f"{gflops:8.1f} {100 * gflops / peak['peak_gflops']:6.1f}%")
    # roofline
    c = rows[0][-1]
    side0 = args.shapes[0]
    total = c["conv_flops"] + c["other_flops"]
    intensity = c["conv_flops"] / c["conv_bytes"]
    attainable = min(peak["peak_gflops"], intensity * bw)
    best = max(r[7] for r in rows)
    print(f"\nroofline ({side0}): {total / 1e9:.2f} GFLOP per call ({c['conv_flops'] / total:.1%} in Conv, "
          f"{c['conv_flops'] / 1e9 / (int(side0.split('x')[0]) ** 2 * int(side0.split('x')[1])) * 1e9:.0f} FLOP/px); "
          f"Conv activation traffic {c['conv_bytes'] / 2**20:.0f} MiB -> {intensity:.1f} FLOP/byte")
    h0 = int(side0.split("x")[0])
    print("  by resolution: " + "; ".join(
        f"1/{h0 // h} res: {n} convs, {fl / c['conv_flops']:.0%} of FLOPs, {fl / by:.0f} FLOP/B"
        for h, (fl, by, n) in sorted(c["levels"].items(), reverse=True)))
    print(f"  peak: {peak['cores']} cores x {peak['ghz']:.2f} GHz x {peak['flop_per_cycle']} FLOP/cycle "
          f"({peak['isa']}) = {peak['peak_gflops']:.0f} GFLOP/s; BF16/AMX/VNNI ISA: {peak['bf16_isa'] or 'none'}"
          + (" (the % peak column is of the FP32 peak for every row; avx512_bf16 dot products double it, AMX tiles more)"
             if peak["bf16_isa"] else ""))
    first = [r for r in rows if r[0] == rows[0][0]]
    best_row = max(first, key=lambda r: r[7])
    t_compute = total / (peak["peak_gflops"] * 1e9) * 1e3
    t_memory = c["conv_bytes"] / (bw * 1e9) * 1e3
    bound = "compute" if t_compute >= t_memory else "memory"
    print(f"  memory: numpy copy {bw:.1f} GB/s (1 thread); intensity x bandwidth = {intensity * bw:.0f} GFLOP/s "
          f"-> the roofline bound is {bound} ({min(peak['peak_gflops'], intensity * bw):.0f} GFLOP/s attainable)")
    print(f"  time bounds per call: compute {t_compute:.0f} ms (FLOPs / peak), memory {t_memory:.0f} ms "
          f"(Conv traffic / bandwidth); fastest engine {best_row[1]}: median {best_row[2]:.0f} ms "
          f"(min {best_row[3]:.0f}), {best_row[7]:.1f} GFLOP/s = {100 * best_row[7] / peak['peak_gflops']:.0f}% of peak")
    lanes = peak["lanes"]
    print(f"  -> {best_row[3] / max(t_compute, t_memory):.0f}x (by its min) above the roofline: neither compute nor DRAM bandwidth "
          f"limits it; the kernels' efficiency on 4-64-channel convolutions does ({lanes}-lane FMA vectors "
          f"{4 / lanes:.0%} used at 4 channels, one pass over a {4 * 4 * int(side0.split('x')[0]) ** 2 / 2**20:.0f} MiB "
          f"activation per full-resolution layer), which is what OpenVINO's fused, channel-blocked kernels improve; "
          + ("BF16 runs natively here: the daemon uses it only if its parity check passes (engine/precision.py)"
             if peak["bf16_isa"] else "BF16 would help only where the ISA runs it natively"))
    for b in closers:
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
