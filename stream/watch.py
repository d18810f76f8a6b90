"""Watching a daemon's results: one line per result or error event (``fringelive watch``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from fringelive.stream.camera_text import drift_text

__all__ = ["announce_ready", "format_error_line", "format_result_line", "subscription_ready"]


def subscription_ready(monitor: Any) -> bool:
    """Read one event of a SUB socket's monitor; True when it is ``EVENT_HANDSHAKE_SUCCEEDED``:
    the ZMTP (and CURVE) handshake with the publisher is done and the SUB has sent its
    subscriptions, which the PUB applies before its next send (``docs/protocol.md``)."""
    return recv_monitor_message(monitor)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED


def announce_ready(endpoint: str, ready_file: Path | None) -> None:
    """``watch: ready`` on stderr and, when asked, ``endpoint`` written to ``ready_file``
    (atomically: a sender polling for the file never reads it half-written)."""
    if ready_file is not None:
        tmp = ready_file.with_name(ready_file.name + ".tmp")
        tmp.write_text(endpoint + "\n")
        os.replace(tmp, ready_file)
    print(f"watch: ready (subscribed to {endpoint})", file=sys.stderr, flush=True)


def format_result_line(header: dict) -> str:
    """One line per result: series, frame, model, particles, area fraction, drift, total ms
    (and the worker that computed it, when the header names one)."""
    status = drift_text(header.get("drift"))  # flagged frames: reasons with their values
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
