"""Cutting an ONNX graph into pieces that run one after another at their own precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from matteserve import segments
from matteserve.build import onnx_prep, weights
from matteserve.runtimes import Precision, Runtime, RuntimeSettings, open_session
from matteserve.zoo import get_spec


def test_plan_covers_every_node_once_with_the_fp32_ranges_in_place() -> None:
    assert segments.plan(10, ((3, 5),)) == [(0, 3, False), (3, 5, True), (5, 10, False)]
    assert segments.plan(10, ((0, 4), (8, 10))) == [(0, 4, True), (4, 8, False), (8, 10, True)]
    with pytest.raises(ValueError, match="disjoint"):
        segments.plan(10, ((0, 5), (4, 6)))


def test_ranges_round_trip_through_the_config_text() -> None:
    assert segments.parse_ranges(segments.format_ranges(((1, 5), (9, 12)))) == ((1, 5), (9, 12))
    assert segments.parse_ranges("") == ()


@pytest.fixture(scope="module")
def u2netp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = get_spec("u2netp")
    return onnx_prep.prepare(weights.weights_path(spec), spec, tmp_path_factory.mktemp("seg") / "m.onnx").path


def test_pieces_run_in_turn_give_the_whole_models_outputs(u2netp: Path) -> None:
    model = onnx.load(str(u2netp))
    n = len(model.graph.node)
    pieces = segments.split(model, ((n // 2, 3 * n // 4),))
    assert [p.fp32 for p in pieces] == [False, True, False]
    x = np.random.default_rng(0).normal(size=(2, 3, 320, 320)).astype(np.float32)
    values = {"input.1": x}
    for piece in pieces:
        session = ort.InferenceSession(piece.model.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs = session.run(list(piece.outputs), {name: values[name] for name in piece.inputs})
        values |= dict(zip(piece.outputs, outputs, strict=True))
    whole = ort.InferenceSession(str(u2netp), providers=["CPUExecutionProvider"]).run(None, {"input.1": x})
    for name, expected in zip([o.name for o in model.graph.output], whole, strict=True):
        np.testing.assert_allclose(values[name], expected, atol=1e-5)


def test_openvino_with_every_node_in_fp32_matches_fp32(u2netp: Path) -> None:
    n = len(onnx.load(str(u2netp)).graph.node)
    x = np.random.default_rng(1).normal(size=(1, 3, 320, 320)).astype(np.float32)
    fp32 = open_session(u2netp, RuntimeSettings(Runtime.OPENVINO, Precision.FP32, threads=2))
    island = open_session(u2netp, RuntimeSettings(Runtime.OPENVINO, Precision.BF16, threads=2, fp32_nodes=((0, n),)))
    np.testing.assert_allclose(island.run(x)[0], fp32.run(x)[0], atol=1e-5)
