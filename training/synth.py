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

Modules: :mod:`fringelive.training.synth_config` (what to simulate: :class:`SynthConfig`,
:data:`PRESETS`), :mod:`fringelive.training.synth_sample` (one sample: drawn conditions,
simulation; seeded per sample), this module (the run).

:func:`synthesize` runs the samples in worker processes (spawned, single-threaded each), shows a
progress bar, stages finished samples in ``out/parts`` (resumable: a restarted run skips them)
and finally writes ``out/samples.h5`` + ``out/metadata.csv``. ``out/synth.json`` records the
configuration; resuming with a different one is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .multislice import abtem_version, configure_abtem
from .progress import progress_bar
from .samples import DATA_FILE, PartStore
from .synth_config import PRESETS, SynthConfig, SynthError, config_to_dict
from .synth_sample import simulate_sample

__all__ = [
    "SynthReport",
    "synthesize",
    # defined in synth_config, reachable here for the CLI's `synth` command
    "PRESETS",
    "SynthConfig",
    "SynthError",
]

log = logging.getLogger(__name__)

CONFIG_FILE = "synth.json"


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
