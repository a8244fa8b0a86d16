"""An INT8 copy of the matting model for the CPU target, quantised with accuracy control.

Quantising every layer of U2-Net-p to INT8 breaks it (IoU 0.79 against FP32 on the gate photos).
NNCF's accuracy-controlled quantisation puts layers back into FP32, most damaging first, until the
model's worst photo is within :data:`MAX_DROP` of FP32 on a tuning set; the result is an OpenVINO
model (:func:`matteserve.runtimes.int8_files`) that the build then judges like any other candidate,
on the gate photos (:mod:`.runtime_choice`). The tuning set is :func:`matteserve.build.photos.gate`
(a street photo, and product cut-outs on white, grey and dark backgrounds). The gate is only partly
held out from it: three of the gate's nine photos are near-copies of tuning photos (scikit-image's
logo on white and on near-black, and the coffee-textured horse on white).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from matteserve.errors import ModelError
from matteserve.runtimes import int8_files
from matteserve.zoo import ModelSpec

logger = logging.getLogger(__name__)

# The tuning score of a photo: the lowest of its IoU with the FP32 matte and its mean and 99th-percentile
# absolute errors, each error scaled so that the parity gate's limit for it scores 1 - MAX_DROP; the
# model's score is its worst photo's. Quantisation may cost at most this much of it: every tuning photo
# is held to IoU >= 0.96 and to the gate's limits on the errors.
MAX_DROP = 0.04
# Each round of putting layers back into FP32 runs the tuning set again; this bounds the build's time.
MAX_ROUNDS = 30


def score(expected: np.ndarray, actual: np.ndarray) -> float:
    """How close a uint8 matte is to the FP32 one, in [0, 1] (1: the same)."""
    from matteserve.build.runtime_choice import MEAN_ABS_LIMIT, P99_LIMIT, compare

    photo = compare("", expected, actual)
    mean_term = 1.0 - MAX_DROP * photo.mean_abs / MEAN_ABS_LIMIT
    p99_term = 1.0 - MAX_DROP * photo.p99_abs / P99_LIMIT
    return max(0.0, min(photo.iou, mean_term, p99_term))


def quantize(onnx: Path, spec: ModelSpec, inputs: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> Path:
    """Quantise ``onnx`` on the tuning ``inputs`` (name -> the model's 3xHxW float32 input), keeping
    the worst photo's :func:`score` against the FP32 ``expected`` mattes within :data:`MAX_DROP`.
    Writes the OpenVINO model beside ``onnx`` and returns its path."""
    import nncf
    import openvino as ov

    from matteserve.pipeline import tensor

    def validate(compiled: ov.CompiledModel, data: list[tuple[str, np.ndarray]]) -> float:
        request = compiled.create_infer_request()
        scores = []
        for name, batch in data:
            prediction = request.infer({0: batch})[compiled.outputs[spec.output_index]]
            scores.append(score(expected[name], tensor.finalise_alpha(np.asarray(prediction)[0, 0], spec)))
        return min(scores)

    items = [(name, x[None]) for name, x in inputs.items()]
    core = ov.Core()
    model = core.read_model(str(onnx))
    # NNCF measures the drop from its own score of the unquantised model, which OpenVINO's FP32
    # arithmetic puts a little below onnxruntime's 1.0: the allowed drop shrinks by that much, so the
    # quantised model is held to 1 - MAX_DROP, as the gate holds it. (The 1e-9: NNCF compares in
    # floats, where 1 - 0.96 > 0.04, and a photo exactly at a limit passes the gate.)
    initial = validate(core.compile_model(model, "CPU"), items)  # compiled as NNCF compiles it
    max_drop = max(MAX_DROP - (1.0 - initial), 0.0) + 1e-9
    quantized = nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(items, lambda item: item[1]),
        nncf.Dataset(items),
        validation_fn=validate,
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(items),
        advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(max_num_iterations=MAX_ROUNDS),
    )
    # NNCF returns a model even where it had to put every quantised operation back into FP32.
    if not (kept := quantised_operations(quantized)):
        raise ModelError("no operation stays INT8 within the accuracy limit: the INT8 model would be FP32")
    logger.info("INT8: %d quantisation nodes kept", kept)
    out, _ = int8_files(onnx)
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out


def quantised_operations(model: Any) -> int:
    """How many quantisation (FakeQuantize) nodes an OpenVINO model has: 0 means it is all FP32."""
    return sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")
