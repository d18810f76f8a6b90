"""Preprocessing engine shared by training and the daemon: raw camera frame → network input.

Written once against a small array namespace (:mod:`fringelive.engine.arrays`), float32: numpy
on the CPU (no torch needed: the serving path), torch for tensors and on CUDA; the same code
runs in both. Parameters come from the bundle card
(:class:`fringelive.bundle.card.Preprocessing`). :func:`preprocess` runs

    cast to float32 → :func:`remove_xrays` (if ``xray_removal``) → :func:`flatfield_correct`
    (if ``flatfield``) → :func:`rescale` → :func:`lowpass` (if ``lowpass_sigma_px`` > 0)

on a 2-D frame ``(H, W)`` of raw counts and returns an ``(H, W)`` float32 array: numpy for a
numpy frame on the CPU (``device`` None or "cpu"), a torch tensor for a tensor (on its device)
or for ``device="cuda:N"``. The steps are public too; each takes an ``(H, W)`` array or tensor
and returns a new float32 one of the same kind; no function modifies its input. Frames may be
numpy arrays of any integer or float dtype in either byte order, or torch tensors; NaN/±Inf
are refused (ValueError naming the count), as are other shapes.

X-ray removal (the published ``xray_correct_threshold``, vectorized)
    Negative counts → 0. Pixels above ``median + threshold_counts`` are outliers; all of them
    are replaced at once (no Python loop over pixels) by the mean of their 8 neighbours that
    are inside the frame and not outliers (published: all 8 neighbours, processed highest
    first, and the global mean on the border). Cluster decision: an outlier whose neighbours
    are all outliers is filled by the next sweep from the pixels filled around it (onion
    peeling, outside → in; every sweep reads the values from before it); after
    :data:`MAX_FILL_SWEEPS` sweeps (clusters wider than ~32 px) the rest get the median. A
    filled value never exceeds the limit, so the fill can tell "still to fill" by value.
    Each of ``passes`` (default 2) recomputes the median and the outlier set; pass k+1's median
    comes from pass k's bracket (below) updated with the replaced values, and its outlier scan
    is skipped when that median did not drop (no pixel can then be above the new limit).

    Median method: exact, ``np.median`` semantics (mean of the two middle values), no
    approximation. A quasi-random sample of 65 536 pixels brackets the middle ranks; one
    chunked pass counts the pixels below the bracket and collects those inside (~2 %), which
    are partially sorted. The count verifies the bracket; a miss (adversarial data only) falls
    back to selecting from the whole image. ``torch.median``/``np.median`` take ~0.25 s on a
    4096² frame here, the bracket ~30–40 ms. Percentiles (``histogram``) work the same way.

Flat-field
    A tensor-product Bernstein (Bézier) surface of degree ``(dy, dx)`` is fitted by iteratively
    reweighted least squares to the image block-averaged by ``downsample`` (trailing rows and
    columns that do not fill a block are left out of the fit). Coordinates ``u = (row + 0.5)/H``,
    ``v = (col + 0.5)/W`` (pixel centres in [0, 1]); blocks sit at their centres, so the fitted
    surface is the same function at full resolution. The first fit is unweighted; each of
    ``iterations`` refits weights block residuals by ``exp(-weight_scale * e / mean(e))``, ``e``
    the squared residual of the previous fit. The ``(dy+1)(dx+1)`` normal equations are
    accumulated and solved in float64 (separable sums, no design matrix); residuals and weights
    on the block grid are float32. The full-resolution surface ``B(u) C B(v)ᵀ`` is evaluated
    in float32 a band of rows at a time and the image divided by it. Guard: the surface must
    exceed :data:`SURFACE_FLOOR_REL` × the mean block intensity everywhere (checked exactly:
    a Bézier surface lies within its control points' range, else every pixel is checked);
    otherwise ValueError. Dividing by a near-zero surface only makes noise, and such frames
    (beam blanked, mostly dark, already standardized) are not counts to be flat-fielded.

Rescale
    ``standardize``: ``(x - mean) / std`` (population std over the whole image, chunk moments
    merged in float64); ``normalize``: min–max to [0, 1]; ``histogram``: clip to the
    ``percentiles`` (numpy's ``linear`` definition, exact), then min–max to [0, 1]. A constant
    image (or equal percentiles) gives zeros.

CPU speed: full-frame passes run in chunks of :data:`_CHUNK_PIXELS` in place, so a 4096²
frame allocates one float32 image and no other full-size temporaries (a fresh 64 MB buffer
costs ~25 ms of page faults here, more than the arithmetic). The comparison-heavy kernels
(bracket count/selection, outlier search, partial selection) run in numpy, also for CPU
tensors through numpy views (:data:`NUMPY_CPU_SCANS`; 4–8× faster than torch's CPU comparisons,
identical exact results; CUDA always uses the torch kernels). Measured by
``benchmarks/preprocess_steps.py`` (numpy vs torch CPU in ``benchmarks/README.md``). For torch on
an oversubscribed CPU run it single-threaded: every intra-op parallel region then waits for a
descheduled peer thread (measured 25× slower on a small frame, 3× on 4096²).

Agreement with the plain numpy/scipy float64 oracle (``tests/oracle_preprocess.py``), checked
by ``tests/test_preprocess.py``: the same outlier pixels replaced, all others bit-identical,
replaced values within 1e-5 relative; flat-field coefficients, surface and corrected image
within 1e-5 relative (measured ~1e-7); rescale within 1e-5 absolute + 1e-6 relative
(standardize) and 1e-6 absolute (normalize, histogram); medians and percentiles bit-identical;
the whole pipeline within 5e-5 absolute. numpy against torch (CPU tensors, numpy scan views and
torch kernels), ``tests/test_preprocess_parity.py``: x-ray fills identical, standardised images
within 1e-4 (measured ≤ 2e-5: float32 sums in another order), pipeline masks identical.
"""

from __future__ import annotations

import time
from typing import Any

from fringelive.bundle.card import Preprocessing
from fringelive.engine.arrays import Array, namespace_of
from fringelive.engine.preprocess import settings
from fringelive.engine.preprocess.flatfield import (_block_coords, _check_flatfield_args, _flatfield, bernstein_basis,
                                                    evaluate_flatfield, fit_flatfield, fit_flatfield_coefficients,
                                                    flatfield_correct)
from fringelive.engine.preprocess.frames import _ship_narrow, _to_float32, as_float32_frame  # noqa: F401 (tests)
from fringelive.engine.preprocess.lowpass import _lowpass, lowpass
from fringelive.engine.preprocess.normalise import _rescale, rescale
from fringelive.engine.preprocess.settings import MAX_FILL_SWEEPS, NUMPY_CPU_SCANS, SURFACE_FLOOR_REL
from fringelive.engine.preprocess.stats import median, order_statistics, percentiles
from fringelive.engine.preprocess.xrays import _remove_xrays, remove_xrays

__all__ = [
    "MAX_FILL_SWEEPS",
    "NUMPY_CPU_SCANS",
    "SURFACE_FLOOR_REL",
    "as_float32_frame",
    "order_statistics",
    "median",
    "percentiles",
    "remove_xrays",
    "bernstein_basis",
    "fit_flatfield_coefficients",
    "evaluate_flatfield",
    "fit_flatfield",
    "flatfield_correct",
    "rescale",
    "lowpass",
    "preprocess",
    "min_frame_side",
]


def min_frame_side(params: Preprocessing) -> int:
    """The smallest frame side (px) ``params`` can process: the flat-field fit needs at least
    ``degree + 1`` blocks of ``flatfield_downsample`` px per axis (12 px for the default card's
    degree (2, 2) on 4-px blocks); 1 with the flat field off. Tiling pads any smaller frame."""
    if not params.flatfield:
        return 1
    return params.flatfield_downsample * (max(params.flatfield_degree) + 1)


def preprocess(frame: Any, params: Preprocessing, device: Any = None,
               *, stats: dict[str, Any] | None = None, timings: dict[str, float] | None = None) -> Array:
    """Raw camera frame → network input, as the bundle card ``params`` prescribes.

    frame: (H, W) counts; numpy (any integer/float dtype, either byte order) or torch tensor.
    device: where to compute; default the tensor's device, numpy on the CPU for numpy input
    ("cpu" too); a torch device such as "cuda:0" needs PyTorch.
    stats: if given, filled with ``xray_pixels`` (pixels replaced, all passes) and, with the
    flat-field on, ``flatfield_min``/``flatfield_max`` (fitted surface at the block centres
    relative to its mean: the illumination non-uniformity) and ``flatfield_degree`` (the
    card's, or lower where its surface was not positive over the whole frame: see
    :func:`~fringelive.engine.preprocess.flatfield._flatfield`).
    timings: if given, filled with the wall time in ms of each stage as run here
    (``to_float32``, ``remove_xrays``, ``flatfield``, ``rescale``, ``lowpass``; 0.0 for a stage the card
    switches off), synchronising CUDA after each stage.
    Returns an (H, W) float32 array (numpy on the CPU for numpy input, else a tensor on
    ``device``); ``frame`` is never modified.
    """
    if not isinstance(params, Preprocessing):
        raise TypeError(f"params must be a fringelive.bundle.card.Preprocessing, got {type(params).__name__}")
    clock = _StageClock(timings)
    x, owned = _to_float32(frame, device)
    xp = namespace_of(x)
    with xp.no_grad():
        clock.lap("to_float32", xp)
        n = 0
        if params.xray_removal:
            x, n = _remove_xrays(x, params.xray_threshold_counts, params.xray_passes, settings.MAX_FILL_SWEEPS, inplace=owned)
            owned = True
        clock.lap("remove_xrays", xp, params.xray_removal)
        if stats is not None:
            stats["xray_pixels"] = n
        if params.flatfield:
            dy, dx = _check_flatfield_args(tuple(params.flatfield_degree), params.flatfield_downsample,
                                           params.flatfield_iterations, params.flatfield_weight_scale)
            x, coef, z = _flatfield(x, dy, dx, params.flatfield_downsample, params.flatfield_iterations,
                                    float(params.flatfield_weight_scale), inplace=owned)
            owned = True
            if stats is not None:
                hb, wb = z.shape
                f = params.flatfield_downsample
                dy, dx = int(coef.shape[0]) - 1, int(coef.shape[1]) - 1  # lower after a fallback
                fit = (bernstein_basis(_block_coords(hb, f, x.shape[0], xp), dy) @ coef
                       @ bernstein_basis(_block_coords(wb, f, x.shape[1], xp), dx).T)
                m = fit.mean()
                stats["flatfield_min"] = float((fit.min() / m).item())
                stats["flatfield_max"] = float((fit.max() / m).item())
                stats["flatfield_degree"] = (dy, dx)
        clock.lap("flatfield", xp, params.flatfield)
        x = _rescale(x, params.rescale, tuple(params.histogram_percentiles), inplace=owned)
        clock.lap("rescale", xp)
        x = _lowpass(x, float(params.lowpass_sigma_px))
        clock.lap("lowpass", xp, params.lowpass_sigma_px > 0)
        return x


class _StageClock:
    """Wall time per stage into ``timings`` (ms), if given; CUDA is synchronised at each lap."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.t0 = time.perf_counter()

    def lap(self, name: str, xp: Any, ran: bool = True) -> None:
        if self.timings is None:
            return
        xp.sync()
        t1 = time.perf_counter()
        self.timings[name] = (t1 - self.t0) * 1e3 if ran else 0.0
        self.t0 = t1
