"""Report files (JSON, CSV, PNG), Triton's counters parsed into a breakdown, and the loopback guard."""

from __future__ import annotations

import csv
import http.server
import itertools
import json
import threading
from pathlib import Path

import pytest
from PIL import Image

from matteserve.errors import MatteserveError
from matteserve.loadtest import gateway_metrics, prometheus, triton_metrics
from matteserve.loadtest.report import CrossCheck, LoadTestReport, RunRecord
from matteserve.loadtest.stats import RunSummary, Sample
from matteserve.loadtest.targets import check_loopback

METRICS_BEFORE = """
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="remove_background",version="1"} 10
nv_inference_request_success{model="matting",version="1"} 10
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="remove_background",reason="OTHER",version="1"} 2
nv_inference_request_failure{model="remove_background",reason="BACKEND",version="1"} 0
# TYPE nv_inference_count counter
nv_inference_count{model="remove_background",version="1"} 10
nv_inference_count{model="matting",version="1"} 10
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="remove_background",version="1"} 10
nv_inference_exec_count{model="matting",version="1"} 10
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="matting",version="1"} 1000
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="matting",version="1"} 100000
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.5
"""
METRICS_AFTER = (
    METRICS_BEFORE.replace('"1"} 10\n', '"1"} 30\n', 2)
    .replace('nv_inference_count{model="matting",version="1"} 10', 'nv_inference_count{model="matting",version="1"} 30')
    .replace('exec_count{model="matting",version="1"} 10', 'exec_count{model="matting",version="1"} 15')
    .replace('reason="OTHER",version="1"} 2', 'reason="OTHER",version="1"} 6')
    .replace("1000\n", "401000\n")
    .replace("100000\n", "2100000\n")
)


def test_breakdown_gives_batch_size_and_per_request_times_from_counter_deltas() -> None:
    rows = triton_metrics.breakdown(
        *(triton_metrics.parse(prometheus.samples(t)) for t in (METRICS_BEFORE, METRICS_AFTER))
    )
    assert [r.model for r in rows] == ["remove_background", "matting"]
    ensemble, matting = rows
    assert (ensemble.requests, ensemble.failures) == (20, 4)
    assert (matting.inferences, matting.executions, matting.avg_batch) == (20, 5, 4.0)
    assert matting.queue_ms == pytest.approx(400_000 / 20 / 1000)
    assert matting.compute_infer_ms == pytest.approx(2_000_000 / 20 / 1000)


def test_scrape_of_an_unreachable_endpoint_gives_none_not_an_error() -> None:
    from ..conftest import free_port  # type: ignore[import-not-found]

    assert triton_metrics.scrape(f"http://127.0.0.1:{free_port()}/metrics", timeout=1) is None


def sample_report() -> LoadTestReport:
    report = LoadTestReport("triton 127.0.0.1:8001", "4 photos 1024x1024 JPEG", "png", {"mode": "closed"})
    rows = triton_metrics.breakdown(
        *(triton_metrics.parse(prometheus.samples(t)) for t in (METRICS_BEFORE, METRICS_AFTER))
    )
    for c, (rps, lat) in enumerate([(3.0, 0.3), (5.5, 0.4), (7.0, 0.6)], start=1):
        samples = [Sample(i * 0.1, i * 0.1, i * 0.1 + lat, "OK") for i in range(20)]
        samples.append(Sample(1.0, 1.0, 1.01, "INVALID_ARGUMENT"))
        summary = RunSummary.of("closed", c, samples, 0.0, 20 / rps)
        check = CrossCheck(c, summary.throughput_rps, rps * 1.05, summary.latency.p50_ms, summary.latency.p50_ms)
        report.runs.append(RunRecord(summary, rows, check))
    return report


def test_json_report_round_trips_every_run_with_its_breakdown_and_cross_check(tmp_path: Path) -> None:
    report = sample_report()
    data = json.loads(report.write_json(tmp_path / "r.json").read_text())
    assert data["target"] == "triton 127.0.0.1:8001"
    assert [r["summary"]["load"] for r in data["runs"]] == [1, 2, 3]
    first = data["runs"][0]
    assert first["summary"]["errors"] == {"INVALID_ARGUMENT": 1}
    assert first["summary"]["sent"] == 21
    assert set(first["summary"]["latency"]) == {"count", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"}
    assert first["triton"][1]["avg_batch"] == 4.0
    assert first["cross_check"]["agrees"] is True
    assert first["cross_check"]["difference"] == pytest.approx(0.05 / 1.05)


def test_csv_report_has_one_row_per_run_with_the_documented_columns(tmp_path: Path) -> None:
    path = sample_report().write_csv(tmp_path / "r.csv")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for column in (
        "mode",
        "load",
        "sent",
        "ok",
        "errors",
        "errors_by_code",
        "throughput_rps",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
        "matting_avg_batch",
        "matting_queue_ms",
        "perf_analyzer_rps",
        "perf_analyzer_agrees",
    ):
        assert column in rows[0], column
    assert rows[0]["errors_by_code"] == "INVALID_ARGUMENT=1"
    assert [int(r["sent"]) for r in rows] == [21, 21, 21]


def test_plot_is_a_valid_png(tmp_path: Path) -> None:
    path = sample_report().write_plot(tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.width > 400
        assert img.height > 300


def test_cross_check_agreement_is_symmetric_and_uses_the_tolerance() -> None:
    assert CrossCheck(2, 10.0, 9.1, 200, 200).agrees
    assert CrossCheck(2, 9.1, 10.0, 200, 200).agrees
    assert not CrossCheck(2, 10.0, 8.9, 200, 200).agrees
    assert CrossCheck(2, 10.0, 8.9, 1, 1).difference == pytest.approx(CrossCheck(2, 8.9, 10.0, 1, 1).difference)


def test_a_disagreement_comes_with_the_likely_reason() -> None:
    assert CrossCheck(2, 10.0, 9.5, 200, 210).explanation == "the two tools agree"
    assert "tail" in CrossCheck(1, 2.3, 3.0, 320, 325).explanation
    assert "medians differ" in CrossCheck(1, 2.3, 3.0, 320, 450).explanation


@pytest.mark.parametrize("address", ["127.0.0.1:8001", "localhost:50051", "[::1]:8001", "127.0.0.2:1"])
def test_loopback_targets_are_allowed(address: str) -> None:
    check_loopback(address, allow_remote=False)


@pytest.mark.parametrize("address", ["10.0.0.5:8001", "8.8.8.8:443", "[2001:db8::1]:8001"])
def test_other_hosts_are_refused_unless_allowed(address: str) -> None:
    with pytest.raises(MatteserveError, match="--allow-remote"):
        check_loopback(address, allow_remote=False)
    check_loopback(address, allow_remote=True)


def test_an_address_without_a_port_is_refused() -> None:
    with pytest.raises(MatteserveError, match="HOST:PORT"):
        check_loopback("127.0.0.1", allow_remote=False)


GATEWAY_BEFORE = """
# TYPE matteserve_gateway_requests counter
matteserve_gateway_requests_total{code="OK",format="png",method="Remove"} 14.0
matteserve_gateway_requests_total{code="INVALID_ARGUMENT",format="png",method="Remove"} 6.0
# TYPE matteserve_gateway_request_duration_seconds histogram
matteserve_gateway_request_duration_seconds_bucket{format="png",method="Remove",le="+Inf"} 20.0
matteserve_gateway_request_duration_seconds_count{format="png",method="Remove"} 20.0
matteserve_gateway_request_duration_seconds_sum{format="png",method="Remove"} 10.0
# TYPE matteserve_gateway_triton_duration_seconds histogram
matteserve_gateway_triton_duration_seconds_bucket{endpoint="127.0.0.1:8001",le="+Inf"} 14.0
matteserve_gateway_triton_duration_seconds_count{endpoint="127.0.0.1:8001"} 14.0
matteserve_gateway_triton_duration_seconds_sum{endpoint="127.0.0.1:8001"} 9.0
"""
GATEWAY_AFTER = """
# TYPE matteserve_gateway_requests counter
matteserve_gateway_requests_total{code="OK",format="png",method="Remove"} 24.0
matteserve_gateway_requests_total{code="OK",format="webp",method="Remove"} 10.0
matteserve_gateway_requests_total{code="INVALID_ARGUMENT",format="png",method="Remove"} 6.0
# TYPE matteserve_gateway_request_duration_seconds histogram
matteserve_gateway_request_duration_seconds_count{format="png",method="Remove"} 30.0
matteserve_gateway_request_duration_seconds_sum{format="png",method="Remove"} 15.0
matteserve_gateway_request_duration_seconds_count{format="webp",method="Remove"} 10.0
matteserve_gateway_request_duration_seconds_sum{format="webp",method="Remove"} 5.2
# TYPE matteserve_gateway_triton_duration_seconds histogram
matteserve_gateway_triton_duration_seconds_count{endpoint="127.0.0.1:8001"} 34.0
matteserve_gateway_triton_duration_seconds_sum{endpoint="127.0.0.1:8001"} 18.8
"""


def test_gateway_breakdown_counts_answers_by_code_and_splits_time_with_triton() -> None:
    g = gateway_metrics.breakdown(
        *(gateway_metrics.parse(prometheus.samples(t)) for t in (GATEWAY_BEFORE, GATEWAY_AFTER))
    )
    assert g.codes == {"OK": 20}  # codes that did not move are left out
    assert g.request_ms == pytest.approx(10.2 / 20 * 1000)
    assert g.triton_ms == pytest.approx(9.8 / 20 * 1000)
    assert g.own_ms == pytest.approx(0.4 / 20 * 1000)


def test_the_after_scrape_waits_for_triton_to_count_every_answer_the_caller_saw() -> None:
    """Triton counts a request once its response is on its way: the first scrapes after a run may
    not include the last answers yet."""
    counts = itertools.chain([3, 3], itertools.repeat(5))

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f'nv_inference_request_success{{model="remove_background",version="1"}} {next(counts)}\n'.encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        before = {("nv_inference_request_success", "remove_background"): 0.0}
        after = triton_metrics.scrape_settled(url, before, answered=5)
        assert after is not None
        assert after[("nv_inference_request_success", "remove_background")] == 5
        # A caller that saw more answers than Triton will ever count gets the last scrape, in bounded time.
        assert triton_metrics.scrape_settled(url, before, answered=9, wait_s=0.2) is not None
    finally:
        server.shutdown()
