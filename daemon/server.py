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
from typing import Any, Sequence

import zmq

from fringelive.daemon.camera import CameraLearner
from fringelive.daemon.config import ConfigError, DaemonConfig
from fringelive.daemon.ack_ingest import DEDUPE_WINDOW, AckIngest
from fringelive.daemon.journal import MAX_REPLAY_MESSAGES, ResultsJournal
from fringelive.daemon.insitu import TrackingStage
from fringelive.daemon.metrics import DaemonMetrics, MetricsServer, RollingStats
from fringelive.daemon.modelset import Model, ModelSet, describe_model, device_of, load_models, load_replacement
from fringelive.daemon.protocol import REJECT_REASONS
from fringelive.daemon.queues import FrameQueue, RateLimitedLog
from fringelive.daemon.reject_log import RejectLog
from fringelive.daemon.unknown_keys import UnknownKeyCounter
from fringelive.daemon.sockets import open_sockets
from fringelive.daemon.sources.config import open_source
from fringelive.daemon.sources.feed import SOURCE_THREAD_PREFIX, join_sources, source_loop
from fringelive.daemon.threads import STOP, FrameThreads
from fringelive.daemon.view import ViewServer

__all__ = ["Daemon", "DaemonError", "STATES"]

log = logging.getLogger("fringelive.daemon")

STATES = ("created", "starting", "running", "draining", "stopped", "failed")
_JOIN_EXTRA_S = 120.0    # after the drain deadline: how long a frame already in compute may finish, s


class DaemonError(RuntimeError):
    """A daemon thread failed (``thread`` names it; ``__cause__`` is the original error)."""

    def __init__(self, thread: str, error: BaseException) -> None:
        super().__init__(f"daemon thread {thread!r} failed: {type(error).__name__}: {error}")
        self.thread = thread


# --- work items -------------------------------------------------------------------------------

# --- the daemon -------------------------------------------------------------------------------

class Daemon(FrameThreads):
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
        self.unknown_keys = UnknownKeyCounter(self.registry)   # fringelive_header_unknown_keys_total{key}
        self.rolling = RollingStats()
        self._tracking = TrackingStage(config.tracking, self.registry) if config.tracking.enabled else None
        #: The camera (``[camera]`` + the fit learned from the stream); survives reloads.
        self.camera = CameraLearner(config.camera)
        self.endpoints: dict[str, str] = {}
        self.state = "created"
        self._rlog = RateLimitedLog(log)
        self._reject_log = RejectLog(log)
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
        self._view: ViewServer | None = None
        self._models: ModelSet | None = None
        self._pending_models: ModelSet | None = None
        self._swap_lock = threading.Lock()
        self._swapped = threading.Condition(self._swap_lock)
        self._reload_lock = threading.Lock()
        self._started_at: float | None = None
        self._stopped = False
        self._sockets: dict[str, Any] = {}
        self._journal: ResultsJournal | None = None   # [journal] (journal.py), opened by start()
        self._next_seq = 1                            # the publisher's next ``seq`` (sequence.py)
        self._ack = AckIngest(self.metrics) if config.ingest.mode == "ack" else None  # ack_ingest.py
        self._sources: list[Any] = []     # daemon/sources: opened at start, each fed by its own thread

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
            self._open_journal()
            self._open_sockets()
            self._open_sources()
            if self.config.metrics.enabled:
                mc = self.config.metrics
                try:
                    self._metrics_server = MetricsServer(self.registry, mc.host, mc.port)
                except OSError as e:
                    raise ConfigError(f"metrics.port: cannot serve HTTP on {mc.host}:{mc.port}: {e}") from None
                self.endpoints["metrics"] = self._metrics_server.url
            if self.config.view.enabled:  # the live operator view (daemon/view.py)
                vc = self.config.view
                try:
                    self._view = ViewServer(vc, self.registry)
                except OSError as e:
                    raise ConfigError(f"view.port: cannot serve HTTP on {vc.host}:{vc.port}: {e}") from None
                self.endpoints["view"] = self._view.url
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
        for src in self._sources:
            self._spawn(SOURCE_THREAD_PREFIX + src.name, source_loop, self, src)
        ms = self._models
        log.info("started: bundle(s) %s (%s member(s), %s on %s), queue %d (%s); ingest %s, results %s, control %s, metrics %s",
                 ", ".join(m.bundle.name for m in ms.models), "/".join(str(len(m.backends)) for m in ms.models),
                 self.config.model.backend, device_of([b for m in ms.models for b in m.backends]),
                 self.config.queue.size, self.config.queue.policy, self.endpoints["ingest"],
                 self.endpoints["results"], self.endpoints["control"], self.endpoints.get("metrics", "disabled"))
        if "view" in self.endpoints:
            log.info("live view: %s (read-only; open it in a browser)", self.endpoints["view"])
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
            join_sources(self._threads, max(0.0, deadline - time.monotonic()))
            self._queue.wait_idle(max(0.0, deadline - time.monotonic()))
            self._abort.set()
            if receiver is not None:
                receiver.join()
            join_sources(self._threads, None)
            worker = self._threads.get("worker")
            if worker is not None:
                worker.join(_JOIN_EXTRA_S)
                if worker.is_alive():
                    log.error("worker still busy %.0f s after the drain deadline; abandoning its frame", _JOIN_EXTRA_S)
                    self._try_hand_over(STOP)
            finisher = self._threads.get("finisher")
            if finisher is not None:
                finisher.join(_JOIN_EXTRA_S)
                if finisher.is_alive():
                    log.error("finisher still busy %.0f s after the worker stopped; abandoning its frame", _JOIN_EXTRA_S)
            leftover = self._queue.take_all()
            for work in leftover:
                self._drop(work, "shutdown")
            self._outbox.put(STOP)
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
        self._reject_log.flush()
        counts = self.metrics.counts()
        log.info("stopped: received %d, processed %d, dropped %s, rejected %s", counts["received"],
                 counts["processed"], counts["dropped"], counts["rejected"])
        if raise_errors:
            self.raise_if_failed()
        return counts

    def _open_journal(self) -> None:
        """Open the results journal when configured; ``seq`` goes on from its last message."""
        if self.config.journal.enabled:
            def on_state(degraded: bool, entries: int) -> None:
                self.metrics.journal_degraded.set(1 if degraded else 0)
                self.metrics.journal_entries.set(entries)

            self._journal = ResultsJournal(self.config.journal, on_state)
            self._next_seq = self._journal.last_seq + 1
            if self._ack is not None:  # frames resent after a crash are recognised as duplicates
                self._ack.seed(self._journal.recent_keys(DEDUPE_WINDOW))

    def replay(self, since: int, limit: int | None = None) -> dict[str, Any]:
        """Journalled messages from ``seq`` ``since`` on, one chunk (control ``replay``)."""
        if self._journal is None:
            return {"ok": False, "error": "replay: the results journal is not enabled ([journal] enabled = true)"}
        return {"ok": True, **self._journal.read(since, limit or MAX_REPLAY_MESSAGES)}

    def _close_everything(self) -> None:
        for src in self._sources:  # those not fed by a thread (a failed start): the feeding thread closes the others
            if not (self._threads.get(SOURCE_THREAD_PREFIX + src.name) and self._threads[SOURCE_THREAD_PREFIX + src.name].is_alive()):
                src.close()
        for s in self._sockets.values():
            s.close(linger=0)
        self._sockets.clear()
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None
        if self._view is not None:
            self._view.close()
            self._view = None
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
        publisher = self._threads.get("publisher")
        if self._journal is not None and not (publisher is not None and publisher.is_alive()):
            self._journal.close()
            self._journal = None
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
            "sources": self.metrics.sources.counts(),
            "errors": [f"{n}: {type(e).__name__}: {e}" for n, e in self._errors],
            "last_seq": self._next_seq - 1,
            "journal": self._journal.describe() if self._journal is not None else {"enabled": False},
            "camera": self.camera.status(),
        }

    def stats(self) -> dict[str, Any]:
        """Latency percentiles (ms) and throughput over the last processed frames (control ``stats``)."""
        return {"frames": self.metrics.counts(), **self.rolling.summary()}

    # -- sockets ----------------------------------------------------------------------------------
    def _open_sources(self) -> None:
        """Build and start every ``[[source]]`` (kind ``zmq`` is the ingest socket itself)."""
        self.metrics.sources.add_source("zmq")
        for cfg in self.config.source:
            src = open_source(cfg)
            if src is None:
                continue
            self._sources.append(src)
            getattr(src, "start", lambda: None)()
            self.metrics.sources.add_source(src.name)
            log.info("source %s (%s) started", src.name, src.kind)

    def _open_sockets(self) -> None:
        self._ctx = zmq.Context()
        self._auth = open_sockets(self._ctx, self.config, self._sockets, self.endpoints)
