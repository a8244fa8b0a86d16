"""Names shared by the model repository, the gateway and the clients: the ensemble's interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tritonclient.grpc import InferInput

ENSEMBLE = "remove_background"

# Ensemble inputs: the image bytes and the per-request options (JSON, see matteserve.options).
IMAGE = "IMAGE"
OPTIONS = "OPTIONS"
# Ensemble outputs: the encoded result and a JSON object with content_type, width, height and the
# preprocess/postprocess milliseconds.
RESULT = "RESULT"
META = "META"

# Between the steps.
PIXELS = "PIXELS"  # preprocess -> matting: the normalised model input
ALPHA = "ALPHA"  # matting -> postprocess: the model-sized matte, UINT8
PREPROCESS_MS = "PREPROCESS_MS"  # preprocess -> postprocess, for the per-stage timings in META

PREPROCESS = "preprocess"
MATTING = "matting"
POSTPROCESS = "postprocess"


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
