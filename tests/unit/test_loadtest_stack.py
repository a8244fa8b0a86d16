"""The stack measurements: stage CPU per format, CPU per process from /proc, and their report."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

from matteserve import stand_in
from matteserve.loadtest import stack
from matteserve.loadtest.bench import BenchReport
from matteserve.options import OutputFormat
from matteserve.zoo import get_spec


def jpeg(width: int, height: int) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_stage_costs_measure_every_format_with_the_same_preprocess() -> None:
    inputs = [jpeg(200, 150), jpeg(150, 200)]
    alphas = [stand_in.fixed_matte(320, 320)] * 2
    costs = stack.stage_costs(200, inputs, alphas, get_spec("u2netp"), repeats=1)
    assert [c.format for c in stack.stage_costs(200, inputs, alphas, get_spec("u2netp"), [OutputFormat.RAW], 1)] == [
        "raw"
    ]
    assert [c.format for c in costs] == [f.value for f in OutputFormat]
    assert len({c.preprocess_core_ms for c in costs}) == 1
    assert all(c.postprocess_core_ms >= 0 and c.output_bytes > 0 for c in costs)
    raw = next(c for c in costs if c.format == "raw")
    assert raw.output_bytes == 200 * 150


def test_cpu_is_read_per_python_stub_by_the_model_it_serves(tmp_path: Path) -> None:
    """A child started like Triton's stub (first argument <repo>/<model>/1/model.py) is found by its
    parent's pid and its CPU time is booked to that model."""
    script = tmp_path / "repo" / "preprocess" / "1" / "model.py"
    script.parent.mkdir(parents=True)
    script.write_text(
        "import sys, time\nend = time.process_time() + 0.3\nwhile time.process_time() < end:\n    pass\n"
        "sys.stdout.write('busy done\\n'); sys.stdout.flush(); time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "busy done\n"
        cpu = stack.process_cpu(os.getpid())
        assert cpu["preprocess"] >= 0.25
        assert cpu["tritonserver"] > 0  # this process stands in for tritonserver here
    finally:
        child.kill()
        child.wait()
    time.sleep(0.05)
    assert "preprocess" not in stack.process_cpu(os.getpid())


def test_a_stand_in_only_report_prints_and_writes_stages_and_ceiling(tmp_path: Path) -> None:
    report = BenchReport({"cpu": "test CPU", "cores": 2}, {"seconds": 5})
    report.stages.append(stack.StageCost(1024, "png", 4.0, 5.0, 800_000))
    report.stack.append(
        stack.StackResult(
            1024,
            "png",
            4,
            100,
            0,
            50.0,
            {"tritonserver": 3.0, "preprocess": 4.0, "matting": 0.5, "postprocess": 7.5},
            2.0,
            {"preprocess": 5.0, "postprocess": 9.0},
        )
    )
    console = Console(file=io.StringIO(), width=200)
    report.print(console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "9.0" in text  # pre + post of the stage row
    assert "stand-in" in text
    assert report.write_chart(tmp_path / "bench.png") is None
    data = json.loads(report.write_json(tmp_path / "bench.json").read_text())
    assert data["stages"][0]["total_core_ms"] == 9.0
    (row,) = data["stack"]
    assert row["server_total_core_ms"] == 15.0
    assert row["images_per_s_per_server_core"] == 1000.0 / 15.0
