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

import logging
import os
import queue as _queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import zmq

from fringelive.daemon.config import ConfigError, DaemonConfig
from fringelive.daemon.control import ControlHandler
from fringelive.daemon.metrics import DaemonMetrics, MetricsServer, RollingStats
from fringelive.daemon.modelset import Model, ModelSet, describe_model, device_of, load_models, load_replacement
from fringelive.daemon.protocol import REJECT_REASONS, FrameLimits, ProtocolError, decode_frame, encode_error
from fringelive.daemon.queues import FrameQueue, RateLimitedLog
from fringelive.daemon.results import drift_failed, encode_result_message, result_header, stage_timings
from fringelive.daemon.sockets import POLL_MS, PUB_LINGER_MS, open_sockets

__all__ = ["Daemon", "DaemonError", "STATES"]

log = logging.getLogger("fringelive.daemon")

STATES = ("created", "starting", "running", "draining", "stopped", "failed")
_WAIT_S = 0.05           # worker/publisher queue wait, s
_JOIN_EXTRA_S = 120.0    # after the drain deadline: how long a frame already in compute may finish, s


class DaemonError(RuntimeError):
    """A daemon thread failed (``thread`` names it; ``__cause__`` is the original error)."""

    def __init__(self, thread: str, error: BaseException) -> None:
        super().__init__(f"daemon thread {thread!r} failed: {type(error).__name__}: {error}")
        self.thread = thread


# --- work items -------------------------------------------------------------------------------

@dataclass
class _Work:
    frame: Any            # protocol.Frame
    t_received: float     # time.perf_counter() when the message was read, s


@dataclass
class _Inferred:
    """A frame between the worker and the finisher."""

    work: _Work
    model: Any            # the Model it was computed with
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
        self._models: ModelSet | None = None
        self._pending_models: ModelSet | None = None
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
            self._models = load_models(self.config, self.config.model.bundle_paths())
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
                 self.config.model.backend, device_of([b for m in ms.models for b in m.backends]),
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
    def _model(self) -> Model | None:
        """The first (default-route) model."""
        return None if self._models is None else self._models.primary

    def _publish_bundle_info(self, models: ModelSet) -> None:
        ms = models.models
        self.metrics.set_bundle(name=",".join(m.bundle.name for m in ms), schema=ms[0].bundle.card.schema_version,
                                members=sum(len(m.backends) for m in ms), backend=self.config.model.backend,
                                device=device_of([b for m in ms for b in m.backends]),
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
                new, replaced = load_replacement(self.config, old, bundle, bundles)
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

        return {
            "state": self.state,
            "worker": self.worker,
            "pid": os.getpid(),
            "uptime_s": (time.monotonic() - self._started_at) if self._started_at else 0.0,
            "bundle": None if ms is None else describe_model(ms.primary, self.config.model.backend),
            "bundles": [] if ms is None else [describe_model(m, self.config.model.backend) for m in ms.models],
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
        self._ctx = zmq.Context()
        self._auth = open_sockets(self._ctx, self.config, self._sockets, self.endpoints)

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
                try:  # blocking receive with ZMQ_RCVTIMEO = POLL_MS: one call per message
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
                drift = drift_failed()
            routed = item.route if len(self._models.models if self._models else ()) > 1 else None
            timings = stage_timings(item.t_started - work.t_received, result.timings_ms, time.perf_counter() - t_drift,
                                    t_begin - item.t_inferred)
            header = result_header(h, meta, worker=self.worker, model=model.bundle.name, result=result, drift=drift,
                                   route=routed, timings=timings, queue_depth=len(self._queue))
            probs = result.probabilities if self.config.results.publish_probabilities else None
            parts = encode_result_message(header, result.mask, probs)
            particles = header["particles"]
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
            sock.close(linger=PUB_LINGER_MS)

    def _control_loop(self, sock: Any) -> None:
        handler = ControlHandler(self)
        try:
            while not self._stop_control.is_set():
                if not sock.poll(POLL_MS, zmq.POLLIN):
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
