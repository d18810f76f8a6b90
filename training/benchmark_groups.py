"""Benchmark subsets by condition: one benchmark sample set split by a metadata column.

``--benchmark-by pixel_size_nm=0.02,0.03`` scores every benchmark set also on its samples with
pixel size below 0.02 nm, 0.02–0.03 nm and at or above 0.03 nm; ``--benchmark-by material`` on
each material. The subsets are named ``<set>[<column><0.02]``, ``<set>[<column>=0.02..0.03]``,
``<set>[<column>>=0.03]`` and ``<set>[<column>=Ag]``; each is a benchmark of its own in the
per-epoch log, ``evaluation.csv`` and the card's ``metrics.benchmarks``. Pure: metadata rows in,
index lists out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["GroupBy", "parse_group_by", "groups_of", "MAX_CATEGORIES"]

#: a column without edges may hold at most this many distinct values (else: give edges)
MAX_CATEGORIES = 12


@dataclass(frozen=True)
class GroupBy:
    """column: a metadata column; edges: increasing bin edges (the column's unit) for a numeric
    column, or () to group by each distinct value (materials, supports)."""

    column: str
    edges: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.column or not all(c.isalnum() or c in "_-" for c in self.column):
            raise ValueError(f"benchmark-by column must be a metadata column name, got {self.column!r}")
        if any(not math.isfinite(e) for e in self.edges) or any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError(f"benchmark-by edges of {self.column!r} must be finite and increasing, "
                             f"got {list(self.edges)!r}")


def parse_group_by(text: str) -> GroupBy:
    """``COLUMN`` or ``COLUMN=E1,E2,...`` (edges in the column's unit) → :class:`GroupBy`."""
    column, sep, rest = text.partition("=")
    edges: tuple[float, ...] = ()
    if sep:
        try:
            edges = tuple(float(x) for x in rest.split(","))
        except ValueError:
            raise ValueError(f"benchmark-by takes COLUMN or COLUMN=EDGE,EDGE,... (numbers), got {text!r}") from None
    return GroupBy(column.strip(), edges)


def _label(value: float, edges: Sequence[float], column: str) -> str:
    fmt = "{:g}".format
    if value < edges[0]:
        return f"{column}<{fmt(edges[0])}"
    for lo, hi in zip(edges, edges[1:]):
        if lo <= value < hi:
            return f"{column}={fmt(lo)}..{fmt(hi)}"
    return f"{column}>={fmt(edges[-1])}"


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def groups_of(rows: Sequence[Mapping[str, Any]], by: GroupBy) -> dict[str, list[int]]:
    """Sample indices of ``rows`` (one metadata dict per sample) per group label, in label order
    of first appearance for categories and of the bins for edges. Samples without the column
    are in no group. Raises ValueError when the column is in no row, or when a column without
    edges has more than :data:`MAX_CATEGORIES` values."""
    present = [(i, r[by.column]) for i, r in enumerate(rows) if r.get(by.column) not in (None, "")]
    if not present:
        raise ValueError(f"benchmark-by column {by.column!r} is in no sample's metadata")
    out: dict[str, list[int]] = {}
    if by.edges:
        labels = [_label(-math.inf, by.edges, by.column)] + \
                 [_label(e, by.edges, by.column) for e in by.edges]
        out = {lab: [] for lab in labels}
        for i, v in present:
            x = _number(v)
            if x is None:
                raise ValueError(f"benchmark-by column {by.column!r} has edges but sample {i} holds {v!r}, "
                                 f"not a number")
            out[_label(x, by.edges, by.column)].append(i)
        return {k: v for k, v in out.items() if v}
    for i, v in present:
        out.setdefault(f"{by.column}={v}", []).append(i)
    if len(out) > MAX_CATEGORIES:
        raise ValueError(f"benchmark-by column {by.column!r} has {len(out)} distinct values; give bin edges "
                         f"(--benchmark-by {by.column}=E1,E2,...)")
    return out
