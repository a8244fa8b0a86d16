"""The blocking client: one channel per Client, shared by every call and thread."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from matteserve import api
from matteserve.api.v1 import matteserve_pb2 as pb
from matteserve.api.v1 import matteserve_pb2_grpc as pb_grpc
from matteserve.client.common import (
    DEFAULT_TARGET,
    TLS,
    RemoveResult,
    RetryPolicy,
    StreamItem,
    build_request,
    channel_options,
    metadata,
    retry_delay,
    to_result,
)
from matteserve.client.errors import from_rpc_error, from_status
from matteserve.options import OutputFormat


class Client:
    """``Client().remove(jpeg_bytes)`` -> RemoveResult; retries UNAVAILABLE/RESOURCE_EXHAUSTED with jittered backoff."""

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
        options = channel_options(max_message_bytes)
        self._channel = (
            grpc.secure_channel(target, tls.credentials(), options) if tls else grpc.insecure_channel(target, options)
        )
        self._stub = pb_grpc.BackgroundRemovalStub(self._channel)

    def remove(
        self,
        image: bytes,
        *,
        format: OutputFormat | str = OutputFormat.PNG,
        background: str | None = None,
        quality: int | None = None,
        model: str | None = None,
        refine: bool = False,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> RemoveResult:
        """Remove the background of one encoded image. ``timeout`` covers every retry."""
        request = build_request(image, format, background, quality, model, refine)
        deadline = time.monotonic() + (timeout or self.timeout)
        retry = 0
        while True:
            try:
                response = self._stub.Remove(
                    request,
                    timeout=max(deadline - time.monotonic(), 0.001),
                    metadata=metadata(self.api_key, request_id, self.max_message_bytes),
                )
                return to_result(response)
            except grpc.RpcError as e:
                retry += 1
                delay = retry_delay(self.retry, e.code(), retry, deadline - time.monotonic(), e.details() or "")
                if delay is None:
                    raise from_rpc_error(e) from e
                time.sleep(delay)

    def remove_stream(
        self,
        items: Iterable[tuple[str, bytes]],
        *,
        format: OutputFormat | str = OutputFormat.PNG,
        background: str | None = None,
        quality: int | None = None,
        model: str | None = None,
        refine: bool = False,
        timeout: float | None = None,
    ) -> Iterator[StreamItem]:
        """(id, image) pairs over one stream; yields each id's result or error as it completes."""
        requests = (
            pb.RemoveStreamRequest(id=item_id, request=build_request(image, format, background, quality, model, refine))
            for item_id, image in items
        )
        try:
            for reply in self._stub.RemoveStream(
                requests, timeout=timeout or self.timeout, metadata=metadata(self.api_key, None, self.max_message_bytes)
            ):
                yield _stream_item(reply)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    def health(self, service: str = "", timeout: float = 5.0) -> str:
        """The gateway's grpc.health.v1 status name: SERVING, NOT_SERVING, ..."""
        try:
            reply = health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stream_item(reply: pb.RemoveStreamResponse) -> StreamItem:
    if reply.HasField("error"):
        code = grpc.StatusCode[reply.error.code] if reply.error.code in grpc.StatusCode.__members__ else None
        error = from_status(code or grpc.StatusCode.UNKNOWN, reply.error.message)
        return StreamItem(reply.id, error=error)
    return StreamItem(reply.id, result=to_result(reply.result))
