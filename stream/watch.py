"""Watching a daemon's results: one line per result or error event (``fringelive watch``)."""

from __future__ import annotations

from typing import Any

__all__ = ['format_error_line', 'format_result_line']


def format_result_line(header: dict) -> str:
    """One line per result: series, frame, model, particles, area fraction, drift, total ms
    (and the worker that computed it, when the header names one)."""
    drift = header.get("drift")
    status = drift.get("status", "?") if isinstance(drift, dict) else "?"
    timings = header.get("timings_ms")
    total: Any = None
    if isinstance(timings, dict):
        total = timings.get("total")
        if not isinstance(total, (int, float)) or isinstance(total, bool):
            numbers = [v for v in timings.values()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)]
            total = sum(numbers) if numbers else None
    area = header.get("area_fraction")
    area_text = f"{area:.4f}" if isinstance(area, (int, float)) else "?"
    total_text = f"{total:.1f} ms" if total is not None else "? ms"
    count = header.get("particle_count", len(header.get("particles") or []))
    worker = f" worker={header['worker']}" if header.get("worker") is not None else ""
    return (f"{header.get('series', '?')} #{header.get('frame', '?')} "
            f"model={header.get('model', '?')} particles={count} area={area_text} "
            f"drift={status} total={total_text}{worker}")


def format_error_line(header: dict) -> str:
    """``ERROR reason detail`` (+ ``[series #frame]`` when known, `` worker=NAME`` when named)."""
    where = ""
    if header.get("series") is not None or header.get("frame") is not None:
        where = f" [{header.get('series', '?')} #{header.get('frame', '?')}]"
    if header.get("worker") is not None:
        where += f" worker={header['worker']}"
    return f"ERROR {header.get('reason', '?')} {header.get('detail', '')}{where}"
