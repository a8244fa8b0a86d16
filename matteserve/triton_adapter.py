"""Helpers shared by the python-backend adapters in ``model_repository/``.

They run inside Triton's python stub. ``pb_utils`` (``triton_python_backend_utils``) exists only
there, so it is passed in rather than imported.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from matteserve.errors import InvalidImage, InvalidOptions
from matteserve.pipeline.decode import ImageLimits
from matteserve.zoo import ModelSpec

logger = logging.getLogger(__name__)


def parameters(model_config: dict[str, Any]) -> dict[str, str]:
    return {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}


def spec_and_limits(model_config: dict[str, Any]) -> tuple[ModelSpec, ImageLimits]:
    params = parameters(model_config)
    spec = ModelSpec.from_dict(json.loads(params["spec"]))
    limits = ImageLimits(
        max_pixels=int(params["max_pixels"]),
        min_side=int(params["min_side"]),
        max_aspect=float(params["max_aspect"]),
    )
    return spec, limits


def first_bytes(pb_utils: Any, request: Any, name: str) -> bytes:
    """The one BYTES element of a [1, 1] (batched) or [1] input."""
    value = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]
    return value if isinstance(value, bytes) else bytes(value)


def error_response(pb_utils: Any, exc: BaseException, model: str) -> Any:
    """One request's failure as its own response: bad input is INVALID_ARG, anything else INTERNAL.
    Neighbours in the same batch are unaffected."""
    if isinstance(exc, InvalidImage | InvalidOptions):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
    logger.exception("%s failed on one request", model)
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(f"{model}: internal error: {exc}", pb_utils.TritonError.INTERNAL)
    )
