"""``fringelive_header_unknown_keys_total{key}``: frames carrying a header key the schema does not
know (typos such as ``pixelsize_nm``), by key, with bounded label cardinality: the first
:data:`MAX_KEY_LABELS` distinct keys get their own label, later ones count as ``other`` (a sender
inventing keys per frame cannot grow the metric without bound)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter

__all__ = ["UnknownKeyCounter", "MAX_KEY_LABELS", "OTHER_LABEL"]

MAX_KEY_LABELS = 32            # distinct key labels before the rest are lumped as OTHER_LABEL
OTHER_LABEL = "other"
_LABEL_CHARS = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class UnknownKeyCounter:
    """Counts unknown header keys per frame on the injected ``registry``. Thread-safe."""

    def __init__(self, registry: Any, max_keys: int = MAX_KEY_LABELS) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 0:
            raise ValueError(f"max_keys must be an integer >= 0, got {max_keys!r}")
        self.max_keys = max_keys
        self.counter = Counter("fringelive_header_unknown_keys", "Frames with a header key the schema does not "
                               f"know, by key (the first {max_keys} distinct keys; later ones as '{OTHER_LABEL}')",
                               ["key"], registry=registry)
        self._labels: set[str] = set()
        self._lock = threading.Lock()

    def label_for(self, key: str) -> str:
        """``key`` itself while fewer than ``max_keys`` labels exist (and it is a tidy name), else ``other``."""
        with self._lock:
            if key in self._labels:
                return key
            if len(self._labels) < self.max_keys and _LABEL_CHARS.match(key) and key != OTHER_LABEL:
                self._labels.add(key)
                return key
        return OTHER_LABEL

    def observe(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.counter.labels(key=self.label_for(key)).inc()
