"""Envelope checks: a frame's acquisition conditions against a model's training envelope.

Pure functions of (conditions, card envelope, tolerances). A quantity inside its envelope range
is ``ok``; outside but within the tolerance ``warn``; beyond it ``ood``; absent ``unknown``.
Relative tolerances widen a range ``[min, max]`` to ``[min·(1 - t), max·(1 + t)]``; the voltage
tolerance is absolute (kV). Reasons are stable snake_case codes, e.g.
``pixel_size_above_envelope``, ``dose_below_envelope``, ``dose_missing``,
``material_not_in_envelope``.

Units: pixel size nm/px, dose e/Å², voltage kV.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from fringelive.bundle.card import Envelope, Range, Tolerances
from fringelive.engine.frame import FrameMetadata, positive_number

__all__ = [
    "STATUSES",
    "Conditions",
    "Finding",
    "ToleranceOverrides",
    "effective_tolerances",
    "conditions_from_meta",
    "check_range",
    "check_envelope",
    "worst_status",
    "envelope_distance",
]

#: Frame statuses, least to most severe (``unknown``: a needed quantity could not be determined).
STATUSES = ("ok", "unknown", "warn", "ood")
_RANK = {s: i for i, s in enumerate(STATUSES)}


@dataclass(frozen=True)
class Conditions:
    """Acquisition conditions of one frame (None = not known). pixel_size_nm: nm/px;
    dose_e_per_A2: e/Å²; voltage_kv: kV; material: name as sent."""

    pixel_size_nm: float | None = None
    dose_e_per_A2: float | None = None
    voltage_kv: float | None = None
    material: str | None = None


@dataclass(frozen=True)
class Finding:
    """One check's outcome. quantity: ``pixel_size`` | ``dose`` | ``voltage`` | ``material``;
    status: one of :data:`STATUSES`; reason: a code, or None for ``ok``; value: what was
    checked (unit of the quantity); source: ``metadata`` or ``image``."""

    quantity: str
    status: str
    reason: str | None
    value: float | str | None = None
    source: str = "metadata"


@dataclass(frozen=True)
class ToleranceOverrides:
    """Config overrides of the card's tolerances; None keeps the card's value."""

    pixel_size_rel: float | None = None
    dose_rel: float | None = None
    voltage_kv: float | None = None

    def __post_init__(self) -> None:
        for name in ("pixel_size_rel", "dose_rel", "voltage_kv"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0 or None, got {v!r}")


def effective_tolerances(card: Tolerances, overrides: ToleranceOverrides | None = None) -> Tolerances:
    """The card's tolerances with the config's overrides applied."""
    if overrides is None:
        return card
    return Tolerances(
        pixel_size_rel=card.pixel_size_rel if overrides.pixel_size_rel is None else float(overrides.pixel_size_rel),
        dose_rel=card.dose_rel if overrides.dose_rel is None else float(overrides.dose_rel),
        voltage_kv=card.voltage_kv if overrides.voltage_kv is None else float(overrides.voltage_kv),
        particle_diameter_rel=card.particle_diameter_rel,
    )


def conditions_from_meta(meta: FrameMetadata | Mapping[str, Any] | None) -> Conditions:
    """Conditions from a frame's metadata (:class:`~fringelive.engine.frame.FrameMetadata`, or a
    map of the wire keys of ``docs/protocol.md``).

    Dose: ``dose_e_per_A2``, else ``dose_rate_e_per_A2_s × exposure_s``. Material: a
    ``material`` key, else ``tags.material``. Non-positive or non-numeric values count as absent.
    """
    m = FrameMetadata.of(meta)
    return Conditions(
        pixel_size_nm=positive_number(m.pixel_size_nm),
        dose_e_per_A2=m.dose,
        voltage_kv=positive_number(m.voltage_kv),
        material=m.material,
    )


def check_range(quantity: str, value: float, rng: Range, *, rel: float | None = None, absolute: float | None = None,
                source: str = "metadata") -> Finding:
    """``value`` against ``rng`` widened by a relative (``rel``) or absolute tolerance."""
    if rng.contains(value):
        return Finding(quantity, "ok", None, value, source)
    if rel is not None:
        lo, hi = rng.min * (1.0 - rel), rng.max * (1.0 + rel)
    else:
        lo, hi = rng.min - (absolute or 0.0), rng.max + (absolute or 0.0)
    side = "below" if value < rng.min else "above"
    status = "warn" if lo <= value <= hi else "ood"
    return Finding(quantity, status, f"{quantity}_{side}_envelope", value, source)


def check_envelope(conditions: Conditions, envelope: Envelope, tolerances: Tolerances, *,
                   source: str = "metadata") -> list[Finding]:
    """One finding per quantity the envelope constrains (pixel size and dose always, when the
    card gives a range; voltage and material only when the frame states them)."""
    out: list[Finding] = []
    c = conditions
    if envelope.pixel_size_nm is not None:
        if c.pixel_size_nm is None:
            out.append(Finding("pixel_size", "unknown", "pixel_size_missing", None, source))
        else:
            out.append(check_range("pixel_size", c.pixel_size_nm, envelope.pixel_size_nm,
                                   rel=tolerances.pixel_size_rel, source=source))
    if envelope.dose_e_per_A2 is not None:
        if c.dose_e_per_A2 is None:
            out.append(Finding("dose", "unknown", "dose_missing", None, source))
        else:
            out.append(check_range("dose", c.dose_e_per_A2, envelope.dose_e_per_A2, rel=tolerances.dose_rel,
                                   source=source))
    if envelope.voltage_kv is not None and c.voltage_kv is not None:
        out.append(check_range("voltage", c.voltage_kv, envelope.voltage_kv, absolute=tolerances.voltage_kv,
                               source=source))
    if envelope.material and c.material is not None:
        known = {m.lower() for m in envelope.material}
        ok = c.material.lower() in known
        out.append(Finding("material", "ok" if ok else "ood", None if ok else "material_not_in_envelope",
                           c.material, source))
    return out


def worst_status(statuses: Iterable[str]) -> str:
    """The most severe of ``statuses`` (``ok`` when empty)."""
    worst = "ok"
    for s in statuses:
        if _RANK[s] > _RANK[worst]:
            worst = s
    return worst


def _log_distance(value: float, rng: Range, rel: float) -> float:
    """|log distance| of ``value`` to ``rng`` (0 inside) in units of ``log(1 + rel)``, plus a
    small term for the distance to the range's geometric centre (ties between ranges that both
    contain the value go to the one centred nearer)."""
    unit = math.log1p(max(rel, 1e-3))
    lv = math.log(value)
    lo, hi = math.log(rng.min), math.log(rng.max)
    outside = max(lo - lv, 0.0, lv - hi) / unit
    centre = abs(lv - 0.5 * (lo + hi)) / unit
    return outside + 1e-3 * centre


def envelope_distance(conditions: Conditions, envelope: Envelope, tolerances: Tolerances) -> float:
    """How far the conditions lie from the envelope in log pixel size and log dose, each in units
    of its relative tolerance (Euclidean; 0 when inside both ranges, up to a tie-break term).
    Quantities missing from the frame or the card do not count."""
    terms = []
    if conditions.pixel_size_nm is not None and envelope.pixel_size_nm is not None and envelope.pixel_size_nm.min > 0:
        terms.append(_log_distance(conditions.pixel_size_nm, envelope.pixel_size_nm, tolerances.pixel_size_rel))
    if conditions.dose_e_per_A2 is not None and envelope.dose_e_per_A2 is not None and envelope.dose_e_per_A2.min > 0:
        terms.append(_log_distance(conditions.dose_e_per_A2, envelope.dose_e_per_A2, tolerances.dose_rel))
    return math.sqrt(sum(t * t for t in terms))
