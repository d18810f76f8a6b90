"""Unknown frame-header keys: which top-level keys the schema (:mod:`.header`) does not know, and
the nearest known key for a typo (``pixelsize_nm`` → ``pixel_size_nm``).

Unknown keys are kept (``FrameHeader.extra``, passed through to the result's ``meta``) but
reported: ``fringelive send`` warns at once, the daemon counts them
(``fringelive_header_unknown_keys_total{key}``) and lists them in the result header
(``unknown_keys``). Stimulus keys (:data:`fringelive.engine.frame.STIMULUS_KEYS`, the
``stimulus`` map and ``stimulus.*``) are known. The known set is derived from the one schema
definition (``header._KNOWN_KEYS`` and the :class:`~.header.FrameHeader` fields), so keys added
there are never reported."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from fringelive.daemon.protocol import header as _schema
from fringelive.engine.frame import STIMULUS_KEYS, STIMULUS_NAMESPACE, is_stimulus_key

__all__ = ["STIMULUS_KEYS", "STIMULUS_NAMESPACE", "known_header_keys", "unknown_header_keys", "nearest_known_key",
           "unknown_key_warnings"]

_NOT_WIRE_KEYS = frozenset({"extra", "tags"})   # FrameHeader fields that are not header keys of their own name


def known_header_keys() -> frozenset[str]:
    """Every top-level frame-header key with a meaning (required, dtype/byteorder, metadata)."""
    fields = {f.name for f in dataclasses.fields(_schema.FrameHeader)} - _NOT_WIRE_KEYS
    return frozenset(_schema._KNOWN_KEYS) | fields | {"tags"}


def unknown_header_keys(header: Mapping[str, Any] | Iterable[str]) -> list[str]:
    """The top-level keys of ``header`` (a map or its keys) that are neither known nor stimulus
    keys, sorted."""
    known = known_header_keys()
    return sorted(k for k in header if isinstance(k, str) and k not in known and not is_stimulus_key(k))


def nearest_known_key(key: str) -> str | None:
    """The known (or stimulus) key closest to ``key`` (difflib ratio >= 0.6), else ``None``."""
    candidates = sorted(known_header_keys() | set(STIMULUS_KEYS))
    hits = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not hits:  # a case slip (Temperature_c) scores low on raw characters
        lowered = {c.lower(): c for c in candidates}
        hits = [lowered[h] for h in difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.6)]
    return hits[0] if hits else None


def unknown_key_warnings(header: Mapping[str, Any]) -> list[str]:
    """One sentence per unknown key of ``header``, naming the nearest known key when there is one."""
    out = []
    for key in unknown_header_keys(header):
        near = nearest_known_key(key)
        hint = f" (did you mean {near!r}?)" if near else (
            f" (no known key is close; in situ stimulus values belong under {STIMULUS_NAMESPACE}.NAME or "
            f"{', '.join(STIMULUS_KEYS)})")
        out.append(f"unknown header key {key!r}{hint}; it is sent as is and reported by the daemon")
    return out
