"""Routing frames among several bundles by their training envelopes.

Pure: a frame's conditions (from its metadata) and the bundles' envelopes in, the chosen index
out. A bundle *fits* a frame when no envelope check says ``ood`` (every stated quantity lies
inside the envelope widened by the tolerances); among fitting bundles the one nearest in log
pixel size and log dose (each in units of its relative tolerance, :func:`envelope_distance`)
wins, ties going to the earlier bundle in the configured order. When none fits, the nearest one
is used and the frame is flagged ``ood`` by its drift checks. A frame without pixel size and
dose fits every bundle equally and goes to the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from fringelive.bundle.card import Envelope, Tolerances
from fringelive.engine.envelope import Conditions, check_envelope, envelope_distance

__all__ = ["Route", "route"]


@dataclass(frozen=True)
class Route:
    """index: the chosen bundle; fits: whether it fits the frame; distance: its envelope
    distance; candidates: indices of every bundle that fits, nearest first."""

    index: int
    fits: bool
    distance: float
    candidates: tuple[int, ...]


def route(conditions: Conditions, envelopes: Sequence[tuple[Envelope, Tolerances]]) -> Route:
    """Pick the bundle for a frame with ``conditions`` among ``envelopes`` (envelope and the
    tolerances in force, one per bundle, in configured order)."""
    if not envelopes:
        raise ValueError("route needs at least one bundle envelope")
    scored = []
    for i, (env, tol) in enumerate(envelopes):
        fits = all(f.status != "ood" for f in check_envelope(conditions, env, tol))
        scored.append((not fits, envelope_distance(conditions, env, tol), i))
    scored.sort()
    best_ood, best_distance, best = scored[0]
    candidates = tuple(i for ood, _, i in scored if not ood)
    return Route(index=best, fits=not best_ood, distance=best_distance, candidates=candidates)
