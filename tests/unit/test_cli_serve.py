"""`matteserve serve` keeps Triton, which has no authentication, on loopback unless told otherwise, and
rebuilds a repository that is stale or runs the model otherwise than asked."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from matteserve.build.repository import MANIFEST, adapters_digest
from matteserve.build.runtime_choice import Capabilities, gate_limits
from matteserve.cli import app
from matteserve.paths import default_repository
from matteserve.pipeline.decode import ImageLimits
from matteserve.runtimes import Precision


def test_serve_refuses_to_bind_triton_beyond_loopback_without_expose_triton() -> None:
    result = CliRunner().invoke(app, ["serve", "--address", "0.0.0.0"])
    assert result.exit_code == 2
    assert "Triton has no authentication" in result.output
    assert "--expose-triton" in result.output


class Stop(Exception):
    """Raised by the stand-ins below, before serve would start Triton."""


@pytest.mark.parametrize(
    ("built", "asked", "rebuilds"),
    [("int8", [], False), ("int8", ["--precision", "int8"], False), ("int8", ["--precision", "fp32"], True)],
)
def test_serve_rebuilds_a_repository_that_runs_the_model_otherwise_than_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built: str, asked: list[str], rebuilds: bool
) -> None:
    monkeypatch.setenv("MATTESERVE_CACHE", str(tmp_path))
    repo = default_repository("u2netp", "cpu")
    repo.mkdir(parents=True)
    manifest = {
        "adapters_sha256": adapters_digest(),
        "limits": asdict(ImageLimits()),
        "runtime_choice": {
            "runtime": "openvino",
            "precision": built,
            "capabilities": asdict(Capabilities.detect()),
            "gate_limits": gate_limits(),
        },
    }
    (repo / MANIFEST).write_text(json.dumps(manifest))
    calls: list[dict[str, object]] = []

    def build(spec: object, out: Path, **options: object) -> Path:
        calls.append(options)
        raise Stop

    def check(repository: Path) -> None:
        raise Stop

    monkeypatch.setattr("matteserve.build.builder.build", build)
    monkeypatch.setattr("matteserve.build.gpu.stamp.check_repository", check)
    result = CliRunner().invoke(app, ["serve", *asked])
    assert isinstance(result.exception, Stop)
    assert bool(calls) == rebuilds
    if rebuilds:
        assert calls[0]["precision"] is Precision.FP32
