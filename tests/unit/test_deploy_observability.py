"""Offline checks of deploy/observability with the real promtool (Debian package prometheus)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ..conftest import installed_tool  # type: ignore[import-not-found]

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = installed_tool("promtool", "`make system-deps` installs the Debian package prometheus")
    return subprocess.run([binary, *args], cwd=OBSERVABILITY, capture_output=True, text=True, check=False)


def test_the_compose_prometheus_config_and_its_rules_pass_promtool() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_file_passes_promtool() -> None:
    rules = sorted(str(p.relative_to(OBSERVABILITY)) for p in (OBSERVABILITY / "rules").glob("*.yml"))
    result = promtool("check", "rules", *rules)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_promtool_unit_tests_pass_and_cover_every_alert() -> None:
    import yaml

    tests = OBSERVABILITY / "tests" / "matteserve-rules-test.yml"
    result = promtool("test", "rules", str(tests.relative_to(OBSERVABILITY)))
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {
        rule["alert"]
        for path in (OBSERVABILITY / "rules").glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    suite = yaml.safe_load(tests.read_text())["tests"]
    firing = {t["alertname"] for case in suite for t in case.get("alert_rule_test", []) if t["exp_alerts"]}
    quiet = {t["alertname"] for case in suite for t in case.get("alert_rule_test", []) if not t["exp_alerts"]}
    assert firing == alerts, f"alerts never shown firing: {alerts - firing}"
    assert quiet == alerts, f"alerts never shown quiet: {alerts - quiet}"


def test_every_alert_carries_a_runbook_and_a_severity() -> None:
    import yaml

    for path in (OBSERVABILITY / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in (r for r in group["rules"] if "alert" in r):
                assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
                assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), rule["alert"]


def test_the_dashboard_panels_have_unique_ids_and_queries() -> None:
    dashboard = json.loads((OBSERVABILITY / "grafana" / "matteserve.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
