"""Daemon metrics: Prometheus collectors, frame accounting, rolling latency stats, and a closable
HTTP ``/metrics`` server.

Every message the ingest socket delivers ends as exactly one of *processed*, *dropped* (reason)
or *rejected* (reason); :class:`DaemonMetrics` keeps those counts both as Prometheus counters and
as plain numbers for the control ``status`` command, so ``received == processed + dropped +
rejected + in_flight`` at any instant and ``in_flight == 0`` once the daemon is idle.

Exported series (all names prefixed ``fringelive_``):

=======================================  ===========  ===============================================
``frames_received_total``                counter      multipart messages read from the ingest socket
``frames_processed_total``               counter      frames whose result was published
``frames_dropped_total{reason}``         counter      ``queue_full`` (drop-oldest policy), ``shutdown``
``frames_rejected_total{reason}``        counter      protocol reject codes, ``pipeline_error``
``frame_latency_seconds``                histogram    end to end: received → result sent (s)
``stage_latency_seconds{stage}``         histogram    per stage (s): queue, preprocess, inference, ...
``queue_depth``                          gauge        frames waiting for the worker
``frames_drained_total``                 counter      messages read from ZeroMQ's buffers at shutdown (also received)
``frames_duplicate_total``               counter      ack mode: duplicates of a recent (series, frame), dropped
``journal_degraded``                     gauge        1 while the results journal cannot be written, else 0
``journal_entries``                      gauge        messages held by the results journal
``results_last_seq``                     gauge        ``seq`` of the last published result or error
``queue_capacity``                       gauge        configured queue size (frames)
``source_frames_*_total{source,...}``    counter      the same accounting per frame source (daemon/sources/metrics.py)
``particles_per_frame``                  histogram    particles found per processed frame (count)
``bundle_info{name,schema,members,...}`` info         the model bundle being served
``reloads_total{outcome}``               counter      control ``reload`` commands, ``ok``/``failed``
``routed_frames_total{model}``           counter      frames computed by each bundle (routing)
``drift_frames_total{status}``           counter      frames by drift status ``ok|unknown|warn|ood``
``drift_reasons_total{reason}``          counter      drift reasons, e.g. ``dose_metadata_mismatch``
``drift_signal{signal}``                 gauge        last value of each drift signal (its unit)
``drift_cusum{signal}``                  gauge        CUSUM statistic per signal (standard deviations)
``drift_cusum_threshold``                gauge        the CUSUM threshold h in force (standard deviations)
``drift_alarm``                          gauge        1 while the stream alarm is raised, else 0
``camera_*``                             gauge        camera gain/offset in force and the learned fit (daemon/camera_metrics.py)
=======================================  ===========  ===============================================
"""

from __future__ import annotations

import collections
import math
import socket
import threading
import time
from socketserver import ThreadingMixIn
from typing import Any, Iterable, Mapping
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from fringelive.daemon.camera_metrics import CameraMetrics
from fringelive.daemon.sources.metrics import SourceCounters

__all__ = [
    "DRIFT_STATUSES",
    "STAGES",
    "DROP_REASONS",
    "LATENCY_BUCKETS_S",
    "PARTICLE_BUCKETS",
    "DaemonMetrics",
    "RollingStats",
    "MetricsServer",
    "new_registry",
]

#: Stage labels of ``fringelive_stage_latency_seconds`` that always exist (others appear when a
#: pipeline reports them). ``queue``: wait in the daemon's queue; ``publish``: encode + send.
STAGES = ("queue", "preprocess", "inference", "postprocess", "particles", "publish")
#: Why a received frame was not processed although it decoded.
DROP_REASONS = ("queue_full", "shutdown")
#: Histogram buckets in seconds: 1 ms (small frames) to 60 s (4096² frames on a slow CPU).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Drift statuses, pre-created as label values of ``drift_frames_total``.
DRIFT_STATUSES = ("ok", "unknown", "warn", "ood")
#: Histogram buckets for particles per frame (counts).
PARTICLE_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


def new_registry(process_collectors: bool = True) -> CollectorRegistry:
    """A fresh registry, with the process / platform / GC collectors that the global default
    registry would have (so one process can run several daemons, e.g. in tests/benchmarks)."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry()
    if process_collectors:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


class DaemonMetrics:
    """The daemon's Prometheus collectors on ``registry`` plus thread-safe plain frame counts.

    reject_reasons: reject codes to pre-create at 0 (the protocol's ``REJECT_REASONS`` and
    ``pipeline_error``) so dashboards see every series from the first scrape.
    """

    def __init__(self, registry: CollectorRegistry | None = None,
                 reject_reasons: Iterable[str] = ("pipeline_error",)) -> None:
        self.registry = registry if registry is not None else new_registry()
        r = self.registry
        self.received = Counter("fringelive_frames_received", "Multipart messages read from the ingest socket.",
                                registry=r)
        self.processed = Counter("fringelive_frames_processed", "Frames whose result was published.", registry=r)
        self.dropped = Counter("fringelive_frames_dropped", "Decoded frames not processed, by reason.",
                               ["reason"], registry=r)
        self.rejected = Counter("fringelive_frames_rejected",
                                "Messages refused by the decoder or failed in the pipeline, by reason.",
                                ["reason"], registry=r)
        self.frame_latency = Histogram("fringelive_frame_latency_seconds",
                                       "End-to-end latency: message received to result sent (seconds).",
                                       buckets=LATENCY_BUCKETS_S, registry=r)
        self.stage_latency = Histogram("fringelive_stage_latency_seconds", "Latency of one stage (seconds).",
                                       ["stage"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_depth = Gauge("fringelive_queue_depth", "Frames waiting for the worker.", registry=r)
        # delivery (issue #13): shutdown drain, ack-mode duplicates, results journal
        self.drained = Counter("fringelive_frames_drained", "Messages read from ZeroMQ's buffers after ingest stopped "
                               "(shutdown drain; also counted as received).", registry=r)
        self.duplicates = Counter("fringelive_frames_duplicate", "Ack-mode frames dropped as duplicates of a "
                                  "(series, frame) seen within the dedupe window (not counted as received).", registry=r)
        self.journal_degraded = Gauge("fringelive_journal_degraded", "1 while the results journal cannot be written "
                                      "(disk full, I/O error), else 0.", registry=r)
        self.journal_entries = Gauge("fringelive_journal_entries", "Messages held by the results journal.", registry=r)
        self.last_seq = Gauge("fringelive_results_last_seq", "Sequence number of the last published result or error.",
                              registry=r)
        self.queue_capacity = Gauge("fringelive_queue_capacity", "Configured queue size (frames).", registry=r)
        self.sources = SourceCounters(r)   # per-source accounting (daemon/sources/metrics.py)
        self.particles = Histogram("fringelive_particles_per_frame", "Particles found per processed frame.",
                                   buckets=PARTICLE_BUCKETS, registry=r)
        self.flatfield_refits = Counter(
            "fringelive_flatfield_refits", "Frames whose flat-field surface was refitted at a lower degree than the "
            "card's (at the card's degree it was not positive over the frame), by the degree used (rows x columns).",
            ["degree"], registry=r)
        self.uncertain = Counter("fringelive_uncertain_components",
                                 "Mask components below the particle confidence (not counted as particles).",
                                 registry=r)
        self.bundle = Info("fringelive_bundle", "The model bundle being served.", registry=r)
        self.reloads = Counter("fringelive_reloads", "Control reload commands, by outcome.", ["outcome"],
                               registry=r)
        self.routed = Counter("fringelive_routed_frames", "Frames computed by each bundle (routing).", ["model"],
                              registry=r)
        self.camera = CameraMetrics(r)   # camera gain/offset and the learned fit (daemon/camera_metrics.py)
        self.drift_frames = Counter("fringelive_drift_frames", "Processed frames by drift status.", ["status"],
                                    registry=r)
        self.drift_reasons = Counter("fringelive_drift_reasons", "Drift reasons reported, by reason.", ["reason"],
                                     registry=r)
        self.drift_signal = Gauge("fringelive_drift_signal", "Last value of each drift signal (unit of the signal).",
                                  ["signal"], registry=r)
        self.drift_cusum = Gauge("fringelive_drift_cusum", "CUSUM statistic per drift signal (standard deviations).",
                                 ["signal"], registry=r)
        self.drift_threshold = Gauge("fringelive_drift_cusum_threshold",
                                     "CUSUM alarm threshold h in force (standard deviations).", registry=r)
        self.drift_alarm = Gauge("fringelive_drift_alarm", "1 while the drift stream alarm is raised, else 0.",
                                 registry=r)
        for status in DRIFT_STATUSES:
            self.drift_frames.labels(status=status)
        for reason in DROP_REASONS:
            self.dropped.labels(reason=reason)
        for reason in reject_reasons:
            self.rejected.labels(reason=reason)
        for stage in STAGES:
            self.stage_latency.labels(stage=stage)
        for outcome in ("ok", "failed"):
            self.reloads.labels(outcome=outcome)
        self._lock = threading.Lock()
        self._received = 0
        self._processed = 0
        self._dropped: collections.Counter[str] = collections.Counter()
        self._rejected: collections.Counter[str] = collections.Counter()

    # -- frame accounting ------------------------------------------------------------------
    def frame_received(self) -> None:
        with self._lock:
            self._received += 1
        self.received.inc()

    def frame_drained(self) -> None:
        self.drained.inc()

    def frame_processed(self) -> None:
        with self._lock:
            self._processed += 1
        self.processed.inc()

    def frame_dropped(self, reason: str, n: int = 1) -> None:
        if n <= 0:
            return
        with self._lock:
            self._dropped[reason] += n
        self.dropped.labels(reason=reason).inc(n)

    def frame_rejected(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] += 1
        self.rejected.labels(reason=reason).inc()

    def counts(self) -> dict[str, Any]:
        """``{received, processed, dropped: {reason: n}, rejected: {reason: n}, in_flight}``
        (frame counts), a consistent snapshot."""
        with self._lock:
            dropped = dict(self._dropped)
            rejected = dict(self._rejected)
            done = self._processed + sum(dropped.values()) + sum(rejected.values())
            return {
                "received": self._received,
                "processed": self._processed,
                "dropped": dropped,
                "rejected": rejected,
                "in_flight": self._received - done,
            }

    # -- latencies ---------------------------------------------------------------------------
    def observe_stages(self, timings_ms: Mapping[str, float]) -> None:
        """Record per-stage times given in milliseconds (a ``total`` entry is skipped: the
        end-to-end histogram covers it)."""
        for stage, ms in timings_ms.items():
            if stage != "total" and ms is not None and math.isfinite(ms):
                self.stage_latency.labels(stage=stage).observe(max(0.0, ms) / 1000.0)

    def observe_drift(self, model: str, drift: Mapping[str, Any]) -> None:
        """Count one processed frame's drift status and reasons, set the signal and CUSUM gauges
        (``drift`` is the result header's ``drift`` map)."""
        self.routed.labels(model=model).inc()
        self.drift_frames.labels(status=str(drift.get("status", "unknown"))).inc()
        for reason in drift.get("reasons") or ():
            self.drift_reasons.labels(reason=str(reason)).inc()
        for name, value in (drift.get("signals") or {}).items():
            if value is not None and math.isfinite(value):
                self.drift_signal.labels(signal=name).set(value)
        cusum = drift.get("cusum") or {}
        for name, value in (cusum.get("statistics") or {}).items():
            self.drift_cusum.labels(signal=name).set(value)
        if cusum.get("h") is not None:
            self.drift_threshold.set(cusum["h"])
        self.drift_alarm.set(1.0 if drift.get("alarm") else 0.0)

    def observe_frame(self, card_degree: tuple[int, int], preprocess_stats: Mapping[str, Any], uncertain: int) -> None:
        """Count a processed frame's flat-field refit (its ``preprocess_stats["flatfield_degree"]``
        below the card's ``card_degree``) and its uncertain components."""
        used = preprocess_stats.get("flatfield_degree")
        if used is not None and tuple(used) != tuple(card_degree):
            self.flatfield_refits.labels(degree=f"{used[0]}x{used[1]}").inc()
        if uncertain:
            self.uncertain.inc(uncertain)

    def observe_camera(self, camera: Mapping[str, Any] | None) -> None:
        """Set the camera gauges from a result header's ``drift.camera`` map."""
        self.camera.observe(camera)

    def set_bundle(self, *, name: str, schema: int, members: int, backend: str, device: str, path: str) -> None:
        self.bundle.info({"name": name, "schema": str(schema), "members": str(members), "backend": backend,
                          "device": device, "path": path})


class RollingStats:
    """Latency percentiles and throughput over the last ``window`` processed frames (control
    ``stats``). Thread-safe."""

    def __init__(self, window: int = 1000) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window!r}")
        self._lock = threading.Lock()
        self._rows: collections.deque[tuple[float, float, dict[str, float], int]] = collections.deque(maxlen=window)
        self.window = window

    def add(self, end_to_end_ms: float, timings_ms: Mapping[str, float], particles: int) -> None:
        with self._lock:
            self._rows.append((time.monotonic(), float(end_to_end_ms), dict(timings_ms), int(particles)))

    def summary(self) -> dict[str, Any]:
        """``{frames_in_window, window, frames_per_s, latency_ms: {end_to_end: {...}, <stage>: {...}},
        particles_per_frame_mean}``; each latency entry is ``{mean, p50, p90, p99, max}`` in ms."""
        with self._lock:
            rows = list(self._rows)
        out: dict[str, Any] = {"frames_in_window": len(rows), "window": self.window, "frames_per_s": None,
                               "latency_ms": {}, "particles_per_frame_mean": None}
        if not rows:
            return out
        if len(rows) >= 2 and rows[-1][0] > rows[0][0]:
            out["frames_per_s"] = (len(rows) - 1) / (rows[-1][0] - rows[0][0])
        series: dict[str, list[float]] = {"end_to_end": [r[1] for r in rows]}
        for _, _, timings, _ in rows:
            for stage, ms in timings.items():
                series.setdefault(stage, []).append(float(ms))
        out["latency_ms"] = {k: _describe(v) for k, v in series.items()}
        out["particles_per_frame_mean"] = sum(r[3] for r in rows) / len(rows)
        return out


def _describe(values: list[float]) -> dict[str, float]:
    v = sorted(values)

    def pct(q: float) -> float:
        # nearest-rank percentile
        return v[min(len(v) - 1, max(0, math.ceil(q / 100.0 * len(v)) - 1))]

    return {"mean": sum(v) / len(v), "p50": pct(50), "p90": pct(90), "p99": pct(99), "max": v[-1]}


# --- HTTP exposition ------------------------------------------------------------------------

class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - wsgiref signature
        pass


class MetricsServer:
    """Serve ``registry`` as Prometheus text on ``http://host:port/metrics`` from a background
    thread; ``port=0`` picks a free port (read :attr:`port`). A context manager; ``close()``
    stops the thread and frees the port (unlike ``prometheus_client.start_http_server``'s
    fire-and-forget server)."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 9108) -> None:
        from prometheus_client import make_wsgi_app

        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"metrics port must be an integer in 0..65535, got {port!r}")
        server_class = _ThreadingWSGIServer
        if ":" in host:  # IPv6 literal
            server_class = type("_ThreadingWSGIServer6", (_ThreadingWSGIServer,), {"address_family": socket.AF_INET6})
        self._server = make_server(host, port, make_wsgi_app(registry), server_class=server_class,
                                   handler_class=_QuietHandler)
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="fringelive-metrics-http", daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
