"""Result assembly, pure: a frame's header and metadata + the pipeline's outputs + the drift
assessment → the result header, encoded once into ``[b"result", header, mask (, probabilities)]``.
The wire edge: the engine's results become plain dicts here."""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np

from fringelive.daemon.protocol import FrameHeader
from fringelive.daemon.protocol.encode import encode_result_payload, pack_result
from fringelive.engine.drift_result import DriftResult
from fringelive.engine.pipeline import PipelineResult
from fringelive.engine.routing import Route

__all__ = ["drift_failed", "stage_timings", "result_header", "encode_result_message"]


def drift_failed() -> DriftResult:
    """The drift result of a frame whose drift checks raised (the frame keeps its result)."""
    return DriftResult.unknown("drift_error")


def stage_timings(queue_s: float, pipeline_ms: Mapping[str, float], drift_s: float, handoff_s: float) -> dict[str, float]:
    """``timings_ms`` of a result (ms): queue wait, the pipeline's stages, drift, the hand-off
    between worker and finisher; ``publish`` is added by :func:`encode_result_message`."""
    return {"queue": queue_s * 1e3, **{k: float(v) for k, v in pipeline_ms.items()}, "drift": drift_s * 1e3,
            "handoff": handoff_s * 1e3}


def result_header(h: FrameHeader, meta: dict[str, Any], *, worker: str, model: str, result: PipelineResult,
                  drift: DriftResult, route: Route | None, timings: dict[str, float],
                  queue_depth: int) -> dict[str, Any]:
    """The result header of frame ``h`` (``docs/protocol.md``); ``route`` only when several bundles
    are served. The drift result becomes its wire map here."""
    drift_map = drift.to_dict()
    if route is not None:
        drift_map["route"] = {"fits": bool(route.fits), "candidates": len(route.candidates),
                              "distance": round(float(route.distance), 4)}
    particles = list(result.particles)
    return {
        "series": h.series, "frame": h.frame, "worker": worker, "model": model,
        "particle_count": len(particles), "particles": particles,
        "specks": int(result.specks), "particle_summary": plain(result.particle_summary),
        "area_fraction": float(result.area_fraction),
        "preprocess": plain(result.preprocess_stats),
        "drift": plain(drift_map),
        "timings_ms": timings,
        "queue_depth": queue_depth,
        "meta": meta,
    }


def encode_result_message(header: dict[str, Any], mask: np.ndarray, probabilities: np.ndarray | None) -> list[Any]:
    """The result message; the mask (and probabilities) encoding time is recorded as
    ``timings_ms["publish"]`` before the header is packed, once."""
    t0 = time.perf_counter()
    payload = encode_result_payload(mask, probabilities)
    header["timings_ms"]["publish"] = (time.perf_counter() - t0) * 1e3
    return pack_result(header, payload)


def plain(obj: Any) -> Any:
    """Plain msgpack-able data: numpy scalars to Python numbers, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


