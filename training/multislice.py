"""Multislice HRTEM images and particle masks with abTEM (the ``sim`` extra).

One sample (:func:`simulate_hrtem`):

1. the specimen (particles on amorphous carbon, :mod:`fringelive.training.structures`) is
   sliced (``slice_thickness_A``) on a grid of ``size_px × k`` points per side, ``k`` the
   smallest integer with ``pixel_size / k <= sampling_A`` (so the simulation sampling is
   ≤ 0.1 Å by default), and a 300 kV plane wave is propagated through it (infinite
   projection, Lobato parametrisation, no frozen phonons);
2. the objective lens: defocus (nm; abTEM's convention, positive = underfocus, i.e.
   ``C10 = -defocus``), spherical aberration ``Cs`` (µm; ``C30``) and the focal spread (nm;
   temporal-coherence envelope), then ``|ψ|²``;
3. transposed from abTEM's ``[x, y]`` indexing to ``[row = y, column = x]`` and resampled
   to the target pixel size by averaging ``k × k`` blocks (pixel integration);
   vacuum intensity is 1, ready for the camera model (:func:`fringelive.training.fastsim.apply_camera`);
4. the mask: the particles alone are simulated on the same grid; the pixels whose exit-wave
   phase ``|arg ψ|`` exceeds π/16 are particle (the published rule; ``|·|`` keeps a phase that
   wrapped past π). Clean-up: a closing by a ``closing_A`` disc (default 2 Å, about half an
   atomic-column spacing, :func:`close_mask`) on the simulation grid joins the columns, the
   result is majority-resampled to the target pixels, holes are filled and connected
   components smaller than ``min_area_px`` removed (:func:`clean_mask`).

abTEM runs single-threaded with numpy's FFT and dask's synchronous scheduler, so a sample is a
deterministic function of its structure and optics (and worker processes do not oversubscribe
the CPU).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from fringelive.engine.optional import import_abtem

__all__ = [
    "PHASE_THRESHOLD_RAD",
    "Optics",
    "configure_abtem",
    "abtem_version",
    "oversampling",
    "block_mean",
    "phase_mask",
    "close_mask",
    "clean_mask",
    "simulate_hrtem",
    "MASK_PASSES",
]

PHASE_THRESHOLD_RAD = math.pi / 16
"""Exit-wave phase (rad) above which a pixel belongs to a particle (the published rule)."""


@dataclass(frozen=True)
class Optics:
    """Microscope settings of one image. voltage_kv: kV; defocus_nm: nm, positive =
    underfocus; cs_um: spherical aberration, µm; focal_spread_nm: 1/e half-width of the
    defocus spread, nm; semiangle_cutoff_mrad: objective aperture (None = none);
    angular_spread_mrad: beam convergence (partial spatial coherence), mrad."""

    voltage_kv: float = 300.0
    defocus_nm: float = 0.0
    cs_um: float = 0.0
    focal_spread_nm: float = 3.0
    semiangle_cutoff_mrad: float | None = None
    angular_spread_mrad: float = 0.0


def abtem_version() -> str | None:
    try:
        import importlib.metadata

        return importlib.metadata.version("abtem")
    except Exception:  # noqa: BLE001 - not installed
        return None


def configure_abtem() -> None:
    """Import abTEM and make it deterministic and single-threaded (numpy FFT, no lazy dask,
    no progress bars). ImportError with the install hint when the ``sim`` extra is missing."""
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    try:
        abtem = import_abtem()
        import dask
    except ImportError as e:
        raise ImportError("the abtem engine needs abTEM and ase: pip install 'fringelive[sim]' "
                          f"({e})") from None
    dask.config.set(scheduler="synchronous")
    abtem.config.set({"fft": "numpy", "dask.lazy": False, "diagnostics.progress_bar": False,
                      "device": "cpu", "precision": "float32"})


def oversampling(pixel_size_nm: float, sampling_A: float) -> int:
    """Simulation grid points per output pixel: the smallest k with pixel/k <= sampling."""
    if not pixel_size_nm > 0:
        raise ValueError(f"pixel_size_nm must be > 0, got {pixel_size_nm!r}")
    if not sampling_A > 0:
        raise ValueError(f"sampling_A must be > 0, got {sampling_A!r}")
    return max(1, math.ceil(pixel_size_nm * 10.0 / sampling_A - 1e-9))


def block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over non-overlapping ``k × k`` blocks: ``(H·k, W·k) → (H, W)`` float32."""
    h, w = a.shape[0] // k, a.shape[1] // k
    return a[: h * k, : w * k].reshape(h, k, w, k).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def phase_mask(exit_wave: np.ndarray, threshold_rad: float = PHASE_THRESHOLD_RAD) -> np.ndarray:
    """Particle pixels of a particle-only exit wave ``(H, W)`` complex: ``|arg ψ| > threshold``
    (vacuum has phase 0)."""
    return np.abs(np.angle(exit_wave)) > threshold_rad


def close_mask(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Morphological closing by a disc of ``radius_px`` (Euclidean distance transforms, so the
    cost does not grow with the radius): joins the atomic columns of one particle, whose
    between-column phase can stay below the threshold, into one region."""
    m = np.asarray(mask, bool)
    if radius_px <= 0 or not m.any():
        return m
    pad = int(math.ceil(radius_px)) + 1
    p = np.pad(m, pad)
    dilated = ndimage.distance_transform_edt(~p) <= radius_px
    closed = ndimage.distance_transform_edt(dilated) > radius_px
    return closed[pad:-pad, pad:-pad]


def clean_mask(mask: np.ndarray, min_area_px: int) -> np.ndarray:
    """Fill holes, then drop 8-connected components smaller than ``min_area_px`` pixels."""
    m = ndimage.binary_fill_holes(np.asarray(mask, bool))
    if min_area_px > 1 and m.any():
        lab, n = ndimage.label(m, structure=np.ones((3, 3), bool))
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        small = sizes < min_area_px
        small[0] = True
        m = ~small[lab]
    return m


def _exit_wave(atoms, gpts: int, slice_thickness_A: float, energy_ev: float) -> np.ndarray:
    abtem = import_abtem()

    potential = abtem.Potential(atoms, gpts=gpts, slice_thickness=slice_thickness_A, projection="infinite",
                                parametrization="lobato")
    return abtem.PlaneWave(energy=energy_ev).multislice(potential)


MASK_PASSES = ("shared", "separate")
"""How the particle-only exit wave for the mask is obtained. ``shared``: the particles lie above
the support (the beam meets them first), so the wave after the particle slices of the one
specimen multislice IS the particle-only exit wave; the mask costs nothing extra and is
identical to ``separate``'s up to float rounding. ``separate``: a second multislice of the
particles alone (the original implementation; kept for checking)."""


def _potential(atoms, gpts: int, slice_thickness_A: float):
    abtem = import_abtem()

    return abtem.Potential(atoms, gpts=gpts, slice_thickness=slice_thickness_A, projection="infinite",
                           parametrization="lobato").build().compute()


def _slices(potential, start: int, stop: int):
    from abtem.potentials.iam import PotentialArray

    thick = np.asarray(potential.slice_thickness, dtype=float)[start:stop]
    return PotentialArray(np.asarray(potential.array)[start:stop], slice_thickness=tuple(float(t) for t in thick),
                          sampling=potential.sampling)


SUPPORT_UNIT_A = 10.0
"""Thickness (Å) of one cached amorphous-carbon unit slab (:func:`support_slices`)."""

SUPPORT_SLICE_A = 5.0
"""Slice thickness (Å) of the cached support: carbon is a weak phase object, so 5 Å slices
(2 per unit) change its image by far less than shot noise (docs/training.md)."""

_SUPPORT_CACHE: "dict[tuple[int, ...], np.ndarray]" = {}
_SUPPORT_CACHE_BYTES = 1280 * 2**20


def _unit_slab(extent_A: float, gpts: int, slice_thickness_A: float, pool_seed: int | None, member: int) -> np.ndarray:
    """One cached unit slab ``(n, gpts, gpts)`` of random carbon atoms: member ``member`` of the
    pool seeded by ``pool_seed`` (``None``: the single slab of schema-1 databases)."""
    key = (int(gpts), round(float(extent_A), 3), float(slice_thickness_A), pool_seed, member)
    unit = _SUPPORT_CACHE.get(key)
    if unit is None:
        from .structures import amorphous_carbon

        seed = [int(gpts), int(extent_A * 1e3)]
        if pool_seed is not None:
            seed += [int(pool_seed), member]
        carbon = amorphous_carbon(extent_A, SUPPORT_UNIT_A, np.random.default_rng(seed))
        carbon.set_cell([extent_A, extent_A, SUPPORT_UNIT_A])
        carbon.set_pbc(True)
        unit = np.asarray(_potential(carbon, gpts, slice_thickness_A).array, dtype=np.float32)
        while _SUPPORT_CACHE and sum(a.nbytes for a in _SUPPORT_CACHE.values()) + unit.nbytes > _SUPPORT_CACHE_BYTES:
            _SUPPORT_CACHE.pop(next(iter(_SUPPORT_CACHE)))
        _SUPPORT_CACHE[key] = unit
    return unit


def support_slices(extent_A: float, gpts: int, thickness_A: float, rng: np.random.Generator,
                   slice_thickness_A: float = SUPPORT_SLICE_A, *, pool: int = 1,
                   pool_seed: int | None = None) -> np.ndarray:
    """Projected-potential slices ``(n, gpts, gpts)`` (abTEM ``[x, y]`` order, V·Å) of an
    amorphous-carbon slab ``thickness_A`` thick, assembled from cached unit slabs.

    The support reuse approximation: building the potential of 10⁵–10⁶ random carbon atoms is
    most of a sample's cost, so ``pool`` distinct ``SUPPORT_UNIT_A``-thick slabs of random atoms
    are built per (grid, extent, slice thickness, ``pool_seed``) and process, and a support of
    thickness t is a stack of ``round(t / unit)`` slabs, each drawn from the pool and moved by a
    random periodic shift and one of the 8 square symmetries. Within one slab the atom positions
    are as random as before; across slabs of one pool member they are correlated only through
    the shared atoms, which the shifts decorrelate laterally. ``pool_seed`` (the database's
    seed) gives every database its own carbon; ``pool=1, pool_seed=None`` is the single slab
    per grid of earlier databases, reproduced exactly.
    """
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool must be an integer >= 1, got {pool!r}")
    copies = max(0, int(round(thickness_A / SUPPORT_UNIT_A)))
    out = []
    for _ in range(copies):
        member = int(rng.integers(0, pool)) if pool > 1 else 0
        u = _unit_slab(extent_A, gpts, slice_thickness_A, pool_seed, member)
        u = np.roll(u, tuple(int(v) for v in rng.integers(0, gpts, 2)), axis=(1, 2))
        if rng.random() < 0.5:
            u = u.transpose(0, 2, 1)
        if rng.random() < 0.5:
            u = u[:, ::-1]
        if rng.random() < 0.5:
            u = u[:, :, ::-1]
        out.append(u)
    if not out:
        return np.zeros((0, gpts, gpts), np.float32)
    return np.ascontiguousarray(np.concatenate(out, axis=0))


def simulate_hrtem(atoms, particles_only, *, size_px: int, pixel_size_nm: float, optics: Optics,
                   sampling_A: float = 0.1, slice_thickness_A: float = 2.0,
                   threshold_rad: float = PHASE_THRESHOLD_RAD, closing_A: float = 2.0,
                   min_area_px: int = 10, mask_pass: str = "separate",
                   particle_depth_A: float | None = None,
                   support: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Noise-free image intensity ``(size_px, size_px)`` float32 (vacuum = 1) and particle mask
    (bool) of ``atoms`` (cell ``size_px × pixel_size_nm`` nm wide); ``particles_only`` holds
    the particles in the same lateral cell (its depth may be smaller). mask_pass: see
    :data:`MASK_PASSES`; ``shared`` needs ``particle_depth_A``, the depth (Å, from the entrance
    surface) above which ``atoms`` holds only particle atoms. support: extra potential slices
    ``(n, gpts, gpts)``, :data:`SUPPORT_SLICE_A` thick (:func:`support_slices`), the wave passes after ``atoms`` (then ``atoms``
    holds the particles only). Returns ``(intensity, mask, info)``, info = {oversampling, gpts,
    sampling_A, slices}."""
    abtem = import_abtem()

    if mask_pass not in MASK_PASSES:
        raise ValueError(f"mask_pass must be one of {MASK_PASSES}, got {mask_pass!r}")
    configure_abtem()
    k = oversampling(pixel_size_nm, sampling_A)
    gpts = size_px * k
    extent = size_px * pixel_size_nm * 10.0
    for name, a in (("atoms", atoms), ("particles_only", particles_only)):
        lx, ly = a.cell.lengths()[:2]
        if not (math.isclose(lx, extent, rel_tol=1e-6) and math.isclose(ly, extent, rel_tol=1e-6)):
            raise ValueError(f"{name} cell is {lx:.3f} × {ly:.3f} Å, expected {extent:.3f} Å "
                             f"({size_px} px × {pixel_size_nm} nm)")
    energy = optics.voltage_kv * 1e3
    particle_wave = None
    if support is not None:
        from abtem.potentials.iam import PotentialArray

        if support.shape[1:] != (gpts, gpts):
            raise ValueError(f"support slices are {support.shape[1:]}, expected ({gpts}, {gpts})")
        if len(particles_only):
            wave = abtem.PlaneWave(energy=energy).multislice(_potential(atoms, gpts, slice_thickness_A))
            particle_wave = np.asarray(wave.array).T.copy()
        else:
            wave = abtem.PlaneWave(energy=energy, gpts=gpts, extent=extent).build()
        if len(support):
            wave = wave.multislice(PotentialArray(support, slice_thickness=SUPPORT_SLICE_A,
                                                  sampling=extent / gpts))
    elif mask_pass == "shared" and len(particles_only):
        if particle_depth_A is None:
            raise ValueError("mask_pass 'shared' needs particle_depth_A")
        potential = _potential(atoms, gpts, slice_thickness_A)
        n_top = min(int(particle_depth_A // slice_thickness_A), potential.num_slices)
        wave = abtem.PlaneWave(energy=energy).multislice(_slices(potential, 0, n_top))
        particle_wave = np.asarray(wave.array).T.copy()
        if n_top < potential.num_slices:
            wave = wave.multislice(_slices(potential, n_top, potential.num_slices))
    else:
        wave = _exit_wave(atoms, gpts, slice_thickness_A, energy)
        if len(particles_only):
            particle_wave = np.asarray(_exit_wave(particles_only, gpts, slice_thickness_A, energy).array).T
    ctf = abtem.CTF(
        energy=energy,
        semiangle_cutoff=optics.semiangle_cutoff_mrad if optics.semiangle_cutoff_mrad else math.inf,
        aberration_coefficients={"C10": -optics.defocus_nm * 10.0, "C30": optics.cs_um * 1e4},
        focal_spread=optics.focal_spread_nm * 10.0,
        angular_spread=optics.angular_spread_mrad,
    )
    # abTEM arrays are indexed [x, y]; images here are [row = y, column = x]
    intensity = np.ascontiguousarray(np.asarray(wave.apply_ctf(ctf).intensity().array, dtype=np.float32).T)
    image = block_mean(intensity, k)
    if particle_wave is not None:
        fine = close_mask(phase_mask(particle_wave, threshold_rad), closing_A / (extent / gpts))
    else:
        fine = np.zeros((gpts, gpts), bool)
    mask = clean_mask(block_mean(fine.astype(np.float32), k) >= 0.5, min_area_px)
    slices = int(math.ceil(atoms.cell.lengths()[2] / slice_thickness_A)) + (0 if support is None else len(support))
    info = {"oversampling": k, "gpts": gpts, "sampling_A": round(extent / gpts, 6), "slices": slices}
    return image, mask, info
