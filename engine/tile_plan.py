"""Tile plans, pure geometry: halo tiles whose cores cover a frame exactly (origins aligned to the
network's multiple, no halo at frame borders), and the largest tile size within a memory budget.
``fringelive.engine.tiling`` runs a network over a plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["Box", "Tile", "TilePlan", "choose_tile_size", "plan_tiles"]

Box = tuple[int, int, int, int]
"""``(y0, y1, x0, x1)`` in px, half-open, in frame coordinates (may reach into the zero padding)."""


@dataclass(frozen=True)
class Tile:
    """One network pass.

    input_box: region fed to the network (px; zero where it lies outside the frame).
    core_box: region of the stitched output this tile writes (px; inside ``input_box``).
    """

    input_box: Box
    core_box: Box

    @property
    def input_shape(self) -> tuple[int, int]:
        y0, y1, x0, x1 = self.input_box
        return y1 - y0, x1 - x0

    @property
    def core_shape(self) -> tuple[int, int]:
        y0, y1, x0, x1 = self.core_box
        return y1 - y0, x1 - x0

    @property
    def core_offset(self) -> tuple[int, int]:
        """Position (px) of the core's top-left corner inside the tile's input."""
        return self.core_box[0] - self.input_box[0], self.core_box[2] - self.input_box[2]


@dataclass(frozen=True)
class TilePlan:
    """How a frame is cut into network passes (pure geometry; see :func:`plan_tiles`).

    frame_shape: ``(H, W)`` px of the frame.
    padded_shape: ``(Hp, Wp)`` px, H and W rounded up to ``multiple_of`` (the whole-frame pass).
    tile_size: largest core side (px) asked for; ``None`` = whole frame in one pass.
    grid: ``(rows, cols)`` of tiles; ``tiles`` lists them row-major.
    """

    frame_shape: tuple[int, int]
    padded_shape: tuple[int, int]
    tile_size: int | None
    halo: int
    multiple_of: int
    grid: tuple[int, int]
    tiles: tuple[Tile, ...]

    @property
    def computed_area(self) -> int:
        """Sum of the network input areas of all tiles (px²)."""
        return sum(t.input_shape[0] * t.input_shape[1] for t in self.tiles)

    @property
    def area_ratio(self) -> float:
        """Computed area relative to one whole-frame pass (= FLOP ratio for a fully convolutional net)."""
        return self.computed_area / (self.padded_shape[0] * self.padded_shape[1])

    @property
    def max_input_shape(self) -> tuple[int, int]:
        """Largest network input ``(h, w)`` px over all tiles (what memory and engine profiles must hold)."""
        return (max(t.input_shape[0] for t in self.tiles), max(t.input_shape[1] for t in self.tiles))

    @property
    def max_input_area(self) -> int:
        return max(t.input_shape[0] * t.input_shape[1] for t in self.tiles)

    @property
    def input_shapes(self) -> tuple[tuple[int, int], ...]:
        """Distinct network input shapes, sorted (tiles of one shape are batched together)."""
        return tuple(sorted({t.input_shape for t in self.tiles}))


def _check_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value)


def _check_frame_shape(frame_shape: Sequence[int]) -> tuple[int, int]:
    shape = tuple(frame_shape)
    if len(shape) != 2:
        raise ValueError(f"frame_shape must be (H, W), got {frame_shape!r}")
    return (_check_int("frame height", shape[0], minimum=1), _check_int("frame width", shape[1], minimum=1))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _axis_cores(units: int, max_core: int, halo: int) -> list[int]:
    """Core lengths (in units of ``multiple_of``) of the fewest tiles covering ``units``.

    ``n = ceil(units / max_core)`` tiles (the computed length ``units + 2·halo·(n-1)`` only grows
    with n); their cores are chosen so the input lengths ``core + halo per inner side`` are as
    equal as possible (smallest largest input, fewest distinct shapes), each core <= max_core.
    """
    n = -(-units // max_core)
    if n == 1:
        return [units]
    halos = [halo] + [2 * halo] * (n - 2) + [halo]

    def cores_for(length: int) -> list[int]:
        return [min(max_core, max(1, length - h)) for h in halos]

    length = -(-(units + sum(halos)) // n)
    while sum(cores_for(length)) < units:
        length += 1
    cores = cores_for(length)
    excess = sum(cores) - units
    # Tiles whose input length is exactly `length` grew on the last step; shrink some of them by one.
    for i in reversed(range(n)):
        if excess == 0:
            break
        if cores[i] > 1 and cores[i] + halos[i] == length:
            cores[i] -= 1
            excess -= 1
    assert excess == 0 and sum(cores) == units
    return cores


def _axis_tiles(length: int, tile_size: int | None, halo: int, multiple_of: int) -> list[tuple[int, int, int, int]]:
    """Per axis: ``(input_start, input_stop, core_start, core_stop)`` px over the padded length."""
    units = -(-length // multiple_of)
    padded = units * multiple_of
    max_core = units if tile_size is None else tile_size // multiple_of
    out = []
    start = 0
    for core in _axis_cores(units, max_core, halo // multiple_of):
        stop = start + core * multiple_of
        out.append((max(0, start - halo), min(padded, stop + halo), start, stop))
        start = stop
    return out


def plan_tiles(frame_shape: Sequence[int], tile_size: int | None, halo: int, multiple_of: int) -> TilePlan:
    """Cut a frame into halo tiles whose stitched cores equal one whole-frame pass.

    frame_shape: ``(H, W)`` px. tile_size: largest core side in px, a positive multiple of
    ``multiple_of``, or ``None`` for the whole frame in one pass. halo: context px on each inner
    side, a multiple of ``multiple_of`` and >= the network's receptive-field radius for exact
    results (``card.tile.halo_px``). multiple_of: the network's downsampling factor (px).
    """
    height, width = _check_frame_shape(frame_shape)
    multiple_of = _check_int("multiple_of", multiple_of, minimum=1)
    if tile_size is not None:
        if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)) or tile_size < 1 \
                or tile_size % multiple_of:
            raise ValueError(f"tile_size must be a positive multiple of {multiple_of}, got {tile_size!r}")
        tile_size = int(tile_size)
    if isinstance(halo, bool) or not isinstance(halo, (int, np.integer)) or halo < 0 or halo % multiple_of:
        raise ValueError(f"halo must be a non-negative multiple of {multiple_of} (px), got {halo!r}")
    halo = int(halo)
    rows = _axis_tiles(height, tile_size, halo, multiple_of)
    cols = _axis_tiles(width, tile_size, halo, multiple_of)
    tiles = tuple(
        Tile(input_box=(ry0, ry1, cx0, cx1), core_box=(ky0, ky1, kx0, kx1))
        for (ry0, ry1, ky0, ky1) in rows
        for (cx0, cx1, kx0, kx1) in cols
    )
    return TilePlan(
        frame_shape=(height, width),
        padded_shape=(_round_up(height, multiple_of), _round_up(width, multiple_of)),
        tile_size=tile_size,
        halo=halo,
        multiple_of=multiple_of,
        grid=(len(rows), len(cols)),
        tiles=tiles,
    )


def choose_tile_size(frame_shape: Sequence[int], *, multiple_of: int, halo: int, memory_budget_bytes: int,
                     bytes_per_pixel: float, batch_size: int = 1) -> int | None:
    """Largest core tile side (px) whose network passes fit ``memory_budget_bytes``; ``None`` when
    the whole (padded) frame fits in one pass.

    A pass of a ``(h, w)`` input needs ``h·w·bytes_per_pixel`` bytes (see
    :func:`activation_bytes_per_pixel`), times the number of tiles stacked in one batch
    (``min(batch_size, tiles)``). Among tile sizes that fit, the largest needs the fewest tiles
    and so the least computed area. Raises ``ValueError`` when even the smallest tile does not fit.
    """
    height, width = _check_frame_shape(frame_shape)
    multiple_of = _check_int("multiple_of", multiple_of, minimum=1)
    batch_size = _check_int("batch_size", batch_size, minimum=1)
    if isinstance(memory_budget_bytes, bool) or not isinstance(memory_budget_bytes, (int, float, np.number)) \
            or not memory_budget_bytes > 0:
        raise ValueError(f"memory_budget_bytes must be > 0, got {memory_budget_bytes!r}")
    if isinstance(bytes_per_pixel, bool) or not isinstance(bytes_per_pixel, (int, float, np.number)) \
            or not bytes_per_pixel > 0:
        raise ValueError(f"bytes_per_pixel must be > 0, got {bytes_per_pixel!r}")

    def need(plan: TilePlan) -> float:
        return min(batch_size, len(plan.tiles)) * plan.max_input_area * float(bytes_per_pixel)

    whole = plan_tiles((height, width), None, halo, multiple_of)
    if need(whole) <= memory_budget_bytes:
        return None
    largest = max(whole.padded_shape) - multiple_of
    for tile_size in range(largest, 0, -multiple_of):
        plan = plan_tiles((height, width), tile_size, halo, multiple_of)
        if need(plan) <= memory_budget_bytes:
            return max(max(t.core_shape) for t in plan.tiles)
    smallest = plan_tiles((height, width), multiple_of, halo, multiple_of)
    raise ValueError(
        f"memory_budget_bytes={memory_budget_bytes} cannot hold even {multiple_of}-px tiles: their "
        f"{smallest.max_input_shape} px inputs need {need(smallest):.0f} bytes at {bytes_per_pixel} bytes/px "
        f"(batch {min(batch_size, len(smallest.tiles))})"
    )
