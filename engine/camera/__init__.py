"""The camera: counts → electrons, dose from a frame, and learning the camera (photon transfer).

Pure numpy on ``(H, W)`` arrays of raw counts; no I/O, no daemon, no bundle. Lives at
``fringelive.engine.camera`` (package: ``settings``, ``blocks``, ``dose``, ``transfer``, ``pairs``,
``stream_fit``, ``calibrate``).

Camera model (one pixel, one frame)
-----------------------------------
An electron dose of ``n`` electrons per pixel (Poisson) is spread by the detector's point
spread ``K`` (MTF; ``sum K = 1``, charge is conserved), multiplied by the gain ``g``
(counts/e), and read out with a dark offset ``o`` (counts) and white read noise ``r`` (rms
counts)::

    c(p) = o + g · (K ⊛ e)(p) + ε(p),     e(p) ~ Poisson(n),   ε ~ N(0, r²)

so, over a region of constant illumination,

    mean  m = o + g·n                                   (1)
    noise power spectrum  NPS(ν) = g²·n·|MTF(ν)|² + r²  (2)

Two variances of a block are used; both are linear in the mean (photon-transfer curves):

* ``v_hp`` — the high-pass variance the daemon has always used: the 4-neighbour Laplacian's
  variance ÷ 20 (its gain on white noise). It sees NPS at high frequencies, where the MTF has
  cut the shot noise but not the read noise::

      v_hp = f·g²·n + r² = f·g·(m − o) + r²             (3)

  ``f`` = ``noise_factor`` = true ÷ apparent shot-noise electrons (1 for white noise, < 1 when
  the MTF correlates neighbours; 0.25 for a Gaussian MTF of σ = 0.5 px). This is the
  definition of the card's ``dose_noise_factor``, so existing cards keep their meaning. (A
  "var = g²·n/f" convention would make f the apparent÷true ratio; it is not used here.)

* ``v_lf`` — the zero-frequency noise power: the sum of the block's noise autocovariance over
  lags ``|dy|, |dx| ≤ nps_lags`` (per-lag unbiased), minus ``L`` times the mean autocovariance
  on the outermost ring of lags (``L = (2·lags + 1)²``). Shot noise has no covariance left on
  that ring when the point spread is narrower than the lags (σ ≲ lags/4), so the ring is a
  baseline: it removes the bias of the subtracted block mean (−T/N on every lag) and most of
  any structure wider than the lags. Since ``MTF(0) = 1``::

      v_lf = g²·n + r² = g·(m − o) + r²                 (4)

  i.e. the true gain whatever the MTF (σ ≤ 0.7 px: within 4 % for 3 lags; σ = 1 px reads
  25 % low — use ``nps_lags = 5``), at the price of 2–6× the scatter of ``v_hp``.

Dose from a frame with a known camera (:func:`estimate_dose`)::

    n_gain  = (m − o) / g                                (from (1); needs g and o)
    n_shot  = f · (m − o)² / (v_hp − r²)                 (from (3); needs o, f; not g)
    dose    = n / (10 · pixel size in nm)²   e/Å²

``n_gain`` is the precise one (relative error ≈ 1/√(n·pixels)); ``n_shot`` is the check that
does not trust ``g``: their ratio is the frame's implied gain ``g·n_gain/n_shot``. With
``g`` or ``o`` unknown the dose is *unverified*.

Photon transfer (EMVA 1288 style, :class:`PhotonTransferFit`, :func:`calibrate_camera`)
-------------------------------------------------------------------------------------
Each flat background block gives a point ``(m, v_hp, v_lf)``. Robust lines through them::

    v_lf = a_lf · m + b_lf,   a_lf = g,        b_lf = r² − g·o
    v_hp = a_hp · m + b_hp,   a_hp = f·g,      b_hp = r² − f·g·o

give ``g = a_lf`` and ``f = a_hp / a_lf``. **Offset and read noise are not separable from one
line**: the intercept ``b = r² − g·o`` is one number for two unknowns. They are fixed by, in
order of preference (``PhotonTransferResult.offset_method``):

1. ``dark``: dark frames (beam blanked, same exposure): ``o`` = their mean, ``r²`` = their
   ``v_lf``. The reliable way.
2. ``given``: an offset, or a read noise, from configuration: ``o = (r² − b_lf)/g``.
3. ``mtf``: the two lines together. Read noise is added after the MTF (white), shot noise is
   not, so the two intercepts differ: ``o = (b_hp − b_lf)/(a_lf − a_hp)``,
   ``r² = b_lf + a_lf·o``. Determined only when the MTF is significant (``f`` well below 1) and
   read noise is white; used when its bootstrap uncertainty is small.
4. ``zero_read_noise``: assume ``r = 0``: ``o = −b_lf / g``. This is a *lower bound* on the
   offset (the true one is higher by ``r²/g`` counts); the darkest blocks seen give an upper
   bound (signal ≥ 0). Both bounds are reported (``offset_bounds``).

The fit is robust (Huber IRLS with a variance ∝ prediction² error model, the scatter of a
variance estimate being proportional to the variance) and its 1-σ uncertainties are a
bootstrap over frames (blocks of a frame are not independent of each other's illumination).

Caveats: an integrating camera with gain noise (scintillator/Landau) has an excess noise
factor ``ENF = 1 + CV²``; photon transfer then measures ``g·ENF`` and doses from it read low by
``ENF`` (calibrate with a known dose, e.g. a Faraday cup or the screen current). Specimen
texture that survives the structure rejection inflates ``v_lf`` more than ``v_hp``; flat
frames without specimen are the clean input (:func:`calibrate_camera`), and so are pairs of
frames of one scene at one dose, whose difference carries no scene at all
(:class:`FramePairs`; :class:`StreamCameraFit` learns from them in a stream, preferring them to
single frames; :func:`config_disagreement` checks configured constants against a fit).
"""

from .blocks import BlockStats, FrameBlocks, block_statistics, flat_blocks
from .calibrate import CameraCalibration, CameraCalibrationError, calibrate_camera
from .dose import DoseEstimate, background_stats, estimate_dose
from .settings import (HEADER_KEYS, CameraError, CameraSettings, counts_to_electrons, electrons_to_counts,
                       header_camera, resolve_camera)
from .pairs import FramePairs
from .stream_fit import StreamCameraFit, config_disagreement
from .transfer import PhotonTransferFit, PhotonTransferResult

__all__ = [
    "CameraSettings",
    "CameraError",
    "HEADER_KEYS",
    "counts_to_electrons",
    "electrons_to_counts",
    "BlockStats",
    "block_statistics",
    "FrameBlocks",
    "background_stats",
    "flat_blocks",
    "DoseEstimate",
    "estimate_dose",
    "PhotonTransferResult",
    "PhotonTransferFit",
    "FramePairs",
    "StreamCameraFit",
    "config_disagreement",
    "CameraCalibration",
    "CameraCalibrationError",
    "calibrate_camera",
    "header_camera",
    "resolve_camera",
]
