"""ONNX preparation: dynamic batch, batch-N parity, and models rejected with a reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from matteserve.build import onnx_prep, weights
from matteserve.errors import ModelError
from matteserve.zoo import FixedSize, ModelSpec, Scaling, get_spec

SPEC = ModelSpec("tiny", FixedSize(8, 8), (0.5,) * 3, (0.5,) * 3, Scaling.UNIT)


def tiny_model(tmp_path: Path, reshape_to_batch_one: bool = False, inputs: int = 1, channels: int = 3) -> Path:
    """A 1x1 conv matting 'model' with its batch fixed at 1, as u2netp ships."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])
    w = numpy_helper.from_array(np.full((1, channels, 1, 1), 0.3, np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"])]
    inits = [w]
    if reshape_to_batch_one:
        # A graph that flattens the batch into the pixels: batch N silently mixes images.
        inits.append(numpy_helper.from_array(np.array([1, 1, -1, 8], np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["c", "shape"], ["y"]))
    else:
        nodes.append(helper.make_node("Sigmoid", ["c"], ["y"]))
    graph_inputs = [x] + [
        helper.make_tensor_value_info(f"extra{i}", TensorProto.FLOAT, [1, 3, 8, 8]) for i in range(inputs - 1)
    ]
    graph = helper.make_graph(nodes, "tiny", graph_inputs, [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def test_batch_axis_becomes_dynamic_and_batches_match_singles(tmp_path: Path) -> None:
    prepared = onnx_prep.prepare(tiny_model(tmp_path), SPEC, tmp_path / "out.onnx")
    model = onnx.load(str(prepared.path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert prepared.batch_parity_max_diff == 0.0
    assert (prepared.height, prepared.width) == (8, 8)


def test_graph_that_hard_codes_batch_one_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="batch"):
        onnx_prep.prepare(tiny_model(tmp_path, reshape_to_batch_one=True), SPEC, tmp_path / "out.onnx")


def test_model_with_two_inputs_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="exactly one image input"):
        onnx_prep.prepare(tiny_model(tmp_path, inputs=2), SPEC, tmp_path / "out.onnx")


def test_model_without_rgb_channels_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="N x 3 x H x W"):
        onnx_prep.prepare(tiny_model(tmp_path, channels=1), SPEC, tmp_path / "out.onnx")


def test_spec_size_that_disagrees_with_the_model_is_rejected(tmp_path: Path) -> None:
    spec = ModelSpec("tiny", FixedSize(16, 16), (0.5,) * 3, (0.5,) * 3, Scaling.UNIT)
    with pytest.raises(ModelError, match="fix --input-size"):
        onnx_prep.prepare(tiny_model(tmp_path), spec, tmp_path / "out.onnx")


def test_missing_output_index_is_rejected(tmp_path: Path) -> None:
    spec = ModelSpec("tiny", FixedSize(8, 8), (0.5,) * 3, (0.5,) * 3, Scaling.UNIT, output_index=3)
    with pytest.raises(ModelError, match="output index 3 does not exist"):
        onnx_prep.prepare(tiny_model(tmp_path), spec, tmp_path / "out.onnx")


def test_garbage_file_is_not_an_onnx_model(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"definitely not protobuf")
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        onnx_prep.prepare(path, SPEC, tmp_path / "out.onnx")


def test_u2netp_from_its_wheel_is_verified_and_batches_exactly(tmp_path: Path) -> None:
    spec = get_spec("u2netp")
    source = weights.weights_path(spec)
    assert weights.file_digest(source) == spec.weights.sha256  # type: ignore[union-attr]
    prepared = onnx_prep.prepare(source, spec, tmp_path / "u2netp.onnx")
    assert prepared.batch_parity_max_diff == 0.0
    assert prepared.input_name == "input.1"
    assert len(prepared.output_names) == 7


def test_a_tampered_weights_file_is_refused(tmp_path: Path) -> None:
    spec = get_spec("u2netp")
    bad = tmp_path / "u2netp.onnx"
    bad.write_bytes(weights.weights_path(spec).read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelError, match="sha256"):
        weights.weights_path(spec, bad)


def test_models_without_downloadable_weights_say_how_to_supply_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MATTESERVE_CACHE", str(tmp_path))
    spec = get_spec("modnet")

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(weights.urllib.request, "urlopen", no_network)
    with pytest.raises(ModelError, match=r"--onnx PATH/TO/modnet\.onnx"):
        weights.weights_path(spec)
