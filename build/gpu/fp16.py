"""FP16 conversion of a matting graph for TensorRT's strongly typed networks (TensorRT 11 has no
other kind: the precision of every layer comes from the ONNX).

Weights and activations become FP16; the graph's inputs and outputs stay FP32 (Casts at the edges);
the input slots ONNX requires in FP32 (Resize's roi/scales) stay FP32; and the nodes around
activations measured large on the sample photos (:func:`fp32_islands`) stay FP32, with Casts
around them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from matteserve.build.gpu.graph import image_input, session

logger = logging.getLogger(__name__)

FP16_MAX = 65504.0
# A node stays FP32 when a tensor it reads or writes reaches this on the sample photos. Above 128 an
# FP16 value's step is 1/8 or coarser. Measured on u2netp: the only tensors there (peak 228) are
# around two BatchNorm-folded convolutions with biases of 228 and 1361 whose outputs cancel; FP16
# weights in those two alone moved the alpha by up to 21/255, every other convolution by < 2/255.
KEEP_ABOVE = 128.0
# (op, input slot) that ONNX types as float32 whatever the data type.
FP32_SLOTS = frozenset({("Resize", 1), ("Resize", 2), ("Upsample", 1)})


@dataclass(frozen=True)
class Conversion:
    model: onnx.ModelProto
    kept_fp32: tuple[str, ...]  # nodes left in FP32 (see fp32_islands)
    clipped_weights: int  # weight values beyond FP16's range (clipped to +-65504)


def float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name for v in values if v.type.tensor_type.elem_type == TensorProto.FLOAT} | {
        i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT
    }


def activation_peaks(model: onnx.ModelProto, inputs: Sequence[np.ndarray]) -> dict[str, float]:
    """Float tensor -> the largest |value| it takes on ``inputs`` (one onnxruntime run each, with an
    Abs -> ReduceMax per tensor added as an output)."""
    floats = float_tensors(model) - {i.name for i in model.graph.initializer}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probes: dict[str, str] = {}
    for node in model.graph.node:
        for out in node.output:
            if out in floats:
                amax = f"mx_amax_{len(probes)}"
                probe.graph.node.extend(
                    [
                        helper.make_node("Abs", [out], [f"{amax}_abs"]),
                        helper.make_node("ReduceMax", [f"{amax}_abs"], [amax], keepdims=0),
                    ]
                )
                probe.graph.output.append(helper.make_tensor_value_info(amax, TensorProto.FLOAT, []))
                probes[amax] = out
    sess = session(probe)
    name = image_input(model).name
    peaks = dict.fromkeys(probes.values(), 0.0)
    for x in inputs:
        for amax, value in zip(probes, sess.run(list(probes), {name: x}), strict=True):  # type: ignore[attr-defined]
            peaks[probes[amax]] = max(peaks[probes[amax]], float(value))
    return peaks


def fp32_islands(model: onnx.ModelProto, peaks: dict[str, float], above: float = KEEP_ABOVE) -> set[str]:
    """Nodes that produce or consume a tensor whose peak is beyond ``above``: they stay FP32."""
    large = {t for t, peak in peaks.items() if peak > above}
    return {n.name for n in model.graph.node if large.intersection(n.output) or large.intersection(n.input)}


def convert(model: onnx.ModelProto, keep_fp32: set[str] | frozenset[str] = frozenset()) -> Conversion:
    """FP16 weights and activations, FP32 graph inputs/outputs; ``keep_fp32`` names nodes to leave
    in FP32 (see :func:`fp32_islands`)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    floats = float_tensors(model)
    initializers = {i.name: i for i in graph.initializer}
    _constants_to_initializers(out, initializers)
    floats |= {n for n, i in initializers.items() if i.data_type == TensorProto.FLOAT}
    names = iter(range(1_000_000))

    def fresh(base: str) -> str:
        return f"{base}_mx{next(names)}"

    front: list[onnx.NodeProto] = []
    back: list[onnx.NodeProto] = []
    renames: dict[str, str] = {}
    for value in graph.input:
        if value.name in floats and value.name not in initializers:
            half = fresh(f"{value.name}_fp16")
            front.append(helper.make_node("Cast", [value.name], [half], to=TensorProto.FLOAT16))
            renames[value.name] = half
    for value in graph.output:
        if value.name in floats:
            half = fresh(f"{value.name}_fp16")
            back.append(helper.make_node("Cast", [half], [value.name], to=TensorProto.FLOAT))
            renames[value.name] = half

    nodes: list[onnx.NodeProto] = []
    half_weights: dict[str, str] = {}
    clipped = 0

    def weight(name: str) -> str:
        """The FP16 copy of FP32 initializer ``name``."""
        nonlocal clipped
        if name not in half_weights:
            array = numpy_helper.to_array(initializers[name])
            clipped += int(np.count_nonzero(np.abs(array) > FP16_MAX))
            half = np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16)
            half_weights[name] = fresh(f"{name}_fp16")
            graph.initializer.append(numpy_helper.from_array(half, half_weights[name]))
        return half_weights[name]

    for node in graph.node:
        kept = node.name in keep_fp32
        for slot, original in enumerate(node.input):
            node.input[slot] = renames.get(original, original)
            if original not in floats:
                continue
            wants_fp32 = kept or (node.op_type, slot) in FP32_SLOTS
            if original in initializers:
                node.input[slot] = original if wants_fp32 else weight(original)
            elif wants_fp32:
                full = fresh(f"{original}_fp32")
                nodes.append(helper.make_node("Cast", [node.input[slot]], [full], to=TensorProto.FLOAT))
                node.input[slot] = full
        if node.op_type == "Cast" and not kept and _attr(node, "to") == TensorProto.FLOAT:
            to = next(a for a in node.attribute if a.name == "to")
            to.i = TensorProto.FLOAT16
        after: list[onnx.NodeProto] = []
        for slot, name in enumerate(node.output):
            target = renames.get(name, name)
            if kept and name in floats:
                full = fresh(f"{name}_fp32")
                after.append(helper.make_node("Cast", [full], [target], to=TensorProto.FLOAT16))
                node.output[slot] = full
            else:
                node.output[slot] = target
        nodes.extend([node, *after])

    del graph.node[:]
    graph.node.extend([*front, *nodes, *back])
    used = {i for n in graph.node for i in n.input}
    kept_initializers = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers)
    del graph.value_info[:]
    onnx.checker.check_model(out)
    if clipped:
        logger.warning("%d weight values were beyond FP16's range and were clipped to +-%g", clipped, FP16_MAX)
    return Conversion(out, tuple(sorted(keep_fp32)), clipped)


def _attr(node: onnx.NodeProto, name: str) -> object:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


def _constants_to_initializers(model: onnx.ModelProto, initializers: dict[str, onnx.TensorProto]) -> None:
    """Constant nodes become initializers, so weights are converted in one place."""
    nodes = []
    for node in model.graph.node:
        value = _attr(node, "value")
        if node.op_type == "Constant" and isinstance(value, onnx.TensorProto):
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
            initializers[tensor.name] = tensor
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
