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
from dataclasses import asdict, dataclass, field, fields
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
    (fcc only) gets a twin plane. sampling_A: largest simulation sampling (≤ 0.1 Å).
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
    voltage_kv: float = 300.0
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
        if not 0.0 <= self.twin_probability <= 1.0:
            raise ValueError(f"twin_probability must be in [0, 1], got {self.twin_probability!r}")
        if not 0.0 < self.sampling_A <= 0.1:
            raise ValueError(f"sampling_A must be in (0, 0.1] Å, got {self.sampling_A!r}")
        if not self.slice_thickness_A > 0:
            raise ValueError(f"slice_thickness_A must be > 0 Å, got {self.slice_thickness_A!r}")
        if not self.voltage_kv > 0:
            raise ValueError(f"voltage_kv must be > 0 kV, got {self.voltage_kv!r}")
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
            kw[k] = CameraModel(**v)
        elif isinstance(v, list):
            kw[k] = tuple(v)
        else:
            kw[k] = v
    return SynthConfig(**kw)


def _rng(cfg: SynthConfig, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(cfg.seed), int(index), int(stream)])


def _uniform(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(r[0]) if r[0] == r[1] else float(rng.uniform(r[0], r[1]))


def draw_parameters(cfg: SynthConfig, index: int) -> dict[str, Any]:
    """The drawn per-sample parameters (metadata names and units)."""
    rng = _rng(cfg, index, 0)
    p: dict[str, Any] = {
        "index": int(index),
        "seed": int(cfg.seed),
        "engine": cfg.engine,
        "material": cfg.materials[int(rng.integers(len(cfg.materials)))],
        "pixel_size_nm": round(_uniform(rng, cfg.pixel_size_nm), 6),
        "dose_e_per_A2": round(_uniform(rng, cfg.dose_e_per_A2), 3),
        "voltage_kv": float(cfg.voltage_kv),
        "support": SUPPORT,
        "size_px": int(cfg.size_px),
    }
    if cfg.engine == "abtem":
        n = int(rng.integers(int(cfg.particles[0]), int(cfg.particles[1]) + 1))
        p["diameters_drawn_nm"] = [round(_uniform(rng, cfg.diameter_nm), 4) for _ in range(n)]
        p["carbon_thickness_nm"] = round(_uniform(rng, cfg.carbon_thickness_nm), 4)
        p["defocus_nm"] = round(_uniform(rng, cfg.defocus_nm), 4)
        p["cs_um"] = round(_uniform(rng, cfg.cs_um), 4)
        p["focal_spread_nm"] = round(_uniform(rng, cfg.focal_spread_nm), 4)
        p["twin_drawn"] = [bool(rng.random() < cfg.twin_probability) for _ in range(n)]
        p["sampling_max_A"] = cfg.sampling_A
        p["slice_thickness_A"] = cfg.slice_thickness_A
    else:
        p["diameter_nm"] = round(_uniform(rng, cfg.diameter_nm), 4)
        p["particles_per_100nm2"] = cfg.particles_per_100nm2
    p.update({f"camera_{k}": v for k, v in asdict(cfg.camera).items()})
    p["mask_threshold_rad"] = cfg.mask_threshold_rad if cfg.engine == "abtem" else None
    p["mask_closing_A"] = cfg.mask_closing_A if cfg.engine == "abtem" else None
    p["mask_min_area_nm2"] = cfg.mask_min_area_nm2 if cfg.engine == "abtem" else None
    return p


def _simulate_abtem(cfg: SynthConfig, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:

    rng = _rng(cfg, p["index"], 1)
    px = p["pixel_size_nm"]
    extent_A = cfg.size_px * px * 10.0
    twinnable = MATERIALS[p["material"]].twinnable
    built = [nanoparticle(p["material"], d * 10.0, rng, twin=t and twinnable)
             for d, t in zip(p["diameters_drawn_nm"], p["twin_drawn"])]
    centres = place_particles(rng, extent_A, [0.5 * d * 10.0 for d in p["diameters_drawn_nm"]])
    built = built[: len(centres)]
    atoms, particles_only = specimen([a for a, _ in built], centres, extent_A, p["carbon_thickness_nm"] * 10.0, rng)
    if len(particles_only):  # the particle exit wave is taken right after the particles
        depth = float(particles_only.positions[:, 2].max()) + 2.0
        particles_only.set_cell([extent_A, extent_A, depth])
    optics = Optics(voltage_kv=cfg.voltage_kv, defocus_nm=p["defocus_nm"], cs_um=p["cs_um"],
                    focal_spread_nm=p["focal_spread_nm"])
    min_area_px = max(1, int(round(cfg.mask_min_area_nm2 / (px * px))))
    intensity, mask, info = simulate_hrtem(
        atoms, particles_only, size_px=cfg.size_px, pixel_size_nm=px, optics=optics,
        sampling_A=cfg.sampling_A, slice_thickness_A=cfg.slice_thickness_A,
        threshold_rad=cfg.mask_threshold_rad, closing_A=cfg.mask_closing_A, min_area_px=min_area_px)
    row = {
        "particles": len(centres),
        "particle_diameter_nm": [p["diameters_drawn_nm"][i] for i in range(len(centres))],
        "twin": [bool(info_i["twin"]) for _, info_i in built],
        "particle_centres_nm": [[round(x / 10.0, 4), round(y / 10.0, 4)] for x, y in centres],
        "particle_atoms": [info_i["atoms"] for _, info_i in built],
        "particle_rotation": [info_i["rotation"] for _, info_i in built],
        "carbon_atoms": int(len(atoms) - len(particles_only)),
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
    raw = apply_camera(intensity, p["dose_e_per_A2"], p["pixel_size_nm"], cfg.camera, _rng(cfg, index, 2))
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
