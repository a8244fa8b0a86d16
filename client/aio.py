"""The asyncio client: same calls as Client, as coroutines, over one grpc.aio channel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable

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
from matteserve.client.errors import from_rpc_error
from matteserve.client.sync import _stream_item
from matteserve.options import OutputFormat


class AsyncClient:
    """Create it inside the event loop that uses it; ``async with AsyncClient() as c: await c.remove(...)``."""

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
            grpc.aio.secure_channel(target, tls.credentials(), options)
            if tls
            else grpc.aio.insecure_channel(target, options)
        )
        self._stub = pb_grpc.BackgroundRemovalStub(self._channel)

    async def remove(
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
        request = build_request(image, format, background, quality, model, refine)
        deadline = time.monotonic() + (timeout or self.timeout)
        retry = 0
        while True:
            try:
                response = await self._stub.Remove(
                    request,
                    timeout=max(deadline - time.monotonic(), 0.001),
                    metadata=metadata(self.api_key, request_id, self.max_message_bytes),
                )
                return to_result(response)
            except grpc.aio.AioRpcError as e:
                retry += 1
                delay = retry_delay(self.retry, e.code(), retry, deadline - time.monotonic(), e.details() or "")
                if delay is None:
                    raise from_rpc_error(e) from e
                await asyncio.sleep(delay)

    async def remove_stream(
        self,
        items: Iterable[tuple[str, bytes]],
        *,
        format: OutputFormat | str = OutputFormat.PNG,
        background: str | None = None,
        quality: int | None = None,
        model: str | None = None,
        refine: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamItem]:
        requests = (
            pb.RemoveStreamRequest(id=item_id, request=build_request(image, format, background, quality, model, refine))
            for item_id, image in items
        )
        call_metadata = metadata(self.api_key, None, self.max_message_bytes)
        call = self._stub.RemoveStream(requests, timeout=timeout or self.timeout, metadata=call_metadata)
        try:
            async for reply in call:
                yield _stream_item(reply)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e

    async def health(self, service: str = "", timeout: float = 5.0) -> str:
        try:
            reply = await health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
