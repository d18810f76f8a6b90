"""Tuning constants of the preprocessing engine, read at call time (tests and benchmarks change
them with ``monkeypatch.setattr(settings, NAME, value)``). What a bundle prescribes (x-ray
threshold, flat-field degree, rescale mode) is the card's ``Preprocessing``
(``fringelive.bundle.card``)."""

from __future__ import annotations

__all__ = ["MAX_FILL_SWEEPS", "NUMPY_CPU_SCANS", "SURFACE_FLOOR_REL"]

MAX_FILL_SWEEPS = 16
"""Sweeps that fill outlier clusters from outside in; what is left gets the median."""

SURFACE_FLOOR_REL = 1e-3
"""The flat-field surface must exceed this fraction of the mean block intensity everywhere."""

_SAMPLE_SIZE = 1 << 16       # pixels sampled to bracket order statistics
_DIRECT_MAX = 1 << 18        # up to this many pixels order statistics come from one sort
_CHUNK_PIXELS = 1 << 20      # chunk of the elementwise passes (no full-frame temporaries)

NUMPY_CPU_SCANS = True
"""On CPU, run the scan kernels (order-statistics bracket, outlier search, partial selection)
through numpy views of the same memory: 4–8× faster than torch's CPU comparison kernels, same
exact results. False forces the torch kernels (what CUDA uses) everywhere."""
