"""The streaming daemon: sockets, threads, the bounded frame queue, accounting and lifecycle.

Threads (each ZeroMQ socket is used by exactly one of them)::

    receiver   ingest PULL ──recv_multipart(copy=False)──► decode_frame ──► FrameQueue
                 └─ rejects / drops ─► outbox
    worker     FrameQueue ──► route ──► SegmentationPipeline.infer (preprocess, tiles, backends)
                 └─ 1-deep hand-off ─►
    finisher   SegmentationPipeline.finish (mask, particles) ──► drift ──► encode_result ──► outbox
    publisher  outbox ──► results PUB ([b"result", ...] and [b"error", ...])
    control    control REP: status / stats / reload / ping (control.py)
    (+ the metrics HTTP server thread and, with CURVE, the ZAP authenticator thread)

The finisher works on frame *n* while the worker runs frame *n + 1* through the backends, so the
CPU stages overlap inference; the hand-off holds at most one frame, results leave in frame order,
and a frame counts as in progress (``FrameQueue.task_done``) until the finisher is done with it.

Queue policy ``block``: when the queue is full the receiver stops reading, ZeroMQ's receive
high-water mark fills and the sender's PUSH blocks (back-pressure). ``drop-oldest``: the oldest
queued frame makes room and is counted ``dropped{reason="queue_full"}`` (error event
``overloaded``), so the worker always works on the newest frames.

Accounting: every message read from ingest ends as exactly one of processed (its result was
sent), dropped(reason) or rejected(reason); a frame that fails in the pipeline is
``rejected{reason="pipeline_error"}`` and the daemon goes on. At :meth:`Daemon.stop` ingest stops
first, the worker drains the queue for up to ``drain_timeout_s`` seconds, frames still queued are
``dropped{reason="shutdown"}``, then the publisher flushes and the sockets close.

Thread errors (not per-frame failures, which are counted) stop nothing by themselves: they are
stored and re-raised in the main thread as :class:`DaemonError` by :meth:`Daemon.wait` and
:meth:`Daemon.stop` (LiberTEM-live style).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import queue as _queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import msgpack
import numpy as np

from fringelive.daemon.config import ConfigError, DaemonConfig, is_loopback_endpoint
from fringelive.daemon.control import ControlHandler
from fringelive.daemon.metrics import DaemonMetrics, MetricsServer, RollingStats
from fringelive.daemon.protocol import REJECT_REASONS, FrameLimits, ProtocolError, decode_frame, encode_error, encode_result, packb
from fringelive.engine.pipeline import SegmentationPipeline
from fringelive.engine.envelope import conditions_from_meta, effective_tolerances
from fringelive.engine.routing import Route, route
from fringelive.bundle.bundle_io import BundleError, load_bundle
from fringelive.engine.backends import create_backends
from fringelive.engine.drift import DriftMonitor

__all__ = ["Daemon", "DaemonError", "FrameQueue", "RateLimitedLog", "STATES"]

log = logging.getLogger("fringelive.daemon")

STATES = ("created", "starting", "running", "draining", "stopped", "failed")
_POLL_MS = 50            # receiver/control poll interval, ms
_WAIT_S = 0.05           # worker/publisher queue wait, s
_PUB_LINGER_MS = 2000    # time the PUB socket may take to flush at close, ms
_JOIN_EXTRA_S = 120.0    # after the drain deadline: how long a frame already in compute may finish, s


class DaemonError(RuntimeError):
    """A daemon thread failed (``thread`` names it; ``__cause__`` is the original error)."""

    def __init__(self, thread: str, error: BaseException) -> None:
        super().__init__(f"daemon thread {thread!r} failed: {type(error).__name__}: {error}")
        self.thread = thread


# --- the bounded queue ------------------------------------------------------------------------

class FrameQueue:
    """Bounded FIFO between receiver and worker that also tracks the item being worked on, so
    :meth:`idle` tells when everything queued has been finished. Thread-safe; one lock, three
    conditions (not empty / not full / idle) so a put wakes only a getter (``queue.Queue``
    style)."""

    def __init__(self, size: int, on_depth: Callable[[int], None] | None = None) -> None:
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size!r}")
        self.size = size
        self._items: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._in_progress = 0
        self._on_depth = on_depth or (lambda n: None)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any, timeout: float | None = None) -> bool:
        """Append, waiting up to ``timeout`` s (None: for ever) for room; False when still full."""
        with self._not_full:
            if len(self._items) >= self.size:
                if timeout is not None and timeout <= 0:
                    return False
                if not self._not_full.wait_for(lambda: len(self._items) < self.size, timeout):
                    return False
            self._items.append(item)
            self._on_depth(len(self._items))
            self._not_empty.notify()
            return True

    def put_evict(self, item: Any) -> list[Any]:
        """Append now; return the oldest items removed to make room (drop-oldest policy)."""
        with self._lock:
            evicted = []
            while len(self._items) >= self.size:
                evicted.append(self._items.popleft())
            self._items.append(item)
            self._on_depth(len(self._items))
            self._not_empty.notify()
            return evicted

    def get(self, timeout: float | None = None) -> Any | None:
        """The oldest item (now *in progress* until :meth:`task_done`), or None after ``timeout`` s."""
        with self._not_empty:
            if not self._items and not self._not_empty.wait_for(lambda: len(self._items) > 0, timeout):
                return None
            item = self._items.popleft()
            self._in_progress += 1
            self._on_depth(len(self._items))
            self._not_full.notify()
            return item

    def task_done(self) -> None:
        with self._lock:
            self._in_progress -= 1
            if not self._items and self._in_progress == 0:
                self._idle.notify_all()

    def idle(self) -> bool:
        with self._lock:
            return not self._items and self._in_progress == 0

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` s until nothing is queued or in progress."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._items and self._in_progress == 0, timeout)

    def take_all(self) -> list[Any]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._on_depth(0)
            self._not_full.notify_all()
            if self._in_progress == 0:
                self._idle.notify_all()
            return items


class RateLimitedLog:
    """At most ``burst`` lines per ``interval_s`` seconds per key; the next line after a quiet
    period reports how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, burst: int = 5) -> None:
        self.logger, self.interval_s, self.burst = logger, interval_s, burst
        self._lock = threading.Lock()
        self._state: dict[str, list[float | int]] = {}

    def warning(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            start, count, suppressed = self._state.get(key, [now, 0, 0])
            if now - start >= self.interval_s:
                start, count = now, 0
            if count >= self.burst:
                self._state[key] = [start, count, suppressed + 1]
                return
            self._state[key] = [start, count + 1, 0]
        if suppressed:
            msg = msg + " (%d similar lines suppressed)"
            args = (*args, suppressed)
        self.logger.warning(msg, *args)


# --- work items -------------------------------------------------------------------------------

@dataclass
class _Work:
    frame: Any            # protocol.Frame
    t_received: float     # time.perf_counter() when the message was read, s


@dataclass
class _Inferred:
    """A frame between the worker and the finisher."""

    work: _Work
    model: Any            # the _Model it was computed with
    inference: Any        # pipeline.FrameInference
    t_started: float      # perf_counter when the worker took it off the queue
    t_inferred: float     # perf_counter when the worker handed it over
    route: Any = None     # routing.Route


@dataclass
class _Outgoing:
    parts: list[Any]
    t_received: float | None = None          # set for results (end-to-end latency)
    timings_ms: dict[str, float] | None = None
    particles: int = 0
    t_ready: float = 0.0                     # perf_counter when the worker handed it over


_STOP = object()


@dataclass
class _Model:
    """What the worker computes with: the bundle, its backends and the pipeline around them;
    and what the finisher judges with: the bundle's drift monitor (CUSUM state)."""

    bundle: Any
    backends: list[Any]
    pipeline: Any
    drift: Any            # drift.DriftMonitor
    tolerances: Any       # export.card.Tolerances in force (card + config overrides), for routing

    def close(self) -> None:
        try:
            self.pipeline.close()  # closes its backends
        except Exception:  # noqa: BLE001 - closing must not mask the real work
            log.exception("closing the pipeline of bundle %s failed", self.bundle.name)


@dataclass
class _ModelSet:
    """The bundles being served, in configured order (the first is the default route)."""

    models: list[_Model]

    @property
    def primary(self) -> _Model:
        return self.models[0]

    def route(self, meta: dict[str, Any]) -> tuple[_Model, Any]:
        """The model for a frame with header ``meta`` and the :class:`routing.Route`."""

        if len(self.models) == 1:
            return self.models[0], Route(0, True, 0.0, (0,))
        r = route(conditions_from_meta(meta), [(m.bundle.card.envelope, m.tolerances) for m in self.models])
        return self.models[r.index], r

    def close(self) -> None:
        for m in self.models:
            m.close()


# --- the daemon -------------------------------------------------------------------------------

class Daemon:
    """The streaming segmentation daemon. ``Daemon(config, registry=None)``; a context manager
    (``__enter__`` starts, ``__exit__`` stops with the configured drain timeout).

    ``registry``: the Prometheus registry to register on (default: a fresh one with process
    collectors). After :meth:`start`, :attr:`endpoints` holds the actual addresses (ports
    given as 0 or ``*`` resolved) keyed ``ingest``, ``results``, ``control``, ``metrics``.
    """

    def __init__(self, config: DaemonConfig, registry: Any = None) -> None:
        if not isinstance(config, DaemonConfig):
            raise TypeError(f"config must be a DaemonConfig, got {type(config).__name__}")
        self.config = config
        #: The name in every result and error header (``[results] worker``, default ``<hostname>:<pid>``).
        self.worker = config.results.worker_name()
        self.metrics = DaemonMetrics(registry, reject_reasons=(*REJECT_REASONS, "pipeline_error", "internal_error"))
        self.registry = self.metrics.registry
        self.rolling = RollingStats()
        self.endpoints: dict[str, str] = {}
        self.state = "created"
        self._rlog = RateLimitedLog(log)
        self._queue = FrameQueue(config.queue.size, on_depth=self.metrics.queue_depth.set)
        self.metrics.queue_capacity.set(config.queue.size)
        self._outbox: _queue.SimpleQueue[Any] = _queue.SimpleQueue()
        self._handoff: _queue.Queue[Any] = _queue.Queue(maxsize=1)  # worker → finisher, 1 deep
        self._stop_ingest = threading.Event()
        self._abort = threading.Event()
        self._stop_control = threading.Event()
        self._wake = threading.Event()
        self._errors: list[tuple[str, BaseException]] = []
        self._threads: dict[str, threading.Thread] = {}
        self._ctx: Any = None
        self._auth: Any = None
        self._metrics_server: MetricsServer | None = None
        self._models: _ModelSet | None = None
        self._pending_models: _ModelSet | None = None
        self._swap_lock = threading.Lock()
        self._swapped = threading.Condition(self._swap_lock)
        self._reload_lock = threading.Lock()
        self._started_at: float | None = None
        self._stopped = False
        self._sockets: dict[str, Any] = {}

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "Daemon":
        """Load the bundle, build backends, bind sockets, start threads. Raises
        :class:`ConfigError` (bad bundle path/CURVE files), ``BundleError``, ``BackendUnavailable``
        or ``zmq.ZMQError`` (address in use); everything opened so far is closed again."""
        if self.state != "created":
            raise RuntimeError(f"Daemon.start() called in state {self.state!r}")
        self.state = "starting"
        try:
            self._models = self._load_models(self.config.model.bundle_paths())
            self._publish_bundle_info(self._models)
            self._open_sockets()
            if self.config.metrics.enabled:
                mc = self.config.metrics
                try:
                    self._metrics_server = MetricsServer(self.registry, mc.host, mc.port)
                except OSError as e:
                    raise ConfigError(f"metrics.port: cannot serve HTTP on {mc.host}:{mc.port}: {e}") from None
                self.endpoints["metrics"] = self._metrics_server.url
        except BaseException:
            self.state = "failed"
            self._close_everything()
            raise
        self._started_at = time.monotonic()
        self.state = "running"
        self._spawn("publisher", self._publisher_loop, self._sockets.pop("results"))
        self._spawn("finisher", self._finisher_loop)
        self._spawn("worker", self._worker_loop)
        self._spawn("receiver", self._receiver_loop, self._sockets.pop("ingest"))
        self._spawn("control", self._control_loop, self._sockets.pop("control"))
        ms = self._models
        log.info("started: bundle(s) %s (%s member(s), %s on %s), queue %d (%s); ingest %s, results %s, control %s, metrics %s",
                 ", ".join(m.bundle.name for m in ms.models), "/".join(str(len(m.backends)) for m in ms.models),
                 self.config.model.backend, _device_of([b for m in ms.models for b in m.backends]),
                 self.config.queue.size, self.config.queue.policy, self.endpoints["ingest"],
                 self.endpoints["results"], self.endpoints["control"], self.endpoints.get("metrics", "disabled"))
        return self

    def __enter__(self) -> "Daemon":
        if self.state == "created":
            self.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.stop(raise_errors=exc is None)

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return (e.g. from a control command); does not stop by itself."""
        self._wake.set()

    def wait(self, timeout: float | None = None) -> bool | None:
        """Block until :meth:`request_stop` (→ True) or a thread fails (→ raises
        :class:`DaemonError`); None when ``timeout`` seconds passed first."""
        woke = self._wake.wait(timeout)
        self.raise_if_failed()
        return True if woke else None

    def raise_if_failed(self) -> None:
        if self._errors:
            name, err = self._errors[0]
            raise DaemonError(name, err) from err

    def stop(self, drain_timeout_s: float | None = None, *, raise_errors: bool = True) -> dict[str, Any]:
        """Stop ingest, let the worker finish queued frames for up to ``drain_timeout_s`` seconds
        (default: ``lifecycle.drain_timeout_s``), drop the rest (``shutdown``), flush results,
        close everything. Idempotent. Returns the final frame counts; raises :class:`DaemonError`
        if a thread had failed (unless ``raise_errors`` is False)."""
        if self._stopped:
            if raise_errors:
                self.raise_if_failed()
            return self.metrics.counts()
        if drain_timeout_s is None:
            drain_timeout_s = self.config.lifecycle.drain_timeout_s
        if not drain_timeout_s >= 0:
            raise ValueError(f"drain_timeout_s must be >= 0, got {drain_timeout_s!r}")
        self._stopped = True
        if self._threads:
            self.state = "draining"
            t0 = time.monotonic()
            deadline = t0 + drain_timeout_s
            self._stop_ingest.set()
            log.info("draining: ingest stopped, %d frame(s) queued, drain timeout %.1f s", len(self._queue), drain_timeout_s)
            receiver = self._threads.get("receiver")
            if receiver is not None:
                receiver.join(max(0.0, deadline - time.monotonic()))
            self._queue.wait_idle(max(0.0, deadline - time.monotonic()))
            self._abort.set()
            if receiver is not None:
                receiver.join()
            worker = self._threads.get("worker")
            if worker is not None:
                worker.join(_JOIN_EXTRA_S)
                if worker.is_alive():
                    log.error("worker still busy %.0f s after the drain deadline; abandoning its frame", _JOIN_EXTRA_S)
                    self._try_hand_over(_STOP)
            finisher = self._threads.get("finisher")
            if finisher is not None:
                finisher.join(_JOIN_EXTRA_S)
                if finisher.is_alive():
                    log.error("finisher still busy %.0f s after the worker stopped; abandoning its frame", _JOIN_EXTRA_S)
            leftover = self._queue.take_all()
            for work in leftover:
                self._drop(work, "shutdown")
            self._outbox.put(_STOP)
            publisher = self._threads.get("publisher")
            if publisher is not None:
                publisher.join(10.0)
            self._stop_control.set()
            control = self._threads.get("control")
            if control is not None:
                control.join(5.0)
            counts = self.metrics.counts()
            log.info("drain finished in %.2f s: %d frame(s) processed in total, %d dropped at shutdown",
                     time.monotonic() - t0, counts["processed"], len(leftover))
        self._abort.set()
        self._stop_control.set()
        self._close_everything()
        self.state = "failed" if self._errors or self.state == "failed" else "stopped"
        counts = self.metrics.counts()
        log.info("stopped: received %d, processed %d, dropped %s, rejected %s", counts["received"],
                 counts["processed"], counts["dropped"], counts["rejected"])
        if raise_errors:
            self.raise_if_failed()
        return counts

    def _close_everything(self) -> None:
        for s in self._sockets.values():
            s.close(linger=0)
        self._sockets.clear()
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            alive = [n for n, t in self._threads.items() if t.is_alive()]
            if alive:  # a thread still owns a socket: terminating would block on it
                log.error("threads %s did not stop; leaving the ZeroMQ context open", alive)
            else:
                self._ctx.term()
            self._ctx = None
        for ms in (self._pending_models, self._models):
            if ms is not None and not (self._threads.get("worker") and self._threads["worker"].is_alive()):
                ms.close()

    # -- model ------------------------------------------------------------------------------------
    @property
    def _model(self) -> _Model | None:
        """The first (default-route) model."""
        return None if self._models is None else self._models.primary

    def _load_model(self, path: Path) -> _Model:
        """Load + validate a bundle (card, files, drift reference), build its backends and
        pipeline, and warm it up on a test frame. Raises on any failure (nothing left open)."""


        bundle = load_bundle(path)
        settings = self.config.drift
        try:
            monitor = DriftMonitor(bundle.card, settings)
        except ValueError as e:
            raise BundleError(f"bundle {bundle.path}: {e}") from None
        cfg = self.config.model
        backends = create_backends(cfg.backend, bundle, members=list(cfg.members) if cfg.members is not None else None,
                                   device=cfg.device, intra_op_threads=cfg.intra_op_threads, **cfg.backend_options())
        try:
            pipeline = _make_pipeline(bundle, backends, self.config)
        except BaseException:
            for b in backends:
                b.close()
            raise
        try:
            _warm_up(bundle, pipeline)
        except BaseException:
            pipeline.close()
            raise
        return _Model(bundle, backends, pipeline, monitor,
                      effective_tolerances(bundle.card.envelope.tolerances, settings.tolerances))

    def _load_models(self, paths: Sequence[Path]) -> _ModelSet:
        """Load every bundle of ``paths`` (all or nothing)."""
        loaded: list[_Model] = []
        try:
            for p in paths:
                loaded.append(self._load_model(Path(p)))
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
        return _ModelSet(loaded)

    def _publish_bundle_info(self, models: _ModelSet) -> None:
        ms = models.models
        self.metrics.set_bundle(name=",".join(m.bundle.name for m in ms), schema=ms[0].bundle.card.schema_version,
                                members=sum(len(m.backends) for m in ms), backend=self.config.model.backend,
                                device=_device_of([b for m in ms for b in m.backends]),
                                path=",".join(str(m.bundle.path) for m in ms))

    def reload(self, bundle: str | os.PathLike[str] | None = None, timeout_s: float = 300.0, *,
               bundles: Sequence[str | os.PathLike[str]] | None = None) -> dict[str, Any]:
        """Swap bundles between frames; on any failure the old ones stay and the reply is
        ``{"ok": False, "error": ...}``.

        ``bundles``: replace the whole set. ``bundle``: with one bundle served, replace it; with
        several, replace the one loaded from the same directory or with the same card name.
        Neither: re-read every current bundle (e.g. after ``fringelive calibrate``). New bundles
        are loaded, validated and smoke-tested first; drift CUSUMs start afresh."""

        with self._reload_lock:
            old = self._models
            old_names = [m.bundle.name for m in old.models] if old else []
            try:
                if bundles is not None:
                    if bundle is not None:
                        raise ValueError("reload takes 'bundle' or 'bundles', not both")
                    if not bundles:
                        raise ValueError("reload: bundles must list at least one bundle directory")
                    new = self._load_models([Path(b) for b in bundles])
                    replaced = 0
                elif bundle is None:
                    paths = [m.bundle.path for m in old.models] if old else self.config.model.bundle_paths()
                    new = self._load_models(paths)
                    replaced = 0
                else:
                    one = self._load_model(Path(bundle))
                    if old is None or len(old.models) == 1:
                        new, replaced = _ModelSet([one]), 0
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
                            rest = self._load_models(others)
                        except BaseException:
                            one.close()
                            raise
                        models = list(rest.models)
                        models.insert(idx, one)
                        new, replaced = _ModelSet(models), idx
            except Exception as e:  # noqa: BLE001 - any failure leaves the old bundles in place
                self.metrics.reloads.labels(outcome="failed").inc()
                msg = f"{type(e).__name__}: {e}"
                log.warning("reload of %s failed, keeping bundle(s) %s: %s", bundles or bundle or "the current bundles",
                            old_names, msg)
                return {"ok": False, "error": msg, "bundle": old_names[0] if old_names else None}
            worker = self._threads.get("worker")
            with self._swapped:
                if worker is not None and worker.is_alive():
                    self._pending_models = new
                    done = self._swapped.wait_for(lambda: self._pending_models is None, timeout_s)
                    if not done:
                        self._pending_models = None
                        new.close()
                        self.metrics.reloads.labels(outcome="failed").inc()
                        return {"ok": False, "error": f"the worker did not reach a frame boundary within {timeout_s} s",
                                "bundle": old_names[0] if old_names else None}
                else:
                    self._models = new
            if old is not None:
                old.close()  # the finisher may still finish a frame of the old set: it needs no backend
            self._publish_bundle_info(new)
            self.metrics.reloads.labels(outcome="ok").inc()
            chosen = new.models[replaced]
            log.info("reloaded: bundle(s) %s replace %s", [m.bundle.name for m in new.models], old_names)
            return {"ok": True, "bundle": chosen.bundle.name, "path": str(chosen.bundle.path),
                    "members": len(chosen.backends), "previous": old_names[replaced] if replaced < len(old_names) else None,
                    "bundles": [m.bundle.name for m in new.models], "previous_bundles": old_names}

    def _maybe_swap(self) -> None:
        if self._pending_models is None:
            return
        with self._swapped:
            if self._pending_models is not None:
                self._models = self._pending_models
                self._pending_models = None
                self._swapped.notify_all()

    # -- introspection ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """State, bundles, endpoints, queue and frame counts (control ``status``). ``bundle`` is
        the first (default-route) bundle, ``bundles`` all of them with envelope and drift state."""
        ms = self._models
        counts = self.metrics.counts()

        def describe(m: _Model) -> dict[str, Any]:
            env = m.bundle.card.envelope
            return {"name": m.bundle.name, "path": str(m.bundle.path), "schema": m.bundle.card.schema_version,
                    "members": len(m.backends), "backend": self.config.model.backend, "device": _device_of(m.backends),
                    "envelope": {"material": list(env.material),
                                 "pixel_size_nm": None if env.pixel_size_nm is None else [env.pixel_size_nm.min, env.pixel_size_nm.max],
                                 "dose_e_per_A2": None if env.dose_e_per_A2 is None else [env.dose_e_per_A2.min, env.dose_e_per_A2.max]},
                    "drift": m.drift.describe()}

        return {
            "state": self.state,
            "worker": self.worker,
            "pid": os.getpid(),
            "uptime_s": (time.monotonic() - self._started_at) if self._started_at else 0.0,
            "bundle": None if ms is None else describe(ms.primary),
            "bundles": [] if ms is None else [describe(m) for m in ms.models],
            "endpoints": dict(self.endpoints),
            "queue": {"depth": len(self._queue), "size": self.config.queue.size, "policy": self.config.queue.policy},
            "frames": counts,
            "errors": [f"{n}: {type(e).__name__}: {e}" for n, e in self._errors],
        }

    def stats(self) -> dict[str, Any]:
        """Latency percentiles (ms) and throughput over the last processed frames (control ``stats``)."""
        return {"frames": self.metrics.counts(), **self.rolling.summary()}

    # -- sockets ----------------------------------------------------------------------------------
    def _open_sockets(self) -> None:
        import zmq

        cfg = self.config
        self._ctx = zmq.Context()
        curve_keys = None
        if cfg.curve.enabled:
            curve_keys = self._start_curve()
        ingest = self._ctx.socket(zmq.PULL)
        self._sockets["ingest"] = ingest
        ingest.rcvhwm = cfg.ingest.rcvhwm
        ingest.maxmsgsize = cfg.ingest.max_message_bytes
        ingest.linger = 0
        ingest.rcvtimeo = _POLL_MS  # the receiver wakes this often to check for stop
        if curve_keys:
            _curve_server(ingest, curve_keys)
        self.endpoints["ingest"] = _attach(ingest, cfg.ingest.endpoint, cfg.ingest.bind, "ingest.endpoint")

        results = self._ctx.socket(zmq.PUB)
        self._sockets["results"] = results
        results.sndhwm = cfg.results.sndhwm
        results.linger = _PUB_LINGER_MS
        if curve_keys:
            _curve_server(results, curve_keys)
        self.endpoints["results"] = _attach(results, cfg.results.endpoint, True, "results.endpoint")

        control = self._ctx.socket(zmq.REP)
        self._sockets["control"] = control
        control.linger = 0
        if curve_keys and cfg.curve.control:
            _curve_server(control, curve_keys)
        self.endpoints["control"] = _attach(control, cfg.control.endpoint, True, "control.endpoint")
        if not is_loopback_endpoint(cfg.control.endpoint) and not (curve_keys and cfg.curve.control):
            log.warning("control endpoint %s is reachable beyond loopback without CURVE; anyone there can reload "
                        "bundles (set [curve] control = true)", self.endpoints["control"])

    def _start_curve(self) -> tuple[bytes, bytes]:
        import zmq
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        cc = self.config.curve
        if not zmq.has("curve"):
            raise ConfigError(f"curve.enabled: this libzmq {zmq.zmq_version()} was built without CURVE support")
        try:
            public, secret = zmq.auth.load_certificate(cc.server_secret_key)
        except (OSError, ValueError) as e:
            raise ConfigError(f"curve.server_secret_key: cannot read {str(cc.server_secret_key)!r}: {e}") from None
        if secret is None:
            raise ConfigError(f"curve.server_secret_key: {str(cc.server_secret_key)!r} holds no secret key "
                              "(use the .key_secret file made by zmq.auth.create_certificates)")
        clients = sorted(Path(cc.authorized_clients_dir).glob("*.key"))
        if not clients:
            log.warning("curve: no client public keys (*.key) in %s; every client will be refused", cc.authorized_clients_dir)
        self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger("fringelive.daemon.auth"))
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(cc.authorized_clients_dir))
        log.info("curve: enabled on ingest and results%s, %d authorised client key(s) in %s",
                 " and control" if cc.control else "", len(clients), cc.authorized_clients_dir)
        return public, secret

    # -- threads ----------------------------------------------------------------------------------
    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            try:
                target(*args)
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                log.exception("thread %s failed", name)
                self._errors.append((name, e))
                self.state = "failed"
                self._wake.set()

        t = threading.Thread(target=run, name=f"fringelive-{name}", daemon=True)
        self._threads[name] = t
        t.start()

    def _receiver_loop(self, sock: Any) -> None:
        import zmq

        cfg = self.config
        limits = FrameLimits(max_pixels=cfg.ingest.max_frame_pixels, max_side=cfg.ingest.max_side,
                             max_message_bytes=cfg.ingest.max_message_bytes)
        block = cfg.queue.policy == "block"
        held: _Work | None = None
        try:
            while True:
                if held is not None:  # block policy: wait for room, keep ZeroMQ's buffers full meanwhile
                    if self._queue.put(held, timeout=_WAIT_S):
                        held = None
                    elif self._abort.is_set():
                        self._drop(held, "shutdown")
                        held = None
                    continue
                if self._stop_ingest.is_set():
                    return
                try:  # blocking receive with ZMQ_RCVTIMEO = _POLL_MS: one call per message
                    parts = sock.recv_multipart(copy=False)
                except zmq.Again:
                    continue
                held = self._accept(parts, limits, block)
        finally:
            sock.close(linger=0)

    def _accept(self, parts: Sequence[Any], limits: Any, block: bool) -> _Work | None:
        """Count, decode and enqueue one message; return it when the queue is full under the
        block policy (the receiver then holds it and stops reading)."""
        t = time.perf_counter()
        self.metrics.frame_received()
        try:
            frame = decode_frame(parts, limits)
        except ProtocolError as e:
            self._reject(e.reason, e.detail, e.series, e.frame)
            return None
        except Exception as e:  # noqa: BLE001 - a decoder bug must not stop ingest
            self._reject("internal_error", f"decoder raised {type(e).__name__}: {e}", None, None)
            return None
        work = _Work(frame, t)
        if block:
            return None if self._queue.put(work, timeout=0) else work
        for old in self._queue.put_evict(work):
            self._drop(old, "queue_full")
        return None

    def _worker_loop(self) -> None:
        try:
            while not self._abort.is_set():
                self._maybe_swap()
                work = self._queue.get(timeout=_WAIT_S)
                if work is None:
                    continue
                handed = False
                try:
                    handed = bool(self._process(work))
                finally:
                    if not handed:  # else the finisher marks it done
                        self._queue.task_done()
            self._maybe_swap()
        finally:
            self._hand_over(_STOP)

    def _process(self, work: _Work) -> bool:
        """The worker's part of one frame: the backend half of the pipeline, then the hand-off
        to the finisher. True when handed over (the finisher then owns its accounting)."""
        t0 = time.perf_counter()
        models = self._models
        assert models is not None
        h = work.frame.header
        try:
            model, route = models.route(h.to_dict())
            inference = model.pipeline.infer(work.frame.pixels, h.to_dict())
        except Exception as e:  # noqa: BLE001 - a failing frame is counted, the daemon goes on
            self._reject("pipeline_error", f"{type(e).__name__}: {e}", h.series, h.frame)
            return False
        self._hand_over(_Inferred(work, model, inference, t0, time.perf_counter(), route))
        return True

    def _hand_over(self, item: Any) -> None:
        """Put ``item`` into the 1-deep hand-off, waiting while the finisher is busy; raises
        when the finisher thread has died (the daemon has failed then)."""
        while True:
            try:
                self._handoff.put(item, timeout=_WAIT_S)
                return
            except _queue.Full:
                finisher = self._threads.get("finisher")
                if finisher is None or not finisher.is_alive():
                    raise RuntimeError("the finisher thread is not running") from None

    def _try_hand_over(self, item: Any) -> None:
        try:
            self._handoff.put_nowait(item)
        except _queue.Full:
            pass

    def _finisher_loop(self) -> None:
        while True:
            try:
                item = self._handoff.get(timeout=_WAIT_S)
            except _queue.Empty:
                continue
            if item is _STOP:
                return
            try:
                self._finish(item)
            finally:
                self._queue.task_done()

    def _finish(self, item: _Inferred) -> None:
        """The finisher's part of one frame: mask, particles, result header, encoding; then to
        the publisher."""
        t_begin = time.perf_counter()
        work, model = item.work, item.model
        h = work.frame.header
        meta = h.to_dict()
        try:
            result = model.pipeline.finish(item.inference)
            t_drift = time.perf_counter()
            try:
                drift = model.drift.assess(work.frame.pixels, meta, result, threshold=model.pipeline.config.threshold)
            except Exception as e:  # noqa: BLE001 - a drift failure must not cost the frame its result
                self._rlog.warning("drift_error", "drift checks failed on %s/%s: %s: %s", h.series, h.frame,
                                   type(e).__name__, e)
                drift = {"status": "unknown", "reasons": ["drift_error"], "signals": {}, "p_values": {},
                         "estimates": {}, "conditions": {}, "cusum": {}, "alarm": False, "calibrated": False}
            route = item.route
            if route is not None and len(self._models.models if self._models else ()) > 1:
                drift["route"] = {"fits": bool(route.fits), "candidates": len(route.candidates),
                                  "distance": round(float(route.distance), 4)}
            timings = {"queue": (item.t_started - work.t_received) * 1e3,
                       **{k: float(v) for k, v in result.timings_ms.items()},
                       "drift": (time.perf_counter() - t_drift) * 1e3,
                       "handoff": (t_begin - item.t_inferred) * 1e3}
            particles = list(result.particles)
            header = {
                "series": h.series, "frame": h.frame, "worker": self.worker, "model": model.bundle.name,
                "particle_count": len(particles), "particles": particles,
                "area_fraction": float(result.area_fraction),
                "drift": _plain(drift),
                "timings_ms": timings,
                "queue_depth": len(self._queue),
                "meta": meta,
            }
            t_enc = time.perf_counter()
            probs = result.probabilities if self.config.results.publish_probabilities else None
            parts = encode_result(header, result.mask, probs)
            timings["publish"] = (time.perf_counter() - t_enc) * 1e3
            sent = msgpack.unpackb(parts[1], raw=False, strict_map_key=False)
            sent["timings_ms"] = timings
            parts[1] = packb(sent)
        except Exception as e:  # noqa: BLE001 - a failing frame is counted, the daemon goes on
            self._reject("pipeline_error", f"{type(e).__name__}: {e}", h.series, h.frame)
            return
        self.metrics.observe_drift(model.bundle.name, header["drift"])
        self._outbox.put(_Outgoing(parts, work.t_received, timings, len(particles), time.perf_counter()))

    def _publisher_loop(self, sock: Any) -> None:
        try:
            while True:
                try:
                    out = self._outbox.get(timeout=_WAIT_S)
                except _queue.Empty:
                    continue
                if out is _STOP:
                    return
                sock.send_multipart(out.parts, copy=False)
                if out.t_received is not None:
                    now = time.perf_counter()
                    e2e = now - out.t_received
                    self.metrics.frame_processed()
                    self.metrics.frame_latency.observe(e2e)
                    stages = dict(out.timings_ms or {})
                    stages["publish"] = stages.get("publish", 0.0) + (now - out.t_ready) * 1e3
                    self.metrics.observe_stages(stages)
                    self.metrics.particles.observe(out.particles)
                    self.rolling.add(e2e * 1e3, stages, out.particles)
        finally:
            sock.close(linger=_PUB_LINGER_MS)

    def _control_loop(self, sock: Any) -> None:
        import zmq

        handler = ControlHandler(self)
        try:
            while not self._stop_control.is_set():
                if not sock.poll(_POLL_MS, zmq.POLLIN):
                    continue
                request = sock.recv(copy=False)
                sock.send(handler.handle(request.bytes))
        finally:
            sock.close(linger=0)

    # -- accounting helpers (any thread) ----------------------------------------------------------
    def _reject(self, reason: str, detail: str, series: str | None, frame: int | None) -> None:
        self.metrics.frame_rejected(reason)
        self._rlog.warning(f"reject:{reason}", "rejected %s/%s: %s: %s", series, frame, reason, detail)
        self._outbox.put(_Outgoing(encode_error(reason, detail, series=series, frame=frame, worker=self.worker)))

    def _drop(self, work: _Work, reason: str) -> None:
        h = work.frame.header
        self.metrics.frame_dropped(reason)
        event = "overloaded" if reason == "queue_full" else reason
        detail = ("queue full (drop-oldest policy): a newer frame took its place" if reason == "queue_full"
                  else "daemon shutting down: not processed within the drain timeout")
        self._rlog.warning(f"drop:{reason}", "dropped %s/%s: %s", h.series, h.frame, reason)
        self._outbox.put(_Outgoing(encode_error(event, detail, series=h.series, frame=h.frame, worker=self.worker)))


# --- helpers ----------------------------------------------------------------------------------

def _attach(sock: Any, endpoint: str, bind: bool, key: str) -> str:
    """Bind or connect; return the actual endpoint (OS-assigned tcp port resolved)."""
    import zmq

    try:
        if bind:
            sock.bind(endpoint)
            return sock.getsockopt_string(zmq.LAST_ENDPOINT)
        sock.connect(endpoint)
        return endpoint
    except zmq.ZMQError as e:
        raise ConfigError(f"{key}: cannot {'bind' if bind else 'connect'} {endpoint!r}: {e}") from None


def _curve_server(sock: Any, keys: tuple[bytes, bytes]) -> None:
    sock.curve_publickey, sock.curve_secretkey = keys
    sock.curve_server = True


def _device_of(backends: Sequence[Any]) -> str:
    devices = sorted({str(getattr(b, "device", "?")) for b in backends})
    return ",".join(devices) if devices else "?"


def _plain(obj: Any) -> Any:
    """Plain msgpack-able data: numpy scalars to Python numbers, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _warm_up(bundle: Any, pipeline: Any) -> None:
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


def _make_pipeline(bundle: Any, backends: list[Any], config: DaemonConfig) -> Any:
    """``pipeline.SegmentationPipeline`` with the ``[pipeline]`` settings; a setting the bundle
    cannot take (e.g. a tile size that is not a multiple of its ``tile.multiple_of``) raises
    :class:`ConfigError`."""

    try:
        settings = dataclasses.replace(config.pipeline, members=config.model.members)
        return SegmentationPipeline(bundle, backends, settings)
    except ValueError as e:
        raise ConfigError(f"pipeline: {e}") from None
