"""The daemon's ZeroMQ sockets: ingest PULL, results PUB, control REP, bound or connected as
configured, with CURVE (server key pair + ZAP authenticator) when enabled."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from fringelive.daemon.config import CurveConfig, DaemonConfig
from fringelive.daemon.endpoints import ConfigError, is_loopback_endpoint

__all__ = ["open_sockets", "start_curve", "POLL_MS", "PUB_LINGER_MS"]

log = logging.getLogger("fringelive.daemon")

POLL_MS = 50            # receiver/control poll interval, ms
PUB_LINGER_MS = 2000    # time the PUB socket may take to flush at close, ms


def open_sockets(ctx: Any, cfg: DaemonConfig, sockets: dict[str, Any], endpoints: dict[str, str]) -> Any:
    """Create, configure and bind/connect the ingest PULL, results PUB and control REP sockets of
    ``ctx`` into ``sockets`` (so a failure leaves them to be closed), their actual addresses into
    ``endpoints``; with CURVE, start the authenticator and return it (else None)."""
    curve_keys, auth = start_curve(ctx, cfg.curve) if cfg.curve.enabled else (None, None)
    ingest = ctx.socket(zmq.ROUTER if cfg.ingest.mode == "ack" else zmq.PULL)  # ack: daemon/ack_ingest.py
    if cfg.ingest.mode == "ack":
        ingest.router_handover = 1  # a sender that reconnects with its routing id gets its acks
    sockets["ingest"] = ingest
    ingest.rcvhwm = cfg.ingest.rcvhwm
    ingest.rcvbuf = cfg.ingest.rcvbuf_bytes  # back-pressure sits at the sender (ingest_drain.py)
    ingest.maxmsgsize = cfg.ingest.max_message_bytes
    ingest.linger = 0
    ingest.rcvtimeo = POLL_MS  # the receiver wakes this often to check for stop
    if curve_keys:
        curve_server(ingest, curve_keys)
    endpoints["ingest"] = attach(ingest, cfg.ingest.endpoint, cfg.ingest.bind, "ingest.endpoint")

    results = ctx.socket(zmq.PUB)
    sockets["results"] = results
    results.sndhwm = cfg.results.sndhwm
    results.linger = PUB_LINGER_MS
    if curve_keys:
        curve_server(results, curve_keys)
    endpoints["results"] = attach(results, cfg.results.endpoint, True, "results.endpoint")

    control = ctx.socket(zmq.REP)
    sockets["control"] = control
    control.linger = 0
    if curve_keys and cfg.curve.control:
        curve_server(control, curve_keys)
    endpoints["control"] = attach(control, cfg.control.endpoint, True, "control.endpoint")
    if not is_loopback_endpoint(cfg.control.endpoint) and not (curve_keys and cfg.curve.control):
        log.warning("control endpoint %s is reachable beyond loopback without CURVE; anyone there can reload "
                    "bundles (set [curve] control = true)", endpoints["control"])
    return auth


def start_curve(ctx: Any, cc: CurveConfig) -> tuple[tuple[bytes, bytes], Any]:
    """Load the server key pair and start the ZAP authenticator for the authorised client keys."""
    if not zmq.has("curve"):
        raise ConfigError(f"curve.enabled: this libzmq {zmq.zmq_version()} was built without CURVE support")
    try:
        public, secret = zmq.auth.load_certificate(cc.server_secret_key)
    except (OSError, ValueError) as e:
        raise ConfigError(f"curve.server_secret_key: cannot read {str(cc.server_secret_key)!r}: {e}") from None
    if secret is None:
        raise ConfigError(f"curve.server_secret_key: {str(cc.server_secret_key)!r} holds no secret key "
                          "(use the .key_secret file made by zmq.auth.create_certificates)")
    clients = sorted(Path(cc.authorized_clients_dir).glob("*.key"))
    if not clients:
        log.warning("curve: no client public keys (*.key) in %s; every client will be refused", cc.authorized_clients_dir)
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("fringelive.daemon.auth"))
    auth.start()
    auth.configure_curve(domain="*", location=str(cc.authorized_clients_dir))
    log.info("curve: enabled on ingest and results%s, %d authorised client key(s) in %s",
             " and control" if cc.control else "", len(clients), cc.authorized_clients_dir)
    return (public, secret), auth


def attach(sock: Any, endpoint: str, bind: bool, key: str) -> str:
    """Bind or connect; return the actual endpoint (OS-assigned tcp port resolved)."""
    try:
        if bind:
            sock.bind(endpoint)
            return sock.getsockopt_string(zmq.LAST_ENDPOINT)
        sock.connect(endpoint)
        return endpoint
    except zmq.ZMQError as e:
        raise ConfigError(f"{key}: cannot {'bind' if bind else 'connect'} {endpoint!r}: {e}") from None


def curve_server(sock: Any, keys: tuple[bytes, bytes]) -> None:
    sock.curve_publickey, sock.curve_secretkey = keys
    sock.curve_server = True
