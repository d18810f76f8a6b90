"""Exact order statistics (median, percentiles) of large frames: a quasi-random sample brackets the
wanted ranks, one chunked scan collects the values inside the brackets, a partial selection
finishes. numpy arrays and torch tensors alike (:mod:`fringelive.engine.arrays`); the scans of CPU
tensors run through numpy views (:data:`settings.NUMPY_CPU_SCANS`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fringelive.engine.arrays import NUMPY, Array, NumpyNamespace, TorchNamespace, namespace_of
from fringelive.engine.preprocess import settings

__all__ = ["order_statistics", "median", "percentiles"]


Namespace = NumpyNamespace | TorchNamespace


def _weyl_sample(flat: Array, m: int) -> Array:
    """``m`` pixels spread quasi-randomly over ``flat`` (golden-ratio Weyl sequence of indices)."""
    xp = namespace_of(flat)
    n = xp.size(flat)
    step = int(n * 0.6180339887498949) | 1
    while math.gcd(step, n) != 1:
        step += 2
    idx = (xp.arange(m, xp.int64) * step) % n
    return flat[idx]


@dataclass
class _Bracket:
    """Values of a flat tensor within [lo, hi] (``sel``, unordered) and how many lie below lo:
    enough to read off any order statistic whose rank falls inside the bracket."""

    lo: float
    hi: float
    below: int
    sel: Array

    def covers(self, k: int) -> bool:
        return self.below <= k < self.below + namespace_of(self.sel).size(self.sel)

    def changed(self, removed: Array, added: Array) -> _Bracket | None:
        """The bracket after the values ``removed`` were replaced by ``added`` (same count);
        None if a removed value lay inside or below it (would need a rescan)."""
        xp = namespace_of(self.sel)
        if xp.size(removed) and float(removed.min().item()) <= self.hi:
            return None
        below = self.below + xp.count_nonzero(added < self.lo)
        inside = added[(added >= self.lo) & (added <= self.hi)]
        if isinstance(xp, TorchNamespace):
            inside = inside.to(xp.device)
        return _Bracket(self.lo, self.hi, below, xp.concat([self.sel, inside]))


def _bracketed_order_statistics(flat: Array, ks: list[int]) -> tuple[Array, list[_Bracket]]:
    """Exact order statistics of 1-D ``flat`` at ranks ``ks`` and the brackets that held."""
    xp = namespace_of(flat)
    n = xp.size(flat)
    for k in ks:
        if not 0 <= k < n:
            raise ValueError(f"rank {k} is outside [0, {n}) for a tensor of {n} values")
    out = xp.empty((len(ks),), flat.dtype)
    if not ks:
        return out, []
    if n <= settings._DIRECT_MAX:
        return xp.sort(flat)[xp.asarray(ks, xp.int64)], []
    m = settings._SAMPLE_SIZE
    bounds = xp.sort(_weyl_sample(flat, m)).tolist()
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


def order_statistics(x: Array, ranks: Sequence[int]) -> Array:
    """Exact k-th smallest values (0-based ``ranks``) of all values of ``x`` (any shape).

    Returns a (len(ranks),) array of ``x``'s kind and dtype (float64 for integers). For large inputs a
    quasi-random sample of :data:`settings._SAMPLE_SIZE` pixels brackets each group of nearby ranks and
    only the pixels inside the bracket are ranked; the bracket is verified by counting, and a
    miss falls back to ranking everything (same result, slower).
    """
    return _bracketed_order_statistics(_float_values(x), [int(k) for k in ranks])[0]


def _float_values(x: Array) -> Array:
    """All values of ``x`` as a 1-D floating array (integers → float64, exact below 2**53)."""
    xp = namespace_of(x)
    x = x.detach().reshape(-1) if isinstance(xp, TorchNamespace) else x.reshape(-1)
    return x if xp.is_floating(x) else xp.astype(x, xp.float64)


def _select(src: Array, ranks: list[int]) -> Array:
    """The values of 0-based ``ranks`` of 1-D ``src`` (partial selection, no full sort)."""
    xp = namespace_of(src)
    if _numpy_scans(xp):
        return xp.from_numpy(NUMPY.select(xp.to_numpy(src), ranks))
    return xp.select(src, ranks)


def _numpy_scans(xp: Namespace) -> bool:
    """Whether the scan kernels run on numpy (views) of ``xp``'s arrays: numpy arrays always,
    CPU tensors when :data:`settings.NUMPY_CPU_SCANS` (see the module docstring)."""
    return xp is NUMPY or (settings.NUMPY_CPU_SCANS and xp.device.type == "cpu")


def _bracket(flat: Array, ranges: list[tuple[float, float]]) -> list[tuple[int, Array]]:
    """For each (lo, hi): the count of values < lo and the values within [lo, hi]. One pass,
    chunk by chunk (each chunk is scanned for every range while in cache; no full-size
    temporaries)."""
    below = [0] * len(ranges)
    parts: list[list[Any]] = [[] for _ in ranges]
    xp = namespace_of(flat)
    if _numpy_scans(xp):
        a = xp.to_numpy(flat)
        typed = [(a.dtype.type(lo), a.dtype.type(hi)) for lo, hi in ranges]  # exact: sample values
        for i in range(0, a.size, settings._CHUNK_PIXELS):
            ch = a[i:i + settings._CHUNK_PIXELS]
            for j, (lo, hi) in enumerate(typed):
                below[j] += int(np.count_nonzero(ch < lo))
                inside = ch >= lo
                inside &= ch <= hi
                parts[j].append(ch[inside])
        return [(b, xp.from_numpy(np.concatenate(p))) for b, p in zip(below, parts)]
    assert isinstance(xp, TorchNamespace)
    torch = xp.torch
    counts: list[list[Any]] = [[] for _ in ranges]
    for ch in flat.split(settings._CHUNK_PIXELS):
        for j, (lo, hi) in enumerate(ranges):
            counts[j].append(torch.count_nonzero(ch < lo))
            inside = ch >= lo
            inside &= ch <= hi
            parts[j].append(ch.index_select(0, torch.nonzero(inside).squeeze(1)))
    totals = torch.stack([torch.stack(c).sum() for c in counts]).tolist()
    return [(int(b), torch.cat(p)) for b, p in zip(totals, parts)]


def _median_ranks(n: int) -> list[int]:
    return [(n - 1) // 2, n // 2]


def _bracketed_median(x: Array) -> tuple[Array, _Bracket | None]:
    flat = x.reshape(-1)
    v, brackets = _bracketed_order_statistics(flat, _median_ranks(namespace_of(flat).size(flat)))
    return (v[0] + v[1]) / 2, (brackets[0] if brackets else None)


def _median_from(br: _Bracket, n: int) -> Array | None:
    ks = _median_ranks(n)
    if not (br.covers(ks[0]) and br.covers(ks[1])):
        return None
    v = _select(br.sel, [k - br.below for k in ks])
    return (v[0] + v[1]) / 2


def median(x: Array) -> Array:
    """Exact median of all values of ``x`` (``np.median`` semantics: mean of the two middle
    values for an even count, in ``x.dtype``), as a 0-d tensor on ``x.device`` (numpy scalar
    for numpy input)."""
    if namespace_of(x).size(x) == 0:
        raise ValueError("median of an empty tensor")
    return _bracketed_median(_float_values(x))[0]


def percentiles(x: Array, q: Sequence[float]) -> list[float]:
    """Exact percentiles ``q`` (0–100) of all values of ``x``, numpy's default ``linear``
    definition: position ``q/100·(n−1)`` between the neighbouring order statistics."""
    xp = namespace_of(x)
    n = xp.size(x)
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
    v = xp.astype(order_statistics(_float_values(x), ranks), xp.float64).tolist()
    res = []
    for i, p in enumerate(pos):
        a, b = v[2 * i], v[2 * i + 1]
        t = p - math.floor(p)
        # numpy's lerp, for bit-identical results
        res.append(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)
    return res
