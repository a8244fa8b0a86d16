"""Names shared by the model repository, the gateway and the clients: the ensemble's interface."""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tritonclient.grpc import InferInput, InferResult

ENSEMBLE = "remove_background"

# Ensemble inputs: the image bytes and the per-request options (JSON, see matteserve.options).
IMAGE = "IMAGE"
OPTIONS = "OPTIONS"
# Ensemble outputs: the encoded result and its Meta (JSON).
RESULT = "RESULT"
META = "META"

# Between the steps.
PIXELS = "PIXELS"  # preprocess -> matting: the normalised model input
ALPHA = "ALPHA"  # matting -> postprocess: the model-sized matte, UINT8
PREPROCESS_MS = "PREPROCESS_MS"  # preprocess -> postprocess, for the per-stage timings in META

PREPROCESS = "preprocess"
MATTING = "matting"
POSTPROCESS = "postprocess"


class Parameter(enum.StrEnum):
    """The python steps' config parameters: build/configs.py writes them, triton_adapter reads them."""

    SPEC = "spec"  # the zoo ModelSpec, JSON
    LIMITS = "limits"  # the ImageLimits, JSON
    PIXELS = "pixels"  # preprocess: "uint8" or "float32", what it sends to matting
    RUNTIME = "runtime"  # matting (CPU): the runtime, or the stand-in
    ONNX = "onnx"
    PRECISION = "precision"
    THREADS = "threads"
    FP32_NODES = "fp32_nodes"


@dataclass(frozen=True)
class Meta:
    """The ensemble's META output: what is known of a result beside its bytes."""

    content_type: str
    width: int
    height: int
    preprocess_ms: float
    postprocess_ms: float

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()


def ensemble_inputs(image: bytes, options: bytes) -> list[InferInput]:
    """The ensemble's request: one image and its options (JSON), as tritonclient gRPC inputs (the
    same class serves the sync and asyncio clients). tritonclient is imported here, not at the top:
    the python-backend adapters import this module inside Triton, where it is not installed."""
    import numpy as np
    from tritonclient.grpc import InferInput

    inputs = []
    for name, value in ((IMAGE, image), (OPTIONS, options)):
        tensor = InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))
        inputs.append(tensor)
    return inputs


def ensemble_result(result: InferResult) -> tuple[bytes, Meta]:
    """The ensemble's answer (tritonclient's, sync or asyncio): the encoded result and its Meta."""
    return bytes(result.as_numpy(RESULT)[0, 0]), Meta(**json.loads(result.as_numpy(META)[0, 0]))
