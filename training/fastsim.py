"""Fast synthetic HRTEM frames with exact particle masks (numpy only, milliseconds per frame).

Not a multislice simulation (that is ``fringelive synth`` with abTEM): a phenomenological image
model good enough to exercise the whole pipeline, to feed the demo camera and to train a small
default model. Per frame:

1. amorphous carbon support: band-limited random phase (speckle at 0.2–0.5 nm) plus slow
   thickness variation;
2. crystalline particles: discs of the chosen diameter whose interior carries lattice fringes
   of the material's d-spacing (e.g. Au{111} 0.2355 nm) at a random in-plane orientation, with
   mass-thickness darkening ∝ the projected thickness of a sphere;
3. a Gaussian point-spread (partial coherence/detector MTF);
4. the camera: dose (e/Å²) → Poisson electrons per pixel, gain (counts/e), offset (counts),
   smooth illumination non-uniformity, x-ray hits.

The mask is the exact set of pixels inside each particle disc.
Units: pixel size nm/pixel, diameter nm, dose e/Å², counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

__all__ = [
    "D_SPACINGS_NM", "CameraModel", "FastSimConfig", "simulate_intensity", "apply_camera", "simulate_frame",
    "electrons_per_pixel",
]

#: Strongest lattice-fringe spacings (nm) per material, used for fringes and by drift checks.
D_SPACINGS_NM: dict[str, tuple[float, ...]] = {
    "Au": (0.2355, 0.2039),
    "Ag": (0.2359, 0.2043),
    "Pt": (0.2265, 0.1962),
    "CdSe": (0.3720, 0.3510, 0.2150),
}


_RANGED = ("gain", "offset", "illumination", "read_noise", "mtf_sigma_px")


@dataclass(frozen=True)
class CameraModel:
    """Raw-frame camera model. gain: counts per electron; offset: counts added to every pixel;
    illumination: peak-to-peak relative non-uniformity of the beam; xray_rate: hits per
    megapixel; xray_counts: counts a hit adds; read_noise: Gaussian read noise, counts rms;
    mtf_sigma_px: detector point spread (Gaussian σ, px) applied to the electron counts, which
    correlates the shot noise (the apparent shot-noise variance drops by about 1/(4πσ²) for
    σ ≳ 0.5 px) as on scintillator-coupled cameras.

    gain, offset, illumination, read_noise and mtf_sigma_px may each be a ``(min, max)`` range,
    drawn uniformly per frame by :meth:`draw` (a synthetic database's camera variation)."""

    gain: float | tuple[float, float] = 1.0
    offset: float | tuple[float, float] = 0.0
    illumination: float | tuple[float, float] = 0.2
    xray_rate_per_mpx: float = 2.0
    xray_counts: float = 8000.0
    dtype: str = "uint16"
    read_noise: float | tuple[float, float] = 0.0
    mtf_sigma_px: float | tuple[float, float] = 0.0

    def __post_init__(self) -> None:
        for name in _RANGED:
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, v := tuple(v))
            lo, hi = (v if isinstance(v, tuple) else (v, v))
            if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo <= hi):
                raise ValueError(f"camera {name} must be a number or a (min, max) pair, got {v!r}")
            if lo < 0:
                raise ValueError(f"camera {name} must be >= 0, got {v!r}")
        if not (self.gain[0] if isinstance(self.gain, tuple) else self.gain) > 0:
            raise ValueError(f"camera gain must be > 0 counts/e, got {self.gain!r}")

    @property
    def ranged(self) -> bool:
        return any(isinstance(getattr(self, n), tuple) for n in _RANGED)

    def draw(self, rng: np.random.Generator) -> "CameraModel":
        """This camera with every range replaced by a uniform draw (itself when none)."""
        if not self.ranged:
            return self
        kw = {}
        for n in _RANGED:
            v = getattr(self, n)
            kw[n] = float(rng.uniform(v[0], v[1])) if isinstance(v, tuple) else v
        return replace(self, **kw)


@dataclass(frozen=True)
class FastSimConfig:
    shape: tuple[int, int] = (512, 512)
    pixel_size_nm: float = 0.02
    dose_e_per_A2: float = 423.0
    material: str = "Au"
    diameter_nm: float = 5.0
    diameter_spread: float = 0.15
    particles_per_100nm2: float = 1.0
    fringe_contrast: float = 0.25
    thickness_contrast: float = 0.15
    carbon_contrast: float = 0.12
    psf_sigma_nm: float = 0.04
    camera: CameraModel = field(default_factory=CameraModel)

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 16:
            raise ValueError(f"shape must be (H, W) with both >= 16 px, got {self.shape!r}")
        if self.pixel_size_nm <= 0:
            raise ValueError(f"pixel_size_nm must be > 0, got {self.pixel_size_nm!r}")
        if self.dose_e_per_A2 <= 0:
            raise ValueError(f"dose_e_per_A2 must be > 0, got {self.dose_e_per_A2!r}")
        if self.material not in D_SPACINGS_NM:
            raise ValueError(f"material must be one of {sorted(D_SPACINGS_NM)}, got {self.material!r}")
        if self.diameter_nm <= 0:
            raise ValueError(f"diameter_nm must be > 0, got {self.diameter_nm!r}")


def electrons_per_pixel(dose_e_per_A2: float, pixel_size_nm: float) -> float:
    """Mean electrons per pixel: dose (e/Å²) × pixel area (Å²); 1 nm = 10 Å."""
    return dose_e_per_A2 * (pixel_size_nm * 10.0) ** 2


def _bandlimited_noise(rng: np.random.Generator, shape: tuple[int, int], px_nm: float,
                       lo_nm: float, hi_nm: float) -> np.ndarray:
    """Zero-mean unit-std noise with spatial periods between lo_nm and hi_nm."""
    h, w = shape
    fy = np.fft.fftfreq(h, d=px_nm)[:, None]
    fx = np.fft.rfftfreq(w, d=px_nm)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    band = ((f >= 1.0 / hi_nm) & (f <= 1.0 / lo_nm)).astype(np.float32)
    spec = (rng.standard_normal((h, w // 2 + 1)) + 1j * rng.standard_normal((h, w // 2 + 1))) * band
    out = np.fft.irfft2(spec, s=(h, w)).astype(np.float32)
    s = out.std()
    return out / s if s > 0 else out


def _place_particles(rng: np.random.Generator, cfg: FastSimConfig) -> list[tuple[float, float, float]]:
    """Non-overlapping (cy, cx, radius) in px."""
    h, w = cfg.shape
    area_nm2 = h * w * cfg.pixel_size_nm ** 2
    n_target = rng.poisson(cfg.particles_per_100nm2 * area_nm2 / 100.0)
    out: list[tuple[float, float, float]] = []
    for _ in range(20 * max(n_target, 1)):
        if len(out) >= n_target:
            break
        d_nm = cfg.diameter_nm * max(0.3, 1.0 + cfg.diameter_spread * rng.standard_normal())
        r = 0.5 * d_nm / cfg.pixel_size_nm
        cy, cx = rng.uniform(-0.3 * r, h + 0.3 * r), rng.uniform(-0.3 * r, w + 0.3 * r)
        if all((cy - y) ** 2 + (cx - x) ** 2 > (r + rr + 2) ** 2 for y, x, rr in out):
            out.append((cy, cx, r))
    return out


def simulate_intensity(cfg: FastSimConfig, seed: int | np.random.Generator | None = None
                       ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Noise-free image intensity ``(H, W)`` float32 (vacuum = 1, before the camera), the exact
    particle mask ``(H, W)`` bool and metadata (pixel_size_nm, material, particle diameters)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    h, w = cfg.shape
    px = cfg.pixel_size_nm
    # 1. amorphous support
    phase = cfg.carbon_contrast * _bandlimited_noise(rng, (h, w), px, 0.15, 0.6)
    phase += 0.03 * _bandlimited_noise(rng, (h, w), px, 2.0, 20.0)
    img = 1.0 + phase
    mask = np.zeros((h, w), dtype=bool)
    particles = _place_particles(rng, cfg)
    d_spacings = D_SPACINGS_NM[cfg.material]
    for cy, cx, r in particles:
        y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, h)
        x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, w)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        rr2 = (yy - cy) ** 2 + (xx - cx) ** 2
        inside = rr2 <= r * r
        if not inside.any():
            continue
        mask[y0:y1, x0:x1] |= inside
        t = np.sqrt(np.clip(1.0 - rr2 / (r * r), 0.0, 1.0))  # projected thickness / max
        fringes = np.zeros_like(t)
        for k, d in enumerate(d_spacings[:2]):
            theta = rng.uniform(0, np.pi)
            g = px / d  # cycles per pixel
            fringes += (0.6 ** k) * np.cos(2 * np.pi * g * (np.cos(theta) * yy + np.sin(theta) * xx)
                                           + rng.uniform(0, 2 * np.pi))
        contrast = cfg.fringe_contrast * rng.uniform(0.6, 1.2)
        patch = img[y0:y1, x0:x1]
        patch[inside] = (1.0 - cfg.thickness_contrast * t * rng.uniform(0.7, 1.3)
                         + contrast * t * fringes + 0.3 * (patch - 1.0))[inside]
    # 3. point spread
    img = ndimage.gaussian_filter(img, cfg.psf_sigma_nm / px, mode="reflect").astype(np.float32)
    meta = {
        "pixel_size_nm": px,
        "voltage_kv": 300.0,
        "material": cfg.material,
        "particle_diameters_nm": [2 * r * px for _, _, r in particles],
    }
    return img, mask, meta


def apply_camera(intensity: np.ndarray, dose_e_per_A2: float, pixel_size_nm: float, camera: CameraModel,
                 seed: int | np.random.Generator | None = None) -> np.ndarray:
    """Raw camera counts ``(H, W)`` of ``camera.dtype`` from a noise-free intensity (vacuum = 1):
    illumination non-uniformity, Poisson electrons at the dose, detector point spread, gain,
    read noise, offset, x-ray hits. A camera with ranges is drawn first (:meth:`CameraModel.draw`)."""
    if dose_e_per_A2 <= 0:
        raise ValueError(f"dose_e_per_A2 must be > 0, got {dose_e_per_A2!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    h, w = intensity.shape
    cam = camera.draw(rng) if camera.ranged else camera
    v = (2 * np.arange(h, dtype=np.float32) / h - 1)[:, None]
    u = (2 * np.arange(w, dtype=np.float32) / w - 1)[None, :]
    gy, gx, gxy = rng.uniform(-1, 1, 3)
    illum = 1.0 + 0.5 * cam.illumination * (gy * v + gx * u + gxy * (v * v - 0.33))
    lam = np.clip(intensity * illum, 0.0, None) * np.float32(electrons_per_pixel(dose_e_per_A2, pixel_size_nm))
    counts = rng.poisson(lam).astype(np.float32)
    if cam.mtf_sigma_px > 0:
        counts = ndimage.gaussian_filter(counts, cam.mtf_sigma_px, mode="wrap")
    if cam.gain != 1.0 or cam.offset != 0.0:
        counts = counts * np.float32(cam.gain) + np.float32(cam.offset)
    if cam.read_noise > 0:
        counts += rng.normal(0.0, cam.read_noise, counts.shape).astype(np.float32)
    n_x = rng.poisson(cam.xray_rate_per_mpx * h * w / 1e6)
    if n_x:
        counts[rng.integers(0, h, n_x), rng.integers(0, w, n_x)] += cam.xray_counts * rng.uniform(0.5, 1.5, n_x)
    if np.dtype(cam.dtype).kind in "ui":
        info = np.iinfo(cam.dtype)
        counts = np.clip(np.rint(counts), info.min, info.max)
    return counts.astype(cam.dtype)


def simulate_frame(cfg: FastSimConfig, seed: int | np.random.Generator | None = None
                   ) -> tuple[np.ndarray, np.ndarray, dict]:
    """One raw frame ``(H, W)`` of ``cfg.camera.dtype`` counts, its mask ``(H, W)`` bool and
    the frame metadata (pixel_size_nm, dose_e_per_A2, voltage_kv, material, diameters)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    intensity, mask, meta = simulate_intensity(cfg, rng)
    frame = apply_camera(intensity, cfg.dose_e_per_A2, cfg.pixel_size_nm, cfg.camera, rng)
    meta["dose_e_per_A2"] = cfg.dose_e_per_A2
    return frame, mask, meta
