"""Daemon configuration: TOML parsing, defaults, and one-line errors naming key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from fringelive import cli
from fringelive.daemon.config import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ConfigError,
    DaemonConfig,
    QueueConfig,
    load_config,
    parse_endpoint,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "fringelive.toml"


def write(tmp_path: Path, text: str, name: str = "daemon.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_are_loopback_cpu() -> None:
    cfg = DaemonConfig()
    assert cfg.ingest.endpoint == "tcp://127.0.0.1:5555"
    assert cfg.results.endpoint == "tcp://127.0.0.1:5556"
    assert cfg.control.endpoint == "tcp://127.0.0.1:5557"
    assert (cfg.metrics.host, cfg.metrics.port, cfg.metrics.enabled) == ("127.0.0.1", 9108, True)
    assert cfg.ingest.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES == 4096 * 4096 * 4 + 2**20
    assert cfg.model.backend == "auto" and cfg.model.precision == "fp32" and cfg.model.device is None and cfg.model.members is None
    assert cfg.queue == QueueConfig(size=4, policy="block")
    assert not cfg.curve.enabled


def test_example_config_parses_to_the_defaults() -> None:
    """The annotated example shows the embedded defaults (its bundle line is commented out)."""
    assert load_config(EXAMPLE) == DaemonConfig()


def test_backend_kinds_match_the_backends_module() -> None:
    from fringelive.daemon import config
    from fringelive.engine import backends

    assert config.BACKEND_KINDS == backends.BACKEND_KINDS


def test_full_config_and_relative_paths(tmp_path: Path) -> None:
    bundle = tmp_path / "bundles" / "b1"
    bundle.mkdir(parents=True)
    certs = tmp_path / "certs"
    (certs / "clients").mkdir(parents=True)
    (certs / "server.key_secret").write_text("x")
    p = write(tmp_path, """
        [ingest]
        endpoint = "tcp://*:0"
        rcvhwm = 2
        [results]
        endpoint = "ipc:///tmp/fl-results"
        publish_probabilities = true
        [queue]
        size = 8
        policy = "drop-oldest"
        [model]
        bundle = "bundles/b1"
        members = [0, 2]
        device = "cpu"
        intra_op_threads = 3
        [pipeline]
        tile_size = 512
        tiling = "gaussian"
        memory_budget_mb = 512
        [lifecycle]
        drain_timeout_s = 2
        [curve]
        enabled = true
        server_secret_key = "certs/server.key_secret"
        authorized_clients_dir = "certs/clients"
    """)
    cfg = load_config(p)
    assert cfg.ingest.endpoint == "tcp://*:0" and cfg.ingest.rcvhwm == 2
    assert cfg.results.publish_probabilities
    assert cfg.queue.policy == "drop-oldest" and cfg.queue.size == 8
    assert cfg.model.bundle == bundle and cfg.model.bundle_path() == bundle
    assert cfg.model.members == (0, 2) and cfg.model.intra_op_threads == 3
    assert cfg.pipeline.tile_size == 512 and cfg.pipeline.memory_budget_mb == 512.0
    assert cfg.lifecycle.drain_timeout_s == 2.0
    assert cfg.curve.server_secret_key == certs / "server.key_secret"


def test_toml_words_for_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[model]\nmembers = "all"\ndevice = "auto"\nintra_op_threads = 0\n'))
    assert cfg.model.members is None and cfg.model.device is None and cfg.model.intra_op_threads is None


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[ingest]\nendpoint = 'tcp:/127.0.0.1:5555'\n", ["ingest.endpoint", "'tcp:/127.0.0.1:5555'"]),
        ("[ingest]\nendpoint = 'tcp://127.0.0.1:99999'\n", ["ingest.endpoint", "99999"]),
        ("[ingest]\nendpoint = 'tcp://127.0.0.1:0'\nbind = false\n", ["ingest.endpoint", "tcp://127.0.0.1:0"]),
        ("[results]\nendpoint = 'udp://1.2.3.4:5'\n", ["results.endpoint", "'udp://1.2.3.4:5'"]),
        ("[control]\nendpoint = 'tcp://127.0.0.1:5555'\n", ["control.endpoint", "ingest.endpoint"]),
        ("[ingest]\nrcvhwm = '4'\n", ["ingest.rcvhwm", "'4'"]),
        ("[ingest]\nrcvhwm = 0\n", ["ingest.rcvhwm", "0"]),
        ("[ingest]\nbind = 1\n", ["ingest.bind", "1"]),
        ("[queue]\npolicy = 'newest'\n", ["queue.policy", "'newest'", "drop-oldest"]),
        ("[queue]\nsise = 3\n", ["queue.sise", "size"]),
        ("[queues]\nsize = 3\n", ["queues"]),
        ("queue = 3\n", ["queue", "3"]),
        ("[metrics]\nport = 70000\n", ["metrics.port", "70000"]),
        ("[model]\nbundle = 'no/such/bundle'\n", ["model.bundle", "no/such/bundle"]),
        ("[model]\nbackend = 'tensorflow'\n", ["model.backend", "'tensorflow'"]),
        ("[model]\ndevice = 'gpu'\n", ["model.device", "'gpu'"]),
        ("[model]\nmembers = [0, 0]\n", ["model.members", "[0, 0]"]),
        ("[model]\nmembers = 'some'\n", ["model.members", "'some'"]),
        ("[pipeline]\ntile_size = 100\n", ["pipeline.tile_size", "100"]),
        ("[pipeline]\ntile_size = 'big'\n", ["pipeline.tile_size", "'big'"]),
        ("[pipeline]\ntiling = 'mosaic'\n", ["pipeline.tiling", "'mosaic'"]),
        ("[pipeline]\nthreshold = 1.5\n", ["pipeline.threshold", "1.5"]),
        ("[lifecycle]\ndrain_timeout_s = -1\n", ["lifecycle.drain_timeout_s", "-1"]),
        ("[curve]\nenabled = true\n", ["curve.server_secret_key"]),
        ("[curve]\nenabled = true\nserver_secret_key = 'nokey'\nauthorized_clients_dir = '.'\n",
         ["curve.server_secret_key", "nokey"]),
    ],
)
def test_errors_name_key_and_value(tmp_path: Path, text: str, needles: list[str]) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(p) in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[ingest\nendpoint = 1\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_missing_default_bundle_names_the_key() -> None:
    from fringelive.daemon.config import default_bundle_path

    if default_bundle_path() is not None:
        pytest.skip("a default bundle is installed")
    with pytest.raises(ConfigError, match="model.bundle: no bundle configured and no default bundle installed"):
        DaemonConfig().model.bundle_path()


def test_parse_endpoint_accepts_ipc_inproc_ipv6() -> None:
    for ep in ("ipc:///tmp/x", "inproc://x", "tcp://[::1]:5555", "tcp://*:*", "tcp://eth0:5555"):
        assert parse_endpoint(ep, bind=True, key="k") == ep
    with pytest.raises(ConfigError, match="k connects"):
        parse_endpoint("tcp://*:5555", bind=False, key="k")


def test_override_revalidates() -> None:
    cfg = DaemonConfig()
    assert cfg.override("queue", policy="drop-oldest").queue.policy == "drop-oldest"
    with pytest.raises(ConfigError, match="queue.size"):
        cfg.override("queue", size=0)


def test_serve_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, "[queue]\npolicy = 'fastest'\n")
    assert cli.main(["serve", "--config", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("fringelive: error:") and "queue.policy" in err and "'fastest'" in err


def test_serve_bad_override_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--bundle", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "model.bundle" in err and "nope" in err
    assert cli.main(["serve", "--bundle", str(tmp_path), "--ingest", "tcp://localhost"]) == 2
    assert "ingest.endpoint" in capsys.readouterr().err


def test_serve_bad_bundle_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory without a card is a bundle error: exit 2, one line naming the path."""
    assert cli.main(["serve", "--bundle", str(tmp_path), "--metrics-port", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "card.json" in err and str(tmp_path) in err and err.count("\n") == 0
