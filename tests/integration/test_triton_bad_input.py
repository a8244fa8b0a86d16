"""Bad input through the real Triton ensemble: each gets its own INVALID_ARG, nothing else breaks."""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from PIL import Image
from tritonclient.utils import InferenceServerException

from matteserve.contract import Meta
from matteserve.loadtest.hostile import png_declaring
from matteserve.tritonserver import TritonServer

Infer = Callable[..., tuple[bytes, Meta]]


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buf, "PNG")
    return buf.getvalue()


def truncated_jpeg(make_photo: Callable[..., bytes]) -> bytes:
    data = make_photo(400, 300)
    return data[: len(data) // 2]


BAD_IMAGES: dict[str, tuple[Callable[[Callable[..., bytes]], bytes], str]] = {
    "zero bytes": (lambda _: b"", "empty"),
    "random bytes": (lambda _: bytes(range(7, 250)) * 20, "not a supported image"),
    "truncated jpeg": (truncated_jpeg, "truncated or corrupt"),
    "decompression bomb": (lambda _: png_declaring(50000, 50000), "50000x50000 = 2500.0 MP, above the 40.0 MP limit"),
    "svg": (
        lambda _: b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"></svg>',
        "not a supported image",
    ),
    "pdf": (lambda _: b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n", "not a supported image"),
    "1x1 image": (lambda _: png(1, 1), "at least 16 px"),
    "20000x50 strip": (lambda _: png_declaring(20000, 50), "aspect ratio"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_gets_invalid_arg_with_a_reason(
    triton_infer: Infer, make_photo: Callable[..., bytes], case: str
) -> None:
    make, message = BAD_IMAGES[case]
    with pytest.raises(InferenceServerException) as err:
        triton_infer(make(make_photo))
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in err.value.message()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"format": "tiff"}, "unknown format 'tiff'"),
        ({"background": "purple"}, "background must be"),
        ({"quality": 101}, "quality must be 1-100"),
        ({"dpi": 300}, "unknown option"),
    ],
)
def test_unknown_option_values_get_invalid_arg(
    triton_infer: Infer, make_photo: Callable[..., bytes], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InferenceServerException) as err:
        triton_infer(make_photo(64, 64), options)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in err.value.message()


def test_bad_image_in_a_batch_fails_only_its_own_request(
    triton: TritonServer, triton_infer: Infer, make_photo: Callable[..., bytes]
) -> None:
    good = [make_photo(200 + 10 * i, 160) for i in range(6)]
    bad = [make(make_photo) for make, _ in BAD_IMAGES.values()]
    work = [(d, True) for d in good] + [(d, False) for d in bad]
    work = [w for pair in zip(work[::2], work[1::2], strict=False) for w in pair]  # interleave

    def call(item: tuple[bytes, bool]) -> tuple[bool, Any]:
        try:
            return True, triton_infer(item[0], {"format": "mask"})[1]
        except InferenceServerException as e:
            return False, e.status()

    with ThreadPoolExecutor(len(work)) as pool:
        outcomes = list(pool.map(call, work))
    for (data, should_pass), (passed, detail) in zip(work, outcomes, strict=True):
        assert passed == should_pass, detail
        if passed:
            assert detail.width == Image.open(io.BytesIO(data)).width
        else:
            assert detail == "StatusCode.INVALID_ARGUMENT"
    assert triton.is_ready(), "the server must stay up"
