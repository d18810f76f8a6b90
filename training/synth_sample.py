"""One simulated sample: its conditions drawn from a :class:`~fringelive.training.synth_config.SynthConfig`
(:func:`draw_parameters`) and its raw frame and mask (:func:`simulate_sample`, abtem or fast engine,
then the shared camera model).

Per sample ``i`` every random choice derives from ``numpy.random.default_rng([seed, i, stream])``
(streams: 0 parameters, 1 structure/scene, 2 camera), so a sample does not depend on the worker
count, on the order of completion, or on which samples a resumed run still had to make.
Every drawn parameter goes to the metadata row of its sample.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from .fastsim import FastSimConfig, apply_camera, simulate_intensity
from .multislice import Optics, simulate_hrtem
from .structures import MATERIALS, nanoparticle, place_particles, specimen
from .synth_config import SynthConfig

__all__ = [
    "SUPPORT",
    "draw_parameters",
    "simulate_sample",
    "scherzer_defocus_nm",
    "wavelength_nm",
]

SUPPORT = "amorphous carbon"


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
        support = support_slices(extent_A, gpts, carbon_A, rng, pool=cfg.support_pool,
                                 pool_seed=cfg.seed if cfg.support_pool > 1 else None)
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
