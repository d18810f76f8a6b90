"""Per-source frame accounting: Prometheus counters labelled ``source`` and plain counts, so that
for every source ``received == processed + dropped + rejected`` once the daemon is idle.

The ZeroMQ ingest is the source ``zmq``; a ``[[source]]`` is labelled by its ``name`` (default
``folder:<dir>``, ``dectris:<host>``, ``deapi:<host>``). The unlabelled daemon-wide counters
(``fringelive_frames_*_total``) count every source together, as before.

=================================================  ===========  ====================================
``source_frames_received_total{source}``           counter      frames a source handed to the daemon
``source_frames_processed_total{source}``          counter      of them, results published
``source_frames_dropped_total{source,reason}``     counter      of them, dropped (queue_full, shutdown)
``source_frames_rejected_total{source,reason}``    counter      of them, rejected (reject codes, pipeline_error)
=================================================  ===========  ====================================
"""

from __future__ import annotations

import collections
import threading
from typing import Any

from prometheus_client import Counter

__all__ = ["SourceCounters", "ZMQ_SOURCE"]

ZMQ_SOURCE = "zmq"


class SourceCounters:
    """The per-source counters on ``registry`` and a thread-safe snapshot (:meth:`counts`)."""

    def __init__(self, registry: Any) -> None:
        r = registry
        self._received = Counter("fringelive_source_frames_received", "Frames a source handed to the daemon.",
                                 ["source"], registry=r)
        self._processed = Counter("fringelive_source_frames_processed", "Frames of a source whose result was "
                                  "published.", ["source"], registry=r)
        self._dropped = Counter("fringelive_source_frames_dropped", "Frames of a source not processed, by reason.",
                                ["source", "reason"], registry=r)
        self._rejected = Counter("fringelive_source_frames_rejected", "Frames of a source refused or failed, by "
                                 "reason.", ["source", "reason"], registry=r)
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, Any]] = {}

    def _entry(self, source: str) -> dict[str, Any]:
        entry = self._counts.get(source)
        if entry is None:
            entry = self._counts[source] = {"received": 0, "processed": 0, "dropped": collections.Counter(),
                                            "rejected": collections.Counter()}
        return entry

    def add_source(self, source: str) -> None:
        """Create the source's series at 0 (dashboards see it before its first frame)."""
        with self._lock:
            self._entry(source)
        self._received.labels(source=source)
        self._processed.labels(source=source)

    def received(self, source: str) -> None:
        with self._lock:
            self._entry(source)["received"] += 1
        self._received.labels(source=source).inc()

    def processed(self, source: str) -> None:
        with self._lock:
            self._entry(source)["processed"] += 1
        self._processed.labels(source=source).inc()

    def dropped(self, source: str, reason: str) -> None:
        with self._lock:
            self._entry(source)["dropped"][reason] += 1
        self._dropped.labels(source=source, reason=reason).inc()

    def rejected(self, source: str, reason: str) -> None:
        with self._lock:
            self._entry(source)["rejected"][reason] += 1
        self._rejected.labels(source=source, reason=reason).inc()

    def counts(self) -> dict[str, dict[str, Any]]:
        """``{source: {received, processed, dropped: {reason: n}, rejected: {reason: n}, in_flight}}``."""
        with self._lock:
            out = {}
            for source, e in self._counts.items():
                done = e["processed"] + sum(e["dropped"].values()) + sum(e["rejected"].values())
                out[source] = {"received": e["received"], "processed": e["processed"], "dropped": dict(e["dropped"]),
                               "rejected": dict(e["rejected"]), "in_flight": e["received"] - done}
            return out
