"""deploy/prometheus/alerts.yml: valid rules (promtool check rules) that pass their unit tests
(promtool test rules alerts_test.yml), and that only use metrics the daemon exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")


@needs_promtool
def test_promtool_check_rules() -> None:
    out = subprocess.run([PROMTOOL, "check", "rules", str(DEPLOY / "alerts.yml")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 8 rules found" in out.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    out = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=DEPLOY, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_rules_use_for_keep_firing_for_and_exported_metrics() -> None:
    from fringelive.daemon.metrics import DaemonMetrics

    text = (DEPLOY / "alerts.yml").read_text()
    alerts = re.findall(r"- alert: (\w+)", text)
    assert len(alerts) == 8
    assert text.count("\n        for: ") == 8 and text.count("keep_firing_for: ") == 8
    used = set(re.findall(r"\b(fringelive_[a-z_]+)", text))
    metrics = DaemonMetrics()
    metrics.observe_drift("m", {"status": "warn", "reasons": ["dose_metadata_mismatch"], "signals": {"entropy_foreground": 0.1},
                                "cusum": {"statistics": {"entropy_foreground": 0.0}, "h": 5.0}, "alarm": False})
    metrics.observe_camera({"gain_counts_per_e": 8.0, "offset_counts": 100.0,
                            "sources": {"gain_counts_per_e": "config", "offset_counts": "learned"}})
    exported = {s.name for fam in metrics.registry.collect() for s in fam.samples}
    assert used <= exported, used - exported
