"""Simulated training data: ``fringelive synth``.

Two engines, one output format (a raw-count sample set, :mod:`fringelive.training.samples`):

* ``abtem``: multislice HRTEM (:mod:`fringelive.training.multislice`) of crystalline
  nanoparticles (:mod:`fringelive.training.structures`: Au, Ag, Pt fcc, CdSe wurtzite; random
  orientation; optional twin plane) on amorphous carbon; masks from the particle-only exit-wave
  phase (> π/16).
* ``fast``: the phenomenological model of :mod:`fringelive.training.fastsim` (milliseconds per
  frame, exact disc masks), what the default bundle was trained on.

Both end in the same camera model (:func:`fringelive.training.fastsim.apply_camera`: dose →
Poisson electrons, gain, offset, illumination non-uniformity, x-ray hits), so samples look like
raw frames and are preprocessed by the card's parameters at training time, as in the daemon.

Per sample ``i`` every random choice derives from ``numpy.random.default_rng([seed, i, stream])``
(streams: 0 parameters, 1 structure/scene, 2 camera), so a sample does not depend on the worker
count, on the order of completion, or on which samples a resumed run still had to make.
Parameters given as ranges ``(lo, hi)`` are drawn uniformly per sample (``lo == hi`` fixes them).
Every drawn parameter goes to the metadata row of its sample.

:func:`synthesize` runs the samples in worker processes (spawned, single-threaded each), shows a
progress bar, stages finished samples in ``out/parts`` (resumable: a restarted run skips them)
and finally writes ``out/samples.h5`` + ``out/metadata.csv``. ``out/synth.json`` records the
configuration; resuming with a different one is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .fastsim import D_SPACINGS_NM, CameraModel, FastSimConfig, apply_camera, simulate_intensity
from .multislice import Optics, abtem_version, configure_abtem, simulate_hrtem
from .progress import progress_bar
from .samples import DATA_FILE, PartStore
from .structures import MATERIALS, nanoparticle, place_particles, specimen

__all__ = [
    "ENGINES",
    "SynthConfig",
    "SynthError",
    "SynthReport",
    "draw_parameters",
    "simulate_sample",
    "synthesize",
    "config_to_dict",
    "config_from_dict",
]

log = logging.getLogger(__name__)

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
        "support_reuse": True, "pixel_size_levels": 40, "max_coverage": 0.5,
        "camera": {"gain": (0.5, 10.0), "offset": (0.0, 500.0), "illumination": (0.0, 0.3),
                   "read_noise": (0.0, 20.0), "mtf_sigma_px": (0.0, 0.8),
                   "xray_rate_per_mpx": 2.0, "xray_counts": 8000.0, "dtype": "uint16"},
    },
}
CONFIG_FILE = "synth.json"
SUPPORT = "amorphous carbon"


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


def _rng(cfg: SynthConfig, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(cfg.seed), int(index), int(stream)])


def _uniform(rng: np.random.Generator, r: tuple[float, float], log: bool = False) -> float:
    if r[0] == r[1]:
        return float(r[0])
    if log:
        return float(math.exp(rng.uniform(math.log(r[0]), math.log(r[1]))))
    return float(rng.uniform(r[0], r[1]))


def _pixel_size(cfg: SynthConfig, px: float) -> float:
    """``px`` rounded to the nearest of ``cfg.pixel_size_levels`` log-spaced levels (if any)."""
    lo, hi = cfg.pixel_size_nm
    if cfg.pixel_size_levels < 2 or lo == hi:
        return px
    levels = np.geomspace(lo, hi, cfg.pixel_size_levels)
    return float(levels[np.argmin(np.abs(np.log(levels / px)))])


def _fit_particles(diameters_nm: list[float], extent_nm: float, max_coverage: float) -> list[float]:
    """Diameters capped at 0.6 of the field, then only as many as keep the discs' total area
    within ``max_coverage`` of the field (the first always stays)."""
    out: list[float] = []
    area = 0.0
    for d in diameters_nm:
        d = min(d, 0.6 * extent_nm)
        a = math.pi * d * d / 4.0
        if out and area + a > max_coverage * extent_nm * extent_nm:
            continue
        out.append(round(d, 4))
        area += a
    return out


def scherzer_defocus_nm(cs_um: float, voltage_kv: float) -> float:
    """Scherzer defocus (nm, positive = underfocus): 1.2 √(Cs λ)."""
    return 1.2 * math.sqrt(abs(cs_um) * 1e-6 * wavelength_nm(voltage_kv) * 1e-9) * 1e9


def wavelength_nm(voltage_kv: float) -> float:
    """Relativistic electron wavelength (nm) at ``voltage_kv``."""
    v = voltage_kv * 1e3
    return 1.226426 / math.sqrt(v * (1.0 + 0.978476e-6 * v))


def draw_parameters(cfg: SynthConfig, index: int) -> dict[str, Any]:
    """The drawn per-sample parameters (metadata names and units)."""
    rng = _rng(cfg, index, 0)
    log = set(cfg.log_uniform)
    volts = cfg.voltage_kv if isinstance(cfg.voltage_kv, tuple) else (cfg.voltage_kv,)
    p: dict[str, Any] = {
        "index": int(index),
        "seed": int(cfg.seed),
        "engine": cfg.engine,
        "material": cfg.materials[int(rng.integers(len(cfg.materials)))],
        "pixel_size_nm": round(_pixel_size(cfg, _uniform(rng, cfg.pixel_size_nm, "pixel_size_nm" in log)), 6),
        "dose_e_per_A2": round(_uniform(rng, cfg.dose_e_per_A2, "dose_e_per_A2" in log), 3),
        "voltage_kv": float(volts[int(rng.integers(len(volts)))]) if len(volts) > 1 else float(volts[0]),
        "support": SUPPORT,
        "size_px": int(cfg.size_px),
    }
    if cfg.engine == "abtem":
        n = int(rng.integers(int(cfg.particles[0]), int(cfg.particles[1]) + 1))
        if cfg.empty_fraction and rng.random() < cfg.empty_fraction:
            n = 0
        p["diameters_drawn_nm"] = [round(_uniform(rng, cfg.diameter_nm, "diameter_nm" in log), 4) for _ in range(n)]
        if cfg.max_coverage < 1.0:
            p["diameters_drawn_nm"] = _fit_particles(p["diameters_drawn_nm"], cfg.size_px * p["pixel_size_nm"],
                                                     cfg.max_coverage)
            n = len(p["diameters_drawn_nm"])
        no_support = bool(cfg.no_support_fraction and rng.random() < cfg.no_support_fraction)
        thick = _uniform(rng, cfg.carbon_thickness_nm, "carbon_thickness_nm" in log)
        p["carbon_thickness_nm"] = 0.0 if no_support else round(thick, 4)
        if no_support:
            p["support"] = "none"
        defocus = _uniform(rng, cfg.defocus_nm)
        if cfg.uncorrected_fraction and rng.random() < cfg.uncorrected_fraction:
            cs = _uniform(rng, cfg.cs_uncorrected_mm) * 1e3
            defocus += scherzer_defocus_nm(cs, p["voltage_kv"])
            p["corrector"] = False
        else:
            cs = _uniform(rng, cfg.cs_um)
            p["corrector"] = True
        p["defocus_nm"] = round(defocus, 4)
        p["cs_um"] = round(cs, 4)
        p["focal_spread_nm"] = round(_uniform(rng, cfg.focal_spread_nm), 4)
        p["angular_spread_mrad"] = round(_uniform(rng, cfg.angular_spread_mrad), 4)
        p["twin_drawn"] = [bool(rng.random() < cfg.twin_probability) for _ in range(n)]
        p["stacking_faults_drawn"] = [int(sum(rng.random() < cfg.stacking_fault_probability for _ in range(2)))
                                      for _ in range(n)]
        p["sampling_max_A"] = cfg.sampling_A
        p["slice_thickness_A"] = cfg.slice_thickness_A
        p["mask_pass"] = cfg.mask_pass
    else:
        p["diameter_nm"] = round(_uniform(rng, cfg.diameter_nm, "diameter_nm" in log), 4)
        p["particles_per_100nm2"] = cfg.particles_per_100nm2
    camera = cfg.camera.draw(rng)
    p.update({f"camera_{k}": (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(camera).items()})
    p["mask_threshold_rad"] = cfg.mask_threshold_rad if cfg.engine == "abtem" else None
    p["mask_closing_A"] = cfg.mask_closing_A if cfg.engine == "abtem" else None
    p["mask_min_area_nm2"] = cfg.mask_min_area_nm2 if cfg.engine == "abtem" else None
    return p


def _simulate_abtem(cfg: SynthConfig, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:

    rng = _rng(cfg, p["index"], 1)
    px = p["pixel_size_nm"]
    extent_A = cfg.size_px * px * 10.0
    twinnable = MATERIALS[p["material"]].twinnable
    faults = p.get("stacking_faults_drawn") or [0] * len(p["diameters_drawn_nm"])
    built = [nanoparticle(p["material"], d * 10.0, rng, twin=t and twinnable, stacking_faults=f if twinnable else 0)
             for d, t, f in zip(p["diameters_drawn_nm"], p["twin_drawn"], faults)]
    centres = place_particles(rng, extent_A, [0.5 * d * 10.0 for d in p["diameters_drawn_nm"]],
                              edge_overlap=cfg.edge_overlap)
    built = built[: len(centres)]
    support = None
    carbon_A = p["carbon_thickness_nm"] * 10.0
    if cfg.support_reuse:
        from .multislice import SUPPORT_SLICE_A, SUPPORT_UNIT_A, oversampling, support_slices

        gpts = cfg.size_px * oversampling(px, cfg.sampling_A)
        support = support_slices(extent_A, gpts, carbon_A, rng)
        carbon_A = 0.0
    atoms, particles_only = specimen([a for a, _ in built], centres, extent_A, carbon_A, rng)
    depth = 0.0
    if len(particles_only):  # the particle exit wave is taken right after the particles
        depth = float(particles_only.positions[:, 2].max()) + 2.0
        particles_only.set_cell([extent_A, extent_A, depth])
    optics = Optics(voltage_kv=p["voltage_kv"], defocus_nm=p["defocus_nm"], cs_um=p["cs_um"],
                    focal_spread_nm=p["focal_spread_nm"], angular_spread_mrad=p.get("angular_spread_mrad", 0.0))
    min_area_px = max(1, int(round(cfg.mask_min_area_nm2 / (px * px))))
    intensity, mask, info = simulate_hrtem(
        atoms, particles_only, size_px=cfg.size_px, pixel_size_nm=px, optics=optics,
        sampling_A=cfg.sampling_A, slice_thickness_A=cfg.slice_thickness_A,
        threshold_rad=cfg.mask_threshold_rad, closing_A=cfg.mask_closing_A, min_area_px=min_area_px,
        mask_pass=cfg.mask_pass, particle_depth_A=depth if len(particles_only) else None, support=support)
    row = {
        "particles": len(centres),
        "particle_diameter_nm": [p["diameters_drawn_nm"][i] for i in range(len(centres))],
        "twin": [bool(info_i["twin"]) for _, info_i in built],
        "stacking_faults": [int(info_i.get("stacking_faults", 0)) for _, info_i in built],
        "particle_centres_nm": [[round(x / 10.0, 4), round(y / 10.0, 4)] for x, y in centres],
        "particle_atoms": [info_i["atoms"] for _, info_i in built],
        "particle_rotation": [info_i["rotation"] for _, info_i in built],
        "carbon_atoms": int(len(atoms) - len(particles_only)) if support is None else None,
        "support_unit_slabs": None if support is None else int(round(len(support) * SUPPORT_SLICE_A / SUPPORT_UNIT_A)),
        "sampling_A": info["sampling_A"],
        "oversampling": info["oversampling"],
        "gpts": info["gpts"],
        "slices": info["slices"],
    }
    return intensity, mask, row


def _simulate_fast(cfg: SynthConfig, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    fcfg = FastSimConfig(shape=(cfg.size_px, cfg.size_px), pixel_size_nm=p["pixel_size_nm"],
                         dose_e_per_A2=p["dose_e_per_A2"], material=p["material"], diameter_nm=p["diameter_nm"],
                         particles_per_100nm2=cfg.particles_per_100nm2, camera=cfg.camera)
    intensity, mask, meta = simulate_intensity(fcfg, _rng(cfg, p["index"], 1))
    diam = [round(float(d), 4) for d in meta["particle_diameters_nm"]]
    return intensity, mask, {"particles": len(diam), "particle_diameter_nm": diam}


def simulate_sample(cfg: SynthConfig, index: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Sample ``index``: raw frame ``(size_px, size_px)`` in ``cfg.camera.dtype`` counts, mask
    ``(size_px, size_px)`` uint8 {0, 1} and its metadata row (every parameter)."""
    t0 = time.perf_counter()
    p = draw_parameters(cfg, index)
    if cfg.engine == "abtem":
        intensity, mask, extra = _simulate_abtem(cfg, p)
    else:
        intensity, mask, extra = _simulate_fast(cfg, p)
    camera = replace(cfg.camera, **{k: p[f"camera_{k}"] for k in ("gain", "offset", "illumination", "read_noise",
                                                                   "mtf_sigma_px")})
    raw = apply_camera(intensity, p["dose_e_per_A2"], p["pixel_size_nm"], camera, _rng(cfg, index, 2))
    row = {**p, **extra}
    row["particle_fraction"] = round(float(mask.mean()), 6)
    row["sim_seconds"] = round(time.perf_counter() - t0, 3)
    return raw, mask.astype(np.uint8), row


def _work(cfg: SynthConfig, index: int) -> tuple[int, np.ndarray, np.ndarray, dict[str, Any]]:
    raw, mask, row = simulate_sample(cfg, index)
    return index, raw, mask, row


@dataclass
class SynthReport:
    path: Path
    count: int
    simulated: int
    skipped: int
    seconds: float

    @property
    def samples_per_hour(self) -> float:
        return 3600.0 * self.simulated / self.seconds if self.seconds > 0 and self.simulated else float("nan")


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Spawned workers inherit this environment: one thread each."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _check_resume(out: Path, cfg: SynthConfig) -> None:
    path = out / CONFIG_FILE
    new = config_to_dict(cfg)
    if path.is_file():
        old = json.loads(path.read_text()).get("config", {})
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            detail = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in diff)
            raise SynthError(f"{out} holds a synth run with a different configuration ({detail}); "
                             "resume with the same options or choose a new --out")
    else:
        if (out / DATA_FILE).exists():
            raise SynthError(f"{out} already holds a sample set not made by synth; choose a new --out")
        out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"config": new}, indent=2) + "\n")
        os.replace(tmp, path)


def synthesize(cfg: SynthConfig, out: str | os.PathLike[str], *, workers: int = 1, progress: bool = True,
               command: str | None = None, on_sample: Callable[[int], None] | None = None) -> SynthReport:
    """Simulate ``cfg.count`` samples into the sample set ``out`` (resumable; see the module
    docstring). workers: processes (1 = in this process). on_sample: called with each finished
    index (after it is staged)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    out = Path(out)
    _check_resume(out, cfg)
    t0 = time.perf_counter()
    if (out / DATA_FILE).is_file() and not (out / "parts").exists():
        log.info("%s is complete (%d samples); nothing to do", out, cfg.count)
        return SynthReport(out / DATA_FILE, cfg.count, 0, cfg.count, 0.0)
    if cfg.engine == "abtem":

        configure_abtem()  # fail early (ImportError names the extra) before spawning workers
    with PartStore(out) as store:
        done = set(store.indices())
        todo = [i for i in range(cfg.count) if i not in done]
        skipped = cfg.count - len(todo)
        if skipped:
            log.info("resuming %s: %d of %d samples already done", out, skipped, cfg.count)
        bar = progress_bar(progress, cfg.count, initial=skipped, desc=f"synth ({cfg.engine})", unit="sample")
        simulated = 0
        try:
            def finish(index: int, raw: np.ndarray, mask: np.ndarray, row: dict[str, Any]) -> None:
                nonlocal simulated
                store.put(index, raw, mask, row)
                simulated += 1
                bar.update(1)
                if on_sample:
                    on_sample(index)

            if workers == 1 or len(todo) <= 1:
                for i in todo:
                    finish(*_work(cfg, i))
            else:
                ctx = multiprocessing.get_context("spawn")
                with _single_threaded_children(), ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                    pending: set[Future] = set()
                    queue = iter(todo)
                    for i in queue:
                        pending.add(pool.submit(_work, cfg, i))
                        if len(pending) >= 2 * workers:
                            break
                    while pending:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            finish(*fut.result())
                            nxt = next(queue, None)
                            if nxt is not None:
                                pending.add(pool.submit(_work, cfg, nxt))
        finally:
            bar.close()
        attrs = {"synth_config": config_to_dict(cfg)}
        if cfg.engine == "abtem":

            attrs["abtem_version"] = abtem_version()
        path = store.assemble(cfg.count, content="raw", source=f"synth-{cfg.engine}", command=command, attrs=attrs)
    seconds = time.perf_counter() - t0
    return SynthReport(path, cfg.count, simulated, skipped, seconds)
