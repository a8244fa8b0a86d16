"""Helpers shared by the python-backend adapters in ``model_repository/``.

They run inside Triton's python stub. ``pb_utils`` (``triton_python_backend_utils``) exists only
there, so it is passed in rather than imported.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from matteserve.contract import Parameter
from matteserve.errors import InvalidImage, InvalidOptions
from matteserve.pipeline.decode import ImageLimits
from matteserve.zoo import ModelSpec

logger = logging.getLogger(__name__)


def parameters(args: dict[str, Any]) -> dict[str, str]:
    """The step's config parameters (:class:`Parameter`), from the ``args`` of ``initialize``."""
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def spec_of(params: dict[str, str]) -> ModelSpec:
    return ModelSpec.from_dict(json.loads(params[Parameter.SPEC]))


def limits_of(params: dict[str, str]) -> ImageLimits:
    return ImageLimits(**json.loads(params[Parameter.LIMITS]))


def first_bytes(pb_utils: Any, request: Any, name: str) -> bytes:
    """The one BYTES element of a [1, 1] (batched) or [1] input."""
    value = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]
    return value if isinstance(value, bytes) else bytes(value)


def bytes_tensor(pb_utils: Any, name: str, value: bytes) -> Any:
    return pb_utils.Tensor(name, np.array([[value]], dtype=np.object_))


def respond(
    pb_utils: Any,
    model: str,
    requests: Sequence[Any],
    read: Callable[[Any], Any],
    run: Callable[[list[Any]], Sequence[list[Any]]] = lambda outputs: outputs,
) -> list[Any]:
    """Exactly one response per request, in order. ``read`` does one request's own work; ``run`` turns
    what the requests read into each one's output tensors in one call (matting's model call; nothing
    for a step whose ``read`` returns its output tensors). A request whose ``read`` raises gets its
    own error response; if ``run`` raises on several, each is run alone: a bad request never fails
    its batch neighbours."""
    read_or_failed = [_attempt(read, request) for request in requests]
    ran = iter(_run(run, [x for x in read_or_failed if not isinstance(x, Exception)]))
    return [_response(pb_utils, model, x if isinstance(x, Exception) else next(ran)) for x in read_or_failed]


def _attempt(read: Callable[[Any], Any], request: Any) -> Any:
    try:
        return read(request)
    except Exception as e:
        return e


def _run(run: Callable[[list[Any]], Sequence[list[Any]]], items: list[Any]) -> list[list[Any] | Exception]:
    if not items:
        return []
    try:
        return list(run(items))
    except Exception as e:
        if len(items) == 1:
            return [e]
    return [out for item in items for out in _run(run, [item])]


def _response(pb_utils: Any, model: str, outputs: list[Any] | Exception) -> Any:
    """Bad input is INVALID_ARG with its own message, written for the caller; any other error is
    INTERNAL with a message that shows nothing of the server's insides (the log has the traceback)."""
    if not isinstance(outputs, Exception):
        return pb_utils.InferenceResponse(output_tensors=outputs)
    if isinstance(outputs, InvalidImage | InvalidOptions):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(outputs), pb_utils.TritonError.INVALID_ARG))
    logger.error("%s failed on one request", model, exc_info=outputs)
    error = pb_utils.TritonError(f"{model}: internal error", pb_utils.TritonError.INTERNAL)
    return pb_utils.InferenceResponse(error=error)
