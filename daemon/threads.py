"""The daemon's frame threads (each ZeroMQ socket used by exactly one of them): receiver (decode,
enqueue under the queue policy), worker (route, backends), finisher (mask, particles, drift,
result), publisher (the results PUB) and control (REP), and the per-frame accounting (every
message ends processed, dropped(reason) or rejected(reason)).

:class:`FrameThreads` is the half of :class:`~fringelive.daemon.server.Daemon` that runs while
it serves; the daemon holds the state these loops share (queue, hand-off, outbox, events, model
set, metrics) and owns the lifecycle (start, drain, stop, reload)."""

from __future__ import annotations

import dataclasses
import logging
import queue as _queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import zmq

from fringelive.daemon.control import ControlHandler
from fringelive.daemon.ingest_drain import detach_ingest, drain_one
from fringelive.daemon.protocol.header_keys import unknown_header_keys
from fringelive.daemon.protocol import FrameLimits, ProtocolError, decode_frame, encode_error
from fringelive.daemon.results import drift_failed, encode_result_message, result_header, stage_timings
from fringelive.daemon.sequence import stamp_seq
from fringelive.daemon.sockets import POLL_MS, PUB_LINGER_MS
from fringelive.daemon.view import ViewFrame
from fringelive.engine.backends.base import usable_cpu_count
from fringelive.engine.camera import FrameBlocks
from fringelive.engine.preprocess import min_frame_side

__all__ = ["FrameThreads", "STOP", "WAIT_S", "preprocess_ahead_choice"]

log = logging.getLogger("fringelive.daemon")

WAIT_S = 0.05           # worker/publisher queue wait, s
STOP = object()         # end-of-stream marker in the hand-off and the outbox


@dataclass
class _Work:
    frame: Any            # protocol.Frame
    t_received: float     # time.perf_counter() when the message was read, s
    source: str = "zmq"   # the frame source's name (per-source counters, daemon/sources/metrics.py)


@dataclass
class _Prepared:
    """A frame between the worker's preprocessing (possibly ahead, in the helper thread) and its
    network inference."""

    work: _Work
    models: Any           # the ModelSet it was routed in (a reload since means: route again)
    t_started: float      # perf_counter when its preprocessing began
    model: Any = None     # the Model it was routed to
    route: Any = None     # routing.Route
    prepared: Any = None  # pipeline.PreparedFrame
    error: str | None = None  # "Type: message" when routing or preprocessing failed


@dataclass
class _Inferred:
    """A frame between the worker and the finisher."""

    work: _Work
    model: Any            # the Model it was computed with
    inference: Any        # pipeline.FrameInference
    t_started: float      # perf_counter when its preprocessing began (_Prepared.t_started)
    t_inferred: float     # perf_counter when the worker handed it over
    route: Any = None     # routing.Route


@dataclass
class _Outgoing:
    parts: list[Any]
    t_received: float | None = None          # set for results (end-to-end latency)
    timings_ms: dict[str, float] | None = None
    particles: int = 0
    t_ready: float = 0.0                     # perf_counter when the worker handed it over
    source: str = "zmq"                      # the frame source's name


STOP = object()


def preprocess_ahead_choice(setting: bool | str, devices: Sequence[str], threads: int | None,
                            cores: int) -> tuple[bool, str]:
    """Whether the worker preprocesses the next frame while the network runs (``[queue]
    preprocess_ahead``), and why. ``setting``: true, false or "auto"; ``devices``: the network
    backends' devices ("cpu", "cuda:0", a Triton URL); ``threads``: the network's CPU threads
    (None = every usable core); ``cores``: usable CPU cores. "auto" overlaps only where a core is
    left over: on 2 cores with a 2-thread CPU network the overlap made both ONNX Runtime and
    OpenVINO slower (``benchmarks/daemon_engines.py`` with ``KIND/serial``)."""
    if isinstance(setting, bool):
        return setting, f"[queue] preprocess_ahead = {str(setting).lower()}"
    off_cpu = sorted({d for d in devices if d != "cpu"})
    if devices and len(off_cpu) == len(set(devices)):
        return True, f"the network runs on {', '.join(off_cpu)}, not on this CPU's cores"
    used = cores if threads is None else min(threads, cores)
    if cores > used:
        return True, f"{cores} CPU cores, {used} used by the network"
    return False, f"the network's {used} thread(s) use all {cores} CPU core(s)"


def min_side_of(models: Any) -> int:
    """The smallest frame side (px) every served bundle's preprocessing can process (1 before
    models are loaded)."""
    members = getattr(models, "models", None) or ()
    return max((min_frame_side(m.bundle.card.preprocessing) for m in members), default=1)


class FrameThreads:
    """The thread loops of the daemon (mixed into :class:`~fringelive.daemon.server.Daemon`)."""

    # state provided by the daemon
    config: Any
    metrics: Any
    rolling: Any
    worker: str
    state: str
    endpoints: dict[str, str]
    _queue: Any
    _handoff: Any
    _outbox: Any
    _models: Any
    _rlog: Any
    _tracking: Any        # insitu.TrackingStage or None ([tracking] enabled = false)
    _view: Any            # view.ViewServer or None ([view] enabled = false, or not started)
    _reject_log: Any      # reject_log.RejectLog
    unknown_keys: Any     # unknown_keys.UnknownKeyCounter
    _threads: dict[str, threading.Thread]
    _errors: list[tuple[str, BaseException]]
    _stop_ingest: threading.Event
    _abort: threading.Event
    _stop_control: threading.Event
    _wake: threading.Event
    _journal: Any           # journal.ResultsJournal | None
    _next_seq: int          # the publisher's next sequence number (sequence.py)
    _ack: Any               # ack_ingest.AckIngest | None ([ingest] mode)

    def _maybe_swap(self) -> None:  # pragma: no cover - provided by the daemon
        raise NotImplementedError

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
                             max_message_bytes=cfg.ingest.max_message_bytes, min_side=min_side_of(self._models))
        block = cfg.queue.policy == "block"
        held: _Work | None = None
        draining = False
        ack = self._ack  # ack_ingest.AckIngest in [ingest] mode = "ack", else None
        try:
            while True:
                if ack is not None:
                    ack.flush(sock)
                if held is not None:  # block policy: wait for room, keep ZeroMQ's buffers full meanwhile
                    if self._abort.is_set():
                        self._drop(held, "shutdown")
                        held = None
                    elif self._queue.put(held, timeout=WAIT_S):
                        held = None
                        if ack is not None:
                            ack.queued(self._queue.size - len(self._queue))
                    continue
                if self._stop_ingest.is_set() and ack is not None:  # unread frames get no ack: resent
                    ack.adopt(sock)  # the publisher sends the last acks and closes it
                    sock = None
                    return
                if self._stop_ingest.is_set():  # drain what ZeroMQ already holds (ingest_drain.py)
                    if not draining:
                        draining = True
                        detach_ingest(sock, self.endpoints.get("ingest", cfg.ingest.endpoint), cfg.ingest.bind)
                    parts = drain_one(sock)
                    if parts is None:
                        return
                    self.metrics.frame_drained()
                    held = self._accept(parts, limits, block)
                    continue
                self._reject_log.flush_due()
                if limits.min_side != min_side_of(self._models):  # a reload changed the preprocessing
                    limits = dataclasses.replace(limits, min_side=min_side_of(self._models))
                try:  # blocking receive with ZMQ_RCVTIMEO = POLL_MS: one call per message
                    parts = sock.recv_multipart(copy=False)
                except zmq.Again:
                    continue
                if ack is not None:
                    parts = ack.incoming(parts)  # [identity, header, pixels] → frame parts; None: duplicate
                    if parts is None:
                        continue
                held = self._accept(parts, limits, block)
                if ack is not None and held is None:
                    ack.queued(self._queue.size - len(self._queue))
        finally:
            if sock is not None:
                sock.close(linger=0)

    def _accept(self, parts: Sequence[Any], limits: Any, block: bool) -> _Work | None:
        """Count, decode and enqueue one message; return it when the queue is full under the
        block policy (the receiver then holds it and stops reading)."""
        t = time.perf_counter()
        self.metrics.frame_received()
        self.metrics.sources.received("zmq")
        try:
            frame = decode_frame(parts, limits)
        except ProtocolError as e:
            self._reject(e.reason, e.detail, e.series, e.frame)
            return None
        except Exception as e:  # noqa: BLE001 - a decoder bug must not stop ingest
            self._reject("internal_error", f"decoder raised {type(e).__name__}: {e}", None, None)
            return None
        unknown = unknown_header_keys(frame.header.extra)
        if unknown:  # kept, but counted (and listed in the result header)
            self.unknown_keys.observe(unknown)
        work = _Work(frame, t)
        if block:
            return None if self._queue.put(work, timeout=0) else work
        for old in self._queue.put_evict(work):
            self._drop(old, "queue_full")
        return None

    def _worker_loop(self) -> None:
        """Frames off the queue → route + preprocess → network → the finisher. With
        ``[queue] preprocess_ahead`` the next queued frame is preprocessed by a helper thread
        while the network runs on this one (its errors come back through the future)."""
        models = self._models
        on, why = preprocess_ahead_choice(
            self.config.queue.preprocess_ahead, [str(b.device) for m in (models.models if models else ()) for b in m.backends],
            self.config.model.intra_op_threads, usable_cpu_count())
        log.info("preprocessing %s: %s", "ahead of the network (overlapping it)" if on else "in turn with the network", why)
        ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fringelive-preprocess") if on else None
        pending: Future[_Prepared] | None = None
        try:
            while not self._abort.is_set():
                self._maybe_swap()
                if pending is not None:
                    item, pending = pending.result(), None
                else:
                    work = self._queue.get(timeout=WAIT_S)
                    if work is None:
                        continue
                    item = self._prepare(work)
                if ahead is not None:
                    following = self._queue.get(timeout=0)
                    if following is not None:
                        pending = ahead.submit(self._prepare, following)
                handed = False
                try:
                    handed = self._process(item)
                finally:
                    if not handed:  # else the finisher marks it done
                        self._queue.task_done()
            self._maybe_swap()
        finally:
            if pending is not None:  # only after a drain deadline: the frame was taken, never run
                try:
                    self._drop(pending.result().work, "shutdown")
                finally:
                    self._queue.task_done()
            if ahead is not None:
                ahead.shutdown(wait=True)
            self._hand_over(STOP)

    def _prepare(self, work: _Work) -> _Prepared:
        """Route ``work`` and preprocess it for its bundle; never raises (errors are recorded)."""
        item = _Prepared(work, self._models, time.perf_counter())
        h = work.frame.header
        try:
            item.model, item.route = item.models.route(h.meta)
            item.prepared = item.model.pipeline.prepare(work.frame.pixels, h.meta)
        except Exception as e:  # noqa: BLE001 - a failing frame is counted, the daemon goes on
            item.error = f"{type(e).__name__}: {e}"
        return item

    def _process(self, item: _Prepared) -> bool:
        """The worker's part of one preprocessed frame: the network half of the pipeline, then
        the hand-off to the finisher. True when handed over (the finisher then owns its
        accounting)."""
        work = item.work
        if item.models is not self._models:  # a reload swapped the bundles since: route again
            t_started = item.t_started
            item = self._prepare(work)
            item.t_started = t_started
        h = work.frame.header
        if item.error is not None:
            self._reject("pipeline_error", item.error, h.series, h.frame, source=work.source)
            return False
        try:
            inference = item.model.pipeline.infer_prepared(item.prepared)
        except Exception as e:  # noqa: BLE001 - a failing frame is counted, the daemon goes on
            self._reject("pipeline_error", f"{type(e).__name__}: {e}", h.series, h.frame, source=work.source)
            return False
        self._hand_over(_Inferred(work, item.model, inference, item.t_started, time.perf_counter(), item.route))
        return True

    def _hand_over(self, item: Any) -> None:
        """Put ``item`` into the 1-deep hand-off, waiting while the finisher is busy; raises
        when the finisher thread has died (the daemon has failed then)."""
        while True:
            try:
                self._handoff.put(item, timeout=WAIT_S)
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
                item = self._handoff.get(timeout=WAIT_S)
            except _queue.Empty:
                continue
            if item is STOP:
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
        try:
            result = model.pipeline.finish(item.inference)
            t_drift = time.perf_counter()
            try:
                camera = self.camera  # the daemon's, not the bundle's (daemon/camera.py)
                blocks = FrameBlocks(work.frame.pixels, result.mask)  # computed once, for both
                drift = model.drift.assess(work.frame.pixels, h.meta, result, threshold=model.pipeline.threshold,
                                           camera=camera.settings, learned=camera.learned, blocks=blocks)
                camera.observe(work.frame.pixels, h.meta, result.mask, blocks)
            except Exception as e:  # noqa: BLE001 - a drift failure must not cost the frame its result
                self._rlog.warning("drift_error", "drift checks failed on %s/%s: %s: %s", h.series, h.frame,
                                   type(e).__name__, e)
                drift = drift_failed()
            routed = item.route if len(self._models.models if self._models else ()) > 1 else None
            timings = stage_timings(item.t_started - work.t_received, result.timings_ms, time.perf_counter() - t_drift,
                                    t_begin - item.t_inferred)
            header = result_header(h, h.to_dict(), worker=self.worker, model=model.bundle.name, result=result, drift=drift,
                                   route=routed, timings=timings, queue_depth=len(self._queue))
            if self._tracking is not None:  # registration + track ids + events (daemon/insitu.py)
                try:
                    self._tracking.apply(header, work.frame.pixels, result.mask, result.labels)
                except Exception as e:  # noqa: BLE001 - a tracking failure must not cost the frame its result
                    self._rlog.warning("tracking_error", "tracking failed on %s/%s: %s: %s", h.series, h.frame,
                                       type(e).__name__, e)
            header["unknown_keys"] = unknown_header_keys(h.extra)
            probs = result.probabilities if self.config.results.publish_probabilities else None
            parts = encode_result_message(header, result.mask, probs)
            particles = header["particles"]
        except Exception as e:  # noqa: BLE001 - a failing frame is counted, the daemon goes on
            self._reject("pipeline_error", f"{type(e).__name__}: {e}", h.series, h.frame, source=work.source)
            return
        self.metrics.observe_drift(model.bundle.name, header["drift"])
        self.metrics.observe_frame(tuple(model.bundle.card.preprocessing.flatfield_degree), result.preprocess_stats,
                                   int(result.particle_summary.get("uncertain", 0)))
        self.metrics.observe_camera(header["drift"].get("camera"))
        self._outbox.put(_Outgoing(parts, work.t_received, timings, len(particles), time.perf_counter(), work.source))
        if self._view is not None:  # one-slot mailbox: drops display frames, never blocks (daemon/view.py)
            self._view.offer(ViewFrame(header, work.frame.pixels, result.mask))

    def _publisher_loop(self, sock: Any) -> None:
        try:
            while True:
                try:
                    out = self._outbox.get(timeout=WAIT_S)
                except _queue.Empty:
                    continue
                if out is STOP:
                    return
                seq = self._next_seq
                self._next_seq += 1
                parts = stamp_seq(out.parts, seq)
                if self._journal is not None:  # before sending: whatever a subscriber saw can be replayed
                    self._journal.append(seq, parts)
                sock.send_multipart(parts, copy=False)
                self.metrics.last_seq.set(seq)
                if self._ack is not None:
                    self._ack.published(parts, seq)
                if out.t_received is not None:
                    now = time.perf_counter()
                    e2e = now - out.t_received
                    self.metrics.frame_processed()
                    self.metrics.sources.processed(out.source)
                    self.metrics.frame_latency.observe(e2e)
                    stages = dict(out.timings_ms or {})
                    stages["publish"] = stages.get("publish", 0.0) + (now - out.t_ready) * 1e3
                    self.metrics.observe_stages(stages)
                    self.metrics.particles.observe(out.particles)
                    self.rolling.add(e2e * 1e3, stages, out.particles)
        finally:
            sock.close(linger=PUB_LINGER_MS)
            if self._ack is not None:
                self._ack.close()

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
    def _reject(self, reason: str, detail: str, series: str | None, frame: int | None, *, source: str = "zmq") -> None:
        self.metrics.frame_rejected(reason)
        self.metrics.sources.rejected(source, reason)
        self._reject_log.add(reason, series, frame, detail)  # one line per reason per 10 s, with counts
        self._outbox.put(_Outgoing(encode_error(reason, detail, series=series, frame=frame, worker=self.worker)))

    def _drop(self, work: _Work, reason: str) -> None:
        h = work.frame.header
        self.metrics.frame_dropped(reason)
        self.metrics.sources.dropped(work.source, reason)
        event = "overloaded" if reason == "queue_full" else reason
        detail = ("queue full (drop-oldest policy): a newer frame took its place" if reason == "queue_full"
                  else "daemon shutting down: not processed within the drain timeout")
        self._rlog.warning(f"drop:{reason}", "dropped %s/%s: %s", h.series, h.frame, reason)
        self._outbox.put(_Outgoing(encode_error(event, detail, series=h.series, frame=h.frame, worker=self.worker)))
