"""Everything the sync and asyncio clients share: settings, channel, requests, metadata, results, and each
call's plan (what to send, how to read the answer, when to send it again). Client and AsyncClient only
send, wait and sleep.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypedDict, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from matteserve import api
from matteserve.api import FORMAT_TO_PROTO, REQUEST_ID_KEY
from matteserve.api.v1 import matteserve_pb2 as pb
from matteserve.api.v1 import matteserve_pb2_grpc as pb_grpc
from matteserve.client.errors import RemoteError, from_rpc_error, from_status
from matteserve.options import OutputFormat

DEFAULT_TARGET = "127.0.0.1:50051"


@dataclass(frozen=True)
class RemoveResult:
    data: bytes
    content_type: str
    width: int
    height: int
    timings: dict[str, float]  # milliseconds: preprocess, postprocess, triton, gateway
    request_id: str
    model: str = ""


@dataclass(frozen=True)
class StreamItem:
    """One RemoveStream answer: a result, or the error for that image alone."""

    id: str
    result: RemoveResult | None = None
    error: Exception | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter on the errors worth sending again (``RemoteError.retryable``:
    UNAVAILABLE and RESOURCE_EXHAUSTED, never a message too large), within the call's deadline."""

    attempts: int = 4  # first try included
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("attempts >= 1 and 0 <= initial_backoff_s <= max_backoff_s")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first retry): uniform in [0, cap]."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        return self.rng.uniform(0, cap)

    def pause(self, error: RemoteError, retry: int, time_left: float) -> float | None:
        """Seconds to sleep before retry number ``retry`` after ``error``, or None when ``error`` is to be
        raised: sending again cannot help, the attempts are used up, or the wait would pass the deadline."""
        if not error.retryable or retry >= self.attempts:
            return None
        delay = self.backoff(retry)
        return delay if delay < time_left else None


ONCE = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class TLS:
    """Client TLS: the CA that signed the gateway's certificate, and for mutual TLS our own pair."""

    root_certificates: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(p: Path | None) -> bytes | None:
            return p.read_bytes() if p else None

        return grpc.ssl_channel_credentials(read(self.root_certificates), read(self.client_key), read(self.client_cert))


class Options(TypedDict, total=False):
    """What ``remove`` and ``remove_stream`` take besides the images; defaults as in ``build_request``."""

    format: OutputFormat | str
    background: str | None
    quality: int | None
    model: str | None
    refine: bool


def build_request(
    image: bytes,
    format: OutputFormat | str = OutputFormat.PNG,
    background: str | None = None,
    quality: int | None = None,
    model: str | None = None,
    refine: bool = False,
) -> pb.RemoveRequest:
    options = pb.Options(
        format=FORMAT_TO_PROTO[OutputFormat(format)],
        background=background or "",
        quality=quality or 0,
        model=model or "",
        refine=refine,
    )
    return pb.RemoveRequest(image=image, options=options)


def to_result(response: pb.RemoveResponse) -> RemoveResult:
    return RemoveResult(
        data=response.data,
        content_type=response.content_type,
        width=response.width,
        height=response.height,
        timings=dict(response.timings_ms),
        request_id=response.request_id,
        model=response.model,
    )


def stream_item(reply: pb.RemoveStreamResponse) -> StreamItem:
    if reply.HasField("error"):
        code = grpc.StatusCode.__members__.get(reply.error.code, grpc.StatusCode.UNKNOWN)
        return StreamItem(reply.id, error=from_status(code, reply.error.message))
    return StreamItem(reply.id, result=to_result(reply.result))


T = TypeVar("T")


@dataclass
class Call(Generic[T]):
    """One RPC planned: the stub method and what to send it, how to read the answer, and the retry
    schedule within one deadline. A client sends it, and after each failure either sleeps
    ``pause_after(e)`` seconds and sends it again, or gets the typed error raised."""

    method: Any  # a stub's multi-callable, blocking or grpc.aio
    request: Any  # a request message, or an iterator of them for a stream
    finish: Callable[[Any], T]  # the answer (each answer of a stream) -> what the caller gets
    deadline: float  # on time.monotonic()
    metadata: Sequence[tuple[str, str]] = ()
    policy: RetryPolicy = ONCE
    retries: int = 0

    def send(self) -> Any:
        timeout = max(self.deadline - time.monotonic(), 0.001)
        return self.method(self.request, timeout=timeout, metadata=self.metadata)

    def pause_after(self, e: grpc.RpcError) -> float:
        error = from_rpc_error(e)
        self.retries += 1
        delay = self.policy.pause(error, self.retries, self.deadline - time.monotonic())
        if delay is None:
            raise error from e
        return delay


class ClientBase:
    """What Client and AsyncClient share; each names the grpc module whose channel it uses."""

    _grpc: ClassVar[Any]  # grpc, or grpc.aio

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        api_key: str | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        tls: TLS | None = None,
        max_message_bytes: int = api.MAX_MESSAGE_BYTES,
    ) -> None:
        self.target = target
        self.api_key = api_key
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.max_message_bytes = max_message_bytes
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        self._channel = (
            self._grpc.secure_channel(target, tls.credentials(), options)
            if tls
            else self._grpc.insecure_channel(target, options)
        )
        self._stub = pb_grpc.BackgroundRemovalStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def _metadata(self, request_id: str | None = None) -> list[tuple[str, str]]:
        """The receive limit goes along so that the gateway refuses a result this client could not
        receive before sending it, with a message saying what fits."""
        out = [(api.MAX_RESPONSE_BYTES_KEY, str(self.max_message_bytes))]
        if self.api_key:
            out.append(("authorization", f"Bearer {self.api_key}"))
        if request_id:
            out.append((REQUEST_ID_KEY, request_id))
        return out

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (timeout or self.timeout)

    def _remove_call(
        self, image: bytes, options: Options, timeout: float | None, request_id: str | None
    ) -> Call[RemoveResult]:
        request = build_request(image, **options)
        return Call(
            self._stub.Remove, request, to_result, self._deadline(timeout), self._metadata(request_id), self.retry
        )

    def _stream_call(
        self, items: Iterable[tuple[str, bytes]], options: Options, timeout: float | None
    ) -> Call[StreamItem]:
        """Read with ``finish`` per answer, and never sent again: the requests are gone once read."""
        requests = (pb.RemoveStreamRequest(id=i, request=build_request(image, **options)) for i, image in items)
        return Call(self._stub.RemoveStream, requests, stream_item, self._deadline(timeout), self._metadata())

    def _health_call(self, service: str, timeout: float) -> Call[str]:
        request = health_pb2.HealthCheckRequest(service=service)
        status_name = health_pb2.HealthCheckResponse.ServingStatus.Name
        return Call(
            self._health.Check, request, lambda reply: str(status_name(reply.status)), time.monotonic() + timeout
        )
