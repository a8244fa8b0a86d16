"""The blocking client: one channel per Client, shared by every call and thread."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Unpack

import grpc

from matteserve.client.common import Call, ClientBase, Options, RemoveResult, StreamItem, T
from matteserve.client.errors import from_rpc_error


class Client(ClientBase):
    """``Client().remove(jpeg_bytes)`` -> RemoveResult; retries UNAVAILABLE/RESOURCE_EXHAUSTED with jittered backoff."""

    _grpc = grpc

    def remove(
        self, image: bytes, *, timeout: float | None = None, request_id: str | None = None, **options: Unpack[Options]
    ) -> RemoveResult:
        """Remove the background of one encoded image. ``timeout`` covers every retry."""
        return self._send(self._remove_call(image, options, timeout, request_id))

    def remove_stream(
        self, items: Iterable[tuple[str, bytes]], *, timeout: float | None = None, **options: Unpack[Options]
    ) -> Iterator[StreamItem]:
        """(id, image) pairs over one stream; yields each id's result or error as it completes."""
        call = self._stream_call(items, options, timeout)
        try:
            for reply in call.send():
                yield call.finish(reply)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    def health(self, service: str = "", timeout: float = 5.0) -> str:
        """The gateway's grpc.health.v1 status name: SERVING, NOT_SERVING, ..."""
        return self._send(self._health_call(service, timeout))

    def _send(self, call: Call[T]) -> T:
        while True:
            try:
                return call.finish(call.send())
            except grpc.RpcError as e:
                time.sleep(call.pause_after(e))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
