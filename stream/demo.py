"""The demo driver: the daemon in-process on the default bundle (or another), frames from a
simulated camera over the real wire protocol, a live line per result, an overlay PNG and a CSV
at the end (``fringelive demo``)."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from fringelive.daemon.config import (ControlConfig, DaemonConfig, IngestConfig, MetricsConfig, ModelConfig,
                                      QueueConfig, ResultsConfig, default_bundle_path)
from fringelive.daemon.protocol import decode_error, decode_result, encode_frame
from fringelive.daemon.server import Daemon
from fringelive.daemon.view import ViewSettings
from fringelive.stream.camera_sim import default_sweep
from fringelive.stream.demo_insitu import write_growth_figure, write_overlay_figure, write_tracks_csv
from fringelive.stream.insitu_camera import InSituCamera
from fringelive.training.metrics import dice_from_masks

__all__ = ["CSV_FIELDS", "DemoError", "overlay_rgb", "run_demo", "write_png"]


class DemoError(ValueError):
    """The demo cannot start (e.g. no bundle); the message says why."""


CSV_FIELDS = ("series", "frame", "condition", "pixel_size_nm", "dose_e_per_A2", "model", "particle_count",
              "area_fraction", "mean_diameter_nm", "dice_vs_truth", "drift_status", "drift_reasons",
              "latency_ms", "pipeline_ms")


def run_demo(*, duration_s: float = 60.0, frame_px: int = 2048, pixel_size_nm: float = 0.02,
             dose: float = 423.0, sweep: bool = True, bundle: Path | None = None, out: Path = Path("demo-out"),
             seed: int = 0, max_frames: int | None = None, echo: Any = print) -> dict[str, Any]:
    """Run the demo; returns a summary dict (frames sent/processed/dropped/rejected, fps, files)."""
    bundle_path = bundle or default_bundle_path()
    if bundle_path is None:
        raise DemoError("no --bundle given and no default bundle installed")
    cfg = DaemonConfig(
        ingest=IngestConfig(endpoint="tcp://127.0.0.1:0"),
        results=ResultsConfig(endpoint="tcp://127.0.0.1:0"),
        control=ControlConfig(endpoint="tcp://127.0.0.1:0"),
        metrics=MetricsConfig(port=0),
        queue=QueueConfig(size=2, policy="block"),
        model=ModelConfig(bundle=str(bundle_path)),
        view=ViewSettings(enabled=True, port=0),
    )
    out.mkdir(parents=True, exist_ok=True)
    echo(f"simulating {frame_px}x{frame_px} scenes at {pixel_size_nm} nm/px ...")
    schedule = default_sweep(pixel_size_nm, dose) if sweep else None
    # in situ story: particles move, grow, two coalesce (middle of the run), the stage drifts, the
    # temperature ramps; the sweep changes the dose (stream/insitu_camera.py)
    n_story = max_frames if max_frames is not None else 40
    cam = InSituCamera((frame_px, frame_px), pixel_size_nm=pixel_size_nm, dose_e_per_A2=dose, n_frames=max(n_story, 4),
                       seed=seed)
    headers: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    sent = 0
    with Daemon(cfg) as daemon:
        ep = daemon.endpoints
        echo(f"daemon up: ingest {ep['ingest']}  results {ep['results']}  control {ep['control']}")
        echo(f"metrics: {ep.get('metrics', 'disabled')}")
        echo(f"live view: {ep.get('view', 'disabled')}  (open in a browser)")
        ctx = zmq.Context.instance()
        push = ctx.socket(zmq.PUSH)
        sub = ctx.socket(zmq.SUB)
        try:
            push.setsockopt(zmq.SNDHWM, 2)
            push.connect(ep["ingest"])
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(ep["results"])
            time.sleep(0.3)  # let the subscription reach the publisher
            echo(f"{'frame':>5} {'condition':<20} {'px nm':>6} {'e/Å²':>6} {'particles':>9} {'area%':>6} "
                 f"{'Dice':>5} {'latency ms':>10} {'fps':>5}  drift")
            t_start = time.monotonic()
            in_flight: dict[int, tuple[float, np.ndarray, np.ndarray, dict]] = {}
            done = 0
            while True:
                elapsed = time.monotonic() - t_start
                sending = elapsed < duration_s and (max_frames is None or sent < max_frames)
                if sending and len(in_flight) < 2:
                    fraction = min(elapsed / duration_s, 1.0)
                    cond = _condition(schedule, fraction, dose)
                    counts, mask, meta = cam.frame(sent, fraction, dose_e_per_A2=cond[0], label=cond[1])
                    push.send_multipart(encode_frame(counts, series="demo", frame=sent, **meta), copy=False)
                    in_flight[sent] = (time.monotonic(), counts, mask, meta)
                    sent += 1
                    continue
                if not in_flight:
                    break
                if not sub.poll(timeout=1000 if sending else 30000):
                    if not sending:
                        echo("no result for 30 s; giving up on the frames in flight")
                        break
                    continue
                parts = sub.recv_multipart()
                if parts[0] == b"error":
                    err = decode_error(parts)
                    in_flight.pop(err.get("frame"), None)
                    echo(f"{err.get('frame', '?'):>5} ERROR {err['reason']}: {err['detail']}")
                    continue
                header, pred, _ = decode_result(parts)
                fid = header["frame"]
                if fid not in in_flight:
                    continue
                t_sent, counts, truth, meta = in_flight.pop(fid)
                done += 1
                latency = (time.monotonic() - t_sent) * 1000
                fps = done / max(time.monotonic() - t_start, 1e-9)
                drift = header.get("drift") or {}
                diam = [p["diameter_nm"] for p in header["particles"] if p.get("diameter_nm") is not None]
                row = {
                    "series": header["series"], "frame": fid, "condition": meta["tags"]["condition"],
                    "pixel_size_nm": meta["pixel_size_nm"], "dose_e_per_A2": round(meta["dose_e_per_A2"], 1),
                    "model": header.get("model"), "particle_count": header["particle_count"],
                    "area_fraction": round(header["area_fraction"], 4),
                    "mean_diameter_nm": round(float(np.mean(diam)), 3) if diam else "",
                    "dice_vs_truth": round(dice_from_masks(pred, truth), 4),
                    "drift_status": drift.get("status", "unknown"),
                    "drift_reasons": ";".join(drift.get("reasons", [])),
                    "latency_ms": round(latency, 1),
                    "pipeline_ms": round(float(header.get("timings_ms", {}).get("total", 0.0)), 1),
                }
                rows.append(row)
                last = {"counts": counts, "mask": pred, "truth": truth, "header": header}
                headers.append(header)
                echo(f"{fid:>5} {row['condition']:<20} {row['pixel_size_nm']:>6.3f} {row['dose_e_per_A2']:>6.0f} "
                     f"{row['particle_count']:>9} {100 * row['area_fraction']:>6.1f} {row['dice_vs_truth']:>5.2f} "
                     f"{latency:>10.0f} {fps:>5.2f}  {row['drift_status']} {row['drift_reasons']}")
        finally:
            push.close(linger=0)
            sub.close(linger=0)
        status = daemon.status()
    counts_ = status.get("frames", status)
    csv_path = out / "results.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    png_path = out / "overlay.png"
    if last:
        write_overlay_figure(png_path, last["counts"], last["mask"], last.get("truth"), last["header"],
                             lambda p: write_png(p, overlay_rgb(last["counts"], last["mask"], last.get("truth"))), echo)
    tracks_path, growth_path = out / "tracks.csv", out / "growth.png"
    n_rows = write_tracks_csv(tracks_path, headers)
    grown = write_growth_figure(growth_path, headers, echo)
    wall = time.monotonic() - t_start
    summary = {"sent": sent, "processed": len(rows), "fps": len(rows) / max(wall, 1e-9), "csv": str(csv_path),
               "overlay": str(png_path) if last else None, "daemon": counts_}
    echo(f"done: {len(rows)} of {sent} frames processed in {wall:.1f} s ({summary['fps']:.2f} frames/s); "
         f"daemon accounting {counts_}")
    echo(f"wrote {csv_path}" + (f" and {png_path}" if last else "") + f", {tracks_path} ({n_rows} particle rows)"
         + (f", {growth_path}" if grown else ""))
    summary.update(tracks=str(tracks_path), growth=str(growth_path) if grown else None)
    return summary


def _condition(schedule: Any, fraction: float, dose: float) -> tuple[float, str]:
    """(dose e/Å², label) of the sweep at ``fraction`` (the in situ camera keeps its pixel size)."""
    if not schedule:
        return dose, "in situ"
    current = schedule[0]
    for c in schedule:
        if fraction >= c.start_fraction:
            current = c
    return current.dose_e_per_A2, current.label


def overlay_rgb(counts: np.ndarray, mask: np.ndarray, truth: np.ndarray | None = None, max_side: int = 1024
                ) -> np.ndarray:
    """(h, w, 3) uint8: the frame in grey (1st–99th percentile), predicted particle outlines in
    yellow, true outlines (when given) in cyan; downsampled to at most ``max_side`` px."""
    from scipy import ndimage

    step = max(1, int(np.ceil(max(counts.shape) / max_side)))
    img = counts[::step, ::step].astype(np.float32)
    lo, hi = np.percentile(img, (1, 99))
    grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)

    def outline(m: np.ndarray) -> np.ndarray:
        m = m[::step, ::step].astype(bool)
        return m & ~ndimage.binary_erosion(m, iterations=2)

    if truth is not None:
        rgb[outline(truth)] = (0, 220, 255)
    rgb[outline(mask)] = (255, 220, 0)
    return rgb


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an (h, w, 3) uint8 array as PNG (zlib only, no imaging library needed)."""
    import struct
    import zlib

    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    Path(path).write_bytes(png)
