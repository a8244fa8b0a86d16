"""What every BackgroundRemoval call goes through before and after the servicer: the API key, the
request id, parsing the request bytes, and turning errors into status codes.

The key is checked from the call's metadata before its body is read. gRPC gives an interceptor the
method name and metadata as soon as the headers arrive; a refused call gets a handler that never
reads the body, so an unauthenticated caller makes the gateway hold at most what HTTP/2 flow control
lets through before the call is ended (a stream window, ~64 KiB to a few MiB), never the message.
What gRPC does not allow: a lower receive limit until a caller is authenticated (the limit is one
per server, applied as a message is read).

Request bytes are parsed here, not by gRPC, so bytes that are not the method's protobuf message get
INVALID_ARGUMENT with a message a caller can act on instead of UNKNOWN naming a Python class.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from matteserve.api import REQUEST_ID_KEY
from matteserve.errors import Unauthenticated
from matteserve.gateway.auth import KeyRing
from matteserve.gateway.metrics import GatewayMetrics
from matteserve.gateway.status import MalformedRequest, code_of, described, message_of

logger = logging.getLogger(__name__)

_CALLER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# The id of the call being handled: set here, read by the servicer and by everything it calls.
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

Metadata = Sequence[tuple[str, str | bytes]]
Deserializer = Callable[[bytes], Any]


def request_id(metadata: Metadata | None) -> str:
    """The caller's x-request-id if it is a sane token, else a fresh one."""
    given = next((str(v) for k, v in metadata or () if k == REQUEST_ID_KEY), "")
    return given if _CALLER_ID.fullmatch(given) else uuid.uuid4().hex[:16]


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Applies to the methods of ``service`` only: health checks and reflection need no key."""

    def __init__(self, service: str, keys: KeyRing, metrics: GatewayMetrics) -> None:
        self.prefix = f"/{service}/"
        self.keys = keys
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = details.method
        if not method.startswith(self.prefix):
            return await continuation(details)
        metadata: Metadata = details.invocation_metadata or ()
        rid = request_id(metadata)
        try:
            self.keys.check(metadata)
        except Unauthenticated as e:
            name = method.removeprefix(self.prefix)
            self.metrics.requests.labels(name, code_of(e).name, "unknown").inc()
            # Counted, and logged only at debug: a flood of refusals must not cost a log line each.
            logger.debug("%s %s refused: %s", name, rid, e, extra={"request_id": rid, "method": name})
            return _refusal(e, rid)
        handler = await continuation(details)
        if handler is None:
            return None
        return _wrapped(handler, rid, method)


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, rid: str) -> None:
    await context.abort(code_of(exc), message_of(exc), trailing_metadata=((REQUEST_ID_KEY, rid),))


def _refusal(exc: BaseException, rid: str) -> grpc.RpcMethodHandler:
    """A handler that ends the call with ``exc``'s status without reading the request body.

    A streaming-request handler is the one kind gRPC starts before any message has arrived; on the
    wire it serves unary and streaming calls alike.
    """

    async def refuse(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        await _abort(context, exc, rid)

    return grpc.stream_unary_rpc_method_handler(refuse)


def _parse(deserializer: Deserializer | None, raw: bytes, method: str) -> Any:
    if deserializer is None:
        return raw
    try:
        return deserializer(raw)
    except DecodeError:
        raise MalformedRequest(
            f"the request to {method} is not a valid protobuf message of its type; "
            "build it from gateway/proto/matteserve/v1/matteserve.proto"
        ) from None


def _wrapped(handler: grpc.RpcMethodHandler, rid: str, method: str) -> grpc.RpcMethodHandler:
    """``handler`` with the request id in the context and trailing metadata, its request bytes parsed
    here, and any error it raises sent as the status of gRPC code_of(error)."""
    parse = handler.request_deserializer
    serializer = handler.response_serializer

    def begin(context: grpc.aio.ServicerContext) -> None:
        request_id_var.set(rid)
        context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))

    async def fail(context: grpc.aio.ServicerContext, exc: Exception) -> None:
        if code_of(exc) is grpc.StatusCode.INTERNAL:
            logger.error("%s %s failed", method, rid, exc_info=exc, extra={"request_id": rid})
        else:
            logger.debug("%s %s: %s", method, rid, described(exc), extra={"request_id": rid})
        await _abort(context, exc, rid)

    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_call(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            begin(context)
            try:
                return await unary(_parse(parse, raw, method), context)
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                await fail(context, e)

        return grpc.unary_unary_rpc_method_handler(unary_call, None, serializer)

    if handler.stream_stream is not None:
        stream = handler.stream_stream

        async def parsed(raws: AsyncIterator[bytes]) -> AsyncIterator[Any]:
            async for raw in raws:
                yield _parse(parse, raw, method)

        async def stream_call(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            begin(context)
            try:
                async for response in stream(parsed(raws), context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                await fail(context, e)

        return grpc.stream_stream_rpc_method_handler(stream_call, None, serializer)

    raise TypeError(f"{method}: only unary and bidirectional streaming methods are served")
