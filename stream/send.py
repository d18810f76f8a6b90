"""Sending frames to a daemon: metadata given on the command line (``KEY=VALUE``, nested with dots) merged over the files' own, and waiting for peers of a bound PUSH (``fringelive send``)."""

from __future__ import annotations

import time
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

__all__ = ['SendError', 'DEFAULT_SEND_HWM', 'DEFAULT_SEND_TIMEOUT_S', 'DEFAULT_SNDBUF_BYTES', 'merge_meta', 'parse_meta', 'parse_meta_value', 'wait_for_peers']


class SendError(RuntimeError):
    """Sending cannot go on (e.g. too few workers connected); the message says why."""


DEFAULT_SEND_HWM = 4


DEFAULT_SEND_TIMEOUT_S = 10.0

#: Kernel send buffer of ``fringelive send``'s socket (``ZMQ_SNDBUF``, bytes): with the daemon's
#: ``[ingest] rcvbuf_bytes`` it bounds how many frames a daemon restart can lose in plain PUSH mode.
DEFAULT_SNDBUF_BYTES = 16384


def parse_meta_value(text: str) -> Any:
    """``"3"`` → 3, ``"0.5"`` → 0.5, ``"true"``/``"false"`` → bool, ``"null"``/``"none"`` →
    None, anything else → the string itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_meta(items: list[str] | None) -> dict[str, Any]:
    """``["pixel_size_nm=0.02", "tags.grid=3"]`` → ``{"pixel_size_nm": 0.02, "tags": {"grid": 3}}``.
    Dotted keys nest. Raises ``ValueError`` naming the bad item."""
    meta: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        path = key.strip().split(".")
        if not sep or not all(path):
            raise ValueError(f"--meta needs KEY=VALUE (dotted keys nest), got {item!r}")
        node = meta
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--meta {item!r}: {part!r} is already a value, not a map")
            node = child
        node[path[-1]] = parse_meta_value(value)
    return meta


def merge_meta(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (maps merge, values replace)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_meta(out[key], value)
        else:
            out[key] = value
    return out


def wait_for_peers(monitor: Any, count: int, timeout_s: float) -> int:
    """Read a PUSH socket's monitor events until ``count`` peers have completed the ZeroMQ
    handshake (minus those that disconnected again); return the count. Raises :class:`SendError`
    after ``timeout_s`` seconds with fewer."""
    peers = 0
    deadline = time.monotonic() + timeout_s
    while peers < count:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0 or not monitor.poll(left_ms):
            raise SendError(f"only {peers} of {count} worker(s) connected within {timeout_s:g} s "
                            "(are the daemons running with [ingest] bind = false and this endpoint?)")
        event = recv_monitor_message(monitor)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            peers += 1
        elif event == zmq.EVENT_DISCONNECTED:
            peers = max(0, peers - 1)
    return peers
