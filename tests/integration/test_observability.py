"""A real Prometheus scrapes a real Triton and a real gateway under a short load.

Every recording rule and every Grafana panel query must return data, every metric name the rules,
alerts and dashboard use must be on the live /metrics endpoints, and every rule must evaluate
without error. GPU metrics cannot exist on a CPU machine: they are listed in GPU_ONLY with the
reason, and the test checks that the CPU server indeed does not export them.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from matteserve.client import Client
from matteserve.errors import MatteserveError
from matteserve.gateway import GatewayProcess
from matteserve.tritonserver import TritonServer

from ..conftest import free_port, installed_tool  # type: ignore[import-not-found]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
RULE_FILES = sorted((DEPLOY / "rules").glob("*.yml"))
DASHBOARD = DEPLOY / "grafana" / "matteserve.json"

# Triton exports these only when it manages a GPU (they come from DCGM); this CPU machine has none.
GPU_ONLY = frozenset(
    {"nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes", "nv_gpu_power_usage"}
)
# Grafana's built-in interval as Grafana would expand it for a 15 s scrape interval.
GRAFANA_VARIABLES = {"$__rate_interval": "1m"}
METRIC_NAME = re.compile(r"\b(?:nv|matteserve)_[a-z0-9_]+\b")
EXPOSED_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", re.MULTILINE)
DECLARED_FAMILY = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)$", re.MULTILINE)


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]

    def query(self, promql: str) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}") as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}") as r:
            return json.load(r)["data"]

    def all_targets_up(self) -> bool:
        try:
            targets = self.get("/api/v1/targets")["activeTargets"]
        except OSError:
            return False
        return bool(targets) and all(t["health"] == "up" for t in targets)


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    return [v for v in (float(s["value"][1]) for s in result) if math.isfinite(v)]


def has_data(result: list[dict[str, Any]]) -> bool:
    return bool(finite_values(result))


def rule_expressions() -> dict[str, str]:
    """Recording rule or alert name -> expression."""
    return {
        rule.get("record") or rule["alert"]: rule["expr"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    }


def expressions() -> dict[str, str]:
    """Every PromQL expression we ship: rule name or panel title -> expression."""
    return rule_expressions() | {f"panel {title}": expr for title, expr in panel_queries()}


def panel_queries() -> list[tuple[str, str]]:
    queries = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"panel {panel['title']!r} uses a variable the test cannot expand: {expr}"
            queries.append((f"{panel['title']} [{target['refId']}]", expr))
    return queries


def recording_rules() -> list[str]:
    return [name for name in rule_expressions() if ":" in name]


def exported_names(metrics_url: str) -> set[str]:
    """Sample names on the endpoint, and those of every family it declares: a labelled counter
    (errors, retries) is declared from the start but has no sample until its first increment."""
    with urllib.request.urlopen(metrics_url, timeout=5) as r:
        text = r.read().decode()
    names = set(EXPOSED_SAMPLE.findall(text))
    for family, kind in DECLARED_FAMILY.findall(text):
        names |= {family, *(f"{family}{s}" for s in ("_bucket", "_count", "_sum") if kind == "histogram")}
    return names


def write_config(path: Path, targets: dict[str, str]) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULE_FILES],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in targets.items()
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    return installed_tool("prometheus", "`make system-deps` installs the Debian package prometheus")


@pytest.fixture(scope="module")
def scrape_targets(triton: TritonServer, gateway: GatewayProcess) -> dict[str, str]:
    return {
        "matteserve-triton": f"127.0.0.1:{triton.cfg.metrics_port}",
        "matteserve-gateway": f"{gateway.cfg.metrics_host}:{gateway.cfg.metrics_port}",
    }


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str, scrape_targets: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    root = tmp_path_factory.mktemp("prometheus")
    config = write_config(root / "prometheus.yml", scrape_targets)
    subprocess.run(["promtool", "check", "config", str(config)], check=True, capture_output=True)
    port = free_port()
    log = (root / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            prometheus_binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + 30
        while not server.all_targets_up():
            assert process.poll() is None, f"prometheus exited; see {root / 'prometheus.log'}"
            assert time.monotonic() < deadline, f"prometheus did not scrape every target in 30 s: {scrape_targets}"
            time.sleep(0.25)
        yield server
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.fixture(scope="module")
def answers(prometheus: Prometheus, gateway_client: Client, photos: dict[str, bytes]) -> dict[str, list[Any]]:
    """A handful of small real photos through gateway and Triton, and one bad request; then every
    recording rule and panel query, polled until each returns data (the rules use 1-minute rates,
    so everything is read within a minute of the load)."""
    images = list(photos.values())[:4]

    def drive(images: list[bytes]) -> None:
        for data in images:
            gateway_client.remove(data, format="png")
        with pytest.raises(MatteserveError, match="empty"):
            gateway_client.remove(b"", format="png")

    # The gateway's labelled series appear at their first increment; a rate needs a sample before
    # the load, so one request of each kind goes first and is scraped before the rest.
    drive(images[:1])
    deadline = time.monotonic() + 15
    while len(prometheus.query("matteserve_gateway_requests_total")) < 2:
        assert time.monotonic() < deadline, "prometheus never scraped the gateway's request counters"
        time.sleep(0.5)
    drive(images[1:])
    wanted = [*recording_rules(), *(expr for title, expr in panel_queries() if not gpu_only(expr))]
    # Done when every query has data and the rules have evaluated over the scrape that saw the
    # whole load (every gateway request code shows a non-zero rate).
    # Only the unary method: the session's gateway may carry zero-rate series of other methods from
    # earlier tests.
    # Triton is scraped on its own schedule: its ensemble's rate must show the load too.
    load_seen = (
        'min(matteserve:gateway_requests:rate1m{method="Remove"}) > 0',
        'matteserve:triton_requests:rate1m{model="remove_background"} > 0',
    )
    results: dict[str, list[Any]] = {}
    deadline = time.monotonic() + 30
    while True:
        seen = all(has_data(prometheus.query(q)) for q in load_seen)
        results |= {q: prometheus.query(q) for q in wanted if seen or not has_data(results.get(q, []))}
        if (seen and all(has_data(results[q]) for q in wanted)) or time.monotonic() > deadline:
            return results
        time.sleep(0.5)


def gpu_only(expr: str) -> bool:
    return bool(set(METRIC_NAME.findall(expr)) & GPU_ONLY)


def test_every_metric_name_in_rules_alerts_and_dashboard_is_exported(
    scrape_targets: dict[str, str], answers: dict[str, list[Any]]
) -> None:
    live: set[str] = set()
    for target in scrape_targets.values():
        live |= exported_names(f"http://{target}/metrics")
    used = {name: where for where, expr in expressions().items() for name in METRIC_NAME.findall(expr)}
    missing = {name: where for name, where in used.items() if name not in live and name not in GPU_ONLY}
    assert not missing, f"metric names not on any live /metrics endpoint: {missing}"
    assert used.keys() >= GPU_ONLY, "GPU_ONLY lists a metric no rule or panel uses"
    assert not GPU_ONLY & live, "a metric listed as GPU-only is exported on this CPU machine"


def test_every_rule_loads_and_evaluates_without_error(prometheus: Prometheus, answers: dict[str, list[Any]]) -> None:
    rules = [rule for group in prometheus.get("/api/v1/rules")["groups"] for rule in group["rules"]]
    assert sorted(rule["name"] for rule in rules) == sorted(rule_expressions())
    unhealthy = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not unhealthy


@pytest.mark.parametrize("record", recording_rules())
def test_recording_rule_returns_data_under_load(answers: dict[str, list[Any]], record: str) -> None:
    assert has_data(answers[record]), f"{record} returned no finite sample: {answers[record]}"


@pytest.mark.parametrize(("title", "expr"), panel_queries())
def test_dashboard_panel_query_returns_data_under_load(answers: dict[str, list[Any]], title: str, expr: str) -> None:
    if gpu_only(expr):
        pytest.skip(f"{title}: GPU-only metrics (Triton exports them only on a GPU node)")
    assert has_data(answers[expr]), f"panel {title}: {expr} returned no finite sample: {answers[expr]}"


def test_the_load_shows_in_the_rules(answers: dict[str, list[Any]]) -> None:
    requests = {
        s["metric"]["code"]: float(s["value"][1])
        for s in answers["matteserve:gateway_requests:rate1m"]
        if s["metric"]["method"] == "Remove"
    }
    assert requests.get("OK", 0) > 0
    assert requests.get("INVALID_ARGUMENT", 0) > 0, "the empty image was not counted as a client error"
    # A client's mistake is not a server error.
    assert finite_values(answers["matteserve:gateway_error_ratio:rate1m"]) == [0.0]
    models = {s["metric"]["model"]: float(s["value"][1]) for s in answers["matteserve:triton_requests:rate1m"]}
    assert models.get("remove_background", 0) > 0
    batch = {s["metric"]["model"]: float(s["value"][1]) for s in answers["matteserve:triton_batch_size:avg_rate1m"]}
    assert batch.get("matting", 0) >= 1
    p50, p99 = (
        finite_values(answers[f"matteserve:gateway_request_duration_seconds:{q}_rate1m"])[0] for q in ("p50", "p99")
    )
    assert 0 < p50 <= p99
