"""The one status mapping: our errors and Triton's errors -> the gRPC code a caller sees."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from tritonclient.utils import InferenceServerException

from matteserve import errors
from matteserve.gateway.status import InvalidRequest, TritonRejected, code_of, described, from_triton, message_of


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidImage("corrupt"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ImageTooLarge("50 MP"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.InvalidOptions("quality"), grpc.StatusCode.INVALID_ARGUMENT),
        (InvalidRequest("from Triton"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.Overloaded("full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.BackendUnavailable("down"), grpc.StatusCode.UNAVAILABLE),
        (errors.Timeout("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.Unauthenticated("key"), grpc.StatusCode.UNAUTHENTICATED),
        (asyncio.CancelledError(), grpc.StatusCode.CANCELLED),
        (TritonRejected("model crashed"), grpc.StatusCode.INTERNAL),
        (KeyError("bug"), grpc.StatusCode.INTERNAL),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.name,
)
def test_each_error_maps_to_its_status_code(error: BaseException, code: grpc.StatusCode) -> None:
    assert code_of(error) is code


def test_our_messages_reach_the_caller_but_a_bug_does_not_leak_internals() -> None:
    assert message_of(errors.InvalidImage("the image is empty (0 bytes)")) == "the image is empty (0 bytes)"
    leaked = message_of(KeyError("/secret/path"))
    assert "/secret/path" not in leaked
    assert "request id" in leaked


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("StatusCode.INVALID_ARGUMENT", InvalidRequest),
        ("StatusCode.DEADLINE_EXCEEDED", errors.Timeout),
        ("StatusCode.UNAVAILABLE", errors.BackendUnavailable),
        ("StatusCode.RESOURCE_EXHAUSTED", errors.Overloaded),
        ("StatusCode.INTERNAL", TritonRejected),
    ],
)
def test_triton_errors_become_the_error_they_mean_for_the_caller(status: str, kind: type[Exception]) -> None:
    error = from_triton(InferenceServerException("preprocess: the image is empty", status=status), "10.0.0.1:8001")
    assert type(error) is kind


def test_triton_messages_reach_the_caller_without_internal_addresses_or_model_names() -> None:
    triton_says = (
        "in ensemble 'remove_background', Failed to process the request(s) for model 'preprocess_0_0', "
        "message: InvalidImage: the image is empty (0 bytes)"
    )
    error = from_triton(InferenceServerException(triton_says, "StatusCode.INVALID_ARGUMENT"), "10.0.0.1:8001")
    assert message_of(error) == "InvalidImage: the image is empty (0 bytes)"
    assert "10.0.0.1:8001" in described(error)  # kept for the gateway's log
    assert triton_says in described(error)


@pytest.mark.parametrize("status", ["StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.INTERNAL"])
def test_no_triton_failure_names_its_endpoint_to_the_caller(status: str) -> None:
    error = from_triton(InferenceServerException("failed to connect to all addresses", status=status), "10.0.0.1:8001")
    assert "10.0.0.1" not in message_of(error)
    assert "Triton" not in message_of(error)
    assert "10.0.0.1:8001" in described(error)


def test_a_result_too_large_is_out_of_range_not_the_retryable_resource_exhausted() -> None:
    assert code_of(errors.ResultTooLarge("108 MiB")) is grpc.StatusCode.OUT_OF_RANGE


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("[request id: <id_unknown>] Exceeds maximum queue size", errors.Overloaded),
        ("in ensemble 'remove_background', Request timeout expired", errors.Timeout),
        ("failed to connect to all addresses", errors.BackendUnavailable),
    ],
)
def test_a_full_or_expired_triton_queue_is_not_an_endpoint_that_is_down(message: str, kind: type[Exception]) -> None:
    # Triton answers all three with UNAVAILABLE; only the first and second leave the endpoint in rotation.
    error = from_triton(InferenceServerException(message, status="StatusCode.UNAVAILABLE"), "t:8001")
    assert type(error) is kind
