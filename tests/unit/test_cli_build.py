"""`matteserve build` from the command line, for a user's own ONNX and for bad input."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from matteserve import contract
from matteserve.build import configs
from matteserve.build.repository import read_manifest
from matteserve.cli import app

from .test_onnx_prep import tiny_model  # type: ignore[import-not-found]

runner = CliRunner()


def test_user_onnx_with_its_preprocessing_builds_a_repository(tmp_path: Path) -> None:
    onnx = tiny_model(tmp_path)
    args = ["build", "--model", "tiny-net", "--onnx", str(onnx), "--input-size", "8", "--mean", "0.5",
            "--std", "0.25,0.5,1", "--scaling", "unit", "--activation", "sigmoid", "--max-batch-size", "2",
            "--max-pixels", "1000000", "--measure-seconds", "0", "--out", str(tmp_path / "repo")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    repo = tmp_path / "repo"
    manifest = read_manifest(repo)
    assert manifest is not None
    assert manifest["model"] == "tiny-net"
    assert manifest["max_batch_size"] == 2
    assert "runtime: onnxruntime fp32" in result.output
    matting = configs.from_pbtxt((repo / contract.MATTING / "config.pbtxt").read_text())
    assert list(matting.input[0].dims) == [3, 8, 8]
    spec = json.loads(matting.parameters["spec"].string_value)
    assert (spec["std"], spec["activation"], spec["scaling"]) == ([0.25, 0.5, 1.0], "sigmoid", "unit")
    assert json.loads(matting.parameters[contract.Parameter.LIMITS].string_value)["max_pixels"] == 1_000_000


def test_custom_model_without_its_preprocessing_is_refused_with_what_to_add(tmp_path: Path) -> None:
    result = runner.invoke(app, ["build", "--model", "mine", "--onnx", str(tiny_model(tmp_path))])
    assert result.exit_code != 0
    assert "--input-size, --mean, --std and --scaling" in str(result.exception)


def test_bad_mean_says_what_was_wrong(tmp_path: Path) -> None:
    args = ["build", "--model", "mine", "--onnx", str(tiny_model(tmp_path)), "--input-size", "8",
            "--mean", "a,b", "--std", "1", "--scaling", "unit"]  # fmt: skip
    result = runner.invoke(app, args)
    assert "--mean must be 1 or 3 comma-separated numbers" in str(result.exception)


def test_stand_in_builds_from_the_command_line_and_names_itself(tmp_path: Path) -> None:
    # The stand-in has no runtime to choose: the build must not look for one in its manifest.
    result = runner.invoke(app, ["build", "--model", "null", "--out", str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "repo")
    assert manifest is not None
    assert manifest["stand_in"]
    assert "runtime:" not in result.output
