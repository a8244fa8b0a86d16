"""The one place where errors become gRPC status codes (and Triton's errors become ours).

Caller-facing messages never name internal addresses or model names: what Triton said, and which
endpoint said it, is attached as an exception note, which the gateway's log shows and the caller
does not see.
"""

from __future__ import annotations

import asyncio
import re

import grpc
from tritonclient.utils import InferenceServerException

from matteserve import errors


class InvalidRequest(errors.MatteserveError):
    """Triton rejected the request as invalid (image or options); its message says which."""


class TritonRejected(errors.MatteserveError):
    """Triton failed the request for a reason of its own (e.g. an error inside a model)."""


class MalformedRequest(errors.MatteserveError):
    """The request bytes are not the protobuf message the method takes."""


# Most specific first: ImageTooLarge is an InvalidImage.
_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (errors.InvalidImage, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidOptions, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (MalformedRequest, grpc.StatusCode.INVALID_ARGUMENT),
    # Not RESOURCE_EXHAUSTED: that one means "full, retry later", and sending the same request
    # again can never make its result smaller.
    (errors.ResultTooLarge, grpc.StatusCode.OUT_OF_RANGE),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.BackendUnavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Timeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (asyncio.CancelledError, grpc.StatusCode.CANCELLED),  # the caller went away
)


def code_of(exc: BaseException) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def message_of(exc: BaseException) -> str:
    if not isinstance(exc, errors.MatteserveError):
        # Unexpected errors are logged with their traceback; the caller gets no internals.
        return "internal error in the gateway; the request id in the trailing metadata finds it in the logs"
    return str(exc)


# Triton prefixes a composing model's error with where it happened, e.g. "in ensemble
# 'remove_background', Failed to process the request(s) for model 'preprocess_0_0', message: ...".
_TRITON_PREFIX = re.compile(r"^.*(?:message: |in ensemble '[^']*', )", re.DOTALL)
# Triton answers both with UNAVAILABLE; only the message tells them from a server that is down.
QUEUE_FULL = "Exceeds maximum queue size"
QUEUE_TIMEOUT = "Request timeout expired"


def from_triton(exc: InferenceServerException, endpoint: str) -> errors.MatteserveError:
    """A tritonclient error -> the matteserve error it means for the caller."""
    status = (exc.status() or "").removeprefix("StatusCode.")
    message = exc.message() or str(exc)
    error: errors.MatteserveError
    if status == "INVALID_ARGUMENT":
        error = InvalidRequest(_TRITON_PREFIX.sub("", message))
    elif status == "DEADLINE_EXCEEDED" or QUEUE_TIMEOUT in message:
        error = errors.Timeout("the model did not answer before the deadline")
    # A full queue is a busy server, not a broken one: it must never take the endpoint out of rotation.
    elif status == "RESOURCE_EXHAUSTED" or QUEUE_FULL in message:
        error = errors.Overloaded("the inference backends are at their limit; retry later")
    elif status in ("UNAVAILABLE", "CANCELLED", "") or "failed to connect" in message:
        error = errors.BackendUnavailable("an inference backend is unavailable; retry")
    else:
        error = TritonRejected(
            f"the model failed the request ({status}); the request id in the trailing metadata finds it in the logs"
        )
    error.add_note(f"Triton at {endpoint} answered {status or 'no status'}: {message}")
    return error


def described(exc: BaseException) -> str:
    """The message with its notes, for the gateway's own log."""
    return "; ".join([str(exc), *getattr(exc, "__notes__", ())])
