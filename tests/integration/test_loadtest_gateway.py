"""The load generator through a real gateway in front of a real Triton: three independent counts
(the load generator's, the gateway's metrics, Triton's counters) agree, errors by code."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

from matteserve import contract
from matteserve.gateway import GatewayProcess
from matteserve.loadtest import gateway_metrics, triton_metrics
from matteserve.loadtest.runner import Bounds, closed_loop
from matteserve.loadtest.targets import GatewayTarget
from matteserve.tritonserver import TritonServer

from ..conftest import closing, gateway_fixture, run_matteserve  # type: ignore[import-not-found]

loadtest_gateway = gateway_fixture("gateway")


def snapshots(triton: TritonServer, gateway: GatewayProcess) -> tuple[float, gateway_metrics.GatewaySnapshot]:
    t = triton_metrics.scrape(triton.cfg.metrics_url)
    g = gateway_metrics.scrape(gateway.cfg.metrics_url)
    assert t is not None
    assert g is not None
    return t.get(("nv_inference_request_success", contract.ENSEMBLE), 0.0), g


async def test_counts_through_the_gateway_match_the_gateways_and_tritons_own(
    triton: TritonServer, loadtest_gateway: GatewayProcess, make_photo: Callable[..., bytes]
) -> None:
    inputs = [make_photo(512, 512), b"", make_photo(400, 300, "coffee"), b"GIF89a but not really"]
    # The session's Triton may still be finishing requests of an earlier test: start from a count
    # that has stopped moving.
    triton_before, gw_before = snapshots(triton, loadtest_gateway)
    for _ in range(60):
        await asyncio.sleep(0.5)
        settled, gw_before = snapshots(triton, loadtest_gateway)
        if settled == triton_before:
            break
        triton_before = settled
    async with closing(GatewayTarget(loadtest_gateway.target)) as target:
        result = await closed_loop(target, inputs, concurrency=2, bounds=Bounds(3.0, 1000, warmup_s=0))
    triton_after, gw_after = snapshots(triton, loadtest_gateway)
    s = result.summary()
    issued = len(result.samples)
    expected_bad = sum(1 for i in range(issued) if i % len(inputs) in (1, 3))
    assert s.sent == issued > 4
    assert s.errors == {"INVALID_ARGUMENT": expected_bad}
    assert s.ok == issued - expected_bad
    assert gateway_metrics.breakdown(gw_before, gw_after).codes == {"INVALID_ARGUMENT": expected_bad, "OK": s.ok}
    # Triton counts an ensemble success as it releases the request, just after the response has
    # gone out: give the last in-flight requests a moment to be counted.
    deadline = time.monotonic() + 5
    while triton_after - triton_before < s.ok and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        triton_after, _ = snapshots(triton, loadtest_gateway)
    assert triton_after - triton_before == s.ok


def test_loadtest_command_against_the_gateway_reports_its_time_split(
    triton: TritonServer, loadtest_gateway: GatewayProcess, make_photo: Callable[..., bytes], tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(make_photo(512, 384))
    (images / "b.jpg").write_bytes(b"not an image")
    out = tmp_path / "report"
    stdout = run_matteserve(
        "loadtest",
        "--target",
        "gateway",
        "--address",
        loadtest_gateway.target,
        "--gateway-metrics",
        loadtest_gateway.cfg.metrics_url,
        "--triton-metrics",
        triton.cfg.metrics_url,
        "--mode",
        "open",
        "--rate",
        "3",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--images",
        str(images),
        "--out",
        str(out),
        timeout=180,
    )
    assert "the gateway's own time" in stdout
    (run,) = json.loads((out / "loadtest.json").read_text())["runs"]
    s = run["summary"]
    assert s["mode"] == "open"
    assert s["sent"] + s["warmup_sent"] == sum(run["gateway"]["codes"].values())
    assert s["errors"] == {"INVALID_ARGUMENT": s["sent"] - s["ok"]}
    assert run["gateway"]["triton_ms"] > 0
