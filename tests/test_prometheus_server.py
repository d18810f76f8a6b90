"""A real Prometheus server scrapes a running daemon while frames flow (issue #7).

One module-wide stack: a :class:`Daemon` serving the ``tiny_bundle`` fixture (ZeroMQ and
``/metrics`` on OS-assigned loopback ports) and Debian's ``prometheus`` binary started on a free
loopback port with a config written to ``tmp_path`` (scrape and rule evaluation every 1 s, the
repository's ``deploy/prometheus/alerts.yml`` loaded). Frames (in and out of the bundle's
envelope) and malformed messages go through the real ZeroMQ path; the assertions read
Prometheus' HTTP API (``/api/v1/query``, ``/rules``, ``/targets``) with ``urllib`` and poll with
deadlines. The Grafana dashboard's queries, when ``deploy/grafana/dashboards/fringelive.json``
exists, are evaluated against the same server. Skipped when ``prometheus`` is not installed
(``apt-get install prometheus``).
"""

from __future__ import annotations

import collections
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import msgpack
import numpy as np
import pytest
import zmq

from prometheus_server import (PrometheusError, PrometheusServer, find_prometheus, finite, grafana_targets, poll,
                               substitute_grafana_variables)

from fringelive.daemon.config import DaemonConfig
from fringelive.daemon.protocol import decode_error, decode_result, encode_frame
from fringelive.daemon.server import Daemon

REPO = Path(__file__).resolve().parents[1]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "fringelive.json"
JOB = "fringelive"
SIDE = 128  # px
META = {"pixel_size_nm": 0.02, "dose_e_per_A2": 423.0, "voltage_kv": 300.0}  # the tiny bundle's envelope
N_IN_ENVELOPE = 16
N_OOD = 4  # sent at 80 kV: outside the envelope's 300 kV (by metadata, so certainly ood)
N_GOOD = N_IN_ENVELOPE + N_OOD
N_MALFORMED = 2  # each rejected{reason="bad_msgpack"}
DEADLINE_S = 30.0
LATENCY_P99 = 'histogram_quantile(0.99, sum by (le) (rate(fringelive_frame_latency_seconds_bucket[30s])))'

pytestmark = [pytest.mark.skipif(find_prometheus() is None,
                                 reason="the prometheus binary is not installed (apt-get install prometheus)"),
              pytest.mark.usefixtures("one_torch_thread")]  # conftest.py


@dataclass(frozen=True)
class Traffic:
    """What was sent so far (cumulative) and what the daemon answered."""

    processed: int
    rejected: dict[str, int]  # by reason, from the daemon's own accounting
    drift_statuses: dict[str, int]  # tally of the result headers' drift.status


class Sender:
    """PUSH + SUB on the daemon: frames through the real ZeroMQ path, results awaited."""

    def __init__(self, daemon: Daemon) -> None:
        from fringelive.stream.camera_sim import SimulatedCamera

        self.daemon = daemon
        self.camera = SimulatedCamera((SIDE, SIDE), pixel_size_nm=0.02, dose_e_per_A2=423.0, scenes=2, seed=0)
        ctx = zmq.Context.instance()
        self.sub, self.push = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH)
        self.sub.subscribe(b"")
        self.sub.connect(daemon.endpoints["results"])
        self.push.connect(daemon.endpoints["ingest"])
        self.synced = False
        self.sent = 0
        self.statuses: collections.Counter[str] = collections.Counter()

    def send(self, n_in_envelope: int, n_ood: int, n_malformed: int, batches: int = 4) -> Traffic:
        """Send ``n_in_envelope`` frames at the envelope's conditions, ``n_ood`` at 80 kV and
        ``n_malformed`` non-msgpack headers (rejected ``bad_msgpack``), spread over ``batches``
        batches, each awaited; the cumulative :class:`Traffic`."""
        if not self.synced:
            sync(self.push, self.sub)
            self.synced = True
        n = n_in_envelope + n_ood
        ood = set(np.linspace(0, n - 1, n_ood).round().astype(int)) if n_ood else set()
        assert len(ood) == n_ood, "n_ood must be <= the number of frames"
        for b in range(batches):
            chunk = range(b * n // batches, (b + 1) * n // batches)
            for _ in range(n_malformed * (b + 1) // batches - n_malformed * b // batches):
                self.push.send_multipart([b"\xc1\xc1", b"\x00" * 8])
            for i in chunk:
                counts = self.camera.frame(self.sent + i)[0]
                meta = dict(META, voltage_kv=80.0 if i in ood else 300.0)
                self.push.send_multipart(encode_frame(counts, series="prom", frame=self.sent + i, **meta))
            got = 0
            while got < len(chunk):
                assert self.sub.poll(30_000), f"batch {b}: got {got} of {len(chunk)} results"
                parts = self.sub.recv_multipart()
                if parts[0] == b"result":
                    self.statuses[decode_result(parts)[0]["drift"]["status"]] += 1
                    got += 1
        self.sent += n
        t_end = time.monotonic() + DEADLINE_S
        while self.daemon.metrics.counts()["in_flight"] and time.monotonic() < t_end:
            time.sleep(0.01)
        counts = self.daemon.metrics.counts()
        assert counts["in_flight"] == 0 and counts["processed"] == self.sent, counts
        return Traffic(processed=counts["processed"], rejected=dict(counts["rejected"]),
                       drift_statuses=dict(self.statuses))

    def close(self) -> None:
        self.sub.close(linger=0)
        self.push.close(linger=0)


@dataclass(frozen=True)
class Stack:
    daemon: Daemon
    prometheus: PrometheusServer
    instance: str  # the scrape target, host:port (Prometheus' ``instance`` label)
    sender: Sender

    def send(self, n_in_envelope: int, n_ood: int, n_malformed: int) -> Traffic:
        """Frames after Prometheus' first scrape of the daemon (so every counter's rate has
        a sample from before them), in batches while it scrapes every second."""
        wait_until_up(self)
        return self.sender.send(n_in_envelope, n_ood, n_malformed)


@pytest.fixture(scope="module")
def stack(tiny_bundle: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    cfg = DaemonConfig.from_dict({
        "ingest": {"endpoint": "tcp://127.0.0.1:0"}, "results": {"endpoint": "tcp://127.0.0.1:0"},
        "control": {"endpoint": "tcp://127.0.0.1:0"}, "metrics": {"host": "127.0.0.1", "port": 0},
        "model": {"bundle": str(tiny_bundle.path), "intra_op_threads": 1},
    })
    with Daemon(cfg) as d:
        m = re.fullmatch(r"http://(127\.0\.0\.1:\d+)/metrics", d.endpoints["metrics"])
        assert m is not None, d.endpoints
        workdir = tmp_path_factory.mktemp("prometheus")
        sender = Sender(d)
        try:
            with PrometheusServer(workdir, [m.group(1)], job=JOB, rule_files=[ALERTS]) as prom:
                yield Stack(d, prom, m.group(1), sender)
            assert not prom.running()
        finally:
            sender.close()


def wait_until_up(s: Stack) -> None:
    """Until Prometheus has scraped the daemon at least once (``up == 1``)."""
    poll(lambda: True if s.prometheus.value(f'up{{job="{JOB}"}}') == 1 else None, DEADLINE_S,
         f'up{{job="{JOB}"}} == 1', s.prometheus.targets_summary)


@pytest.fixture(scope="module")
def traffic(stack: Stack) -> Traffic:
    """20 frames (4 of them at 80 kV: ood) and 2 malformed messages (cumulative totals)."""
    before = stack.daemon.metrics.counts()
    ood_before = stack.sender.statuses["ood"]
    t = stack.send(N_IN_ENVELOPE, N_OOD, N_MALFORMED)
    assert t.processed - before["processed"] == N_GOOD, t
    assert t.rejected.get("bad_msgpack", 0) - before["rejected"].get("bad_msgpack", 0) == N_MALFORMED, t
    assert t.drift_statuses.get("ood", 0) - ood_before >= N_OOD, t
    return t


def sync(push: zmq.Socket, sub: zmq.Socket, timeout_s: float = 10.0) -> None:
    """Wait until the subscription is live (slow joiner): numbered headers without ``shape``
    (each rejected ``missing_key``) until the error event of the last one sent comes back."""
    t_end = time.monotonic() + timeout_s
    i = 0
    while time.monotonic() < t_end:
        i += 1
        push.send_multipart([msgpack.packb({"version": 1, "series": "sync", "frame": i}), b""])
        t_poll = time.monotonic() + 0.2
        while sub.poll(max(1, int((t_poll - time.monotonic()) * 1000))):
            parts = sub.recv_multipart()
            if parts[0] == b"error" and decode_error(parts).get("frame") == i:
                return
    raise AssertionError("the subscriber never saw the daemon's events")


def scraped_state(s: Stack) -> dict[str, Any]:
    """What Prometheus holds now about the daemon (instant queries)."""
    p = s.prometheus
    sel = f'job="{JOB}"'
    return {
        "up": p.value(f"up{{{sel}}}"),
        "processed": p.value(f"fringelive_frames_processed_total{{{sel}}}"),
        "rejected": {m.get("reason"): v for m, v in p.vector(f"fringelive_frames_rejected_total{{{sel}}}")},
        "latency_p99_s": p.value(LATENCY_P99),
        "queue_depth": p.vector(f"fringelive_queue_depth{{{sel}}}"),
        "drift": {m.get("status"): v for m, v in p.vector(f"fringelive_drift_frames_total{{{sel}}}")},
    }


def wait_for_traffic(s: Stack, traffic: Traffic) -> dict[str, Any]:
    """Poll until Prometheus has scraped every frame of ``traffic`` and the latency rate is
    finite; the last state in the failure message with the target health."""
    last: dict[str, Any] = {}

    def complete() -> dict[str, Any] | None:
        last.clear()
        last.update(scraped_state(s))
        drift_ok = all(last["drift"].get(k) == v for k, v in traffic.drift_statuses.items())
        p99 = last["latency_p99_s"]
        done = (last["up"] == 1 and last["processed"] == traffic.processed
                and last["rejected"].get("bad_msgpack") == traffic.rejected.get("bad_msgpack", 0)
                and p99 is not None and math.isfinite(p99) and len(last["queue_depth"]) == 1 and drift_ok)
        return dict(last) if done else None

    return poll(complete, DEADLINE_S, "Prometheus to see the daemon's frames",
                lambda: f"last state: {last}\nexpected: {traffic}\n{s.prometheus.targets_summary()}")


def test_prometheus_scrapes_the_running_daemon(stack: Stack, traffic: Traffic) -> None:
    state = wait_for_traffic(stack, traffic)
    assert state["processed"] == traffic.processed >= N_GOOD
    assert state["rejected"]["bad_msgpack"] == traffic.rejected["bad_msgpack"] >= N_MALFORMED
    # the sync messages; the pre-created reasons are there at 0
    assert state["rejected"]["missing_key"] == traffic.rejected["missing_key"]
    assert state["rejected"]["pipeline_error"] == 0
    assert 0.0 < state["latency_p99_s"] <= 60.0
    assert state["queue_depth"][0][1] == 0.0
    assert set(state["drift"]) >= {"ok", "unknown", "warn", "ood"}
    assert state["drift"]["ood"] == traffic.drift_statuses["ood"] >= N_OOD
    assert sum(state["drift"].values()) == traffic.processed
    # the scrape target: its labels, and healthy (polled: one slow scrape on a busy box is no failure)
    expected_target = [(f"http://{stack.instance}/metrics", "up", "")]

    def healthy() -> bool | None:
        up = stack.prometheus.vector("up")
        targets = stack.prometheus.api("targets")["data"]["activeTargets"]
        return True if (up == [({"__name__": "up", "instance": stack.instance, "job": JOB}, 1.0)] and
                        [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets] == expected_target) else None

    poll(healthy, DEADLINE_S, f"one healthy target {expected_target}", stack.prometheus.targets_summary)
    # the bundle being served, as an info series
    (info, _), = stack.prometheus.vector(f'fringelive_bundle_info{{job="{JOB}"}}')
    assert info["name"] == "tiny-resunet-seed" and info["backend"] == "auto"
    # a PromQL error comes back as such (the helper does not hide it)
    bad = stack.prometheus.query("rate(fringelive_frames_processed_total)")
    assert bad["status"] == "error" and bad["errorType"] == "bad_data", bad
    with pytest.raises(PrometheusError, match="expected type range vector"):
        stack.prometheus.vector("rate(fringelive_frames_processed_total)")


def rule_names_in_file(path: Path) -> tuple[list[str], list[str]]:
    """Group names and alert/record names of a Prometheus rule file, in file order."""
    text = path.read_text()
    groups = re.findall(r"^\s*-\s*name:\s*[\"']?([^\s\"']+)", text, flags=re.M)
    rules = re.findall(r"^\s*-\s*(?:alert|record):\s*[\"']?([^\s\"']+)", text, flags=re.M)
    return groups, rules


def test_alert_rules_are_loaded_and_evaluate_without_error(stack: Stack) -> None:
    groups, rules = rule_names_in_file(ALERTS)
    assert groups and rules, f"no groups/rules found in {ALERTS}"
    last: dict[str, Any] = {}

    def evaluated() -> dict[str, Any] | None:
        out = stack.prometheus.api("rules")
        assert out["status"] == "success", out
        last["groups"] = out["data"]["groups"]
        health = {r["name"]: (r["health"], r.get("lastError", "")) for g in last["groups"] for r in g["rules"]}
        return out["data"] if health and all(h == "ok" for h, _ in health.values()) else None

    data = poll(evaluated, DEADLINE_S, "every alert rule to be evaluated (health ok)",
                lambda: json.dumps([{"group": g["name"], "rules": [(r["name"], r["health"], r.get("lastError"))
                                                                   for r in g["rules"]]}
                                    for g in last.get("groups", [])], indent=1))
    # Prometheus lists the groups by name, not in file order
    assert sorted(g["name"] for g in data["groups"]) == sorted(groups)
    assert sorted(r["name"] for g in data["groups"] for r in g["rules"]) == sorted(rules)
    for g in data["groups"]:
        assert g["file"] == str(ALERTS.resolve()) and g["interval"] == 1
        for r in g["rules"]:
            assert r["type"] == "alerting" or r["type"] == "recording"
            assert r["health"] == "ok" and not r.get("lastError"), r
            assert not r["lastEvaluation"].startswith("0001-"), r


def dashboard_variables(dashboard: dict[str, Any], stack: Stack) -> dict[str, str]:
    """Values for the dashboard's template variables: the scrape target for instance-like
    variables, the job name for job-like ones, ``.*`` for the rest."""
    values: dict[str, str] = {}
    for var in (dashboard.get("templating") or {}).get("list") or ():
        name = str(var.get("name", ""))
        if "instance" in name.lower():
            values[name] = stack.instance
        elif "job" in name.lower():
            values[name] = JOB
        else:
            values[name] = ".*"
    return values


#: Metrics behind the core panels: throughput, latency, queue depth.
CORE_METRICS = ("fringelive_frames_processed_total", "fringelive_frame_latency_seconds_bucket",
                "fringelive_queue_depth")


def test_grafana_dashboard_queries_evaluate(stack: Stack) -> None:
    if not DASHBOARD.is_file():
        pytest.skip(f"no Grafana dashboard yet at {DASHBOARD.relative_to(REPO)}")
    dashboard = json.loads(DASHBOARD.read_text())
    dashboard = dashboard.get("dashboard", dashboard)  # an export wrapped for the HTTP API
    targets = grafana_targets(dashboard)
    assert targets, f"{DASHBOARD} has no panel target with an expr"
    values = dashboard_variables(dashboard, stack)
    # fresh frames: rates over the dashboard's windows (30 s, 1 m) see them whatever ran before
    wait_for_traffic(stack, stack.send(n_in_envelope=6, n_ood=2, n_malformed=1))
    errors, results = [], {}
    for title, ref, expr in targets:
        promql = substitute_grafana_variables(expr, values, duration="30s")
        out = stack.prometheus.query(promql)
        if out.get("status") != "success":
            errors.append(f"{title!r} {ref}: {promql}\n    -> {out.get('errorType')}: {out.get('error')}")
        else:
            results[(title, ref)] = (promql, out["data"])
    assert not errors, "PromQL errors in the dashboard:\n" + "\n".join(errors)
    empty = []
    for metric in CORE_METRICS:
        using = [(key, promql, data) for key, (promql, data) in results.items() if metric in promql]
        assert using, f"no dashboard panel queries {metric} (panels: {sorted({t for t, _, _ in targets})})"
        for (title, ref), promql, data in using:
            if not data["result"]:
                empty.append(f"{title!r} {ref}: {promql}")
    assert not empty, "core panels without data:\n" + "\n".join(empty)
    # the p99 latency the dashboard shows is a number once frames flowed
    latency = [data for (_, _), (promql, data) in results.items()
               if "fringelive_frame_latency_seconds_bucket" in promql and "histogram_quantile" in promql]
    assert any(finite([(s["metric"], float(s["value"][1])) for s in d["result"]]) for d in latency
               if d["resultType"] == "vector"), latency


# --- the helper itself --------------------------------------------------------------------------

def test_server_retries_a_taken_port_and_stops_its_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import prometheus_server

    real = prometheus_server.free_loopback_port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        offered = [taken.getsockname()[1]]
        monkeypatch.setattr(prometheus_server, "free_loopback_port", lambda: offered.pop(0) if offered else real())
        with PrometheusServer(tmp_path, ["127.0.0.1:9"], job="nothing") as prom:
            assert prom.port != taken.getsockname()[1] and prom.running()
            proc = prom._proc
            assert proc is not None
            assert prom.value('up{job="nothing"}') in (None, 0.0)  # nothing listens on port 9
        assert proc.poll() is not None and not prom.running()
        assert offered == []  # the taken port was tried first


def test_server_start_failure_names_the_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: A\n        expr: rate(foo)\n")
    server = PrometheusServer(tmp_path / "p", ["127.0.0.1:9"], rule_files=[bad])
    with pytest.raises(PrometheusError, match=r"exited with code 1(.|\n)*expected type range vector"):
        server.start()
    assert not server.running()
    with pytest.raises(ValueError, match="rule file does not exist: .*missing.yml"):
        PrometheusServer(tmp_path, ["127.0.0.1:9"], rule_files=[tmp_path / "missing.yml"])
    with pytest.raises(ValueError, match="scrape_interval_s must be an integer >= 1 \\(s\\), got 0"):
        PrometheusServer(tmp_path, ["127.0.0.1:9"], scrape_interval_s=0)


def test_grafana_variable_substitution() -> None:
    expr = ('histogram_quantile(0.99, sum by (le) (rate(x_bucket{instance=~"$instance", job="${job}"}'
            '[$__rate_interval]))) + [[other]] * ${__range_s} + $__interval_ms')
    got = substitute_grafana_variables(expr, {"instance": "127.0.0.1:9108", "job": "fringelive"})
    assert got == ('histogram_quantile(0.99, sum by (le) (rate(x_bucket{instance=~"127.0.0.1:9108", '
                   'job="fringelive"}[30s]))) + .* * 30 + 30000')
    dashboard = {"panels": [{"title": "a", "targets": [{"refId": "A", "expr": "up"}, {"refId": "B", "expr": ""}]},
                            {"title": "row", "type": "row", "panels": [{"title": "b", "targets": [
                                {"refId": "A", "expr": "x", "hide": True}, {"refId": "C", "expr": "y"}]}]}]}
    assert grafana_targets(dashboard) == [("a", "A", "up"), ("b", "C", "y")]
    with pytest.raises(ValueError, match="duration must look like 30s, 1m, 500ms or 1h, got '30 s'"):
        substitute_grafana_variables("up", {}, duration="30 s")
