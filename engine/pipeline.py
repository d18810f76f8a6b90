"""The segmentation pipeline: one camera frame in, probabilities, mask and particles out.

    prepare:        pixels (H, W) counts ─ preprocess (card.preprocessing, CPU numpy)
                    ─► image (H, W) float32
    infer_prepared: image ─► per member backend: tile + infer + stitch (halo tiling or Gaussian
                    blend), the class-1 probability (2 classes: sigmoid(l1 - l0)) computed per
                    tile core as it is stitched ─► member probability (H, W) ─► mean over members
    infer:          infer_prepared(prepare(pixels))
    finish:         mask = probability > threshold ─► particle statistics, area fraction

Pure: arrays in, arrays out; no sockets, no threads. :meth:`SegmentationPipeline.run` is
``finish(infer(...))``; the daemon calls the three parts from three threads, so that frame n+1's
preprocessing and frame n-1's particle statistics, drift checks and publishing overlap frame n's
network inference. Halo tiling never builds the full-frame logits: a 4096² frame costs one
probability array (64 MB) per member at a time plus the running mean.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from typing import Any, Mapping, Sequence

import numpy as np

from fringelive.bundle.bundle_io import Bundle, load_bundle
from fringelive.bundle.netspec import bytes_per_pixel_of
from fringelive.engine import tiling
from fringelive.engine.backends import Backend, create_backends
from fringelive.engine.frame import FrameMetadata
from fringelive.engine.particle_measure import BUNDLE_PARTICLE_RULES, ParticleSettings, measure_particles
from fringelive.engine.particles import area_fraction
from fringelive.engine.pipeline_frames import FrameInference, PipelineResult, PreparedFrame
from fringelive.engine.pipeline_settings import TILING_MODES, PipelineConfig, _is_int
from fringelive.engine.preprocess import preprocess
from fringelive.engine.probabilities import class1_probability, class1_probability_into

__all__ = [
    "TILING_MODES",
    "PipelineConfig",
    "PipelineResult",
    "FrameInference",
    "PreparedFrame",
    "SegmentationPipeline",
    "class1_probability",
    "class1_probability_into",
]


class SegmentationPipeline:
    """Runs a bundle's preprocessing, its member backends, the ensemble mean and particle stats.

    The pipeline owns ``backends`` (one per member, in member order): :meth:`close` closes them.
    Use as a context manager. Not re-entrant: call :meth:`run` from one thread at a time.
    """

    def __init__(self, bundle: "Bundle", backends: Sequence["Backend"], config: PipelineConfig | None = None) -> None:
        config = config or PipelineConfig()
        if not isinstance(config, PipelineConfig):
            raise TypeError(f"config must be a PipelineConfig, got {type(config).__name__}")
        backends = list(backends)
        if not backends:
            raise ValueError("backends must hold at least one backend (one per ensemble member)")
        for b in backends:
            if not callable(b):
                raise TypeError(f"each backend must be callable batch -> logits, got {type(b).__name__}")
        n_members = len(bundle.card.members)
        if config.members is not None:
            bad = [i for i in config.members if i >= n_members]
            if bad:
                raise ValueError(f"members {bad} do not exist: bundle {bundle.name!r} has {n_members} member(s)")
            if len(config.members) != len(backends):
                raise ValueError(f"config.members selects {len(config.members)} member(s) but {len(backends)} backend(s) were given")
        elif len(backends) > n_members:
            raise ValueError(f"{len(backends)} backends given for bundle {bundle.name!r} with {n_members} member(s)")
        tile = bundle.card.tile
        ts = config.tile_size
        if _is_int(ts) and ts % tile.multiple_of:
            raise ValueError(f"tile_size must be a positive multiple of {tile.multiple_of} px for bundle "
                             f"{bundle.name!r}, got {ts}")
        if config.tiling == "gaussian" and config.gaussian_roi % tile.multiple_of:
            raise ValueError(f"gaussian_roi must be a positive multiple of {tile.multiple_of} px for bundle "
                             f"{bundle.name!r}, got {config.gaussian_roi}")
        self.bundle = bundle
        self.backends = backends
        self.config = config
        self._bytes_per_pixel: float | None = None
        self._tile_sizes: dict[tuple[int, int], int | None] = {}
        self._closed = False

    @classmethod
    def from_bundle(cls, bundle: "Bundle | str", config: PipelineConfig | None = None, *, kind: str = "onnxruntime",
                    **backend_kwargs: Any) -> "SegmentationPipeline":
        """Load ``bundle`` (a :class:`Bundle` or its directory) and build its backends of ``kind``
        for ``config.members`` (keyword arguments go to
        :func:`fringelive.engine.backends.create_backends`)."""


        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle)
        config = config or PipelineConfig()
        backends = create_backends(kind, bundle, members=config.members, **backend_kwargs)
        try:
            return cls(bundle, backends, config)
        except BaseException:
            for b in backends:
                b.close()
            raise

    # -- geometry ---------------------------------------------------------------------------
    @property
    def input_limits(self) -> tuple[int, int, int] | None:
        """Largest network input ``(N, h, w)`` all backends accept (TensorRT engine profiles),
        None when unlimited."""
        limits = [lim for lim in (getattr(b, "input_limits", None) for b in self.backends) if lim]
        if not limits:
            return None
        return (min(x[0] for x in limits), min(x[1] for x in limits), min(x[2] for x in limits))

    @property
    def threshold(self) -> float:
        """The class-1 probability above which a pixel is particle: ``config.threshold``, else the
        bundle's (``card.threshold``)."""
        t = self.config.threshold
        return float(self.bundle.card.threshold if t is None else t)

    @property
    def particle_settings(self) -> ParticleSettings:
        """``config.particles`` with the rules a card carries (:data:`BUNDLE_PARTICLE_RULES`)
        resolved: each the configured one, else the bundle's (``card.particle_<name>``)."""
        ps, card = self.config.particles, self.bundle.card
        unset = {name: float(getattr(card, "particle_" + name)) for name in BUNDLE_PARTICLE_RULES
                 if getattr(ps, name) is None}
        return dataclasses.replace(ps, **unset) if unset else ps

    @property
    def batch_size(self) -> int:
        """Tiles per backend call: ``config.batch_size``, capped by the backends' input limits."""
        limits = self.input_limits
        return self.config.batch_size if limits is None else max(1, min(self.config.batch_size, limits[0]))

    def tile_size_for(self, shape: tuple[int, int]) -> int | None:
        """The halo tile core side (px) used for frames of ``shape`` (H, W); None = one pass.

        "auto" takes the largest tile within the memory budget and, when a backend limits its
        input size (TensorRT profiles), the largest whose inputs (core + halos) fit that limit.
        """
        ts = self.config.tile_size
        if ts == "whole":
            return None
        if _is_int(ts):
            return int(ts)
        shape = (int(shape[0]), int(shape[1]))
        if shape not in self._tile_sizes:
            if self._bytes_per_pixel is None:
                arch = self.bundle.card.architecture
                self._bytes_per_pixel = bytes_per_pixel_of(arch.spec, arch.name)
            tile = self.bundle.card.tile
            # Sized for one tile per call: batching saves per-call overhead only, while smaller
            # tiles cost halo FLOPs (4096²: 2×2 tiles 1.13×, 4×4 tiles 1.41× one pass).
            size = tiling.choose_tile_size(
                shape, multiple_of=tile.multiple_of, halo=tile.halo_px,
                memory_budget_bytes=int(self.config.memory_budget_mb * 2**20),
                bytes_per_pixel=self._bytes_per_pixel, batch_size=1)
            limits = self.input_limits
            if limits is not None:
                size = self._fit_input_limits(shape, size, limits[1:])
            self._tile_sizes[shape] = size
        return self._tile_sizes[shape]

    def batch_size_for(self, shape: tuple[int, int]) -> int:
        """Tiles per backend call for frames of ``shape``: at most :attr:`batch_size`, with
        ``tile_size = "auto"`` no more than the memory budget holds, and balanced so the calls
        are equal (4 tiles at most 3 per call → 2 + 2)."""
        shape = (int(shape[0]), int(shape[1]))
        cap = self.batch_size
        if self.config.tiling != "halo":
            return cap

        tile = self.bundle.card.tile
        plan = tiling.plan_tiles(shape, self.tile_size_for(shape), tile.halo_px, tile.multiple_of)
        n = len(plan.tiles)
        if self.config.tile_size in (None, "auto") and self._bytes_per_pixel is not None:
            fit = int(self.config.memory_budget_mb * 2**20 // (plan.max_input_area * self._bytes_per_pixel))
            cap = min(cap, max(1, fit))
        cap = max(1, min(cap, n))
        return -(-n // -(-n // cap))

    def _fit_input_limits(self, shape: tuple[int, int], size: int | None, limit: tuple[int, int]) -> int | None:
        tile = self.bundle.card.tile

        def fits(candidate: int | None) -> bool:
            plan = tiling.plan_tiles(shape, candidate, tile.halo_px, tile.multiple_of)
            h, w = plan.max_input_shape
            return h <= limit[0] and w <= limit[1]

        if fits(size):
            return size
        m = tile.multiple_of
        start = size if size is not None else -(-max(shape) // m) * m
        for candidate in range(start - m, 0, -m):
            if fits(candidate):
                return candidate
        raise ValueError(f"no halo tile fits the backends' largest input {limit[0]}×{limit[1]} px for frames of "
                         f"{shape[0]}×{shape[1]} px (halo {tile.halo_px} px); rebuild the engine with a larger tile size")

    # -- one frame --------------------------------------------------------------------------
    def run(self, pixels: np.ndarray, meta: FrameMetadata | Mapping[str, Any] | None = None) -> PipelineResult:
        """Segment one frame ``pixels`` (H, W) of any real dtype (camera counts):
        ``finish(infer(pixels, meta))``.

        ``meta``: :class:`~fringelive.engine.frame.FrameMetadata` (or a map of wire keys); its
        ``pixel_size_nm`` (nm/px, optional) scales the particle sizes.
        """
        return self.finish(self.infer(pixels, meta))

    def infer(self, pixels: np.ndarray, meta: FrameMetadata | Mapping[str, Any] | None = None) -> FrameInference:
        """The backend half of :meth:`run`: preprocess, every member over its tiles, the mean
        class-1 probability (and each member's mask when there are several).
        ``infer_prepared(prepare(pixels, meta))``."""
        return self.infer_prepared(self.prepare(pixels, meta))

    def prepare(self, pixels: np.ndarray, meta: FrameMetadata | Mapping[str, Any] | None = None) -> PreparedFrame:
        """Check ``pixels`` (H, W) camera counts and ``meta``, then preprocess with the card's
        parameters (CPU numpy; needs no backend, so it may run in another thread while the
        previous frame is in :meth:`infer_prepared`, and works after :meth:`close`)."""
        if not isinstance(pixels, np.ndarray):
            raise TypeError(f"pixels must be a numpy array (H, W), got {type(pixels).__name__}")
        if pixels.ndim != 2 or min(pixels.shape) < 1:
            raise ValueError(f"pixels must have shape (H, W) with H, W >= 1, got {pixels.shape}")
        if not (np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating)) \
                or pixels.dtype == np.bool_:
            raise ValueError(f"pixels must hold real numbers (integer or float), got dtype {pixels.dtype}")
        pixel_size = FrameMetadata.of(meta).pixel_size_nm
        if pixel_size is not None and not (isinstance(pixel_size, numbers.Real) and not isinstance(pixel_size, bool)
                                           and math.isfinite(pixel_size) and pixel_size > 0):
            raise ValueError(f"meta['pixel_size_nm'] must be a positive number (nm/px) or None, got {pixel_size!r}")
        t0 = time.perf_counter()
        pre_stats: dict[str, Any] = {}
        image = np.asarray(preprocess(pixels, self.bundle.card.preprocessing, device="cpu", stats=pre_stats))
        return PreparedFrame(image=image, pixel_size_nm=None if pixel_size is None else float(pixel_size),
                             preprocess_ms=(time.perf_counter() - t0) * 1e3, preprocess_stats=pre_stats,
                             preprocessing=self.bundle.card.preprocessing)

    def infer_prepared(self, prepared: PreparedFrame) -> FrameInference:
        """Every member over the tiles of a frame from :meth:`prepare`, the mean class-1
        probability (and each member's mask when there are several)."""
        if self._closed:
            raise RuntimeError("the pipeline is closed")
        if not isinstance(prepared, PreparedFrame):
            raise TypeError(f"prepared must be a PreparedFrame (from prepare), got {type(prepared).__name__}")
        if prepared.preprocessing != self.bundle.card.preprocessing:
            raise ValueError(f"the frame was prepared with other preprocessing parameters than bundle "
                             f"{self.bundle.name!r}'s: {prepared.preprocessing} != {self.bundle.card.preprocessing}")
        cfg = self.config
        card = self.bundle.card
        image = prepared.image
        pixel_size = prepared.pixel_size_nm
        pre_stats = prepared.preprocess_stats
        timings: dict[str, float] = {"preprocess": prepared.preprocess_ms}
        t = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal t
            now = time.perf_counter()
            timings[stage] = timings.get(stage, 0.0) + (now - t) * 1e3
            t = now

        shape = (int(image.shape[0]), int(image.shape[1]))
        tile_size = self.tile_size_for(shape) if cfg.tiling == "halo" else None
        batch_size = self.batch_size_for(shape)
        mean: np.ndarray | None = None
        member_masks: list[np.ndarray] = []
        for backend in self.backends:
            if cfg.tiling == "halo":
                p = tiling.infer_tiled(backend, image, tile_size=tile_size, halo=card.tile.halo_px,
                                       multiple_of=card.tile.multiple_of, batch_size=batch_size,
                                       reduce_into=class1_probability_into)
                lap("inference")
            else:
                logits = tiling.infer_gaussian(backend, image, roi_size=cfg.gaussian_roi,
                                               overlap=cfg.gaussian_overlap, batch_size=batch_size)
                lap("inference")
                if logits.shape[1:] != shape:
                    raise RuntimeError(f"tiling returned logits of shape {logits.shape} for a frame of shape {shape}")
                p = class1_probability(logits)  # a view into these logits, which are not used again
                del logits
            if p.shape != shape:
                raise RuntimeError(f"tiling returned probabilities of shape {p.shape} for a frame of shape {shape}")
            if len(self.backends) > 1:
                member_masks.append(p > self.threshold)
            if mean is None:
                mean = p
            else:
                mean += p
            del p
            lap("postprocess")
        assert mean is not None
        if len(self.backends) > 1:
            mean /= np.float32(len(self.backends))
        probabilities = np.ascontiguousarray(mean, dtype=np.float32)
        lap("postprocess")
        return FrameInference(
            probabilities=probabilities,
            member_masks=tuple(member_masks),
            pixel_size_nm=pixel_size,
            timings_ms={k: timings.get(k, 0.0) for k in ("preprocess", "inference", "postprocess")},
            tile_size=tile_size,
            members=tuple(getattr(b, "member", repr(b)) for b in self.backends),
            preprocess_stats=pre_stats,
        )

    def finish(self, inference: FrameInference) -> PipelineResult:
        """The CPU half of :meth:`run`: mask, particle statistics, area fraction. Needs no
        backend, so it may run while the next frame is in :meth:`infer` (and after
        :meth:`close`)."""
        if not isinstance(inference, FrameInference):
            raise TypeError(f"inference must be a FrameInference, got {type(inference).__name__}")
        cfg = self.config
        t0 = time.perf_counter()
        probabilities = inference.probabilities
        mask = probabilities > self.threshold
        member_masks = inference.member_masks or (mask,)
        t1 = time.perf_counter()
        measured = measure_particles(mask, inference.pixel_size_nm, self.particle_settings,
                                     min_area_px=cfg.min_particle_area_px, probabilities=probabilities)
        mask, particles = measured.mask, measured.particles
        fraction = area_fraction(mask)
        t2 = time.perf_counter()
        timings = dict(inference.timings_ms)
        timings["postprocess"] = timings.get("postprocess", 0.0) + (t1 - t0) * 1e3
        timings["particles"] = (t2 - t1) * 1e3
        timings["total"] = sum(timings.get(k, 0.0) for k in ("preprocess", "inference", "postprocess", "particles"))
        return PipelineResult(
            probabilities=probabilities,
            mask=mask,
            member_masks=tuple(member_masks),
            particles=particles,
            area_fraction=fraction,
            timings_ms={k: timings.get(k, 0.0) for k in ("preprocess", "inference", "postprocess", "particles", "total")},
            tile_size=inference.tile_size,
            members=inference.members,
            preprocess_stats=inference.preprocess_stats,
            specks=measured.specks,
            particle_summary=measured.summary,
            labels=measured.labels,
        )

    def describe(self) -> dict[str, Any]:
        """What runs, for status pages: bundle name and path, each backend's kind, device and
        member, and the configuration."""
        return {
            "bundle": self.bundle.name,
            "bundle_path": str(self.bundle.path),
            "backends": [{"kind": getattr(b, "name", type(b).__name__), "device": getattr(b, "device", None),
                          "member": getattr(b, "member", None)} for b in self.backends],
            "config": dataclasses.asdict(self.config),
        }

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Close the backends. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for b in self.backends:
            close = getattr(b, "close", None)
            if close is not None:
                close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "SegmentationPipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
