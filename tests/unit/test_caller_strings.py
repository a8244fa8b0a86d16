"""What a caller writes into a request comes back in a message only briefly, and only ASCII digits
make a colour."""

from __future__ import annotations

import json

import pytest

from matteserve.api.v1 import matteserve_pb2 as pb
from matteserve.errors import InvalidOptions, quote
from matteserve.gateway.service import to_options
from matteserve.options import RequestOptions, parse_colour


@pytest.mark.parametrize("text", ["²,0,0", "0,٣,0", "0,0,𝟗", "1,2", "1,2,3,4", "256,0,0", "-1,0,0", ",,"])
def test_a_background_that_is_not_three_ascii_numbers_is_an_invalid_option(text: str) -> None:
    with pytest.raises(InvalidOptions, match="background must be"):
        parse_colour(text)


@pytest.mark.parametrize(
    ("text", "rgb"), [("1,2,3", (1, 2, 3)), (" 10 , 20,255", (10, 20, 255)), ("#0a0B0c", (10, 11, 12))]
)
def test_colours_in_either_notation_parse(text: str, rgb: tuple[int, int, int]) -> None:
    assert parse_colour(text) == rgb


def test_a_megabyte_background_is_quoted_briefly_in_its_error() -> None:
    huge = "9" * 1_000_000
    with pytest.raises(InvalidOptions) as err:
        RequestOptions.from_json(json.dumps({"background": huge}).encode())
    assert len(str(err.value)) < 200
    assert "999936 more" in str(err.value)


def test_a_long_model_name_is_refused_with_a_short_message() -> None:
    with pytest.raises(InvalidOptions, match="model must be a model name") as err:
        to_options(pb.Options(model="m" * 100_000))
    assert len(str(err.value)) < 200


def test_quote_keeps_short_strings_whole() -> None:
    assert quote("u2netp") == "'u2netp'"
    assert quote(b"x" * 100, limit=4) == "b'xxxx'... (96 more)"
