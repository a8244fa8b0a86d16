"""Client behaviour against a real gRPC server that fails on purpose: retries, backoff, typed errors."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest

from matteserve import errors as core
from matteserve.api.v1 import matteserve_pb2 as pb
from matteserve.api.v1 import matteserve_pb2_grpc as pb_grpc
from matteserve.client import AsyncClient, Client, RetryPolicy
from matteserve.client.common import retry_delay
from matteserve.client.errors import (
    BackendUnavailable,
    InvalidRequest,
    MessageTooLarge,
    Overloaded,
    ServerError,
    Timeout,
    Unauthenticated,
    from_status,
)

from ..conftest import free_port  # type: ignore[import-not-found]

FAST = RetryPolicy(attempts=4, initial_backoff_s=0.001, max_backoff_s=0.005)


@dataclass
class Flaky(pb_grpc.BackgroundRemovalServicer):
    """Fails the first ``failures`` calls with ``code``, then answers; records what it was sent."""

    failures: int = 0
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    message: str = "planned failure"
    data: bytes = b"out"
    calls: list[tuple[pb.RemoveRequest, dict[str, str], str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def Remove(self, request: pb.RemoveRequest, context: grpc.ServicerContext) -> pb.RemoveResponse:
        with self.lock:
            self.calls.append((request, dict(context.invocation_metadata()), context.peer()))
            failing = len(self.calls) <= self.failures
        if failing:
            context.set_trailing_metadata((("x-request-id", f"rid-{len(self.calls)}"),))
            context.abort(self.code, f"{self.message} {len(self.calls)}")
        return pb.RemoveResponse(data=self.data, content_type="image/png", width=3, height=2, request_id="rid-ok")


@pytest.fixture
def server() -> Iterator[tuple[Flaky, str]]:
    servicer = Flaky()
    srv = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_BackgroundRemovalServicer_to_server(servicer, srv)
    target = f"127.0.0.1:{free_port()}"
    srv.add_insecure_port(target)
    srv.start()
    yield servicer, target
    srv.stop(None)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_unavailable_and_resource_exhausted_are_retried_until_success(
    server: tuple[Flaky, str], code: grpc.StatusCode
) -> None:
    servicer, target = server
    servicer.failures, servicer.code = 2, code
    with Client(target, retry=FAST) as client:
        result = client.remove(b"img", format="mask")
    assert (result.data, result.width, result.height, result.request_id) == (b"out", 3, 2, "rid-ok")
    assert len(servicer.calls) == 3


def test_retries_stop_after_the_policy_attempts_with_the_typed_error(server: tuple[Flaky, str]) -> None:
    servicer, target = server
    servicer.failures = 100
    with Client(target, retry=FAST) as client, pytest.raises(BackendUnavailable) as err:
        client.remove(b"img")
    assert len(servicer.calls) == 4
    assert err.value.request_id == "rid-4"
    assert isinstance(err.value, core.BackendUnavailable)
    assert isinstance(err.value, core.MatteserveError)


def test_invalid_argument_is_not_retried(server: tuple[Flaky, str]) -> None:
    servicer, target = server
    servicer.failures, servicer.code = 100, grpc.StatusCode.INVALID_ARGUMENT
    with Client(target, retry=FAST) as client, pytest.raises(InvalidRequest, match="planned failure 1"):
        client.remove(b"img")
    assert len(servicer.calls) == 1


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (grpc.StatusCode.OUT_OF_RANGE, "the result is 107.0 MiB, above the 64.0 MiB a response may carry"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "SERVER: Received message larger than max (400008 vs. 300000)"),
    ],
    ids=["result too large (gateway)", "request too large (gRPC)"],
)
def test_a_message_too_large_is_raised_at_once_never_retried(
    server: tuple[Flaky, str], code: grpc.StatusCode, message: str
) -> None:
    servicer, target = server
    servicer.failures, servicer.code, servicer.message = 100, code, message
    with Client(target, retry=FAST) as client, pytest.raises(MessageTooLarge) as err:
        client.remove(b"img")
    assert len(servicer.calls) == 1
    assert err.value.code is code
    assert not isinstance(err.value, core.Overloaded)

    async def go() -> None:
        async with AsyncClient(target, retry=FAST) as client:
            await client.remove(b"img")

    with pytest.raises(MessageTooLarge):
        asyncio.run(go())
    assert len(servicer.calls) == 2


def test_an_answer_above_the_clients_receive_limit_is_not_fetched_again(server: tuple[Flaky, str]) -> None:
    servicer, target = server
    servicer.data = b"x" * 200_000
    with Client(target, retry=FAST, max_message_bytes=100_000) as client, pytest.raises(MessageTooLarge):
        client.remove(b"img")
    assert len(servicer.calls) == 1
    _, metadata, _ = servicer.calls[0]
    assert metadata["matteserve-max-response-bytes"] == "100000"  # so the gateway can refuse it first


def test_backoff_never_sleeps_past_the_deadline(server: tuple[Flaky, str]) -> None:
    servicer, target = server
    servicer.failures = 100
    slow = RetryPolicy(attempts=10, initial_backoff_s=30.0, max_backoff_s=30.0, rng=random.Random(1))
    start = time.monotonic()
    with Client(target, retry=slow) as client, pytest.raises(BackendUnavailable):
        client.remove(b"img", timeout=1.0)
    assert time.monotonic() - start < 1.5


def test_options_key_and_request_id_are_sent_and_one_connection_is_reused(server: tuple[Flaky, str]) -> None:
    servicer, target = server
    with Client(target, api_key="k3y") as client:
        for _ in range(3):
            client.remove(b"img", format="jpeg", background="#102030", quality=55, model="u2netp", request_id="r-1")
    request, metadata, _ = servicer.calls[0]
    assert request.options == pb.Options(format=pb.OUTPUT_FORMAT_JPEG, background="#102030", quality=55, model="u2netp")
    assert metadata["authorization"] == "Bearer k3y"
    assert metadata["x-request-id"] == "r-1"
    assert len({peer for _, _, peer in servicer.calls}) == 1


def test_the_async_client_retries_the_same_way(server: tuple[Flaky, str]) -> None:
    servicer, target = server
    servicer.failures = 2

    async def go() -> bytes:
        async with AsyncClient(target, retry=FAST) as client:
            return (await client.remove(b"img")).data

    assert asyncio.run(go()) == b"out"
    assert len(servicer.calls) == 3


def test_backoff_is_jittered_below_an_exponential_cap() -> None:
    policy = RetryPolicy(attempts=10, initial_backoff_s=0.1, max_backoff_s=1.0, rng=random.Random(7))
    caps = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for retry, cap in enumerate(caps, 1):
        delays = [policy.backoff(retry) for _ in range(200)]
        assert min(delays) >= 0
        assert max(delays) <= cap
        assert max(delays) > cap * 0.8  # spread over the range, not a constant
    assert retry_delay(policy, grpc.StatusCode.UNAVAILABLE, 10, 60) is None  # attempts used up
    assert retry_delay(policy, grpc.StatusCode.INTERNAL, 1, 60) is None


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequest),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Overloaded),
        (grpc.StatusCode.UNAVAILABLE, BackendUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Timeout),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, Unauthenticated),
        (grpc.StatusCode.INTERNAL, ServerError),
    ],
)
def test_each_status_has_its_typed_error(code: grpc.StatusCode, kind: type[Exception]) -> None:
    error = from_status(code, "why", "rid")
    assert type(error) is kind
    assert str(error) == f"{code.name}: why (request rid)"
