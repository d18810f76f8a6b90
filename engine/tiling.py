"""Tiling and stitching: run a fully convolutional network on frames too large for one pass.

Two ways to cut a frame ``(H, W)`` into network inputs:

* **Halo tiling** (:func:`plan_tiles`, :func:`infer_tiled`) reproduces *one whole-frame pass*:
  the frame zero-padded at bottom/right to a multiple of ``multiple_of`` (the network's
  downsampling factor), one forward pass, cropped back to ``(H, W)``. Tile origins and sizes
  are multiples of ``multiple_of`` (so pooling/upsampling grids line up with the whole-frame
  pass), every tile carries ``halo`` px of context on each side that faces another tile
  (``halo`` >= the receptive-field radius, ``card.tile.halo_px``), and only the tile's *core*
  (the valid centre) is written to the output. A side on the frame border needs no halo: the
  whole-frame pass sees the same border (same zero padding) there. Per axis the computed length
  is ``Hp + 2·halo·(n - 1)`` for ``n`` tiles, so the planner uses the fewest tiles allowed by
  ``tile_size`` and then balances their *input* lengths (fewest distinct shapes, smallest
  largest input). A 4096² frame in 2×2 tiles of core 2048 px costs ((4096 + 2·128)/4096)² ≈
  1.13× one pass; the network is fully convolutional, so FLOPs are proportional to input area
  and :attr:`TilePlan.area_ratio` is the FLOP ratio.
* **Gaussian blending** (:func:`infer_gaussian`) is the same math as MONAI's
  ``sliding_window_inference(mode="gaussian")`` (window placement, scan order, symmetric zero
  padding of small images, importance map, weighted average) for models that were not trained
  for whole-frame equivalence. It costs ~1.9× one pass at roi 512, overlap 0.25.

A model is any callable ``model(batch) -> logits`` with ``batch (N, 1, h, w)`` float32 and
``logits (N, C, h, w)`` float32. Give the tiler a numpy image and the model gets numpy batches
(e.g. ONNX Runtime); give it a torch tensor and the model gets tensors on that tensor's device
(run under ``torch.no_grad()``). The returned logits ``(C, H, W)`` float32 are of the same kind.
Torch is not needed for numpy images (:mod:`fringelive.engine.arrays`).
A model must return a new array per call: a single whole-frame pass hands (a crop of) it back
without copying.

Pure geometry and array code: no I/O, no threads.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any, Callable, Iterator, Sequence, Union

import numpy as np

from fringelive.engine.arrays import TorchNamespace, is_tensor, namespace_of
from fringelive.engine.tile_plan import Box, Tile, TilePlan, _check_int, choose_tile_size, plan_tiles

__all__ = [
    "Box",
    "Tile",
    "TilePlan",
    "plan_tiles",
    "infer_tiled",
    "run_plan",
    "infer_gaussian",
    "gaussian_importance_map",
    "sliding_window_starts",
    "choose_tile_size",
]

Array = Union[np.ndarray, Any]  # numpy array or torch tensor
Model = Callable[[Any], Any]


# --- geometry ----------------------------------------------------------------------------


# --- numpy / torch dispatch ---------------------------------------------------------------


class _Ops:
    """Array creation and conversion in the kind (numpy, or torch on one device) of the input."""

    def __init__(self, like: Array) -> None:
        self.xp = namespace_of(like)
        self.is_torch = isinstance(self.xp, TorchNamespace)
        self.device = self.xp.device if isinstance(self.xp, TorchNamespace) else None

    def zeros(self, shape: Sequence[int]) -> Array:
        return self.xp.zeros(shape, self.xp.float32)

    def empty(self, shape: Sequence[int]) -> Array:
        return self.xp.empty(shape, self.xp.float32)

    def constant(self, values: np.ndarray) -> Array:
        """A float32 numpy constant in this kind."""
        return self.xp.from_numpy(np.ascontiguousarray(values, dtype=np.float32))

    def float32(self, x: Array) -> Array:
        """Contiguous float32 (no copy when it already is)."""
        if self.is_torch:
            return x.to(dtype=self.xp.float32).contiguous()
        return np.ascontiguousarray(x, dtype=np.float32)

    def adopt(self, x: Any) -> Array:
        """A model's output as float32 of this kind (models may answer in the other kind)."""
        if isinstance(self.xp, TorchNamespace):
            torch = self.xp.torch
            if not isinstance(x, torch.Tensor):
                x = torch.as_tensor(np.asarray(x))
            return x.to(device=self.device, dtype=torch.float32)
        if is_tensor(x):
            x = x.detach().cpu().numpy()
        return np.asarray(x, dtype=np.float32)

    def sync(self) -> None:
        self.xp.sync()

    def no_grad(self) -> Any:
        return self.xp.no_grad()


def _as_2d(image: Array) -> Array:
    if not isinstance(image, np.ndarray) and not is_tensor(image):
        raise TypeError(f"image must be a numpy array or a torch tensor, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise ValueError(f"image must have shape (H, W) or (1, H, W), got {tuple(image.shape)}")
    if is_tensor(image):
        real = image.dtype != TorchNamespace(image.device).torch.bool and not image.is_complex()
    else:
        real = np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    if not real:
        raise ValueError(f"image must hold real numbers, got dtype {image.dtype}")
    return image


def _fill_batch(ops: _Ops, image: Array, boxes: Sequence[Box]) -> Array:
    """Stack the regions ``boxes`` (all of one shape) of ``image (H, W)`` into ``(N, 1, h, w)``
    float32, zero where a box reaches outside the image."""
    height, width = image.shape
    y0, y1, x0, x1 = boxes[0]
    h, w = y1 - y0, x1 - x0
    if len(boxes) == 1 and boxes[0] == (0, height, 0, width):
        return ops.float32(image)[None, None]  # whole frame already a valid input: no copy
    batch = ops.empty((len(boxes), 1, h, w))  # zeroed below only where a box leaves the image
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        sy0, sy1, sx0, sx1 = max(y0, 0), min(y1, height), max(x0, 0), min(x1, width)
        if (sy0, sy1, sx0, sx1) != (y0, y1, x0, x1):
            batch[k] = 0
        if sy1 > sy0 and sx1 > sx0:
            batch[k, 0, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return batch


def _call_model(model: Model, ops: _Ops, batch: Array) -> Array:
    logits = ops.adopt(model(batch))
    n, _, h, w = batch.shape
    if logits.ndim != 4 or logits.shape[0] != n or tuple(logits.shape[2:]) != (h, w):
        raise ValueError(
            f"model returned logits of shape {tuple(logits.shape)} for a batch of shape {tuple(batch.shape)}; "
            f"expected ({n}, C, {h}, {w})"
        )
    return logits


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class _Stopwatch:
    """Adds elapsed ms per stage into an optional ``timings`` dict."""

    def __init__(self, timings: dict[str, float] | None, ops: _Ops) -> None:
        self.timings = timings
        self.ops = ops
        self.t = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.timings is None:
            return
        self.ops.sync()
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + (now - self.t) * 1e3
        self.t = now


# --- halo tiling ---------------------------------------------------------------------------


def run_plan(model: Model, image: Array, plan: TilePlan, *, batch_size: int = 4,
             timings: dict[str, float] | None = None,
             reduce_into: Callable[[Array, Array], None] | None = None) -> Array:
    """Run ``model`` over the tiles of ``plan`` and stitch the cores: logits ``(C, H, W)`` float32.

    Tiles of one input shape are batched, at most ``batch_size`` per call. ``timings``, when
    given, accumulates ms under ``"tile"`` (batch assembly), ``"infer"`` (model calls) and
    ``"stitch"`` (writing cores).

    ``reduce_into(logits (C, h, w), out (h, w))``, when given, is applied to each tile's core as it
    is stitched (e.g. the class-1 probability), writing into the matching window of the result,
    which is then ``(H, W)`` float32: the full-frame logits array is never built.
    """
    image = _as_2d(image)
    batch_size = _check_int("batch_size", batch_size, minimum=1)
    if tuple(image.shape) != plan.frame_shape:
        raise ValueError(f"image shape {tuple(image.shape)} does not match the plan's frame_shape {plan.frame_shape}")
    ops = _Ops(image)
    height, width = plan.frame_shape
    groups: dict[tuple[int, int], list[Tile]] = defaultdict(list)
    for tile in plan.tiles:
        groups[tile.input_shape].append(tile)
    out: Array | None = None
    channels: int | None = None
    clock = _Stopwatch(timings, ops)
    with ops.no_grad():
        for tiles in groups.values():
            for chunk in _chunks(tiles, batch_size):
                batch = _fill_batch(ops, image, [t.input_box for t in chunk])
                clock.lap("tile")
                logits = _call_model(model, ops, batch)
                del batch
                clock.lap("infer")
                if len(plan.tiles) == 1:  # one pass: crop, no stitching
                    whole = logits[0]
                    if reduce_into is not None:
                        out = ops.empty((height, width))
                        reduce_into(whole[:, :height, :width], out)
                    else:
                        out = whole if whole.shape[1:] == (height, width) else ops.float32(whole[:, :height, :width])
                    clock.lap("stitch")
                    break
                if channels is None:  # cores partition the frame: every pixel is written once
                    channels = int(logits.shape[1])
                    out = ops.empty((height, width) if reduce_into is not None else (channels, height, width))
                elif logits.shape[1] != channels:
                    raise ValueError(f"model returned {logits.shape[1]} channels for one tile and {channels} for another")
                for k, tile in enumerate(chunk):
                    y0, y1, x0, x1 = tile.core_box
                    y1, x1 = min(y1, height), min(x1, width)
                    oy, ox = tile.core_offset
                    core = logits[k, :, oy:oy + y1 - y0, ox:ox + x1 - x0]
                    if reduce_into is not None:
                        reduce_into(core, out[y0:y1, x0:x1])
                    else:
                        out[:, y0:y1, x0:x1] = core
                del logits
                clock.lap("stitch")
    assert out is not None
    return out


def infer_tiled(model: Model, image: Array, *, tile_size: int | None, halo: int, multiple_of: int,
                batch_size: int = 4, timings: dict[str, float] | None = None,
                reduce_into: Callable[[Array, Array], None] | None = None) -> Array:
    """Logits ``(C, H, W)`` float32 of ``image (H, W) or (1, H, W)``, equal to one whole-frame pass.

    tile_size: largest core side (px, a multiple of ``multiple_of``) or ``None`` for one pass;
    halo: context px per inner tile side (>= receptive-field radius, multiple of ``multiple_of``);
    multiple_of: network downsampling factor (px); reduce_into: per-core channel reduction, the
    result is then ``(H, W)``. See :func:`plan_tiles` and :func:`run_plan`.
    """
    image = _as_2d(image)
    plan = plan_tiles(tuple(image.shape), tile_size, halo, multiple_of)
    return run_plan(model, image, plan, batch_size=batch_size, timings=timings, reduce_into=reduce_into)


# --- Gaussian-blended sliding window (MONAI-equivalent) --------------------------------------


def _pair(name: str, value: Any) -> tuple[Any, Any]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be one value or a pair (H, W), got {value!r}")
        return value[0], value[1]
    return value, value


def gaussian_importance_map(roi_size: int | Sequence[int], sigma_scale: float | Sequence[float] = 0.125) -> np.ndarray:
    """Window weights ``(h, w)`` float32 (peak 1 at the centre), as MONAI's ``compute_importance_map``:
    the outer product of ``exp(-x² / (2 (sigma_scale·size)²))`` over ``x = -(size-1)/2 … (size-1)/2``,
    clamped below at 1e-3 where it would be smaller."""
    roi = tuple(_check_int("roi_size", v, minimum=1) for v in _pair("roi_size", roi_size))
    scales = _pair("sigma_scale", sigma_scale)
    weights = None
    for size, scale in zip(roi, scales):
        if not scale > 0:
            raise ValueError(f"sigma_scale must be > 0, got {sigma_scale!r}")
        sigma = size * float(scale)
        x = np.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1, dtype=np.float32)
        g = np.exp(x ** 2 / np.float32(-2 * sigma ** 2), dtype=np.float32)
        weights = g if weights is None else weights[:, None] * g[None, :]
    assert weights is not None
    return np.maximum(weights, max(float(weights.min()), 1e-3)).astype(np.float32)


def sliding_window_starts(length: int, roi: int, interval: int) -> list[int]:
    """Window starts (px) along one axis of length >= roi, as MONAI's ``dense_patch_slices``:
    every ``interval`` px until a window reaches the end; the last one is moved back to end there."""
    if roi > length:
        raise ValueError(f"roi {roi} px is larger than the (padded) axis length {length} px")
    num = int(math.ceil(float(length) / interval))
    count = next((d + 1 for d in range(num) if d * interval + roi >= length), 1)
    return [min(d * interval, length - roi) for d in range(count)]


def infer_gaussian(model: Model, image: Array, *, roi_size: int | Sequence[int], overlap: float | Sequence[float] = 0.25,
                   sigma_scale: float | Sequence[float] = 0.125, batch_size: int = 4,
                   timings: dict[str, float] | None = None) -> Array:
    """Logits ``(C, H, W)`` float32 by Gaussian-weighted sliding windows, equivalent to
    ``monai.inferers.sliding_window_inference(image[None, None], roi_size, batch_size, model,
    overlap, mode="gaussian", sigma_scale=sigma_scale)[0]``.

    roi_size: window side(s) in px; overlap: fraction of a window shared with its neighbour,
    in [0, 1); sigma_scale: Gaussian sigma as a fraction of the window side. An image smaller
    than the window is zero-padded symmetrically (extra px at the bottom/right) and cropped back.
    Windows are visited row-major and batched ``batch_size`` at a time.
    """
    image = _as_2d(image)
    batch_size = _check_int("batch_size", batch_size, minimum=1)
    roi = tuple(_check_int("roi_size", v, minimum=1) for v in _pair("roi_size", roi_size))
    overlaps = _pair("overlap", overlap)
    for o in overlaps:
        if not 0 <= o < 1:
            raise ValueError(f"overlap must be >= 0 and < 1, got {overlap!r}")
    ops = _Ops(image)
    height, width = image.shape
    padded = (max(height, roi[0]), max(width, roi[1]))
    pad_top, pad_left = (padded[0] - height) // 2, (padded[1] - width) // 2
    intervals = [r if r == p else max(int(r * (1 - o)), 1) for r, p, o in zip(roi, padded, overlaps)]
    ys = sliding_window_starts(padded[0], roi[0], intervals[0])
    xs = sliding_window_starts(padded[1], roi[1], intervals[1])
    starts = [(y, x) for y in ys for x in xs]  # row-major, like MONAI's meshgrid(indexing="ij")

    weights = ops.constant(gaussian_importance_map(roi, sigma_scale))
    count = ops.zeros(padded)
    for y, x in starts:
        count[y:y + roi[0], x:x + roi[1]] += weights
    out: Array | None = None
    clock = _Stopwatch(timings, ops)
    with ops.no_grad():
        for chunk in _chunks(starts, batch_size):
            boxes = [(y - pad_top, y - pad_top + roi[0], x - pad_left, x - pad_left + roi[1]) for y, x in chunk]
            batch = _fill_batch(ops, image, boxes)
            clock.lap("tile")
            logits = _call_model(model, ops, batch)
            del batch
            clock.lap("infer")
            if out is None:
                out = ops.zeros((logits.shape[1], *padded))
            for k, (y, x) in enumerate(chunk):
                out[:, y:y + roi[0], x:x + roi[1]] += logits[k] * weights
            del logits
            clock.lap("stitch")
        assert out is not None
        out /= count
    if padded == (height, width):
        return out
    return ops.float32(out[:, pad_top:pad_top + height, pad_left:pad_left + width])


# --- tile size from memory ---------------------------------------------------------------


