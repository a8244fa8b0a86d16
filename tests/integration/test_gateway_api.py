"""Every option and output format, the stream, and bad input, through a real gateway and Triton."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from matteserve.client import Client
from matteserve.client.errors import InvalidRequest
from matteserve.contract import Meta
from matteserve.gateway import GatewayProcess
from matteserve.loadtest.hostile import png_declaring

Infer = Callable[..., tuple[bytes, Meta]]
SIZE = (320, 256)


@pytest.fixture(scope="module")
def photo(make_photo: Callable[..., bytes]) -> bytes:
    return make_photo(*SIZE)


def alpha_of(data: bytes, content_type: str, size: tuple[int, int]) -> np.ndarray:
    if content_type == "application/octet-stream":
        return np.frombuffer(data, np.uint8).reshape(size[1], size[0])
    img = Image.open(io.BytesIO(data))
    return np.asarray(img.getchannel("A") if img.mode == "RGBA" else img.convert("L"))


@pytest.mark.parametrize(
    "options",
    [
        {"format": "png"},
        {"format": "mask"},
        {"format": "webp", "quality": 60},
        {"format": "jpeg", "background": "#00ff00", "quality": 80},
        {"format": "raw"},
        {"format": "mask", "refine": True},
    ],
    ids=lambda o: o["format"] + ("-refined" if o.get("refine") else ""),
)
def test_every_format_through_the_gateway_matches_triton_direct(
    gateway_client: Client, triton_infer: Infer, photo: bytes, options: dict[str, Any]
) -> None:
    result = gateway_client.remove(photo, **options)
    direct, meta = triton_infer(photo, options)

    assert (result.content_type, result.width, result.height) == (meta.content_type, *SIZE)
    assert result.model == "u2netp"
    assert set(result.timings) == {"preprocess", "postprocess", "triton", "gateway"}
    assert result.timings["gateway"] >= result.timings["triton"] > 0
    assert result.request_id
    if options["format"] in ("png", "mask", "raw"):
        # Lossless: the same alpha as Triton's own answer (batching may shift a level by rounding).
        got, want = alpha_of(result.data, result.content_type, SIZE), alpha_of(direct, meta.content_type, SIZE)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
        assert 0 < got.mean() < 255  # a real matte, neither empty nor all opaque
    else:
        got_img = np.asarray(Image.open(io.BytesIO(result.data)).convert("RGB"), dtype=float)
        want_img = np.asarray(Image.open(io.BytesIO(direct)).convert("RGB"), dtype=float)
        assert np.abs(got_img - want_img).mean() < 2.0
        assert Image.open(io.BytesIO(result.data)).format == options["format"].upper()


def test_jpeg_background_colour_and_quality_reach_triton(gateway_client: Client, photo: bytes) -> None:
    green = gateway_client.remove(photo, format="jpeg", background="#00ff00", quality=90)
    low = gateway_client.remove(photo, format="jpeg", background="#00ff00", quality=10)
    alpha = alpha_of(gateway_client.remove(photo, format="mask").data, "image/png", SIZE)
    rgb = np.asarray(Image.open(io.BytesIO(green.data)).convert("RGB"), dtype=float)
    background = rgb[alpha < 10]
    assert background.size, "the photo has background pixels"
    assert background[:, 1].mean() > 200 > background[:, 0].mean() + 50  # green where the matte is clear
    assert len(low.data) < len(green.data)


def test_stream_results_carry_the_callers_ids_and_a_bad_item_does_not_end_the_stream(
    gateway_client: Client, photo: bytes
) -> None:
    items = [("first", photo), ("broken", b"not an image"), ("last", photo)]
    answers = {item.id: item for item in gateway_client.remove_stream(items, format="mask")}

    assert set(answers) == {"first", "broken", "last"}
    for good in ("first", "last"):
        result = answers[good].result
        assert result is not None
        assert answers[good].error is None
        assert (result.width, result.height, result.content_type) == (*SIZE, "image/png")
    assert isinstance(answers["broken"].error, InvalidRequest)
    assert "not a supported image" in str(answers["broken"].error)


def test_the_callers_request_id_comes_back_in_the_response_and_trailing_metadata(
    gateway: GatewayProcess, photo: bytes
) -> None:
    from matteserve.api.v1 import matteserve_pb2_grpc as pb_grpc
    from matteserve.client.common import build_request

    with grpc.insecure_channel(gateway.target) as channel:
        stub = pb_grpc.BackgroundRemovalStub(channel)
        response, call = stub.Remove.with_call(
            build_request(photo, "mask"), metadata=[("x-request-id", "order-42")], timeout=120
        )
    assert response.request_id == "order-42"
    assert ("x-request-id", "order-42") in call.trailing_metadata()


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    return buf.getvalue()


BAD_INPUTS: dict[str, tuple[Callable[[bytes], bytes], dict[str, Any], str]] = {
    # name: (image from the good photo, options, words the message must contain)
    "zero bytes": (lambda _: b"", {}, "empty (0 bytes)"),
    "random bytes": (lambda _: bytes(range(7, 250)) * 20, {}, "not a supported image"),
    "truncated jpeg": (lambda p: p[: len(p) // 2], {}, "truncated or corrupt"),  # passes the header, Triton says no
    "decompression bomb": (lambda _: png_declaring(50000, 50000), {}, "2500.0 MP, above the 40.0 MP limit"),
    "svg": (lambda _: b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>', {}, "not a supported"),
    "1x1 image": (lambda _: _tiny_png(), {}, "at least 16 px"),
    "20000x50 strip": (lambda _: png_declaring(20000, 50), {}, "aspect ratio"),
    "bad background": (lambda p: p, {"format": "jpeg", "background": "purple"}, "background must be"),
    "quality 101": (lambda p: p, {"format": "jpeg", "quality": 101}, "quality must be 1-100"),
    "unknown model": (
        lambda p: p,
        {"model": "no-such-model"},
        "unknown model 'no-such-model'; this gateway serves: u2netp",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_invalid_argument_with_a_reason(gateway_client: Client, photo: bytes, case: str) -> None:
    make, options, message = BAD_INPUTS[case]
    with pytest.raises(InvalidRequest) as err:
        gateway_client.remove(make(photo), **options)
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(err.value)
    assert err.value.request_id  # the trailing metadata finds the log line
