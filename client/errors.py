"""What a matteserve client raises: one type per gRPC status a caller handles differently.

Each is also the core error it means (``Overloaded`` is a ``matteserve.errors.Overloaded``), so code
that catches core errors keeps working; all are ``MatteserveError``.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

from matteserve import errors
from matteserve.api import REQUEST_ID_KEY


class RemoteError(errors.MatteserveError):
    """The gateway answered with an error status."""

    retryable: ClassVar[bool] = False  # whether the same request, sent again after a pause, may succeed

    def __init__(self, message: str, code: grpc.StatusCode, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id

    def __str__(self) -> str:
        rid = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.code.name}: {self.args[0]}{rid}"


class InvalidRequest(RemoteError):
    """The image or the options were rejected (INVALID_ARGUMENT); sending it again will not help."""


class Overloaded(RemoteError, errors.Overloaded):
    """RESOURCE_EXHAUSTED: the service is full right now; worth retrying after a pause."""

    retryable = True


class MessageTooLarge(RemoteError, errors.ResultTooLarge):
    """The request or its result is larger than one message may carry: OUT_OF_RANGE from the
    gateway, or gRPC's own RESOURCE_EXHAUSTED "message larger than max". Never retried: the same
    request can only fail the same way. Send a smaller image, or ask for WebP or a mask."""


class BackendUnavailable(RemoteError, errors.BackendUnavailable):
    """UNAVAILABLE: the gateway or every Triton behind it is down (or restarting: worth retrying)."""

    retryable = True


class Timeout(RemoteError, errors.Timeout):
    """DEADLINE_EXCEEDED."""


class Unauthenticated(RemoteError, errors.Unauthenticated):
    """UNAUTHENTICATED or PERMISSION_DENIED: the API key is missing or wrong."""


class ServerError(RemoteError):
    """Any other status (INTERNAL, UNKNOWN, ...)."""


_BY_CODE: dict[grpc.StatusCode, type[RemoteError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: BackendUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Timeout,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: Unauthenticated,
}


def from_status(code: grpc.StatusCode, message: str, request_id: str | None = None) -> RemoteError:
    # gRPC reports a message over a size limit, on either side, as RESOURCE_EXHAUSTED with this text.
    grpc_too_large = code is grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in message
    kind = (
        MessageTooLarge if code is grpc.StatusCode.OUT_OF_RANGE or grpc_too_large else _BY_CODE.get(code, ServerError)
    )
    return kind(message, code, request_id)


def from_rpc_error(e: grpc.RpcError) -> RemoteError:
    """A grpc.RpcError (sync or aio) -> the typed error; the request id comes from trailing metadata."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = (e.details() if hasattr(e, "details") else None) or str(e)
    trailing = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
    rid = next((str(v) for k, v in trailing or () if k == REQUEST_ID_KEY), None)
    return from_status(code, details, rid)
