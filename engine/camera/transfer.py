"""Streaming photon-transfer fit (EMVA 1288 style): :class:`PhotonTransferFit`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .blocks import BACKGROUND_BLOCKS, BlockStats, FrameBlocks, flat_blocks
from .settings import CameraSettings

__all__ = ["PhotonTransferResult", "PhotonTransferFit"]

def _robust_line(x: np.ndarray, y: np.ndarray, *, huber_k: float = 2.0, iters: int = 25,
                 mult: np.ndarray | None = None) -> tuple[float, float, float]:
    """``y = a·x + b`` by Huber IRLS with sd_i ∝ prediction_i (the scatter of a variance
    estimate is proportional to the variance). ``mult``: multiplicity of each point (a
    bootstrap resample). Returns ``(a, b, relative scatter)``."""
    if mult is not None:
        keep = mult > 0
        x, y, mult = x[keep], y[keep], mult[keep].astype(np.float64)
    else:
        mult = np.ones_like(x)
    w = mult / np.maximum(y, 1e-12) ** 2
    a = b = 0.0
    rel = 0.0
    for _ in range(iters):
        sw, swx, swy = w.sum(), (w * x).sum(), (w * y).sum()
        swxx, swxy = (w * x * x).sum(), (w * x * y).sum()
        det = sw * swxx - swx * swx
        if not det > 0:
            raise np.linalg.LinAlgError("degenerate photon-transfer data (one mean value)")
        a_new = float((sw * swxy - swx * swy) / det)
        b_new = float((swy - a_new * swx) / sw)
        pred = np.maximum(a_new * x + b_new, 1e-9 * max(float(np.max(np.abs(y))), 1e-12))
        u = (y - pred) / pred
        rel = 1.4826 * float(np.median(np.abs(u - np.median(u))))
        rel = max(rel, 1e-9)
        t = np.abs(u) / rel
        hub = np.where(t <= huber_k, 1.0, huber_k / np.maximum(t, 1e-12))
        w = mult * hub / pred ** 2
        done = abs(a_new - a) <= 1e-7 * max(abs(a_new), 1e-12) and abs(b_new - b) <= 1e-7 * max(abs(b_new), 1.0)
        a, b = a_new, b_new
        if done:
            break
    return a, b, rel


# --- photon transfer ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PhotonTransferResult:
    """A photon-transfer fit (module docstring for the equations).

    gain_counts_per_e ± gain_se; offset_counts ± offset_se (how: ``offset_method`` ``dark`` |
    ``given`` | ``mtf`` | ``zero_read_noise``; ``offset_bounds`` (lo, hi): r = 0 and the darkest
    blocks); read_noise_counts ± read_noise_se (None where not determined); noise_factor ±
    noise_factor_se (``noise_factor_source`` ``learned`` or ``given``); slope/intercept of both
    lines; levels: distinct illumination levels (frame medians ≥ 10 % apart in signal); span:
    (max − min)/max of the frames' signal; frames, pairs: data used; textured_fraction: blocks
    rejected for structure wider than the point spread; confident and, when not,
    ``reasons``; assumptions: what the numbers rest on (e.g. ``read noise taken as 0``); method:
    ``spatial`` (blocks of single frames) or ``temporal`` (differences of frame pairs of one
    scene and dose, :mod:`.pairs`; then ``frames`` counts pairs)."""

    gain_counts_per_e: float
    gain_se: float
    offset_counts: float
    offset_se: float
    offset_method: str
    offset_bounds: tuple[float, float]
    read_noise_counts: float | None
    read_noise_se: float | None
    noise_factor: float
    noise_factor_se: float
    noise_factor_source: str
    slope_lf: float
    intercept_lf: float
    slope_hp: float
    intercept_hp: float
    scatter_lf: float
    scatter_hp: float
    levels: int
    span: float
    frames: int
    pairs: int
    textured_fraction: float
    confident: bool
    reasons: tuple[str, ...] = ()
    assumptions: tuple[str, ...] = ()
    method: str = "spatial"

    def camera(self, name: str = "") -> CameraSettings:
        return CameraSettings(name=name, gain_counts_per_e=self.gain_counts_per_e, offset_counts=self.offset_counts,
                              read_noise_counts=max(self.read_noise_counts or 0.0, 0.0),
                              noise_factor=min(max(self.noise_factor, 1e-3), 1.5))

    def to_dict(self) -> dict[str, Any]:
        """For the result header / status / metrics (floats rounded)."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = float(f"{v:.6g}")
        d["offset_bounds"] = [float(f"{v:.6g}") for v in self.offset_bounds]
        d["reasons"], d["assumptions"] = list(self.reasons), list(self.assumptions)
        return d


def _count_levels(signal: np.ndarray, rel_gap: float = 0.1, min_members: int = 2) -> int:
    """Clusters of the sorted frame signals separated by gaps > ``rel_gap`` of the signal;
    clusters of fewer than ``min_members`` frames (a stray frame) do not count."""
    s = np.sort(signal[np.isfinite(signal)])
    if s.size == 0:
        return 0
    sizes = [1]
    for prev, v in zip(s[:-1], s[1:]):
        if v - prev > rel_gap * max(abs(v), 1e-9):
            sizes.append(1)
        else:
            sizes[-1] += 1
    return max(1, sum(1 for n in sizes if n >= min_members)) if s.size >= min_members else 1


class PhotonTransferFit:
    """Streaming photon-transfer fit: :meth:`add_frame` any number of frames (raw counts,
    ≥ 64² px, different doses/illuminations), optionally :meth:`add_dark`; :meth:`result`.

    Known constants narrow the fit: ``offset_counts`` (then only the gain is fitted),
    ``read_noise_counts`` (fixes the offset from the intercept), ``noise_factor`` (then the
    gain comes from the more precise high-pass line, ``g = a_hp / f``). Memory is bounded: a
    reservoir of at most ``max_pairs`` block points (uniform over the stream, Algorithm R) and
    per-frame medians of at most ``max_frames_tracked`` recent frames.

    Confident when: ≥ ``min_levels`` levels spanning ≥ ``min_span``, relative SE of the gain <
    ``max_gain_rse``, SE of the offset < ``max_offset_rse`` × the median signal, ≥ ``min_frames``,
    and (noise factor learned) the noise factor of the dimmer and the brighter half of the points
    (split half-way between the dimmest and brightest points) agree within ``max_linearity``
    (log ratio): specimen texture has variance ∝ mean², shot noise ∝ mean, so texture that
    survived the block rejection shows up here instead of as a wrong gain;
    and at most ``max_textured`` of the blocks were rejected as textured (where many are, the
    ones that pass sit just under the threshold and bias the learned noise factor).
    """

    def __init__(self, *, block: int = 32, max_blocks_per_frame: int = BACKGROUND_BLOCKS, max_pairs: int = 20_000,
                 max_frames_tracked: int = 4096, offset_counts: float | None = None,
                 read_noise_counts: float | None = None, noise_factor: float | None = None, nps_lags: int = 3,
                 min_levels: int = 2, min_span: float = 0.3, max_gain_rse: float = 0.05,
                 max_offset_rse: float = 0.05, min_frames: int = 10, bootstrap: int = 40, seed: int = 0,
                 max_linearity: float = 0.1, max_textured: float = 0.15) -> None:
        if max_pairs < 100:
            raise ValueError(f"max_pairs must be >= 100, got {max_pairs!r}")
        if read_noise_counts is not None and not read_noise_counts >= 0:
            raise ValueError(f"read_noise_counts must be >= 0, got {read_noise_counts!r}")
        if noise_factor is not None and not 0 < noise_factor <= 1.5:
            raise ValueError(f"noise_factor must be in (0, 1.5], got {noise_factor!r}")
        self.block, self.max_blocks_per_frame, self.max_pairs = block, max_blocks_per_frame, max_pairs
        self.known_offset, self.known_read_noise = offset_counts, read_noise_counts
        self.known_noise_factor = noise_factor
        self.nps_lags = nps_lags
        self.min_levels, self.min_span, self.max_gain_rse = min_levels, min_span, max_gain_rse
        self.max_offset_rse, self.min_frames, self.bootstrap = max_offset_rse, min_frames, bootstrap
        self.max_linearity, self.max_textured = max_linearity, max_textured
        self.min_level_frames = 2  # frames a level needs to count (a stray frame is no level)
        self._rng = np.random.default_rng(seed)
        self._seed = seed
        self._m = np.empty(max_pairs)
        self._hp = np.empty(max_pairs)
        self._lf = np.empty(max_pairs)
        self._fid = np.empty(max_pairs, dtype=np.int64)
        self._n = 0           # pairs held
        self._seen = 0        # pairs ever offered
        self._frames = 0
        self._frame_medians: list[float] = []
        self.max_frames_tracked = max_frames_tracked
        self._min_block_mean = math.inf
        self._dark_frames = 0
        self._dark_sum_m = 0.0
        self._dark_sum_lf = 0.0
        self._dark_blocks = 0
        self._blocks_seen = 0
        self._blocks_textured = 0
        self._cache: PhotonTransferResult | None = None
        self._dirty = True

    # -- input ------------------------------------------------------------------------------
    def _stats(self, frame: np.ndarray, mask: np.ndarray | None, blocks: FrameBlocks | None) -> BlockStats:
        frame = np.asarray(frame)
        if frame.ndim != 2 or min(frame.shape) < 64:
            raise ValueError(f"frames must be 2-D and at least 64² px, got shape {frame.shape}")
        if blocks is None or blocks.mask is not mask:
            blocks = FrameBlocks(frame, mask)
        return blocks.stats(block=self.block, max_blocks=self.max_blocks_per_frame, nps_lags=self.nps_lags)

    def add_frame(self, frame: np.ndarray, mask: np.ndarray | None = None, *, blocks: FrameBlocks | None = None) -> int:
        """Add one frame's flat background blocks (``mask``: predicted particles, optional;
        ``blocks``: the frame's block statistics shared with the drift check, for this mask).
        Returns the number of blocks accepted."""
        stats = self._stats(frame, mask, blocks)
        expected = None
        if self._cache is not None and self._cache.confident:
            c = self._cache
            expected = np.maximum(c.slope_hp * stats.mean + c.intercept_hp, 1e-9)
        keep = flat_blocks(stats, expected_hp=expected)
        if stats.ring_z is not None and len(stats):
            self._blocks_seen += len(stats)
            self._blocks_textured += int((stats.ring_z > 4.0).sum())
        if keep.sum() < 3:
            return 0
        return self.add_block_stats(stats.take(keep))

    def add_block_stats(self, s: BlockStats, *, independent_blocks: bool = False) -> int:
        """Add already selected flat blocks as one frame. ``independent_blocks``: each block is
        its own bootstrap unit (temporal pair differences, which share no illumination error)."""
        if len(s) < 3:
            return 0
        fid = self._frames
        self._frames += 1
        self._frame_medians.append(float(np.median(s.mean)))
        if len(self._frame_medians) > self.max_frames_tracked:
            del self._frame_medians[: len(self._frame_medians) - self.max_frames_tracked]
        self._min_block_mean = min(self._min_block_mean, float(np.percentile(s.mean, 5)))
        for j, (m, hp, lf) in enumerate(zip(s.mean, s.v_hp, s.v_lf)):
            self._seen += 1
            if self._n < self.max_pairs:
                i = self._n
                self._n += 1
            else:
                i = int(self._rng.integers(0, self._seen))
                if i >= self.max_pairs:
                    continue
            self._m[i], self._hp[i], self._lf[i] = m, hp, lf
            self._fid[i] = fid * 1_000_000 + j if independent_blocks else fid
        self._dirty = True
        return len(s)

    def set_dark(self, offset_counts: float, noise_power_counts2: float, frames: int = 1) -> None:
        """Dark level and dark noise power measured elsewhere (e.g. from pairs of dark frames)."""
        self._dark_frames, self._dark_blocks = frames, 1
        self._dark_sum_m, self._dark_sum_lf = float(offset_counts), float(noise_power_counts2)
        self._dirty = True

    def add_dark(self, frame: np.ndarray) -> None:
        """A dark frame (beam blanked, same exposure and readout): offset and read noise."""
        stats = self._stats(frame, None)
        keep = flat_blocks(stats)
        if keep.sum() < 3:
            raise ValueError("dark frame: fewer than 3 usable blocks")
        self._dark_frames += 1
        self._dark_sum_m += float(stats.mean[keep].sum())
        self._dark_sum_lf += float(stats.v_lf[keep].sum())
        self._dark_blocks += int(keep.sum())
        self._dirty = True

    def reset(self) -> None:
        """Forget every point, frame and dark (keeps the settings)."""
        self.__init__(  # type: ignore[misc]
                      block=self.block, max_blocks_per_frame=self.max_blocks_per_frame, max_pairs=self.max_pairs,
                      max_frames_tracked=self.max_frames_tracked, offset_counts=self.known_offset,
                      read_noise_counts=self.known_read_noise, noise_factor=self.known_noise_factor,
                      nps_lags=self.nps_lags, min_levels=self.min_levels, min_span=self.min_span,
                      max_gain_rse=self.max_gain_rse, max_offset_rse=self.max_offset_rse, min_frames=self.min_frames,
                      bootstrap=self.bootstrap, seed=self._seed, max_linearity=self.max_linearity,
                      max_textured=self.max_textured)

    @property
    def frames(self) -> int:
        return self._frames

    # -- fit --------------------------------------------------------------------------------
    def _dark(self) -> tuple[float, float] | None:
        if not self._dark_blocks:
            return None
        return self._dark_sum_m / self._dark_blocks, self._dark_sum_lf / self._dark_blocks

    def _solve(self, m: np.ndarray, hp: np.ndarray, lf: np.ndarray, mult: np.ndarray | None = None) -> dict[str, Any]:
        """Every derived constant from one set of points (also used on bootstrap resamples,
        ``mult`` giving each point's multiplicity)."""
        dark = self._dark()
        a_lf, b_lf, s_lf = _robust_line(m, lf, mult=mult)
        a_hp, b_hp, s_hp = _robust_line(m, hp, mult=mult)
        out: dict[str, Any] = {"a_lf": a_lf, "b_lf": b_lf, "a_hp": a_hp, "b_hp": b_hp, "s_lf": s_lf, "s_hp": s_hp}
        f_known = self.known_noise_factor
        g = a_hp / f_known if f_known is not None else a_lf
        out["g"] = g
        out["f"] = f_known if f_known is not None else (a_hp / a_lf if a_lf > 0 else math.nan)
        o_mtf = (b_hp - b_lf) / (a_lf - a_hp) if a_lf - a_hp > 0 else math.nan
        out["o_mtf"] = o_mtf
        out["r2_mtf"] = b_lf + a_lf * o_mtf if math.isfinite(o_mtf) else math.nan
        if self.known_offset is not None:
            o, method = self.known_offset, "given"
            r2 = b_lf + a_lf * o
        elif dark is not None:
            o, method = dark[0], "dark"
            r2 = dark[1]
        elif self.known_read_noise is not None:
            r2 = self.known_read_noise ** 2
            o, method = (r2 - b_lf) / a_lf, "given"
        else:
            o, method, r2 = -b_lf / a_lf, "zero_read_noise", 0.0
        out.update(o=o, method=method, r2=r2, o_zero=-b_lf / a_lf if a_lf > 0 else math.nan)
        return out

    def result(self) -> PhotonTransferResult | None:
        """The current fit, or None while there is nothing to fit (fewer than 2 frames or 20
        points, or a non-positive slope)."""
        if not self._dirty:
            return self._cache
        n = self._n
        if self._frames < 2 or n < 20:
            return None
        m, hp, lf, fid = self._m[:n], self._hp[:n], self._lf[:n], self._fid[:n]
        base = self._solve(m, hp, lf)
        if not (base["a_lf"] > 0 and base["a_hp"] > 0 and base["g"] > 0):
            return None
        # bootstrap over frames
        groups, group_of = np.unique(fid, return_inverse=True)
        rng = np.random.default_rng(self._seed + self._frames)
        reps: list[dict[str, Any]] = []
        if groups.size >= 2:
            for _ in range(self.bootstrap):
                counts = rng.multinomial(groups.size, np.full(groups.size, 1.0 / groups.size))
                try:
                    reps.append(self._solve(m, hp, lf, mult=counts[group_of]))
                except np.linalg.LinAlgError:
                    continue

        def se(key: str) -> float:
            vals = np.array([r[key] for r in reps if math.isfinite(r[key])])
            if vals.size < 5:
                return math.inf
            return float(1.4826 * np.median(np.abs(vals - np.median(vals))))

        g, f, o, method, r2 = base["g"], base["f"], base["o"], base["method"], base["r2"]
        g_se, f_se, o_se = se("g"), se("f"), se("o")
        assumptions: list[str] = []
        signal_med = float(np.median(m)) - o
        # MTF separation when neither darks nor a given offset/read noise decide it
        if method == "zero_read_noise":
            o_m, o_m_se, r2_m = base["o_mtf"], se("o_mtf"), base["r2_mtf"]
            r2_m_se = se("r2_mtf")
            usable = (math.isfinite(o_m) and o_m_se < self.max_offset_rse * max(float(np.median(m)) - o_m, 1e-9)
                      and r2_m > -3.0 * r2_m_se and o_m >= base["o_zero"] - 3.0 * o_m_se)
            if usable:
                o, o_se, method, r2 = o_m, o_m_se, "mtf", max(r2_m, 0.0)
                assumptions.append("offset from the two noise-power lines (read noise white, shot noise MTF-filtered)")
            else:
                assumptions.append(f"read noise taken as 0: the offset is a lower bound (true offset higher by "
                                   f"r²/g counts, {1.0 / g:.3g} counts per counts² of read noise variance)")
        elif method == "given" and self.known_offset is None:
            assumptions.append(f"read noise {self.known_read_noise:g} counts rms as configured")
        elif method == "given":
            assumptions.append(f"offset {self.known_offset:g} counts as configured")
        if self.known_noise_factor is not None:
            assumptions.append(f"noise factor {self.known_noise_factor:g} as configured")
        signal_med = float(np.median(m)) - o
        medians = np.asarray(self._frame_medians) - o
        levels = _count_levels(medians, min_members=self.min_level_frames)
        hi, lo = (float(np.max(medians)), float(np.min(medians))) if medians.size else (0.0, 0.0)
        span = (hi - lo) / hi if hi > 0 else 0.0
        if method == "dark":
            r_counts, r_se = math.sqrt(max(r2, 0.0)), 0.0
        elif method == "zero_read_noise":
            r_counts, r_se = None, None
        else:
            r_counts = math.sqrt(max(r2, 0.0))
            r_se = None if self.known_read_noise is not None else (
                se("r2_mtf") / (2 * r_counts) if method == "mtf" and r_counts > 0 else None)
        reasons = []
        if self._frames < self.min_frames:
            reasons.append(f"{self._frames} frames < {self.min_frames}")
        if levels < self.min_levels:
            reasons.append(f"{levels} illumination level(s) < {self.min_levels}: vary the dose or the beam spread")
        if span < self.min_span:
            reasons.append(f"signal span {span:.0%} < {self.min_span:.0%}")
        if not g_se < self.max_gain_rse * g:
            reasons.append(f"gain relative SE {g_se / g:.1%} >= {self.max_gain_rse:.0%}")
        if self.known_offset is None and not o_se < self.max_offset_rse * max(signal_med, 1e-9):
            reasons.append(f"offset SE {o_se:.3g} counts >= {self.max_offset_rse:.0%} of the signal {signal_med:.3g}")
        if not (0 < f <= 1.5):
            reasons.append(f"noise factor {f:.3g} outside (0, 1.5]")
        textured = self._blocks_textured / self._blocks_seen if self._blocks_seen else 0.0
        if self.known_noise_factor is None and textured > self.max_textured:
            reasons.append(f"{textured:.0%} of the background blocks show texture wider than the point spread: the "
                           "blocks that pass may carry some too, so the learned noise factor (and gain) is not "
                           "trusted; give noise_factor or calibrate on flat frames")
        # Shot noise keeps v_lf / v_hp the same at every level; specimen texture (variance ∝ mean²)
        # raises it with the signal. Compare the noise factor of the dimmer and brighter halves.
        r2_used = 0.0 if r_counts is None else r_counts ** 2
        cut = 0.5 * float(np.percentile(m, 2) + np.percentile(m, 98))  # between the dimmest and brightest levels
        lo_sel, hi_sel = m < cut, m >= cut
        if self.known_noise_factor is None and lo_sel.sum() >= 10 and hi_sel.sum() >= 10 and levels >= 2:
            def half_f(sel: np.ndarray) -> float:
                return float((np.median(hp[sel]) - r2_used) / max(np.median(lf[sel]) - r2_used, 1e-12))
            f_lo, f_hi = half_f(lo_sel), half_f(hi_sel)
            if not (f_lo > 0 and f_hi > 0) or abs(math.log(f_hi / f_lo)) > self.max_linearity:
                reasons.append(f"noise power not proportional to the signal (noise factor {f_lo:.3g} at low, "
                               f"{f_hi:.3g} at high signal): specimen texture in the background? give "
                               "noise_factor or calibrate on flat frames")
        res = PhotonTransferResult(
            gain_counts_per_e=g, gain_se=g_se, offset_counts=o,
            offset_se=0.0 if self.known_offset is not None else o_se,
            offset_method=method, offset_bounds=(base["o_zero"], self._min_block_mean), read_noise_counts=r_counts,
            read_noise_se=r_se, noise_factor=f, noise_factor_se=0.0 if self.known_noise_factor is not None else f_se,
            noise_factor_source="given" if self.known_noise_factor is not None else "learned",
            slope_lf=base["a_lf"], intercept_lf=base["b_lf"], slope_hp=base["a_hp"], intercept_hp=base["b_hp"],
            scatter_lf=base["s_lf"], scatter_hp=base["s_hp"], levels=levels, span=span, frames=self._frames, pairs=n,
            textured_fraction=textured, confident=not reasons, reasons=tuple(reasons), assumptions=tuple(assumptions))
        self._cache, self._dirty = res, False
        return res

    def frame_medians(self) -> list[float]:
        """Median block mean of each tracked frame (counts)."""
        return list(self._frame_medians)

    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The held (mean, v_hp, v_lf) points (copies), e.g. for a plot."""
        n = self._n
        return self._m[:n].copy(), self._hp[:n].copy(), self._lf[:n].copy()
