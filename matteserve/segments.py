"""Cut an ONNX graph into consecutive pieces, so each piece can run at its own precision.

OpenVINO's CPU plugin applies BF16 to the whole graph. Where a few layers of a model are too
sensitive for BF16 (U2-Net's decoder loses up to 5% IoU on fur and thin structures), those layers
run as an FP32 piece between BF16 pieces. Pieces are ranges of the graph's nodes in file order
(ONNX stores nodes topologically sorted, so every piece only reads what earlier pieces made).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

NodeRange = tuple[int, int]  # [start, end) in the graph's node order


@dataclass(frozen=True)
class Piece:
    model: onnx.ModelProto
    inputs: tuple[str, ...]  # tensors it reads from the graph input or from earlier pieces
    outputs: tuple[str, ...]  # tensors later pieces or the graph's outputs read
    fp32: bool


def plan(node_count: int, fp32: tuple[NodeRange, ...]) -> list[tuple[int, int, bool]]:
    """(start, end, fp32) pieces covering every node: the given ranges in FP32, the gaps not."""
    out: list[tuple[int, int, bool]] = []
    at = 0
    for start, end in sorted(fp32):
        if not 0 <= start < end <= node_count or start < at:
            raise ValueError(f"FP32 node ranges must be disjoint and within 0..{node_count}, got {sorted(fp32)}")
        if start > at:
            out.append((at, start, False))
        out.append((start, end, True))
        at = end
    if at < node_count:
        out.append((at, node_count, False))
    return out


def split(model: onnx.ModelProto, fp32: tuple[NodeRange, ...]) -> list[Piece]:
    """The pieces of ``model`` (with its batch axis as it is); tensor types and shapes of the cuts come
    from ONNX shape inference."""
    import onnx  # here, not at the top: configs and the gateway's CLI read node ranges without onnx
    from onnx import helper

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    initializers = {i.name: i for i in graph.initializer}
    value_info = {v.name: v for v in [*graph.value_info, *graph.output, *graph.input]}
    graph_inputs = {i.name for i in graph.input if i.name not in initializers}
    graph_outputs = {o.name for o in graph.output}
    nodes = list(graph.node)
    available = set(graph_inputs)
    pieces = []
    for start, end, precise in plan(len(nodes), fp32):
        part = nodes[start:end]
        read = list(dict.fromkeys(t for n in part for t in n.input if t))
        later = {t for n in nodes[end:] for t in n.input} | graph_outputs
        made = [t for n in part for t in n.output]
        inputs = tuple(t for t in read if t in available)
        outputs = tuple(dict.fromkeys(t for t in made if t in later))
        body = helper.make_graph(
            part,
            f"piece{start}",
            [value_info[t] for t in inputs],
            [value_info[t] for t in outputs],
            initializer=[initializers[t] for t in read if t in initializers],
        )
        piece = helper.make_model(body, opset_imports=inferred.opset_import, ir_version=inferred.ir_version)
        pieces.append(Piece(piece, inputs, outputs, precise))
        available |= set(outputs)
    return pieces


def format_ranges(ranges: tuple[NodeRange, ...]) -> str:
    """``((527, 791),)`` -> ``"527-791"``, the form the model config carries."""
    return ",".join(f"{start}-{end}" for start, end in ranges)


def parse_ranges(text: str) -> tuple[NodeRange, ...]:
    if not text.strip():
        return ()
    out = []
    for item in text.split(","):
        start, end = item.split("-")
        out.append((int(start), int(end)))
    return tuple(out)
