"""Colour channels and stacks in image arrays: what a 3-D array means (one RGB/RGBA image or a
stack of frames) and colour → grey, for the file readers (``send``) and ``dataset``.

Rules (``docs/protocol.md``, "Sending files"):

* 2-D (H, W): one frame.
* 3-D with the last axis 3 or 4 (RGB/RGBA, e.g. (512, 512, 3)): one colour image; refused unless
  ``grey`` (then reduced to one channel by :func:`to_grey`) or ``stack`` (then N=H frames,
  which is what the user asked for).
* other 3-D (N, H, W): a stack when ``stack`` is set or the first axis is clearly frames
  (N <= min(H, W)); otherwise refused, naming the shape.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ChannelError", "COLOUR_CHANNELS", "GREY_WEIGHTS", "is_colour", "to_grey", "as_frames"]

COLOUR_CHANNELS = (3, 4)                       # RGB, RGBA (the last axis)
GREY_WEIGHTS = (0.299, 0.587, 0.114)           # ITU-R BT.601 luma of R, G, B (alpha is dropped)


class ChannelError(ValueError):
    """An array whose layout cannot be read as frames; the message names the shape and the fix."""


def is_colour(array: np.ndarray) -> bool:
    """True for (H, W, 3|4) arrays (RGB/RGBA, channels last) with H, W > 4."""
    return array.ndim == 3 and array.shape[-1] in COLOUR_CHANNELS and min(array.shape[:2]) > 4


def to_grey(array: np.ndarray) -> np.ndarray:
    """(H, W, 3|4) → (H, W): the first channel, exactly, when R = G = B (grey stored as colour);
    else the BT.601 luma in float32 (alpha ignored). 2-D input is returned as it is."""
    a = np.asarray(array)
    if a.ndim == 2:
        return a
    if not (a.ndim == 3 and a.shape[-1] in COLOUR_CHANNELS):
        raise ChannelError(f"need an (H, W) or (H, W, 3|4) image, got shape {a.shape}")
    rgb = a[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    return GREY_WEIGHTS[0] * r + GREY_WEIGHTS[1] * g + GREY_WEIGHTS[2] * b


def as_frames(array: np.ndarray, name: str, *, stack: bool = False, grey: bool = False) -> np.ndarray:
    """An (N, H, W) view (or, for colour with ``grey``, a new array) of a 2-D or 3-D array by the
    rules of the module docstring. Raises :class:`ChannelError` naming ``name`` and the shape."""
    if array.ndim == 2:
        return array[np.newaxis]
    if array.ndim != 3:
        raise ChannelError(f"{name}: need a 2-D image or an (N, H, W) stack, got shape {array.shape}")
    if is_colour(array) and not stack:
        if grey:
            return to_grey(array)[np.newaxis]
        raise ChannelError(f"{name}: shape {array.shape} looks like one {'RGBA' if array.shape[-1] == 4 else 'RGB'} "
                           "image (last axis 3 or 4), not a stack of frames: pass --grey to reduce it to one "
                           "channel, or --stack if it really is a stack")
    if stack or array.shape[0] <= min(array.shape[1:]):
        return array
    raise ChannelError(f"{name}: is shape {array.shape} a stack of {array.shape[0]} frames of "
                       f"{array.shape[1]}x{array.shape[2]} px? The first axis is not clearly frames "
                       "(it is longer than an image side): pass --stack to send it as a stack")
