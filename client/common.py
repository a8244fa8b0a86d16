"""What the sync and asyncio clients share: requests, results, retry timing, channel options."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from matteserve import api
from matteserve.api import FORMAT_TO_PROTO, REQUEST_ID_KEY
from matteserve.api.v1 import matteserve_pb2 as pb
from matteserve.client.errors import is_retryable
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
    """Exponential backoff with full jitter on UNAVAILABLE and RESOURCE_EXHAUSTED, within the deadline
    (never on a message too large: see matteserve.client.errors.is_retryable)."""

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


def channel_options(max_message_bytes: int = api.MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


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


def metadata(api_key: str | None, request_id: str | None, max_response_bytes: int) -> list[tuple[str, str]]:
    """Call metadata; the receive limit goes along so that the gateway refuses a result this client
    could not receive before sending it, with a message saying what fits."""
    out = [(api.MAX_RESPONSE_BYTES_KEY, str(max_response_bytes))]
    if api_key:
        out.append(("authorization", f"Bearer {api_key}"))
    if request_id:
        out.append((REQUEST_ID_KEY, request_id))
    return out


def retry_delay(
    policy: RetryPolicy, code: grpc.StatusCode, retry: int, time_left: float, message: str = ""
) -> float | None:
    """Seconds to sleep before retry number ``retry``, or None when the error should be raised."""
    if not is_retryable(code, message) or retry >= policy.attempts:
        return None
    delay = policy.backoff(retry)
    return delay if delay < time_left else None
