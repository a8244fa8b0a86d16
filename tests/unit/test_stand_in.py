"""The stand-in matting step's runner: the fixed matte, at the model's resolution, for any input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from matteserve.build.builder import build
from matteserve.build.configs import Target
from matteserve.errors import ModelError
from matteserve.stand_in import StandInRunner, fixed_matte
from matteserve.zoo import get_spec


def test_the_fixed_matte_looks_like_a_subject_on_a_clear_background() -> None:
    matte = fixed_matte(320, 320)
    assert matte.dtype == np.uint8
    assert matte[160, 160] == 255
    assert matte[0, 0] == 0
    assert 0.3 < (matte == 0).mean() < 0.6
    assert ((matte > 0) & (matte < 255)).any()  # a soft edge, as a model's


def test_the_runner_answers_planar_float_and_interleaved_uint8_inputs_at_their_size() -> None:
    alphas = StandInRunner().run_grouped(
        [np.zeros((3, 320, 320), np.float32), np.zeros((256, 384, 3), np.uint8), np.zeros((3, 64, 96), np.float32)]
    )
    assert [a.shape for a in alphas] == [(320, 320), (256, 384), (64, 96)]
    np.testing.assert_array_equal(alphas[0], fixed_matte(320, 320))


def test_the_stand_in_is_marked_in_the_zoo_and_not_built_for_a_gpu(tmp_path: Path) -> None:
    spec = get_spec("null")
    assert spec.stand_in
    assert "STAND-IN" in spec.description
    assert not get_spec("u2netp").stand_in
    with pytest.raises(ModelError, match="--target cpu"):
        build(spec, tmp_path / "repo", target=Target.GPU)


def test_the_stand_in_repository_is_laid_out_like_a_gpu_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matteserve.build.configs import from_pbtxt

    monkeypatch.setenv("MATTESERVE_CPUS", "16")  # a GPU node's CPU budget: 5 pre and 8 post instances
    repo = build(get_spec("null"), tmp_path / "repo")
    pre = from_pbtxt((repo / "preprocess" / "config.pbtxt").read_text())
    post = from_pbtxt((repo / "postprocess" / "config.pbtxt").read_text())
    assert (pre.instance_group[0].count, post.instance_group[0].count) == (5, 8)
    assert pre.parameters["pixels"].string_value == "uint8"
