"""Control commands on the daemon's REP socket: request bytes → reply bytes, plus a client.

A request is one message part holding a JSON object (``{"cmd": "status"}``), a msgpack map
with the same keys, or a bare command word (``status``). The reply is one part in the request's
encoding (JSON for a bare word), always an object with ``ok`` (bool); on failure ``error``
(one line). Commands:

``status``  ``{"cmd": "status"}`` → state, bundle, endpoints, queue, frame counts
            (``received == processed + dropped + rejected + in_flight``).
``stats``   ``{"cmd": "stats"}`` → latency percentiles (ms) and frames/s over recent frames.
``reload``  ``{"cmd": "reload", "bundle": PATH}`` → load + validate PATH, build its backends,
            swap between frames; with several bundles served it replaces the one loaded from
            the same directory or with the same card name. ``{"cmd": "reload", "bundles":
            [PATH, ...]}`` replaces the whole set; ``{"cmd": "reload"}`` re-reads every current
            bundle (e.g. after ``fringelive calibrate``). The old bundles stay on any failure
            (``ok: false``); drift CUSUMs restart.
``ping``    ``{"cmd": "ping"}`` → ``{"ok": true, "pong": true}``.
``replay``  ``{"cmd": "replay", "since": SEQ, "limit": N}`` → one chunk of the results journal
            (``daemon/journal.py``): ``messages`` (``[[seq, [part, ...]], ...]``, parts as
            published; bytes in msgpack, base64 strings in JSON), ``first_seq``, ``last_seq``,
            ``next`` (ask again from there), ``complete``; ``ok: false`` without ``[journal]``.

:class:`ControlHandler` never raises: a malformed request or a failing command becomes an
``ok: false`` reply, so the control thread (which owns the REP socket) keeps serving.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Mapping, Protocol

import msgpack

from fringelive.daemon.protocol import configure_curve_client

__all__ = ["COMMANDS", "ControlTarget", "ControlHandler", "control_request", "decode_request", "encode_reply"]

log = logging.getLogger(__name__)

COMMANDS = ("status", "stats", "reload", "ping", "replay")
#: Largest request accepted, bytes (a path and a few keys).
MAX_REQUEST_BYTES = 64 * 1024


class ControlTarget(Protocol):
    """What the handler needs from the daemon."""

    def status(self) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...

    def reload(self, bundle: str | None = None, *, bundles: list[str] | None = None) -> dict[str, Any]: ...

    def replay(self, since: int, limit: int | None = None) -> dict[str, Any]: ...


def _replay(target: ControlTarget, request: Mapping[str, Any]) -> dict[str, Any]:
    since, limit = request.get("since", 1), request.get("limit")
    if isinstance(since, bool) or not isinstance(since, int) or since < 0:
        return {"ok": False, "error": f"replay: since must be an integer sequence number >= 0, got {since!r}"}
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        return {"ok": False, "error": f"replay: limit must be a positive integer (messages), got {limit!r}"}
    return target.replay(since, limit)


def decode_request(data: bytes) -> tuple[dict[str, Any], str]:
    """``(request map, encoding)``, encoding ``"json"`` or ``"msgpack"``. Raises ``ValueError``
    with a one-line reason."""
    if len(data) > MAX_REQUEST_BYTES:
        raise ValueError(f"request has {len(data)} bytes, above {MAX_REQUEST_BYTES}")
    stripped = data.strip()
    if stripped[:1] == b"{":
        try:
            obj = json.loads(stripped.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"request is not valid JSON: {e}") from None
        encoding = "json"
    elif stripped.isalpha() and stripped.isascii():
        return {"cmd": stripped.decode("ascii").lower()}, "json"
    else:
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception as e:  # noqa: BLE001 - msgpack raises many types for junk
            raise ValueError(f"request is neither JSON, msgpack nor a command word ({type(e).__name__})") from None
        encoding = "msgpack"
    if not isinstance(obj, dict):
        raise ValueError(f"request must be an object with a 'cmd' key, got {type(obj).__name__}")
    return obj, encoding


def encode_reply(reply: Mapping[str, Any], encoding: str) -> bytes:
    """The reply in ``encoding``; non-finite floats become null (JSON has no NaN)."""
    clean = _clean(reply)
    if encoding == "msgpack":
        return msgpack.packb(clean, use_bin_type=True, default=str)
    return json.dumps(clean, default=_json_default, allow_nan=False).encode("utf-8")


def _json_default(obj: Any) -> Any:
    """bytes (replayed message parts) as base64 text; anything else as its str."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        import base64

        return base64.b64encode(bytes(obj)).decode("ascii")
    return str(obj)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


class ControlHandler:
    """Turns one request into one reply for ``target`` (the daemon)."""

    def __init__(self, target: ControlTarget) -> None:
        self.target = target

    def handle(self, data: bytes) -> bytes:
        try:
            request, encoding = decode_request(bytes(data))
        except ValueError as e:
            return encode_reply({"ok": False, "error": str(e)}, "json")
        return encode_reply(self.dispatch(request), encoding)

    def dispatch(self, request: Mapping[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd not in COMMANDS:
            return {"ok": False, "error": f"unknown command {cmd!r}; known: {list(COMMANDS)}"}
        allowed = {"cmd", "bundle", "bundles"} if cmd == "reload" else {"cmd", "since", "limit"} if cmd == "replay" else {"cmd"}
        extra = sorted(set(request) - allowed)
        if extra:
            return {"ok": False, "error": f"{cmd}: unknown argument(s) {extra}; allowed: {sorted(allowed)}"}
        try:
            if cmd == "ping":
                return {"ok": True, "pong": True}
            if cmd == "status":
                return {"ok": True, **self.target.status()}
            if cmd == "stats":
                return {"ok": True, **self.target.stats()}
            if cmd == "replay":
                return _replay(self.target, request)
            bundle = request.get("bundle")
            if bundle is not None and (not isinstance(bundle, str) or not bundle):
                return {"ok": False, "error": f"reload: bundle must be a path string, got {bundle!r}"}
            bundles = request.get("bundles")
            if bundles is not None:
                if not isinstance(bundles, list) or not bundles or not all(isinstance(b, str) and b for b in bundles):
                    return {"ok": False, "error": f"reload: bundles must be a non-empty list of path strings, got {bundles!r}"}
                if bundle is not None:
                    return {"ok": False, "error": "reload: give 'bundle' or 'bundles', not both"}
                return self.target.reload(bundles=bundles)
            return self.target.reload(bundle)
        except Exception as e:  # noqa: BLE001 - a failing command must not kill the control thread
            log.exception("control command %r failed", cmd)
            return {"ok": False, "error": f"{cmd} failed: {type(e).__name__}: {e}"}


def control_request(endpoint: str, cmd: str, *, timeout_s: float = 10.0, context: Any = None,
                    curve: tuple[str, str] | None = None, **args: Any) -> dict[str, Any] | None:
    """Send one command to a daemon's control endpoint and return its reply, or None when no
    reply came within ``timeout_s`` seconds. ``curve``: (server public key file, client secret
    key file) when the control socket requires CURVE."""
    import zmq

    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    try:
        sock.linger = 0
        if curve is not None:
            configure_curve_client(sock, *curve)
        sock.connect(endpoint)
        sock.send(json.dumps({"cmd": cmd, **args}).encode("utf-8"))
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            return None
        return json.loads(sock.recv().decode("utf-8"))
    finally:
        sock.close(linger=0)
