"""GPU graph rewrites checked in onnxruntime against the original model, on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from matteserve.build import onnx_prep, photos, weights
from matteserve.build.gpu import fp16, graph, parity
from matteserve.build.gpu.build import PhotoSets, prepare_graphs
from matteserve.errors import ModelError
from matteserve.pipeline import tensor
from matteserve.zoo import Activation, FixedSize, ModelSpec, OutputNorm, Scaling, get_spec

U2NETP = get_spec("u2netp")


@pytest.fixture(scope="module")
def u2netp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """u2netp with a dynamic batch axis, as the build prepares it."""
    out = tmp_path_factory.mktemp("u2netp") / "prepared.onnx"
    return onnx_prep.prepare(weights.weights_path(U2NETP), U2NETP, out).path


@pytest.fixture(scope="module")
def simplified(u2netp: Path, tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    return graph.simplify(onnx.load(str(u2netp)), U2NETP, tmp_path_factory.mktemp("work"))


@pytest.fixture(scope="module")
def pixels(photo_arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return parity.sample_pixels(photo_arrays, U2NETP)


def raw_outputs(model: onnx.ModelProto | Path, x: np.ndarray) -> list[np.ndarray]:
    sess = graph.session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})  # type: ignore[attr-defined,no-any-return]


def test_static_resizes_remove_the_shape_arithmetic_and_change_no_output(
    u2netp: Path, simplified: onnx.ModelProto, pixels: dict[str, np.ndarray]
) -> None:
    before = onnx.load(str(u2netp))
    ops = {n.op_type for n in simplified.graph.node}
    assert len(before.graph.node) > 1000
    assert len(simplified.graph.node) < 400
    assert not ops & {"Shape", "Gather", "Unsqueeze", "Slice", "Cast", "Constant"}
    assert all(len(n.input) == 3 for n in simplified.graph.node if n.op_type == "Resize")
    x = np.stack([tensor.normalise(p, U2NETP) for p in pixels.values()])
    for want, got in zip(raw_outputs(u2netp, x), raw_outputs(simplified, x), strict=True):
        assert np.abs(want - got).max() <= 1e-6


def test_uint8_input_graph_equals_normalise_then_model(
    u2netp: Path, simplified: onnx.ModelProto, pixels: dict[str, np.ndarray]
) -> None:
    folded = graph.fold_io(simplified, U2NETP)
    assert folded.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert [o.name for o in folded.graph.output] == ["ALPHA"]
    report = parity.check(
        "fold",
        parity.reference(graph.session(u2netp), U2NETP),
        parity.folded(graph.session(folded)),
        pixels,
        *parity.fp32_limits(),
    )
    assert report.passed, report.table()
    assert max(p.max_abs for p in report.photos) <= parity.FP32_MAX_ABS


def test_image_max_scaling_is_per_image_within_a_batch(
    simplified: onnx.ModelProto, pixels: dict[str, np.ndarray]
) -> None:
    """A dark and a bright photo in one batch: each must be divided by its own max."""
    run = parity.folded(graph.session(graph.fold_io(simplified, U2NETP)))
    dark = (pixels["astronaut"] // 3).astype(np.uint8)
    bright = pixels["coffee"]
    together = run(np.stack([dark, bright]))
    assert np.abs(together[0] - run(dark[None])[0]).max() <= 1e-5
    assert np.abs(together[1] - run(bright[None])[0]).max() <= 1e-5


def test_a_wrong_fold_is_caught_by_the_parity_check(
    u2netp: Path, simplified: onnx.ModelProto, pixels: dict[str, np.ndarray]
) -> None:
    wrong = ModelSpec("u2netp", FixedSize(320, 320), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), Scaling.IMAGE_MAX)
    report = parity.check(
        "wrong",
        parity.reference(graph.session(u2netp), U2NETP),
        parity.folded(graph.session(graph.fold_io(simplified, wrong))),
        pixels,
        *parity.fp32_limits(),
    )
    assert not report.passed


def tiny_model(rank: int) -> onnx.ModelProto:
    """A 1x1 conv 'matting model' with a dynamic batch and a raw (logit-like) output."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])
    dims = ["batch", 1, 8, 8] if rank == 4 else ["batch", 8, 8]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    w = numpy_helper.from_array(np.array([0.9, -0.4, 0.7], np.float32).reshape(1, 3, 1, 1), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c" if rank == 3 else "y"])]
    inits = [w]
    if rank == 3:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
        nodes.append(helper.make_node("Squeeze", ["c", "axes"], ["y"]))
    g = helper.make_graph(nodes, "tiny", [x], [y], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize(
    ("scaling", "activation", "norm", "rank"),
    [
        (Scaling.UNIT, Activation.SIGMOID, OutputNorm.MIN_MAX, 4),
        (Scaling.IMAGE_MAX, Activation.NONE, OutputNorm.CLIP, 3),
        (Scaling.UNIT, Activation.NONE, OutputNorm.CLIP, 4),
    ],
)
def test_fold_follows_the_spec_for_every_scaling_activation_and_output_norm(
    scaling: Scaling, activation: Activation, norm: OutputNorm, rank: int
) -> None:
    spec = ModelSpec(
        "tiny", FixedSize(8, 8), (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), scaling, activation=activation, output_norm=norm
    )
    model = tiny_model(rank)
    px = np.random.default_rng(1).integers(0, 200, size=(2, 8, 8, 3), dtype=np.uint8)
    want = parity.reference(graph.session(model), spec)(px)
    got = parity.folded(graph.session(graph.fold_io(model, spec)))(px)
    assert got.shape == (2, 8, 8)
    assert np.abs(want - got).max() <= parity.FP32_MAX_ABS
    served = np.stack(
        [
            tensor.finalise_alpha(p, spec)
            for p in tensor.select_output(raw_outputs(model, np.stack([tensor.normalise(p, spec) for p in px])), spec)
        ]
    )
    assert np.abs(tensor.alpha_to_uint8(got).astype(int) - served).max() <= 1


def test_fp16_conversion_keeps_fp32_io_and_halves_the_weights(simplified: onnx.ModelProto) -> None:
    converted = fp16.convert(simplified).model
    assert converted.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in converted.graph.output)
    conv_weights = {n.input[1] for n in converted.graph.node if n.op_type == "Conv"}
    types = {i.data_type for i in converted.graph.initializer if i.name in conv_weights}
    assert types == {TensorProto.FLOAT16}
    scales = {n.input[2] for n in converted.graph.node if n.op_type == "Resize"}
    assert {i.data_type for i in converted.graph.initializer if i.name in scales} == {TensorProto.FLOAT}


def test_fp32_islands_are_the_nodes_around_large_activations(
    simplified: onnx.ModelProto, pixels: dict[str, np.ndarray]
) -> None:
    peaks = fp16.activation_peaks(simplified, [tensor.normalise(p, U2NETP)[None] for p in pixels.values()])
    islands = fp16.fp32_islands(simplified, peaks)
    assert islands, "u2netp has activations beyond 128 (measured: 228)"
    assert len(islands) < len(simplified.graph.node) // 10
    kept = fp16.convert(simplified, islands).model
    casts_to_fp32 = [n for n in kept.graph.node if n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT]
    assert len(casts_to_fp32) > 1  # into the islands, and the graph output


def test_the_whole_gpu_graph_preparation_passes_the_gate_on_other_photos(
    u2netp: Path, photo_arrays: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """Islands chosen on the calibration photos; FP16 gated on product shots they lack, one at a time
    and in a batch (three shots and batch 4 keep the test short; the build gates six at batch 32)."""
    shots = ("logo-white", "logo-dark", "horse-white")
    sets = PhotoSets(photo_arrays, {name: pixels for name, pixels in photos.gate().items() if name in shots})
    graphs = prepare_graphs(u2netp, U2NETP, sets, tmp_path, batch=4)
    assert graphs.fp16_passed
    assert all(r.passed for r in graphs.reports), "\n".join(r.table() for r in graphs.reports)
    fp32_report, *fp16_reports = graphs.reports
    assert [p.photo for p in fp32_report.photos] == list(photo_arrays)
    assert [r.batch for r in fp16_reports] == [1, 4]
    for report in fp16_reports:
        assert {p.photo for p in report.photos} == set(shots)
        assert max(p.mean_abs for p in report.photos) <= parity.FP16_MEAN_ABS
    assert graphs.nodes["simplified"] < graphs.nodes["original"] / 2
    assert onnx.load(str(graphs.fp16)).graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8


def test_size_rule_models_are_refused_for_the_gpu(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="one input size"):
        prepare_graphs(tmp_path / "none.onnx", get_spec("modnet"), PhotoSets({}, {}), tmp_path)


def test_edges_cover_the_transition_zone_and_its_neighbourhood() -> None:
    alpha = np.zeros((20, 20))
    alpha[:, 10:] = 1.0  # a hard step at column 10
    alpha[0:3, 0:3] = 0.5  # a soft corner
    band = parity.edges(alpha, radius=2)
    assert band[:, 7:13].all()  # 2 px either side of the crossing between columns 9 and 10
    assert not band[10:, :7].any()
    assert not band[:, 13:].any()
    assert band[0:5, 0:5].all()
    assert not band[6, 6]
