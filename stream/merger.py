"""The result merger: one ordered result stream from several daemon workers (a SUB on every
worker's results PUB, :class:`~fringelive.stream.merge.Reorderer` per series, a PUB out;
messages pass through byte for byte). ``docs/scaling.md``."""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Iterator, Sequence

from fringelive.daemon.config import ConfigError, parse_endpoint
from fringelive.stream.merge import ReorderSettings, Reorderer

__all__ = ["DEFAULT_HWM", "DEFAULT_MERGE_ENDPOINT", "MergerError", "ResultMerger", "format_stats"]


DEFAULT_MERGE_ENDPOINT = "tcp://127.0.0.1:5566"


DEFAULT_HWM = 1000


_POLL_S = 0.05           # longest sleep of the merger thread between stop checks, s


_BATCH = 256             # messages read per wake-up before the timers are checked again


_PUB_LINGER_MS = 2000    # time the PUB may take to flush at close, ms


_MAX_WORKER_NAMES = 256  # distinct worker names counted; further ones count as "(other)"


class MergerError(RuntimeError):
    """The merger thread failed (``__cause__`` is the original error)."""


class ResultMerger:
    """SUB ← every endpoint of ``sources`` (worker results PUBs), PUB → ``endpoint`` (binds;
    tcp port 0 = OS-assigned, see :attr:`endpoint` after :meth:`start`).

    ``settings``: the reorder rules; ``hwm``: messages queued per connection on both sockets;
    ``registry``: a Prometheus registry to export the counters on (``fringelive_merge_*``);
    ``flush_on_close``: release the frames still held when closing (gaps counted).
    """

    def __init__(self, sources: Sequence[str], endpoint: str = DEFAULT_MERGE_ENDPOINT,
                 settings: ReorderSettings | None = None, *, hwm: int = DEFAULT_HWM, registry: Any = None,
                 flush_on_close: bool = True) -> None:
        sources = list(sources)
        if not sources:
            raise ValueError("sources must name at least one worker results endpoint, got []")
        try:
            for ep in sources:
                parse_endpoint(ep, bind=False, key="merge source")
            parse_endpoint(endpoint, bind=True, key="merge endpoint")
        except ConfigError as e:
            raise ValueError(str(e)) from None
        dup = sorted({ep for ep in sources if sources.count(ep) > 1})
        if dup:
            raise ValueError(f"merge sources must be distinct, got {dup[0]!r} twice")
        if isinstance(hwm, bool) or not isinstance(hwm, int) or hwm < 1:
            raise ValueError(f"hwm must be a positive number of messages, got {hwm!r}")
        self.sources = sources
        self.requested_endpoint = endpoint
        self.endpoint: str | None = None
        self.settings = settings if settings is not None else ReorderSettings()
        self.hwm = hwm
        self.flush_on_close = flush_on_close
        self._reorder: Reorderer[list[Any]] = Reorderer(self.settings)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._ctx: Any = None
        self._closed = False
        self._extra = {"malformed": 0, "published": 0}
        self._workers: dict[str, int] = {}
        self.registry = registry
        if registry is not None:
            registry.register(_MergeCollector(self))

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "ResultMerger":
        """Bind the PUB, connect the SUB to every source, start the thread. Raises ``ValueError``
        naming the endpoint that cannot be bound or connected (nothing stays open)."""
        import zmq

        if self._thread is not None or self._closed:
            raise RuntimeError("ResultMerger.start() may be called once")
        self._ctx = zmq.Context()
        sub = self._ctx.socket(zmq.SUB)
        pub = self._ctx.socket(zmq.PUB)
        try:
            sub.linger = 0
            sub.rcvhwm = self.hwm
            for topic in (b"result", b"error"):
                sub.setsockopt(zmq.SUBSCRIBE, topic)
            pub.sndhwm = self.hwm
            pub.linger = _PUB_LINGER_MS
            try:
                pub.bind(self.requested_endpoint)
            except zmq.ZMQError as e:
                raise ValueError(f"merge endpoint: cannot bind {self.requested_endpoint!r}: {e}") from None
            self.endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
            for ep in self.sources:
                try:
                    sub.connect(ep)
                except zmq.ZMQError as e:
                    raise ValueError(f"merge source: cannot connect {ep!r}: {e}") from None
        except BaseException:
            sub.close(linger=0)
            pub.close(linger=0)
            self._ctx.term()
            self._ctx = None
            raise
        self._thread = threading.Thread(target=self._run, args=(sub, pub), name="fringelive-merge", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> "ResultMerger":
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(raise_errors=exc[0] is None)

    def wait(self, timeout: float | None = None) -> bool | None:
        """Block until the thread ends (only on failure or :meth:`close`; a failure raises
        :class:`MergerError`); None when ``timeout`` seconds passed first."""
        if self._thread is None:
            raise RuntimeError("ResultMerger.wait() before start()")
        self._thread.join(timeout)
        self.raise_if_failed()
        return None if self._thread.is_alive() else True

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise MergerError(f"merger thread failed: {type(self._error).__name__}: {self._error}") from self._error

    def close(self, *, raise_errors: bool = True) -> dict[str, Any]:
        """Stop the thread (releasing held frames when ``flush_on_close``), close the sockets;
        return the final :meth:`stats`. Idempotent."""
        if not self._closed:
            self._closed = True
            self._stop.set()
            if self._thread is not None:
                self._thread.join(10.0)
            if self._ctx is not None and not (self._thread is not None and self._thread.is_alive()):
                self._ctx.term()
            self._ctx = None
        if raise_errors:
            self.raise_if_failed()
        return self.stats()

    def stats(self) -> dict[str, Any]:
        """The reorder counters (:meth:`Reorderer.stats`) plus ``malformed`` (messages dropped
        as unreadable), ``published`` (messages sent) and ``workers`` (messages per worker
        name)."""
        with self._lock:
            return {**self._reorder.stats(), **self._extra, "workers": dict(self._workers)}

    # -- the thread -----------------------------------------------------------------------------
    def _run(self, sub: Any, pub: Any) -> None:
        import zmq

        try:
            while not self._stop.is_set():
                with self._lock:
                    deadline = self._reorder.next_deadline()
                wait_s = _POLL_S if deadline is None else min(_POLL_S, max(0.0, deadline - time.monotonic()))
                if sub.poll(math.ceil(wait_s * 1000)):
                    for _ in range(_BATCH):
                        try:
                            parts = sub.recv_multipart(copy=False, flags=zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._send(pub, self._take(parts))
                with self._lock:
                    out = self._reorder.poll(time.monotonic())
                self._send(pub, out)
            if self.flush_on_close:
                with self._lock:
                    out = self._reorder.flush()
                self._send(pub, out)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            self._error = e
        finally:
            sub.close(linger=0)
            pub.close(linger=_PUB_LINGER_MS)

    def _take(self, parts: list[Any]) -> list[list[Any]]:
        series, frame, worker = _identify(parts)
        with self._lock:
            if series is False:
                self._extra["malformed"] += 1
                return []
            if worker is not None:
                key = worker if worker in self._workers or len(self._workers) < _MAX_WORKER_NAMES else "(other)"
                self._workers[key] = self._workers.get(key, 0) + 1
            nbytes = sum(p.buffer.nbytes for p in parts)
            return self._reorder.push(series, frame, parts, nbytes, time.monotonic())

    def _send(self, pub: Any, messages: list[list[Any]]) -> None:
        for parts in messages:
            pub.send_multipart(parts, copy=False)  # PUB never blocks: over its HWM it drops
        if messages:
            with self._lock:
                self._extra["published"] += len(messages)


def _identify(parts: Sequence[Any]) -> tuple[Any, int | None, str | None]:
    """``(series, frame, worker)`` of a result/error message (None where absent or invalid);
    ``(False, None, None)`` when it is no readable result or error message."""
    import msgpack

    if len(parts) < 2:
        return False, None, None
    topic = parts[0].bytes
    if not ((topic == b"result" and len(parts) in (3, 4)) or (topic == b"error" and len(parts) == 2)):
        return False, None, None
    try:
        header = msgpack.unpackb(parts[1].buffer, raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - msgpack raises many types for corrupt input
        return False, None, None
    if not isinstance(header, dict):
        return False, None, None
    series = header.get("series")
    frame = header.get("frame")
    worker = header.get("worker")
    return (series if isinstance(series, str) else None,
            frame if isinstance(frame, int) and not isinstance(frame, bool) and frame >= 0 else None,
            worker if isinstance(worker, str) else None)


class _MergeCollector:
    """Prometheus view of :meth:`ResultMerger.stats`, read at scrape time."""

    _COUNTERS = (
        ("received", "messages received from the workers"),
        ("published", "messages republished in order"),
        ("gap_frames", "frame indices given up as missing after the gap timeout"),
        ("overflow", "gaps given up early because the reorder buffer was full"),
        ("duplicates", "messages dropped as duplicates"),
        ("late", "messages that arrived after their index was given up"),
        ("unordered", "messages without series/frame, passed through at once"),
        ("malformed", "unreadable messages dropped"),
    )

    def __init__(self, merger: ResultMerger) -> None:
        self.merger = merger

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.merger.stats()
        for key, doc in self._COUNTERS:
            yield CounterMetricFamily(f"fringelive_merge_{key}", doc.capitalize() + ".", value=s[key])
        yield GaugeMetricFamily("fringelive_merge_held_frames", "Frames waiting in the reorder buffer.",
                                value=s["held_frames"])
        yield GaugeMetricFamily("fringelive_merge_held_bytes", "Bytes waiting in the reorder buffer.",
                                value=s["held_bytes"])
        per_worker = CounterMetricFamily("fringelive_merge_worker_messages", "Messages received per worker name.",
                                         labels=["worker"])
        for name, n in sorted(s["workers"].items()):
            per_worker.add_metric([name], n)
        yield per_worker


def format_stats(stats: dict[str, Any]) -> str:
    """The counters printed at exit (two lines)."""
    workers = ", ".join(f"{k}: {v}" for k, v in sorted(stats["workers"].items())) or "none named"
    return (f"fringelive merge: received {stats['received']}, published {stats['published']} "
            f"({stats['in_order']} in order, {stats['reordered']} reordered, {stats['unordered']} unordered); "
            f"gaps {stats['gaps']} ({stats['gap_frames']} frames, {stats['overflow']} on overflow), "
            f"duplicates {stats['duplicates']}, late {stats['late']}, malformed {stats['malformed']}\n"
            f"fringelive merge: messages per worker: {workers}")
