"""Model quality through the real daemon: held-out sample sets → ``fringelive serve`` → masks.

Each sample of each sample set (``synth``/``dataset`` output: samples.h5 + metadata.csv) is
sent over the wire protocol with honest metadata (pixel size, dose, voltage and, where the set
records them, the camera constants), the published mask is compared with the set's exact mask:

* Dice of the whole frame, false-positive rate (FP / true background pixels), false-negative
  rate (FN / true particle pixels);
* on frames with no particle: the fraction of pixels called particle;
* the reported ``particle_count`` against the true count on frames with 1–2 particles
  (``count_truth`` in the ``--json`` rows): the metadata's ``particles`` for a set simulated
  without ``--edge-overlap`` (its ``synth.json``); for a set with it, the exact mask's own
  particle count, the mask measured by the daemon's rules (holes filled, components under
  ``[particles] min_diameter_nm`` are specks), because a simulation cell is periodic: a
  particle cut by the frame edge re-enters at the opposite edge, in image and mask alike, and
  shows as two edge-touching particles. (The mask count is wrong the other way where two
  particles touch: they are one component.) Both counts are in the rows (``true_particles``,
  ``label_particles``);
* the drift status (ok / warn / ood / unknown).

Rows are grouped by set and, where the metadata has them, by pixel-size band, dose band and
material. Tables go to stdout (markdown); ``--json`` writes every per-frame row.

    python benchmarks/model_quality.py --set accept=DIR --set bare=DIR [--bundle DIR] [--json out.json]

Without ``--bundle`` the daemon serves its built-in default, as a user would.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from fringelive.training.samples import load_sampleset

PX_BANDS = ((0.0, 0.02), (0.02, 0.03), (0.03, 1.0))
DOSE_BANDS = ((0.0, 200.0), (200.0, 500.0), (500.0, 1000.0), (1000.0, 1e9))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _band(value: float | None, bands: tuple[tuple[float, float], ...]) -> str:
    if value is None or not math.isfinite(value):
        return "?"
    for k, (lo, hi) in enumerate(bands):
        if lo <= value < hi:
            return f"≥{lo:g}" if k == len(bands) - 1 else (f"<{hi:g}" if k == 0 else f"{lo:g}–{hi:g}")
    return "?"


def _header(series: str, index: int, raw: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    h: dict[str, Any] = {"version": 1, "series": series, "frame": index, "shape": list(raw.shape),
                         "dtype": str(raw.dtype), "byteorder": "little", "timestamp": time.time()}
    for key in ("pixel_size_nm", "dose_e_per_A2", "voltage_kv"):
        if meta.get(key) is not None:
            h[key] = float(meta[key])
    return h


def _label_count(label: np.ndarray, meta: dict[str, Any]) -> int:
    """Particles in the exact mask ``label`` (H, W) bool, counted as the daemon counts them."""
    from fringelive.engine.particle_measure import ParticleSettings, measure_particles

    px = meta.get("pixel_size_nm")
    return int(measure_particles(label, float(px) if px else None, ParticleSettings()).summary["count"])


def _true_count(meta: dict[str, Any]) -> int | None:
    v = meta.get("particles")
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _edge_overlap(path: Path) -> bool:
    """Whether the set was simulated with particles cut by the frame edge (its ``synth.json``
    says; True when it cannot tell, e.g. a ``dataset`` of experimental frames)."""
    try:
        return bool(json.loads((Path(path) / "synth.json").read_text())["config"].get("edge_overlap", True))
    except (OSError, ValueError, KeyError, TypeError):
        return True


def run(sets: list[tuple[str, Path]], bundle: str | None, *, timeout_s: float = 120.0,
        camera_headers: bool = False, config: str | None = None) -> list[dict[str, Any]]:
    ports = [_free_port() for _ in range(3)]
    ingest, results, control = (f"tcp://127.0.0.1:{p}" for p in ports)
    cmd = [sys.executable, "-m", "fringelive.cli", "serve", "--ingest", ingest, "--results", results,
           "--control", control, "--metrics-port", "-1"]
    if bundle:
        cmd += ["--bundle", bundle]
    if config:
        cmd += ["--config", config]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    for t in (b"result", b"error"):
        sub.setsockopt(zmq.SUBSCRIBE, t)
    sub.connect(results)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 2)
    push.connect(ingest)
    rows: list[dict[str, Any]] = []
    try:
        time.sleep(3.0)  # the daemon loads its bundle; the SUB joins before the first frame
        if proc.poll() is not None:
            raise RuntimeError(f"fringelive serve exited: {proc.stderr.read()}")
        for name, path in sets:
            ss = load_sampleset(path)
            count_by_label = _edge_overlap(path)
            for i in range(len(ss)):
                raw = np.ascontiguousarray(ss.images[i])
                label = np.asarray(ss.labels[i]).astype(bool)
                meta = dict(ss.metadata[i])
                header = _header(name, i, raw, meta)
                if camera_headers:
                    for src, dst in (("camera_gain", "camera_gain_counts_per_e"),
                                     ("camera_offset", "camera_offset_counts"),
                                     ("camera_read_noise", "camera_read_noise_counts")):
                        if meta.get(src) is not None:
                            header[dst] = float(meta[src])
                push.send_multipart([msgpack.packb(header, use_bin_type=True), raw.astype(raw.dtype.newbyteorder("<")).tobytes()])
                deadline = time.monotonic() + timeout_s
                got = None
                while time.monotonic() < deadline:
                    if sub.poll(1000):
                        parts = sub.recv_multipart()
                        hdr = msgpack.unpackb(parts[1], raw=False)
                        if hdr.get("series") == name and hdr.get("frame") == i:
                            got = (parts[0].decode(), hdr, parts)
                            break
                if got is None:
                    raise RuntimeError(f"no result for {name} #{i} within {timeout_s} s")
                topic, hdr, parts = got
                row: dict[str, Any] = {"set": name, "index": i, "material": meta.get("material"),
                                       "pixel_size_nm": meta.get("pixel_size_nm"),
                                       "dose_e_per_A2": meta.get("dose_e_per_A2"),
                                       "true_particles": _true_count(meta),
                                       "label_particles": _label_count(label, meta), "topic": topic}
                row["count_truth"] = row["label_particles"] if count_by_label else row["true_particles"]
                if topic != "result":
                    row["error"] = hdr.get("reason")
                    rows.append(row)
                    continue
                h, w = hdr["mask"]["shape"]
                mask = np.unpackbits(np.frombuffer(parts[2], np.uint8), count=h * w).reshape(h, w).astype(bool)
                tp = int(np.count_nonzero(mask & label))
                fp = int(np.count_nonzero(mask & ~label))
                fn = int(np.count_nonzero(~mask & label))
                pos = int(label.sum())
                row.update({
                    "dice": (2 * tp / (2 * tp + fp + fn)) if (2 * tp + fp + fn) else 1.0,
                    "fp_rate": fp / max(label.size - pos, 1),
                    "fn_rate": (fn / pos) if pos else None,
                    "called_fraction": float(mask.mean()),
                    "empty": pos == 0,
                    "particle_count": hdr.get("particle_count"),
                    "drift": (hdr.get("drift") or {}).get("status"),
                    "drift_reasons": (hdr.get("drift") or {}).get("reasons"),
                    "dose_estimate": ((hdr.get("drift") or {}).get("estimates") or {}).get("dose_e_per_A2"),
                })
                rows.append(row)
    finally:
        push.close(linger=0)
        sub.close(linger=0)
        ctx.term()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def _mean(vals: list[float]) -> float:
    return float(np.mean(vals)) if vals else float("nan")


def table(rows: list[dict[str, Any]], key: str) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("topic") != "result":
            continue
        if key == "set":
            k = (r["set"], "all")
        elif key == "pixel":
            k = (r["set"], _band(r["pixel_size_nm"], PX_BANDS) + " nm")
        elif key == "dose":
            k = (r["set"], _band(r["dose_e_per_A2"], DOSE_BANDS) + " e/Å²")
        else:
            k = (r["set"], str(r.get("material")))
        groups.setdefault(k, []).append(r)
    lines = [f"| set | {key} | frames | Dice (frames with particles) | FP rate | FN rate | "
             "bare: mean called | bare: max called | count exact (1–2) | flagged |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (s, g), rs in sorted(groups.items()):
        full = [r for r in rs if not r["empty"]]
        bare = [r for r in rs if r["empty"]]
        cnt = [r for r in full if r["count_truth"] in (1, 2)]
        exact = sum(r["particle_count"] == r["count_truth"] for r in cnt)
        flagged = sum(r["drift"] in ("warn", "ood") for r in rs)
        lines.append(
            f"| {s} | {g} | {len(rs)} | {_mean([r['dice'] for r in full]):.3f} | "
            f"{_mean([r['fp_rate'] for r in rs]):.4f} | {_mean([r['fn_rate'] for r in full]):.3f} | "
            + (f"{_mean([r['called_fraction'] for r in bare]) * 100:.2f} % | "
               f"{max(r['called_fraction'] for r in bare) * 100:.2f} % | " if bare else "– | – | ")
            + (f"{exact}/{len(cnt)} | " if cnt else "– | ") + f"{flagged}/{len(rs)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", required=True, metavar="NAME=DIR", help="held-out sample set")
    ap.add_argument("--bundle", help="bundle directory (default: the daemon's built-in default)")
    ap.add_argument("--config", help="daemon TOML config")
    ap.add_argument("--camera-headers", action="store_true",
                    help="send the sets' camera gain/offset/read noise as frame-header keys")
    ap.add_argument("--by", nargs="+", default=["set", "pixel", "dose", "material"],
                    choices=["set", "pixel", "dose", "material"], help="tables to print")
    ap.add_argument("--json", type=Path, help="write the per-frame rows here")
    args = ap.parse_args(argv)
    sets = []
    for s in args.set:
        name, _, path = s.partition("=")
        if not path:
            ap.error(f"--set takes NAME=DIR, got {s!r}")
        sets.append((name, Path(path)))
    t0 = time.perf_counter()
    rows = run(sets, args.bundle, camera_headers=args.camera_headers, config=args.config)
    print(f"{len(rows)} frames through the daemon in {time.perf_counter() - t0:.0f} s "
          f"(bundle: {args.bundle or 'built-in default'})\n")
    for key in args.by:
        print(table(rows, key) + "\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
