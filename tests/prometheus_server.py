"""A real Prometheus server for integration tests: started on a loopback port from a config
written to a temporary directory, queried over its HTTP API with ``urllib`` only.

Used by ``tests/test_prometheus_server.py``; needs the ``prometheus`` binary (Debian package
``prometheus``, 2.42 or newer for the rules' ``keep_firing_for``).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

__all__ = [
    "PrometheusError",
    "PrometheusServer",
    "find_prometheus",
    "finite",
    "free_loopback_port",
    "poll",
    "grafana_targets",
    "substitute_grafana_variables",
]

T = TypeVar("T")


class PrometheusError(RuntimeError):
    """The Prometheus process failed to start or its API answered with an error."""


def find_prometheus() -> str | None:
    """Path of the ``prometheus`` binary on PATH (or Debian's /usr/bin/prometheus), else None."""
    found = shutil.which("prometheus")
    if found is None and Path("/usr/bin/prometheus").is_file():
        found = "/usr/bin/prometheus"
    return found


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, close).
    Another process may take it before it is used: callers retry on "address already in use"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(fn: Callable[[], T | None], timeout_s: float, what: str,
         describe: Callable[[], str] | None = None, interval_s: float = 0.25) -> T:
    """Call ``fn`` until it returns something other than None (returned) or ``timeout_s``
    seconds pass: AssertionError naming ``what`` with ``describe()`` (e.g. the target health)."""
    t_end = time.monotonic() + timeout_s
    while True:
        got = fn()
        if got is not None:
            return got
        if time.monotonic() > t_end:
            extra = describe() if describe is not None else ""
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}\n{extra}")
        time.sleep(interval_s)


class PrometheusServer:
    """One ``prometheus`` process scraping ``targets`` (``host:port`` strings) as job ``job``
    every ``scrape_interval_s`` seconds and evaluating ``rule_files`` every
    ``evaluation_interval_s`` seconds; TSDB, config and log under ``workdir``.

    A context manager: ``start()`` picks a free loopback port (retrying when another process
    takes it first) and waits until ``/-/ready`` answers; ``close()`` terminates the process
    (SIGTERM, then SIGKILL after ``grace_s`` seconds). :attr:`url` is ``http://127.0.0.1:PORT``.

    The first scrape comes about 5-6 s after ``start()``: Prometheus' discovery manager hands
    new targets to the scrape manager at most every 5 s (measured with 2.42 here).
    """

    def __init__(self, workdir: Path, targets: Sequence[str], *, job: str = "fringelive",
                 rule_files: Sequence[Path] = (), scrape_interval_s: int = 1, evaluation_interval_s: int = 1,
                 binary: str | None = None, ready_timeout_s: float = 30.0, grace_s: float = 5.0,
                 port_attempts: int = 3) -> None:
        if not targets:
            raise ValueError("targets must name at least one host:port, got []")
        if not (isinstance(scrape_interval_s, int) and scrape_interval_s >= 1):
            raise ValueError(f"scrape_interval_s must be an integer >= 1 (s), got {scrape_interval_s!r}")
        if not (isinstance(evaluation_interval_s, int) and evaluation_interval_s >= 1):
            raise ValueError(f"evaluation_interval_s must be an integer >= 1 (s), got {evaluation_interval_s!r}")
        if port_attempts < 1:
            raise ValueError(f"port_attempts must be >= 1, got {port_attempts!r}")
        for f in rule_files:
            if not Path(f).is_file():
                raise ValueError(f"rule file does not exist: {f}")
        self.binary = binary or find_prometheus()
        if self.binary is None:
            raise PrometheusError("the prometheus binary is not on PATH (apt-get install prometheus)")
        self.workdir = Path(workdir)
        self.targets = list(targets)
        self.job = job
        self.rule_files = [Path(f).resolve() for f in rule_files]
        self.scrape_interval_s = scrape_interval_s
        self.evaluation_interval_s = evaluation_interval_s
        self.ready_timeout_s = ready_timeout_s
        self.grace_s = grace_s
        self.port_attempts = port_attempts
        self.port: int | None = None
        self.config_path = self.workdir / "prometheus.yml"
        self.log_path = self.workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def write_config(self) -> Path:
        """Write ``prometheus.yml`` (JSON is valid YAML: no YAML library needed)."""
        config = {
            "global": {"scrape_interval": f"{self.scrape_interval_s}s",
                       "scrape_timeout": f"{self.scrape_interval_s}s",
                       "evaluation_interval": f"{self.evaluation_interval_s}s"},
            "rule_files": [str(f) for f in self.rule_files],
            "scrape_configs": [{"job_name": self.job, "static_configs": [{"targets": self.targets}]}],
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        return self.config_path

    def start(self) -> "PrometheusServer":
        if self._proc is not None:
            raise PrometheusError("already started")
        self.write_config()
        for attempt in range(1, self.port_attempts + 1):
            port = free_loopback_port()
            log = self.log_path.open("wb")
            try:
                self._proc = subprocess.Popen(
                    [self.binary, f"--config.file={self.config_path}",
                     f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{port}", "--log.level=info"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
            finally:
                log.close()
            self.port = port
            if self._wait_ready():
                return self
            rc = self._proc.poll()
            text = self.log()
            self._terminate()
            if rc is not None and "address already in use" in text and attempt < self.port_attempts:
                continue  # another process took the port between our probe and prometheus' bind
            state = f"exited with code {rc}" if rc is not None else \
                f"not ready after {self.ready_timeout_s:g} s"
            errors = "\n".join(line for line in text.splitlines() if "level=error" in line)
            raise PrometheusError(f"prometheus {state} (port {port}); its errors:\n{errors or '(none)'}\n"
                                  f"log tail:\n{text[-1500:]}")
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait_ready(self) -> bool:
        assert self._proc is not None
        t_end = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < t_end:
            if self._proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.1)
        return False

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=self.grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def close(self) -> None:
        """Stop the process (SIGTERM, SIGKILL after ``grace_s`` s); idempotent."""
        self._terminate()

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusError("not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        """The process' stdout + stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- HTTP API --------------------------------------------------------------------------------
    def api(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """GET ``/api/v1/<path>``; the decoded JSON envelope (``status``, ``data`` or ``errorType``
        and ``error``), also for HTTP 4xx/5xx answers, which carry the PromQL error."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"{self.url}/api/v1/{path}{query}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            body = e.read()
        try:
            return json.loads(body)
        except ValueError as e:
            raise PrometheusError(f"GET {url}: not JSON: {body[:200]!r}") from e

    def query(self, expr: str) -> dict[str, Any]:
        """Instant query at the server's now: the envelope of ``/api/v1/query``."""
        return self.api("query", {"query": expr})

    def vector(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant query's samples as ``(labels, value)``; PrometheusError on a query error."""
        out = self.query(expr)
        if out.get("status") != "success":
            raise PrometheusError(f"query {expr!r}: {out.get('errorType')}: {out.get('error')}")
        data = out["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        if data["resultType"] != "vector":
            raise PrometheusError(f"query {expr!r}: expected a vector, got {data['resultType']}")
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def value(self, expr: str) -> float | None:
        """The single sample of an instant query, or None while it has none (or several)."""
        samples = self.vector(expr)
        return samples[0][1] if len(samples) == 1 else None

    def targets_summary(self) -> str:
        """One line per active target: job, URL, health, last error (for failure messages)."""
        try:
            out = self.api("targets")
            lines = [f"{t['labels'].get('job')} {t['scrapeUrl']} health={t['health']} "
                     f"lastError={t.get('lastError')!r} lastScrape={t.get('lastScrape')}"
                     for t in out["data"]["activeTargets"]]
            return "targets:\n  " + ("\n  ".join(lines) if lines else "(none)")
        except Exception as e:  # noqa: BLE001 - a failure message must not fail itself
            return f"targets: unavailable ({e!r}); prometheus running: {self.running()}\n{self.log()[-2000:]}"


# --- Grafana dashboards ---------------------------------------------------------------------------

#: Grafana's built-in interval variables, replaced by a fixed range for evaluation.
_BUILTIN_DURATIONS = ("__rate_interval", "__interval", "__range", "__auto")
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


def substitute_grafana_variables(expr: str, values: Mapping[str, str], duration: str = "30s") -> str:
    """``expr`` with Grafana variables replaced: ``$__rate_interval``, ``$__interval``,
    ``$__range`` (any of the ``$x``, ``${x}``, ``${x:fmt}``, ``[[x]]`` spellings) by
    ``duration``; ``$__range_s`` / ``$__interval_ms`` by the number; dashboard variables by
    ``values[name]``, or ``.*`` when not given."""
    seconds = _duration_seconds(duration)

    def replace(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in _BUILTIN_DURATIONS:
            return duration
        if name in ("__range_s", "__interval_s"):
            return str(int(seconds))
        if name in ("__range_ms", "__interval_ms"):
            return str(int(seconds * 1000))
        return values.get(name, ".*")

    return _VARIABLE.sub(replace, expr)


def _duration_seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    if m is None:
        raise ValueError(f"duration must look like 30s, 1m, 500ms or 1h, got {duration!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]


def grafana_targets(dashboard: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Every Prometheus query of a dashboard: ``(panel title, refId, expr)`` for each panel target
    with a non-empty ``expr``, panels nested in rows included."""
    out: list[tuple[str, str, str]] = []

    def walk(panels: Sequence[Mapping[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets") or ():
                expr = target.get("expr")
                if isinstance(expr, str) and expr.strip() and not target.get("hide"):
                    out.append((str(panel.get("title", "")), str(target.get("refId", "")), expr))
            walk(panel.get("panels") or ())

    walk(dashboard.get("panels") or ())
    for row in dashboard.get("rows") or ():  # pre-5.0 dashboards
        walk(row.get("panels") or ())
    return out


def finite(samples: Sequence[tuple[Mapping[str, str], float]]) -> bool:
    """True when at least one sample value is finite."""
    return any(math.isfinite(v) for _, v in samples)
