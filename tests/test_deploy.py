"""deploy/: ``fringelive health`` against a real daemon (and against nothing), the Dockerfile and
.dockerignore (parsed: no Docker daemon here), the container config, the compose file, Prometheus
(``promtool check config``), Grafana provisioning and dashboard (every metric it queries exists
in the daemon, every expression parses with promtool) and the systemd unit (``systemd-analyze
verify``)."""

from __future__ import annotations

import http.server
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from fringelive.cli import build_parser, main
from fringelive.stream.health import (HealthTargets, check_health, client_endpoint, metrics_url,
                                    targets_from_config)
from fringelive.daemon.config import DEFAULT_BUNDLE_DIR, DaemonConfig, load_config
from fringelive.daemon.server import Daemon

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
CONTAINER_TOML = DEPLOY / "examples" / "fringelive-container.toml"
COMPOSE = DEPLOY / "compose.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "fringelive.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "fringelive.yml"
UNIT = DEPLOY / "systemd" / "fringelive.service"
PROMTOOL = shutil.which("promtool")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


# --- fringelive health against a real daemon ------------------------------------------------------

@pytest.fixture(scope="module")
def served(tiny_bundle: Any) -> Iterator[Daemon]:
    """A daemon on OS-assigned loopback ports with its metrics server on."""
    cfg = DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0"}, "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"host": "127.0.0.1", "port": 0},
        "model": {"bundle": str(tiny_bundle.path), "intra_op_threads": 1},
    })
    from prometheus_client import CollectorRegistry

    with Daemon(cfg, registry=CollectorRegistry()) as d:
        yield d


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1].split("/")[0])


def free_port() -> int:
    """A loopback TCP port nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_health_ok_against_running_daemon(served: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["health", "--control", served.endpoints["control"], "--metrics", served.endpoints["metrics"],
               "--timeout", "10"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.count("\n") == 1 and out.startswith("fringelive health: ok: ")
    assert f"control {served.endpoints['control']} running (bundle 'tiny-resunet-seed'" in out
    assert f"metrics {served.endpoints['metrics']} HTTP 200 (" in out and "fringelive_ series" in out


def test_health_from_config_probes_wildcard_binds_on_loopback(served: Daemon, tiny_bundle: Any, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The container config binds tcp://*:PORT and metrics 0.0.0.0: health probes 127.0.0.1."""
    control_port, metrics_port = _port(served.endpoints["control"]), _port(served.endpoints["metrics"])
    cfg = tmp_path / "fringelive.toml"
    cfg.write_text(f'[control]\nendpoint = "tcp://*:{control_port}"\n'
                   f'[metrics]\nhost = "0.0.0.0"\nport = {metrics_port}\n'
                   f'[model]\nbundle = "{tiny_bundle.path}"\n')
    rc = main(["health", "--config", str(cfg), "--timeout", "10"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"control tcp://127.0.0.1:{control_port} running" in out
    assert f"metrics http://127.0.0.1:{metrics_port}/metrics HTTP 200" in out


def test_health_console_script_exit_codes(served: Daemon) -> None:
    """The installed console script, as Docker's HEALTHCHECK and monitoring run it."""
    exe = Path(sys.executable).parent / "fringelive"
    launcher = [str(exe)] if exe.is_file() else [sys.executable, "-c",
                                                 "import sys; from fringelive.cli import main; sys.exit(main())"]
    cmd = launcher + ["health", "--timeout", "10"]
    ok = subprocess.run(cmd + ["--control", served.endpoints["control"], "--metrics", served.endpoints["metrics"]],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("fringelive health: ok: ")
    dead = f"tcp://127.0.0.1:{free_port()}"
    bad = subprocess.run(cmd[:-1] + ["1", "--control", dead], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stdout == "" and bad.stderr.count("\n") == 1 and dead in bad.stderr


@pytest.mark.parametrize("timeout_s", [0.5, 2.0])
def test_health_nothing_listening_fails_within_timeout(timeout_s: float, capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    rc = main(["health", "--control", dead, "--timeout", str(timeout_s)])
    elapsed = time.monotonic() - t0
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert timeout_s <= elapsed < timeout_s + 1.5
    assert err == f"fringelive: error: health: control {dead}: no reply to ping within {timeout_s:g} s " \
                  "(is `fringelive serve` running there?)\n"


class _Http:
    """A real HTTP server on a free loopback port answering GET with ``(status, body)``."""

    def __init__(self, status: int, body: bytes) -> None:
        reply = (status, body)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                self.send_response(reply[0])
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(reply[1])

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("case", ["404", "no-series", "refused"])
def test_health_metrics_failures_name_the_url(served: Daemon, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    srv = None
    if case == "refused":
        url = f"http://127.0.0.1:{free_port()}/metrics"
    else:
        srv = _Http(404, b"not found") if case == "404" else _Http(200, b"# HELP other_total x\nother_total 1\n")
        url = srv.url
    try:
        rc = main(["health", "--control", served.endpoints["control"], "--metrics", url, "--timeout", "10"])
    finally:
        if srv is not None:
            srv.close()
    out, err = capsys.readouterr()
    assert rc == 1 and out == "" and err.count("\n") == 1
    assert f"metrics {url}: " in err
    assert {"404": "HTTP 404", "no-series": "no fringelive_ series", "refused": "cannot scrape"}[case] in err


def test_health_fails_when_daemon_is_not_running(capsys: pytest.CaptureFixture[str]) -> None:
    """A control socket (the daemon's own handler on a real REP socket) that answers ping but whose
    status says 'draining': not healthy."""
    import zmq

    from fringelive.daemon.control import ControlHandler

    class Draining:
        def status(self) -> dict[str, Any]:
            return {"state": "draining", "errors": [], "bundle": None, "queue": {}, "frames": {}}

        def stats(self) -> dict[str, Any]:
            return {}

        def reload(self, bundle: str | None = None, *, bundles: list[str] | None = None) -> dict[str, Any]:
            return {"ok": False}

    ctx = zmq.Context.instance()
    rep = ctx.socket(zmq.REP)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()
    handler = ControlHandler(Draining())

    def serve() -> None:
        while not stop.is_set():
            if rep.poll(50):
                rep.send(handler.handle(rep.recv()))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        rc = main(["health", "--control", f"tcp://127.0.0.1:{port}", "--timeout", "10"])
    finally:
        stop.set()
        t.join(5)
        rep.close(linger=0)
    out, err = capsys.readouterr()
    assert rc == 1
    assert err == f"fringelive: error: health: control tcp://127.0.0.1:{port}: daemon state is 'draining', not 'running'\n"


def test_health_with_curve_on_control(tiny_bundle: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """[curve] control = true: health needs the client key; the server key comes from the config
    (its .key_secret file holds the public key too); a plain probe gets no reply."""
    import zmq
    import zmq.auth

    if not zmq.has("curve"):
        pytest.skip("libzmq built without CURVE")
    for name in ("server", "client"):
        zmq.auth.create_certificates(tmp_path, name)
    (tmp_path / "authorized").mkdir()
    (tmp_path / "authorized" / "client.key").write_bytes((tmp_path / "client.key").read_bytes())
    with socket.socket() as s:  # a fixed port, written into the config file health reads
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    toml = (f'[ingest]\nendpoint = "tcp://127.0.0.1:0"\n[results]\nendpoint = "tcp://127.0.0.1:0"\n'
            f'[control]\nendpoint = "tcp://127.0.0.1:{port}"\n[metrics]\nenabled = false\n'
            f'[model]\nbundle = "{tiny_bundle.path}"\nintra_op_threads = 1\n'
            f'[curve]\nenabled = true\nserver_secret_key = "server.key_secret"\n'
            f'authorized_clients_dir = "authorized"\ncontrol = true\n')
    cfg = tmp_path / "fringelive.toml"
    cfg.write_text(toml)
    from prometheus_client import CollectorRegistry

    with Daemon(load_config(cfg), registry=CollectorRegistry()):
        assert main(["health", "--config", str(cfg), "--timeout", "5"]) == 1
        assert "pass --curve-client-key FILE" in capsys.readouterr().err
        rc = main(["health", "--config", str(cfg), "--curve-client-key", str(tmp_path / "client.key_secret"),
                   "--timeout", "10"])
        out, err = capsys.readouterr()
        assert rc == 0, err
        assert f"control tcp://127.0.0.1:{port} running" in out
        assert main(["health", "--control", f"tcp://127.0.0.1:{port}", "--timeout", "1"]) == 1
        assert "no reply to ping within 1 s" in capsys.readouterr().err


def test_health_bad_config_exits_1_not_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Docker reserves exit code 2 of a health check: every failure is 1."""
    missing = tmp_path / "missing.toml"
    assert main(["health", "--config", str(missing)]) == 1
    assert "config file not found" in capsys.readouterr().err
    bad = tmp_path / "os-assigned.toml"
    bad.write_text('[control]\nendpoint = "tcp://127.0.0.1:0"\n')
    assert main(["health", "--config", str(bad)]) == 1
    assert "OS-assigned port" in capsys.readouterr().err
    assert main(["health", "--timeout", "0"]) == 1
    assert "--timeout must be > 0 s, got 0.0" in capsys.readouterr().err


def test_endpoint_translation() -> None:
    assert client_endpoint("tcp://*:5557") == "tcp://127.0.0.1:5557"
    assert client_endpoint("tcp://0.0.0.0:5557") == "tcp://127.0.0.1:5557"
    assert client_endpoint("tcp://[::]:5557") == "tcp://[::1]:5557"
    assert client_endpoint("tcp://10.0.0.5:5557") == "tcp://10.0.0.5:5557"
    assert client_endpoint("ipc:///run/fringelive/control") == "ipc:///run/fringelive/control"
    for bad in ("tcp://*:*", "tcp://127.0.0.1:0", "inproc://control", "udp://x:1"):
        with pytest.raises(ValueError):
            client_endpoint(bad)
    assert metrics_url("0.0.0.0", 9108) == "http://127.0.0.1:9108/metrics"
    assert metrics_url("::", 9108) == "http://[::1]:9108/metrics"
    with pytest.raises(ValueError, match="OS-assigned"):
        metrics_url("127.0.0.1", 0)
    with pytest.raises(ValueError, match="timeout must be > 0 s"):
        check_health(HealthTargets("tcp://127.0.0.1:1"), 0)


# --- Dockerfile and .dockerignore ------------------------------------------------------------------

def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """``[(INSTRUCTION, arguments)]`` with comments dropped and ``\\`` continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def stages(instr: list[tuple[str, str]]) -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """Global ARG defaults and the instructions of each stage (starting with its FROM)."""
    args: dict[str, str] = {}
    out: list[list[tuple[str, str]]] = []
    for word, rest in instr:
        if word == "FROM":
            out.append([])
        if not out:
            assert word == "ARG", f"only ARG may precede the first FROM, got {word}"
            name, _, default = rest.partition("=")
            args[name] = default
            continue
        out[-1].append((word, rest))
    return args, out


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def container_config() -> DaemonConfig:
    """The container config, with /bundles/default (exists only in the image) pointed at the
    installed default bundle that the image copies there."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    data = tomllib.loads(CONTAINER_TOML.read_text())
    assert data["model"]["bundle"] == "/bundles/default"
    data["model"]["bundle"] = str(DEFAULT_BUNDLE_DIR)
    return DaemonConfig.from_dict(data, base_dir=CONTAINER_TOML.parent)


def config_ports(cfg: DaemonConfig) -> set[int]:
    return {_port(cfg.ingest.endpoint), _port(cfg.results.endpoint), _port(cfg.control.endpoint), cfg.metrics.port}


def test_dockerfile_base_image_is_a_pinned_tensorrt_release() -> None:
    args, st = stages(dockerfile_instructions())
    assert len(st) == 2
    bases = {expand(s[0][1].split()[0], args) for s in st}
    assert len(bases) == 1, bases
    base = bases.pop()
    m = re.fullmatch(r"nvcr\.io/nvidia/tensorrt:(\d\d)\.(\d\d)-py3", base)
    assert m, f"base image must be a pinned NGC TensorRT release nvcr.io/nvidia/tensorrt:YY.MM-py3, got {base!r}"
    assert "latest" not in base


def test_dockerfile_final_stage_runs_fringelive_as_non_root_with_health_check() -> None:
    args, st = stages(dockerfile_instructions())
    final = st[-1]
    words = [w for w, _ in final]
    assert words.count("USER") == 1 and words.count("ENTRYPOINT") == 1 and words.count("HEALTHCHECK") == 1
    user = dict(final)["USER"]
    uid = user.split(":")[0]
    assert uid not in ("0", "root") and (not uid.isdigit() or int(uid) >= 1000), user
    assert words.index("USER") < words.index("ENTRYPOINT")
    assert words.index("USER") < words.index("HEALTHCHECK")
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["fringelive"]
    cmd = json.loads(dict(final)["CMD"])
    assert cmd == ["serve", "--config", "/etc/fringelive/fringelive.toml"]
    health = dict(final)["HEALTHCHECK"]
    options, _, health_cmd = health.partition(" CMD ")
    argv = json.loads(health_cmd)
    assert argv[:2] == ["fringelive", "health"] and "--config" in argv
    assert argv[argv.index("--config") + 1] == "/etc/fringelive/fringelive.toml"
    # Both commands are accepted by the real CLI.
    assert build_parser().parse_args(argv[1:]).func.__name__ == "run_health"
    assert build_parser().parse_args(cmd).func.__name__ == "run_serve"
    # Docker's health timeout above the command's own.
    timeouts = dict(re.findall(r"--(\w[\w-]*)=(\S+)", options))
    assert float(timeouts["timeout"].rstrip("s")) > float(argv[argv.index("--timeout") + 1])
    # The cache dir is the user's and FRINGELIVE_CACHE_DIR names it.
    env = " ".join(r for w, r in final if w == "ENV")
    assert "FRINGELIVE_CACHE_DIR=/var/cache/fringelive" in env
    run = " ".join(r for w, r in final if w == "RUN")
    assert re.search(r"install -d -o 10001 -g 10001 .*/var/cache/fringelive", run)
    assert f"--uid {uid}" in run


def test_dockerfile_exposes_the_container_config_ports() -> None:
    _, st = stages(dockerfile_instructions())
    exposed = {int(p.split("/")[0]) for w, r in st[-1] if w == "EXPOSE" for p in r.split()}
    assert exposed == config_ports(container_config()) == {5555, 5556, 5557, 9108}


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore glob as a regex: ``**`` any number of directories, ``*`` and ``?`` within
    one path element."""
    rx, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            rx, i = rx + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            rx, i = rx + ".*", i + 2
        elif pattern[i] == "*":
            rx, i = rx + "[^/]*", i + 1
        elif pattern[i] == "?":
            rx, i = rx + "[^/]", i + 1
        else:
            rx, i = rx + re.escape(pattern[i]), i + 1
    return re.compile(rx)


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories wins;
    ``!`` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        rx = _glob_regex((pat[1:] if neg else pat).strip("/"))
        if any(rx.fullmatch(pre) for pre in prefixes):
            excluded = not neg
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def test_dockerignore_sends_only_what_the_image_needs() -> None:
    pats = dockerignore_patterns()
    for kept in ("pyproject.toml", "README.md", "cli/__init__.py", "default_bundle/card.json",
                 "engine/models.py", "bundle/bundle_io.py", "deploy/docker/Dockerfile", "deploy/docker/check_image.py",
                 "deploy/examples/fringelive-container.toml"):
        assert not dockerignore_excludes(kept, pats), kept
    for dropped in (".venv/bin/python", "tests/test_deploy.py", "benchmarks/daemon.py", ".git/HEAD",
                    "daemon/__pycache__/cli.cpython-311.pyc", "fringelive.egg-info/PKG-INFO", "docs/bundle.md",
                    "deploy/compose.yaml", "deploy/examples/fringelive.toml", "demo-out/overlay.png"):
        assert dockerignore_excludes(dropped, pats), dropped


def test_dockerfile_copy_sources_exist_in_the_build_context() -> None:
    pats = dockerignore_patterns()
    _, st = stages(dockerfile_instructions())
    n = 0
    for stage in st:
        for word, rest in stage:
            if word not in ("COPY", "ADD") or rest.startswith("--from"):
                continue
            *sources, _dest = shlex.split(rest)
            for src in sources:
                p = REPO / src
                assert p.exists(), f"COPY source {src} is not in the repository"
                files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
                for f in files:
                    rel = f.relative_to(REPO).as_posix()
                    assert not dockerignore_excludes(rel, pats), f"{rel} (COPY {src}) is excluded by .dockerignore"
                n += 1
    assert n >= 6


def test_check_image_script_reports_each_problem_on_one_line() -> None:
    """deploy/docker/check_image.py runs at build time; here (CPU torch, CPU onnxruntime) it must
    fail naming what the GPU image would need, on a GPU image it prints ok."""
    r = subprocess.run([sys.executable, str(DEPLOY / "docker" / "check_image.py")], capture_output=True, text=True,
                       timeout=120)
    if r.returncode == 0:
        assert r.stdout.startswith("check_image: ok: ")
    else:
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert lines and all(ln.startswith("check_image: ") for ln in lines)
        assert "fringelive does not load" not in r.stderr


# --- container config and compose ------------------------------------------------------------------

def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_container_config_binds_all_interfaces_and_health_probes_loopback() -> None:
    cfg = container_config()
    for ep in (cfg.ingest.endpoint, cfg.results.endpoint, cfg.control.endpoint):
        assert ep.startswith("tcp://*:"), ep
    assert cfg.metrics.enabled and cfg.metrics.host == "0.0.0.0"
    assert cfg.model.backend in ("onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")
    targets = targets_from_config(cfg)
    assert targets == HealthTargets("tcp://127.0.0.1:5557", "http://127.0.0.1:9108/metrics")
    text = CONTAINER_TOML.read_text()
    assert "CURVE" in text and "[curve]" in text  # says when to enable it
    # The file loads as the daemon loads it, except for the bundle path that exists in the image.
    with pytest.raises(Exception, match="/bundles/default"):
        load_config(CONTAINER_TOML)


def test_compose_parses_and_every_mounted_file_exists() -> None:
    c = compose()
    services = c["services"]
    assert set(services) == {"fringelive", "prometheus", "grafana"}
    for name, svc in services.items():
        if "image" in svc:
            image = svc["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: image {image!r} is not pinned"
        for vol in svc.get("volumes", []):
            src, target, *mode = vol.split(":")
            if src.startswith((".", "/")):
                assert (DEPLOY / src).exists(), f"{name}: mounted {src} does not exist"
                assert mode == ["ro"], f"{name}: bind mount {src} should be read-only"
            else:
                assert src in c["volumes"], f"{name}: named volume {src} is not declared"
    build = services["fringelive"]["build"]
    assert (DEPLOY / build["context"]).resolve() == REPO
    assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_fringelive_service_gpu_ports_health_and_shutdown() -> None:
    svc = compose()["services"]["fringelive"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "healthcheck" not in svc, "the image's HEALTHCHECK (fringelive health) is inherited"
    cfg = container_config()
    published = {int(p.split(":")[-1]) for p in svc["ports"]}
    assert all(p.startswith("127.0.0.1:") for p in svc["ports"]), "without CURVE, publish on loopback only"
    assert published == config_ports(cfg) - {cfg.metrics.port}
    assert [int(p) for p in svc["expose"]] == [cfg.metrics.port]
    targets = {v.split(":")[1] for v in svc["volumes"]}
    assert "/etc/fringelive/fringelive.toml" in targets and "/var/cache/fringelive" in targets
    assert any(t.startswith("/bundles") for t in targets)
    assert svc["stop_signal"] == "SIGTERM"
    assert int(svc["stop_grace_period"].rstrip("s")) > cfg.lifecycle.drain_timeout_s + 30


def test_compose_prometheus_mounts_config_and_rules_side_by_side() -> None:
    svc = compose()["services"]["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    assert mounts["/etc/prometheus/alerts.yml"] == "./prometheus/alerts.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in svc["command"]
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prom["rule_files"] == ["alerts.yml"]
    (job,) = prom["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"fringelive:{container_config().metrics.port}"]
    assert job["scrape_interval"] == "5s"


@needs_promtool
def test_promtool_check_config() -> None:
    r = subprocess.run([PROMTOOL, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 1 rule files found" in r.stdout + r.stderr


# --- Grafana ------------------------------------------------------------------------------------------

def provisioned_uid() -> str:
    (ds,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    return ds["uid"]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expressions() -> list[str]:
    exprs = [t["expr"] for p in panels() for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard()["templating"]["list"]]
    return exprs


def test_grafana_provisioning_matches_compose_mounts() -> None:
    assert provisioned_uid() == "fringelive-prometheus"
    (provider,) = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose()["services"]["grafana"]["volumes"]}
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    env = compose()["services"]["grafana"]["environment"]
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == provider["options"]["path"] + "/" + DASHBOARD.name
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD")


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    d = dashboard()
    uid = provisioned_uid()
    assert d["uid"] == "fringelive-daemon" and d["schemaVersion"] >= 39
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels():
        assert p["datasource"] == {"type": "prometheus", "uid": uid}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == uid, p["title"]
            assert '{instance=~"$instance"}' in t["expr"] or "instance=~\"$instance\"" in t["expr"], t["expr"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
    (var,) = d["templating"]["list"]
    assert var["name"] == "instance" and var["datasource"]["uid"] == uid and var["includeAll"]


def test_dashboard_covers_the_required_views() -> None:
    exprs = "\n".join(expressions())
    required = [
        r"rate\(fringelive_frames_processed_total\{[^}]*\}\[1m\]\)",
        r"histogram_quantile\(0\.5, sum by \([^)]*le\) \(rate\(fringelive_frame_latency_seconds_bucket",
        r"histogram_quantile\(0\.99, sum by \([^)]*le\) \(rate\(fringelive_frame_latency_seconds_bucket",
        r"histogram_quantile\(0\.99, sum by \(stage, le\) \(rate\(fringelive_stage_latency_seconds_bucket",
        r"sum by \(reason\) \(rate\(fringelive_frames_dropped_total",
        r"sum by \(reason\) \(rate\(fringelive_frames_rejected_total",
        r"fringelive_queue_depth\{", r"fringelive_queue_capacity\{",
        r"sum by \(status\) \(rate\(fringelive_drift_frames_total",
        r"fringelive_drift_alarm\{", r"fringelive_drift_cusum\{", r"fringelive_drift_cusum_threshold\{",
        r"rate\(fringelive_particles_per_frame_sum\{[^}]*\}\[1m\]\)\) / sum\(rate\(fringelive_particles_per_frame_count",
        r"histogram_quantile\(0\.5, sum by \(le\) \(rate\(fringelive_particles_per_frame_bucket",
        r"fringelive_bundle_info\{", r"sum by \(model\) \(rate\(fringelive_routed_frames_total",
    ]
    missing = [rx for rx in required if not re.search(rx, exprs)]
    assert not missing, missing


def test_dashboard_metric_names_are_exported_by_the_daemon() -> None:
    from prometheus_client import CollectorRegistry

    from fringelive.daemon.metrics import DaemonMetrics

    metrics = DaemonMetrics(CollectorRegistry())
    metrics.set_bundle(name="b", schema=1, members=1, backend="onnxruntime", device="cpu", path="/b")
    metrics.observe_drift("b", {"status": "ok", "reasons": ["dose_metadata_mismatch"], "signals": {"entropy_foreground": 0.1},
                                "cusum": {"statistics": {"entropy_foreground": 0.0}, "h": 5.0}, "alarm": False})
    metrics.observe_camera({"gain_counts_per_e": 8.0, "offset_counts": 100.0,
                            "sources": {"gain_counts_per_e": "config", "offset_counts": "config"}})
    exported = {s.name for fam in metrics.registry.collect() for s in fam.samples}
    used = set(re.findall(r"\b(fringelive_[a-z_]+)", "\n".join(expressions())))
    assert len(used) >= 15
    assert used <= exported, sorted(used - exported)


@needs_promtool
def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    """Every panel expression, with the Grafana variable substituted, as a recording rule that
    ``promtool check rules`` parses."""
    rules = [{"record": f"dashboard:panel{p['id']}:{t['refId']}", "expr": t["expr"].replace("$instance", ".*")}
             for p in panels() for t in p["targets"]]
    f = tmp_path / "dashboard_rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run([PROMTOOL, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules)} rules found" in r.stdout


# --- systemd ------------------------------------------------------------------------------------------

def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_unit_runs_serve_as_fringelive_and_outlives_the_drain() -> None:
    s = unit_settings()
    assert s["Type"] == ["exec"]  # serve does not sd_notify
    assert s["ExecStart"] == ["/opt/fringelive/venv/bin/fringelive serve --config /etc/fringelive/fringelive.toml"]
    assert s["User"] == ["fringelive"] and s["Restart"] == ["on-failure"]
    assert s["KillSignal"] == ["SIGTERM"]
    assert int(s["TimeoutStopSec"][0]) > container_config().lifecycle.drain_timeout_s + 30
    assert s["RestartPreventExitStatus"] == ["2"]  # bad config: `serve` exits 2
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"] and s["CacheDirectory"] == ["fringelive"]
    assert s["Environment"].count("FRINGELIVE_CACHE_DIR=/var/cache/fringelive") == 1
    assert any(v.startswith("char-nvidia") for v in s["DeviceAllow"])


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    """verify checks that ExecStart's binary exists, so the copy runs this checkout's console
    script instead of /opt/fringelive/venv/bin/fringelive; everything else (User= included) is
    verified as shipped."""
    exe = Path(sys.executable).parent / "fringelive"
    if not exe.is_file():
        pytest.skip(f"console script {exe} is not installed (pip install -e .)")
    text = UNIT.read_text()
    assert text.count("ExecStart=/opt/fringelive/venv/bin/fringelive ") == 1
    unit = tmp_path / "fringelive.service"
    unit.write_text(text.replace("ExecStart=/opt/fringelive/venv/bin/fringelive ", f"ExecStart={exe} "))
    r = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr


# --- camera and drift alerting against a real daemon and a real Prometheus (issue #12) ---------------

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus")
CAMERA_ALERTS = {"FringeliveDoseUnverified", "FringeliveCameraConfigDisagreesWithStream", "FringeliveDriftAlarm"}
#: Series only a bundle with a calibrated drift reference has (the tiny bundle has none; the
#: DaemonMetrics test above covers them).
NEEDS_CALIBRATED_BUNDLE = {"fringelive_drift_cusum"}


def _metric_names(text: str) -> set[str]:
    return set(re.findall(r"\b(fringelive_[a-z_]+)", text)) - NEEDS_CALIBRATED_BUNDLE


@pytest.fixture(scope="module")
def served_frames(served: Daemon) -> Daemon:
    """``served`` after two frames (one with the camera header keys, one without), so every
    labelled family the drift and camera panels read has a sample."""
    import numpy as np
    import zmq

    from fringelive.daemon.protocol import encode_frame

    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.connect(served.endpoints["ingest"])
    rng = np.random.default_rng(0)
    meta = {"pixel_size_nm": 0.02, "dose_e_per_A2": 423.0}
    camera = {"camera_gain_counts_per_e": 8.0, "camera_offset_counts": 100.0}
    try:
        for i, extra in enumerate((camera, {})):
            frame = (100 + 8 * rng.poisson(17.0, (128, 128))).astype(np.uint16)
            push.send_multipart(encode_frame(frame, series="alerting", frame=i, **meta, **extra))
        t_end = time.monotonic() + 60
        while time.monotonic() < t_end:
            text = _scrape(served)
            if "fringelive_camera_gain_counts_per_e{" in text and re.search(
                    r'fringelive_drift_frames_total\{status="\w+"\} [2-9]', text):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the daemon did not process the two frames within 60 s")
    finally:
        push.close(linger=0)
    return served


def _scrape(d: Daemon) -> str:
    import urllib.request

    return urllib.request.urlopen(d.endpoints["metrics"], timeout=10).read().decode()


def test_dashboard_and_alert_metrics_are_in_a_real_daemons_metrics(served_frames: Daemon) -> None:
    """Every fringelive_ series the dashboard and the alert rules read is in the /metrics of a
    running daemon that has processed frames (the camera row and the camera alerts included)."""
    from prometheus_client.parser import text_string_to_metric_families

    exported = {s.name for fam in text_string_to_metric_families(_scrape(served_frames)) for s in fam.samples}
    dashboard_used = _metric_names("\n".join(expressions()))
    alert_used = _metric_names(ALERTS.read_text())
    assert {"fringelive_camera_gain_counts_per_e", "fringelive_camera_fit_confident",
            "fringelive_drift_reasons_total"} <= dashboard_used & alert_used
    assert dashboard_used <= exported, sorted(dashboard_used - exported)
    assert alert_used <= exported, sorted(alert_used - exported)


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (Debian: apt-get install prometheus)")
def test_real_prometheus_loads_the_rules_and_scrapes_what_they_read(served_frames: Daemon, tmp_path: Path) -> None:
    """A real Prometheus with deploy/prometheus's rule file, scraping the running daemon: it
    loads every rule (the camera alerts included) and evaluates them without error, and each
    fringelive_ metric of the camera panels and alerts has series in it."""
    import urllib.parse
    import urllib.request

    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    job = config["scrape_configs"][0]
    job.update(scrape_interval="1s", scrape_timeout="1s",
               static_configs=[{"targets": [served_frames.endpoints["metrics"].split("//")[1].split("/")[0]]}])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def api(path: str, **params: str) -> Any:
        url = f"{base}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        body = json.loads(urllib.request.urlopen(url, timeout=5).read())
        assert body["status"] == "success", body
        return body["data"]

    try:
        wanted = _metric_names(ALERTS.read_text()) & _metric_names("\n".join(expressions()))
        wanted |= {n for n in _metric_names("\n".join(expressions())) if n.startswith("fringelive_camera_")}
        t_end = time.monotonic() + 60
        rules: list[dict[str, Any]] = []
        missing: set[str] = set(wanted)
        while time.monotonic() < t_end:
            time.sleep(0.5)
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
            try:
                rules = [r for g in api("rules")["groups"] for r in g["rules"]]
                missing = {n for n in missing if not api("query", query=f'count({{__name__="{n}"}})')["result"]}
            except OSError:
                continue  # not listening yet
            if rules and not missing and all(r["health"] == "ok" for r in rules):
                break
        names = {r["name"] for r in rules if r["type"] == "alerting"}
        assert names == set(re.findall(r"- alert: (\w+)", ALERTS.read_text())) and CAMERA_ALERTS <= names
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        assert not missing, sorted(missing)
        up = api("query", query='up{job="fringelive"}')["result"]
        assert [float(s["value"][1]) for s in up] == [1.0]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
