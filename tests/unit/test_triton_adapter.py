"""How the python-backend adapters answer a batch, with a stand-in for Triton's ``pb_utils``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from matteserve.errors import InvalidImage
from matteserve.triton_adapter import respond


@dataclass
class TritonError:
    message: str
    code: str
    INVALID_ARG = "INVALID_ARG"
    INTERNAL = "INTERNAL"


@dataclass
class InferenceResponse:
    output_tensors: list[Any] | None = None
    error: TritonError | None = None


PB_UTILS = SimpleNamespace(TritonError=TritonError, InferenceResponse=InferenceResponse)


def read(request: str) -> str:
    if request == "not an image":
        raise InvalidImage("not a supported image")
    if request == "crash":
        raise RuntimeError("/srv/secret/path exploded")
    return request


def test_each_request_of_a_batch_gets_its_own_answer_or_its_own_error(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        responses = respond(PB_UTILS, "preprocess", ["a", "not an image", "crash", "b"], lambda r: [read(r)])
    assert [r.output_tensors for r in responses] == [["a"], None, None, ["b"]]
    assert responses[1].error == TritonError("not a supported image", TritonError.INVALID_ARG)
    # An unexpected failure tells the caller nothing of the server's insides; the log has it.
    assert responses[2].error == TritonError("preprocess: internal error", TritonError.INTERNAL)
    assert "/srv/secret/path exploded" in caplog.text


def test_a_batch_runs_in_one_call_and_a_failing_one_is_retried_a_request_at_a_time() -> None:
    calls: list[list[str]] = []

    def run(batch: list[str]) -> list[list[str]]:
        calls.append(batch)
        if "poison" in batch:
            raise ValueError("a shape the model cannot take")
        return [[x.upper()] for x in batch]

    assert [r.output_tensors for r in respond(PB_UTILS, "matting", ["a", "b"], read, run)] == [["A"], ["B"]]
    assert calls == [["a", "b"]]
    calls.clear()
    responses = respond(PB_UTILS, "matting", ["a", "not an image", "poison", "b"], read, run)
    assert [r.output_tensors for r in responses] == [["A"], None, None, ["B"]]
    assert [r.error.code for r in responses if r.error] == [TritonError.INVALID_ARG, TritonError.INTERNAL]
    assert calls == [["a", "poison", "b"], ["a"], ["poison"], ["b"]]
