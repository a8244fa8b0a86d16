"""The one place where errors become gRPC status codes (and Triton's errors become ours)."""

from __future__ import annotations

import asyncio

import grpc
from tritonclient.utils import InferenceServerException

from matteserve import errors


class InvalidRequest(errors.MatteserveError):
    """Triton rejected the request as invalid (image or options); its message says which."""


class TritonRejected(errors.MatteserveError):
    """Triton failed the request for a reason of its own (e.g. an error inside a model)."""


# Most specific first: ImageTooLarge is an InvalidImage.
_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (errors.InvalidImage, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidOptions, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
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


# Triton answers both with UNAVAILABLE; only the message tells them from a server that is down.
QUEUE_FULL = "Exceeds maximum queue size"
QUEUE_TIMEOUT = "Request timeout expired"


def from_triton(exc: InferenceServerException, endpoint: str) -> errors.MatteserveError:
    """A tritonclient error -> the matteserve error it means for the caller."""
    status = (exc.status() or "").removeprefix("StatusCode.")
    message = exc.message() or str(exc)
    if status == "INVALID_ARGUMENT":
        return InvalidRequest(message)
    if status == "DEADLINE_EXCEEDED" or QUEUE_TIMEOUT in message:
        return errors.Timeout(f"Triton at {endpoint} did not answer before the deadline")
    # A full queue is a busy server, not a broken one: it must never take the endpoint out of rotation.
    if status == "RESOURCE_EXHAUSTED" or QUEUE_FULL in message:
        return errors.Overloaded(f"Triton at {endpoint} has a full queue; retry later")
    if status in ("UNAVAILABLE", "CANCELLED", "") or "failed to connect" in message:
        return errors.BackendUnavailable(f"Triton at {endpoint} is unavailable: {message}")
    return TritonRejected(f"Triton at {endpoint} failed the request ({status}): {message}")
