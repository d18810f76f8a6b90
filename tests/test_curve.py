"""ZeroMQ CURVE on ingest and results: an authorised client key works, an unknown one (or a
client without CURVE) is refused — its frames never arrive and it receives no results."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
import zmq.auth

from fringelive.daemon.config import ConfigError, DaemonConfig
from fringelive.daemon.control import control_request
from fringelive.daemon.protocol import configure_curve_client, decode_result, encode_frame
from fringelive.daemon.server import Daemon

pytestmark = [pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE"),
              pytest.mark.usefixtures("one_torch_thread")]  # conftest.py


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """server.key(_secret), client.key(_secret) (authorised), stranger.key(_secret) (not)."""
    root = tmp_path_factory.mktemp("certs")
    for name in ("server", "client", "stranger"):
        zmq.auth.create_certificates(root, name)
    authorized = root / "authorized"
    authorized.mkdir()
    (authorized / "client.key").write_bytes((root / "client.key").read_bytes())
    return root


def curve_config(bundle: Any, certs: Path, control: bool = False) -> DaemonConfig:
    return DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0"}, "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"enabled": False},
        "model": {"bundle": str(bundle.path), "intra_op_threads": 1},
        "curve": {"enabled": True, "server_secret_key": str(certs / "server.key_secret"),
                  "authorized_clients_dir": str(certs / "authorized"), "control": control},
    })


def sockets(d: Daemon, certs: Path, who: str | None) -> tuple[Any, Any]:
    """(PUSH, SUB) connected to ``d`` as CURVE client ``who`` (None: no CURVE at all)."""
    ctx = zmq.Context.instance()
    push, sub = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
    for s in (push, sub):
        s.linger = 0
        if who is not None:
            configure_curve_client(s, certs / "server.key", certs / f"{who}.key_secret")
    sub.subscribe(b"")
    sub.connect(d.endpoints["results"])
    push.connect(d.endpoints["ingest"])
    return push, sub


def frame(i: int) -> list[bytes]:
    return encode_frame(np.random.default_rng(i).poisson(100, (128, 128)).astype(np.uint16), series="c", frame=i)


def test_known_key_works_unknown_key_and_plain_client_are_refused(tiny_bundle: Any, certs: Path) -> None:
    with Daemon(curve_config(tiny_bundle, certs)) as d:
        good_push, good_sub = sockets(d, certs, "client")
        bad_push, bad_sub = sockets(d, certs, "stranger")
        plain_push, plain_sub = sockets(d, certs, None)
        try:
            time.sleep(0.5)  # handshakes (and refusals) settle; subscriptions propagate
            for i in range(3):
                for push, base in ((bad_push, 100), (plain_push, 200)):
                    try:  # a refused PUSH has no peer: the frame waits in vain or cannot even queue
                        push.send_multipart(frame(base + i), zmq.NOBLOCK)
                    except zmq.Again:
                        pass
            good_push.send_multipart(frame(1))
            assert good_sub.poll(30_000), "the authorised client got no result"
            header, mask, _ = decode_result(good_sub.recv_multipart())
            assert header["frame"] == 1 and mask.shape == (128, 128)
            time.sleep(0.5)
            counts = d.metrics.counts()
            assert counts["received"] == 1 and counts["processed"] == 1  # refused frames never arrived
            assert not bad_sub.poll(200) and not plain_sub.poll(200)  # and they read no results
        finally:
            for s in (good_push, good_sub, bad_push, bad_sub, plain_push, plain_sub):
                s.close()
        # control stays plain unless [curve] control = true
        assert control_request(d.endpoints["control"], "ping") == {"ok": True, "pong": True}


def test_curve_on_control(tiny_bundle: Any, certs: Path) -> None:
    with Daemon(curve_config(tiny_bundle, certs, control=True)) as d:
        ep = d.endpoints["control"]
        assert control_request(ep, "ping", timeout_s=1.0) is None  # plain REQ: refused, no reply
        reply = control_request(ep, "ping", curve=(str(certs / "server.key"), str(certs / "client.key_secret")))
        assert reply == {"ok": True, "pong": True}


def test_public_key_file_is_not_a_server_secret(tiny_bundle: Any, certs: Path) -> None:
    cfg = curve_config(tiny_bundle, certs)
    cfg = cfg.override("curve", server_secret_key=certs / "server.key")
    d = Daemon(cfg)
    with pytest.raises(ConfigError, match="curve.server_secret_key: .*server.key' holds no secret key"):
        d.start()
    assert d.state == "failed"
