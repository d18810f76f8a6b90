"""Preprocessing engine shared by training and the daemon: raw camera frame → network input.

Device-agnostic torch, float32; the same code runs on CPU and CUDA. Parameters come from the
bundle card (:class:`fringelive.bundle.card.Preprocessing`). :func:`preprocess` runs

    cast to float32 → :func:`remove_xrays` (if ``xray_removal``) → :func:`flatfield_correct`
    (if ``flatfield``) → :func:`rescale`

on a 2-D frame ``(H, W)`` of raw counts and returns an ``(H, W)`` float32 tensor. The steps
are public too; each takes an ``(H, W)`` tensor or array and returns a new float32 tensor on
the input's device; no function modifies its input. Frames may be numpy arrays of any integer
or float dtype in either byte order, or torch tensors; NaN/±Inf are refused (ValueError naming
the count), as are other shapes.

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
(bracket count/selection, outlier search, partial selection) use numpy views of the CPU
tensors (:data:`NUMPY_CPU_SCANS`; 4–8× faster than torch's CPU comparisons, identical exact
results; CUDA always uses the torch kernels). Measured by ``benchmarks/preprocess_steps.py``.
On an oversubscribed CPU run torch single-threaded: every intra-op parallel region then waits
for a descheduled peer thread (measured 25× slower on a small frame, 3× on 4096²).

Agreement with the plain numpy/scipy float64 oracle (``tests/oracle_preprocess.py``), checked
by ``tests/test_preprocess.py``: the same outlier pixels replaced, all others bit-identical,
replaced values within 1e-5 relative; flat-field coefficients, surface and corrected image
within 1e-5 relative (measured ~1e-7); rescale within 1e-5 absolute + 1e-6 relative
(standardize) and 1e-6 absolute (normalize, histogram); medians and percentiles bit-identical;
the whole pipeline within 5e-5 absolute.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fringelive.bundle.card import RESCALE_MODES, Preprocessing

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
    "preprocess",
]

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

# --- input ---------------------------------------------------------------------------------

def _resolve_device(device: str | torch.device | None, default: torch.device) -> torch.device:
    if device is None:
        return default
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} requested but CUDA is not available to torch {torch.__version__}")
    return dev


def _check_real_dtype(kind_ok: bool, dtype: Any) -> None:
    if not kind_ok:
        raise TypeError(f"frame dtype must be an integer or floating-point type, got {dtype}")


def _check_shape(shape: tuple[int, ...]) -> None:
    if len(shape) != 2:
        raise ValueError(f"frame must be 2-D (H, W), got shape {tuple(shape)}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"frame must not be empty, got shape {tuple(shape)}")


def _check_finite(x: torch.Tensor) -> None:
    lo, hi = torch.aminmax(x)  # NaN propagates; ±inf shows up as an extreme
    if not (math.isfinite(lo.item()) and math.isfinite(hi.item())):
        bad = int((~torch.isfinite(x)).sum().item())
        raise ValueError(f"frame has {bad} non-finite pixel(s) (NaN or ±Inf) of {x.numel()}")


def _ship_narrow(frame: np.ndarray, dev: torch.device) -> torch.Tensor:
    """A native-order frame of 1- or 2-byte dtype copied to ``dev`` as is and widened to float32
    there (half the transfer of float32 for uint16). uint16 travels as its int16 bit pattern
    (torch's uint16 kernels are partial on CUDA) and is widened to int32 and masked there."""
    a = np.ascontiguousarray(frame)
    if a.dtype == np.uint16:
        x = torch.from_numpy(a.view(np.int16)).to(dev).to(torch.int32).bitwise_and_(0xFFFF)
    else:
        x = torch.from_numpy(a).to(dev)
    return x.to(torch.float32)


def _to_float32(frame: np.ndarray | torch.Tensor, device: str | torch.device | None) -> tuple[torch.Tensor, bool]:
    """``frame`` as a contiguous (H, W) float32 tensor on ``device``; also whether it is a new
    buffer (True) or shares memory with ``frame`` (False, the caller must not write to it)."""
    if isinstance(frame, torch.Tensor):
        t = frame.detach()
        _check_shape(tuple(t.shape))
        _check_real_dtype(not (t.dtype == torch.bool or t.dtype.is_complex), t.dtype)
        dev = _resolve_device(device, t.device)
        x = t.to(device=dev, dtype=torch.float32).contiguous()
        owned = x.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
        is_float = t.dtype.is_floating_point
    elif isinstance(frame, np.ndarray):
        _check_shape(frame.shape)
        _check_real_dtype(frame.dtype.kind in "iuf", frame.dtype)
        dev = _resolve_device(device, torch.device("cpu"))
        is_float = frame.dtype.kind == "f"
        if dev.type != "cpu" and frame.dtype.isnative and frame.dtype.itemsize < 4:
            x, owned = _ship_narrow(frame, dev), True
        else:
            with np.errstate(over="ignore"):  # float64 beyond float32 → inf, reported below
                a = np.ascontiguousarray(frame, dtype=np.float32)  # also fixes big-endian order
            owned = not np.may_share_memory(a, frame)
            x = torch.from_numpy(a)
            if dev.type != "cpu":
                x, owned = x.to(dev), True
    else:
        raise TypeError(f"frame must be a numpy array or a torch tensor, got {type(frame).__name__}")
    if is_float:
        _check_finite(x)
    return x, owned


def as_float32_frame(frame: np.ndarray | torch.Tensor, device: str | torch.device | None = None) -> torch.Tensor:
    """Validate a raw frame and return it as a contiguous (H, W) float32 tensor on ``device``.

    frame: (H, W) numpy array (any integer/float dtype, either byte order) or torch tensor.
    device: target device; default the tensor's device, CPU for numpy. May share memory with
    ``frame`` when nothing needs converting. Raises ValueError for other shapes and for NaN/Inf
    (naming the count), TypeError for non-numeric dtypes.
    """
    return _to_float32(frame, device)[0]


# --- exact order statistics ----------------------------------------------------------------

def _weyl_sample(flat: torch.Tensor, m: int) -> torch.Tensor:
    """``m`` pixels spread quasi-randomly over ``flat`` (golden-ratio Weyl sequence of indices)."""
    n = flat.numel()
    step = int(n * 0.6180339887498949) | 1
    while math.gcd(step, n) != 1:
        step += 2
    idx = (torch.arange(m, device=flat.device, dtype=torch.int64) * step) % n
    return flat[idx]


@dataclass
class _Bracket:
    """Values of a flat tensor within [lo, hi] (``sel``, unordered) and how many lie below lo:
    enough to read off any order statistic whose rank falls inside the bracket."""

    lo: float
    hi: float
    below: int
    sel: torch.Tensor

    def covers(self, k: int) -> bool:
        return self.below <= k < self.below + self.sel.numel()

    def changed(self, removed: torch.Tensor, added: torch.Tensor) -> _Bracket | None:
        """The bracket after the values ``removed`` were replaced by ``added`` (same count);
        None if a removed value lay inside or below it (would need a rescan)."""
        if removed.numel() and float(removed.min().item()) <= self.hi:
            return None
        below = self.below + int(torch.count_nonzero(added < self.lo).item())
        inside = added[(added >= self.lo) & (added <= self.hi)]
        return _Bracket(self.lo, self.hi, below, torch.cat([self.sel, inside.to(self.sel.device)]))


def _bracketed_order_statistics(flat: torch.Tensor, ks: list[int]) -> tuple[torch.Tensor, list[_Bracket]]:
    """Exact order statistics of 1-D ``flat`` at ranks ``ks`` and the brackets that held."""
    n = flat.numel()
    for k in ks:
        if not 0 <= k < n:
            raise ValueError(f"rank {k} is outside [0, {n}) for a tensor of {n} values")
    out = torch.empty(len(ks), dtype=flat.dtype, device=flat.device)
    if not ks:
        return out, []
    if n <= _DIRECT_MAX:
        return torch.sort(flat).values[torch.tensor(ks, device=flat.device)], []
    m = _SAMPLE_SIZE
    bounds = torch.sort(_weyl_sample(flat, m)).values.tolist()
    order = sorted(range(len(ks)), key=lambda i: ks[i])
    groups: list[list[int]] = []
    for i in order:  # ranks closer than 1 % of n share a bracket
        if groups and ks[i] - ks[groups[-1][-1]] <= n // 100:
            groups[-1].append(i)
        else:
            groups.append([i])
    ranges = []
    for g in groups:
        q_lo, q_hi = ks[g[0]] / (n - 1), ks[g[-1]] / (n - 1)
        sd = math.sqrt(m * max(q_lo * (1 - q_lo), q_hi * (1 - q_hi), 1.0 / m))
        margin = int(6 * sd) + 8
        j_lo = math.floor(q_lo * (m - 1)) - margin
        j_hi = math.ceil(q_hi * (m - 1)) + margin
        ranges.append((bounds[j_lo] if j_lo > 0 else -math.inf, bounds[j_hi] if j_hi < m - 1 else math.inf))
    brackets = []
    for g, (lo, hi), (below, sel) in zip(groups, ranges, _bracket(flat, ranges)):
        br = _Bracket(lo, hi, below, sel)
        if br.covers(ks[g[0]]) and br.covers(ks[g[-1]]):
            out[g] = _select(br.sel, [ks[i] - br.below for i in g])
            brackets.append(br)
        else:  # bracket missed (adversarial data): rank the whole image
            out[g] = _select(flat, [ks[i] for i in g])
    return out, brackets


def order_statistics(x: torch.Tensor, ranks: Sequence[int]) -> torch.Tensor:
    """Exact k-th smallest values (0-based ``ranks``) of all values of ``x`` (any shape).

    Returns a (len(ranks),) tensor of ``x.dtype`` (float64 for integer input) on ``x.device``. For large inputs a
    quasi-random sample of :data:`_SAMPLE_SIZE` pixels brackets each group of nearby ranks and
    only the pixels inside the bracket are ranked; the bracket is verified by counting, and a
    miss falls back to ranking everything (same result, slower).
    """
    return _bracketed_order_statistics(_float_values(x), [int(k) for k in ranks])[0]


def _float_values(x: torch.Tensor) -> torch.Tensor:
    """All values of ``x`` as a 1-D floating tensor (integers → float64, exact below 2**53)."""
    x = x.detach().reshape(-1)
    return x if x.is_floating_point() else x.double()


def _select(src: torch.Tensor, ranks: list[int]) -> torch.Tensor:
    """The values of 0-based ``ranks`` of 1-D ``src`` (partial selection, no full sort)."""
    if _numpy_scans(src):
        a = np.partition(src.numpy(), ranks)
        return torch.from_numpy(a[ranks].copy())
    return torch.stack([torch.kthvalue(src, k + 1).values for k in ranks])


def _numpy_scans(t: torch.Tensor) -> bool:
    """Whether the scan kernels take numpy views of ``t`` (CPU memory; see module docstring)."""
    return NUMPY_CPU_SCANS and t.device.type == "cpu"


def _bracket(flat: torch.Tensor, ranges: list[tuple[float, float]]) -> list[tuple[int, torch.Tensor]]:
    """For each (lo, hi): the count of values < lo and the values within [lo, hi]. One pass,
    chunk by chunk (each chunk is scanned for every range while in cache; no full-size
    temporaries)."""
    below = [0] * len(ranges)
    parts: list[list[Any]] = [[] for _ in ranges]
    if _numpy_scans(flat):
        a = flat.numpy()
        typed = [(a.dtype.type(lo), a.dtype.type(hi)) for lo, hi in ranges]  # exact: sample values
        for i in range(0, a.size, _CHUNK_PIXELS):
            ch = a[i:i + _CHUNK_PIXELS]
            for j, (lo, hi) in enumerate(typed):
                below[j] += int(np.count_nonzero(ch < lo))
                inside = ch >= lo
                inside &= ch <= hi
                parts[j].append(ch[inside])
        return [(b, torch.from_numpy(np.concatenate(p))) for b, p in zip(below, parts)]
    counts: list[list[torch.Tensor]] = [[] for _ in ranges]
    for ch in flat.split(_CHUNK_PIXELS):
        for j, (lo, hi) in enumerate(ranges):
            counts[j].append(torch.count_nonzero(ch < lo))
            inside = ch >= lo
            inside &= ch <= hi
            parts[j].append(ch.index_select(0, torch.nonzero(inside).squeeze(1)))
    totals = torch.stack([torch.stack(c).sum() for c in counts]).tolist()
    return [(int(b), torch.cat(p)) for b, p in zip(totals, parts)]


def _median_ranks(n: int) -> list[int]:
    return [(n - 1) // 2, n // 2]


def _bracketed_median(x: torch.Tensor) -> tuple[torch.Tensor, _Bracket | None]:
    flat = x.reshape(-1)
    v, brackets = _bracketed_order_statistics(flat, _median_ranks(flat.numel()))
    return (v[0] + v[1]) / 2, (brackets[0] if brackets else None)


def _median_from(br: _Bracket, n: int) -> torch.Tensor | None:
    ks = _median_ranks(n)
    if not (br.covers(ks[0]) and br.covers(ks[1])):
        return None
    v = _select(br.sel, [k - br.below for k in ks])
    return (v[0] + v[1]) / 2


def median(x: torch.Tensor) -> torch.Tensor:
    """Exact median of all values of ``x`` (``np.median`` semantics: mean of the two middle
    values for an even count, in ``x.dtype``), as a 0-d tensor on ``x.device``."""
    if x.numel() == 0:
        raise ValueError("median of an empty tensor")
    return _bracketed_median(_float_values(x))[0]


def percentiles(x: torch.Tensor, q: Sequence[float]) -> list[float]:
    """Exact percentiles ``q`` (0–100) of all values of ``x``, numpy's default ``linear``
    definition: position ``q/100·(n−1)`` between the neighbouring order statistics."""
    n = x.numel()
    if n == 0:
        raise ValueError("percentiles of an empty tensor")
    pos = []
    for p in q:
        if not 0.0 <= float(p) <= 100.0:
            raise ValueError(f"percentile must be within [0, 100], got {p!r}")
        pos.append(float(p) / 100.0 * (n - 1))
    ranks: list[int] = []
    for p in pos:
        k = min(int(math.floor(p)), n - 1)
        ranks += [k, min(k + 1, n - 1)]
    v = order_statistics(_float_values(x), ranks).double().tolist()
    res = []
    for i, p in enumerate(pos):
        a, b = v[2 * i], v[2 * i + 1]
        t = p - math.floor(p)
        # numpy's lerp, for bit-identical results
        res.append(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)
    return res


# --- x-ray removal -------------------------------------------------------------------------

_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _outlier_indices(flat: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
    """Flat indices (int64, ascending) of the values above ``limit``, chunk by chunk."""
    parts = []
    if _numpy_scans(flat):
        a = flat.numpy()
        lim = a.dtype.type(limit.item())
        for i in range(0, a.size, _CHUNK_PIXELS):
            parts.append(np.flatnonzero(a[i:i + _CHUNK_PIXELS] > lim) + i)
        return torch.from_numpy(np.concatenate(parts).astype(np.int64, copy=False))
    for i, ch in enumerate(flat.split(_CHUNK_PIXELS)):
        parts.append(torch.nonzero(ch > limit).squeeze(1).add_(i * _CHUNK_PIXELS))
    return torch.cat(parts)


def _fill_outliers_(x: torch.Tensor, idx: torch.Tensor, limit: torch.Tensor, fallback: torch.Tensor,
                    max_sweeps: int) -> None:
    """Replace the pixels ``idx`` (flat indices) of contiguous (H, W) ``x`` — exactly those
    above ``limit`` — by the mean of their in-frame 8 neighbours that are not above it, in place.
    Clusters are filled from outside in: a filled value never exceeds ``limit``, so "above
    limit" always means "still to fill". What ``max_sweeps`` sweeps leave gets ``fallback``."""
    h, w = x.shape
    f = x.view(-1)
    dy = torch.tensor([d[0] for d in _NEIGHBOURS], device=f.device)
    dx = torch.tensor([d[1] for d in _NEIGHBOURS], device=f.device)
    rr = (idx // w)[:, None] + dy                       # (n, 8) neighbour rows
    cc = (idx % w)[:, None] + dx                        # (n, 8) neighbour columns
    inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    nb = (rr.clamp_(0, h - 1) * w).add_(cc.clamp_(0, w - 1))
    for _ in range(max_sweeps):
        v = f[nb]                                       # all gathered before any write
        ok = inside & (v <= limit)
        cnt = ok.sum(1)
        done = cnt > 0
        mean = torch.where(ok, v, 0.0).sum(1)[done] / cnt[done]
        f[idx[done]] = torch.minimum(mean, limit)
        left = ~done
        idx, nb, inside = idx[left], nb[left], inside[left]
        if idx.numel() == 0:
            return
    f[idx] = fallback.to(f.dtype)


def _clamp_negatives(x: torch.Tensor, inplace: bool) -> torch.Tensor:
    out = x if inplace else torch.empty_like(x)
    for src, dst in zip(x.view(-1).split(_CHUNK_PIXELS), out.view(-1).split(_CHUNK_PIXELS)):
        torch.clamp(src, min=0.0, out=dst)
    return out


def _remove_xrays(x: torch.Tensor, threshold_counts: float, passes: int, max_sweeps: int,
                  inplace: bool) -> tuple[torch.Tensor, int]:
    """Negatives → 0, then ``passes`` passes of outlier replacement; returns the image and the
    number of pixels replaced. Pass k+1's median comes from pass k's bracket updated with the
    replaced values (exact; a rescan only if the bracket no longer covers the middle), and the
    outlier scan is skipped when that median did not drop (every pixel is then at or below
    the previous limit, hence below the new one)."""
    x = _clamp_negatives(x, inplace)
    f = x.view(-1)
    n = f.numel()
    thr = torch.tensor(threshold_counts, dtype=x.dtype, device=x.device)
    replaced = 0
    med, br = _bracketed_median(x) if passes else (None, None)
    idx = _outlier_indices(f, med + thr) if passes else None
    for p in range(passes):
        if idx.numel() == 0:
            break
        old = f[idx]
        _fill_outliers_(x, idx, med + thr, med, max_sweeps)
        replaced += idx.numel()
        if p == passes - 1:
            break
        new_med = None
        if br is not None:
            br = br.changed(old, f[idx])
            new_med = _median_from(br, n) if br is not None else None
        if new_med is None:
            new_med, br = _bracketed_median(x)
        dropped = bool((new_med < med).item())
        med = new_med
        idx = _outlier_indices(f, med + thr) if dropped else idx[:0]
    return x, replaced


def _check_xray_args(threshold_counts: float, passes: int, max_sweeps: int) -> None:
    if not (isinstance(threshold_counts, (int, float)) and math.isfinite(threshold_counts) and threshold_counts > 0):
        raise ValueError(f"threshold_counts must be a finite number > 0 (counts), got {threshold_counts!r}")
    if not isinstance(passes, int) or passes < 0:
        raise ValueError(f"passes must be an integer >= 0, got {passes!r}")
    if not isinstance(max_sweeps, int) or max_sweeps < 1:
        raise ValueError(f"max_sweeps must be an integer >= 1, got {max_sweeps!r}")


def remove_xrays(img: np.ndarray | torch.Tensor, threshold_counts: float = 1500.0, passes: int = 2, *,
                 max_sweeps: int = MAX_FILL_SWEEPS) -> torch.Tensor:
    """X-ray hits and negative counts removed from an (H, W) frame of counts.

    Negatives → 0; then ``passes`` times: pixels above ``median + threshold_counts`` (counts) are
    replaced by the mean of their in-frame non-outlier 8 neighbours (clusters filled from
    outside in for up to ``max_sweeps`` sweeps, the rest by the median). Returns a new (H, W)
    float32 tensor on ``img``'s device; other pixels are unchanged bit for bit.
    """
    _check_xray_args(threshold_counts, passes, max_sweeps)
    x, owned = _to_float32(img, None)
    return _remove_xrays(x, float(threshold_counts), passes, max_sweeps, inplace=owned)[0]


# --- flat-field ----------------------------------------------------------------------------

def bernstein_basis(u: torch.Tensor, degree: int) -> torch.Tensor:
    """Bernstein polynomials ``C(n,k) u^k (1-u)^(n-k)``, k = 0..n, at ``u`` (N,) in [0, 1]:
    (N, n+1) in ``u``'s dtype. Non-negative and summing to 1 on [0, 1]."""
    if not isinstance(degree, int) or degree < 0:
        raise ValueError(f"degree must be an integer >= 0, got {degree!r}")
    cols = [math.comb(degree, k) * u ** k * (1 - u) ** (degree - k) for k in range(degree + 1)]
    return torch.stack(cols, dim=1)


def _pixel_coords(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Pixel-centre coordinates ``(i + 0.5) / n``, i = 0..n-1."""
    return (torch.arange(n, device=device, dtype=torch.float64) + 0.5).div_(n).to(dtype)


def _block_coords(nb: int, factor: int, n: int, device: torch.device) -> torch.Tensor:
    """Centres of the first ``nb`` blocks of ``factor`` pixels, in the full frame's [0, 1]."""
    return (torch.arange(nb, device=device, dtype=torch.float64) * factor + factor / 2.0) / n


def _check_flatfield_args(degree: Any, downsample: Any, iterations: Any, weight_scale: Any) -> tuple[int, int]:
    if (not isinstance(degree, (tuple, list)) or len(degree) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in degree)):
        raise ValueError(f"degree must be two integers >= 0 (rows, columns), got {degree!r}")
    if not isinstance(downsample, int) or downsample < 1:
        raise ValueError(f"downsample must be an integer >= 1 (px), got {downsample!r}")
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    if not (isinstance(weight_scale, (int, float)) and math.isfinite(weight_scale) and weight_scale >= 0):
        raise ValueError(f"weight_scale must be a finite number >= 0, got {weight_scale!r}")
    return int(degree[0]), int(degree[1])


def _block_mean(x: torch.Tensor, d: int) -> torch.Tensor:
    """Mean of each full d×d block of (H, W) ``x``: (H // d, W // d) float32. Rows of blocks are
    reduced first (contiguous), then the column groups of the 4× smaller result by strided adds
    (4× faster than ``avg_pool2d`` on CPU)."""
    h, w = x.shape
    hb, wb = h // d, w // d
    if d == 1:
        return x.clone()
    rows = x[: hb * d].view(hb, d, w).sum(1)[:, : wb * d].view(hb, wb, d)
    out = rows[:, :, 0] + rows[:, :, 1]
    for j in range(2, d):
        out += rows[:, :, j]
    return out.mul_(1.0 / (d * d))


def _fit_coefficients(x: torch.Tensor, dy: int, dx: int, downsample: int, iterations: int,
                      weight_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients (dy+1, dx+1) float64 of the IRLS Bernstein fit to the block-mean image, and
    the block-mean image itself (Hb, Wb) float32.

    The normal equations are accumulated and solved in float64; residuals and weights on the
    block grid are float32 (torch's float64 elementwise kernels, exp above all, are several
    times slower on CPU; the residual of counts ~1e3 keeps ~1e-4 counts, far below the noise).
    """
    h, w = x.shape
    hb, wb = h // downsample, w // downsample
    if hb < dy + 1 or wb < dx + 1:
        raise ValueError(
            f"frame {h}x{w} px binned by {downsample} gives {hb}x{wb} blocks, too few to fit a "
            f"degree ({dy}, {dx}) surface (needs at least {dy + 1}x{dx + 1})"
        )
    z = _block_mean(x, downsample)
    z64 = z.double()
    by = bernstein_basis(_block_coords(hb, downsample, h, x.device), dy)   # (Hb, p) float64
    bx = bernstein_basis(_block_coords(wb, downsample, w, x.device), dx)   # (Wb, q)
    by32, bx32 = by.float(), bx.float()
    p, q = dy + 1, dx + 1
    pyy = (by[:, :, None] * by[:, None, :]).reshape(hb, p * p)
    pxx = (bx[:, :, None] * bx[:, None, :]).reshape(wb, q * q)
    wts: torch.Tensor | None = None  # None: all ones
    coef = torch.zeros(p, q, dtype=torch.float64, device=x.device)
    for it in range(iterations + 1):
        # normal equations of sum_ij w_ij (z_ij - sum_kl By_ik C_kl Bx_jl)^2, separable form
        if wts is None:
            g = torch.outer(pyy.sum(0), pxx.sum(0))
            rhs = by.T @ z64 @ bx
        else:
            g = pyy.T @ wts @ pxx
            rhs = by.T @ (wts * z64) @ bx
        g = g.reshape(p, p, q, q).permute(0, 2, 1, 3).reshape(p * q, p * q)
        try:
            coef = torch.linalg.solve(g, rhs.reshape(p * q)).reshape(p, q)
        except RuntimeError:  # torch.linalg.LinAlgError
            raise ValueError(
                f"flat-field fit is singular (degree ({dy}, {dx}) on {hb}x{wb} blocks); "
                "the image has too little usable area"
            ) from None
        if it == iterations:
            break
        e = (by32 @ coef.float() @ bx32.T).sub_(z).square_()   # squared residual (Hb, Wb)
        e_mean = float(e.mean().item())
        if not e_mean > 0:  # exact fit: reweighting changes nothing
            break
        wts = torch.exp_(e.mul_(-weight_scale / e_mean)).double()
    return coef, z


def fit_flatfield_coefficients(img: np.ndarray | torch.Tensor, degree: tuple[int, int] = (2, 2),
                               downsample: int = 4, iterations: int = 2,
                               weight_scale: float = 1.5) -> torch.Tensor:
    """Control points (dy+1, dx+1) float64 of the flat-field surface of an (H, W) image
    (iteratively reweighted least squares on the ``downsample``× block-mean image, px)."""
    dy, dx = _check_flatfield_args(degree, downsample, iterations, weight_scale)
    x = as_float32_frame(img)
    return _fit_coefficients(x, dy, dx, downsample, iterations, float(weight_scale))[0]


def evaluate_flatfield(coefficients: torch.Tensor, shape: tuple[int, int],
                       device: str | torch.device | None = None) -> torch.Tensor:
    """The surface ``B(u) C B(v)ᵀ`` of control points ``coefficients`` (p, q) at the pixel centres
    of an (H, W) frame: (H, W) float32 on ``device`` (default: the coefficients' device)."""
    c = torch.as_tensor(coefficients)
    if c.ndim != 2:
        raise ValueError(f"coefficients must be 2-D (dy+1, dx+1), got shape {tuple(c.shape)}")
    _check_shape(tuple(shape))
    dev = _resolve_device(device, c.device)
    h, w = int(shape[0]), int(shape[1])
    by = bernstein_basis(_pixel_coords(h, dev, torch.float64), c.shape[0] - 1)
    bx = bernstein_basis(_pixel_coords(w, dev, torch.float64), c.shape[1] - 1)
    return (by.float() @ (c.to(dev) @ bx.T).float())


def _surface_floor(coef: torch.Tensor, z: torch.Tensor) -> float:
    mean = float(z.mean().item())
    if not mean > 0:
        raise ValueError(
            f"flat-field needs positive intensities (counts), but the mean block intensity is {mean:.6g}"
        )
    return SURFACE_FLOOR_REL * mean


def _surface_error(smin: float, floor: float) -> ValueError:
    return ValueError(
        f"flat-field surface falls to {smin:.6g}, below {SURFACE_FLOOR_REL:g} x the mean intensity "
        f"({floor:.6g}); the frame is too dark or not in counts to be flat-field corrected"
    )


def _flatfield_divide(x: torch.Tensor, coef: torch.Tensor, floor: float, inplace: bool) -> torch.Tensor:
    """``x / surface`` evaluated chunk by chunk of rows (no full-frame surface temporary)."""
    h, w = x.shape
    by = bernstein_basis(_pixel_coords(h, x.device, torch.float64), coef.shape[0] - 1).float()
    cbx = (coef @ bernstein_basis(_pixel_coords(w, x.device, torch.float64), coef.shape[1] - 1).T).float()
    # Bernstein convex hull: the surface lies within [min C, max C] on [0, 1]^2
    check_pixels = float(coef.min().item()) <= floor
    out = x if inplace else torch.empty_like(x)
    rows = max(1, _CHUNK_PIXELS // w)
    for r0 in range(0, h, rows):
        b = by[r0:r0 + rows]
        s = torch.outer(b[:, 0], cbx[0])  # sum of rank-1 terms: faster than a K=3 matmul
        for k in range(1, cbx.shape[0]):
            s.addr_(b[:, k], cbx[k])
        if check_pixels:
            smin = float(s.min().item())
            if not smin > floor:
                raise _surface_error(smin, floor)
        torch.div(x[r0:r0 + rows], s, out=out[r0:r0 + rows])
    return out


def fit_flatfield(img: np.ndarray | torch.Tensor, degree: tuple[int, int] = (2, 2), downsample: int = 4,
                  iterations: int = 2, weight_scale: float = 1.5) -> torch.Tensor:
    """The fitted illumination surface of an (H, W) image of counts: (H, W) float32 on the
    image's device (see the module docstring for the fit)."""
    dy, dx = _check_flatfield_args(degree, downsample, iterations, weight_scale)
    x = as_float32_frame(img)
    coef, z = _fit_coefficients(x, dy, dx, downsample, iterations, float(weight_scale))
    surface = evaluate_flatfield(coef, tuple(x.shape), x.device)
    floor = _surface_floor(coef, z)
    smin = float(surface.min().item())
    if not smin > floor:
        raise _surface_error(smin, floor)
    return surface


def flatfield_correct(img: np.ndarray | torch.Tensor, degree: tuple[int, int] = (2, 2), downsample: int = 4,
                      iterations: int = 2, weight_scale: float = 1.5) -> torch.Tensor:
    """An (H, W) image divided by its fitted flat-field surface: new (H, W) float32 tensor
    (≈ 1 where the illumination is as fitted). Raises ValueError if the surface is not
    positive (see :data:`SURFACE_FLOOR_REL`)."""
    dy, dx = _check_flatfield_args(degree, downsample, iterations, weight_scale)
    x, owned = _to_float32(img, None)
    return _flatfield(x, dy, dx, downsample, iterations, float(weight_scale), inplace=owned)[0]


def _flatfield(x: torch.Tensor, dy: int, dx: int, downsample: int, iterations: int, weight_scale: float,
               inplace: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    coef, z = _fit_coefficients(x, dy, dx, downsample, iterations, weight_scale)
    floor = _surface_floor(coef, z)
    return _flatfield_divide(x, coef, floor, inplace), coef, z


# --- rescale -------------------------------------------------------------------------------

def _mean_std(x: torch.Tensor) -> tuple[float, float]:
    """Mean and population std of all values: per chunk float32 mean and centred sum of squares,
    merged in float64 (Chan et al.): one read of ``x``, one sync, no full-size temporaries."""
    chunks = x.reshape(-1).split(_CHUNK_PIXELS)
    stats = []
    for ch in chunks:
        m = ch.mean()
        stats.append(torch.stack([m, (ch - m).square_().sum()]))  # cascade sum: ~1e-7 relative
    st = torch.stack(stats).double()
    counts = torch.tensor([ch.numel() for ch in chunks], dtype=torch.float64, device=st.device)
    mean = (st[:, 0] * counts).sum() / counts.sum()
    m2 = st[:, 1].sum() + (counts * (st[:, 0] - mean).square()).sum()
    mean_f, m2_f = (float(v) for v in torch.stack([mean, m2]).tolist())
    return mean_f, math.sqrt(max(m2_f, 0.0) / x.numel())


def _affine(x: torch.Tensor, shift: float, divisor: float, inplace: bool,
            clip: tuple[float, float] | None = None) -> torch.Tensor:
    """``(clip(x) - shift) / divisor`` chunk by chunk, into ``x`` or one new tensor."""
    out = x if inplace else torch.empty_like(x)
    for src, dst in zip(x.view(-1).split(_CHUNK_PIXELS), out.view(-1).split(_CHUNK_PIXELS)):
        if clip is not None:
            torch.clamp(src, clip[0], clip[1], out=dst)
            dst.sub_(shift)
        else:
            torch.sub(src, shift, out=dst)
        dst.div_(divisor)
    return out


def _zeros(x: torch.Tensor, inplace: bool) -> torch.Tensor:
    return x.zero_() if inplace else torch.zeros_like(x)


def _rescale(x: torch.Tensor, mode: str, pct: tuple[float, float], inplace: bool) -> torch.Tensor:
    lo, hi = (float(v) for v in torch.aminmax(x))
    if hi == lo:  # constant image: nothing to scale
        return _zeros(x, inplace)
    if mode == "standardize":
        mean, std = _mean_std(x)
        return _affine(x, mean, std, inplace) if std > 0 else _zeros(x, inplace)
    clip = None
    if mode == "histogram":
        # bounds as the float32 values the clip produces, so that the ends map to exactly 0 and 1
        lo, hi = (float(np.float32(v)) for v in percentiles(x, pct))
        if not hi > lo:
            return _zeros(x, inplace)
        clip = (lo, hi)
    return _affine(x, lo, hi - lo, inplace, clip)


def _check_rescale_args(mode: Any, pct: Any) -> tuple[float, float]:
    if mode not in RESCALE_MODES:
        raise ValueError(f"mode must be one of {RESCALE_MODES}, got {mode!r}")
    if not isinstance(pct, (tuple, list)) or len(pct) != 2:
        raise ValueError(f"percentiles must be two numbers (low, high) in percent, got {pct!r}")
    lo, hi = float(pct[0]), float(pct[1])
    if not 0.0 <= lo < hi <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100 (percent), got {pct!r}")
    return lo, hi


def rescale(img: np.ndarray | torch.Tensor, mode: str = "standardize",
            percentiles: tuple[float, float] = (1.0, 99.0)) -> torch.Tensor:
    """An (H, W) image rescaled: ``standardize`` → zero mean, unit (population) std;
    ``normalize`` → min–max to [0, 1]; ``histogram`` → clipped to the ``percentiles`` (percent),
    then min–max to [0, 1]. Constant input (zero spread) → zeros. New float32 tensor."""
    pct = _check_rescale_args(mode, percentiles)
    x, owned = _to_float32(img, None)
    return _rescale(x, mode, pct, inplace=owned)


# --- the pipeline --------------------------------------------------------------------------

def preprocess(frame: np.ndarray | torch.Tensor, params: Preprocessing, device: str | torch.device | None = None,
               *, stats: dict[str, Any] | None = None, timings: dict[str, float] | None = None) -> torch.Tensor:
    """Raw camera frame → network input, as the bundle card ``params`` prescribes.

    frame: (H, W) counts; numpy (any integer/float dtype, either byte order) or torch tensor.
    device: where to compute; default the tensor's device, CPU for numpy input.
    stats: if given, filled with ``xray_pixels`` (pixels replaced, all passes) and, with the
    flat-field on, ``flatfield_min``/``flatfield_max`` (fitted surface at the block centres
    relative to its mean: the illumination non-uniformity).
    timings: if given, filled with the wall time in ms of each stage as run here
    (``to_float32``, ``remove_xrays``, ``flatfield``, ``rescale``; 0.0 for a stage the card
    switches off), synchronising CUDA after each stage.
    Returns an (H, W) float32 tensor on ``device``; ``frame`` is never modified.
    """
    if not isinstance(params, Preprocessing):
        raise TypeError(f"params must be a fringelive.bundle.card.Preprocessing, got {type(params).__name__}")
    clock = _StageClock(timings)
    with torch.no_grad():
        x, owned = _to_float32(frame, device)
        clock.lap("to_float32", x.device)
        n = 0
        if params.xray_removal:
            x, n = _remove_xrays(x, params.xray_threshold_counts, params.xray_passes, MAX_FILL_SWEEPS, inplace=owned)
            owned = True
        clock.lap("remove_xrays", x.device, params.xray_removal)
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
                fit = (bernstein_basis(_block_coords(hb, f, x.shape[0], x.device), dy) @ coef
                       @ bernstein_basis(_block_coords(wb, f, x.shape[1], x.device), dx).T)
                m = fit.mean()
                stats["flatfield_min"] = float((fit.min() / m).item())
                stats["flatfield_max"] = float((fit.max() / m).item())
        clock.lap("flatfield", x.device, params.flatfield)
        x = _rescale(x, params.rescale, tuple(params.histogram_percentiles), inplace=owned)
        clock.lap("rescale", x.device)
        return x


class _StageClock:
    """Wall time per stage into ``timings`` (ms), if given; CUDA is synchronised at each lap."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.t0 = time.perf_counter()

    def lap(self, name: str, device: torch.device, ran: bool = True) -> None:
        if self.timings is None:
            return
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        self.timings[name] = (t1 - self.t0) * 1e3 if ran else 0.0
        self.t0 = t1
