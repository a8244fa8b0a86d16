"""The load generator against a real Triton: its counts agree with Triton's own, errors by code."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from matteserve import contract
from matteserve.loadtest import perf_analyzer, triton_metrics
from matteserve.loadtest.runner import Bounds, closed_loop, open_loop
from matteserve.loadtest.targets import TritonTarget
from matteserve.tritonserver import TritonServer

from ..conftest import closing, run_matteserve  # type: ignore[import-not-found]

BAD = [b"", b"this is not an image"]


def ensemble_successes(server: TritonServer) -> int:
    """Triton's ensemble success count once it has settled: requests another test (or the run just
    finished) left in flight are counted as they complete, just after their responses leave."""

    def read() -> int:
        snapshot = triton_metrics.scrape(server.cfg.metrics_url)
        assert snapshot is not None
        return round(snapshot.get(("nv_inference_request_success", contract.ENSEMBLE), 0.0))

    last, deadline = read(), time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if (now := read()) == last:
            return now
        last = now
    return last


@pytest.fixture(scope="module")
def mixed_inputs(make_photo: Callable[..., bytes]) -> list[bytes]:
    """Two photos then two inputs Triton must reject."""
    return [make_photo(512, 512), make_photo(480, 360, "chelsea"), *BAD]


async def test_closed_loop_counts_match_what_triton_served_and_errors_are_counted_by_code(
    triton: TritonServer, mixed_inputs: list[bytes]
) -> None:
    before = ensemble_successes(triton)
    async with closing(TritonTarget(triton.cfg.grpc_url, mixed_inputs)) as target:
        result = await closed_loop(target, mixed_inputs, concurrency=2, bounds=Bounds(3.0, 1000, warmup_s=0))
    s = result.summary()
    served = ensemble_successes(triton) - before
    issued = len(result.samples)
    # Round-robin: request i carried input i % 4, and inputs 2 and 3 are the bad ones.
    expected_bad = sum(1 for i in range(issued) if i % len(mixed_inputs) >= 2)
    assert s.sent == issued > 4
    assert s.errors == {"INVALID_ARGUMENT": expected_bad}
    assert s.ok == issued - expected_bad == served
    assert s.latency.count == s.ok
    assert s.throughput_rps > 0


async def test_open_loop_sends_its_schedule_and_triton_served_every_good_request(
    triton: TritonServer, mixed_inputs: list[bytes]
) -> None:
    good = mixed_inputs[:2]
    before = ensemble_successes(triton)
    async with closing(TritonTarget(triton.cfg.grpc_url, good)) as target:
        result = await open_loop(target, good, rate=3.0, bounds=Bounds(2.0, 1000, warmup_s=1.0))
    s = result.summary()
    assert (s.sent, s.warmup_sent) == (6, 3)
    assert s.errors == {}
    # Warm-up requests are excluded from the figures but were served all the same.
    assert ensemble_successes(triton) - before == s.ok + s.warmup_sent == 9


def test_loadtest_command_writes_consistent_json_csv_and_png(
    triton: TritonServer, mixed_inputs: list[bytes], tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    # The bad inputs sort first and nothing is warm-up, so every 2 s run sends some even on a slow machine.
    for i, data in enumerate(mixed_inputs):
        (images / f"{(i + 2) % len(mixed_inputs)}.jpg").write_bytes(data)
    out = tmp_path / "report"
    stdout = run_matteserve(
        "loadtest",
        "--address",
        triton.cfg.grpc_url,
        "--triton-metrics",
        triton.cfg.metrics_url,
        "--concurrency",
        "1,2",
        "--duration",
        "2",
        "--warmup",
        "0",
        "--images",
        str(images),
        "--format",
        "webp",
        "--out",
        str(out),
        timeout=180,
    )
    assert "where the time went" in stdout
    report = json.loads((out / "loadtest.json").read_text())
    assert report["output_format"] == "webp"
    assert [r["summary"]["load"] for r in report["runs"]] == [1, 2]
    for run in report["runs"]:
        s = run["summary"]
        assert s["sent"] == s["ok"] + sum(s["errors"].values())
        assert set(s["errors"]) == {"INVALID_ARGUMENT"}
        models = {m["model"]: m for m in run["triton"]}
        assert set(models) == {contract.ENSEMBLE, contract.PREPROCESS, contract.MATTING, contract.POSTPROCESS}
        assert models[contract.ENSEMBLE]["requests"] >= s["ok"]
        assert models[contract.MATTING]["avg_batch"] >= 1.0
    assert (out / "loadtest.csv").read_text().count("\n") == 3
    assert (out / "loadtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_perf_analyzer_measures_the_same_ensemble_with_the_generated_input_file(
    triton: TritonServer, mixed_inputs: list[bytes], tmp_path: Path
) -> None:
    perf_analyzer.check()  # `make test` installs it first (make perf-analyzer); missing is a failure
    before = ensemble_successes(triton)
    result = perf_analyzer.run(
        triton.cfg.grpc_url, mixed_inputs[:2], b'{"format": "png"}', 1, tmp_path, requests_per_window=6
    )
    served = ensemble_successes(triton) - before
    assert result.concurrency == 1
    assert result.throughput_rps > 0
    # Every request perf_analyzer sent with the file's inputs was a valid one Triton served.
    assert served >= 3 * 6
    assert "Successful request count" in (tmp_path / "perf_analyzer_c1.log").read_text()
