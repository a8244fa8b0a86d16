"""Helpers shared by the python-backend adapters in ``model_repository/``. They run inside Triton's
python stub, the only place ``pb_utils`` (``triton_python_backend_utils``) exists: it is passed in."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from matteserve.contract import Parameter
from matteserve.errors import InvalidImage, InvalidOptions
from matteserve.pipeline.decode import ImageLimits
from matteserve.zoo import ModelSpec

logger = logging.getLogger(__name__)


def parameters(args: dict[str, Any]) -> dict[str, str]:
    """The step's config parameters (:class:`Parameter`), from the ``args`` of ``initialize``."""
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def spec_and_limits(params: dict[str, str]) -> tuple[ModelSpec, ImageLimits]:
    return ModelSpec.from_dict(json.loads(params[Parameter.SPEC])), ImageLimits(**json.loads(params[Parameter.LIMITS]))


def first_bytes(pb_utils: Any, request: Any, name: str) -> bytes:
    """The one BYTES element of a [1, 1] (batched) or [1] input."""
    value = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]
    return value if isinstance(value, bytes) else bytes(value)


Run = Callable[[list[Any]], Sequence[list[Any]]]


def respond(pb_utils: Any, model: str, requests: list[Any], read: Callable[[Any], Any], run: Run = list) -> list[Any]:
    """One response per request, in order: ``read`` does a request's own work, ``run`` the batch's in
    one call (matting's model; by default what each request read is its output tensors). A failed
    ``read`` is that request's error; a failed ``run`` is retried a request at a time, so a bad request
    never fails its neighbours."""
    read_or_failed = [_attempt(read, request) for request in requests]
    ran = iter(_run(run, [x for x in read_or_failed if not isinstance(x, Exception)]))
    return [_response(pb_utils, model, x if isinstance(x, Exception) else next(ran)) for x in read_or_failed]


def _attempt(work: Callable[[Any], Any], arg: Any) -> Any:
    try:
        return work(arg)
    except Exception as e:
        return e


def _run(run: Run, items: list[Any]) -> list[list[Any] | Exception]:
    outputs = _attempt(run, items) if items else []
    if isinstance(outputs, Exception) and len(items) > 1:
        return [out for item in items for out in _run(run, [item])]
    return [outputs] if isinstance(outputs, Exception) else list(outputs)


def _response(pb_utils: Any, model: str, outputs: list[Any] | Exception) -> Any:
    """Bad input: INVALID_ARG, its message written for the caller; else INTERNAL, saying nothing (logged)."""
    if not isinstance(outputs, Exception):
        return pb_utils.InferenceResponse(output_tensors=outputs)
    if isinstance(outputs, InvalidImage | InvalidOptions):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(outputs), pb_utils.TritonError.INVALID_ARG))
    logger.error("%s failed on one request", model, exc_info=outputs)
    error = pb_utils.TritonError(f"{model}: internal error", pb_utils.TritonError.INTERNAL)
    return pb_utils.InferenceResponse(error=error)
