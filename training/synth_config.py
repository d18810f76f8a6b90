"""What ``fringelive synth`` simulates: :class:`SynthConfig` (fields, defaults and entry checks),
the named :data:`PRESETS`, and the configuration's JSON form as recorded in ``out/synth.json``.

Parameters given as ranges ``(lo, hi)`` are drawn uniformly per sample (``lo == hi`` fixes them;
:mod:`fringelive.training.synth_sample` draws them).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .fastsim import D_SPACINGS_NM, CameraModel

__all__ = [
    "ENGINES",
    "LOG_UNIFORM_OK",
    "MAX_SAMPLING_A",
    "PRESETS",
    "SynthConfig",
    "SynthError",
    "config_to_dict",
    "config_from_dict",
]

ENGINES = ("abtem", "fast")
MAX_SAMPLING_A = 0.25
LOG_UNIFORM_OK = ("pixel_size_nm", "dose_e_per_A2", "diameter_nm", "carbon_thickness_nm")

#: Named starting points for ``fringelive synth --preset``; explicit options override them.
#: ``curated``: the database the default bundle is trained on (Rangel DaCosta et al.: vary the
#: imaging conditions and structures that vary in practice), band-limited multislice at
#: ≤ 0.25 Å with the particle mask from the shared pass.
PRESETS: dict[str, dict[str, Any]] = {
    "curated": {
        "engine": "abtem", "size_px": 512,
        "pixel_size_nm": (0.012, 0.046), "dose_e_per_A2": (50.0, 3000.0),
        "materials": ("Au", "Ag", "Pt", "CdSe"), "diameter_nm": (1.5, 12.0), "particles": (0, 6),
        "empty_fraction": 0.15, "twin_probability": 0.3, "stacking_fault_probability": 0.25,
        "carbon_thickness_nm": (2.0, 12.0), "no_support_fraction": 0.05,
        "voltage_kv": (300.0, 300.0, 200.0), "defocus_nm": (-15.0, 15.0), "cs_um": (-30.0, 30.0),
        "uncorrected_fraction": 0.2, "cs_uncorrected_mm": (0.5, 1.2),
        "focal_spread_nm": (2.0, 6.0), "angular_spread_mrad": (0.05, 0.5),
        "sampling_A": 0.25, "slice_thickness_A": 2.0, "mask_pass": "shared", "edge_overlap": True,
        "log_uniform": ("pixel_size_nm", "dose_e_per_A2", "diameter_nm", "carbon_thickness_nm"),
        "support_reuse": True, "support_pool": 4, "pixel_size_levels": 40, "max_coverage": 0.5,
        "camera": {"gain": (0.5, 10.0), "offset": (0.0, 500.0), "illumination": (0.0, 0.3),
                   "read_noise": (0.0, 20.0), "mtf_sigma_px": (0.0, 0.8),
                   "xray_rate_per_mpx": 2.0, "xray_counts": 8000.0, "dtype": "uint16"},
    },
}


class SynthError(ValueError):
    """A synth run that cannot start or resume; the message names the problem."""


def _check_range(name: str, r: tuple[float, float], *, minimum: float | None = None, strict: bool = False) -> None:
    if len(r) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in r):
        raise ValueError(f"{name} must be a (min, max) pair of numbers, got {r!r}")
    if r[0] > r[1]:
        raise ValueError(f"{name} min {r[0]!r} is above max {r[1]!r}")
    if minimum is not None and (r[0] <= minimum if strict else r[0] < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {r!r}")


@dataclass(frozen=True)
class SynthConfig:
    """What to simulate. Units: px, nm, nm/pixel, e/Å², kV, µm (Cs), Å (sampling, slices),
    rad (mask threshold), Å (mask closing radius), nm² (smallest mask component). Ranges are (min, max), drawn
    uniformly per sample.

    particles: particles per sample, an integer range (abtem engine); the fast engine places a
    Poisson number at ``particles_per_100nm2``. twin_probability: chance that a particle
    (fcc only) gets a twin plane; stacking_fault_probability: chance of each of up to two
    intrinsic stacking faults. sampling_A: largest simulation sampling (≤ 0.25 Å; above 0.1 Å
    the multislice is band-limited, see docs/training.md for its measured error).
    voltage_kv: one voltage, or several drawn with equal chance. empty_fraction: share of frames
    with no particle (bare support) on top of those the ``particles`` range gives.
    no_support_fraction: share of frames without carbon. uncorrected_fraction: share of frames
    from an uncorrected microscope, Cs drawn from ``cs_uncorrected_mm`` (mm) and defocus drawn
    around Scherzer defocus; the others draw Cs from ``cs_um``. angular_spread_mrad: beam
    convergence. edge_overlap: particles may be cut by the frame edge. support_reuse: build the
    carbon from cached unit slabs (:func:`fringelive.training.multislice.support_slices`);
    support_pool: with support_reuse, how many distinct unit slabs per grid (seeded by ``seed``,
    so every database has its own carbon); 1 is the single slab per grid shared by all databases;
    pixel_size_levels: when > 0, the drawn pixel size is rounded to one of that many log-spaced
    levels across its range (so cached supports are reused); max_coverage: particles beyond this
    share of the field's area (by their discs) are not placed, and no particle is wider than 0.6
    of the field. log_uniform: names of
    ranges drawn log-uniformly (:data:`LOG_UNIFORM_OK`). mask_pass: see
    :data:`fringelive.training.multislice.MASK_PASSES`.
    """

    engine: str = "abtem"
    count: int = 100
    size_px: int = 512
    pixel_size_nm: tuple[float, float] = (0.02, 0.02)
    materials: tuple[str, ...] = ("Au",)
    diameter_nm: tuple[float, float] = (5.0, 5.0)
    particles: tuple[int, int] = (1, 1)
    particles_per_100nm2: float = 1.0
    twin_probability: float = 0.0
    carbon_thickness_nm: tuple[float, float] = (3.0, 3.0)
    voltage_kv: float | tuple[float, ...] = 300.0
    defocus_nm: tuple[float, float] = (-10.0, 10.0)
    cs_um: tuple[float, float] = (-20.0, 20.0)
    focal_spread_nm: tuple[float, float] = (2.0, 4.0)
    sampling_A: float = 0.1
    slice_thickness_A: float = 2.0
    dose_e_per_A2: tuple[float, float] = (423.0, 423.0)
    camera: CameraModel = field(default_factory=CameraModel)
    mask_threshold_rad: float = math.pi / 16
    mask_closing_A: float = 2.0
    mask_min_area_nm2: float = 0.2
    seed: int = 0
    empty_fraction: float = 0.0
    no_support_fraction: float = 0.0
    uncorrected_fraction: float = 0.0
    cs_uncorrected_mm: tuple[float, float] = (0.5, 1.2)
    angular_spread_mrad: tuple[float, float] = (0.0, 0.0)
    stacking_fault_probability: float = 0.0
    edge_overlap: bool = False
    log_uniform: tuple[str, ...] = ()
    mask_pass: str = "separate"
    support_reuse: bool = False
    support_pool: int = 1
    pixel_size_levels: int = 0
    max_coverage: float = 1.0

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"count must be a positive integer, got {self.count!r}")
        if isinstance(self.size_px, bool) or not isinstance(self.size_px, int) or self.size_px < 16:
            raise ValueError(f"size_px must be an integer >= 16, got {self.size_px!r}")
        if not self.materials:
            raise ValueError("materials must name at least one material")
        for m in self.materials:
            if m not in D_SPACINGS_NM:
                raise ValueError(f"material must be one of {sorted(D_SPACINGS_NM)}, got {m!r}")
        _check_range("pixel_size_nm", self.pixel_size_nm, minimum=0.0, strict=True)
        _check_range("diameter_nm", self.diameter_nm, minimum=0.0, strict=True)
        _check_range("particles", self.particles, minimum=0)
        if any(int(v) != v for v in self.particles):
            raise ValueError(f"particles must be integers, got {self.particles!r}")
        _check_range("carbon_thickness_nm", self.carbon_thickness_nm, minimum=0.0)
        _check_range("defocus_nm", self.defocus_nm)
        _check_range("cs_um", self.cs_um)
        _check_range("focal_spread_nm", self.focal_spread_nm, minimum=0.0)
        _check_range("dose_e_per_A2", self.dose_e_per_A2, minimum=0.0, strict=True)
        if isinstance(self.voltage_kv, list):
            object.__setattr__(self, "voltage_kv", tuple(self.voltage_kv))
        volts = self.voltage_kv if isinstance(self.voltage_kv, tuple) else (self.voltage_kv,)
        if not volts or not all(isinstance(v, (int, float)) and v > 0 for v in volts):
            raise ValueError(f"voltage_kv must be > 0 kV (one value or several), got {self.voltage_kv!r}")
        for name in ("empty_fraction", "no_support_fraction", "uncorrected_fraction", "stacking_fault_probability"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        _check_range("cs_uncorrected_mm", self.cs_uncorrected_mm, minimum=0.0)
        _check_range("angular_spread_mrad", self.angular_spread_mrad, minimum=0.0)
        bad = sorted(set(self.log_uniform) - set(LOG_UNIFORM_OK))
        if bad:
            raise ValueError(f"log_uniform names {bad}; choose from {list(LOG_UNIFORM_OK)}")
        for name in self.log_uniform:
            if getattr(self, name)[0] <= 0:
                raise ValueError(f"{name} drawn log-uniformly needs a range above 0, got {getattr(self, name)!r}")
        from .multislice import MASK_PASSES

        if self.mask_pass not in MASK_PASSES:
            raise ValueError(f"mask_pass must be one of {MASK_PASSES}, got {self.mask_pass!r}")
        if isinstance(self.support_pool, bool) or not isinstance(self.support_pool, int) or self.support_pool < 1:
            raise ValueError(f"support_pool must be an integer >= 1, got {self.support_pool!r}")
        if isinstance(self.pixel_size_levels, bool) or not isinstance(self.pixel_size_levels, int) \
                or self.pixel_size_levels < 0:
            raise ValueError(f"pixel_size_levels must be an integer >= 0, got {self.pixel_size_levels!r}")
        if not (isinstance(self.max_coverage, (int, float)) and 0.0 < self.max_coverage <= 1.0):
            raise ValueError(f"max_coverage must be in (0, 1], got {self.max_coverage!r}")
        if not 0.0 <= self.twin_probability <= 1.0:
            raise ValueError(f"twin_probability must be in [0, 1], got {self.twin_probability!r}")
        if not 0.0 < self.sampling_A <= MAX_SAMPLING_A:
            raise ValueError(f"sampling_A must be in (0, {MAX_SAMPLING_A}] Å, got {self.sampling_A!r}")
        if not self.slice_thickness_A > 0:
            raise ValueError(f"slice_thickness_A must be > 0 Å, got {self.slice_thickness_A!r}")
        if not self.particles_per_100nm2 >= 0:
            raise ValueError(f"particles_per_100nm2 must be >= 0, got {self.particles_per_100nm2!r}")
        if not 0 < self.mask_threshold_rad < math.pi:
            raise ValueError(f"mask_threshold_rad must be in (0, π), got {self.mask_threshold_rad!r}")
        if self.mask_closing_A < 0:
            raise ValueError(f"mask_closing_A must be >= 0 Å, got {self.mask_closing_A!r}")
        if self.mask_min_area_nm2 < 0:
            raise ValueError(f"mask_min_area_nm2 must be >= 0 nm², got {self.mask_min_area_nm2!r}")


def config_to_dict(cfg: SynthConfig) -> dict[str, Any]:
    d = asdict(cfg)
    return json.loads(json.dumps(d))  # tuples → lists, a plain JSON tree


def config_from_dict(d: dict[str, Any]) -> SynthConfig:
    known = {f.name: f for f in fields(SynthConfig)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise SynthError(f"unknown synth configuration keys {unknown}")
    kw: dict[str, Any] = {}
    for k, v in d.items():
        if k == "camera":
            kw[k] = CameraModel(**{ck: tuple(cv) if isinstance(cv, list) else cv for ck, cv in v.items()})
        elif isinstance(v, list):
            kw[k] = tuple(v)
        else:
            kw[k] = v
    return SynthConfig(**kw)
