"""The model set the daemon serves: each bundle with its backends, pipeline and drift monitor
(:class:`Model`), routed by envelope (:class:`ModelSet`), loaded all or nothing and smoke-tested
before it serves (:func:`load_models`), and the reload policy (:func:`load_replacement`). The
swap between frames is the server's (``server.Daemon.reload``)."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fringelive.bundle.bundle_io import BundleError, load_bundle
from fringelive.daemon.config import ConfigError, DaemonConfig
from fringelive.engine.backends.auto import create_serving_backends
from fringelive.engine.drift import DriftMonitor
from fringelive.engine.envelope import conditions_from_meta, effective_tolerances
from fringelive.engine.frame import FrameMetadata
from fringelive.engine.pipeline import SegmentationPipeline
from fringelive.engine.routing import Route, route

__all__ = ["Model", "ModelSet", "load_model", "load_models", "load_replacement", "describe_model", "device_of"]

log = logging.getLogger("fringelive.daemon")


@dataclass
class Model:
    """What the worker computes with: the bundle, its backends and the pipeline around them;
    and what the finisher judges with: the bundle's drift monitor (CUSUM state)."""

    bundle: Any
    backends: list[Any]
    pipeline: Any
    drift: Any            # drift.DriftMonitor
    tolerances: Any       # export.card.Tolerances in force (card + config overrides), for routing
    backend_reason: str = ""  # why this kind and precision serve (``backend = "auto"``, precision gate)

    def close(self) -> None:
        try:
            self.pipeline.close()  # closes its backends
        except Exception:  # noqa: BLE001 - closing must not mask the real work
            log.exception("closing the pipeline of bundle %s failed", self.bundle.name)


@dataclass
class ModelSet:
    """The bundles being served, in configured order (the first is the default route)."""

    models: list[Model]

    @property
    def primary(self) -> Model:
        return self.models[0]

    def route(self, meta: FrameMetadata | Mapping[str, Any]) -> tuple[Model, Any]:
        """The model for a frame with metadata ``meta`` and the :class:`routing.Route`."""
        if len(self.models) == 1:
            return self.models[0], Route(0, True, 0.0, (0,))
        r = route(conditions_from_meta(meta), [(m.bundle.card.envelope, m.tolerances) for m in self.models])
        return self.models[r.index], r

    def close(self) -> None:
        for m in self.models:
            m.close()


def load_model(config: DaemonConfig, path: Path) -> Model:
    """Load + validate a bundle (card, files, drift reference), build its backends and
    pipeline, and warm it up on a test frame. Raises on any failure (nothing left open)."""
    bundle = load_bundle(path)
    settings = config.drift
    try:
        monitor = DriftMonitor(bundle.card, settings)
    except ValueError as e:
        raise BundleError(f"bundle {bundle.path}: {e}") from None
    cfg = config.model
    backends, reason = create_serving_backends(
        cfg.backend, bundle, members=list(cfg.members) if cfg.members is not None else None, device=cfg.device,
        intra_op_threads=cfg.intra_op_threads, precision=cfg.precision, **cfg.backend_options())
    log.info("bundle %s: %s", bundle.name, reason)
    try:
        pipeline = make_pipeline(bundle, backends, config)
    except BaseException:
        for b in backends:
            b.close()
        raise
    try:
        warm_up(bundle, pipeline)
    except BaseException:
        pipeline.close()
        raise
    return Model(bundle, backends, pipeline, monitor,
                  effective_tolerances(bundle.card.envelope.tolerances, settings.tolerances), reason)


def load_models(config: DaemonConfig, paths: Sequence[Path]) -> ModelSet:
    """Load every bundle of ``paths`` (all or nothing)."""
    loaded: list[Model] = []
    try:
        for p in paths:
            loaded.append(load_model(config, Path(p)))
    except BaseException:
        for m in loaded:
            m.close()
        raise
    names = [m.bundle.name for m in loaded]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        for m in loaded:
            m.close()

        raise BundleError(f"bundles {[str(p) for p in paths]}: the name(s) {dup} appear twice; routed bundles "
                          "need distinct card names (results name the bundle used)")
    return ModelSet(loaded)


def load_replacement(config: DaemonConfig, old: ModelSet | None, bundle: str | os.PathLike[str] | None,
                     bundles: Sequence[str | os.PathLike[str]] | None) -> tuple[ModelSet, int]:
    """The reload policy: the new model set for a ``reload`` request and the index of the bundle
    it replaced. ``bundles``: the whole set. ``bundle``: with one bundle served, replace it; with
    several, the one loaded from the same directory or with the same card name. Neither: re-read
    every current bundle. Everything is loaded and smoke-tested; raises on any failure (the old
    set untouched)."""
    old_names = [m.bundle.name for m in old.models] if old else []
    if bundles is not None:
        if bundle is not None:
            raise ValueError("reload takes 'bundle' or 'bundles', not both")
        if not bundles:
            raise ValueError("reload: bundles must list at least one bundle directory")
        new = load_models(config, [Path(b) for b in bundles])
        replaced = 0
    elif bundle is None:
        paths = [m.bundle.path for m in old.models] if old else config.model.bundle_paths()
        new = load_models(config, paths)
        replaced = 0
    else:
        one = load_model(config, Path(bundle))
        if old is None or len(old.models) == 1:
            new, replaced = ModelSet([one]), 0
        else:
            target = Path(bundle).resolve()
            idx = next((i for i, m in enumerate(old.models) if Path(m.bundle.path).resolve() == target), None)
            if idx is None:
                idx = next((i for i, m in enumerate(old.models) if m.bundle.name == one.bundle.name), None)
            if idx is None:
                one.close()
                raise BundleError(f"bundle {bundle} ({one.bundle.name}) matches none of the served bundles "
                                  f"{old_names} by directory or name; pass 'bundles' to replace the set")
            # the others are re-read too, so every CUSUM starts afresh on the new set
            others = [m.bundle.path for i, m in enumerate(old.models) if i != idx]
            try:
                rest = load_models(config, others)
            except BaseException:
                one.close()
                raise
            models = list(rest.models)
            models.insert(idx, one)
            new, replaced = ModelSet(models), idx
    return new, replaced


def describe_model(m: Model, backend: str) -> dict[str, Any]:
    """A served bundle for the control ``status`` reply: name, path, members, device, envelope, drift state."""
    env = m.bundle.card.envelope
    return {"name": m.bundle.name, "path": str(m.bundle.path), "schema": m.bundle.card.schema_version,
            "members": len(m.backends), "backend": backend, "device": device_of(m.backends),
            "kind": ",".join(sorted({str(getattr(b, "name", "?")) for b in m.backends})),
            "precision": ",".join(sorted({str(getattr(b, "precision", "fp32")) for b in m.backends})),
            "backend_reason": m.backend_reason,
            "envelope": {"material": list(env.material),
                         "pixel_size_nm": None if env.pixel_size_nm is None else [env.pixel_size_nm.min, env.pixel_size_nm.max],
                         "dose_e_per_A2": None if env.dose_e_per_A2 is None else [env.dose_e_per_A2.min, env.dose_e_per_A2.max]},
            "drift": m.drift.describe()}


def device_of(backends: Sequence[Any]) -> str:
    devices = sorted({str(getattr(b, "device", "?")) for b in backends})
    return ",".join(devices) if devices else "?"


def warm_up(bundle: Any, pipeline: Any) -> None:
    """Run the whole pipeline once on a small synthetic frame (Poisson noise, 100 counts/px):
    imports the compute stack, initialises the runtimes, and proves the bundle works before it
    serves (raises ``ValueError`` on non-finite or wrongly shaped output)."""
    tile = bundle.card.tile
    side = max(64, tile.min_size_px, 4 * tile.multiple_of)
    frame = np.random.default_rng(0).poisson(100.0, (side, side)).astype(np.uint16)
    result = pipeline.run(frame, {})
    probs = np.asarray(result.probabilities)
    if probs.shape != (side, side) or not np.isfinite(probs).all():
        raise ValueError(f"bundle {bundle.path}: a {side}x{side} test frame gave probabilities of shape {probs.shape}"
                         f"{'' if np.isfinite(probs).all() else ' with non-finite values'}")


def make_pipeline(bundle: Any, backends: list[Any], config: DaemonConfig) -> Any:
    """``pipeline.SegmentationPipeline`` with the ``[pipeline]`` settings; a setting the bundle
    cannot take (e.g. a tile size that is not a multiple of its ``tile.multiple_of``) raises
    :class:`ConfigError`."""

    try:
        settings = dataclasses.replace(config.pipeline, members=config.model.members, particles=config.particles)
        return SegmentationPipeline(bundle, backends, settings)
    except ValueError as e:
        raise ConfigError(f"pipeline: {e}") from None
