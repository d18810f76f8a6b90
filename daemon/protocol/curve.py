"""ZeroMQ CURVE for clients of a daemon (send, watch, control requests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq.auth

__all__ = ["configure_curve_client"]


def configure_curve_client(socket: Any, server_public_key_file: str | Path,
                           client_secret_key_file: str | Path) -> None:
    """Make ``socket`` a CURVE client of a daemon.

    ``server_public_key_file``: the daemon's public certificate (``server.key`` from
    ``zmq.auth.create_certificates``); ``client_secret_key_file``: this client's secret
    certificate (``client.key_secret``), whose public half must be in the daemon's authorised
    keys directory. Call before ``connect``. Raises ``ValueError`` naming the bad file.
    """
    server_public_key_file = Path(server_public_key_file)
    client_secret_key_file = Path(client_secret_key_file)
    for path in (server_public_key_file, client_secret_key_file):
        if not path.is_file():
            raise ValueError(f"CURVE key file not found: {path}")
    try:
        server_public, _ = zmq.auth.load_certificate(server_public_key_file)
        client_public, client_secret = zmq.auth.load_certificate(client_secret_key_file)
    except (ValueError, OSError) as e:
        raise ValueError(f"cannot read CURVE certificate: {e}") from None
    if client_secret is None:
        raise ValueError(f"{client_secret_key_file} holds no secret key; pass the "
                         "'.key_secret' file made by zmq.auth.create_certificates")
    socket.curve_serverkey = server_public
    socket.curve_publickey = client_public
    socket.curve_secretkey = client_secret
