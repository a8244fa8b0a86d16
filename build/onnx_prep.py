"""Make a matting ONNX servable with dynamic batching, and prove that batching does not change it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from matteserve.errors import ModelError
from matteserve.zoo import ModelSpec

logger = logging.getLogger(__name__)

BATCH_DIM = "batch"
# Batch-N versus N single runs: both are the same float32 kernels, so anything above this means a
# hard-coded batch size inside the graph (a Reshape to [1, ...]) rather than rounding.
BATCH_PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class PreparedModel:
    path: Path
    input_name: str
    output_names: tuple[str, ...]
    channels: int
    height: int | None  # None where the size is dynamic
    width: int | None
    batch_parity_max_diff: float


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def make_batch_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """Set the first axis of every graph input and output to the symbol ``batch``.

    Shapes recorded for intermediate tensors are dropped: they were inferred for batch 1 and would
    contradict a larger batch.
    """
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = BATCH_DIM
    del model.graph.value_info[:]
    return model


def validate(model: onnx.ModelProto, spec: ModelSpec) -> None:
    """Reject what matteserve cannot serve, saying why."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise ModelError(f"{spec.name}: a matting model takes exactly one image input, this one has {names}")
    dims = _dims(inputs[0])
    if len(dims) != 4 or dims[1] != 3:
        raise ModelError(f"{spec.name}: the input must be N x 3 x H x W (RGB, channels first), got {dims}")
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ModelError(f"{spec.name}: the input must be float32")
    static = spec.size.static
    if static is not None and all(isinstance(d, int) and d > 0 for d in dims[2:]) and (dims[3], dims[2]) != static:
        raise ModelError(
            f"{spec.name}: the ONNX input is {dims[3]}x{dims[2]} but the spec resizes to {static[0]}x{static[1]}; "
            "fix --input-size"
        )
    if spec.output_index >= len(model.graph.output):
        raise ModelError(
            f"{spec.name}: output index {spec.output_index} does not exist; the model has "
            f"{len(model.graph.output)} output(s)"
        )
    out_dims = _dims(model.graph.output[spec.output_index])
    if len(out_dims) not in (3, 4):
        raise ModelError(f"{spec.name}: output {spec.output_index} must be N x 1 x H x W or N x H x W, got {out_dims}")


def batch_parity(path: Path, spec: ModelSpec, batch: int = 3, seed: int = 0) -> float:
    """Max |batch-N output - N single outputs| for the spec's output, with onnxruntime."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    width, height = spec.input_size(640, 480)
    x = np.random.default_rng(seed).normal(size=(batch, 3, height, width)).astype(np.float32)
    out_name = session.get_outputs()[spec.output_index].name
    try:
        batched = session.run([out_name], {inp.name: x})[0]
    except Exception as e:
        raise ModelError(f"{spec.name}: the model does not run with a batch of {batch}: {e}") from e
    singles = np.concatenate([session.run([out_name], {inp.name: x[i : i + 1]})[0] for i in range(batch)])
    if batched.shape != singles.shape:
        raise ModelError(
            f"{spec.name}: a batch of {batch} gives output shape {batched.shape}, not {singles.shape}; the graph "
            "hard-codes batch 1 (e.g. in a Reshape), so it cannot be served with dynamic batching"
        )
    return float(np.abs(batched - singles).max())


def prepare(source: Path, spec: ModelSpec, out: Path) -> PreparedModel:
    """Check ``source``, write a dynamic-batch copy to ``out`` and prove batch parity."""
    try:
        model = onnx.load(str(source))
        onnx.checker.check_model(model)
    except Exception as e:
        raise ModelError(f"{source} is not a valid ONNX model: {e}") from e
    validate(model, spec)
    model = make_batch_dynamic(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    diff = batch_parity(out, spec)
    if not diff <= BATCH_PARITY_TOLERANCE:
        raise ModelError(
            f"{spec.name}: a batch gives different results from single images (max diff {diff:g}); the graph "
            "probably hard-codes batch 1 in a Reshape, so it cannot be served with dynamic batching"
        )
    logger.info("%s: dynamic batch ready, batch parity max diff %g", spec.name, diff)
    inp = next(i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
    dims = _dims(inp)
    height, width = (d if isinstance(d, int) and d > 0 else None for d in dims[2:])
    return PreparedModel(
        path=out,
        input_name=inp.name,
        output_names=tuple(o.name for o in model.graph.output),
        channels=3,
        height=height,
        width=width,
        batch_parity_max_diff=diff,
    )
