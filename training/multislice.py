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
]

PHASE_THRESHOLD_RAD = math.pi / 16
"""Exit-wave phase (rad) above which a pixel belongs to a particle (the published rule)."""


@dataclass(frozen=True)
class Optics:
    """Microscope settings of one image. voltage_kv: kV; defocus_nm: nm, positive =
    underfocus; cs_um: spherical aberration, µm; focal_spread_nm: 1/e half-width of the
    defocus spread, nm; semiangle_cutoff_mrad: objective aperture (None = none)."""

    voltage_kv: float = 300.0
    defocus_nm: float = 0.0
    cs_um: float = 0.0
    focal_spread_nm: float = 3.0
    semiangle_cutoff_mrad: float | None = None


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
        import abtem
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
    import abtem

    potential = abtem.Potential(atoms, gpts=gpts, slice_thickness=slice_thickness_A, projection="infinite",
                                parametrization="lobato")
    return abtem.PlaneWave(energy=energy_ev).multislice(potential)


def simulate_hrtem(atoms, particles_only, *, size_px: int, pixel_size_nm: float, optics: Optics,
                   sampling_A: float = 0.1, slice_thickness_A: float = 2.0,
                   threshold_rad: float = PHASE_THRESHOLD_RAD, closing_A: float = 2.0,
                   min_area_px: int = 10) -> tuple[np.ndarray, np.ndarray, dict]:
    """Noise-free image intensity ``(size_px, size_px)`` float32 (vacuum = 1) and particle mask
    (bool) of ``atoms`` (cell ``size_px × pixel_size_nm`` nm wide); ``particles_only`` holds
    the particles in the same lateral cell (its depth may be smaller). Returns
    ``(intensity, mask, info)``, info = {oversampling, gpts, sampling_A, slices}."""
    import abtem

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
    wave = _exit_wave(atoms, gpts, slice_thickness_A, energy)
    ctf = abtem.CTF(
        energy=energy,
        semiangle_cutoff=optics.semiangle_cutoff_mrad if optics.semiangle_cutoff_mrad else math.inf,
        aberration_coefficients={"C10": -optics.defocus_nm * 10.0, "C30": optics.cs_um * 1e4},
        focal_spread=optics.focal_spread_nm * 10.0,
    )
    # abTEM arrays are indexed [x, y]; images here are [row = y, column = x]
    intensity = np.ascontiguousarray(np.asarray(wave.apply_ctf(ctf).intensity().array, dtype=np.float32).T)
    image = block_mean(intensity, k)
    if len(particles_only):
        pw = np.asarray(_exit_wave(particles_only, gpts, slice_thickness_A, energy).array).T
        fine = close_mask(phase_mask(pw, threshold_rad), closing_A / (extent / gpts))
    else:
        fine = np.zeros((gpts, gpts), bool)
    mask = clean_mask(block_mean(fine.astype(np.float32), k) >= 0.5, min_area_px)
    info = {"oversampling": k, "gpts": gpts, "sampling_A": round(extent / gpts, 6),
            "slices": int(math.ceil(atoms.cell.lengths()[2] / slice_thickness_A))}
    return image, mask, info
