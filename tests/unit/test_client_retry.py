"""Client behaviour against a real gRPC server that fails on purpose: retries, backoff, typed errors.

Every scenario runs through both Client and AsyncClient: they share one call plan (client/common.py)
and differ only in how they send and sleep, which these tests keep honest."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from matteserve import errors as core
from matteserve.api.v1 import matteserve_pb2 as pb
from matteserve.api.v1 import matteserve_pb2_grpc as pb_grpc
from matteserve.client import AsyncClient, Client, RemoveResult, RetryPolicy, StreamItem
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

    def RemoveStream(
        self, requests: Iterable[pb.RemoveStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.RemoveStreamResponse]:
        for item in requests:
            if item.request.image == b"junk":
                error = pb.Error(code="INVALID_ARGUMENT", message="not an image")
                yield pb.RemoveStreamResponse(id=item.id, error=error)
            else:
                yield pb.RemoveStreamResponse(id=item.id, result=pb.RemoveResponse(data=item.request.image))


@pytest.fixture
def server() -> Iterator[tuple[Flaky, str]]:
    servicer = Flaky()
    srv = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_BackgroundRemovalServicer_to_server(servicer, srv)
    health_servicer = health.HealthServicer()
    health_servicer.set("matteserve.v1.BackgroundRemoval", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, srv)
    target = f"127.0.0.1:{free_port()}"
    srv.add_insecure_port(target)
    srv.start()
    yield servicer, target
    srv.stop(None)


# The same calls through each client: (target, Client/AsyncClient kwargs, method, args, kwargs) -> answer.
Use = Callable[..., Any]


def use_sync(target: str, client: dict[str, Any], method: str, *args: Any, **kwargs: Any) -> Any:
    with Client(target, **client) as c:
        answer = getattr(c, method)(*args, **kwargs)
        return list(answer) if method == "remove_stream" else answer


def use_async(target: str, client: dict[str, Any], method: str, *args: Any, **kwargs: Any) -> Any:
    async def go() -> Any:
        async with AsyncClient(target, **client) as c:
            if method == "remove_stream":
                return [item async for item in c.remove_stream(*args, **kwargs)]
            return await getattr(c, method)(*args, **kwargs)

    return asyncio.run(go())


@pytest.fixture(params=[use_sync, use_async], ids=["Client", "AsyncClient"])
def use(request: pytest.FixtureRequest) -> Use:
    return request.param


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_unavailable_and_resource_exhausted_are_retried_until_success(
    server: tuple[Flaky, str], use: Use, code: grpc.StatusCode
) -> None:
    servicer, target = server
    servicer.failures, servicer.code = 2, code
    result = use(target, {"retry": FAST}, "remove", b"img", format="mask")
    assert (result.data, result.width, result.height, result.request_id) == (b"out", 3, 2, "rid-ok")
    assert len(servicer.calls) == 3


def test_retries_stop_after_the_policy_attempts_with_the_typed_error(server: tuple[Flaky, str], use: Use) -> None:
    servicer, target = server
    servicer.failures = 100
    with pytest.raises(BackendUnavailable) as err:
        use(target, {"retry": FAST}, "remove", b"img")
    assert len(servicer.calls) == 4
    assert err.value.request_id == "rid-4"
    assert isinstance(err.value, core.BackendUnavailable)
    assert isinstance(err.value, core.MatteserveError)


def test_invalid_argument_is_not_retried(server: tuple[Flaky, str], use: Use) -> None:
    servicer, target = server
    servicer.failures, servicer.code = 100, grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(InvalidRequest, match="planned failure 1"):
        use(target, {"retry": FAST}, "remove", b"img")
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
    server: tuple[Flaky, str], use: Use, code: grpc.StatusCode, message: str
) -> None:
    servicer, target = server
    servicer.failures, servicer.code, servicer.message = 100, code, message
    with pytest.raises(MessageTooLarge) as err:
        use(target, {"retry": FAST}, "remove", b"img")
    assert len(servicer.calls) == 1
    assert err.value.code is code
    assert not isinstance(err.value, core.Overloaded)


def test_an_answer_above_the_clients_receive_limit_is_not_fetched_again(server: tuple[Flaky, str], use: Use) -> None:
    servicer, target = server
    servicer.data = b"x" * 200_000
    with pytest.raises(MessageTooLarge):
        use(target, {"retry": FAST, "max_message_bytes": 100_000}, "remove", b"img")
    assert len(servicer.calls) == 1
    _, metadata, _ = servicer.calls[0]
    assert metadata["matteserve-max-response-bytes"] == "100000"  # so the gateway can refuse it first


def test_backoff_never_sleeps_past_the_deadline(server: tuple[Flaky, str], use: Use) -> None:
    servicer, target = server
    servicer.failures = 100
    slow = RetryPolicy(attempts=10, initial_backoff_s=30.0, max_backoff_s=30.0, rng=random.Random(1))
    start = time.monotonic()
    with pytest.raises(BackendUnavailable):
        use(target, {"retry": slow}, "remove", b"img", timeout=1.0)
    assert time.monotonic() - start < 1.5


def test_options_key_and_request_id_are_sent(server: tuple[Flaky, str], use: Use) -> None:
    servicer, target = server
    options = {"format": "jpeg", "background": "#102030", "quality": 55, "model": "u2netp", "refine": True}
    use(target, {"api_key": "k3y"}, "remove", b"img", request_id="r-1", **options)
    request, metadata, _ = servicer.calls[0]
    assert request.options == pb.Options(
        format=pb.OUTPUT_FORMAT_JPEG, background="#102030", quality=55, model="u2netp", refine=True
    )
    assert metadata["authorization"] == "Bearer k3y"
    assert metadata["x-request-id"] == "r-1"


def test_one_connection_is_reused_by_every_call(server: tuple[Flaky, str]) -> None:
    servicer, target = server
    with Client(target) as client:
        for _ in range(3):
            client.remove(b"img")
    assert len({peer for _, _, peer in servicer.calls}) == 1


def test_a_stream_answers_each_id_with_its_result_or_its_own_error(server: tuple[Flaky, str], use: Use) -> None:
    _, target = server
    items: list[StreamItem] = use(target, {}, "remove_stream", [("a", b"img"), ("b", b"junk")], format="mask")
    answers = {item.id: item for item in items}
    assert isinstance(answers["a"].result, RemoveResult)
    assert answers["a"].result.data == b"img"
    assert isinstance(answers["b"].error, InvalidRequest)
    assert str(answers["b"].error) == "INVALID_ARGUMENT: not an image"


def test_health_names_the_status_and_a_missing_service_is_a_typed_error(server: tuple[Flaky, str], use: Use) -> None:
    _, target = server
    assert use(target, {}, "health") == "SERVING"
    assert use(target, {}, "health", "matteserve.v1.BackgroundRemoval") == "NOT_SERVING"
    with pytest.raises(ServerError, match="NOT_FOUND"):
        use(target, {}, "health", "no.such.Service")


def test_backoff_is_jittered_below_an_exponential_cap() -> None:
    policy = RetryPolicy(attempts=10, initial_backoff_s=0.1, max_backoff_s=1.0, rng=random.Random(7))
    caps = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for retry, cap in enumerate(caps, 1):
        delays = [policy.backoff(retry) for _ in range(200)]
        assert min(delays) >= 0
        assert max(delays) <= cap
        assert max(delays) > cap * 0.8  # spread over the range, not a constant


@pytest.mark.parametrize(
    ("code", "message", "retried"),
    [
        (grpc.StatusCode.UNAVAILABLE, "", True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "the gateway is full", True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (9 vs. 4)", False),
        (grpc.StatusCode.OUT_OF_RANGE, "the result is 107.0 MiB", False),
        (grpc.StatusCode.INVALID_ARGUMENT, "", False),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", False),
        (grpc.StatusCode.UNAUTHENTICATED, "", False),
        (grpc.StatusCode.INTERNAL, "", False),
    ],
)
def test_only_unavailable_and_overloaded_are_sent_again(code: grpc.StatusCode, message: str, retried: bool) -> None:
    policy = RetryPolicy(attempts=3, initial_backoff_s=0.1, max_backoff_s=0.1, rng=random.Random(3))
    pause = policy.pause(from_status(code, message), 1, time_left=60)
    assert (pause is not None) is retried
    assert pause is None or 0 <= pause <= 0.1


def test_no_pause_once_the_attempts_are_used_or_the_wait_would_pass_the_deadline() -> None:
    policy = RetryPolicy(attempts=3, initial_backoff_s=1.0, max_backoff_s=1.0, rng=random.Random(3))
    unavailable = from_status(grpc.StatusCode.UNAVAILABLE, "down")
    assert policy.pause(unavailable, 2, time_left=60) is not None
    assert policy.pause(unavailable, 3, time_left=60) is None  # three attempts made
    assert policy.pause(unavailable, 1, time_left=0.0) is None
    assert RetryPolicy(attempts=1).pause(unavailable, 1, time_left=60) is None


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
