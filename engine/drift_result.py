"""What the drift stage returns for one frame: :class:`DriftResult`, typed; it becomes the result
header's ``drift`` map only at the wire edge (``daemon/results.py``, :meth:`DriftResult.to_dict`).
The keys and their meaning are in ``docs/drift.md`` and ``docs/protocol.md``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["DriftResult"]


@dataclass(frozen=True)
class DriftResult:
    """The drift assessment of one frame.

    status: "ok" | "warn" | "ood" | "unknown". reasons: reason codes, in the order found.
    signals: signal name → value (None where not computable). p_values: signal → one-sided tail
    p-value against the card's reference. estimates: the image's own estimates (``dose_e_per_A2``,
    ``pixel_size_nm``, ...). conditions: the frame conditions used (``pixel_size_nm``,
    ``dose_e_per_A2``, ``voltage_kv``, ``material``). cusum: statistics, ``h``, ``k``,
    ``alarm_signals``, ``frames`` ({} without a calibrated CUSUM). alarm: the stream alarm fired on
    this frame. calibrated: the card's drift reference is calibrated. camera: the resolved camera
    constants and their sources (None when drift checks are off or failed). extra: further keys of
    the wire map, added by later stages or issues (e.g. ``route``), after the fields above.
    """

    status: str
    reasons: tuple[str, ...] = ()
    signals: Mapping[str, float | None] = field(default_factory=dict)
    p_values: Mapping[str, float] = field(default_factory=dict)
    estimates: Mapping[str, Any] = field(default_factory=dict)
    conditions: Mapping[str, Any] = field(default_factory=dict)
    cusum: Mapping[str, Any] = field(default_factory=dict)
    alarm: bool = False
    calibrated: bool = False
    camera: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reasons", tuple(self.reasons))

    @classmethod
    def unknown(cls, reason: str) -> "DriftResult":
        """Status "unknown" for one ``reason`` (``drift_disabled``, ``drift_error``)."""
        return cls(status="unknown", reasons=(reason,))

    def with_extra(self, **extra: Any) -> "DriftResult":
        """A copy with ``extra`` keys added (e.g. ``route``)."""
        return DriftResult(**{**self.__dict__, "extra": {**self.extra, **extra}})

    def to_dict(self) -> dict[str, Any]:
        """The wire ``drift`` map: the fields in order (``reasons`` a list; ``camera`` only when
        set), then ``extra``. Fresh containers, safe to mutate."""
        d: dict[str, Any] = {
            "status": self.status, "reasons": list(self.reasons), "signals": dict(self.signals),
            "p_values": dict(self.p_values), "estimates": dict(self.estimates), "conditions": dict(self.conditions),
            "cusum": dict(self.cusum), "alarm": self.alarm, "calibrated": self.calibrated,
        }
        if self.camera is not None:
            d["camera"] = dict(self.camera)
        d.update(self.extra)
        return d

    def __getitem__(self, key: str) -> Any:
        """Read-only access by wire key (``result["status"]``), as :meth:`to_dict` spells it.
        Kept so that code and tests written against the former dict return keep working
        unchanged; new code reads the attributes."""
        return self.to_dict()[key]
