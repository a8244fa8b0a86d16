"""The benchmark report: ratios, JSON and the bar chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from matteserve.loadtest.bench import BenchReport, SizeResult, Throughput


def result(size: int, ceiling: float, rembg: float, triton: float, gateway: float | None) -> SizeResult:
    return SizeResult(
        size,
        Throughput(ceiling, "batch 1"),
        Throughput(rembg, "sequential"),
        Throughput(triton, "concurrency 4"),
        Throughput(gateway, "concurrency 4") if gateway is not None else None,
    )


def test_ratios_are_taken_within_one_size() -> None:
    r = result(1024, ceiling=8.0, rembg=3.5, triton=7.0, gateway=6.8)
    assert r.ratios() == pytest.approx(
        {
            "triton_vs_rembg": 2.0,
            "triton_vs_ceiling": 0.875,
            "rembg_vs_ceiling": 3.5 / 8.0,
            "gateway_vs_rembg": 6.8 / 3.5,
            "gateway_vs_ceiling": 0.85,
        }
    )


def report() -> BenchReport:
    r = BenchReport({"cpu": "test CPU", "cores": 2}, {"seconds": 20})
    r.results += [result(1024, 8.0, 3.5, 7.0, 6.8), result(2048, 7.9, 1.6, 6.1, None)]
    return r


def test_json_has_every_measurement_with_its_ratios(tmp_path: Path) -> None:
    data = json.loads(report().write_json(tmp_path / "bench.json").read_text())
    first, second = data["results"]
    assert first["ceiling"]["images_per_s"] == 8.0
    assert first["gateway"]["setting"] == "concurrency 4"
    assert first["ratios"]["triton_vs_rembg"] == pytest.approx(2.0)
    assert second["gateway"] is None
    assert "gateway_vs_rembg" not in second["ratios"]


def test_bar_chart_is_a_valid_png(tmp_path: Path) -> None:
    path = report().write_chart(tmp_path / "bench.png")
    assert path is not None
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"


def test_the_served_runtime_is_printed_beside_onnxruntime_fp32() -> None:
    from rich.console import Console

    r = report()
    r.results[0].served_model = Throughput(14.2, "batch 1", {"runtime": "openvino", "precision": "bf16"})
    console = Console(record=True, width=200)
    r.print(console)
    text = console.export_text()
    assert "14.20 (batch 1)" in text
    assert "(same)" in text  # the 2048 px row served onnxruntime FP32 itself
