"""Rewrites of a matting ONNX for the GPU, each checked against the original in onnxruntime.

* :func:`static_resizes`: a model exported from PyTorch computes every upsample's output size at run
  time (``Shape -> Gather -> Unsqueeze -> Concat -> Cast`` feeding ``Resize``'s ``sizes``; u2netp
  has ~700 such nodes). With the spec's fixed input size those sizes are constants, so each Resize
  gets constant ``scales`` instead and the shape arithmetic disappears.
* :func:`ort_basic`: onnxruntime's offline, provider-independent optimisations (constant folding,
  redundant node elimination, Conv+BN/Add/Mul fusion), written back as plain ONNX.
* :func:`fold_io`: the graph takes the resized image as UINT8 ``[N, H, W, 3]`` (what the resize in
  preprocess already holds, 4x fewer bytes than the FP32 tensor) and does the scaling, per-image
  max and mean/std itself; it returns the final alpha, FP32 ``[N, H, W]`` in [0, 1], after the
  spec's output selection, activation and min-max stretch or clip.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from matteserve import contract
from matteserve.build.onnx_prep import BATCH_DIM
from matteserve.errors import ModelError
from matteserve.zoo import Activation, ModelSpec, OutputNorm, Scaling

logger = logging.getLogger(__name__)

MIN_OPSET = 11
# A min-max stretch of a constant prediction divides 0 by this instead of by 0 (-> an all-zero
# matte, as matteserve.pipeline.tensor.finalise_alpha gives).
RANGE_EPSILON = 1e-12


def opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    initializers = {i.name for i in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in initializers)


def prune(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes and initializers that no graph output depends on."""
    needed = {o.name for o in model.graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    del model.graph.node[:]
    model.graph.node.extend(reversed(keep))
    initializers = [i for i in model.graph.initializer if i.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(initializers)
    return model


def session(model: onnx.ModelProto | Path, threads: int = 2) -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    data = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _probe(model: onnx.ModelProto, tensors: Sequence[str], x: np.ndarray) -> list[np.ndarray]:
    """The values of int64 tensors ``tensors`` for input ``x``, by exposing them as outputs."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.INT64, None) for t in tensors)
    sess = session(probe)
    return list(sess.run(list(tensors), {image_input(model).name: x}))  # type: ignore[attr-defined]


def static_resizes(model: onnx.ModelProto, spec: ModelSpec) -> tuple[onnx.ModelProto, int]:
    """Give every run-time-sized Resize constant scales where the spec's fixed size makes them
    constant. Returns the model and how many Resizes were rewritten."""
    static = spec.size.static
    resizes = [
        n
        for n in model.graph.node
        if n.op_type == "Resize" and len(n.input) == 4 and n.input[3] and n.input[3] not in _constants(model)
    ]
    if static is None or not resizes:
        return model, 0
    width, height = static
    shapes: list[str] = []
    for i, node in enumerate(resizes):
        shape = f"mx_probe_shape_{i}"
        model.graph.node.append(helper.make_node("Shape", [node.input[0]], [shape]))
        shapes.append(shape)
    tensors = [t for pair in zip(shapes, (n.input[3] for n in resizes), strict=True) for t in pair]
    # Two batch sizes: a size that follows the batch is not a constant.
    runs = [_probe(model, tensors, np.zeros((batch, 3, height, width), np.float32)) for batch in (1, 2)]
    del model.graph.node[len(model.graph.node) - len(resizes) :]
    rewritten = 0
    for i, node in enumerate(resizes):
        (in1, out1), (in2, out2) = ((run[2 * i], run[2 * i + 1]) for run in runs)
        if not (np.array_equal(in1[2:], in2[2:]) and np.array_equal(out1[2:], out2[2:])):
            continue
        if not (np.array_equal(out1[:2], in1[:2]) and np.array_equal(out2[:2], in2[:2])):
            continue
        scales = np.concatenate([[1.0, 1.0], out1[2:] / in1[2:]]).astype(np.float32)
        # Resize computes the output size as floor(input * scale) in float: it must land exactly.
        if not np.array_equal(np.floor(in1.astype(np.float32) * scales).astype(np.int64), out1):
            continue
        name = f"mx_scales_{i}"
        model.graph.initializer.append(numpy_helper.from_array(scales, name))
        data, roi = node.input[0], node.input[1]
        del node.input[:]
        node.input.extend([data, roi, name])  # Resize takes scales or sizes, never both
        rewritten += 1
    return prune(model), rewritten


def _constants(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output
    }


def ort_basic(model: onnx.ModelProto, work: Path) -> onnx.ModelProto:
    """onnxruntime's BASIC level written back to ONNX: only provider-independent rewrites, so the
    result is still a plain ONNX graph any runtime (TensorRT included) reads."""
    import onnxruntime as ort

    src, dst = work / "ort-in.onnx", work / "ort-basic.onnx"
    onnx.save(model, str(src))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    return onnx.load(str(dst))


def simplify(model: onnx.ModelProto, spec: ModelSpec, work: Path) -> onnx.ModelProto:
    """Static resizes, then onnxruntime's constant folding; logs the node count before and after."""
    before = len(model.graph.node)
    model, resizes = static_resizes(model, spec)
    model = ort_basic(model, work)
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"node_{i}"  # FP32 islands and TensorRT layers are named after nodes
    logger.info(
        "%s: %d -> %d nodes (%d resizes given constant scales)", spec.name, before, len(model.graph.node), resizes
    )
    return model


class _Nodes:
    """Appends nodes with unique ``mx_`` names; ``opset`` decides attribute-vs-input forms."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.opset = opset(model)
        self.nodes: list[onnx.NodeProto] = []
        self.count = 0

    def const(self, value: np.ndarray | float, dtype: type = np.float32) -> str:
        self.count += 1
        name = f"mx_const_{self.count}"
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def add(self, op: str, inputs: Iterable[str], output: str | None = None, **attrs: Any) -> str:
        self.count += 1
        out = output or f"mx_{op.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=f"mx_{op}_{self.count}", **attrs))
        return out

    def reduce(self, op: str, x: str, axes: list[int]) -> str:
        """ReduceMax/ReduceMin keeping dims; axes moved from attribute to input in opset 18."""
        if self.opset >= 18:
            return self.add(op, [x, self.const(np.array(axes), np.int64)], keepdims=1)
        return self.add(op, [x], axes=axes, keepdims=1)


def fold_io(model: onnx.ModelProto, spec: ModelSpec) -> onnx.ModelProto:
    """The graph that takes UINT8 ``PIXELS [N, H, W, 3]`` and returns FP32 ``ALPHA [N, H, W]``.

    Input: Cast -> Transpose to NCHW -> (image-max: divide by max(per-image max, 1) | unit: /255)
    -> x * (1/std) - mean/std, exactly :func:`matteserve.pipeline.tensor.normalise`'s arithmetic.
    Output: channel 0 of output ``spec.output_index`` -> optional Sigmoid -> per-image min-max
    stretch or clip to [0, 1], :func:`matteserve.pipeline.tensor.finalise_alpha` before its x255.
    """
    if opset(model) < MIN_OPSET:
        raise ModelError(f"{spec.name}: opset {opset(model)} is too old for the GPU rewrites; export with >= 11")
    model = _copy(model)
    graph = model.graph
    source = image_input(model)
    dims = [d.dim_param or d.dim_value for d in source.type.tensor_type.shape.dim]
    height, width = (
        d if isinstance(d, int) and d > 0 else name for d, name in zip(dims[2:], ("height", "width"), strict=True)
    )
    out = graph.output[spec.output_index]
    out_rank = len(out.type.tensor_type.shape.dim)
    b = _Nodes(model)

    x = b.add("Transpose", [b.add("Cast", [contract.PIXELS], to=TensorProto.FLOAT)], perm=[0, 3, 1, 2])
    if spec.scaling is Scaling.IMAGE_MAX:
        x = b.add("Div", [x, b.add("Max", [b.reduce("ReduceMax", x, [1, 2, 3]), b.const(1.0)])])
        inv_std = [1.0 / s for s in spec.std]
    else:
        inv_std = [1.0 / (255.0 * s) for s in spec.std]
    x = b.add("Mul", [x, b.const(np.array(inv_std).reshape(1, 3, 1, 1))])
    mean = np.array([m / s for m, s in zip(spec.mean, spec.std, strict=True)]).reshape(1, 3, 1, 1)
    b.add("Sub", [x, b.const(mean)], output=source.name)
    head = list(b.nodes)
    b.nodes.clear()

    p = b.add("Gather", [out.name, b.const(np.array(0), np.int64)], axis=1) if out_rank == 4 else out.name
    if spec.activation is Activation.SIGMOID:
        p = b.add("Sigmoid", [p])
    if spec.output_norm is OutputNorm.MIN_MAX:
        lo = b.reduce("ReduceMin", p, [1, 2])
        span = b.add("Max", [b.add("Sub", [b.reduce("ReduceMax", p, [1, 2]), lo]), b.const(RANGE_EPSILON)])
        b.add("Div", [b.add("Sub", [p, lo]), span], output=contract.ALPHA)
    else:
        b.add("Clip", [p, b.const(0.0), b.const(1.0)], output=contract.ALPHA)

    nodes = [*head, *graph.node, *b.nodes]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.remove(source)
    graph.input.insert(
        0, helper.make_tensor_value_info(contract.PIXELS, TensorProto.UINT8, [BATCH_DIM, height, width, 3])
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(contract.ALPHA, TensorProto.FLOAT, [BATCH_DIM, height, width]))
    del graph.value_info[:]
    model = prune(model)
    onnx.checker.check_model(model)
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
