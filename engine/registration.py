"""Stage-drift registration between consecutive frames of a series (pure numpy, no I/O).

The specimen stage drifts: between two frames the whole field moves by a rigid shift of up to
tens of pixels. This stage measures that shift by **phase correlation** on a binned copy of the
frame, refines it to sub-pixel precision by a locally upsampled DFT (Guizar-Sicairos et al.,
Opt. Lett. 33, 156 (2008); the algorithm of scikit-image's ``phase_cross_correlation``, here in
numpy/scipy only) and keeps the cumulative drift of the series so that particle tracks can live
in a drift-corrected frame.

Per frame (:func:`prepare` then :func:`estimate_shift`):

1. **bin** the raw frame (H, W) by an integer factor ``b`` so that the longer side is about
   ``target_side_px`` (2048² → 512², b = 4); the mean of each b×b block, float32;
2. **clip** outliers (x-ray hits, dead pixels) to robust percentiles and subtract the mean;
3. **window** with a Tukey window (``tukey_alpha`` = 1 is Hann) so that the frame edges do not
   correlate with themselves at zero shift;
4. FFT; the cross-power spectrum ``C·R*`` is **whitened** (divided by its modulus: phase
   correlation) and **band-passed** (``highpass_cycles`` removes the illumination gradient and
   thickness variation, ``lowpass_cycles`` the shot noise and the lattice fringes, which move
   with each particle rather than with the support; both in cycles per *binned* pixel);
5. the inverse FFT peaks at the shift; a 1.5-pixel neighbourhood of the peak is re-evaluated on
   a grid ``upsample`` times finer by a matrix DFT.

Conventions: ``shift_px`` = (dy, dx) is the displacement of the specimen **in the image**, from
the previous frame to this one, in **full-resolution pixels**: a feature at (y, x) in the previous
frame is at (y + dy, x + dx) in this one. ``cumulative_px`` is the sum since the series' first
frame, so the drift-corrected position of a feature is ``position_px - cumulative_px``.

``confidence`` in [0, 1] is ``1 - second / first`` of the two highest correlation peaks (the
second searched outside ``exclusion_px`` of the first): ~0 when the peak is ambiguous (blank
frame, periodic field), → 1 for a unique peak. ``peak_height`` is the whitened correlation's
maximum divided by the sum of the band-pass weights: the fraction of band-limited spectral
phase that moved coherently (1 for a pure shift without noise).

:class:`DriftTracker` is the stateful part (one per series): it keeps the reference spectrum and
the cumulative drift, resets on a new series, a magnification or pixel-size change or a new
frame shape, and bridges frames whose registration is not trusted (see ``fallback``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft as sfft

__all__ = [
    "RegistrationSettings",
    "Prepared",
    "ShiftEstimate",
    "Registration",
    "bin_factor",
    "bin_frame",
    "prepare",
    "estimate_shift",
    "register_pair",
    "DriftTracker",
]

FALLBACKS = ("velocity", "zero")


@dataclass(frozen=True)
class RegistrationSettings:
    """How stage drift is measured (a ``[registration]`` config section, or part of ``[tracking]``).

    enabled: measure at all (else every frame reports status ``disabled`` and zero drift).
    target_side_px: the binned frame's longer side is about this (px); the bin factor is
    ``max(1, round(max(H, W) / target_side_px))``. tukey_alpha: taper fraction of the window in
    [0, 1] (0 = none, 1 = Hann). highpass_cycles / lowpass_cycles: band-pass corners in cycles per
    binned pixel, 0 < highpass < lowpass <= 0.5. upsample: sub-pixel refinement factor (1 = none;
    20 → 1/20 binned px). max_shift_fraction: the largest shift searched, as a fraction of each
    binned side (<= 0.5). exclusion_px: radius (binned px) around the main peak excluded when
    looking for the second peak. clip_percent: outliers beyond this percentile at each end are
    clipped (0 = no clipping). min_confidence: below it the shift is not trusted and the
    tracker bridges the frame with ``fallback`` (``velocity``: the last trusted per-frame shift
    again; ``zero``: no motion). max_bridged_frames: after this many untrusted frames in a row
    the reference is re-anchored on the current frame.
    """

    enabled: bool = True
    target_side_px: int = 512
    tukey_alpha: float = 0.5
    highpass_cycles: float = 0.008
    lowpass_cycles: float = 0.22
    upsample: int = 20
    max_shift_fraction: float = 0.25
    exclusion_px: float = 4.0
    clip_percent: float = 0.1
    min_confidence: float = 0.15
    fallback: str = "velocity"
    max_bridged_frames: int = 5

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"registration.enabled must be true or false, got {self.enabled!r}")
        for name, lo in (("target_side_px", 16), ("upsample", 1), ("max_bridged_frames", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"registration.{name} must be an integer >= {lo}, got {v!r}")
        for name, lo, hi in (("tukey_alpha", 0.0, 1.0), ("max_shift_fraction", 0.0, 0.5),
                             ("clip_percent", 0.0, 5.0), ("min_confidence", 0.0, 1.0),
                             ("highpass_cycles", 0.0, 0.5), ("lowpass_cycles", 0.0, 0.5),
                             ("exclusion_px", 0.0, 64.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                    or not math.isfinite(v) or not lo <= v <= hi:
                raise ValueError(f"registration.{name} must be a number in [{lo}, {hi}], got {v!r}")
        if self.max_shift_fraction <= 0:
            raise ValueError(f"registration.max_shift_fraction must be > 0, got {self.max_shift_fraction!r}")
        if not 0 < self.highpass_cycles < self.lowpass_cycles:
            raise ValueError("registration.highpass_cycles must be > 0 and < lowpass_cycles, got "
                             f"highpass_cycles={self.highpass_cycles!r}, lowpass_cycles={self.lowpass_cycles!r}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"registration.fallback must be one of {', '.join(FALLBACKS)}, got {self.fallback!r}")


@dataclass(frozen=True, eq=False)
class Prepared:
    """One frame ready for correlation: ``spectrum`` (h, w) complex64 FFT of the binned,
    clipped, mean-free, windowed frame; ``bin`` the factor b; ``shape`` the full frame (H, W)."""

    spectrum: np.ndarray
    bin: int
    shape: tuple[int, int]


@dataclass(frozen=True)
class ShiftEstimate:
    """Shift of ``current`` relative to ``reference``: ``shift_px`` (dy, dx) full-resolution px
    (see module docstring for the sign), ``confidence`` [0, 1], ``peak_height`` [0, 1]."""

    shift_px: tuple[float, float]
    confidence: float
    peak_height: float


@dataclass(frozen=True)
class Registration:
    """What :meth:`DriftTracker.update` returns for one frame.

    shift_px: (dy, dx) full-resolution px since the previous frame of the series ((0, 0) on the
    first). cumulative_px: (dy, dx) px since the series' first frame (or the last reset).
    confidence / peak_height: of the measurement (None when nothing was measured). status:
    ``reference`` (first frame after a reset), ``ok``, ``bridged`` (untrusted; ``fallback``
    used), ``disabled``. reset: why the state was reset on this frame (``new_series``,
    ``magnification_change``, ``pixel_size_change``, ``shape_change``) or None. index: frames
    seen since the reset (0 on the reference).
    """

    shift_px: tuple[float, float]
    cumulative_px: tuple[float, float]
    confidence: float | None
    peak_height: float | None
    status: str
    reset: str | None
    index: int
    bin: int

    def to_header(self) -> dict[str, Any]:
        """The result header's ``registration`` map (plain floats, rounded to 1e-3 px)."""
        return {
            "shift_px": [round(float(self.shift_px[0]), 3), round(float(self.shift_px[1]), 3)],
            "cumulative_px": [round(float(self.cumulative_px[0]), 3), round(float(self.cumulative_px[1]), 3)],
            "confidence": None if self.confidence is None else round(float(self.confidence), 4),
            "peak_height": None if self.peak_height is None else round(float(self.peak_height), 4),
            "status": self.status,
            "reset": self.reset,
            "bin": self.bin,
        }


# --------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------

def bin_factor(shape: tuple[int, int], target_side_px: int) -> int:
    """Integer bin factor so that ``max(shape) / b`` is about ``target_side_px`` (>= 1)."""
    return max(1, int(round(max(shape) / float(target_side_px))))


def bin_frame(frame: np.ndarray, b: int) -> np.ndarray:
    """Mean of b×b blocks of ``frame`` (H, W) → (H // b, W // b) float32 (ragged edges cut)."""
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise ValueError(f"frame must be 2-D (H, W), got shape {frame.shape}")
    if b == 1:
        return frame.astype(np.float32, copy=True)
    h, w = (frame.shape[0] // b) * b, (frame.shape[1] // b) * b
    if h == 0 or w == 0:
        raise ValueError(f"frame {frame.shape} is smaller than one {b}×{b} bin")
    # Strided adds (b + b passes over contiguous rows) beat reshape().sum(axis=(1, 3)) ~25×.
    if frame.dtype.kind == "u" and frame.dtype.itemsize <= 2:
        acc = np.uint32  # exact: 65535 × 64² < 2**32
    elif frame.dtype.kind == "i" and frame.dtype.itemsize <= 2:
        acc = np.int32
    else:
        acc = np.float32
    f = frame[:h, :w]
    rows = f[0::b].astype(acc)
    for i in range(1, b):
        rows += f[i::b]
    out = rows[:, 0::b].copy()
    for i in range(1, b):
        out += rows[:, i::b]
    return out.astype(np.float32) * np.float32(1.0 / (b * b))


def _tukey(n: int, alpha: float) -> np.ndarray:
    """Tukey (tapered cosine) window of length n, float32; alpha 0 = box, 1 = Hann."""
    if alpha <= 0 or n < 3:
        return np.ones(n, dtype=np.float32)
    x = np.linspace(0.0, 1.0, n)
    w = np.ones(n)
    edge = alpha / 2.0
    lo = x < edge
    hi = x > 1.0 - edge
    w[lo] = 0.5 * (1 + np.cos(np.pi * (x[lo] / edge - 1)))
    w[hi] = 0.5 * (1 + np.cos(np.pi * ((x[hi] - 1) / edge + 1)))
    return w.astype(np.float32)


_CACHE: dict[tuple, np.ndarray] = {}


def _cached(key: tuple, make: Any) -> np.ndarray:
    out = _CACHE.get(key)
    if out is None:
        if len(_CACHE) > 32:
            _CACHE.clear()
        out = _CACHE[key] = make()
    return out


def _window(shape: tuple[int, int], alpha: float) -> np.ndarray:
    return _cached(("window", shape, alpha),
                   lambda: np.outer(_tukey(shape[0], alpha), _tukey(shape[1], alpha)))


def _band(shape: tuple[int, int], lo: float, hi: float) -> np.ndarray:
    """Band-pass weights (h, w) float32 on the fft2 grid: Butterworth high-pass (order 2) at
    ``lo`` times Butterworth low-pass (order 4) at ``hi``, cycles per binned pixel."""

    def make() -> np.ndarray:
        fy = np.fft.fftfreq(shape[0])[:, None]
        fx = np.fft.fftfreq(shape[1])[None, :]
        f2 = fy * fy + fx * fx
        hp = 1.0 - 1.0 / (1.0 + (f2 / (lo * lo)) ** 2)
        lp = 1.0 / (1.0 + (f2 / (hi * hi)) ** 4)
        return (hp * lp).astype(np.float32)

    return _cached(("band", shape, lo, hi), make)


def prepare(frame: np.ndarray, settings: RegistrationSettings) -> Prepared:
    """Bin, clip, de-mean, window and FFT ``frame`` (H, W) of any real dtype (see module
    docstring, steps 1–4). Cost (2 busy cores): 8–20 ms at 2048² uint16, ~60 ms at 4096²."""
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise ValueError(f"frame must be 2-D (H, W), got shape {frame.shape}")
    b = bin_factor(frame.shape, settings.target_side_px)
    img = bin_frame(frame, b)
    if min(img.shape) < 8:
        raise ValueError(f"binned frame {img.shape} is too small to register (frame {frame.shape}, bin {b})")
    if settings.clip_percent > 0:
        sample = img[::2, ::2]
        lo, hi = np.percentile(sample, [settings.clip_percent, 100.0 - settings.clip_percent])
        np.clip(img, lo, hi, out=img)
    img -= np.float32(img.mean())
    img *= _window(img.shape, float(settings.tukey_alpha))
    spec = sfft.fft2(img)
    return Prepared(spectrum=spec.astype(np.complex64, copy=False), bin=b, shape=(int(frame.shape[0]), int(frame.shape[1])))


def _upsampled_dft(data: np.ndarray, freqs: tuple[np.ndarray, np.ndarray], region: int, upsample: int,
                   offsets: np.ndarray) -> np.ndarray:
    """Inverse DFT of ``data`` (ny, nx) (spectrum samples at ``freqs`` = (fy (ny,), fx (nx,)),
    cycles per pixel) evaluated on a ``region``² grid ``upsample`` times finer than the pixel
    grid, starting at ``-offsets`` (upsampled px): ``Ky · data · Kxᵀ``, two small complex64
    matrix products, O(region·ny·nx) (~10 ms at 360² kept frequencies, region 30)."""

    def kernel(f: np.ndarray, offset: float) -> np.ndarray:
        k = np.exp(-2j * np.pi * (np.arange(region) - offset)[:, None] * (f / upsample)[None, :])
        return k.astype(np.complex64)

    ky, kx = kernel(freqs[0], float(offsets[0])), kernel(freqs[1], float(offsets[1]))
    # einsum's own loops, not BLAS: multithreaded OpenBLAS on these small products slows down
    # by 100× when the cores are busy (inference, other stages), a daemon's normal state.
    rows = np.einsum("bc,dc->bd", np.asarray(data, dtype=np.complex64), kx)
    return np.einsum("ab,bd->ad", ky, rows)


def estimate_shift(reference: Prepared, current: Prepared, settings: RegistrationSettings) -> ShiftEstimate:
    """Shift of ``current`` relative to ``reference`` (both from :func:`prepare` with the same
    bin and shape): phase correlation, band-pass, peak, second peak, upsampled-DFT refinement."""
    if reference.spectrum.shape != current.spectrum.shape or reference.bin != current.bin:
        raise ValueError(f"frames differ: binned {reference.spectrum.shape} (bin {reference.bin}) vs "
                         f"{current.spectrum.shape} (bin {current.bin})")
    h, w = current.spectrum.shape
    band = _band((h, w), float(settings.highpass_cycles), float(settings.lowpass_cycles))
    product = current.spectrum * np.conj(reference.spectrum)
    mag = np.abs(product)
    eps = np.float32(1e-12 * (float(mag.max()) if mag.size else 1.0) + 1e-30)
    product = product / (mag + eps) * band  # complex64 throughout
    corr = sfft.ifft2(product).real
    # Restrict the search to |shift| <= max_shift_fraction of each side.
    my = max(1, int(settings.max_shift_fraction * h))
    mx = max(1, int(settings.max_shift_fraction * w))
    iy = np.r_[0:my + 1, h - my:h] if 2 * my + 1 < h else np.arange(h)
    ix = np.r_[0:mx + 1, w - mx:w] if 2 * mx + 1 < w else np.arange(w)
    sub = corr[np.ix_(iy, ix)]
    k = int(np.argmax(sub))
    py, px = int(iy[k // sub.shape[1]]), int(ix[k % sub.shape[1]])
    peak = float(corr[py, px])
    # Second peak: outside the exclusion radius (circular distance on the torus).
    dy = np.minimum(np.abs(iy - py), h - np.abs(iy - py))[:, None]
    dx = np.minimum(np.abs(ix - px), w - np.abs(ix - px))[None, :]
    far = (dy * dy + dx * dx) > settings.exclusion_px ** 2
    second = float(sub[far].max()) if far.any() else 0.0
    confidence = 0.0 if peak <= 0 else float(np.clip(1.0 - max(second, 0.0) / peak, 0.0, 1.0))
    weight_sum = float(band.sum())
    peak_height = float(np.clip(peak * h * w / weight_sum, 0.0, 1.0)) if weight_sum > 0 else 0.0
    shift = np.array([py if py <= h // 2 else py - h, px if px <= w // 2 else px - w], dtype=np.float64)
    up = int(settings.upsample)
    if up > 1:
        shift = np.round(shift * up) / up
        region = int(math.ceil(up * 1.5))
        centre = float(np.fix(region / 2.0))
        offsets = centre - shift * up
        # Only frequencies the band-pass lets through matter (weight < 2 % beyond 1.6× lowpass).
        fmax = min(0.5, 1.6 * float(settings.lowpass_cycles))
        fy, fx = np.fft.fftfreq(h), np.fft.fftfreq(w)
        ky, kx = np.flatnonzero(np.abs(fy) <= fmax), np.flatnonzero(np.abs(fx) <= fmax)
        local = _upsampled_dft(np.conj(product[np.ix_(ky, kx)]), (fy[ky], fx[kx]), region, up,
                               offsets).conj().real
        m = np.unravel_index(int(np.argmax(local)), local.shape)
        shift = shift + (np.array(m, dtype=np.float64) - centre) / up
    b = current.bin
    return ShiftEstimate(shift_px=(float(shift[0] * b), float(shift[1] * b)), confidence=confidence,
                         peak_height=peak_height)


def register_pair(reference: np.ndarray, current: np.ndarray,
                  settings: RegistrationSettings | None = None) -> ShiftEstimate:
    """Convenience: shift of frame ``current`` (H, W) relative to ``reference`` (H, W)."""
    settings = settings or RegistrationSettings()
    return estimate_shift(prepare(reference, settings), prepare(current, settings), settings)


# --------------------------------------------------------------------------------------------
# stateful tracker (one series)
# --------------------------------------------------------------------------------------------

@dataclass
class _State:
    series: str | None = None
    magnification: float | None = None
    pixel_size_nm: float | None = None
    shape: tuple[int, int] | None = None
    reference: Prepared | None = None
    reference_cumulative: tuple[float, float] = (0.0, 0.0)
    cumulative: tuple[float, float] = (0.0, 0.0)
    velocity: tuple[float, float] = (0.0, 0.0)
    bridged: int = 0
    index: int = 0


def _changed(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    return not math.isclose(a, b, rel_tol=1e-6)


class DriftTracker:
    """Cumulative stage drift of one series of frames (not thread-safe: one finisher thread).

    Each :meth:`update` registers the frame against the reference (the last frame whose shift
    was trusted), so an untrusted frame (blank, beam blanked, confidence < ``min_confidence``)
    is bridged: its drift is predicted by ``fallback`` and the next frame is registered across
    it. The state resets (new reference, cumulative (0, 0)) when the series name, magnification,
    pixel size or frame shape changes; ``Registration.reset`` says why.
    """

    def __init__(self, settings: RegistrationSettings | None = None) -> None:
        self.settings = settings or RegistrationSettings()
        self._s = _State()

    def reset(self) -> None:
        self._s = _State()

    @property
    def cumulative_px(self) -> tuple[float, float]:
        return self._s.cumulative

    def _reset_reason(self, series: str, magnification: float | None, pixel_size_nm: float | None,
                      shape: tuple[int, int]) -> str | None:
        s = self._s
        if s.series is None or s.series != series:
            return "new_series"
        if _changed(s.magnification, magnification):
            return "magnification_change"
        if _changed(s.pixel_size_nm, pixel_size_nm):
            return "pixel_size_change"
        if s.shape != shape:
            return "shape_change"
        return None

    def update(self, frame: np.ndarray, *, series: str, magnification: float | None = None,
               pixel_size_nm: float | None = None) -> Registration:
        """Register ``frame`` (H, W) (raw counts, any real dtype) of ``series``; ``magnification``
        (×) and ``pixel_size_nm`` (nm/px) from the header, None when unknown."""
        frame = np.asarray(frame)
        if frame.ndim != 2:
            raise ValueError(f"frame must be 2-D (H, W), got shape {frame.shape}")
        shape = (int(frame.shape[0]), int(frame.shape[1]))
        st = self.settings
        reason = self._reset_reason(series, magnification, pixel_size_nm, shape)
        if reason is not None:
            self._s = _State(series=series, magnification=magnification, pixel_size_nm=pixel_size_nm, shape=shape)
        s = self._s
        if not st.enabled:
            s.index += 1 if reason is None else 0
            return Registration((0.0, 0.0), (0.0, 0.0), None, None, "disabled", reason, s.index, 1)
        cur = prepare(frame, st)
        if s.reference is None:
            s.reference, s.reference_cumulative, s.cumulative = cur, (0.0, 0.0), (0.0, 0.0)
            s.index = 0
            return Registration((0.0, 0.0), (0.0, 0.0), None, None, "reference", reason, 0, cur.bin)
        est = estimate_shift(s.reference, cur, st)
        prev = s.cumulative
        s.index += 1
        if est.confidence >= st.min_confidence:
            cum = (s.reference_cumulative[0] + est.shift_px[0], s.reference_cumulative[1] + est.shift_px[1])
            s.velocity = (cum[0] - prev[0], cum[1] - prev[1])
            s.reference, s.reference_cumulative, s.cumulative, s.bridged = cur, cum, cum, 0
            status = "ok"
        else:
            step = s.velocity if st.fallback == "velocity" else (0.0, 0.0)
            cum = (prev[0] + step[0], prev[1] + step[1])
            s.cumulative = cum
            s.bridged += 1
            status = "bridged"
            if s.bridged > st.max_bridged_frames:  # re-anchor: the old reference is too stale
                s.reference, s.reference_cumulative, s.bridged = cur, cum, 0
        shift = (cum[0] - prev[0], cum[1] - prev[1])
        return Registration(shift, cum, est.confidence, est.peak_height, status, reason, s.index, cur.bin)
