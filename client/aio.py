"""The asyncio client: same calls as Client, as coroutines, over one grpc.aio channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Unpack

import grpc

from matteserve.client.common import Call, ClientBase, Options, RemoveResult, StreamItem, T
from matteserve.client.errors import from_rpc_error


class AsyncClient(ClientBase):
    """Create it inside the event loop that uses it; ``async with AsyncClient() as c: await c.remove(...)``."""

    _grpc = grpc.aio

    async def remove(
        self, image: bytes, *, timeout: float | None = None, request_id: str | None = None, **options: Unpack[Options]
    ) -> RemoveResult:
        return await self._send(self._remove_call(image, options, timeout, request_id))

    async def remove_stream(
        self, items: Iterable[tuple[str, bytes]], *, timeout: float | None = None, **options: Unpack[Options]
    ) -> AsyncIterator[StreamItem]:
        call = self._stream_call(items, options, timeout)
        try:
            async for reply in call.send():
                yield call.finish(reply)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    async def health(self, service: str = "", timeout: float = 5.0) -> str:
        return await self._send(self._health_call(service, timeout))

    async def _send(self, call: Call[T]) -> T:
        while True:
            try:
                return call.finish(await call.send())
            except grpc.RpcError as e:
                await asyncio.sleep(call.pause_after(e))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
